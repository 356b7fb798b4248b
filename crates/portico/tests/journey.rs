//! The walking skeleton's journey, on SQLite and on PostgreSQL: a provider publishes an API
//! with a plan, a consumer signs up, creates an app, subscribes, gets a key and calls the API
//! through the gateway; and everything that must be refused on the way is.

mod common;

use common::{Backend, TestApp, echo_openapi, spawn_app, spawn_upstream};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn gw(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(format!("{}{path}", app.gateway));
    if let Some(k) = key {
        req = req.header("X-Api-Key", k);
    }
    req.send().await.unwrap()
}

fn is_problem(h: &reqwest::header::HeaderMap) -> bool {
    h.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/problem+json")
}

async fn journey(backend: Backend) {
    let app = spawn_app(backend).await;
    let upstream = spawn_upstream().await;

    // Both listeners answer health checks.
    for base in [&app.api, &app.gateway] {
        for p in ["/healthz", "/readyz"] {
            let r = app.http.get(format!("{base}{p}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}{p}");
        }
    }

    // A provider publishes an API with a plan.
    let provider = app.signup("pat@provider.example", "provider").await;
    let (s, v) = app
        .post(
            "/apis",
            Some(&provider),
            json!({"slug": "echo", "name": "Echo", "description": "Echoes", "category": "Tools", "tags": ["test"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), json!({"version": "1.0.0", "upstream_url": format!("{}/base", upstream.url), "openapi": echo_openapi(), "state": "published"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app.post("/apis/echo/plans", Some(&provider), json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}, "rate_limit": {"requests": 5, "per": "minute"}, "monthly_quota": 1000})).await;
    assert_eq!(s, 201, "{v}");
    // A second API the consumer will not subscribe to.
    assert_eq!(app.post("/apis", Some(&provider), json!({"slug": "other", "name": "Other"})).await.0, 201);
    assert_eq!(
        app.post(
            "/apis/other/versions",
            Some(&provider),
            json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": echo_openapi(), "state": "published"})
        )
        .await
        .0,
        201
    );

    // The catalog shows it to anyone.
    let (s, v) = app.get("/apis", None).await;
    assert_eq!(s, 200);
    assert!(v["items"].as_array().unwrap().iter().any(|a| a["slug"] == "echo"), "{v}");

    // A consumer signs up, creates an app, subscribes and gets a key.
    let consumer = app.signup("cleo@consumer.example", "consumer").await;
    let (s, created) = app.post("/apps", Some(&consumer), json!({"name": "My dashboard"})).await;
    assert_eq!(s, 201, "{created}");
    let app_id = created["id"].as_str().unwrap().to_owned();
    let (s, sub) =
        app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": "echo", "plan": "free"})).await;
    assert_eq!(s, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let (s, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "prod"})).await;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ptc_") && key.len() == 32, "{key}");
    let (_, list) = app.get(&format!("/apps/{app_id}/keys"), Some(&consumer)).await;
    assert!(!list.to_string().contains(&key), "a listed key never shows its secret");
    assert_eq!(list[0]["last4"], key[28..]);

    // It calls the API through the gateway: the upstream's answer comes back.
    let r = app
        .http
        .get(format!("{}/echo/v1/things/42?colour=red", app.gateway))
        .header("X-Api-Key", &key)
        .header("X-Portico-Consumer", "forged")
        .header("X-Request-Id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-me-1");
    let call_id = r.headers()["x-portico-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["ratelimit-policy"], "\"minute\";q=5;w=60, \"month\";q=1000;w=2592000");
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"minute\";r=4;t=12, \"month\";r=999;t="));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/base/things/42");
    assert_eq!(body["query"], "colour=red");
    let h = &body["headers"];
    assert!(h.get("x-api-key").is_none(), "the consumer's key is not forwarded: {h}");
    assert_ne!(h["x-portico-consumer"], "forged");
    assert_eq!(h["x-portico-plan"], "free");
    assert_eq!(h["x-request-id"], "trace-me-1");
    assert_eq!(h["x-portico-request-id"], call_id.as_str(), "the upstream gets Portico's id of the call");
    assert!(h["traceparent"].as_str().unwrap().starts_with("00-"));
    // Bearer works too. Without an X-Request-Id of its own, the call's is Portico's id.
    let r = app.http.get(format!("{}/echo/v1/things/1", app.gateway)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], r.headers()["x-portico-request-id"]);

    // No key, a wrong key, a mistyped key: 401.
    let r = gw(&app, "/echo/v1/things/1", None).await;
    assert_eq!(r.status(), 401);
    assert!(is_problem(r.headers()));
    let wrong = portico_core::api_key::ApiKey::generate();
    assert_eq!(gw(&app, "/echo/v1/things/1", Some(wrong.expose_secret())).await.status(), 401);
    let mut typo = key.clone();
    typo.replace_range(10..11, if &key[10..11] == "a" { "b" } else { "a" });
    assert_eq!(gw(&app, "/echo/v1/things/1", Some(&typo)).await.status(), 401);
    // A key in the query string is refused.
    assert_eq!(
        app.http.get(format!("{}/echo/v1/things/1?api_key={key}", app.gateway)).send().await.unwrap().status(),
        400
    );
    // An API the app has no subscription to: 403.
    let r = gw(&app, "/other/v1/things/1", Some(&key)).await;
    assert_eq!(r.status(), 403);
    assert!(is_problem(r.headers()));
    // Unknown API: 404. A path or method that the API's OpenAPI document does not have: 404 / 405.
    assert_eq!(gw(&app, "/nope/v1/x", Some(&key)).await.status(), 404);
    let r = gw(&app, "/echo/v1/not-an-operation", Some(&key)).await;
    assert_eq!(r.status(), 404);
    assert!(is_problem(r.headers()));
    let r =
        app.http.delete(format!("{}/echo/v1/things/1", app.gateway)).header("X-Api-Key", &key).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");

    // Over the rate limit (5 a minute; 2 used): 429 with Retry-After.
    let mut limited = None;
    for _ in 0..6 {
        let r = gw(&app, "/echo/v1/things/1", Some(&key)).await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("the 6th call within a minute is limited");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(is_problem(r.headers()));

    // Usage is counted per subscription per day and readable through the API.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let (s, u) = app.get(&format!("/subscriptions/{sub_id}/usage"), Some(&consumer)).await;
        assert_eq!(s, 200, "{u}");
        if u["total_calls"].as_i64().unwrap() >= 6 || Instant::now() > deadline {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(usage["total_calls"], 6, "5 served + 1 limited: {usage}");
    assert_eq!(usage["days"][0]["client_errors"], 1, "{usage}");
    let (s, u) = app.get(&format!("/apps/{app_id}/usage"), Some(&consumer)).await;
    assert_eq!((s, &u["total_calls"]), (200, &json!(6)));

    // The request log finds the call by Portico's id, for its consumer and its provider.
    for who in [&consumer, &provider] {
        let (s, log) = app.get(&format!("/requests?request_id={call_id}"), Some(who)).await;
        assert_eq!(s, 200, "{log}");
        assert_eq!(log["items"][0]["operation"], "getThing", "{log}");
        assert_eq!((log["items"][0]["status"].as_i64(), log["items"][0]["api"].as_str()), (Some(200), Some("echo")));
    }
    // …and by the X-Request-Id the client sent, for both; the entry shows it.
    for who in [&consumer, &provider] {
        let (s, log) = app.get("/requests?request_id=trace-me-1", Some(who)).await;
        assert_eq!(s, 200, "{log}");
        assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
        assert_eq!(log["items"][0]["request_id"], call_id.as_str());
        assert_eq!(log["items"][0]["client_request_id"], "trace-me-1");
    }
    let (s, log) = app.get("/requests?request_id=trace-me-1&operation=getThing", Some(&provider)).await;
    assert_eq!((s, log["items"].as_array().unwrap().len()), (200, 1), "{log}");
    let (_, log) = app.get("/requests?operation=noSuchOperation", Some(&provider)).await;
    assert_eq!(log["items"], json!([]));
    let (s, v) = app.get("/requests?request_id=has%20space", Some(&consumer)).await;
    assert_eq!(s, 400, "{v}");
    let (_, log) = app.get("/requests?status=429", Some(&consumer)).await;
    assert_eq!(log["items"].as_array().unwrap().len(), 1);
    let (s, v) = app.get("/requests?from=yesterday", Some(&consumer)).await;
    assert_eq!(s, 400, "{v}");

    // Analytics: the consumer's traffic by status class, the provider's top operations, CSV.
    let (s, ts) = app.get("/analytics/usage?group_by=status_class&granularity=day", Some(&consumer)).await;
    assert_eq!(s, 200, "{ts}");
    let total = |ts: &Value, group: &str| -> u64 {
        ts["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["group"] == group)
            .flat_map(|s| s["points"].as_array().unwrap())
            .map(|p| p["calls"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((total(&ts, "2xx"), total(&ts, "4xx")), (5, 1), "{ts}");
    // The 429 is metered but carries no billable units.
    let (_, all) = app.get("/analytics/usage?granularity=minute", Some(&consumer)).await;
    let sum = |field: &str| -> u64 {
        all["series"][0]["points"].as_array().unwrap().iter().map(|p| p[field].as_u64().unwrap()).sum()
    };
    assert_eq!((sum("calls"), sum("units"), sum("refused")), (6, 5, 1), "{all}");
    let (s, top) = app.get("/analytics/top?group_by=operation", Some(&provider)).await;
    assert_eq!(s, 200, "{top}");
    assert_eq!(top["entries"][0]["group"], "getThing");
    assert!(top["entries"][0]["p95_ms"].as_f64().is_some());
    // Every filter narrows to the calls it names: each group's id, as a filter, gives that
    // group's calls, and an id that matches nothing gives none.
    for (by, param) in
        [("version", "version_id"), ("app", "app_id"), ("plan", "plan_id"), ("consumer", "consumer"), ("api", "api")]
    {
        for who in [&consumer, &provider] {
            let (s, top) = app.get(&format!("/analytics/top?group_by={by}"), Some(who)).await;
            assert_eq!(s, 200, "{top}");
            let group = top["entries"][0]["group"].as_str().unwrap().to_owned();
            assert_eq!(top["entries"][0]["calls"], 6, "{by}: {top}");
            let (s, ts) = app.get(&format!("/analytics/usage?granularity=day&{param}={group}"), Some(who)).await;
            assert_eq!((s, total(&ts, "all")), (200, 6), "{param}={group}: {ts}");
            let nothing = if by == "api" { "no-such-api".to_owned() } else { uuid::Uuid::now_v7().to_string() };
            let (s, ts) = app.get(&format!("/analytics/usage?granularity=day&{param}={nothing}"), Some(who)).await;
            assert_eq!((s, total(&ts, "all")), (200, 0), "{param}={nothing}: {ts}");
        }
    }
    for (filter, calls) in [("status_class=4xx", 1), ("status_class=2xx", 5), ("operation=getThing", 6)] {
        let (_, ts) = app.get(&format!("/analytics/usage?granularity=day&{filter}"), Some(&provider)).await;
        assert_eq!(total(&ts, "all"), calls, "{filter}: {ts}");
    }
    let r = app.http.get(app.url("/analytics/usage?format=csv")).bearer_auth(&consumer).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(r.text().await.unwrap().starts_with("group,t,calls,"));
    let r = app
        .http
        .get(app.url("/analytics/top?group_by=operation&format=csv"))
        .bearer_auth(&provider)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("group,calls,units,"), "{csv}");
    assert!(lines.next().unwrap().starts_with("getThing,6,"), "{csv}");
    let (s, v) = app.get("/analytics/top?format=xml", Some(&provider)).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app.get("/analytics/usage?granularity=week", Some(&consumer)).await;
    assert_eq!(s, 400, "{v}");

    // Consumer B sees nothing of consumer A's: 404 everywhere, and an empty request log.
    let other = app.signup("bo@elsewhere.example", "consumer").await;
    let (_, log) = app.get(&format!("/requests?request_id={call_id}"), Some(&other)).await;
    assert_eq!(log["items"], json!([]));
    let (_, log) = app.get("/requests?request_id=trace-me-1", Some(&other)).await;
    assert_eq!(log["items"], json!([]), "another consumer cannot find the call by the client's id either");
    let (_, log) = app.get("/requests", Some(&other)).await;
    assert_eq!(log["items"], json!([]));
    let (_, ts) = app.get("/analytics/usage", Some(&other)).await;
    assert_eq!(ts["series"], json!([]), "no analytics of others' traffic");
    // Another provider sees nothing of this provider's API traffic either.
    let rival = app.signup("ray@rival.example", "provider").await;
    let (_, ts) = app.get("/analytics/usage", Some(&rival)).await;
    assert_eq!(ts["series"], json!([]), "no analytics of another provider's APIs");
    let (_, top) = app.get("/analytics/top?group_by=consumer", Some(&rival)).await;
    assert_eq!(top["entries"], json!([]), "{top}");
    let (_, log) = app.get(&format!("/requests?request_id={call_id}"), Some(&rival)).await;
    assert_eq!(log["items"], json!([]));
    // A platform admin sees every organization's traffic and finds any call.
    let admin = app.admin_token().await;
    let (s, ts) = app.get("/analytics/usage?granularity=day", Some(&admin)).await;
    assert_eq!((s, total(&ts, "all")), (200, 6), "{ts}");
    let (_, log) = app.get(&format!("/requests?request_id={call_id}"), Some(&admin)).await;
    assert_eq!(log["items"][0]["status"], 200, "{log}");
    let key_id = list[0]["id"].as_str().unwrap();
    for path in [
        format!("/apps/{app_id}"),
        format!("/apps/{app_id}/keys"),
        format!("/apps/{app_id}/usage"),
        format!("/subscriptions/{sub_id}"),
        format!("/subscriptions/{sub_id}/usage"),
    ] {
        let (s, v) = app.get(&path, Some(&other)).await;
        assert_eq!(s, 404, "{path}: {v}");
    }
    let (s, _, _) = app.call(Method::DELETE, &format!("/apps/{app_id}/keys/{key_id}"), Some(&other), None).await;
    assert_eq!(s, 404);
    let (s, v) = app.post(&format!("/apps/{app_id}/keys"), Some(&other), json!({})).await;
    assert_eq!(s, 404, "{v}");
    let (_, mine) = app.get("/apps", Some(&other)).await;
    assert_eq!(mine["items"], json!([]));
    // Nor can the provider change the consumer's app, nor the consumer the provider's API.
    assert_eq!(app.get(&format!("/apps/{app_id}"), Some(&provider)).await.0, 404);
    let (s, _, _) =
        app.call(Method::PATCH, "/apis/echo", Some(&consumer), Some(json!({"description": "mine now"}))).await;
    assert_eq!(s, 404);

    // A revoked key fails within a second.
    let (s, _, _) = app.call(Method::DELETE, &format!("/apps/{app_id}/keys/{key_id}"), Some(&consumer), None).await;
    assert_eq!(s, 204);
    let t = Instant::now();
    loop {
        let st = gw(&app, "/echo/v1/things/1", Some(&key)).await.status();
        if st == 401 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "revoked key still accepted after 1 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a new key works within a second.
    let (_, k2) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({})).await;
    let t = Instant::now();
    loop {
        let st = gw(&app, "/other/v1/things/1", Some(k2["key"].as_str().unwrap())).await.status();
        if st == 403 {
            break; // known key, no subscription to `other`: identified, so the key works
        }
        assert!(t.elapsed() < Duration::from_secs(1), "new key not accepted within 1 s (last status {st})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    metrics_are_scrapable(&app).await;
    bad_input(&app, &provider, &consumer, &app_id).await;
    app.stop().await;
}

/// `/metrics` parses as Prometheus text and counts what this journey did.
async fn metrics_are_scrapable(app: &TestApp) {
    let text = app.http.get(&app.metrics).send().await.unwrap().text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    // Other tests in this process share the recorder: at least what this journey did.
    assert!(value("portico_gateway_requests_total", &[("api", "echo"), ("status_class", "2xx")]) >= 5.0, "{text}");
    assert!(value("portico_gateway_rejections_total", &[("reason", "rate_limit")]) >= 1.0);
    assert!(value("portico_gateway_requests_total", &[("api", "_unknown")]) >= 1.0, "unknown APIs share one label");
    assert!(!text.contains("api=\"nope\""), "no label per unknown slug");
    assert!(
        scrape.samples.iter().any(|s| s.metric.starts_with("portico_gateway_request_duration_seconds")
            && s.labels.get("api") == Some("echo")
            && s.labels.get("status_class") == Some("2xx")),
        "latency by API and status class: {text}"
    );
    assert!(value("portico_store_pool_connections", &[]) >= 1.0);
    // Upstream health, per API (refreshed every second by the gateway).
    let t = Instant::now();
    loop {
        let text = app.http.get(&app.metrics).send().await.unwrap().text().await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let up = scrape.samples.iter().find(|s| {
            s.metric == "portico_gateway_upstream_targets"
                && s.labels.get("api") == Some("echo")
                && s.labels.get("state") == Some("available")
        });
        if let Some(s) = up {
            assert!(matches!(s.value, prometheus_parse::Value::Gauge(v) if v >= 1.0), "{text}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no upstream target gauge: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The journal's backlog and lag are reported.
    assert!(scrape.samples.iter().any(|s| s.metric == "portico_journal_backlog_bytes"), "{text}");
    assert!(scrape.samples.iter().any(|s| s.metric == "portico_journal_lag_seconds"), "{text}");
}

async fn bad_input(app: &TestApp, provider: &str, consumer: &str, app_id: &str) {
    let problem = |s: u16, v: &Value, want: u16, needle: &str| {
        assert_eq!(s, want, "{v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "detail `{detail}` should mention `{needle}`");
    };
    // Malformed JSON.
    let r = app
        .http
        .post(app.url("/apis"))
        .bearer_auth(provider)
        .header("content-type", "application/json")
        .body("{\"slug\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(is_problem(r.headers()));
    // Unknown field.
    let (s, v) = app.post("/apis", Some(provider), json!({"slug": "x-api", "name": "X", "colour": "red"})).await;
    problem(s, &v, 400, "colour");
    // Invalid slug.
    let (s, v) = app.post("/apis", Some(provider), json!({"slug": "Not A Slug", "name": "X"})).await;
    problem(s, &v, 400, "slug");
    // Duplicate slug.
    let (s, v) = app.post("/apis", Some(provider), json!({"slug": "echo", "name": "Echo again"})).await;
    problem(s, &v, 409, "echo");
    // Invalid OpenAPI document: nothing is written.
    let (s, v) = app
        .post(
            "/apis/echo/versions",
            Some(provider),
            json!({"version": "2.0.0", "upstream_url": "http://127.0.0.1:1", "openapi": {"swagger": "2.0"}}),
        )
        .await;
    problem(s, &v, 400, "OpenAPI");
    let (_, versions) = app.get("/apis/echo/versions", Some(provider)).await;
    assert_eq!(versions.as_array().unwrap().len(), 1, "the invalid version was not stored");
    // Unknown plan.
    let (s, v) =
        app.post("/subscriptions", Some(consumer), json!({"app_id": app_id, "api": "other", "plan": "gold"})).await;
    problem(s, &v, 404, "gold");
    // Oversized body.
    let big = "x".repeat(6 * 1024 * 1024);
    let r = app
        .http
        .post(app.url("/apis"))
        .bearer_auth(provider)
        .header("content-type", "application/json")
        .body(format!("{{\"slug\":\"big\",\"name\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(is_problem(r.headers()));
    // Not signed in; unknown endpoint; wrong method.
    let (s, _) = app.get("/apps", None).await;
    assert_eq!(s, 401);
    let (s, v) = app.get("/nothing-here", None).await;
    problem(s, &v, 404, "docs");
    let (s, _, _) = app.call(Method::PUT, "/apis", Some(provider), Some(json!({}))).await;
    assert_eq!(s, 405);
    // A broken escape in a path parameter is a problem+json too.
    let r = app.http.get(app.url("/apps/%FF")).bearer_auth(consumer).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(is_problem(r.headers()));
    // A plan that admits nothing is refused.
    let (s, v) = app
        .post(
            "/apis/echo/plans",
            Some(provider),
            json!({"slug": "none", "name": "None", "pricing": {"type": "free"}, "monthly_quota": 0}),
        )
        .await;
    problem(s, &v, 400, "monthly_quota");
    // Apps belong to consumer organizations only.
    let (_, me) = app.get("/me", Some(provider)).await;
    let provider_org = me["organizations"][0]["id"].as_str().unwrap().to_owned();
    let (s, v) = app.post("/apps", Some(provider), json!({"name": "Sneaky", "org_id": provider_org})).await;
    problem(s, &v, 400, "consumer organization");
    // Nobody takes the platform admins' slug.
    let (s, v) =
        app.post("/orgs", Some(consumer), json!({"name": "Platform", "slug": "platform", "kind": "consumer"})).await;
    problem(s, &v, 409, "reserved");
    // A stale session cookie is a signed-out browser on public pages, not an error.
    let r = app
        .http
        .get(app.url("/apis"))
        .header("cookie", "portico_session=pts_stale000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let portal = app.api.clone();
    let r = app
        .http
        .get(format!("{portal}/"))
        .header("cookie", "portico_session=pts_stale000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // …but a bad bearer token sent on purpose is refused.
    let (s, _) = app.get("/apis", Some("pts_stale000000000000000000000000000000000000")).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn journey_on_sqlite() {
    journey(Backend::Sqlite).await;
}

#[tokio::test]
async fn journey_on_postgres() {
    journey(Backend::Postgres).await;
}

#[tokio::test]
async fn the_api_describes_itself_in_openapi_31() {
    let app = spawn_app(Backend::Sqlite).await;
    let (s, doc) = app.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for p in ["/auth/signup", "/apis", "/apps/{app_id}/keys", "/subscriptions/{subscription_id}/usage", "/admin/apply"]
    {
        assert!(doc["paths"].get(p).is_some(), "{p} is documented");
    }
    let page = app.http.get(format!("{}/api/v1/docs", app.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("swagger"));
    app.stop().await;
}

/// A provider declares a version's policies through the API: secrets are stored but never shown,
/// a redacted secret sent back keeps the stored one, and the gateway applies them at once.
#[tokio::test]
async fn version_policies_through_the_api() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("pia@provider.example", "provider").await;
    assert_eq!(app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await.0, 201);
    let (s, v) = app
        .post(
            "/apis/echo/versions",
            Some(&provider),
            json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": echo_openapi(), "state": "published",
                   "policies": {"request_headers": {"add": {"Host": "evil"}}}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("managed by the gateway"), "{v}");
    let policies = json!({
        "upstream_auth": {"type": "header", "name": "X-Upstream-Key", "value": "provider-secret-value"},
        "signing_secret": "a-signing-secret-of-some-length",
        "request_headers": {"add": {"X-From": "portico"}}
    });
    let (s, v) = app
        .post(
            "/apis/echo/versions",
            Some(&provider),
            json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": echo_openapi(), "state": "published", "policies": policies}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(!v.to_string().contains("provider-secret-value") && !v.to_string().contains("a-signing-secret"), "{v}");
    assert_eq!(v["policies"]["upstream_auth"]["value"], "<secret>");
    let (_, public) = app.get("/apis/echo/versions/1.0.0", None).await;
    assert!(public["policies"].is_null(), "only the provider sees policies: {public}");

    // Sending the redacted form back (as a form would) keeps the secret.
    let mut shown = v["policies"].clone();
    shown["request_headers"]["add"]["X-From"] = json!("portico-2");
    let (s, v, _) = app
        .call(reqwest::Method::PATCH, "/apis/echo/versions/1.0.0", Some(&provider), Some(json!({"policies": shown})))
        .await;
    assert_eq!(s, 200, "{v}");

    let consumer = app.signup("cora@consumer.example", "consumer").await;
    let (_, created) = app.post("/apps", Some(&consumer), json!({"name": "A"})).await;
    let app_id = created["id"].as_str().unwrap();
    assert_eq!(
        app.post(
            "/apis/echo/plans",
            Some(&provider),
            json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": "echo", "plan": "free"})).await.0,
        201
    );
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "k"})).await;
    let r = gw(&app, "/echo/v1/things/1", k["key"].as_str()).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-upstream-key"], "provider-secret-value", "the stored secret survived the PATCH");
    assert_eq!(body["headers"]["x-from"], "portico-2");
    let sig = body["headers"]["portico-signature"].as_str().unwrap();
    assert!(sig.starts_with("t=") && sig.contains(",v1="), "signed (verified in the gateway's tests): {sig}");
    app.stop().await;
}

/// The nice value of each of this process's threads, by thread name (as `/proc` shortens it).
fn thread_priorities() -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_owned();
        // After the name: field 3 (state) onwards; the nice value is field 19.
        let nice: i32 = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((name, nice));
    }
    out
}

/// Under saturation the gateway's workers come first: the usage shipper and the SQLite
/// connections it ships through run at a lower CPU priority (the journal is durable, so
/// shipping may lag), and the gateway's threads keep the normal one.
#[tokio::test]
async fn the_usage_shipper_runs_below_the_gateways_priority() {
    let app = spawn_app(Backend::Sqlite).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let t = thread_priorities();
        let workers = t.iter().filter(|(n, p)| n.starts_with("sqlx-sqlite-wor") && *p == 10).count();
        let gateway = t.iter().filter(|(n, _)| n.starts_with("portico-gw-")).count();
        if (workers > 0 && gateway > 0) || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let of = |prefix: &str| threads.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, p)| *p).collect::<Vec<_>>();
    let shipper = of("portico-shipper");
    assert!(!shipper.is_empty() && shipper.iter().all(|p| *p == 10), "shipper threads' nice values: {threads:?}");
    assert!(of("sqlx-sqlite-wor").contains(&10), "the shipper's SQLite connections run at its priority: {threads:?}");
    let gateway = of("portico-gw-");
    assert!(
        !gateway.is_empty() && gateway.iter().all(|p| *p == 0),
        "gateway workers keep the normal priority: {threads:?}"
    );
    app.stop().await;
}

/// Calls the gateway as `GET http://{host}{path}` (the `Host` header names the host).
async fn gw_on(app: &TestApp, host: &str, path: &str, key: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.gateway))
        .header("Host", host)
        .header("X-Api-Key", key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An API can claim host names: on them it answers as `/v{major}/…` (and nobody else's API
/// does); a host belongs to one API; taking the names away stops the routing.
#[tokio::test]
async fn an_api_answers_on_its_own_host_names() {
    let app = common::spawn_app_configured(Backend::Sqlite, |s| {
        s.public_gateway_url = Some("https://gateway.example.net".into());
    })
    .await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("hana@provider.example", "provider").await;
    let (s, v) = app
        .post("/apis", Some(&provider), json!({"slug": "weather", "name": "Weather", "hosts": ["Weather.Example.com"]}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["hosts"], json!(["weather.example.com"]), "stored lowercase: {v}");
    let version =
        json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": echo_openapi(), "state": "published"});
    assert_eq!(app.post("/apis/weather/versions", Some(&provider), version).await.0, 201);
    let plan = json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}});
    assert_eq!(app.post("/apis/weather/plans", Some(&provider), plan).await.0, 201);
    let maps_upstream = spawn_upstream().await;
    app.publish_api(&provider, "maps", &maps_upstream.url).await;

    // Another API cannot take the host; bad names are refused with what to fix.
    let (s, v) = app
        .post("/apis", Some(&provider), json!({"slug": "rival", "name": "R", "hosts": ["weather.example.com"]}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("weather.example.com"), "{v}");
    assert_eq!(app.get("/apis/rival", Some(&provider)).await.0, 404, "a refused create leaves nothing behind");
    let (s, v, _) =
        app.call(Method::PATCH, "/apis/maps", Some(&provider), Some(json!({"hosts": ["weather.example.com"]}))).await;
    assert_eq!(s, 409, "{v}");
    for bad in ["maps:8080", "10.0.0.5"] {
        let (s, v, _) = app.call(Method::PATCH, "/apis/maps", Some(&provider), Some(json!({"hosts": [bad]}))).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("host name"), "{v}");
    }
    // Portico's own host stays the slug routes' for everyone.
    let (s, v, _) =
        app.call(Method::PATCH, "/apis/maps", Some(&provider), Some(json!({"hosts": ["Gateway.example.net"]}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("Portico's own host name"), "{v}");

    let consumer = app.signup("hugo@consumer.example", "consumer").await;
    let (_, created) = app.post("/apps", Some(&consumer), json!({"name": "A"})).await;
    let app_id = created["id"].as_str().unwrap();
    for api in ["weather", "maps"] {
        let sub = json!({"app_id": app_id, "api": api, "plan": "free"});
        assert_eq!(app.post("/subscriptions", Some(&consumer), sub).await.0, 201);
    }
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "k"})).await;
    let key = k["key"].as_str().unwrap();

    let (s, body) = gw_on(&app, "WEATHER.example.com:443", "/v1/things/7?units=metric", key).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!((body["path"].as_str(), body["query"].as_str()), (Some("/things/7"), Some("units=metric")));
    // The slug form still works on any other host; on the API's host the first segment is the version.
    let (s, _) = gw_on(&app, "gateway.example.net", "/weather/v1/things/7", key).await;
    assert_eq!(s, 200);
    let (s, v) = gw_on(&app, "weather.example.com", "/maps/v1/things/7", key).await;
    assert_eq!(s, 404, "another API is not reachable through this API's host: {v}");
    assert!(v["detail"].as_str().unwrap().contains("call API `weather` as /v{major}/{path}"), "{v}");
    let (s, _) = gw_on(&app, "weather.example.com", "/v1/things/a%00b", key).await;
    assert_eq!(s, 400);
    let (s, _) = gw_on(&app, "other.example.com", "/v1/things/7", key).await;
    assert_eq!(s, 404, "a host no API claims routes by slug only");

    // Moving the host to another API moves the routing.
    let (s, v, _) = app.call(Method::PATCH, "/apis/weather", Some(&provider), Some(json!({"hosts": []}))).await;
    assert_eq!((s, v["hosts"].clone()), (200, json!([])), "{v}");
    let (s, v, _) =
        app.call(Method::PATCH, "/apis/maps", Some(&provider), Some(json!({"hosts": ["weather.example.com"]}))).await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = maps_upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
        let (s, body) = gw_on(&app, "weather.example.com", "/v1/things/8", key).await;
        let served_by_maps = s == 200 && maps_upstream.hits.load(std::sync::atomic::Ordering::SeqCst) == before + 1;
        if served_by_maps || Instant::now() > deadline {
            assert!(served_by_maps, "the host now routes to `maps`: {s} {body}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// API `echo` with a published version 1.0.0 over `upstream` and no plan yet.
async fn echo_without_plans(app: &TestApp, provider: &str, upstream: &str) {
    assert_eq!(app.post("/apis", Some(provider), json!({"slug": "echo", "name": "Echo"})).await.0, 201);
    let version =
        json!({"version": "1.0.0", "upstream_url": upstream, "openapi": echo_openapi(), "state": "published"});
    assert_eq!(app.post("/apis/echo/versions", Some(provider), version).await.0, 201);
}

/// A plan's windows and daily quota through the API: validated, shown, enforced at the gateway,
/// and changed without a restart.
#[tokio::test]
async fn plans_with_several_windows_and_a_daily_quota() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("wini@provider.example", "provider").await;
    echo_without_plans(&app, &provider, &upstream.url).await;
    for (bad, why) in [
        (
            json!({"rate_limit": {"requests": 5, "per": "hour"}, "rate_limits": [{"requests": 9, "per": "hour"}]}),
            "per hour",
        ),
        (json!({"daily_quota": 0}), "daily_quota"),
        (json!({"rate_limits": [{"requests": 0, "per": "minute"}]}), "between 1 and"),
        (json!({"operation_limits": {"getThing": []}}), "no windows"),
    ] {
        let mut plan = json!({"slug": "bad", "name": "Bad", "pricing": {"type": "free"}});
        plan.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let (s, v) = app.post("/apis/echo/plans", Some(&provider), plan).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    let plan = json!({"slug": "tiered", "name": "Tiered", "pricing": {"type": "free"},
        "rate_limit": {"requests": 100, "per": "second"}, "rate_limits": [{"requests": 2, "per": "hour"}], "daily_quota": 1000,
        "operation_limits": {"getThing": [{"requests": 50, "per": "minute"}]}});
    let (s, v) = app.post("/apis/echo/plans", Some(&provider), plan).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["rate_limits"].clone(), v["daily_quota"].clone()),
        (json!([{"requests": 2, "per": "hour"}]), json!(1000))
    );

    let consumer = app.signup("walt@consumer.example", "consumer").await;
    let (_, created) = app.post("/apps", Some(&consumer), json!({"name": "A"})).await;
    let app_id = created["id"].as_str().unwrap();
    let sub = json!({"app_id": app_id, "api": "echo", "plan": "tiered"});
    assert_eq!(app.post("/subscriptions", Some(&consumer), sub).await.0, 201);
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "k"})).await;
    let key = k["key"].as_str().unwrap();
    let first = gw(&app, "/echo/v1/things/1", Some(key)).await;
    assert_eq!(first.status(), 200);
    let policy = first.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
    assert_eq!(
        policy,
        "\"second\";q=100;w=1, \"hour\";q=2;w=3600, \"getThing/minute\";q=50;w=60, \"daily\";q=1000;w=86400"
    );
    assert_eq!(gw(&app, "/echo/v1/things/1", Some(key)).await.status(), 200);
    let refused = gw(&app, "/echo/v1/things/1", Some(key)).await;
    assert_eq!(refused.status(), 429, "the hour's window");
    assert!(is_problem(refused.headers()));

    // Taking the hour's window away lifts it at once.
    let (s, v, _) =
        app.call(Method::PATCH, "/apis/echo/plans/tiered", Some(&provider), Some(json!({"rate_limits": []}))).await;
    assert_eq!((s, v["rate_limits"].clone()), (200, json!([])), "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw(&app, "/echo/v1/things/1", Some(key)).await.status() != 200 {
        assert!(Instant::now() < deadline, "the changed plan reaches the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// A daily quota counts on from what the store has after a restart (it is not reset by one).
#[tokio::test]
async fn the_daily_quota_survives_a_restart() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("dora@provider.example", "provider").await;
    echo_without_plans(&app, &provider, &upstream.url).await;
    let plan = json!({"slug": "daily", "name": "Daily", "pricing": {"type": "free"}, "daily_quota": 3});
    assert_eq!(app.post("/apis/echo/plans", Some(&provider), plan).await.0, 201);
    let consumer = app.signup("dean@consumer.example", "consumer").await;
    let (_, created) = app.post("/apps", Some(&consumer), json!({"name": "A"})).await;
    let app_id = created["id"].as_str().unwrap().to_owned();
    let (_, sub) =
        app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": "echo", "plan": "daily"})).await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "k"})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(gw(&app, "/echo/v1/things/1", Some(&key)).await.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, u) = app.get(&format!("/subscriptions/{sub_id}/usage"), Some(&consumer)).await;
        if u["total_calls"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the calls reach the store: {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = app.restart().await;
    let last = gw(&app, "/echo/v1/things/1", Some(&key)).await;
    assert_eq!(last.status(), 200);
    assert!(last.headers()["ratelimit"].to_str().unwrap().starts_with("\"daily\";r=0;"), "{:?}", last.headers());
    let refused = gw(&app, "/echo/v1/things/1", Some(&key)).await;
    assert_eq!(refused.status(), 429, "2 before the restart + 1 after = the day's 3");
    app.stop().await;
}

/// Request validation through the API: a document whose schema cannot be compiled is refused
/// when the policy asks for checks, and with a good one the gateway refuses a call that breaks
/// it (naming the parameter) and forwards one that keeps it.
#[tokio::test]
async fn calls_are_checked_against_the_published_document() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("vera@provider.example", "provider").await;
    assert_eq!(app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await.0, 201);
    let mut doc = echo_openapi();
    doc["paths"]["/things/{id}"]["get"]["parameters"] = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 50}}
    ]);
    let mut broken = doc.clone();
    broken["paths"]["/things/{id}"]["get"]["parameters"][1]["schema"] =
        json!({"type": "string", "pattern": "(unclosed"});
    let version = |openapi: &Value| {
        json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": openapi, "state": "published",
               "policies": {"validate_requests": true}})
    };
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), version(&broken)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("limit"), "names the parameter whose schema is broken: {v}");
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), version(&doc)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policies"]["validate_requests"], true);

    let consumer = app.signup("val@consumer.example", "consumer").await;
    let (_, created) = app.post("/apps", Some(&consumer), json!({"name": "A"})).await;
    let app_id = created["id"].as_str().unwrap();
    let plan = json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}});
    assert_eq!(app.post("/apis/echo/plans", Some(&provider), plan).await.0, 201);
    let sub = json!({"app_id": app_id, "api": "echo", "plan": "free"});
    assert_eq!(app.post("/subscriptions", Some(&consumer), sub).await.0, 201);
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "k"})).await;
    let key = k["key"].as_str();
    assert_eq!(gw(&app, "/echo/v1/things/7?limit=10", key).await.status(), 200);
    let refused = gw(&app, "/echo/v1/things/7?limit=500", key).await;
    assert_eq!(refused.status(), 400);
    assert!(is_problem(refused.headers()));
    let body: Value = refused.json().await.unwrap();
    assert_eq!((body["errors"][0]["in"].as_str(), body["errors"][0]["name"].as_str()), (Some("query"), Some("limit")));
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");
    let refused = gw(&app, "/echo/v1/things/zero", key).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["name"], "id", "{body}");

    // Turning the policy off forwards what it refused.
    let (s, v, _) =
        app.call(Method::PATCH, "/apis/echo/versions/1.0.0", Some(&provider), Some(json!({"policies": {}}))).await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw(&app, "/echo/v1/things/7?limit=500", key).await.status() != 200 {
        assert!(Instant::now() < deadline, "the changed policy reaches the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
