//! The gateway's Prometheus metrics, through the `metrics` facade (the binary installs the
//! exporter). Labels are bounded: the API's slug (only slugs of the current snapshot; anything
//! else is `_unknown`) and the status class; upstream targets are counted per API and state,
//! never labelled by URL. Handles are registered once per API and cached,
//! so a call costs a read-locked map lookup and a few atomic adds.

use metrics::{Counter, Histogram};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct ApiMetrics {
    /// By status class: 1xx-3xx, 4xx, 5xx.
    requests: [Counter; 3],
    latency: [Histogram; 3],
}

impl ApiMetrics {
    fn new(api: &str) -> Self {
        let req = |class: &'static str| metrics::counter!("portico_gateway_requests_total", "api" => api.to_owned(), "status_class" => class);
        let latency = |class: &'static str| metrics::histogram!("portico_gateway_request_duration_seconds", "api" => api.to_owned(), "status_class" => class);
        ApiMetrics {
            requests: [req("2xx"), req("4xx"), req("5xx")],
            latency: [latency("2xx"), latency("4xx"), latency("5xx")],
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let i = match status {
            500.. => 2,
            400..=499 => 1,
            _ => 0,
        };
        self.requests[i].increment(1);
        self.latency[i].record(elapsed.as_secs_f64());
    }
}

pub struct GatewayMetrics {
    per_api: RwLock<foldhash::HashMap<String, Arc<ApiMetrics>>>,
    unknown: Arc<ApiMetrics>,
    pub rate_limited: Counter,
    pub quota_exhausted: Counter,
    pub ip_refused: Counter,
    /// Calls refused by request validation against the API's document.
    pub invalid_requests: Counter,
    pub upstream_errors: Counter,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics {
            per_api: RwLock::default(),
            unknown: Arc::new(ApiMetrics::new("_unknown")),
            rate_limited: metrics::counter!("portico_gateway_rejections_total", "reason" => "rate_limit"),
            quota_exhausted: metrics::counter!("portico_gateway_rejections_total", "reason" => "quota"),
            ip_refused: metrics::counter!("portico_gateway_rejections_total", "reason" => "ip"),
            invalid_requests: metrics::counter!("portico_gateway_rejections_total", "reason" => "invalid"),
            upstream_errors: metrics::counter!("portico_gateway_upstream_errors_total"),
            cache_hit: metrics::counter!("portico_gateway_cache_total", "result" => "hit"),
            cache_miss: metrics::counter!("portico_gateway_cache_total", "result" => "miss"),
        }
    }
}

impl GatewayMetrics {
    /// The handles for the API a path names, if the snapshot knows it.
    pub fn for_api(&self, slug: Option<&str>, known: impl FnOnce(&str) -> bool) -> Arc<ApiMetrics> {
        let Some(slug) = slug else { return self.unknown.clone() };
        if let Some(m) = self.per_api.read().unwrap_or_else(|p| p.into_inner()).get(slug) {
            return m.clone();
        }
        if !known(slug) {
            return self.unknown.clone();
        }
        let mut w = self.per_api.write().unwrap_or_else(|p| p.into_inner());
        w.entry(slug.to_owned()).or_insert_with(|| Arc::new(ApiMetrics::new(slug))).clone()
    }
}
