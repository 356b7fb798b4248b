//! SSRF protection in the control plane: a version whose `upstream_url` or `upstream.targets`
//! points at a private, link-local or metadata address is refused with a 400 problem+json that
//! names the field and the `outbound.allow_cidrs` setting — through the API and through apply;
//! and loopback, allowed in the tests, is refused by a Portico that does not allow it, while
//! the gateway refuses to call it.

mod common;

use common::{Backend, TestApp, echo_openapi, spawn_app, spawn_app_with, spawn_upstream};
use portico::settings::Outbound;
use reqwest::Method;
use serde_json::{Value, json};

fn is_problem(h: &reqwest::header::HeaderMap) -> bool {
    h.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/problem+json")
}

async fn provider_with_api(app: &TestApp) -> String {
    let provider = app.signup("pat@provider.example", "provider").await;
    let (s, v) = app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await;
    assert_eq!(s, 201, "{v}");
    provider
}

async fn assert_refused(app: &TestApp, method: Method, path: &str, token: &str, body: Value, field: &str) -> String {
    let (s, v, h) = app.call(method, path, Some(token), Some(body.clone())).await;
    assert_eq!(s, 400, "{body} → {v}");
    assert!(is_problem(&h), "{v}");
    assert_eq!(v["code"], "invalid_request");
    let detail = v["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains(field) && detail.contains("outbound.allow_cidrs"), "{detail}");
    detail
}

#[tokio::test]
async fn private_and_metadata_upstreams_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let provider = provider_with_api(&app).await;
    let version = |url: &str| json!({"version": "1.0.0", "upstream_url": url, "openapi": echo_openapi()});

    let d = assert_refused(
        &app,
        Method::POST,
        "/apis/echo/versions",
        &provider,
        version("http://10.1.2.3"),
        "upstream_url",
    )
    .await;
    assert!(d.contains("private"), "{d}");
    let d = assert_refused(
        &app,
        Method::POST,
        "/apis/echo/versions",
        &provider,
        version("http://169.254.169.254/latest"),
        "upstream_url",
    )
    .await;
    assert!(d.contains("cloud metadata"), "{d}");
    let mut v = version("https://203.0.113.10");
    v["upstream"] = json!({"targets": ["https://203.0.113.11", "http://[::ffff:192.168.0.1]:8080"]});
    assert_refused(&app, Method::POST, "/apis/echo/versions", &provider, v, "upstream.targets[1]").await;
    let (_, versions) = app.get("/apis/echo/versions", Some(&provider)).await;
    assert_eq!(versions.as_array().map(Vec::len), Some(0), "nothing was saved: {versions}");

    // A version on the allowed loopback is saved; moving it to a refused address is not.
    let upstream = spawn_upstream().await;
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), version(&upstream.url)).await;
    assert_eq!(s, 201, "{v}");
    let path = "/apis/echo/versions/1.0.0";
    assert_refused(
        &app,
        Method::PATCH,
        path,
        &provider,
        json!({"upstream_url": "http://169.254.169.254"}),
        "upstream_url",
    )
    .await;
    let targets = json!({"upstream": {"targets": ["http://[fd00:ec2::254]"]}});
    assert_refused(&app, Method::PATCH, path, &provider, targets, "upstream.targets[0]").await;
    let (s, v, _) = app.call(Method::PATCH, path, Some(&provider), Some(json!({"state": "published"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["upstream_url"], upstream.url.as_str());

    // Apply (an admin's) is held to the same policy, the version named.
    let admin = app.admin_token().await;
    let doc = json!({"providers": [{"slug": "acme", "name": "Acme", "apis": [{"slug": "inner", "name": "Inner",
        "versions": [{"version": "1.0.0", "upstream_url": "http://10.1.2.3", "openapi": echo_openapi()}]}]}]});
    let d = assert_refused(&app, Method::POST, "/admin/apply", &admin, doc, "inner@1.0.0: upstream_url").await;
    assert!(d.contains("private"), "{d}");
    let (s, v) = app.get("/apis/inner", Some(&admin)).await;
    assert_eq!(s, 404, "apply changed nothing: {v}");
    app.stop().await;
}

#[tokio::test]
async fn without_the_allow_list_loopback_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, Outbound::default()).await;
    let provider = provider_with_api(&app).await;
    let upstream = spawn_upstream().await;
    let port = upstream.url.rsplit(':').next().unwrap();
    for url in [upstream.url.clone(), format!("http://localhost:{port}"), format!("http://[::ffff:127.0.0.1]:{port}")] {
        let body = json!({"version": "1.0.0", "upstream_url": url, "openapi": echo_openapi()});
        let d = assert_refused(&app, Method::POST, "/apis/echo/versions", &provider, body, "upstream_url").await;
        assert!(d.contains("loopback"), "{d}");
    }
    app.stop().await;
}

/// A document server on loopback: `/openapi.json`, `/openapi.yaml`, `/hop` (a redirect to the
/// JSON one), `/to-metadata` (a redirect to the cloud metadata address), `/not-a-doc`.
async fn document_server() -> String {
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    let yaml = serde_norway::to_string(&echo_openapi()).unwrap();
    let router = axum::Router::new()
        .route("/openapi.json", get(|| async { axum::Json(echo_openapi()) }))
        .route("/openapi.yaml", get(move || async move { yaml.clone() }))
        .route("/hop", get(|| async { Redirect::temporary("/openapi.json") }))
        .route("/to-metadata", get(|| async { Redirect::temporary("http://169.254.169.254/latest/openapi.json") }))
        .route("/not-a-doc", get(|| async { "{ this is : not [ json".into_response() }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    url
}

/// `openapi_url`: the document is fetched through the outbound policy, on every redirect too.
#[tokio::test]
async fn documents_are_imported_by_url_through_the_outbound_policy() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let docs = document_server().await;
    let provider = provider_with_api(&app).await;
    let version = |n: &str, from: &str| json!({"version": n, "upstream_url": upstream.url, "openapi_url": format!("{docs}{from}"), "state": "published"});
    for (n, from) in [("1.0.0", "/openapi.json"), ("1.1.0", "/openapi.yaml"), ("1.2.0", "/hop")] {
        let (s, v) = app.post("/apis/echo/versions", Some(&provider), version(n, from)).await;
        assert_eq!(s, 201, "{from}: {v}");
        let (s, doc) = app.get(&format!("/apis/echo/versions/{n}/openapi.json"), Some(&provider)).await;
        assert_eq!((s, doc["info"]["title"].clone()), (200, echo_openapi()["info"]["title"].clone()), "{from}");
    }
    // The redirect's target is judged like the first URL.
    assert_refused(
        &app,
        Method::POST,
        "/apis/echo/versions",
        &provider,
        version("1.3.0", "/to-metadata"),
        "openapi_url",
    )
    .await;
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), version("1.3.0", "/not-a-doc")).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("neither a JSON nor a YAML object"), "{v}");
    let both = json!({"version": "1.3.0", "upstream_url": upstream.url, "openapi": echo_openapi(),
        "openapi_url": format!("{docs}/openapi.json")});
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), both).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app
        .post("/apis/echo/versions", Some(&provider), json!({"version": "1.3.0", "upstream_url": upstream.url}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("openapi_url"), "{v}");
    app.stop().await;

    // Without loopback in the allow list, the same URL is refused before anything is fetched.
    let strict = spawn_app_with(Backend::Sqlite, Outbound::default()).await;
    let provider = provider_with_api(&strict).await;
    let body = json!({"version": "1.0.0", "upstream_url": "https://api.example.com", "openapi_url": format!("{docs}/openapi.json")});
    assert_refused(&strict, Method::POST, "/apis/echo/versions", &provider, body, "openapi_url").await;
    strict.stop().await;
}
