//! The signing keys of external token issuers (an API's `policies.token_issuers`), fetched
//! from their JWKS URLs and kept in memory, one set per URL for the whole process.
//!
//! A token whose `kid` is in the set costs no fetch. An unknown `kid` (the issuer rotated its
//! keys) starts one fetch for everyone — calls that arrive while it runs wait for the same
//! fetch — unless the last fetch started less than the issuer's `refresh_cooldown_secs` ago,
//! so that tokens with made-up `kid`s cannot make the gateway hammer the issuer. A set older
//! than `max_age_secs` is fetched again in the background (keys the issuer withdrew stop
//! verifying) while calls go on with the set in hand.
//!
//! The fetch goes through the worker's upstream client, so the outbound (SSRF) policy judges
//! the address it connects to; it follows no redirect, waits at most 5 s and reads at most
//! 512 KiB. A failed fetch keeps the keys already known.

use crate::{UpBody, UpstreamClient};
use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// One verification key of an issuer.
pub(crate) struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the key verifies only that algorithm.
    alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

/// The keys of one JWKS URL as last fetched.
#[derive(Default)]
pub(crate) struct KeySet {
    fetched_at: Option<Instant>,
    keys: Vec<Key>,
}

impl KeySet {
    /// The key for a token's `kid` and `alg`. A token without a `kid` is verified only when the
    /// set has exactly one key that fits the algorithm.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        let fits = |k: &&Key| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self.keys.iter().filter(fits).find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut it = self.keys.iter().filter(fits);
                let one = it.next()?;
                it.next().is_none().then_some(one)
            }
        }
    }

    /// Keys of a JWKS document: signing keys of the asymmetric kinds only (an `oct` key — a
    /// shared secret — or an encryption key never verifies a token); a key this gateway cannot
    /// read is skipped, not fatal for the others.
    pub(crate) fn parse(body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("the JWKS is not a JSON key set ({e})"))?;
        let mut keys = Vec::new();
        for v in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else { continue };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
                continue;
            }
            if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
                Some(Ok(a)) => Some(a),
                // An `alg` for something other than signatures (RSA-OAEP…): not a signing key.
                Some(Err(_)) => continue,
                None => None,
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
            keys.push(Key { kid: jwk.common.key_id.clone(), alg, key });
        }
        Ok(KeySet { fetched_at: Some(Instant::now()), keys })
    }
}

/// What a fetch ended with, for the calls that waited on it.
type Outcome = Option<Result<(), Arc<str>>>;

#[derive(Default)]
struct Refresh {
    started: Option<Instant>,
    /// The fetch under way: calls that need it wait on this.
    running: Option<watch::Receiver<Outcome>>,
}

/// One JWKS URL's keys and its refreshing.
pub(crate) struct Source {
    url: http::Uri,
    keys: ArcSwap<KeySet>,
    refresh: Mutex<Refresh>,
}

/// Why no key could be found for a token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The issuer does not publish that key (after a fetch, or within the cooldown).
    Unknown,
    /// The issuer's keys could not be fetched.
    Unreachable,
}

impl Source {
    /// The key set, and the key for `kid` / `alg` in it; fetches (once, for every caller) when
    /// the key is unknown and the cooldown allows.
    pub(crate) async fn key(
        self: &Arc<Self>,
        client: &UpstreamClient,
        kid: Option<&str>,
        alg: Algorithm,
        cooldown: Duration,
        max_age: Duration,
    ) -> Result<(Arc<KeySet>, usize), Miss> {
        let set = self.keys.load_full();
        if let Some(i) = position(&set, kid, alg) {
            if set.fetched_at.is_none_or(|t| t.elapsed() > max_age) {
                // Stale: refresh in the background, verify with what we have.
                drop(self.start(client, cooldown));
            }
            return Ok((set, i));
        }
        let Some(mut running) = self.start(client, cooldown) else {
            return Err(if set.fetched_at.is_none() { Miss::Unreachable } else { Miss::Unknown });
        };
        let outcome = running.wait_for(Option::is_some).await.map(|o| o.clone()).ok().flatten();
        let set = self.keys.load_full();
        match position(&set, kid, alg) {
            Some(i) => Ok((set, i)),
            None if matches!(outcome, Some(Err(_))) => Err(Miss::Unreachable),
            None => Err(Miss::Unknown),
        }
    }

    /// The running fetch, or a new one when none runs and the cooldown is over; `None`: within
    /// the cooldown and nothing running.
    fn start(self: &Arc<Self>, client: &UpstreamClient, cooldown: Duration) -> Option<watch::Receiver<Outcome>> {
        let mut r = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = &r.running {
            return Some(rx.clone());
        }
        if r.started.is_some_and(|t| t.elapsed() < cooldown) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        r.started = Some(Instant::now());
        r.running = Some(rx.clone());
        drop(r);
        let (me, client) = (self.clone(), client.clone());
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&client, &me.url)).await {
                Ok(Ok(set)) => {
                    tracing::info!(url = %me.url, keys = set.keys.len(), "fetched a token issuer's signing keys");
                    me.keys.store(Arc::new(set));
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err("no answer within 5 s".to_owned()),
            };
            if let Err(e) = &outcome {
                tracing::warn!(url = %me.url, error = %e, "fetching a token issuer's signing keys (JWKS) failed; keeping the keys known");
            }
            me.refresh.lock().unwrap_or_else(|p| p.into_inner()).running = None;
            let _ = tx.send(Some(outcome.map_err(Arc::from)));
        });
        Some(rx)
    }
}

fn position(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<usize> {
    let k = set.find(kid, alg)?;
    set.keys.iter().position(|x| std::ptr::eq(x, k))
}

impl KeySet {
    pub(crate) fn get(&self, i: usize) -> &Key {
        &self.keys[i]
    }
}

async fn fetch(client: &UpstreamClient, url: &http::Uri) -> Result<KeySet, String> {
    let body: UpBody = http_body_util::Empty::new().map_err(|e| match e {}).boxed_unsync();
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
        .header(http::header::USER_AGENT, concat!("Portico-Gateway/", env!("CARGO_PKG_VERSION")))
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| {
        if crate::outbound::is_refused(&e) {
            "the outbound policy refuses the JWKS URL's address (a platform admin can allow it with outbound.allow_cidrs)"
                .to_owned()
        } else {
            format!("the JWKS URL could not be reached ({e})")
        }
    })?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("the JWKS URL answered {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("the JWKS could not be read ({e})"))?
        .to_bytes();
    KeySet::parse(&body)
}

/// Every JWKS URL's keys, for the whole process.
#[derive(Default)]
pub(crate) struct Jwks {
    sources: ArcSwap<HashMap<String, Arc<Source>>>,
}

impl Jwks {
    /// The source for a URL (made, empty, on first use); `None` when the URL is not a URI.
    pub(crate) fn source(&self, url: &str) -> Option<Arc<Source>> {
        if let Some(s) = self.sources.load().get(url) {
            return Some(s.clone());
        }
        let uri: http::Uri = url.parse().ok()?;
        let made = Arc::new(Source { url: uri, keys: ArcSwap::default(), refresh: Mutex::default() });
        let mut out = made.clone();
        self.sources.rcu(|m| {
            let mut m = HashMap::clone(m);
            out = m.entry(url.to_owned()).or_insert_with(|| made.clone()).clone();
            m
        });
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_signing_keys_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "use": "sig", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "enc", "crv": "P-256", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "w"},
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect::<Vec<_>>(), ["ec"]);
        assert!(set.find(Some("ec"), Algorithm::ES256).is_some());
        // The key's own alg binds it: the same key does not verify ES384 or an HMAC.
        assert!(set.find(Some("ec"), Algorithm::ES384).is_none());
        assert!(set.find(Some("secret"), Algorithm::HS256).is_none());
        // Without a kid, only a set with one fitting key answers.
        assert!(set.find(None, Algorithm::ES256).is_some());
        assert!(KeySet::parse(b"{\"no\": 1}").is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }
}
