//! The response cache against real sockets: a hit after a miss never reaches the upstream but
//! is still identified, limited and billed; entries are per app unless the route is shared and
//! the upstream says `public`; `no-store`, `max-age` and the client's `no-cache` are honoured;
//! other methods are never cached.

mod common;

use common::{Setup, start};
use portico_core::policy::Policies;
use portico_core::usage::{UsageEvent, UsageSink};
use portico_core::values::{Period, RateLimit};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An upstream that counts the calls it gets and answers with the `Cache-Control` given in
/// the query's `cc` (`+` for a space, `~` for `=`), and the call's number in the body.
async fn counting_upstream() -> (String, Arc<AtomicU64>) {
    use bytes::Bytes;
    use http_body_util::Full;
    let hits = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let cc = req
                            .uri()
                            .query()
                            .unwrap_or("")
                            .split('&')
                            .find_map(|p| p.strip_prefix("cc="))
                            .map(|v| v.replace('+', " ").replace('~', "="));
                        let body = json!({"n": n, "method": req.method().as_str(), "path": req.uri().path()});
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                        if let Some(cc) = cc {
                            resp.headers_mut().insert("cache-control", cc.parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

#[derive(Default)]
struct Collect(Mutex<Vec<UsageEvent>>);
impl UsageSink for Collect {
    fn begin(&self, _e: &UsageEvent) -> u64 {
        1
    }
    fn end(&self, _token: u64, e: UsageEvent) {
        self.0.lock().unwrap().push(e);
    }
}

fn policies(v: Value) -> Policies {
    let p: Policies = serde_json::from_value(v).unwrap();
    p.validate().unwrap();
    p
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `(X-Cache, the upstream call number in the body)`.
async fn get(url: &str, key: &str) -> (String, u64) {
    get_with(url, key, &[]).await
}

async fn get_with(url: &str, key: &str, headers: &[(&str, &str)]) -> (String, u64) {
    let mut req = client().get(url).header("x-api-key", key);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let x = resp.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body: Value = resp.json().await.unwrap();
    (x, body["n"].as_u64().unwrap())
}

#[tokio::test]
async fn a_hit_after_a_miss_never_reaches_the_upstream_and_is_metered() {
    let (up, hits) = counting_upstream().await;
    let events = Arc::new(Collect::default());
    let mut s = Setup::new("cached", &up);
    s.policies = policies(json!({"cache": {"ttl_secs": 60}, "response_headers": {"add": {"x-served-by": "portico"}}}));
    s.sink = events.clone();
    s.rate_limit = Some(RateLimit::new(5, Period::Minute).unwrap());
    let gw = start(s).await;
    let url = format!("{}/items?cc=max-age~60", gw.base);

    assert_eq!(get(&url, &gw.key).await, ("MISS".into(), 1));
    let resp = client().get(&url).header("x-api-key", &gw.key).send().await.unwrap();
    assert_eq!(resp.headers()["x-cache"], "HIT");
    assert!(resp.headers()["age"].to_str().unwrap().parse::<u64>().unwrap() <= 1);
    assert_eq!(resp.headers()["cache-control"], "max-age=60");
    assert_eq!(resp.headers()["x-served-by"], "portico", "response rules apply to hits");
    assert!(resp.headers().contains_key("ratelimit"), "a hit spends the rate limit");
    let call_id = resp.headers()["x-portico-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["n"], 1, "the first answer, from the cache");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the upstream was not called again");

    // Another query is another entry; HEAD has its own.
    assert_eq!(get(&format!("{url}&page=2"), &gw.key).await, ("MISS".into(), 2));
    let head = client().head(&url).header("x-api-key", &gw.key).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-cache"], "MISS");

    // The hit was metered as a billable call under its own id.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = events.0.lock().unwrap().clone();
        if seen.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hit = seen.iter().find(|e| e.request_id.to_string() == call_id).expect("the hit's usage event");
    assert_eq!((hit.status, hit.units), (200, 1));
    assert!(hit.bytes_out > 0);

    // A hit is a call: the sixth call in the minute is refused although the answer is cached.
    assert_eq!(get(&url, &gw.key).await.0, "HIT");
    let refused = client().get(&url).header("x-api-key", &gw.key).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    assert!(refused.headers().get("x-cache").is_none());
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn entries_are_per_app_unless_shared_and_public() {
    let (up, hits) = counting_upstream().await;
    let mut s = Setup::new("private", &up);
    s.policies = policies(json!({"cache": {}}));
    s.consumers = 2;
    let gw = start(s).await;
    let url = format!("{}/me?cc=public,+max-age~60", gw.base);
    assert_eq!(get(&url, &gw.keys[0]).await, ("MISS".into(), 1));
    assert_eq!(get(&url, &gw.keys[1]).await, ("MISS".into(), 2), "not shared: the other app has its own entry");
    assert_eq!(get(&url, &gw.keys[0]).await, ("HIT".into(), 1));
    assert_eq!(get(&url, &gw.keys[1]).await, ("HIT".into(), 2));

    let (up, hits_shared) = counting_upstream().await;
    let mut s = Setup::new("shared", &up);
    s.policies = policies(json!({"cache": {"shared": true}}));
    s.consumers = 2;
    let gw = start(s).await;
    let public = format!("{}/list?cc=public,+max-age~60", gw.base);
    assert_eq!(get(&public, &gw.keys[0]).await, ("MISS".into(), 1));
    assert_eq!(get(&public, &gw.keys[1]).await, ("HIT".into(), 1), "public on a shared route: one entry for all");
    let own = format!("{}/list?cc=max-age~60", gw.base);
    assert_eq!(get(&own, &gw.keys[0]).await, ("MISS".into(), 2));
    assert_eq!(get(&own, &gw.keys[1]).await, ("MISS".into(), 3), "without `public`, per app even when shared");
    assert_eq!(get(&own, &gw.keys[1]).await, ("HIT".into(), 3));
    assert_eq!(hits.load(Ordering::SeqCst) + hits_shared.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn cache_control_is_honoured_both_ways() {
    let (up, hits) = counting_upstream().await;
    let mut s = Setup::new("honour", &up);
    s.policies = policies(json!({"cache": {"ttl_secs": 60}}));
    let gw = start(s).await;

    for cc in ["no-store", "no-cache", "private,+max-age~60", "max-age~0"] {
        let url = format!("{}/x?cc={cc}", gw.base);
        let (_, first) = get(&url, &gw.key).await;
        assert_eq!(get(&url, &gw.key).await, ("MISS".into(), first + 1), "{cc} is not cached");
    }

    // The client's no-cache forces a miss (and refreshes the entry); no-store bypasses it.
    let url = format!("{}/fresh?cc=max-age~60", gw.base);
    let (_, n) = get(&url, &gw.key).await;
    assert_eq!(get(&url, &gw.key).await, ("HIT".into(), n));
    assert_eq!(get_with(&url, &gw.key, &[("cache-control", "no-cache")]).await, ("MISS".into(), n + 1));
    assert_eq!(get(&url, &gw.key).await, ("HIT".into(), n + 1), "the refreshed answer");
    assert_eq!(get_with(&url, &gw.key, &[("cache-control", "no-store")]).await, ("MISS".into(), n + 2));
    assert_eq!(get(&url, &gw.key).await, ("HIT".into(), n + 1), "no-store did not replace the entry");

    // max-age: gone once it has passed.
    let url = format!("{}/short?cc=max-age~1", gw.base);
    let (_, n) = get(&url, &gw.key).await;
    assert_eq!(get(&url, &gw.key).await, ("HIT".into(), n));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&url, &gw.key).await, ("MISS".into(), n + 1), "expired after max-age");

    // POST is never cached.
    let before = hits.load(Ordering::SeqCst);
    for _ in 0..2 {
        let resp = client().post(format!("{}/x?cc=max-age~60", gw.base)).header("x-api-key", &gw.key).body("{}");
        let resp = resp.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("x-cache").is_none());
    }
    assert_eq!(hits.load(Ordering::SeqCst), before + 2);
}

#[tokio::test]
async fn large_answers_and_routes_without_a_cache_are_passed_through() {
    let (up, hits) = counting_upstream().await;
    let mut s = Setup::new("small", &up);
    s.policies = policies(json!({"cache": {"max_body_bytes": 8}}));
    let gw = start(s).await;
    let url = format!("{}/big?cc=max-age~60", gw.base);
    assert_eq!(get(&url, &gw.key).await, ("MISS".into(), 1));
    assert_eq!(get(&url, &gw.key).await, ("MISS".into(), 2), "larger than max_body_bytes");

    let gw = start(Setup::new("plain", &up)).await;
    let url = format!("{}/x?cc=max-age~60", gw.base);
    assert_eq!(get(&url, &gw.key).await, (String::new(), 3));
    assert_eq!(get(&url, &gw.key).await, (String::new(), 4), "no cache policy: no X-Cache, no caching");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}
