//! TLS termination through the real `App`: the gateway's and the API's TLS listeners serve the
//! certificate SNI asks for (the first one otherwise), speak HTTP/2 by ALPN, tell the upstream
//! the call came over HTTPS, and pick up a replaced certificate without a restart — while a
//! corrupt replacement keeps the one in use. The plain listeners stay.

mod common;

use common::{Backend, TestApp, echo_openapi, spawn_app_configured, spawn_upstream};
use portico::tls::CertificateFiles;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "Portico test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
}

/// Writes a leaf certificate for `host` signed by the CA to `dir/{name}.crt|key`; returns its DER.
fn leaf(ca: &Ca, dir: &Path, name: &str, host: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap().signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

fn files(dir: &Path, name: &str, host: &str) -> CertificateFiles {
    CertificateFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        hosts: vec![host.to_owned()],
    }
}

/// A client that trusts only the test CA and reaches `names` at `addr`; a new one per probe,
/// so each probe makes a new connection (and a new handshake).
fn client(ca: &Ca, names: &[(&str, SocketAddr)]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .tls_info(true)
        .pool_max_idle_per_host(0);
    for (name, addr) in names {
        b = b.resolve(name, *addr);
    }
    b.build().unwrap()
}

fn served_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec()
}

/// The certificate the gateway's TLS listener serves to `name`.
async fn probe(app: &TestApp, ca: &Ca, name: &str) -> Option<Vec<u8>> {
    let addr = app.gateway_tls.unwrap();
    let resp = client(ca, &[(name, addr)]).get(format!("https://{name}:{}/healthz", addr.port())).send().await.ok()?;
    Some(served_certificate(&resp))
}

/// A provider's API `echo` over `upstream`, and a consumer key subscribed to it.
async fn api_and_key(app: &TestApp, upstream: &str) -> String {
    let provider = app.signup("pam@provider.example", "provider").await;
    assert_eq!(app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await.0, 201);
    let v = json!({"version": "1.0.0", "upstream_url": upstream, "openapi": echo_openapi(), "state": "published"});
    assert_eq!(app.post("/apis/echo/versions", Some(&provider), v).await.0, 201);
    let plan = json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}});
    assert_eq!(app.post("/apis/echo/plans", Some(&provider), plan).await.0, 201);
    let consumer = app.signup("cal@consumer.example", "consumer").await;
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "Robot"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    let (s, v) =
        app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": "echo", "plan": "free"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({"name": "prod"})).await;
    assert_eq!(s, 201, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tls_listeners_serve_by_sni_over_h2_and_reload_certificates() {
    let ca = ca();
    let certs = tempfile::tempdir().unwrap();
    let gw_der = leaf(&ca, certs.path(), "gw", "gw.test");
    let api_der = leaf(&ca, certs.path(), "api", "api.test");
    let dir = certs.path().to_path_buf();
    let app = spawn_app_configured(Backend::Sqlite, move |s| {
        s.tls.gateway_addr = Some("127.0.0.1:0".into());
        s.tls.api_addr = Some("127.0.0.1:0".into());
        s.tls.certificates = vec![files(&dir, "gw", "gw.test"), files(&dir, "api", "api.test")];
        s.tls.reload_secs = 1;
    })
    .await;
    let (gw_addr, api_addr) = (app.gateway_tls.unwrap(), app.api_tls.unwrap());
    let upstream = spawn_upstream().await;
    let key = api_and_key(&app, &upstream.url).await;

    // The gateway over TLS: its certificate for gw.test, HTTP/2 by ALPN, https for the upstream.
    let c = client(&ca, &[("gw.test", gw_addr)]);
    let resp = c
        .get(format!("https://gw.test:{}/echo/v1/things/1", gw_addr.port()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(served_certificate(&resp), gw_der);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    assert!(seen["headers"]["forwarded"].as_str().unwrap().contains("proto=https"), "{seen}");
    // HTTP/1.1 works too, and the plain listener still says http.
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .http1_only()
        .resolve("gw.test", gw_addr)
        .build()
        .unwrap();
    let resp = h1
        .get(format!("https://gw.test:{}/echo/v1/things/1", gw_addr.port()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_11));
    let plain: Value = app
        .http
        .get(format!("{}/echo/v1/things/1", app.gateway))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["headers"]["x-forwarded-proto"], "http");

    // SNI picks the certificate; an unknown name gets the first one.
    assert_eq!(probe(&app, &ca, "api.test").await.unwrap(), api_der, "the API's certificate on the gateway port");
    let unknown = client(&ca, &[("other.test", gw_addr)])
        .get(format!("https://other.test:{}/healthz", gw_addr.port()))
        .send()
        .await;
    assert!(unknown.is_err(), "the default certificate does not name other.test, so the client refuses it");

    // The API and portal over TLS, with the client's address known (sign-up needs it).
    let c = client(&ca, &[("api.test", api_addr)]);
    let resp = c
        .post(format!("https://api.test:{}/api/v1/auth/signup", api_addr.port()))
        .json(&json!({"email": "tls@consumer.example", "password": "long enough password", "name": "tls", "account_type": "consumer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(served_certificate(&resp), api_der);
    let missing = c.get(format!("https://api.test:{}/api/v1/nothing-here", api_addr.port())).send().await.unwrap();
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    // A new certificate for gw.test is served within seconds, without a restart.
    let renewed = leaf(&ca, certs.path(), "gw", "gw.test");
    assert_ne!(renewed, gw_der);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(&app, &ca, "gw.test").await.as_ref() != Some(&renewed) {
        assert!(Instant::now() < deadline, "the renewed certificate was not served within 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A corrupt replacement is refused: the renewed certificate stays.
    std::fs::write(certs.path().join("gw.crt"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(probe(&app, &ca, "gw.test").await.unwrap(), renewed, "the corrupt file did not replace it");
    assert_eq!(probe(&app, &ca, "api.test").await.unwrap(), api_der);
    app.stop().await;
}
