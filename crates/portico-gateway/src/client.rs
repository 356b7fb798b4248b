//! The connector under every upstream connection (rustls with ring, the webpki roots plus
//! configured CAs, over the SSRF guard of [`crate::outbound`]), and a pooled client on it for
//! the gateway's own requests (health checks, external issuers' keys). Consumers' calls go
//! through the worker's connections in [`crate::conns`].

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
    let connector = connector_with(tls, outbound, portico_core::upstream::DEFAULT_CONNECT_TIMEOUT_MS);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector)
}

/// The connector under every upstream connection: TCP through the SSRF guard with a connect
/// timeout, then TLS for `https` (SNI, HTTP/2 or HTTP/1.1 by ALPN).
pub(crate) fn connector_with(
    tls: &rustls::ClientConfig,
    outbound: &Arc<OutboundPolicy>,
    connect_ms: u32,
) -> hyper_rustls::HttpsConnector<Guarded> {
    let http = Guarded::new(outbound.clone(), |http| {
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(connect_ms.into())));
        http.enforce_http(false);
    });
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http)
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
