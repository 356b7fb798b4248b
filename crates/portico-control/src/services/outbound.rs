//! Upstream URLs judged by the outbound policy when a version is saved, so that a provider
//! learns at once that `http://10.1.2.3` or `http://169.254.169.254` will never be called. An IP
//! literal is judged as it is; a name is resolved (with a short timeout) and refused when every
//! address it resolves to is refused. A name that does not resolve is accepted: the gateway's
//! connect-time check is the real guard, this one only says it early.
//!
//! Names are resolved before any transaction begins (never while holding the store's write
//! lock) into [`Verdicts`], which are then read without I/O.

use crate::error::{Error, Result};
use portico_core::outbound::{OutboundPolicy, Refusal, literal_ip};
use portico_core::upstream::UpstreamPolicy;
use portico_core::values::UpstreamUrl;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long all the names of one request may take to resolve, together.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every URL of a version: its `upstream_url` and the upstream policy's targets, each with the
/// field that holds it.
pub(crate) fn version_urls<'a>(
    upstream_url: &'a UpstreamUrl,
    upstream: Option<&'a UpstreamPolicy>,
) -> impl Iterator<Item = (String, &'a UpstreamUrl)> {
    let targets = upstream.map(|p| p.targets.as_slice()).unwrap_or_default();
    std::iter::once(("upstream_url".to_owned(), upstream_url))
        .chain(targets.iter().enumerate().map(|(i, t)| (format!("upstream.targets[{i}]"), t)))
}

/// The policy's verdict on each host: `Some(why)` when refused.
#[derive(Debug, Default)]
pub(crate) struct Verdicts(HashMap<String, Option<Refusal>>);

impl Verdicts {
    /// Judges the hosts of `urls`, resolving names concurrently within [`RESOLVE_TIMEOUT`].
    pub(crate) async fn resolve<'a>(policy: &OutboundPolicy, urls: impl IntoIterator<Item = &'a UpstreamUrl>) -> Self {
        let mut verdicts = HashMap::new();
        let mut lookups = tokio::task::JoinSet::new();
        for url in urls {
            let host = url.host();
            if verdicts.contains_key(host) {
                continue;
            }
            match literal_ip(host) {
                Some(ip) => {
                    verdicts.insert(host.to_owned(), policy.check(ip).err());
                }
                None => {
                    verdicts.insert(host.to_owned(), None);
                    let name = host.to_owned();
                    lookups.spawn(async move {
                        let addrs =
                            tokio::net::lookup_host(format!("{name}:0")).await.ok().map(|a| a.collect::<Vec<_>>());
                        (name, addrs)
                    });
                }
            }
        }
        let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, lookups.join_next()).await {
            let Ok((name, Some(addrs))) = joined else { continue };
            verdicts.insert(name, refused_all(policy, &addrs));
        }
        Verdicts(verdicts)
    }

    /// `Ok` unless the policy refuses `url`'s host; the error names `field`.
    pub(crate) fn check(&self, field: &str, url: &UpstreamUrl) -> Result<()> {
        match self.0.get(url.host()) {
            Some(Some(reason)) => Err(Error::Invalid(format!(
                "{field}: `{url}` points at an address that outbound calls may not reach ({reason}); use a public \
                 address, or ask a platform admin to allow its network with the `outbound.allow_cidrs` setting"
            ))),
            _ => Ok(()),
        }
    }
}

/// Why every one of `addrs` is refused; `None` when one is permitted or there are none.
fn refused_all(policy: &OutboundPolicy, addrs: &[std::net::SocketAddr]) -> Option<Refusal> {
    let mut why = None;
    for a in addrs {
        match policy.check(a.ip()) {
            Ok(()) => return None,
            Err(r) => why = why.or(Some(r)),
        }
    }
    why
}

/// Checks a version's URLs against the policy (resolving names), naming the field refused.
pub(crate) async fn check_version(
    policy: &OutboundPolicy,
    upstream_url: &UpstreamUrl,
    upstream: Option<&UpstreamPolicy>,
) -> Result<()> {
    let urls: Vec<&UpstreamUrl> = version_urls(upstream_url, upstream).map(|(_, u)| u).collect();
    let verdicts = Verdicts::resolve(policy, urls).await;
    for (field, url) in version_urls(upstream_url, upstream) {
        verdicts.check(&field, url)?;
    }
    Ok(())
}

/// DNS answers filtered by the outbound policy: a name that resolves only to refused addresses
/// fails to connect.
struct GuardedResolver(Arc<OutboundPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host(format!("{host}:0")).await?.filter(|a| policy.permits(a.ip())).collect();
            if addrs.is_empty() {
                return Err(format!("`{host}` resolves to no address that outbound calls may reach").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client outbound calls go out with (deliveries, documents, JWKS, single sign-on):
/// outbound policy, no redirects, 10 s timeout. It fails closed: without the guard there is
/// no client.
pub fn client(policy: OutboundPolicy) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver(Arc::new(policy))))
        .redirect(reqwest::redirect::Policy::none())
        // A system proxy would resolve the host itself, out of the outbound policy's sight.
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("Portico/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Unavailable(format!("the outbound HTTP client could not be built ({e})")))
}

/// The most redirects a fetch follows.
const MAX_REDIRECTS: usize = 5;

/// Fetches what a provider or consumer points at (an `openapi_url`, an issuer's JWKS): http(s)
/// only, no credentials in the URL, through the outbound policy at connect time (the guarded
/// resolver) and for every literal address, again on each of at most 5 redirects (never from
/// https to http); 10 s per hop and `max_bytes` at most. Errors name `field` and say what to
/// fix.
pub(crate) async fn fetch(policy: &OutboundPolicy, field: &str, raw: &str, max_bytes: usize) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Invalid(format!("{field}: {m}"));
    let mut url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(format!("`{raw}` is not a URL ({e})")))?;
    let client = client(policy.clone())?;
    let mut was_https = false;
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(bad(format!("`{url}` must be an http:// or https:// URL with a host and no credentials")));
        }
        if was_https && url.scheme() == "http" {
            return Err(bad(format!("a redirect from https to `{url}` (plain http) is not followed")));
        }
        was_https = url.scheme() == "https";
        if let Some(ip) = url.host_str().and_then(literal_ip)
            && let Err(why) = policy.check(ip)
        {
            return Err(bad(format!(
                "`{url}` points at an address that outbound calls may not reach ({why}); ask a platform admin to allow it with `outbound.allow_cidrs`"
            )));
        }
        let mut resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json, application/yaml;q=0.9, */*;q=0.1")
            .send()
            .await
            .map_err(|e| {
                let mut chain = Vec::new();
                let mut cur: Option<&dyn std::error::Error> = Some(&e);
                while let Some(c) = cur {
                    chain.push(c.to_string());
                    cur = c.source();
                }
                if chain.iter().any(|m| m.contains("outbound calls may reach")) {
                    bad(format!("`{url}` resolves to no address that outbound calls may reach; ask a platform admin to allow it with `outbound.allow_cidrs`"))
                } else {
                    bad(format!("`{url}` could not be fetched ({e})"))
                }
            })?;
        if resp.status().is_redirection() {
            let Some(loc) = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()) else {
                return Err(bad(format!("`{url}` answered {} without a Location", resp.status())));
            };
            url = url.join(loc).map_err(|_| bad(format!("`{url}` redirects to `{loc}`, which is not a URL")))?;
            continue;
        }
        if !resp.status().is_success() {
            return Err(bad(format!("`{url}` answered {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| bad(format!("reading `{url}` failed ({e})")))? {
            if body.len() + chunk.len() > max_bytes {
                return Err(bad(format!("the answer of `{url}` is larger than {max_bytes} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(body);
    }
    Err(bad(format!("more than {MAX_REDIRECTS} redirects")))
}

/// [`fetch`] of a JSON or YAML document (an object).
pub(crate) async fn fetch_document(
    policy: &OutboundPolicy,
    field: &str,
    raw: &str,
    max_bytes: usize,
) -> Result<serde_json::Value> {
    let body = fetch(policy, field, raw, max_bytes).await?;
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .or_else(|| serde_norway::from_slice::<serde_json::Value>(&body).ok())
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| Error::Invalid(format!("{field}: the document at `{raw}` is neither a JSON nor a YAML object")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> UpstreamUrl {
        UpstreamUrl::parse(s).unwrap()
    }

    #[tokio::test]
    async fn literals_and_names_are_judged_and_the_field_is_named() {
        let strict = OutboundPolicy::default();
        let e = check_version(&strict, &url("http://169.254.169.254/latest"), None).await.unwrap_err().to_string();
        assert!(e.starts_with("upstream_url: ") && e.contains("cloud metadata") && e.contains("outbound.allow_cidrs"));
        let policy = UpstreamPolicy { targets: vec![url("http://[::ffff:10.0.0.1]:8080")], ..Default::default() };
        let e = check_version(&strict, &url("https://api.example.com"), Some(&policy)).await.unwrap_err().to_string();
        assert!(e.starts_with("upstream.targets[0]: ") && e.contains("private"), "{e}");
        let e = check_version(&strict, &url("http://localhost:9000"), None).await.unwrap_err().to_string();
        assert!(e.contains("loopback"), "a name that resolves only to loopback: {e}");
        check_version(&strict, &url("http://portico-no-such-host.invalid"), None).await.unwrap();
        check_version(&strict, &url("http://203.0.113.7"), None).await.unwrap();

        let open = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        check_version(&open, &url("http://localhost:9000"), None).await.unwrap();
        check_version(&open, &url("http://127.0.0.1:9000"), None).await.unwrap();
        assert!(check_version(&open, &url("http://10.1.2.3"), None).await.is_err());
    }
}
