//! Access tokens of an external issuer (`policies.token_issuers`) against a real JWKS server:
//! RS256 and ES256 tokens call as the app their client is registered to; forgeries, wrong
//! claims, algorithms outside the allowlist and unregistered clients are refused; an unknown
//! `kid` fetches the JWKS once for every waiting call and not again within the cooldown; an
//! issuer whose keys cannot be fetched (down, or refused by the outbound policy) answers 503.

mod common;

use common::{Setup, echo_upstream, start};
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portico_core::policy::Policies;
use portico_core::snapshot::{ExternalGrant, Snapshot};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ISSUER: &str = "https://idp.test.example";
const AUDIENCE: &str = "https://api.test.example/echo";

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("idp-rs256.pem")).unwrap()
}

fn rsa_next() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("idp-rs256-next.pem")).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&pem("idp-es256.pem")).unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(key, alg).unwrap();
    j.common.key_id = Some(kid.into());
    j.common.key_algorithm = Some(KeyAlgorithm::from(alg));
    serde_json::to_value(j).unwrap()
}

/// A JWKS endpoint that counts its fetches; its keys, status and delay can change.
#[derive(Clone)]
struct Idp {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
    fetches: Arc<AtomicU64>,
}

async fn idp(keys: Vec<Value>) -> Idp {
    use http_body_util::Full;
    let idp = Idp {
        url: String::new(),
        keys: Arc::new(Mutex::new(keys)),
        status: Arc::new(Mutex::new(200)),
        delay: Arc::new(Mutex::new(Duration::ZERO)),
        fetches: Arc::default(),
    };
    let served = idp.clone();
    let url = common::tcp_server(move |s| {
        let idp = served.clone();
        async move {
            let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                let idp = idp.clone();
                async move {
                    idp.fetches.fetch_add(1, Ordering::SeqCst);
                    let delay = *idp.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let body = json!({"keys": *idp.keys.lock().unwrap()}).to_string();
                    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                    *r.status_mut() = hyper::StatusCode::from_u16(*idp.status.lock().unwrap()).unwrap();
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
        }
    })
    .await;
    Idp { url: format!("{url}/jwks"), ..idp }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(client: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now(), "client_id": client, "sub": client})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

struct World {
    base: String,
    idp: Idp,
    http: reqwest::Client,
    /// The consumer the registered client calls as.
    consumer: String,
}

/// The gateway with one API trusting the test IdP (RS256, ES256; a JWKS refresh cooldown of
/// `cooldown` seconds), and client `app-1` of the IdP registered to the first consumer's app.
async fn world(outbound_loopback: bool, cooldown: u64) -> World {
    let up = echo_upstream().await;
    let idp = idp(vec![jwk(&rsa(), Algorithm::RS256, "rs-1"), jwk(&ec(), Algorithm::ES256, "ec-1")]).await;
    let mut s = Setup::new("echo", &up);
    s.policies = serde_json::from_value::<Policies>(json!({"token_issuers": [{
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.url, "algorithms": ["RS256", "ES256"],
        "refresh_cooldown_secs": cooldown,
    }]}))
    .unwrap();
    s.policies.validate().unwrap();
    if !outbound_loopback {
        // Only the JWKS fetch would need loopback: the call never gets to the upstream.
        s.config.outbound = portico_core::outbound::OutboundPolicy::new(Vec::new());
    }
    let running = start(s).await;
    let grant = running.snapshot.load().keys.values().next().cloned().unwrap();
    let consumer = grant.consumer_slug.to_string();
    let next = Snapshot {
        external_clients: HashMap::from([(
            idp.url.clone(),
            HashMap::from([(
                ISSUER.to_owned(),
                HashMap::from([(
                    "app-1".to_owned(),
                    ExternalGrant {
                        app_id: grant.app_id,
                        consumer_org_id: grant.consumer_org_id,
                        consumer_slug: grant.consumer_slug.clone(),
                    },
                )]),
            )]),
        )]),
        ..Snapshot::clone(&running.snapshot.load())
    };
    running.snapshot.store(Arc::new(next));
    let _ = rustls::crypto::ring::default_provider().install_default();
    World { base: running.base.clone(), idp, http: reqwest::Client::new(), consumer }
}

impl World {
    async fn call(&self, token: &str) -> reqwest::Response {
        self.http.get(format!("{}/things/1", self.base)).bearer_auth(token).send().await.unwrap()
    }

    async fn refused(&self, token: &str, status: u16, says: &str) {
        let r = self.call(token).await;
        assert_eq!(r.status().as_u16(), status, "{says}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains(says), "wanted `{says}`: {body}");
    }

    fn fetches(&self) -> u64 {
        self.idp.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_call_as_the_registered_app() {
    let w = world(true, 1).await;
    for token in [
        sign(Algorithm::RS256, Some("rs-1"), &rsa(), &claims("app-1")),
        sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims("app-1")),
    ] {
        let r = w.call(&token).await;
        assert_eq!(r.status(), 200);
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["x-portico-consumer"], w.consumer.as_str());
        // The token is the consumer's credential at the gateway: it never reaches the upstream.
        assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    }
    assert_eq!(w.fetches(), 1, "both keys come from one fetch, kept in memory");
}

#[tokio::test]
async fn forged_and_misdirected_tokens_are_refused() {
    let w = world(true, 1).await;
    let good = claims("app-1");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let rs = |c: &Value| sign(Algorithm::RS256, Some("rs-1"), &rsa(), c);
    w.refused(&rs(&with("aud", json!("https://other.example"))), 401, "another audience").await;
    w.refused(&rs(&with("exp", json!(now() - 120))), 401, "expired").await;
    w.refused(&rs(&with("exp", json!("tomorrow"))), 401, "wrong format").await;
    w.refused(&rs(&without("exp")), 401, "lacks a required claim").await;
    w.refused(&rs(&with("nbf", json!(now() + 600))), 401, "not valid yet").await;
    w.refused(&rs(&with("client_id", json!("app-unknown"))), 401, "not registered on any Portico app").await;
    w.refused(&rs(&without("client_id")), 401, "no `client_id` claim").await;
    // Another issuer's tokens are not this API's external tokens: they are judged as Portico's.
    w.refused(&rs(&with("iss", json!("https://evil.example"))), 401, "does not accept access tokens").await;
    // Signed by a key the IdP does not publish, under a kid it does.
    w.refused(&sign(Algorithm::RS256, Some("rs-1"), &rsa_next(), &good), 401, "does not verify").await;
    // The EC key's kid on an RSA signature: the key's own alg binds it.
    w.refused(&sign(Algorithm::RS256, Some("ec-1"), &rsa(), &good), 401, "does not publish").await;
    // HS256 "signed" with the RSA public key (the classic confusion): not in the allowlist.
    let hs = EncodingKey::from_secret(&pem("idp-rs256.pub.pem"));
    w.refused(&sign(Algorithm::HS256, Some("rs-1"), &hs, &good), 401, "accepts RS256, ES256").await;
    // alg none: unsigned.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "kid": "rs-1"})), b64(&good));
    w.refused(&none, 401, "not a valid JWT").await;
    // An ID token (typ says so) is not an access token.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rs-1".into());
    h.typ = Some("id_token+jwt".into());
    w.refused(&jsonwebtoken::encode(&h, &good, &rsa()).unwrap(), 401, "not an access token").await;
    // Still fine with the right token.
    assert_eq!(w.call(&rs(&good)).await.status(), 200);
}

#[tokio::test]
async fn an_unknown_kid_fetches_once_for_everyone_and_not_again_within_the_cooldown() {
    // A cooldown long enough that the calls below surely fall inside it.
    let w = world(true, 3).await;
    assert_eq!(w.call(&sign(Algorithm::RS256, Some("rs-1"), &rsa(), &claims("app-1"))).await.status(), 200);
    assert_eq!(w.fetches(), 1);
    // The IdP rotates: a new key, published slowly.
    w.idp.keys.lock().unwrap().push(jwk(&rsa_next(), Algorithm::RS256, "rs-2"));
    *w.idp.delay.lock().unwrap() = Duration::from_millis(300);
    tokio::time::sleep(Duration::from_millis(3100)).await; // past the cooldown of the first fetch
    let rotated = sign(Algorithm::RS256, Some("rs-2"), &rsa_next(), &claims("app-1"));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (http, url, token) = (w.http.clone(), format!("{}/things/1", w.base), rotated.clone());
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap().status() })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(w.fetches(), 2, "20 calls with a new kid, one fetch");
    // Made-up kids within the cooldown: refused without a fetch.
    *w.idp.delay.lock().unwrap() = Duration::ZERO;
    for i in 0..5 {
        let forged = sign(Algorithm::RS256, Some(&format!("made-up-{i}")), &rsa(), &claims("app-1"));
        w.refused(&forged, 401, "does not publish").await;
    }
    assert_eq!(w.fetches(), 2, "within the cooldown an unknown kid fetches nothing");
    // After it, one more fetch (still unknown: refused).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    w.refused(&sign(Algorithm::RS256, Some("made-up"), &rsa(), &claims("app-1")), 401, "does not publish").await;
    assert_eq!(w.fetches(), 3);
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_answer_503_and_known_keys_survive_a_failed_refresh() {
    let w = world(true, 1).await;
    *w.idp.status.lock().unwrap() = 500;
    let token = sign(Algorithm::RS256, Some("rs-1"), &rsa(), &claims("app-1"));
    let r = w.call(&token).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("could not be fetched"), "{body}");
    // The IdP comes back: after the cooldown the keys are fetched.
    *w.idp.status.lock().unwrap() = 200;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(w.call(&token).await.status(), 200);
    // Down again: a token with a new kid cannot be checked, the known key still verifies.
    *w.idp.status.lock().unwrap() = 500;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = sign(Algorithm::RS256, Some("rs-9"), &rsa(), &claims("app-1"));
    assert_eq!(w.call(&unknown).await.status(), 503);
    assert_eq!(w.call(&token).await.status(), 200);
}

#[tokio::test]
async fn the_outbound_policy_judges_the_jwks_url() {
    let w = world(false, 1).await;
    let token = sign(Algorithm::RS256, Some("rs-1"), &rsa(), &claims("app-1"));
    assert_eq!(w.call(&token).await.status(), 503);
    assert_eq!(w.fetches(), 0, "a loopback JWKS URL is not fetched unless outbound.allow_cidrs allows it");
}
