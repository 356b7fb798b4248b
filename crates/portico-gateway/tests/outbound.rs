//! SSRF protection: the same loopback upstream — named `127.0.0.1` (a literal),
//! `localhost` (resolved) and `[::ffff:127.0.0.1]` (IPv4-mapped) — is refused with a 502
//! problem+json and never connected to when the outbound policy does not allow loopback, and is
//! served when `127.0.0.0/8` is allowed. Health checks go through the same guard.

mod common;

use portico_core::outbound::OutboundPolicy;
use portico_core::upstream::{HealthCheck, UpstreamPolicy};
use portico_gateway::GatewayConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An upstream on 127.0.0.1 that answers 200 `ok`, counting the connections it accepts.
async fn counting_upstream() -> (u16, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, accepted)
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn strict() -> GatewayConfig {
    GatewayConfig { outbound: OutboundPolicy::default(), ..GatewayConfig::default() }
}

async fn call(upstream: &str, config: GatewayConfig) -> reqwest::Response {
    let r = common::start(common::Setup { config, ..common::Setup::new("inner", upstream) }).await;
    client().get(format!("{}/status", r.base)).header("X-Api-Key", &r.key).send().await.unwrap()
}

async fn assert_refused(resp: reqwest::Response, upstream: &str) {
    assert_eq!(resp.status(), 502, "{upstream}");
    assert_eq!(resp.headers()["content-type"], "application/problem+json", "{upstream}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "bad_gateway", "{upstream}: {body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("upstream address") && detail.contains("not allowed"), "{upstream}: {detail}");
    assert!(!detail.contains("127.0.0.1") && !detail.contains("169.254"), "no address leaks to the consumer: {detail}");
}

#[tokio::test]
async fn loopback_upstreams_are_refused_unless_allowed() {
    let (port, accepted) = counting_upstream().await;
    let upstreams = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
    ];
    for upstream in &upstreams {
        assert_refused(call(upstream, strict()).await, upstream).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a refused upstream is never connected to");

    for upstream in &upstreams {
        let resp = call(upstream, common::config()).await;
        assert_eq!(resp.status(), 200, "{upstream} with 127.0.0.0/8 allowed");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn metadata_and_private_literals_are_refused_even_with_loopback_allowed() {
    for upstream in
        ["http://169.254.169.254", "http://10.1.2.3:8080", "http://[::ffff:169.254.169.254]", "http://[fe80::1]"]
    {
        assert_refused(call(upstream, common::config()).await, upstream).await;
    }
}

#[tokio::test]
async fn health_checks_go_through_the_same_guard() {
    let (port, accepted) = counting_upstream().await;
    let upstream = format!("http://127.0.0.1:{port}");
    let hc = HealthCheck { path: "/health".into(), interval_secs: 1, healthy_threshold: 1, unhealthy_threshold: 1 };
    let policy = UpstreamPolicy { health_check: Some(hc), ..UpstreamPolicy::default() };
    let r = common::start(common::Setup { config: strict(), policy, ..common::Setup::new("inner", &upstream) }).await;
    let http = client();
    // The first probe is refused like a call, so the only target leaves the rotation: 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = http.get(format!("{}/status", r.base)).header("X-Api-Key", &r.key).send().await.unwrap();
        if resp.status() == 503 {
            break;
        }
        assert_eq!(resp.status(), 502, "refused before the first probe");
        assert!(Instant::now() < deadline, "the refused target never left the rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "neither calls nor probes connected");
}
