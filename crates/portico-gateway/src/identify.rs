//! Who is calling: the API key from `X-Api-Key` or `Authorization: Bearer`, checked for format
//! and checksum before any lookup, then one HMAC and one lookup in the snapshot.

use http::HeaderMap;
use portico_core::api_key::{ApiKey, Pepper};
use portico_core::snapshot::{KeyGrant, Snapshot};

#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    /// A key-shaped value, from `X-Api-Key` or a bearer.
    Key {
        value: &'a str,
        from_authorization: bool,
    },
    /// A bearer that is not a key: an access token (JWT).
    Token(&'a str),
}

static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

pub fn credential(headers: &HeaderMap) -> Credential<'_> {
    if let Some(v) = headers.get(&X_API_KEY) {
        return Credential::Key { value: v.to_str().unwrap_or_default().trim(), from_authorization: false };
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let bearer = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim);
        return match bearer {
            Some(b) if ApiKey::looks_like_key(b) => Credential::Key { value: b, from_authorization: true },
            Some(t) => Credential::Token(t),
            None => Credential::None,
        };
    }
    Credential::None
}

#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Bad format or checksum: refused without a lookup.
    Malformed,
    Unknown,
}

pub fn lookup<'s>(snapshot: &'s Snapshot, pepper: &Pepper, value: &str) -> Result<&'s KeyGrant, KeyError> {
    let key = ApiKey::parse(value).map_err(|_| KeyError::Malformed)?;
    let hash = key.hash(pepper);
    if let Some(grant) = snapshot.keys.get(&hash)
        && grant.hash.ct_eq(&hash)
    {
        return Ok(grant);
    }
    // Made before a pepper rotation: found under a previous pepper, and re-hashed under the
    // current one by the control plane's next batch.
    for old in key.previous_hashes(pepper) {
        if let Some(grant) = snapshot.keys.get(&old)
            && grant.hash.ct_eq(&old)
        {
            let _ = grant.rehash.set(hash);
            return Ok(grant);
        }
    }
    Err(KeyError::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_credentials_come_from() {
        let key = ApiKey::generate();
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), Credential::None);
        h.insert("authorization", format!("Bearer {}", key.expose_secret()).parse().unwrap());
        assert_eq!(credential(&h), Credential::Key { value: key.expose_secret(), from_authorization: true });
        h.insert("authorization", "Bearer eyJhbGciOi.x.y".parse().unwrap());
        assert_eq!(credential(&h), Credential::Token("eyJhbGciOi.x.y"));
        h.insert("x-api-key", "ptc_x".parse().unwrap());
        assert_eq!(credential(&h), Credential::Key { value: "ptc_x", from_authorization: false });
    }

    #[test]
    fn malformed_keys_are_refused_before_lookup() {
        let s = Snapshot::default();
        let p = Pepper::generate();
        assert_eq!(lookup(&s, &p, "ptc_nope").unwrap_err(), KeyError::Malformed);
        assert_eq!(lookup(&s, &p, ApiKey::generate().expose_secret()).unwrap_err(), KeyError::Unknown);
    }
}
