//! Upstream pools: calls spread over targets, a dead target's idempotent calls are retried on
//! a live one, its breaker opens, a hanging target times out per the version's policy, and
//! with no target left the gateway answers 503; a total timeout bounds the whole call.

mod common;

use portico_core::upstream::{Balance, UpstreamPolicy};
use portico_core::values::UpstreamUrl;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A target that answers 200 with its name, counting calls.
async fn target(name: &'static str) -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = axum_like(name, h).await;
    (app, hits)
}

async fn axum_like(name: &'static str, hits: Arc<AtomicU64>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut pending = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length: ").and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if pending.len() < end + 4 + len {
                            break;
                        }
                        pending.drain(..end + 4 + len);
                        hits.fetch_add(1, Ordering::SeqCst);
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                }
            });
        }
    });
    url
}

/// A port where nothing listens.
async fn dead() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A target that accepts and never answers.
async fn hanging() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = l.accept().await.unwrap();
            held.push(s);
        }
    });
    url
}

/// A port whose accept queue is full (a listener that never accepts, its backlog taken by
/// connections that were never accepted): a new connection's SYN is dropped, so connecting
/// hangs — a target that is down the slow way.
async fn unreachable() -> (String, Vec<std::net::TcpStream>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let listener = sock.listen(1).unwrap();
    std::mem::forget(listener);
    let mut filled = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => filled.push(s),
            Err(_) => break,
        }
    }
    (format!("http://{addr}"), filled)
}

async fn gateway(primary: &str, policy: UpstreamPolicy) -> (String, String) {
    let r = common::start(common::Setup { policy, ..common::Setup::new("pooled", primary) }).await;
    (format!("{}/x", r.base), r.key)
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn url(u: &str) -> UpstreamUrl {
    UpstreamUrl::parse(u).unwrap()
}

#[tokio::test]
async fn round_robin_spreads_calls() {
    let ((a, ha), (b, hb)) = (target("a").await, target("b").await);
    let (gw, key) = gateway(&a, UpstreamPolicy { targets: vec![url(&b)], ..Default::default() }).await;
    let http = http();
    for _ in 0..20 {
        assert_eq!(http.get(&gw).header("x-api-key", &key).send().await.unwrap().status(), 200);
    }
    assert_eq!((ha.load(Ordering::SeqCst), hb.load(Ordering::SeqCst)), (10, 10));
}

#[tokio::test]
async fn a_dead_target_is_retried_around_then_ejected() {
    let ((live, hits), down) = (target("live").await, dead().await);
    let policy = UpstreamPolicy { targets: vec![url(&live)], retries: 2, ..Default::default() };
    let (gw, key) = gateway(&down, policy).await;
    let http = http();
    // Idempotent calls: every one succeeds, retried on the live target when needed.
    for _ in 0..20 {
        let r = http.get(&gw).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "live");
    }
    // A POST is never retried; but the dead target's breaker is open by now, so it is skipped.
    for _ in 0..10 {
        let r = http.post(&gw).header("x-api-key", &key).body("data").send().await.unwrap();
        assert_eq!(r.status(), 200, "the open breaker keeps calls off the dead target");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_post_to_a_dead_target_is_not_retried() {
    let down = dead().await;
    let (gw, key) = gateway(&down, UpstreamPolicy { retries: 3, ..Default::default() }).await;
    let r = http().post(&gw).header("x-api-key", &key).body("x").send().await.unwrap();
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn the_versions_timeout_applies_and_no_target_left_is_a_503() {
    let slow = hanging().await;
    let (gw, key) = gateway(&slow, UpstreamPolicy { response_timeout_ms: 300, ..Default::default() }).await;
    let http = http();
    let t = Instant::now();
    let r = http.get(&gw).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(5));

    let down = dead().await;
    let (gw, key) = gateway(&down, UpstreamPolicy::default()).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http.get(&gw).header("x-api-key", &key).send().await.unwrap().status().as_u16());
    }
    assert_eq!(&statuses[..5], &[502; 5]);
    assert_eq!(&statuses[5..], &[503; 3], "after 5 failures the breaker is open: no target left");
}

#[tokio::test]
async fn consistent_hashing_keeps_a_consumer_on_one_target() {
    let ((a, ha), (b, hb)) = (target("a").await, target("b").await);
    let policy = UpstreamPolicy {
        targets: vec![url(&b)],
        balance: Balance::ConsistentHash,
        hash_header: Some("x-user".into()),
        ..Default::default()
    };
    let (gw, key) = gateway(&a, policy).await;
    let http = http();
    for _ in 0..10 {
        http.get(&gw).header("x-api-key", &key).header("x-user", "ada").send().await.unwrap();
    }
    let (na, nb) = (ha.load(Ordering::SeqCst), hb.load(Ordering::SeqCst));
    assert!((na, nb) == (10, 0) || (na, nb) == (0, 10), "{na} {nb}");
}

/// A target whose `/health` answers 200 or 503 as the test says.
async fn checkable(name: &'static str, healthy: Arc<std::sync::atomic::AtomicBool>, hits: Arc<AtomicU64>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let (healthy, hits) = (healthy.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut pending = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_string();
                        pending.drain(..end + 4);
                        let resp = if head.starts_with("GET /health ") {
                            if healthy.load(Ordering::SeqCst) {
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
                            } else {
                                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_string()
                            }
                        } else {
                            hits.fetch_add(1, Ordering::SeqCst);
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len())
                        };
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_unhealthy_target_leaves_the_rotation_and_comes_back() {
    use portico_core::upstream::HealthCheck;
    use std::sync::atomic::AtomicBool;
    let (a_ok, b_ok) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let (ha, hb) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = checkable("a", a_ok.clone(), ha.clone()).await;
    let b = checkable("b", b_ok.clone(), hb.clone()).await;
    let hc = HealthCheck { path: "/health".into(), interval_secs: 1, healthy_threshold: 1, unhealthy_threshold: 1 };
    let (gw, key) =
        gateway(&a, UpstreamPolicy { targets: vec![url(&b)], health_check: Some(hc), ..Default::default() }).await;
    let http = http();

    b_ok.store(false, Ordering::SeqCst);
    // Within a few check intervals, b gets no more calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = hb.load(Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(http.get(&gw).header("x-api-key", &key).send().await.unwrap().status(), 200);
        }
        if hb.load(Ordering::SeqCst) == before {
            break;
        }
        assert!(Instant::now() < deadline, "the unhealthy target kept getting calls");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Healthy again: it is back in rotation.
    b_ok.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = hb.load(Ordering::SeqCst);
    while hb.load(Ordering::SeqCst) == before {
        assert_eq!(http.get(&gw).header("x-api-key", &key).send().await.unwrap().status(), 200);
        assert!(Instant::now() < deadline, "the recovered target never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ha.load(Ordering::SeqCst) > 0);
}

/// A target that reads the request, then answers with bytes that are not HTTP, or resets the
/// connection (SO_LINGER 0) without a word.
async fn misbehaving(garbage: bool) -> String {
    common::tcp_server(move |mut s| async move {
        let mut buf = vec![0u8; 8192];
        let _ = s.read(&mut buf).await;
        if garbage {
            let _ = s.write_all(b"\x00\x13SSH-2.0-not-http\r\n\r\n").await;
            let _ = s.shutdown().await;
        } else {
            let _ = s.set_zero_linger();
            drop(s);
        }
    })
    .await
}

async fn problem(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    (status, body["detail"].as_str().unwrap_or_default().to_owned())
}

/// Each failed step has its own answer; calls to a healthy target in the same pool are served
/// all the while.
#[tokio::test]
async fn a_failed_step_is_named_and_the_healthy_target_keeps_serving() {
    let http = http();
    for (kind, bad, status, says) in [
        ("garbage", misbehaving(true).await, 502, "not valid HTTP"),
        ("reset", misbehaving(false).await, 502, "closed the connection"),
        ("dead", dead().await, 502, "could not connect"),
        ("hanging", hanging().await, 504, "within 300 ms"),
    ] {
        let (live, hits) = target("live").await;
        let policy = UpstreamPolicy { targets: vec![url(&live)], response_timeout_ms: 300, ..Default::default() };
        let (gw, key) = gateway(&bad, policy).await;
        // POSTs are never retried: round robin alternates the bad and the live target.
        let (mut served, mut failed) = (0, 0);
        for _ in 0..8 {
            let r = http.post(&gw).header("x-api-key", &key).body("x").send().await.unwrap();
            if r.status() == 200 {
                assert_eq!(r.text().await.unwrap(), "live");
                served += 1;
            } else {
                let (s, detail) = problem(r).await;
                assert_eq!(s, status, "{kind}: {detail}");
                assert!(detail.contains(says), "{kind}: {detail}");
                assert!(!detail.contains("127.0.0.1"), "{kind}: the detail leaks the upstream's address: {detail}");
                failed += 1;
            }
        }
        assert_eq!((served, failed), (4, 4), "{kind}");
        assert_eq!(hits.load(Ordering::SeqCst), 4, "{kind}");
    }
}

/// A client that declares a body and breaks it off is the client's failure, not the target's:
/// the gateway answers 400 (to whoever still listens), and the target's circuit breaker does
/// not open, so the next client is served.
#[tokio::test]
async fn a_client_breaking_off_its_body_is_not_held_against_the_target() {
    let (solo, hits) = target("solo").await;
    let (gw, key) = gateway(&solo, UpstreamPolicy::default()).await;
    let addr = gw.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let path = format!("/{}", gw.trim_start_matches("http://").split_once('/').unwrap().1);
    // More broken bodies than the breaker's threshold of consecutive failures.
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\ncontent-length: 1000\r\n\r\nonly a little"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("declared length"), "{answer}");
    }
    let r = http().get(&gw).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 200, "the target stays in rotation");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no broken body reached the target as a whole call");
}

#[tokio::test]
async fn the_versions_connect_timeout_applies_before_its_response_timeout() {
    let (target, _filled) = unreachable().await;
    let http = http();
    // Connecting hangs: with a 200 ms connect timeout the connect step fails (502) long before
    // the 3 s response timeout would (504, which the default 5 s connect timeout gives).
    let policy = UpstreamPolicy { connect_timeout_ms: 200, response_timeout_ms: 3_000, ..Default::default() };
    let (gw, key) = gateway(&target, policy).await;
    let r = http.get(&gw).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("could not connect"), "{body}");
    let (gw, key) = gateway(&target, UpstreamPolicy { response_timeout_ms: 3_000, ..Default::default() }).await;
    assert_eq!(http.get(&gw).header("x-api-key", &key).send().await.unwrap().status(), 504);
}

/// A target that sends its head at once and then one chunk of its body every `every` ms, up to
/// `chunks` chunks.
async fn dripping(every: u64, chunks: usize) -> String {
    common::tcp_server(move |mut s| async move {
        let mut buf = vec![0u8; 8192];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n").await;
        for _ in 0..chunks {
            if s.write_all(b"5\r\ndrip\n\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    })
    .await
}

/// The version's total timeout bounds the whole call: a head that comes too late is a 504
/// naming it even when the per-attempt response timeout is longer, a body still streaming
/// when it passes is cut off as an error (never a clean end), and a call that fits is whole.
#[tokio::test]
async fn the_total_timeout_bounds_the_whole_call() {
    let http = http();
    let policy = UpstreamPolicy { response_timeout_ms: 10_000, total_timeout_ms: Some(400), ..Default::default() };
    let (gw, key) = gateway(&hanging().await, policy.clone()).await;
    let t = Instant::now();
    let r = http.get(&gw).header("x-api-key", &key).send().await.unwrap();
    let (status, detail) = problem(r).await;
    assert_eq!(status, 504);
    assert!(detail.contains("total timeout of 400 ms"), "{detail}");
    assert!(t.elapsed() < Duration::from_secs(5), "not the 10 s response timeout");

    let (gw, key) = gateway(&dripping(150, 20).await, policy.clone()).await;
    let r = http.get(&gw).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head came in time");
    let t = Instant::now();
    let body = r.bytes().await;
    assert!(body.is_err(), "a body cut off by the timeout reads as an error, not a short body: {body:?}");
    assert!(t.elapsed() < Duration::from_secs(2));

    let (gw, key) = gateway(&dripping(20, 3).await, policy).await;
    let r = http.get(&gw).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "drip\n".repeat(3));

    for bad in [50, 4_000_000] {
        let p = UpstreamPolicy { total_timeout_ms: Some(bad), ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("total_timeout_ms"));
    }
}

/// A target that answers `GET …/empty` with 204 and anything else with a small 200, counting
/// the connections it accepts; with `close_after_answer`, it closes each connection after its
/// first answer (without saying so in the response).
async fn counting(close_after_answer: bool) -> (String, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let url = common::tcp_server(move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    continue;
                };
                let empty = String::from_utf8_lossy(&pending[..end]).lines().next().unwrap_or("").contains("/empty");
                pending.drain(..end + 4);
                let resp: &[u8] = if empty {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if s.write_all(resp).await.is_err() || close_after_answer {
                    return;
                }
            }
        }
    })
    .await;
    (url, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (up, accepted) = counting(false).await;
    let r = common::start(common::Setup::new("kept", &up)).await;
    // One client connection is served by one worker, which keeps one upstream connection.
    let http = http();
    for i in 0..40 {
        let path = if i % 2 == 0 { "x" } else { "empty" };
        let resp = http.get(format!("{}/{path}", r.base)).header("x-api-key", &r.key).send().await.unwrap();
        assert!(resp.status().is_success(), "call {i}: {}", resp.status());
        resp.bytes().await.unwrap();
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "every call after the first reuses the connection, bodiless answers too"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_kept_alive_connections_costs_no_call() {
    let (up, accepted) = counting(true).await;
    let r = common::start(common::Setup::new("closing", &up)).await;
    let http = http();
    for i in 0..20 {
        let resp = http.get(format!("{}/x", r.base)).header("x-api-key", &r.key).send().await.unwrap();
        assert_eq!(resp.status(), 200, "call {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
        // Long enough for the gateway to see the connection closed before the next call.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
}
