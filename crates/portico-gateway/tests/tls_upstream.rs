//! HTTPS upstreams: the gateway verifies the upstream's certificate (webpki roots plus the
//! configured CA), sends SNI, and refuses an upstream it cannot verify with a 502.

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_gateway::GatewayConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::sync::Arc;

/// A CA, and a TLS upstream on localhost with a certificate it issued.
async fn tls_upstream() -> (String, CertificateDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let svc = service_fn(move |_req| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "secure hello to {sni}"
                        )))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}"), ca_cert.der().clone())
}

async fn gateway(upstream: &str, roots: Vec<CertificateDer<'static>>) -> (String, String) {
    let config = GatewayConfig { upstream_roots: roots, ..common::config() };
    let r = common::start(common::Setup { config, ..common::Setup::new("secure", upstream) }).await;
    (format!("http://{}", r.addr), r.key)
}

async fn call(base: &str, key: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET /secure/v1/hello HTTP/1.1\r\nhost: gw\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn https_upstreams_are_verified() {
    let (upstream, ca) = tls_upstream().await;
    let (base, key) = gateway(&upstream, vec![ca]).await;
    let (status, body) = call(&base, &key).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("secure hello to localhost"), "SNI was sent: {body}");

    // Without the CA, the upstream's certificate is not trusted: 502, never a plaintext retry.
    let (base, key) = gateway(&upstream, vec![]).await;
    let (status, body) = call(&base, &key).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("application/problem+json"));
}
