//! [`App`]: the whole of Portico in one process — store, control plane + portal on one
//! listener, gateway on another (each with an optional TLS twin, see [`crate::tls`]), metering
//! between them. `serve` and the tests build it alike.

use crate::settings::{Settings, load_pepper};
use anyhow::Context;
use portico_control::snapshot::SnapshotPublisher;
use portico_control::{AppState, ControlConfig};
use portico_gateway::{Gateway, GatewayConfig};
use portico_metering::{Journal, Shipper};
use portico_store::Store;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct App {
    pub state: AppState,
    pub gateway_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The TLS listeners' addresses, when `[tls]` configures them.
    pub gateway_tls_addr: Option<SocketAddr>,
    pub api_tls_addr: Option<SocketAddr>,
    gateway: Gateway,
    tls: Option<crate::tls::Tls>,
    gateway_tls_listener: Option<TcpListener>,
    api_tls_listener: Option<TcpListener>,
    gateway_listener: TcpListener,
    api_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    pub metrics_addr: Option<SocketAddr>,
    journal: Arc<Journal>,
    request_log: portico_metering::RequestLog,
    retention: crate::settings::Retention,
    /// The shipper opens a pool of its own on its thread.
    database_url: String,
    shipper_nice: i32,
}

/// How often the shipper moves the usage journal into the store.
const USAGE_SHIP_EVERY: Duration = Duration::from_millis(250);
/// Journal segments are rotated past this size.
const JOURNAL_SEGMENT_BYTES: u64 = 64 << 20;
/// How often the snapshot watcher checks for changes made by other processes.
const SNAPSHOT_POLL_EVERY: Duration = Duration::from_secs(1);
/// How long the API's TLS connections get to finish on shutdown.
const API_DRAIN: Duration = Duration::from_secs(30);

fn url_of(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    format!("http://{host}:{}", addr.port())
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "could not listen on {addr} for the {what}: is another program using it? Choose another with --{what}-addr"
        )
    })
}

impl App {
    /// Connects and migrates the store, binds both listeners and compiles the first snapshot.
    pub async fn build(settings: &Settings) -> anyhow::Result<App> {
        crate::install_crypto();
        // Install the recorder before any metric is registered.
        crate::telemetry::prometheus();
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating the data dir {}", settings.data_dir.display()))?;
        let url = settings.database_url();
        let store =
            Store::connect(&url).await.with_context(|| format!("connecting to {}", portico_store::redact(&url)))?;
        store.migrate().await.context("running migrations")?;
        let pepper = load_pepper(&settings.data_dir)?;
        note_pepper(&store, &pepper).await?;

        let gateway_listener = bind(&settings.gateway_addr, "gateway").await?;
        let api_listener = bind(&settings.api_addr, "api").await?;
        let metrics_listener = match settings.metrics_addr.as_str() {
            "off" => None,
            addr => Some(bind(addr, "metrics").await?),
        };
        let tls = crate::tls::Tls::load(&settings.tls)?;
        let gateway_tls_listener = match &settings.tls.gateway_addr {
            Some(addr) => Some(bind(addr, "tls-gateway").await?),
            None => None,
        };
        let api_tls_listener = match &settings.tls.api_addr {
            Some(addr) => Some(bind(addr, "tls-api").await?),
            None => None,
        };
        let gateway_tls_addr = gateway_tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let api_tls_addr = api_tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let gateway_addr = gateway_listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;

        let secrets = Arc::new(crate::settings::load_keyring(&settings.data_dir)?);
        portico_control::services::oauth::ensure_signing_key(&store, &secrets)
            .await
            .context("creating the token signing key")?;
        let publisher = Arc::new(SnapshotPublisher::new(secrets.clone()));
        publisher.refresh(&store).await.context("compiling the gateway's first config snapshot")?;
        let outbound = settings.outbound_policy()?;
        if !outbound.allowed().is_empty() {
            let allowed: Vec<String> = outbound.allowed().iter().map(ToString::to_string).collect();
            tracing::info!(allow = %allowed.join(", "), "outbound calls may reach these special-purpose networks");
        }
        let config = ControlConfig {
            gateway_url: settings.public_gateway_url.clone().unwrap_or_else(|| url_of(gateway_addr)),
            token_issuer: settings.public_api_url.clone().unwrap_or_else(|| url_of(api_addr)),
            minute_retention_days: settings.retention.minute_days,
            // Served over TLS (or behind an https URL): cookies are `Secure`, everywhere.
            secure_cookies: settings.public_api_url.as_deref().is_some_and(|u| u.starts_with("https://"))
                || settings.tls.api_addr.is_some(),
            trusted_proxies: settings.trusted_networks()?,
            outbound: outbound.clone(),
            sso: settings.sso.clone(),
            ..ControlConfig::default()
        };
        let journal = Journal::open(&settings.data_dir.join("journal"), JOURNAL_SEGMENT_BYTES)
            .with_context(|| format!("opening the usage journal in {}", settings.data_dir.display()))?;
        journal.set_max_backlog(settings.journal_max_bytes);
        let upstream_roots = match &settings.upstream_ca_file {
            None => Vec::new(),
            Some(path) => read_ca_file(path)?,
        };
        let gateway_config = GatewayConfig {
            upstream_roots,
            trusted_proxies: settings.trusted_networks()?,
            outbound,
            access_log: settings.access_log,
            traces: settings.tracing.otlp_endpoint.is_some(),
            token_trust: Some(portico_gateway::token::TokenTrust {
                issuer: config.token_issuer.trim_end_matches('/').to_owned(),
                audience: config.gateway_url.trim_end_matches('/').to_owned(),
            }),
            cache_max_bytes: settings.cache_max_bytes,
            max_body_bytes: settings.limits.max_body_bytes,
            max_headers: settings.limits.max_headers,
            max_head_bytes: settings.limits.max_header_bytes,
            max_url_bytes: settings.limits.max_url_bytes,
            ..GatewayConfig::default()
        };
        let sink: Arc<dyn portico_core::usage::UsageSink> = if settings.unmetered {
            tracing::warn!(
                "--unmetered: the gateway meters nothing (no usage, no quotas from usage, no billing); for benchmarks only"
            );
            Arc::new(portico_core::usage::DiscardUsage)
        } else {
            journal.clone()
        };
        let gateway = Gateway::new(publisher.handle(), pepper.clone(), sink, gateway_config);
        let state = AppState {
            store,
            pepper: Arc::new(pepper),
            snapshot: publisher,
            config: Arc::new(config),
            throttle: Arc::default(),
            secrets,
            mailer: Arc::new(
                portico_control::services::mail::Mailer::new(
                    settings.smtp.url.as_deref(),
                    &settings.smtp.from,
                    settings.data_dir.join("outbox"),
                )
                .map_err(anyhow::Error::msg)?,
            ),
        };
        Ok(App {
            state,
            gateway_addr,
            api_addr,
            gateway_tls_addr,
            api_tls_addr,
            gateway,
            tls,
            gateway_tls_listener,
            api_tls_listener,
            gateway_listener,
            api_listener,
            metrics_listener,
            metrics_addr,
            journal,
            request_log: settings.request_log,
            retention: settings.retention.clone(),
            database_url: url,
            shipper_nice: settings.shipper_nice,
        })
    }

    pub fn api_url(&self) -> String {
        url_of(self.api_addr)
    }

    pub fn gateway_url(&self) -> String {
        self.state.config.gateway_url.clone()
    }

    /// Serves until `shutdown` resolves, then drains both listeners and flushes usage.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let App {
            state,
            gateway,
            gateway_listener,
            api_listener,
            tls,
            gateway_tls_listener,
            api_tls_listener,
            metrics_listener,
            journal,
            request_log: self_request_log,
            retention,
            database_url,
            shipper_nice,
            ..
        } = self;
        let metrics = metrics_listener.map(|l| tokio::spawn(serve_metrics(l, state.store.clone(), stopped())));
        let watcher = state.snapshot.clone().watch(state.store.clone(), SNAPSHOT_POLL_EVERY);
        let last_used =
            state.snapshot.clone().flush_every(state.store.clone(), (*state.pepper).clone(), Duration::from_secs(30));
        let (ship_stop, ship_stopped) = tokio::sync::oneshot::channel::<()>();
        let shipper = spawn_shipper(
            Shipper::new(journal.dir(), journal.instance(), state.store.clone())
                .with_request_log(self_request_log)
                .with_journal(journal.clone()),
            database_url,
            shipper_nice,
            async move {
                let _ = ship_stopped.await;
            },
        )?;
        let pruner = tokio::spawn(prune_usage(state.store.clone(), retention));
        let dispatcher = portico_control::services::webhooks::spawn_dispatcher(
            state.store.clone(),
            state.config.outbound.clone(),
            state.secrets.clone(),
        );
        let alerts = portico_control::services::alerts::spawn(state.clone());
        let router = portico_control::router(state.clone())
            .merge(portico_portal::router(state.clone()))
            .layer(axum::middleware::map_response(portico_control::security_headers));
        let api_tls = match (&tls, api_tls_listener) {
            (Some(tls), Some(l)) => Some(tokio::spawn(crate::tls::serve_router(
                l,
                tls.server_config(),
                router.clone(),
                stopped(),
                API_DRAIN,
            ))),
            _ => None,
        };
        let api = tokio::spawn({
            let stop = stopped();
            let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            async move { axum::serve(api_listener, router).with_graceful_shutdown(stop).await }
        });
        let gateway_tls = match (&tls, gateway_tls_listener) {
            (Some(tls), Some(l)) => Some((l, tls.server_config())),
            _ => None,
        };
        let gw = tokio::spawn(gateway.serve_with_tls(gateway_listener, gateway_tls, stopped()));
        let reloader = tls.map(|tls| tokio::spawn(tls.watch(stopped())));
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        let _ = stop_tx.send(true);
        let (a, g) = tokio::join!(api, gw);
        if let Some(t) = api_tls {
            let _ = t.await;
        }
        if let Some(r) = reloader {
            let _ = r.await;
        }
        watcher.abort();
        last_used.abort();
        pruner.abort();
        dispatcher.abort();
        alerts.abort();
        if let Some(m) = metrics {
            let _ = m.await;
        }
        // Every call has ended: seal the journal, and ship what is left before exiting.
        journal.close();
        let _ = ship_stop.send(());
        let _ = shipper.await;
        state.store.close().await;
        a.context("the API server task failed")?.context("the API server failed")?;
        g.context("the gateway task failed")?.context("the gateway failed")?;
        Ok(())
    }
}

/// Runs the shipper on a thread of its own at CPU priority `nice`, with a store pool made on
/// that thread (SQLite's worker threads inherit the priority): the gateway's workers come first
/// when the CPU is saturated, and the durable journal absorbs the lag. Resolves when the
/// shipper has made its last round after `shutdown`.
fn spawn_shipper(
    shipper: Shipper,
    url: String,
    nice: i32,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the usage shipper's runtime")?;
    std::thread::Builder::new()
        .name("portico-shipper".into())
        .spawn(move || {
            if nice != 0
                && let Err(e) = portico_metering::lower_thread_priority(nice)
            {
                tracing::warn!(error = %e, nice, "cannot lower the usage shipper's CPU priority; it runs at the gateway's");
            }
            runtime.block_on(async move {
                tokio::pin!(shutdown);
                // A pool of its own (two connections), made on this thread so that SQLite's
                // worker threads inherit its priority; if it cannot be made, the shared pool.
                let own = tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(10), Store::connect_with(&url, Some(2))) => match r {
                        Ok(Ok(store)) => Some(store),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "the usage shipper ships through the shared store pool (its own cannot connect)");
                            None
                        }
                        Err(_) => {
                            tracing::warn!("the usage shipper ships through the shared store pool (its own did not connect within 10 s)");
                            None
                        }
                    },
                    _ = &mut shutdown => None,
                };
                let shipper = match &own {
                    Some(store) => shipper.with_store(store.clone()),
                    None => shipper,
                };
                shipper.run(USAGE_SHIP_EVERY, shutdown).await;
                if let Some(store) = own {
                    store.close().await;
                }
            });
            let _ = done.send(());
        })
        .context("starting the usage shipper's thread")?;
    Ok(finished)
}

/// `GET /metrics` in the Prometheus text format, with the store's pool gauges refreshed every
/// scrape and the recorder's upkeep run in the background.
async fn serve_metrics(
    listener: TcpListener,
    store: portico_store::Store,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let handle = crate::telemetry::prometheus();
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, store) = (handle.clone(), store.clone());
            async move {
                let pool = store.pool();
                metrics::gauge!("portico_store_pool_connections").set(pool.size() as f64);
                metrics::gauge!("portico_store_pool_idle_connections").set(pool.num_idle() as f64);
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
    upkeep.abort();
}

/// The CA certificates of a PEM file; at least one, or an error that says what is wrong.
fn read_ca_file(path: &std::path::Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading upstream_ca_file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("upstream_ca_file {} is not a PEM file of certificates", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "upstream_ca_file {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        );
    }
    Ok(certs)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Deletes usage detail past its retention, at start and then hourly.
async fn prune_usage(store: portico_store::Store, r: crate::settings::Retention) {
    use portico_store::rollups::{self, Granularity};
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = portico_store::now_millis();
        let days = |n: u32| now - i64::from(n) * 86_400_000;
        let run = async {
            let mut c = store.conn().await?;
            let minutes = rollups::prune(&mut c, Granularity::Minute, days(r.minute_days)).await?;
            let day_rows = rollups::prune(&mut c, Granularity::Day, days(r.day_days)).await?;
            let calls = rollups::prune_request_log(&mut c, days(r.request_log_days)).await?;
            Ok::<_, portico_store::Error>((minutes, day_rows, calls))
        };
        match run.await {
            Ok((m, d, c)) if m + d + c > 0 => {
                tracing::info!(minute_rows = m, day_rows = d, request_log_rows = c, "usage past its retention deleted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old usage failed; retrying in an hour"),
        }
    }
}

/// With one pepper, every usable hash was made under it: the hashes that predate pepper ids
/// are noted as its. With previous peppers (a rotation), says how many keys and clients still
/// need one of them; they move to the current pepper as they are used.
async fn note_pepper(store: &Store, pepper: &portico_core::api_key::Pepper) -> anyhow::Result<()> {
    let mut c = store.conn().await.context("reading the key hashes")?;
    if pepper.previous_count() == 0 {
        portico_store::apps::adopt_untracked_hashes(&mut c, &pepper.id()).await.context("noting the key pepper")?;
    } else {
        let left = portico_store::apps::hashes_under_other_peppers(&mut c, &pepper.id()).await?;
        tracing::info!(
            pepper = %pepper.id(),
            previous = pepper.previous_count(),
            keys_and_clients_left = left,
            "key pepper rotated: keys and OAuth clients made under a previous pepper are re-hashed when next used; drop the previous peppers when none is left"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_ca_file_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = format!("{:#}", super::read_ca_file(&empty).unwrap_err());
        assert!(e.contains("holds no certificate"), "{e}");
        let e = format!("{:#}", super::read_ca_file(&dir.path().join("missing.pem")).unwrap_err());
        assert!(e.contains("reading upstream_ca_file"), "{e}");
    }
}
