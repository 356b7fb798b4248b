//! Black-box helpers: the real `App` on port 0 with a fresh database, and a real upstream.
#![allow(dead_code)]

use axum::extract::Request;
use axum::routing::any;
use portico::app::App;
use portico::settings::{Outbound, Settings};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub api: String,
    pub gateway: String,
    pub metrics: String,
    /// The TLS listeners, when the settings have them.
    pub gateway_tls: Option<std::net::SocketAddr>,
    pub api_tls: Option<std::net::SocketAddr>,
    pub http: reqwest::Client,
    pub app_state: portico_control::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    // The test upstreams run on loopback.
    spawn_app_with(backend, Outbound { allow_cidrs: vec!["127.0.0.0/8".into()] }).await
}

/// [`spawn_app`] with another `[outbound]` section (e.g. the default, which refuses loopback).
pub async fn spawn_app_with(backend: Backend, outbound: Outbound) -> TestApp {
    spawn_app_configured(backend, |s| s.outbound = outbound).await
}

/// Where this test binary's logs go when `PORTICO_TEST_LOG_DIR` is set (`./scripts/test` sets
/// it, then scans everything there for keys, tokens, passwords and secrets): one file per
/// process and `name`. `None` when unset.
pub fn test_log_path(name: &str) -> Option<std::path::PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::PathBuf::from(std::env::var_os("PORTICO_TEST_LOG_DIR")?);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().ok().and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let n = N.fetch_add(1, Ordering::Relaxed);
    Some(dir.join(format!("{}-{name}-{}-{n}.log", exe.unwrap_or_default(), std::process::id())))
}

/// Sends the in-process apps' logs, at debug level and as JSON, to a [`test_log_path`] file
/// (once per test binary; nothing when `PORTICO_TEST_LOG_DIR` is unset).
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(path) = test_log_path("in-process") else { return };
        let file = std::fs::File::create(&path).unwrap();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}

/// [`spawn_app`] with settings changed by `configure` (after the test defaults are set).
pub async fn spawn_app_configured(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            Some(portico_store::testing::fresh_postgres_database().await.unwrap_or_else(|e| panic!("{e}")))
        }
    };
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        database,
        gateway_addr: "127.0.0.1:0".into(),
        api_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        outbound: Outbound { allow_cidrs: vec!["127.0.0.0/8".into()] },
        ..Settings::default()
    };
    configure(&mut settings);
    start(dir, settings).await
}

async fn start(dir: tempfile::TempDir, settings: Settings) -> TestApp {
    let app = App::build(&settings).await.unwrap();
    // The gateway's own address (its public URL may name a host that does not resolve here).
    let gateway = format!("http://{}", app.gateway_addr);
    let (api, app_state) = (app.api_url(), app.state.clone());
    let (gateway_tls, api_tls) = (app.gateway_tls_addr, app.api_tls_addr);
    let metrics = format!("http://{}/metrics", app.metrics_addr.unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        api,
        gateway,
        metrics,
        gateway_tls,
        api_tls,
        http: reqwest::Client::new(),
        app_state,
        stop: Some(tx),
        task: Some(task),
        dir,
        settings,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.api)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v, headers)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::GET, path, token, None).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::POST, path, token, Some(body)).await;
        (s, v)
    }

    /// Publishes API `slug` as `provider`: version 1.0.0 of the echo document over `upstream`,
    /// with a free plan `free`.
    pub async fn publish_api(&self, provider: &str, slug: &str, upstream: &str) {
        let (s, v) = self.post("/apis", Some(provider), json!({"slug": slug, "name": slug})).await;
        assert_eq!(s, 201, "{v}");
        let version =
            json!({"version": "1.0.0", "upstream_url": upstream, "openapi": echo_openapi(), "state": "published"});
        let (s, v) = self.post(&format!("/apis/{slug}/versions"), Some(provider), version).await;
        assert_eq!(s, 201, "{v}");
        let plan = json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}});
        let (s, v) = self.post(&format!("/apis/{slug}/plans"), Some(provider), plan).await;
        assert_eq!(s, 201, "{v}");
    }

    /// Signs up and returns the bearer token.
    pub async fn signup(&self, email: &str, kind: &str) -> String {
        let (s, v) = self.post("/auth/signup", None, json!({"email": email, "password": "long enough password", "name": email.split('@').next().unwrap(), "account_type": kind})).await;
        assert_eq!(s, 201, "signup {email}: {v}");
        v["token"].as_str().unwrap().to_owned()
    }

    pub async fn admin_token(&self) -> String {
        let email = portico_core::values::Email::parse("root@example.com").unwrap();
        portico_control::services::accounts::create_admin(&self.app_state.store, &email, Some("root password 123"))
            .await
            .unwrap()
            .token
    }

    /// Stops the app and starts it again on the same data dir and database (on new ports).
    pub async fn restart(mut self) -> TestApp {
        self.halt().await;
        start(self.dir, self.settings).await
    }

    async fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub async fn stop(mut self) {
        self.halt().await;
    }
}

/// An upstream that answers every request with what it received, and counts them.
pub struct Upstream {
    pub url: String,
    pub hits: Arc<AtomicU64>,
}

pub async fn spawn_upstream() -> Upstream {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(any(move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.to_str().unwrap_or("").to_owned())))
                .collect();
            axum::Json(json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
                "body_len": body.len(),
            }))
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream { url, hits }
}

pub fn echo_openapi() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Echo", "version": "1.0.0"},
        "paths": {"/things/{id}": {"get": {"operationId": "getThing", "summary": "A thing",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the thing"}}}}}
    })
}

/// A test identity provider's signing side: an ES256 key (`tests/fixtures` of the gateway) and
/// a JWKS endpoint on loopback that publishes it as `kid` `idp-1`.
pub struct TestIdp {
    pub issuer: &'static str,
    pub jwks_url: String,
    key: jsonwebtoken::EncodingKey,
}

pub async fn test_idp() -> TestIdp {
    use jsonwebtoken::{Algorithm, EncodingKey, jwk::Jwk};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pem =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../portico-gateway/tests/fixtures/idp-es256.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&pem).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("idp-1".into());
    let body = json!({"keys": [jwk]}).to_string();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    TestIdp { issuer: "https://login.idp.example", jwks_url, key }
}

impl TestIdp {
    /// The `token_issuers` entry of a version that trusts this issuer for `audience`.
    pub fn trusted_by(&self, audience: &str) -> Value {
        json!({"issuer": self.issuer, "audience": audience, "jwks_url": self.jwks_url,
            "algorithms": ["ES256"], "client_claim": "azp"})
    }

    /// A 5-minute access token of `client` for `audience`.
    pub fn token(&self, audience: &str, client: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("idp-1".into());
        let claims = json!({"iss": self.issuer, "aud": audience, "azp": client, "sub": client,
            "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 300});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}
