//! Hostile and malformed requests, sent as raw bytes: each is refused with the right status,
//! none reaches the upstream at an unintended path, and the gateway keeps serving.

mod common;

use portico_gateway::GatewayConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Env {
    addr: std::net::SocketAddr,
    key: String,
    upstream_hits: Arc<AtomicU64>,
}

/// An upstream that counts requests and answers 200 with a fixed body.
async fn counting_upstream() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let h = h.clone();
            tokio::spawn(async move {
                // Reads each whole request (headers, then a Content-Length or chunked body) and
                // answers it, like an upstream that reads bodies before it responds.
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        let body_start = end + 4;
                        let total = if head.contains("transfer-encoding: chunked") {
                            match pending[body_start..].windows(5).position(|w| w == b"0\r\n\r\n") {
                                Some(p) => body_start + p + 5,
                                None => break,
                            }
                        } else {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("content-length: ").and_then(|v| v.trim().parse::<usize>().ok())
                                })
                                .unwrap_or(0);
                            if pending.len() < body_start + len {
                                break;
                            }
                            body_start + len
                        };
                        pending.drain(..total);
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    (url, hits)
}

async fn env(config: GatewayConfig) -> Env {
    let (upstream, upstream_hits) = counting_upstream().await;
    let r = common::start(common::Setup { config, ..common::Setup::new("echo", &upstream) }).await;
    Env { addr: r.addr, key: r.key, upstream_hits }
}

/// Sends raw bytes; returns the status code of the first response line (0 if none).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn malformed_and_hostile_requests_are_refused() {
    let e = env(common::config()).await;
    let k = &e.key;
    let ok = format!("GET /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n\r\n");
    assert_eq!(raw(e.addr, ok.as_bytes()).await, 200);
    let before = e.upstream_hits.load(Ordering::SeqCst);

    // Request smuggling. Two different Content-Length values: refused.
    let two_cl = format!(
        "POST /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde"
    );
    assert_eq!(raw(e.addr, two_cl.as_bytes()).await, 400, "two Content-Length values");
    // More than 100 headers.
    let mut many = format!("GET /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n");
    for i in 0..120 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(e.addr, many.as_bytes()).await, 431, "too many headers");
    // A malformed request line, invalid percent-encoding, dot segments, NUL.
    assert_eq!(raw(e.addr, b"GET\r\n\r\n").await, 400);
    assert_eq!(raw(e.addr, b"BLAH /echo/v1/a HTTP/9.9\r\nhost: x\r\n\r\n").await, 400);
    for path in
        ["/echo/v1/a%zz", "/echo/v1/../../etc/passwd", "/echo/v1/a/%2E%2E/b", "/echo/v1/a%00b", "/echo/v1/a%2fb"]
    {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n\r\n");
        assert_eq!(raw(e.addr, req.as_bytes()).await, 400, "{path}");
    }
    // An oversized declared body is refused before it is read.
    let big = format!("POST /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\ncontent-length: 999999999\r\n\r\n");
    assert_eq!(raw(e.addr, big.as_bytes()).await, 413);
    assert_eq!(e.upstream_hits.load(Ordering::SeqCst), before, "none of these reached the upstream");
    // Content-Length with Transfer-Encoding, in either order: 400, and the connection is closed,
    // so a request hidden after the body is never read, let alone forwarded.
    // The gateway's own endpoints, and codings other than chunked, are no way around it.
    let long = format!("/echo/v1/{}", "a".repeat(common::config().max_url_bytes));
    for (path, head) in [
        ("/echo/v1/a", "content-length: 60\r\ntransfer-encoding: chunked"),
        ("/echo/v1/a", "Transfer-Encoding: chunked\r\nContent-Length: 60"),
        ("/echo/v1/a", "content-length: 4\r\ntransfer-encoding: chunked"),
        ("/echo/v1/a", "content-length: 4\r\ntransfer-encoding: gzip"),
        ("/healthz", "content-length: 4\r\ntransfer-encoding: chunked"),
        ("/readyz", "content-length: 4\r\ntransfer-encoding: chunked"),
        (long.as_str(), "content-length: 4\r\ntransfer-encoding: chunked"),
    ] {
        let cl_te = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n{head}\r\n\r\n0\r\n\r\nGET /echo/v1/smuggled HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n\r\n"
        );
        let text = exchange(e.addr, cl_te.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400") && text.contains("connection: close"), "{head}: {text}");
        assert!(text.contains("both Content-Length and Transfer-Encoding"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "the hidden request got no answer: {text}");
    }
    assert_eq!(e.upstream_hits.load(Ordering::SeqCst), before, "none of them reached the upstream");

    // On a kept-alive connection the framing is followed through bodies of both kinds (whose
    // bytes look like headers), up to the ambiguous request, which alone is refused.
    let pipelined = format!(
        "POST /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\ncontent-length: 19\r\n\r\ncontent-length: 1\r\n\
         POST /echo/v1/b HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\ntransfer-encoding: chunked\r\n\r\n\
         14;x=y\r\ntransfer-encoding: x\r\n0\r\n\r\n\
         POST /echo/v1/c HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let text = exchange(e.addr, pipelined.as_bytes()).await;
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(at, _)| &text[at + 9..at + 12]).collect();
    assert_eq!(statuses, ["200", "200", "400"], "{text}");
    assert_eq!(e.upstream_hits.load(Ordering::SeqCst), before + 2);
    // Sent a byte at a time, the head is still read right.
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    let slow = format!(
        "POST /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    for b in slow.as_bytes() {
        s.write_all(&[*b]).await.unwrap();
        s.flush().await.unwrap();
    }
    let text = until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(e.upstream_hits.load(Ordering::SeqCst), before + 2);

    // And the gateway still serves.
    assert_eq!(raw(e.addr, ok.as_bytes()).await, 200);
}

/// Sends `bytes` on a new connection and reads what comes back, until the gateway closes the
/// connection (as it does after refusing ambiguous framing) or five seconds pass.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    until_closed(&mut s).await
}

async fn until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(closed.is_ok(), "the gateway closed the connection: {text}");
    text
}

#[tokio::test]
async fn an_oversized_chunked_body_is_cut_off_with_413() {
    let e = env(GatewayConfig { max_body_bytes: 1024, ..common::config() }).await;
    let mut req =
        format!("POST /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ntransfer-encoding: chunked\r\n\r\n", e.key)
            .into_bytes();
    for _ in 0..4 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'a'; 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(e.addr, &req).await, 413);
}

#[tokio::test]
async fn a_slow_client_is_cut_off_by_the_header_timeout() {
    let e = env(GatewayConfig { header_read_timeout: Duration::from_millis(300), ..common::config() }).await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"GET /echo/v1/a HTTP/1.1\r\nho").await.unwrap();
    let mut buf = [0u8; 1024];
    // The gateway closes the connection (answering 408 or nothing) instead of waiting forever.
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the gateway gave up on the slow client");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// The limits on headers and URL are the configured ones, refused before the key is looked up
/// and before anything reaches the upstream; HTTP/2 heads are held to the same count.
#[tokio::test]
async fn header_and_url_limits_are_configurable() {
    let config = GatewayConfig { max_headers: 12, max_url_bytes: 300, max_head_bytes: 16 * 1024, ..common::config() };
    let e = env(config).await;
    let k = &e.key;
    let with_headers = |n: usize| {
        let mut r = format!("GET /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n");
        for i in 0..n {
            r.push_str(&format!("x-h{i}: v\r\n"));
        }
        r + "\r\n"
    };
    assert_eq!(raw(e.addr, with_headers(8).as_bytes()).await, 200, "10 headers are within 12");
    assert_eq!(raw(e.addr, with_headers(20).as_bytes()).await, 431, "22 headers are not");
    let url = |len: usize| format!("/echo/v1/{}", "a".repeat(len));
    let ok = format!("GET {} HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n\r\n", url(200));
    assert_eq!(raw(e.addr, ok.as_bytes()).await, 200);
    let before = e.upstream_hits.load(Ordering::SeqCst);
    let long = format!("GET {} HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\n\r\n", url(400));
    assert_eq!(raw(e.addr, long.as_bytes()).await, 414);
    let huge = format!("GET /echo/v1/a HTTP/1.1\r\nhost: x\r\nx-api-key: {k}\r\nx-big: {}\r\n\r\n", "b".repeat(20_000));
    assert_eq!(raw(e.addr, huge.as_bytes()).await, 431, "a head over 16 KiB");
    assert_eq!(e.upstream_hits.load(Ordering::SeqCst), before, "none of these reached the upstream");

    // The 414 is a problem that says the limit; over HTTP/2 too many headers is a 431 problem.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let base = format!("http://{}", e.addr);
    let r = h2.get(format!("{base}{}", url(400))).header("x-api-key", k).send().await.unwrap();
    assert_eq!(r.status(), 414);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.text().await.unwrap().contains("300 bytes"));
    let mut req = h2.get(format!("{base}/echo/v1/a")).header("x-api-key", k);
    for i in 0..20 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.text().await.unwrap().contains("(12)"));
}
