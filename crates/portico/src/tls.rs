//! TLS termination for the gateway's and the API/portal's TLS listeners (the plain listeners
//! stay): rustls with the ring provider, one certificate per set of host names chosen by SNI
//! (the first certificate when the name matches none), ALPN `h2` and `http/1.1`.
//!
//! Certificates are reloaded without a restart: their files are re-read every
//! `reload_secs` (and at `SIGHUP`); when they changed, the new set replaces the old one
//! atomically. A set that does not load (a missing file, no certificate, a key that does not
//! match) is refused with an error in the log, and the certificates in use stay.

use anyhow::{Context, anyhow, bail};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The `[tls]` section of the settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The gateway's TLS listener (e.g. `0.0.0.0:8443`); none without it.
    pub gateway_addr: Option<String>,
    /// The API and portal's TLS listener (e.g. `0.0.0.0:8444`); none without it.
    pub api_addr: Option<String>,
    /// `[[tls.certificates]]`: the first is the default, served when SNI matches no `hosts`.
    pub certificates: Vec<CertificateFiles>,
    /// How often the certificate files are checked for changes, in seconds.
    pub reload_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { gateway_addr: None, api_addr: None, certificates: Vec::new(), reload_secs: 5 }
    }
}

/// One certificate: a PEM chain (leaf first), its PEM private key (PKCS#8, PKCS#1 or SEC1), and
/// the host names it is served for (`api.example.com`, or `*.example.com` for one label).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.gateway_addr.is_some() || self.api_addr.is_some()
    }

    /// Checks the section, loading every certificate: the message says what to fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled() {
            if !self.certificates.is_empty() {
                bail!("tls: certificates are set but no TLS listener: set tls.gateway_addr and/or tls.api_addr");
            }
            return Ok(());
        }
        if self.certificates.is_empty() {
            bail!(
                "tls: a TLS listener needs a certificate: add [[tls.certificates]] with cert = \"cert.pem\", key = \"key.pem\""
            );
        }
        if !(1..=3600).contains(&self.reload_secs) {
            bail!("tls.reload_secs must be between 1 and 3600 (seconds)");
        }
        for c in &self.certificates {
            for h in &c.hosts {
                let name = h.strip_prefix("*.").unwrap_or(h);
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
                if !ok {
                    bail!(
                        "tls: host `{h}` of {} is not a host name such as api.example.com or *.example.com",
                        c.cert.display()
                    );
                }
            }
        }
        Certificates::load(&self.certificates)?;
        Ok(())
    }
}

/// The loaded certificates, by host name.
#[derive(Debug)]
struct Certificates {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    fn load(files: &[CertificateFiles]) -> anyhow::Result<Certificates> {
        let keys = files.iter().map(load_one).collect::<anyhow::Result<Vec<_>>>()?;
        let default = keys.first().cloned().ok_or_else(|| anyhow!("tls: no certificate is configured"))?;
        let mut certs = Certificates { default, exact: HashMap::new(), wildcard: HashMap::new() };
        for (f, key) in files.iter().zip(keys) {
            for h in &f.hosts {
                let h = h.to_ascii_lowercase();
                // The first certificate that names a host wins.
                match h.strip_prefix("*.") {
                    Some(parent) => certs.wildcard.entry(parent.to_owned()).or_insert_with(|| key.clone()),
                    None => certs.exact.entry(h).or_insert_with(|| key.clone()),
                };
            }
        }
        Ok(certs)
    }

    fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else { return self.default.clone() };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)).unwrap_or(&self.default).clone()
    }
}

/// A certificate chain and its key, checked to match.
fn load_one(f: &CertificateFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let (cert, key) = (f.cert.display(), f.key.display());
    if !f.cert.is_file() {
        bail!("tls: the certificate file {cert} does not exist (or is not a file)");
    }
    if !f.key.is_file() {
        bail!("tls: the key file {key} does not exist (or is not a file)");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
        .with_context(|| format!("tls: reading {cert}"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls: {cert} is not a PEM file of certificates"))?;
    if chain.is_empty() {
        bail!("tls: {cert} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)");
    }
    let der = PrivateKeyDer::from_pem_file(&f.key)
        .map_err(|e| anyhow!("tls: {key} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| anyhow!("tls: the key in {key} is not a supported key (RSA, ECDSA P-256/P-384, Ed25519): {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            bail!(
                "tls: the key in {key} does not match the certificate in {cert} (its first certificate must be the leaf)"
            )
        }
        Err(e) => bail!("tls: the certificate in {cert} cannot be read: {e}"),
    }
    Ok(Arc::new(certified))
}

/// Chooses the certificate by SNI from the current set, which [`Tls::watch`] replaces.
#[derive(Debug)]
struct SniResolver {
    current: ArcSwap<Certificates>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().for_name(hello.server_name()))
    }
}

/// The TLS side of both listeners: one resolver, one server configuration.
#[derive(Clone)]
pub struct Tls {
    resolver: Arc<SniResolver>,
    files: Vec<CertificateFiles>,
    every: Duration,
    config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Loads the certificates; `None` when no TLS listener is configured.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Option<Tls>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let resolver =
            Arc::new(SniResolver { current: ArcSwap::from_pointee(Certificates::load(&settings.certificates)?) });
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("tls: the ring provider has no protocol versions")?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls {
            resolver,
            files: settings.certificates.clone(),
            every: Duration::from_secs(settings.reload_secs.max(1)),
            config: Arc::new(config),
        }))
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The files' bytes, to notice a change (`None` for a file that cannot be read).
    async fn fingerprint(&self) -> Vec<Option<Vec<u8>>> {
        let mut all = Vec::with_capacity(self.files.len() * 2);
        for f in &self.files {
            for p in [&f.cert, &f.key] {
                all.push(tokio::fs::read(p).await.ok());
            }
        }
        all
    }

    /// Reloads the certificates when their files change (checked every `reload_secs`) or at
    /// `SIGHUP`, until `stop` resolves.
    pub async fn watch(self, stop: impl Future<Output = ()>) {
        let mut seen = self.fingerprint().await;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::pin!(stop);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hangup => true,
                _ = &mut stop => return,
            };
            let now = self.fingerprint().await;
            if !forced && now == seen {
                continue;
            }
            seen = now;
            let files = self.files.clone();
            match tokio::task::spawn_blocking(move || Certificates::load(&files)).await {
                Ok(Ok(certs)) => {
                    self.resolver.current.store(Arc::new(certs));
                    tracing::info!(certificates = self.files.len(), "TLS certificates reloaded");
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "TLS certificates not reloaded; the ones in use stay")
                }
                Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; the ones in use stay"),
            }
        }
    }
}

/// Serves `router` over TLS on `listener` (HTTP/1.1 and HTTP/2 by ALPN), with the peer's
/// address as `ConnectInfo`, until `stop` resolves; then drains for up to `drain`.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(stop);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the API's TLS listener");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let (acceptor, router, builder, watcher) =
            (acceptor.clone(), router.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(remote));
                router.clone().oneshot(req)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout: closing the remaining API TLS connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &std::path::Path, name: &str, hosts: &[&str]) -> CertificateFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        CertificateFiles { cert: c, key: k, hosts: hosts.iter().map(|h| h.to_string()).collect() }
    }

    fn settings(certificates: Vec<CertificateFiles>) -> TlsSettings {
        TlsSettings { gateway_addr: Some("127.0.0.1:0".into()), certificates, ..TlsSettings::default() }
    }

    #[test]
    fn certificates_by_host_with_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.example.com"]);
        let b = write_cert(dir.path(), "b", &["*.b.example.com"]);
        let certs = Certificates::load(&[a.clone(), b.clone()]).unwrap();
        let leaf = |name: Option<&str>| certs.for_name(name).cert[0].clone();
        let (ca, cb) = (leaf(Some("a.example.com")), leaf(Some("x.b.example.com")));
        assert_ne!(ca, cb);
        assert_eq!(leaf(Some("A.Example.COM")), ca, "names are case-insensitive");
        assert_eq!(leaf(Some("other.example")), ca, "no match: the first certificate");
        assert_eq!(leaf(None), ca, "no SNI: the first certificate");
        assert_eq!(leaf(Some("y.x.b.example.com")), ca, "a wildcard covers one label");
        settings(vec![a, b]).validate().unwrap();
    }

    #[test]
    fn bad_certificates_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.example.com"]);
        let b = write_cert(dir.path(), "b", &["b.example.com"]);
        let err = |files: Vec<CertificateFiles>| format!("{:#}", settings(files).validate().unwrap_err());
        let missing = CertificateFiles { cert: dir.path().join("nope.crt"), ..a.clone() };
        assert!(err(vec![missing]).contains("does not exist"));
        let not_pem = dir.path().join("junk.crt");
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(err(vec![CertificateFiles { cert: not_pem.clone(), ..a.clone() }]).contains("holds no certificate"));
        assert!(err(vec![CertificateFiles { key: not_pem, ..a.clone() }]).contains("no PEM private key"));
        assert!(err(vec![CertificateFiles { key: b.key.clone(), ..a.clone() }]).contains("does not match"));
        assert!(
            err(vec![CertificateFiles { hosts: vec!["bad host".into()], ..a.clone() }]).contains("not a host name")
        );
        assert!(err(vec![]).contains("[[tls.certificates]]"));
        let orphan = TlsSettings { certificates: vec![a], ..TlsSettings::default() };
        assert!(format!("{:#}", orphan.validate().unwrap_err()).contains("no TLS listener"));
        TlsSettings::default().validate().unwrap();
    }
}
