//! Access tokens of an external issuer (an API version's `policies.token_issuers`), checked
//! against the issuer's published keys: the rules, without any I/O. The gateway keeps the keys
//! in memory and fetches them ([`KeySet::parse`] on what it fetched); the control plane checks
//! the token a consumer proves a client with the same way.
//!
//! 1. [`check_header`]: the algorithm is in the issuer's allowlist (never `HS*` or `none`,
//!    which the policy refuses), the `typ` is an access token's or absent.
//! 2. [`KeySet::find`]: the key by `kid` (and its own `alg`, when the JWK names one).
//! 3. [`verify`]: signature, `exp`, `iss` and `aud` required (30 s leeway), `nbf` when present,
//!    and the issuer's client claim.

use crate::policy::TokenIssuer;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, errors::ErrorKind};

/// The most keys kept from one JWKS.
pub const MAX_KEYS: usize = 64;

/// One verification key of an issuer.
pub struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the key verifies only that algorithm.
    alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// The signing keys of one JWKS document.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Keys of a JWKS document: signing keys of the asymmetric kinds only (an `oct` key — a
    /// shared secret — or an encryption key never verifies a token); a key that cannot be read
    /// is skipped, not fatal for the others; at most [`MAX_KEYS`].
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|_| "the JWKS is not a JSON key set".to_owned())?;
        let mut keys = Vec::new();
        for v in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else { continue };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
                continue;
            }
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
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
            if keys.len() == MAX_KEYS {
                break;
            }
        }
        Ok(KeySet { keys })
    }

    /// The key for a token's `kid` and `alg`. A token without a `kid` is verified only when the
    /// set has exactly one key that fits the algorithm.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        self.position(kid, alg).map(|i| &self.keys[i])
    }

    /// [`KeySet::find`]'s key, as its index (for a cache that hands out the set and the index).
    pub fn position(&self, kid: Option<&str>, alg: Algorithm) -> Option<usize> {
        let mut fitting = self.keys.iter().enumerate().filter(|(_, k)| k.alg.is_none_or(|a| a == alg));
        match kid {
            Some(kid) => fitting.find(|(_, k)| k.kid.as_deref() == Some(kid)).map(|(i, _)| i),
            None => {
                let (one, _) = fitting.next()?;
                fitting.next().is_none().then_some(one)
            }
        }
    }

    pub fn get(&self, i: usize) -> &Key {
        &self.keys[i]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The token's header, if the issuer accepts its algorithm and type. The error is the 401's
/// detail.
pub fn check_header(issuer: &TokenIssuer, token: &str) -> Result<Header, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "the access token is not a valid JWT".to_owned())?;
    if !issuer.algorithms.iter().any(|a| a.parse::<Algorithm>().ok() == Some(header.alg)) {
        return Err(format!(
            "the access token is signed with {:?}; this API accepts {} from its issuer",
            header.alg,
            issuer.algorithms.join(", ")
        ));
    }
    if let Some(typ) = header.typ.as_deref()
        && !["jwt", "at+jwt", "application/at+jwt"].iter().any(|t| typ.eq_ignore_ascii_case(t))
    {
        return Err("that is not an access token (its typ says otherwise)".to_owned());
    }
    Ok(header)
}

/// Verifies the token with `key` and returns its client (the issuer's `client_claim`).
pub fn verify(issuer: &TokenIssuer, alg: Algorithm, key: &DecodingKey, token: &str) -> Result<String, String> {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer.issuer.as_str()]);
    v.set_audience(&[issuer.audience.as_str()]);
    v.required_spec_claims = ["exp", "iss", "aud"].into_iter().map(String::from).collect();
    v.validate_nbf = true;
    v.leeway = 30;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v).map_err(|e| {
        match e.kind() {
            ErrorKind::ExpiredSignature => "the access token has expired; get a new one from its issuer",
            ErrorKind::ImmatureSignature => "the access token is not valid yet",
            ErrorKind::InvalidIssuer => "the access token was issued by someone else",
            ErrorKind::InvalidAudience => "the access token is meant for another audience",
            ErrorKind::InvalidSignature => "the access token's signature does not verify",
            ErrorKind::InvalidAlgorithm => "the access token's algorithm does not fit its key",
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                "the access token lacks a required claim or has one in the wrong format"
            }
            _ => "the access token is invalid",
        }
        .to_owned()
    })?;
    match data.claims.get(&issuer.client_claim).and_then(|c| c.as_str()) {
        Some(c) if !c.is_empty() && c.len() <= 256 => Ok(c.to_owned()),
        _ => Err(format!("the access token has no `{}` claim naming its client", issuer.client_claim)),
    }
}

/// The `iss` of a token, read without verifying it: only to pick which issuer's keys verify it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token).ok().map(|c| c.iss)
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
