//! Upgrades (WebSocket and the like) pass through: the gateway checks the key, forwards the
//! upgrade, and on the upstream's 101 joins the two connections.

mod common;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that switches to a raw echo protocol and echoes every byte back.
async fn echo_upgrade_upstream() -> String {
    common::tcp_server(move |mut s| async move {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !text.contains("upgrade: echo") {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            return;
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_to_the_upstream() {
    let upstream = echo_upgrade_upstream().await;
    let r = common::start(common::Setup::new("live", &upstream)).await;
    let (addr, key) = (r.addr, r.key);

    // Without a key the upgrade is refused like any call.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /live/v1/socket HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"));

    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /live/v1/socket HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        key
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "connection closed early: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"hello through the tunnel"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, msg);
    }
}

/// A real WebSocket server (tungstenite) behind the gateway: the handshake is checked and
/// forwarded, then text, binary, ping/pong and the close handshake pass both ways.
#[tokio::test]
async fn a_websocket_session_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let upstream = common::tcp_server(move |s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
        while let Some(Ok(m)) = ws.next().await {
            let reply = match m {
                Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
                Message::Binary(b) => Message::binary(b.iter().rev().copied().collect::<Vec<u8>>()),
                // A close is answered by the library as the stream is read on (then it ends).
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    })
    .await;
    let r = common::start(common::Setup::new("live", &upstream)).await;

    // Without a key the handshake is refused like any call.
    let url = format!("ws://{}/live/v1/socket", r.addr);
    let tcp = TcpStream::connect(r.addr).await.unwrap();
    let refused = tokio_tungstenite::client_async(url.as_str(), tcp).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|(_, resp)| resp.status())),
    }

    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", r.key.parse().unwrap());
    let tcp = TcpStream::connect(r.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    async fn next(
        ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    ) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer within 5 s")
    }
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text("echo: hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::binary(vec![3u8, 2, 1]));
    // A ping is answered by the server's pong through the tunnel.
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec().into()));
    // A large message arrives whole.
    let big = "x".repeat(256 * 1024);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text(format!("echo: {big}")));
    ws.close(None).await.unwrap();
    let end = next(&mut ws).await;
    assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "the close handshake completes: {end:?}");
}
