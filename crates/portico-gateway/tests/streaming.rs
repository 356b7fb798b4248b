//! Streaming and draining: a Server-Sent Events stream reaches the client event by event (the
//! gateway buffers nothing), and a shutdown lets the call in flight finish while new
//! connections are refused.

mod common;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Reads one request head from `s`; false when the peer closed first.
async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return false;
        }
        head.push(b[0]);
    }
    true
}

/// An upstream that answers with an event stream: the first event at once, the second only
/// after `release` fires, then the end.
async fn sse_upstream(release: tokio::sync::oneshot::Receiver<()>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        if !read_head(&mut s).await {
            return;
        }
        let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
        s.write_all(format!("{head}{}", chunk("id: 1\ndata: first\n\n")).as_bytes()).await.unwrap();
        let _ = release.await;
        s.write_all(format!("{}0\r\n\r\n", chunk("id: 2\ndata: second\n\n")).as_bytes()).await.unwrap();
    });
    url
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (release, held) = tokio::sync::oneshot::channel();
    let upstream = sse_upstream(held).await;
    let r = common::start(common::Setup::new("events", &upstream)).await;
    let http = http();
    let mut resp = http
        .get(format!("{}/stream", r.base))
        .header("x-api-key", &r.key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The upstream holds the second event back until the client has the first: a gateway that
    // buffered the stream would deliver nothing here.
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first event reached the client while the stream was still open")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"id: 1\ndata: first\n\n");
    release.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.unwrap().unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"id: 2\ndata: second\n\n");
}

/// An upstream that answers every call after `delay`.
async fn slow_upstream(delay: Duration) -> String {
    common::tcp_server(move |mut s| async move {
        while read_head(&mut s).await {
            tokio::time::sleep(delay).await;
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nfinished").await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_shutdown_finishes_the_call_in_flight_and_takes_no_new_one() {
    let upstream = slow_upstream(Duration::from_millis(700)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let r = common::start(common::Setup { shutdown: Some(stopped), ..common::Setup::new("slow", &upstream) }).await;
    let http = http();
    let call = http.get(format!("{}/work", r.base)).header("x-api-key", &r.key).send();
    let in_flight = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();

    let resp = in_flight.await.unwrap().expect("the call in flight is answered, not cut off");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(10), r.served)
        .await
        .expect("the gateway stops once the drain is over")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(10), "it did not wait for the drain timeout (30 s)");
    assert!(tokio::net::TcpStream::connect(r.addr).await.is_err(), "a stopped gateway accepts no new connection");
}
