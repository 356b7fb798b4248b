//! Active health checks: every target of a version whose policy has a `health_check` is asked
//! `GET {target}{path}` every `interval_secs`; 2xx/3xx counts as healthy. A target goes out of
//! rotation after `unhealthy_threshold` failed checks in a row and back after
//! `healthy_threshold` good ones. Runs once per gateway process, through the same outbound
//! guard as calls: a target at a refused address never passes.

use crate::Gateway;
use crate::pool;
use http::Request;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `portico_gateway_upstream_targets{api, state}`: how many of an API's targets (all serving
/// versions) are in rotation (`available`) and out of it (`unavailable`: failed health checks
/// or an open circuit breaker).
fn report_targets(gw: &Gateway, api: &portico_core::snapshot::ApiRoute) {
    let (mut up, mut down) = (0u32, 0u32);
    for version in api.majors.values() {
        for i in 0..=version.policy.targets.len() {
            if gw.inner.pool.state(pool::target(&version.upstream, &version.policy, i)).available() {
                up += 1;
            } else {
                down += 1;
            }
        }
    }
    let slug = api.slug.as_str().to_owned();
    metrics::gauge!("portico_gateway_upstream_targets", "api" => slug.clone(), "state" => "available")
        .set(f64::from(up));
    metrics::gauge!("portico_gateway_upstream_targets", "api" => slug, "state" => "unavailable").set(f64::from(down));
}

pub(crate) async fn run(gw: Gateway, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = crate::upstream_client(&gw.inner.tls, &gw.inner.outbound);
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let snapshot = gw.inner.snapshot.load_full();
        for api in snapshot.apis.values() {
            report_targets(&gw, api);
            for version in api.majors.values() {
                let Some(hc) = version.policy.health_check.clone() else { continue };
                for i in 0..=version.policy.targets.len() {
                    let target = pool::target(&version.upstream, &version.policy, i);
                    let url = format!("{}{}", target.as_str(), hc.path);
                    let due =
                        last.get(&url).is_none_or(|t| t.elapsed() >= Duration::from_secs(u64::from(hc.interval_secs)));
                    if !due {
                        continue;
                    }
                    last.insert(url.clone(), Instant::now());
                    let state = gw.inner.pool.state(target);
                    let client = client.clone();
                    let hc = hc.clone();
                    tokio::spawn(async move {
                        let ok = match url.parse::<http::Uri>() {
                            Ok(uri) => {
                                let mut req = Request::new(crate::forward::empty());
                                *req.uri_mut() = uri;
                                matches!(tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await, Ok(Ok(r)) if r.status().as_u16() < 400)
                            }
                            Err(_) => false,
                        };
                        state.checked(ok, hc.healthy_threshold, hc.unhealthy_threshold);
                    });
                }
            }
        }
    }
}
