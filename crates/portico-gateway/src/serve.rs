//! Accepting connections: worker threads, each with its own runtime and upstream pool, HTTP/1.1
//! and h2c on the plain listener, HTTP/1.1 and HTTP/2 (ALPN) on the TLS one, and a graceful
//! drain on shutdown.
//!
//! Connections are spread over the workers by their load: the worker that accepts a
//! connection keeps it unless another worker serves fewer connections, and then hands it over
//! (the accepting worker is often the only one awake, and would otherwise take every
//! connection of a burst, leaving the other cores idle for the life of those connections).

use crate::framing::Framed;
use crate::meter::JournalFirst;
use crate::{Gateway, UpstreamClient, health, upstream_client};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// The number of request headers hyper accepts unless told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// The sockets one worker accepts on: the plain one, and the TLS one if there is one.
struct Sockets {
    plain: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, TlsAcceptor)>,
}

impl Sockets {
    fn try_clone(&self) -> std::io::Result<Sockets> {
        let tls = match &self.tls {
            Some((l, a)) => Some((l.try_clone()?, a.clone())),
            None => None,
        };
        Ok(Sockets { plain: self.plain.try_clone()?, tls })
    }
}

/// A connection accepted by one worker for another to serve.
struct Handoff {
    stream: std::net::TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    /// Counted on the receiving worker already.
    live: Live,
}

/// One worker as the others see it: how many connections it serves, and where to hand it one.
struct Slot {
    active: AtomicUsize,
    inbox: mpsc::UnboundedSender<Handoff>,
    /// `portico_gateway_connections{worker}`: the same count, for operators.
    gauge: metrics::Gauge,
}

/// Counts a connection on its worker's slot while it lives (from the moment it is handed over,
/// so that a burst accepted by one worker is spread before the others wake).
struct Live(Arc<[Slot]>, usize);

impl Live {
    fn new(slots: &Arc<[Slot]>, to: usize) -> Live {
        slots[to].active.fetch_add(1, Ordering::Relaxed);
        slots[to].gauge.increment(1.0);
        Live(slots.clone(), to)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0[self.1].active.fetch_sub(1, Ordering::Relaxed);
        self.0[self.1].gauge.decrement(1.0);
    }
}

/// The worker that should serve the next connection: `me` unless another serves fewer.
fn least_loaded(slots: &[Slot], me: usize) -> usize {
    let mut best = (slots[me].active.load(Ordering::Relaxed), me);
    for (i, s) in slots.iter().enumerate() {
        let n = s.active.load(Ordering::Relaxed);
        if n < best.0 {
            best = (n, i);
        }
    }
    best.1
}

/// Accepts from `listener`, or waits forever when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

impl Gateway {
    /// Serves plain HTTP connections until `shutdown` resolves; see [`Gateway::serve_with_tls`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with_tls(listener, None, shutdown).await
    }

    /// Serves connections on the plain listener and, when given, on a TLS listener (its
    /// `ServerConfig` chooses certificates and ALPN protocols) until `shutdown` resolves; then
    /// stops accepting and lets in-flight connections finish (up to the drain timeout).
    ///
    /// Like nginx's workers, each of `config.workers` threads runs its own single-threaded
    /// runtime, accepts from the shared sockets and keeps its own upstream connection pool, so
    /// a call is served start to end on one thread without cross-thread wake-ups.
    pub async fn serve_with_tls(
        self,
        listener: TcpListener,
        tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let std_listener = |l: TcpListener| -> std::io::Result<std::net::TcpListener> {
            let l = l.into_std()?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let tls = match tls {
            Some((l, config)) => Some((std_listener(l)?, TlsAcceptor::from(config))),
            None => None,
        };
        let sockets = Sockets { plain: std_listener(listener)?, tls };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut finished = Vec::new();
        let workers = self.inner.config.workers.max(1);
        let (slots, inboxes): (Vec<Slot>, Vec<_>) = (0..workers)
            .map(|i| {
                let (inbox, rx) = mpsc::unbounded_channel();
                let gauge = metrics::gauge!("portico_gateway_connections", "worker" => i.to_string());
                (Slot { active: AtomicUsize::new(0), inbox, gauge }, rx)
            })
            .unzip();
        let slots: Arc<[Slot]> = slots.into();
        for (i, inbox) in inboxes.into_iter().enumerate() {
            let socket = sockets.try_clone()?;
            let gw = self.clone();
            let slots = slots.clone();
            let mut stop = stop_rx.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            finished.push(done_rx);
            std::thread::Builder::new().name(format!("portico-gw-{i}")).spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(async move {
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        if let Err(e) = gw.worker(socket, (slots, i, inbox), stopped).await {
                            tracing::error!(error = %e, "gateway worker failed");
                        }
                    }),
                    Err(e) => tracing::error!(error = %e, "could not start a gateway worker"),
                }
                let _ = done_tx.send(());
            })?;
        }
        drop(sockets);
        let health = tokio::spawn(health::run(self.clone(), stop_rx.clone()));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = health.await;
        for done in finished {
            let _ = done.await;
        }
        Ok(())
    }

    async fn worker(
        self,
        sockets: Sockets,
        (slots, me, mut inbox): (Arc<[Slot]>, usize, mpsc::UnboundedReceiver<Handoff>),
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let plain = TcpListener::from_std(sockets.plain)?;
        let tls = match sockets.tls {
            Some((l, acceptor)) => Some((TcpListener::from_std(l)?, acceptor)),
            None => None,
        };
        // One per worker, shared by its connections (an `Arc`: one count per call, not a
        // clone of the client's pool, connector and executor handles).
        let client = Arc::new(upstream_client(&self.inner.tls, &self.inner.outbound));
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.config.header_read_timeout)
            // hyper's floor for its read buffer is 8 KiB.
            .max_buf_size(self.inner.config.max_head_bytes.max(8192));
        // hyper's own limit is 100 headers, parsed into an array on the stack; any other limit
        // is a vector it fills for every request head.
        if self.inner.config.max_headers != HYPER_MAX_HEADERS {
            builder.http1().max_headers(self.inner.config.max_headers);
        }
        builder.http2().max_header_list_size(u32::try_from(self.inner.config.max_head_bytes).unwrap_or(u32::MAX));
        let serve = |stream: TcpStream, remote, acceptor, live| {
            self.connection(stream, remote, acceptor, &client, &builder, &graceful, live);
        };
        let take_over = |h: Handoff| match TcpStream::from_std(h.stream) {
            Ok(stream) => serve(stream, h.remote, h.tls, h.live),
            Err(e) => tracing::warn!(error = %e, "could not take over a connection from another worker"),
        };
        // This worker's idle upstream connections are closed once they have idled too long.
        let sweeper = tokio::spawn(async {
            let mut every = tokio::time::interval(Duration::from_secs(15));
            loop {
                every.tick().await;
                crate::conns::sweep();
            }
        });
        tokio::pin!(shutdown);
        loop {
            let (accepted, acceptor) = tokio::select! {
                accepted = accept(Some(&plain)) => (accepted, None),
                accepted = accept(tls.as_ref().map(|(l, _)| l)) => (accepted, tls.as_ref().map(|(_, a)| a.clone())),
                Some(handoff) = inbox.recv() => {
                    take_over(handoff);
                    continue;
                }
                _ = &mut shutdown => break,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let to = least_loaded(&slots, me);
                    let live = Live::new(&slots, to);
                    if to == me {
                        serve(stream, remote, acceptor, live);
                        continue;
                    }
                    let handed = stream.into_std().map_err(|e| e.to_string()).and_then(|stream| {
                        slots[to].inbox.send(Handoff { stream, remote, tls: acceptor, live }).map_err(|e| e.to_string())
                    });
                    if let Err(e) = handed {
                        tracing::warn!(error = %e, "could not hand a connection to another worker");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        drop((plain, tls));
        // Connections handed over before the stop are served (and drained) like the others.
        inbox.close();
        while let Ok(handoff) = inbox.try_recv() {
            take_over(handoff);
        }
        sweeper.abort();
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(self.inner.config.drain_timeout) => tracing::warn!("drain timeout: closing the remaining gateway connections"),
        }
        Ok(())
    }

    /// Serves one accepted connection on its own task: at once when plain, after the TLS
    /// handshake (bounded by the header read timeout) otherwise. `live` counts it on its
    /// worker until it ends.
    #[allow(clippy::too_many_arguments)]
    fn connection(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        tls: Option<TlsAcceptor>,
        client: &Arc<UpstreamClient>,
        builder: &auto::Builder<TokioExecutor>,
        graceful: &GracefulShutdown,
        live: Live,
    ) {
        let _ = stream.set_nodelay(true);
        let https = tls.is_some();
        let sink = self.inner.sink.clone();
        let (gw, client) = (self.clone(), client.clone());
        let svc = service_fn(move |req| {
            let (gw, client) = (gw.clone(), client.clone());
            async move { Ok::<_, Infallible>(gw.handle_measured(&client, req, remote, https).await) }
        });
        let Some(acceptor) = tls else {
            let conn = graceful.watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(Framed::new(JournalFirst::new(stream, sink))), svc)
                    .into_owned(),
            );
            tokio::spawn(async move {
                let _live = live;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
            return;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let handshake_timeout = self.inner.config.header_read_timeout;
        tokio::spawn(async move {
            let _live = live;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(Framed::new(JournalFirst::new(stream, sink))), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
