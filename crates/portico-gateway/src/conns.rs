//! The worker's own keep-alive connections to upstream targets, on hyper's connection API.
//!
//! hyper-util's pooled client costs more per call than the rest of the policy chain together
//! (a lock, two SipHashes of the pool key, a connect future built and dropped, a task spawned
//! to wait for the connection to be idle, the `Host` header formatted). A worker runs on one
//! thread, so its connections can live in a thread-local map without a lock: a call takes an
//! idle HTTP/1.1 connection (or shares the HTTP/2 one) to its target's origin, and the
//! connection comes back when the response body has been read to its end ([`PooledBody`]); a
//! body dropped early closes it. New connections go through the same connector as before
//! (the SSRF guard, the version's connect timeout, TLS with ALPN), so HTTP/2 is the upstream's
//! choice, never the client's.

use crate::UpBody;
use crate::outbound::Guarded;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_core::outbound::OutboundPolicy;
use portico_core::usage::UsageSink;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

/// An idle connection older than this is closed instead of used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per origin and worker; more are closed when they come back.
const MAX_IDLE_PER_ORIGIN: usize = 256;

pub(crate) type Connector = HttpsConnector<Guarded>;

/// What opens new connections: the TLS settings, the outbound policy, the connect timeout.
pub(crate) struct Connect<'a> {
    pub tls: &'a rustls::ClientConfig,
    pub outbound: &'a Arc<OutboundPolicy>,
    pub connect_ms: u32,
    /// The usage journal, whose records the connection writes before its own bytes.
    pub sink: &'a Arc<dyn UsageSink>,
}

/// Why a call could not be sent.
pub(crate) enum SendError {
    /// No connection could be made (refused by the outbound policy, unreachable, timeout, TLS).
    Connect(crate::BoxError),
    /// The connection failed while the call was sent or answered.
    Send(hyper::Error),
}

enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

struct Idle {
    tx: http1::SendRequest<UpBody>,
    since: Instant,
}

/// One origin's connections on this worker.
struct Origin {
    /// The origin's authority, shared with the loans of its connections.
    authority: Arc<str>,
    idle: VecDeque<Idle>,
    /// The shared HTTP/2 connection and when a call last took it.
    h2: Option<(http2::SendRequest<UpBody>, Instant)>,
}

fn origin<'a>(l: &'a mut Local, https: bool, authority: &Arc<str>) -> &'a mut Origin {
    l.origins[usize::from(https)].entry(authority.clone()).or_insert_with(|| Origin {
        authority: authority.clone(),
        idle: VecDeque::new(),
        h2: None,
    })
}

#[derive(Default)]
struct Local {
    /// By `https` (index) and authority as the URL writes it.
    origins: [foldhash::HashMap<Arc<str>, Origin>; 2],
    /// Connectors by connect timeout (fixed when one is made) and the TLS settings and outbound
    /// policy they were made with (one gateway's, as a worker thread serves one); at most 64.
    connectors: foldhash::HashMap<(u32, usize, usize), Connector>,
}

thread_local!(static LOCAL: RefCell<Local> = RefCell::default());

/// An HTTP/1.1 connection on loan to one call, given back when its response has been read.
pub(crate) struct Loan {
    tx: http1::SendRequest<UpBody>,
    https: bool,
    authority: Arc<str>,
}

impl Loan {
    fn give_back(self) {
        let _ = LOCAL.try_with(|l| {
            let Ok(mut l) = l.try_borrow_mut() else { return };
            let origin = origin(&mut l, self.https, &self.authority);
            let now = Instant::now();
            // The oldest are at the front.
            while origin.idle.front().is_some_and(|c| now.duration_since(c.since) > IDLE_TIMEOUT) {
                origin.idle.pop_front();
            }
            if origin.idle.len() < MAX_IDLE_PER_ORIGIN {
                origin.idle.push_back(Idle { tx: self.tx, since: now });
            }
        });
    }
}

/// Closes this worker's connections that have been idle too long or were closed by their
/// upstream, and forgets origins left with none (run every few seconds by each worker, so that
/// an origin no call goes to any more does not keep its connections open).
pub(crate) fn sweep() {
    let _ = LOCAL.try_with(|l| {
        let Ok(mut l) = l.try_borrow_mut() else { return };
        let now = Instant::now();
        for origins in &mut l.origins {
            origins.retain(|_, o| {
                o.idle.retain(|c| !c.tx.is_closed() && now.duration_since(c.since) <= IDLE_TIMEOUT);
                if o.h2.as_ref().is_some_and(|(h2, used)| h2.is_closed() || now.duration_since(*used) > IDLE_TIMEOUT) {
                    o.h2 = None;
                }
                !o.idle.is_empty() || o.h2.is_some()
            });
        }
    });
}

/// Takes a usable connection to the origin from this worker's idle ones, with the origin's
/// shared authority.
fn checkout(https: bool, authority: &str) -> Option<(Sender, Arc<str>)> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let origin = l.origins[usize::from(https)].get_mut(authority)?;
        if let Some((h2, used)) = &mut origin.h2 {
            if !h2.is_closed() {
                *used = Instant::now();
                return Some((Sender::H2(h2.clone()), origin.authority.clone()));
            }
            origin.h2 = None;
        }
        // The most recently returned first (a small set of connections stays warm); one that
        // has not yet noticed its last response ended is left for the next call.
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(c) = origin.idle.pop_back() {
            if c.tx.is_closed() || c.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            if c.tx.is_ready() {
                found = Some(Sender::H1(c.tx));
                break;
            }
            busy.push(c);
        }
        origin.idle.extend(busy.into_iter().rev());
        found.map(|f| (f, origin.authority.clone()))
    })
}

fn connector(c: &Connect<'_>) -> Connector {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let key = (c.connect_ms, std::ptr::from_ref(c.tls) as usize, Arc::as_ptr(c.outbound) as usize);
        if let Some(found) = l.connectors.get(&key) {
            return found.clone();
        }
        let made = crate::client::connector_with(c.tls, c.outbound, c.connect_ms);
        if l.connectors.len() < 64 {
            l.connectors.insert(key, made.clone());
        }
        made
    })
}

/// Opens a connection to the URI's origin: HTTP/2 when TLS negotiated it, else HTTP/1.1.
async fn open(c: &Connect<'_>, uri: &Uri, https: bool, authority: &Arc<str>) -> Result<Sender, SendError> {
    let mut connector = connector(c);
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(SendError::Connect)?;
    let io = connector.call(uri.clone()).await.map_err(SendError::Connect)?;
    let h2 = io.connected().is_negotiated_h2();
    let io = crate::meter::BeginsFirst::new(io, c.sink.clone());
    if h2 {
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        // A burst to a cold origin may open several; the first one open stays shared.
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let o = origin(&mut l, https, authority);
            if o.h2.as_ref().is_none_or(|(h2, _)| h2.is_closed()) {
                o.h2 = Some((tx.clone(), Instant::now()));
            }
        });
        return Ok(Sender::H2(tx));
    }
    let (tx, conn) = http1::Builder::new().handshake(io).await.map_err(|e| SendError::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Sender::H1(tx))
}

/// Sends `req` (whose URI is absolute: scheme, authority, path) on a connection of this worker
/// to its origin, opening one when none is idle. A request that a reused connection refused
/// before sending anything (it had just closed) is sent again on a new connection.
pub(crate) async fn send(c: &Connect<'_>, req: Request<UpBody>) -> Result<Response<PooledBody>, SendError> {
    let uri = req.uri().clone();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let Some(authority) = uri.authority().map(|a| a.as_str()) else {
        return Err(SendError::Connect("the upstream URL has no host".into()));
    };
    let (sender, authority, reused) = match checkout(https, authority) {
        Some((sender, authority)) => (sender, authority, true),
        None => {
            let authority: Arc<str> = Arc::from(authority);
            // Boxed: the connect and handshake futures are large (kilobytes) and rarely needed;
            // inline they would be copied into every call's future.
            (Box::pin(open(c, &uri, https, &authority)).await?, authority, false)
        }
    };
    match dispatch(sender, req, https, &authority).await {
        Err((e, Some(mut req))) if reused => {
            tracing::debug!(error = %e, "a kept-alive upstream connection had closed; sending on a new one");
            let sender = Box::pin(open(c, &uri, https, &authority)).await?;
            *req.uri_mut() = uri;
            dispatch(sender, req, https, &authority).await.map_err(|(e, _)| SendError::Send(e))
        }
        other => other.map_err(|(e, _)| SendError::Send(e)),
    }
}

/// The `Host` for a URI: its authority without the scheme's default port.
fn host_header(uri: &Uri, https: bool) -> &str {
    let authority = uri.authority().map_or("", |a| a.as_str());
    match uri.port_u16() {
        Some(443) if https => uri.host().unwrap_or(authority),
        Some(80) if !https => uri.host().unwrap_or(authority),
        _ => authority,
    }
}

type Dispatched = Result<Response<PooledBody>, (hyper::Error, Option<Request<UpBody>>)>;

async fn dispatch(sender: Sender, mut req: Request<UpBody>, https: bool, authority: &Arc<str>) -> Dispatched {
    match sender {
        Sender::H2(mut tx) => {
            // HTTP/2 takes the absolute URI (`:scheme` and `:authority`) as it is.
            if let Err(e) = tx.ready().await {
                return Err((e, Some(req)));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => Ok(resp.map(|body| PooledBody { inner: body, loan: None })),
                Err(mut e) => {
                    let req = e.take_message();
                    Err((e.into_error(), req))
                }
            }
        }
        Sender::H1(mut tx) => {
            // HTTP/1.1 needs a `Host` (unless the policies chose one) and sends the origin form
            // (`/path?query`); HTTP/2 has `:authority`.
            if !req.headers().contains_key(http::header::HOST)
                && let Ok(host) = HeaderValue::from_str(host_header(req.uri(), https))
            {
                req.headers_mut().insert(http::header::HOST, host);
            }
            let origin_form = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(u) = Uri::try_from(origin_form) {
                *req.uri_mut() = u;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    // A switched protocol takes the connection for itself.
                    let loan = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| Loan {
                        tx,
                        https,
                        authority: authority.clone(),
                    });
                    Ok(resp.map(|body| PooledBody { inner: body, loan }))
                }
                Err(mut e) => {
                    let req = e.take_message();
                    Err((e.into_error(), req))
                }
            }
        }
    }
}

/// An upstream's response body; its connection goes back to the worker's idle ones when the
/// body has been read to its end.
pub struct PooledBody {
    inner: Incoming,
    loan: Option<Loan>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some(loan) = this.loan.take()
        {
            loan.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body that had nothing left to read (a 204, a HEAD, an empty 200) is never polled to
        // its end; its connection is as reusable. Any other body dropped early closes it.
        if let Some(loan) = self.loan.take()
            && self.inner.is_end_stream()
        {
            loan.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn idle_count() -> usize {
        LOCAL.with(|l| l.borrow().origins.iter().flat_map(|o| o.values()).map(|o| o.idle.len()).sum())
    }

    /// One connection that answers one call and then, when told, closes.
    #[tokio::test]
    async fn a_connection_comes_back_after_its_body_and_a_closed_one_is_swept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            let _ = close_rx.await;
        });
        let tls = crate::client::tls_config(&[]);
        let outbound = Arc::new(OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]));
        let sink: Arc<dyn UsageSink> = Arc::new(portico_core::usage::DiscardUsage);
        let c = Connect { tls: &tls, outbound: &outbound, connect_ms: 1000, sink: &sink };
        let mut req = Request::new(crate::forward::empty());
        *req.uri_mut() = format!("http://{addr}/x").parse().unwrap();
        let resp = send(&c, req).await.ok().expect("sent");
        assert_eq!(idle_count(), 0, "on loan while its body is read");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(idle_count(), 1, "back once the body has ended");
        drop(close_tx);
        // The connection's task notices the close; then a sweep forgets it.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            sweep();
            if idle_count() == 0 {
                break;
            }
        }
        assert_eq!(idle_count(), 0);
        assert!(
            LOCAL.with(|l| l.borrow().origins.iter().all(|o| o.is_empty())),
            "an origin left without connections is forgotten"
        );
    }
}
