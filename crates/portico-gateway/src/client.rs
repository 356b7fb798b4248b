//! The pooled client the gateway forwards with: HTTP or HTTPS upstreams (rustls with ring,
//! the webpki roots plus configured CAs), one per worker thread, over the SSRF guard
//! ([`crate::outbound`]).

use crate::UpBody;
use crate::outbound::Guarded;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portico_core::outbound::OutboundPolicy;
use std::sync::Arc;
use std::time::Duration;

pub(crate) type UpstreamClient = Client<hyper_rustls::HttpsConnector<Guarded>, UpBody>;

/// A pooled keep-alive client to upstreams, HTTP or HTTPS (rustls, SNI, HTTP/2 by ALPN); one
/// per worker thread. It connects only to addresses the outbound policy permits.
pub(crate) fn upstream_client(tls: &rustls::ClientConfig, outbound: &Arc<OutboundPolicy>) -> UpstreamClient {
    client_with(tls, outbound, portico_core::upstream::DEFAULT_CONNECT_TIMEOUT_MS)
}

fn client_with(tls: &rustls::ClientConfig, outbound: &Arc<OutboundPolicy>, connect_ms: u32) -> UpstreamClient {
    let http = Guarded::new(outbound.clone(), |http| {
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(connect_ms.into())));
        http.enforce_http(false);
    });
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(https)
}

thread_local! {
    /// This worker's clients for versions with their own connect timeout, by timeout (each
    /// with its own pool; the connector's timeout is fixed when it is made).
    static BY_CONNECT_TIMEOUT: std::cell::RefCell<std::collections::HashMap<u32, UpstreamClient>> =
        Default::default();
}

/// The client for a version's connect timeout: the worker's own for the default (borrowed: no
/// per-call clone), else one per timeout on this worker thread (made on first use; at most 64,
/// beyond which the default's).
pub(crate) fn for_connect_timeout<'a>(
    default: &'a UpstreamClient,
    connect_ms: u32,
    tls: &rustls::ClientConfig,
    outbound: &Arc<OutboundPolicy>,
) -> std::borrow::Cow<'a, UpstreamClient> {
    use std::borrow::Cow;
    if connect_ms == portico_core::upstream::DEFAULT_CONNECT_TIMEOUT_MS {
        return Cow::Borrowed(default);
    }
    BY_CONNECT_TIMEOUT.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(c) = m.get(&connect_ms) {
            return Cow::Owned(c.clone());
        }
        if m.len() >= 64 {
            return Cow::Borrowed(default);
        }
        let c = client_with(tls, outbound, connect_ms);
        m.insert(connect_ms, c.clone());
        Cow::Owned(c)
    })
}

/// Upstream TLS: the webpki roots plus the configured extra CAs, ring as the crypto provider.
pub(crate) fn tls_config(extra: &[rustls::pki_types::CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for ca in extra {
        if let Err(e) = roots.add(ca.clone()) {
            tracing::error!(error = %e, "an upstream CA certificate was refused");
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
