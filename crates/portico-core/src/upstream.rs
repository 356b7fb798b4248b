//! How a version's calls reach its upstream: the pool of targets, how one is chosen, timeouts,
//! retries and health checks. Declared per API version; every field has a sensible default, so
//! a version with just an `upstream_url` gets one target, a 30 s response timeout and no
//! retries.

use crate::values::UpstreamUrl;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The target with the fewest calls in flight.
    LeastRequests,
    /// The same consumer (or header value) goes to the same target while it is up.
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with GET on each target, e.g. `/health`; 2xx/3xx is healthy.
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

fn default_interval() -> u32 {
    10
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}
fn default_timeout() -> u32 {
    30_000
}

/// The connect timeout of a version that sets none.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 5_000;

fn default_connect_timeout() -> u32 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

/// The upstream policy of an API version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPolicy {
    /// Targets besides the version's `upstream_url`, each with the same path prefix rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<UpstreamUrl>,
    #[serde(default)]
    pub balance: Balance,
    /// For `consistent_hash`: a request header to hash on; the consumer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// How long a new connection to a target may take (TCP; TLS is part of the response
    /// timeout); then the next target, or 502 saying the connect failed.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u32,
    /// From sending the request to the upstream's response head (the first byte); then 504.
    #[serde(default = "default_timeout")]
    pub response_timeout_ms: u32,
    /// The whole call upstream, from its first attempt to the response body's end (retries
    /// and their backoff included): before the head, 504; after it, the response is cut off.
    /// None by default, so that streams (Server-Sent Events, downloads) are not bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout_ms: Option<u32>,
    /// Extra tries of an idempotent call without a body (GET, HEAD, OPTIONS, PUT, DELETE) on
    /// a connection failure or a 502/503/504, on another target when there is one; bounded by
    /// a retry budget of 20% of calls.
    #[serde(default)]
    pub retries: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            targets: Vec::new(),
            balance: Balance::RoundRobin,
            hash_header: None,
            connect_timeout_ms: default_connect_timeout(),
            response_timeout_ms: default_timeout(),
            total_timeout_ms: None,
            retries: 0,
            health_check: None,
        }
    }
}

impl UpstreamPolicy {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid("upstream", m.to_owned()));
        if self.targets.len() > 32 {
            return bad("at most 32 extra targets");
        }
        if !(100..=300_000).contains(&self.response_timeout_ms) {
            return bad("response_timeout_ms must be between 100 and 300000");
        }
        if self.total_timeout_ms.is_some_and(|ms| !(100..=3_600_000).contains(&ms)) {
            return bad("total_timeout_ms must be between 100 and 3600000");
        }
        if !(10..=60_000).contains(&self.connect_timeout_ms) {
            return bad("connect_timeout_ms must be between 10 and 60000");
        }
        if self.retries > 5 {
            return bad("retries must be between 0 and 5");
        }
        if let Some(h) = &self.hash_header
            && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return bad("hash_header must be a header name such as X-User-Id");
        }
        if let Some(hc) = &self.health_check {
            if !hc.path.starts_with('/') || hc.path.contains(['?', '#', ' ']) {
                return bad("health_check.path must be a path such as /health");
            }
            if !(1..=3600).contains(&hc.interval_secs)
                || !(1..=10).contains(&hc.healthy_threshold)
                || !(1..=10).contains(&hc.unhealthy_threshold)
            {
                return bad("health_check: interval_secs 1-3600, thresholds 1-10");
            }
        }
        Ok(())
    }

    pub fn is_default(&self) -> bool {
        *self == UpstreamPolicy::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let p: UpstreamPolicy = serde_json::from_str("{}").unwrap();
        assert!(p.is_default() && p.validate().is_ok());
        let p: UpstreamPolicy = serde_json::from_str(
            r#"{"targets":["http://b:1"],"balance":"least_requests","retries":2,"health_check":{"path":"/health"}}"#,
        )
        .unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(p.health_check.unwrap().interval_secs, 10);
        for bad in [
            r#"{"retries":9}"#,
            r#"{"response_timeout_ms":1}"#,
            r#"{"connect_timeout_ms":0}"#,
            r#"{"connect_timeout_ms":60001}"#,
            r#"{"hash_header":"x y"}"#,
            r#"{"health_check":{"path":"health"}}"#,
        ] {
            let p: UpstreamPolicy = serde_json::from_str(bad).unwrap();
            assert!(p.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<UpstreamPolicy>(r#"{"balance":"random"}"#).is_err());
        assert!(serde_json::from_str::<UpstreamPolicy>(r#"{"targets":["ftp://x"]}"#).is_err());
    }
}
