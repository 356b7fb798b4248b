//! A version's request policies against real sockets: header rules, the provider's upstream
//! credential, `Portico-Signature`, `Host` and path rewriting, IP lists behind trusted
//! proxies, JSON depth, weighted operations and per-API CORS.

mod common;

use common::{Setup, echo_upstream, start};
use portico_core::openapi::Operation;
use portico_core::operations::OperationRouter;
use portico_core::policy::{Policies, verify_signature};
use portico_core::values::{Period, RateLimit};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

fn policies(v: Value) -> Policies {
    let p: Policies = serde_json::from_value(v).unwrap();
    p.validate().unwrap();
    p
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn problem(resp: reqwest::Response, status: u16, says: &str) {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains(says), "{body}");
}

#[tokio::test]
async fn rewriting_credentials_and_signature_reach_the_upstream_and_nothing_else_does() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &format!("{up}/base"));
    s.policies = policies(json!({
        "request_headers": {"rename": {"x-client-tag": "x-tag"}, "remove": ["x-debug"], "add": {"x-provider": "portico"}},
        "response_headers": {"remove": ["x-upstream-internal"], "add": {"x-served-by": "portico"}},
        "upstream_auth": {"type": "header", "name": "X-Upstream-Key", "value": "provider-secret-123"},
        "signing_secret": "sign-me-please-0123456789",
        "path_rewrite": [{"from": "/old", "to": "/new"}],
        "host_header": "preserve"
    }));
    let gw = start(s).await;
    let resp = client()
        .get(format!("{}/old/thing?x=1", gw.base))
        .header("x-api-key", &gw.key)
        .header("x-client-tag", "blue")
        .header("x-debug", "1")
        .header("x-upstream-key", "consumer-forgery")
        .header("host", "api.marketplace.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-upstream-internal").is_none(), "response rule removed it");
    assert_eq!(resp.headers()["x-served-by"], "portico");
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/base/new/thing", "path rewritten under the upstream's base path");
    assert_eq!(h["x-tag"], "blue");
    assert!(h.get("x-client-tag").is_none() && h.get("x-debug").is_none());
    assert_eq!(h["x-provider"], "portico");
    assert_eq!(h["x-upstream-key"], "provider-secret-123", "the provider's credential replaced the consumer's");
    assert_eq!(h["host"], "api.marketplace.example", "host preserved");
    let sig = h["portico-signature"].as_str().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(verify_signature("sign-me-please-0123456789", sig, "GET", "/base/new/thing?x=1", "c1", now, 60), "{sig}");
    assert!(!verify_signature("sign-me-please-0123456789", sig, "GET", "/base/new/other?x=1", "c1", now, 60));

    // Basic auth injection and the default host (the upstream's own).
    let mut s = Setup::new("basic", &up);
    s.policies = policies(json!({"upstream_auth": {"type": "basic", "username": "acme", "password": "s3cret"}}));
    let gw = start(s).await;
    let seen: Value = client()
        .get(format!("{}/x", gw.base))
        .header("x-api-key", &gw.key)
        .header("authorization", "Bearer not-for-upstream")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["authorization"], "Basic YWNtZTpzM2NyZXQ=");
    assert_eq!(seen["headers"]["host"], up.trim_start_matches("http://"));
    assert!(seen["headers"].get("portico-signature").is_none(), "no secret, no signature");
}

#[tokio::test]
async fn ip_lists_are_checked_before_the_key_and_read_through_trusted_proxies() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.policies = policies(json!({"ip_allow": ["10.0.0.0/8"], "ip_deny": ["10.66.0.0/16"]}));
    let gw = start(s).await;
    // From 127.0.0.1, not allowed, and refused before the key is looked at.
    let resp = client().get(format!("{}/x", gw.base)).header("x-api-key", "ptc_nonsense").send().await.unwrap();
    problem(resp, 403, "not accepted from your network").await;
    // A client cannot claim an allowed address when the gateway trusts no proxy.
    let resp = client()
        .get(format!("{}/x", gw.base))
        .header("x-api-key", &gw.key)
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let mut s = Setup::new("echo", &up);
    s.policies = policies(json!({"ip_allow": ["10.0.0.0/8"], "ip_deny": ["10.66.0.0/16"]}));
    s.config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gw = start(s).await;
    let call = |xff: &'static str| {
        let (base, key) = (gw.base.clone(), gw.key.clone());
        async move {
            client()
                .get(format!("{base}/x"))
                .header("x-api-key", key)
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap()
        }
    };
    let ok = call("10.1.2.3").await;
    assert_eq!(ok.status(), 200);
    let seen: Value = ok.json().await.unwrap();
    assert_eq!(seen["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1", "a trusted proxy's chain is extended");
    assert_eq!(call("10.66.1.1").await.status(), 403, "deny wins over allow");
    assert_eq!(call("10.1.2.3, 192.0.2.1").await.status(), 403, "the nearest untrusted hop is the client");
}

#[tokio::test]
async fn json_nested_too_deep_is_refused_and_a_sane_body_arrives_whole() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.policies = policies(json!({"max_json_depth": 4}));
    let gw = start(s).await;
    let post = |body: String| {
        let (base, key) = (gw.base.clone(), gw.key.clone());
        async move {
            client()
                .post(format!("{base}/x"))
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    problem(post(deep).await, 400, "nested deeper than 4").await;
    let fine = r#"{"a": {"b": [1, 2, {"c": "[[[[[[[[["}]}}"#.to_owned();
    let resp = post(fine.clone()).await;
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["body"], fine.as_str());
    // A compressed JSON body cannot be checked: refused, not waved through.
    let resp = client()
        .post(format!("{}/x", gw.base))
        .header("x-api-key", &gw.key)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .unwrap();
    problem(resp, 415, "without Content-Encoding").await;
    // Not JSON: not inspected.
    let resp = client()
        .post(format!("{}/x", gw.base))
        .header("x-api-key", &gw.key)
        .header("content-type", "text/plain")
        .body("[".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Two operations: `GET /search` (`search`) and `GET /items/{id}` (`getItem`).
fn search_and_items() -> Option<Arc<OperationRouter>> {
    let op = |method: &str, path: &str, id: &str| Operation {
        method: method.into(),
        path: path.into(),
        operation_id: Some(id.into()),
        summary: None,
    };
    Some(Arc::new(
        OperationRouter::compile(&[op("GET", "/search", "search"), op("GET", "/items/{id}", "getItem")]).unwrap(),
    ))
}

#[tokio::test]
async fn a_weighted_operation_spends_several_units_of_the_plan() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.operations = search_and_items();
    s.policies = policies(json!({"operation_weights": {"search": 4}}));
    s.rate_limit = Some(RateLimit::new(10, Period::Minute).unwrap());
    s.monthly_quota = Some(100);
    let gw = start(s).await;
    let get = |path: &'static str| {
        let (base, key) = (gw.base.clone(), gw.key.clone());
        async move { client().get(format!("{base}{path}")).header("x-api-key", key).send().await.unwrap() }
    };
    let r = get("/search").await;
    let state = r.headers()["ratelimit"].to_str().unwrap();
    assert!(state.starts_with("\"minute\";r=6;t=24, \"month\";r=96;t="), "{state}");
    assert_eq!(
        get("/items/1").await.headers()["ratelimit"].to_str().unwrap().split(',').next().unwrap(),
        "\"minute\";r=5;t=30"
    );
    assert_eq!(get("/search").await.status(), 200);
    let refused = get("/search").await;
    assert_eq!(refused.status(), 429, "1 unit left, a search costs 4");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(get("/items/2").await.status(), 200, "a 1-unit call still fits");
}

/// A plan with several windows and a daily quota: every window and quota is reported, the
/// tightest refuses with its own wait, and a refusal spends nothing.
#[tokio::test]
async fn several_windows_and_a_daily_quota() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.rate_limit = Some(RateLimit::new(10, Period::Second).unwrap());
    s.rate_limits = vec![RateLimit::new(3, Period::Hour).unwrap()];
    s.daily_quota = Some(5);
    let gw = start(s).await;
    let get = || {
        let (base, key) = (gw.base.clone(), gw.key.clone());
        async move { client().get(format!("{base}/items/1")).header("x-api-key", key).send().await.unwrap() }
    };
    let r = get().await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit-policy"].to_str().unwrap(),
        "\"second\";q=10;w=1, \"hour\";q=3;w=3600, \"daily\";q=5;w=86400"
    );
    let state = r.headers()["ratelimit"].to_str().unwrap();
    assert!(state.starts_with("\"second\";r=9;t=1, \"hour\";r=2;t=1200, \"daily\";r=4;t="), "{state}");
    assert_eq!(get().await.status(), 200);
    assert_eq!(get().await.status(), 200);
    let refused = get().await;
    assert_eq!(refused.status(), 429, "the hour's 3 are spent although the second allows 10");
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1100..=1200).contains(&wait), "the hour's window says when: {wait}");
    assert!(refused.headers()["ratelimit"].to_str().unwrap().starts_with("\"hour\";r=0;"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("3 per hour"), "{body}");
}

/// An operation's own windows: reported by name beside the plan's, and refusing that operation
/// only.
#[tokio::test]
async fn an_operation_has_windows_of_its_own() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.operations = search_and_items();
    s.rate_limit = Some(RateLimit::new(100, Period::Minute).unwrap());
    s.operation_limits = HashMap::from([("search".to_owned(), vec![RateLimit::new(1, Period::Hour).unwrap()])]);
    let gw = start(s).await;
    let get = |path: &'static str| {
        let (base, key) = (gw.base.clone(), gw.key.clone());
        async move { client().get(format!("{base}{path}")).header("x-api-key", key).send().await.unwrap() }
    };
    let r = get("/search").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-policy"], "\"minute\";q=100;w=60, \"search/hour\";q=1;w=3600");
    let refused = get("/search").await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers()["ratelimit"].to_str().unwrap().starts_with("\"search/hour\";r=0;"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("operation `search`"), "{body}");
    let item = get("/items/1").await;
    assert_eq!(item.status(), 200, "other operations are not limited by it");
    assert!(item.headers()["ratelimit"].to_str().unwrap().starts_with("\"minute\";r=98;"), "{:?}", item.headers());
}

/// The daily quota refuses past its count with a wait until midnight UTC.
#[tokio::test]
async fn the_daily_quota_refuses_until_midnight() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.daily_quota = Some(2);
    s.monthly_quota = Some(1000);
    let gw = start(s).await;
    let get = || {
        let (base, key) = (gw.base.clone(), gw.key.clone());
        async move { client().get(format!("{base}/items/1")).header("x-api-key", key).send().await.unwrap() }
    };
    assert_eq!(get().await.status(), 200);
    let second = get().await;
    assert!(second.headers()["ratelimit"].to_str().unwrap().starts_with("\"daily\";r=0;"), "{:?}", second.headers());
    let refused = get().await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(wait.abs_diff(86_400 - now % 86_400) <= 2, "until midnight UTC: {wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("daily quota"), "{body}");
}

#[tokio::test]
async fn cors_follows_the_version_policy() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.policies = policies(
        json!({"cors": {"allow_origins": ["https://app.example"], "allow_headers": ["X-Api-Key", "Content-Type"], "max_age_secs": 120}}),
    );
    let gw = start(s).await;
    let c = client();
    let pre = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, format!("{}/x", gw.base))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key, x-evil")
            .send()
    };
    let ok = pre("https://app.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(ok.headers()["access-control-allow-headers"], "X-Api-Key, Content-Type");
    assert_eq!(ok.headers()["access-control-max-age"], "120");
    problem(pre("https://evil.example").await.unwrap(), 403, "origin").await;

    let get = |origin: &'static str| {
        c.get(format!("{}/x", gw.base)).header("x-api-key", &gw.key).header("origin", origin).send()
    };
    let ok = get("https://app.example").await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
    assert!(ok.headers()["vary"].to_str().unwrap().contains("Origin"));
    let other = get("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none(), "the browser withholds the answer");

    // Without a policy, any origin, never credentials.
    let gw = start(Setup::new("open", &up)).await;
    let any = c
        .get(format!("{}/x", gw.base))
        .header("x-api-key", &gw.key)
        .header("origin", "https://x.example")
        .send()
        .await
        .unwrap();
    assert_eq!(any.headers()["access-control-allow-origin"], "*");
}

/// A sink that cannot take more calls (a journal whose backlog is full).
struct Full;
impl portico_core::usage::UsageSink for Full {
    fn begin(&self, _e: &portico_core::usage::UsageEvent) -> u64 {
        panic!("no call may be forwarded when usage cannot be recorded")
    }
    fn end(&self, _t: u64, e: portico_core::usage::UsageEvent) {
        panic!("a call refused because usage cannot be recorded is not metered either (got {e:?})")
    }
    fn accepting(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn calls_are_refused_rather_than_served_unmetered() {
    let up = echo_upstream().await;
    let mut s = Setup::new("echo", &up);
    s.sink = Arc::new(Full);
    let gw = start(s).await;
    let resp = client().get(format!("{}/x", gw.base)).header("x-api-key", &gw.key).send().await.unwrap();
    problem(resp, 503, "metering backlog is full").await;
}

/// A pets API: `GET /pets` (typed query parameters and a header), `GET /pets/{petId}` (an
/// integer id) and `POST /pets` (a required JSON body, `$ref`s into the components).
fn pets_document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Pets", "version": "1.0.0"},
        "paths": {
            "/pets": {
                "get": {
                    "operationId": "listPets",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "species", "in": "query", "required": true, "schema": {"type": "string", "enum": ["cat", "dog"]}},
                        {"name": "X-Tenant", "in": "header", "schema": {"type": "string", "pattern": "^t-[0-9]+$"}}
                    ],
                    "responses": {"200": {"description": "ok"}}
                },
                "post": {
                    "operationId": "addPet",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
                    "responses": {"201": {"description": "made"}}
                }
            },
            "/pets/{petId}": {"get": {
                "operationId": "getPet",
                "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "ok"}}
            }}
        },
        "components": {"schemas": {
            "Pet": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0, "nullable": true}
            }}
        }}
    })
}

#[tokio::test]
async fn calls_are_checked_against_the_openapi_document() {
    let up = echo_upstream().await;
    let doc = portico_core::openapi::OpenApiDoc::parse(pets_document()).unwrap();
    let (router, unchecked) = OperationRouter::compile_validated(&doc.operations, &doc.upgraded()).unwrap();
    assert!(unchecked.is_empty(), "{unchecked:?}");
    let mut s = Setup::new("pets", &up);
    s.policies = policies(json!({"validate_requests": true}));
    s.operations = Some(Arc::new(router));
    let gw = start(s).await;
    let get = |path: &str| client().get(format!("{}{path}", gw.base)).header("x-api-key", &gw.key);
    let post = |ct: Option<&str>, body: &str| {
        let mut r = client().post(format!("{}/pets", gw.base)).header("x-api-key", &gw.key).body(body.to_owned());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r
    };

    // Valid calls pass untouched.
    let resp = get("/pets?species=cat&limit=5").header("x-tenant", "t-42").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/pets");
    assert_eq!(get("/pets/17").send().await.unwrap().status(), 200);
    let pet = r#"{"name": "Rex", "age": null}"#;
    let resp = post(Some("application/json"), pet).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["body"], pet, "a checked body is forwarded as sent");

    // Each bad part is named, in `detail` and in `errors`.
    let resp = get("/pets?limit=0").header("x-tenant", "acme").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "request_invalid");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("query parameter `limit`") && detail.contains("minimum of 1"), "{detail}");
    let errors: Vec<(String, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["in"].as_str().unwrap().to_owned(), e["name"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        errors,
        [("query".into(), "limit".into()), ("query".into(), "species".into()), ("header".into(), "X-Tenant".into())]
    );
    problem(get("/pets?species=fish").send().await.unwrap(), 400, "query parameter `species`").await;
    problem(get("/pets/seventeen").send().await.unwrap(), 400, "path parameter `petId`").await;

    // Bodies: required, of a declared type, and matching the schema (through its `$ref`).
    problem(post(Some("application/json"), "").send().await.unwrap(), 400, "body: is required").await;
    problem(post(Some("text/plain"), pet).send().await.unwrap(), 415, "application/json").await;
    let resp = post(Some("application/json"), r#"{"age": -1}"#).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let pointers: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert!(pointers.contains(&"") && pointers.contains(&"/age"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("\"name\" is a required property"), "{body}");
    problem(post(Some("application/json"), "{oops").send().await.unwrap(), 400, "not valid JSON").await;

    // What the upstream could read another way than the check did: a scalar given twice, a
    // header line twice, a JSON key twice, two Content-Types.
    problem(get("/pets?limit=5&limit=500").send().await.unwrap(), 400, "is given 2 times").await;
    let twice = get("/pets").header("x-tenant", "acme").header("x-tenant", "evil");
    problem(twice.send().await.unwrap(), 400, "header parameter `X-Tenant`: is given 2 times").await;
    problem(
        post(Some("application/json"), r#"{"name": "Rex", "name": ""}"#).send().await.unwrap(),
        400,
        "appears twice",
    )
    .await;
    let two_types = post(Some("application/json"), pet).header("content-type", "text/plain");
    problem(two_types.send().await.unwrap(), 400, "more than one Content-Type").await;

    // Without the policy the same document only routes: a bad call reaches the upstream.
    let doc = portico_core::openapi::OpenApiDoc::parse(pets_document()).unwrap();
    let mut s = Setup::new("pets", &up);
    s.operations = Some(Arc::new(OperationRouter::compile(&doc.operations).unwrap()));
    let gw = start(s).await;
    let resp = client().get(format!("{}/pets/seventeen", gw.base)).header("x-api-key", &gw.key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
