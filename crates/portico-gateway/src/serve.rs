//! Accepting connections: worker threads, each with its own runtime and upstream pool, HTTP/1.1
//! and h2c, and a graceful drain on shutdown.

use crate::{Gateway, health, upstream_client};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

impl Gateway {
    /// Serves connections until `shutdown` resolves; then stops accepting and lets in-flight
    /// connections finish (up to the drain timeout).
    ///
    /// Like nginx's workers, each of `config.workers` threads runs its own single-threaded
    /// runtime, accepts from the shared socket and keeps its own upstream connection pool, so a
    /// call is served start to end on one thread without cross-thread wake-ups.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = listener.into_std()?;
        listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut finished = Vec::new();
        for i in 0..self.inner.config.workers.max(1) {
            let socket = listener.try_clone()?;
            let gw = self.clone();
            let mut stop = stop_rx.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            finished.push(done_rx);
            std::thread::Builder::new().name(format!("portico-gw-{i}")).spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(async move {
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        if let Err(e) = gw.worker(socket, stopped).await {
                            tracing::error!(error = %e, "gateway worker failed");
                        }
                    }),
                    Err(e) => tracing::error!(error = %e, "could not start a gateway worker"),
                }
                let _ = done_tx.send(());
            })?;
        }
        drop(listener);
        let health = tokio::spawn(health::run(self.clone(), stop_rx.clone()));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = health.await;
        for done in finished {
            let _ = done.await;
        }
        Ok(())
    }

    async fn worker(self, socket: std::net::TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(socket)?;
        let client = upstream_client(&self.inner.tls, &self.inner.outbound);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.config.header_read_timeout)
            .max_buf_size(64 * 1024);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let (gw, client) = (self.clone(), client.clone());
                    let svc = service_fn(move |req| {
                        let (gw, client) = (gw.clone(), client.clone());
                        async move { Ok::<_, Infallible>(gw.handle_measured(&client, req, remote).await) }
                    });
                    let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(self.inner.config.drain_timeout) => tracing::warn!("drain timeout: closing the remaining gateway connections"),
        }
        Ok(())
    }
}
