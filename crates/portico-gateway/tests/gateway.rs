//! The gateway on its own: a snapshot built by hand, a real upstream on port 0, real HTTP.

mod common;
use common::echo_upstream;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portico_core::api_key::{ApiKey, Pepper};
use portico_core::ids::*;
use portico_core::model::LifecycleState;
use portico_core::snapshot::*;
use portico_core::usage::{UsageEvent, UsageSink};
use portico_core::values::{Period, RateLimit, Slug, UpstreamUrl, VersionNumber};
use portico_gateway::{Gateway, GatewayConfig};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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

struct Fixture {
    base: String,
    key: ApiKey,
    other_key: ApiKey,
    events: Arc<Collect>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn fixture(upstream: &str) -> Fixture {
    let pepper = Pepper::generate();
    let (key, other_key) = (ApiKey::generate(), ApiKey::generate());
    let (api_id, app, other_app) = (ApiId::new(), AppId::new(), AppId::new());
    let version = VersionRoute {
        version_id: VersionId::new(),
        version: VersionNumber::parse("1.0.0").unwrap(),
        state: LifecycleState::Published,
        upstream: UpstreamUrl::parse(&format!("{upstream}/base")).unwrap(),
        operations: None,
        policy: Default::default(),
        policies: Default::default(),
    };
    let mut apis = HashMap::new();
    apis.insert(
        Slug::parse("echo").unwrap(),
        ApiRoute { api_id, slug: Slug::parse("echo").unwrap(), majors: BTreeMap::from([(1, version)]) },
    );
    let grant = |k: &ApiKey, app| KeyGrant {
        key_id: KeyId::new(),
        hash: k.hash(&pepper),
        app_id: app,
        consumer_org_id: OrgId::new(),
        consumer_slug: Slug::parse("globex").unwrap(),
        expires_at_ms: None,
        scopes: None,
        last_used: Default::default(),
        rehash: Default::default(),
    };
    let keys =
        HashMap::from([(key.hash(&pepper), grant(&key, app)), (other_key.hash(&pepper), grant(&other_key, other_app))]);
    let sub = SubscriptionGrant {
        subscription_id: SubscriptionId::new(),
        plan_id: PlanId::new(),
        plan_slug: Slug::parse("free").unwrap(),
        rate_limits: vec![RateLimit::new(4, Period::Minute).unwrap()],
        monthly_quota: None,
        daily_quota: None,
        operation_limits: None,
        quota_used: 0,
        quota_month: 0,
        quota_used_today: 0,
        quota_day: 0,
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
        generation: 7,
        apis,
        keys,
        subscriptions: HashMap::from([((app, api_id), sub)]),
        ..Default::default()
    }));
    let events = Arc::new(Collect::default());
    let gw = Gateway::new(
        snapshot.clone(),
        pepper,
        events.clone(),
        GatewayConfig { max_body_bytes: 4 * 1024 * 1024, ..common::config() },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gw.serve(listener, std::future::pending()));
    Fixture {
        base,
        key,
        other_key,
        events,
        snapshot,
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    }
}

impl Fixture {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.client.request(req.body(Full::new(body)).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, Value) {
        self.send("GET", path, headers, Bytes::new()).await
    }
}

fn problem(h: &http::HeaderMap) -> bool {
    h.get("content-type").map(|v| v == "application/problem+json").unwrap_or(false)
}

#[tokio::test]
async fn the_request_path() {
    let up = echo_upstream().await;
    let f = fixture(&up).await;
    let key = f.key.expose_secret();

    let (s, _, v) = f.get("/readyz", &[]).await;
    assert_eq!((s, v["generation"].as_u64()), (StatusCode::OK, Some(7)));
    let (s, _, v) = f.get("/healthz", &[]).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));

    let (s, h, v) =
        f.get("/echo/v1/a/b?x=1", &[("x-api-key", key), ("x-portico-plan", "forged"), ("x-request-id", "rid-1")]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h["x-request-id"], "rid-1");
    assert_eq!(h["ratelimit-policy"], "\"minute\";q=4;w=60");
    assert_eq!(h["ratelimit"], "\"minute\";r=3;t=15");
    assert_eq!(v["path"], "/base/a/b");
    assert_eq!(v["query"], "x=1");
    let uh = &v["headers"];
    assert!(uh.get("x-api-key").is_none());
    assert_eq!(uh["x-portico-plan"], "free");
    assert_eq!(uh["x-portico-consumer"], "globex");
    assert_eq!(uh["x-request-id"], "rid-1");
    assert!(uh["traceparent"].as_str().unwrap().starts_with("00-"));
    assert_eq!(uh["x-forwarded-for"], "127.0.0.1");

    // A streamed 1 MiB body arrives whole and is counted.
    let (s, _, v) = f
        .send(
            "POST",
            "/echo/v1/upload",
            &[("authorization", &format!("Bearer {key}"))],
            Bytes::from(vec![7u8; 1 << 20]),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["body_len"], 1 << 20);
    assert!(v["headers"].get("authorization").is_none(), "the key in Authorization is not forwarded");

    // Browsers: the preflight is answered without a key; answers carry CORS headers.
    let (s, h, _) = f
        .send(
            "OPTIONS",
            "/echo/v1/a",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-api-key, content-type"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        (h["access-control-allow-origin"].to_str().unwrap(), h["access-control-allow-methods"].to_str().unwrap()),
        ("*", "POST")
    );
    assert_eq!(h["access-control-allow-headers"], "x-api-key, content-type");
    assert!(h.get("access-control-allow-credentials").is_none());
    let (s, h, _) = f.get("/echo/v1/a", &[("x-api-key", key), ("origin", "https://app.example")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h["access-control-expose-headers"].to_str().unwrap().contains("RateLimit"));

    let (s, h, _) = f.get("/echo/v1/a", &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(problem(&h) && h.contains_key("www-authenticate"));
    assert_eq!(f.get("/echo/v1/a", &[("x-api-key", "ptc_short")]).await.0, StatusCode::UNAUTHORIZED);
    // The right shape with a broken checksum: refused (without a lookup).
    let mut mistyped = key.to_owned().into_bytes();
    mistyped[10] = if mistyped[10] == b'a' { b'b' } else { b'a' };
    let mistyped = String::from_utf8(mistyped).unwrap();
    let (s, h, v) = f.get("/echo/v1/a", &[("x-api-key", &mistyped)]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(problem(&h) && v["code"] == "unauthenticated");
    assert!(!v.to_string().contains(&mistyped), "the key is never echoed back");
    assert_eq!(
        f.get("/echo/v1/a", &[("x-api-key", ApiKey::generate().expose_secret())]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(f.get("/echo/v1/a", &[("authorization", "Bearer some.jwt.token")]).await.0, StatusCode::UNAUTHORIZED);
    let (s, h, v) = f.get(&format!("/echo/v1/a?x=1&apikey={key}"), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(problem(&h) && !v.to_string().contains(key));
    let (s, h, v) = f.get("/nope/v1/a", &[("x-api-key", key)]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(problem(&h));
    assert_eq!(v["type"], "https://portico.dev/problems/not_found");
    assert_eq!(f.get("/echo/v2/a", &[("x-api-key", key)]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/echo/v1/a/%2e%2e/admin", &[("x-api-key", key)]).await.0, StatusCode::BAD_REQUEST);
    let (s, h, _) = f.get("/echo/v1/a", &[("x-api-key", f.other_key.expose_secret())]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(problem(&h));
    // (An oversized body's 413 is in bad_input.rs: sent over raw TCP, since a client that keeps
    // writing after the early answer may see the connection closed instead.)

    // 4 a minute: 3 used, 1 left, then 429 with Retry-After.
    assert_eq!(f.get("/echo/v1/a", &[("x-api-key", key)]).await.0, StatusCode::OK);
    let (s, h, v) = f.get("/echo/v1/a", &[("x-api-key", key)]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let retry = h["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
    assert!(retry >= 1);
    assert_eq!(h["ratelimit"], format!("\"minute\";r=0;t={retry}").as_str());
    assert!(problem(&h));

    // Every call that reached the subscription was metered once, with its status and bytes.
    let events = f.events.0.lock().unwrap().clone();
    let statuses: Vec<u16> = events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429],
        "refusals before the subscription is known, and preflights, are not metered"
    );
    assert_eq!(events[1].bytes_in, 1 << 20);
    assert!(events[0].bytes_out > 0);
}

#[tokio::test]
async fn a_new_snapshot_applies_at_once_and_a_dead_upstream_is_a_502() {
    let up = echo_upstream().await;
    let f = fixture(&up).await;
    let key = f.key.expose_secret().to_owned();
    assert_eq!(f.get("/echo/v1/a", &[("x-api-key", &key)]).await.0, StatusCode::OK);
    // The version prefix alone routes, with or without its slash.
    let (s, _, v) = f.get("/echo/v1", &[("x-api-key", &key)]).await;
    assert_eq!((s, v["path"].as_str()), (StatusCode::OK, Some("/base")));
    let (s, _, v) = f.get("/echo/v1/?q=2", &[("x-api-key", &key)]).await;
    assert_eq!((s, v["path"].as_str(), v["query"].as_str()), (StatusCode::OK, Some("/base/"), Some("q=2")));
    // Revoke: swap in a snapshot without the key.
    let mut next = (**f.snapshot.load()).clone();
    next.keys.clear();
    next.generation += 1;
    f.snapshot.store(Arc::new(next.clone()));
    assert_eq!(f.get("/echo/v1/a", &[("x-api-key", &key)]).await.0, StatusCode::UNAUTHORIZED);

    // Point the API at a port where nothing listens.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let fresh = fixture(&dead_url).await;
    let (s, h, v) = fresh.get("/echo/v1/a", &[("x-api-key", fresh.key.expose_secret())]).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(problem(&h));
    assert!(!v["detail"].as_str().unwrap().contains("127.0.0.1"), "no upstream address leaks: {v}");
    assert_eq!(fresh.events.0.lock().unwrap()[0].status, 502);
}
