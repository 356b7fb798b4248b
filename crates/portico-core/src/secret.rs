//! Secrets at rest: AES-256-GCM under a master key that never enters the database. A stored
//! secret reads `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`; the key id picks the key
//! from the [`Keyring`], so the master key can be rotated: new secrets are sealed with the
//! first key, old ones still open with the others until they are sealed again.
//!
//! A value without the `enc:v1:` prefix is a secret stored before encryption existed: it is
//! returned as it is and sealed on its next write.

use crate::{Error, Result};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// The master keys, newest first.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys, sealing with {})", self.keys.len(), self.keys.first().map_or("-", |k| k.0.as_str()))
    }
}

/// A key's id: the first 8 hex digits of its SHA-256 (it reveals nothing about the key).
pub fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

/// A key written as 64 hex digits or 44 base64 characters.
pub fn parse_key(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    };
    bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
        Error::invalid("master_key", "a master key is 32 bytes, written as 64 hex digits or in base64".to_owned())
    })
}

impl Keyring {
    /// `keys`: newest (the one that seals) first; at least one.
    pub fn new(keys: Vec<[u8; 32]>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::invalid("master_key", "at least one master key is needed".to_owned()));
        }
        Ok(Keyring { keys: keys.into_iter().map(|k| (key_id(&k), k)).collect() })
    }

    pub fn generate_key() -> [u8; 32] {
        rand::random()
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        &self.keys[0].0
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let (kid, key) = &self.keys[0];
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        let nonce: [u8; 12] = rand::random();
        let sealed =
            cipher.encrypt(&Nonce::from(nonce), plaintext.as_bytes()).expect("AES-GCM seals any message this size");
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{kid}:{}", B64.encode(out))
    }

    /// Opens a sealed value (or passes an unsealed one through).
    pub fn open(&self, stored: &str) -> Result<String> {
        let Some(rest) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_owned()) };
        let bad = |m: &str| Error::invalid("secret", m.to_owned());
        let (kid, body) = rest.split_once(':').ok_or_else(|| bad("a sealed secret is damaged"))?;
        let key = self.keys.iter().find(|(k, _)| k == kid).map(|(_, k)| k).ok_or_else(|| {
            bad("a secret was sealed with a master key this process does not have (set the previous key too)")
        })?;
        let raw = B64.decode(body).map_err(|_| bad("a sealed secret is damaged"))?;
        if raw.len() < 12 + 16 {
            return Err(bad("a sealed secret is damaged"));
        }
        let nonce: [u8; 12] = raw[..12].try_into().map_err(|_| bad("a sealed secret is damaged"))?;
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        let plain = cipher
            .decrypt(&Nonce::from(nonce), &raw[12..])
            .map_err(|_| bad("a sealed secret does not open with its master key (damaged, or the key is wrong)"))?;
        String::from_utf8(plain).map_err(|_| bad("a sealed secret is not text"))
    }

    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Whether a value is sealed with the current key (rotation re-seals the rest).
    pub fn is_current(&self, stored: &str) -> bool {
        stored.strip_prefix(PREFIX).and_then(|r| r.split_once(':')).is_some_and(|(kid, _)| kid == self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_rotate() {
        let (old, new) = (Keyring::generate_key(), Keyring::generate_key());
        let ring = Keyring::new(vec![old]).unwrap();
        let sealed = ring.seal("provider-secret");
        assert!(Keyring::is_sealed(&sealed) && !sealed.contains("provider-secret"));
        assert_ne!(ring.seal("provider-secret"), sealed, "a fresh nonce each time");
        assert_eq!(ring.open(&sealed).unwrap(), "provider-secret");
        assert_eq!(ring.open("legacy plaintext").unwrap(), "legacy plaintext");

        let rotated = Keyring::new(vec![new, old]).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), "provider-secret", "old secrets still open");
        assert!(!rotated.is_current(&sealed) && rotated.is_current(&rotated.seal("x")));
        let only_new = Keyring::new(vec![new]).unwrap();
        assert!(only_new.open(&sealed).unwrap_err().to_string().contains("does not have"));

        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.open(&tampered).is_err(), "GCM detects tampering");
        assert!(ring.open("enc:v1:zz").is_err());
        assert_eq!(parse_key(&hex::encode(old)).unwrap(), old);
        assert_eq!(parse_key(&base64::engine::general_purpose::STANDARD.encode(old)).unwrap(), old);
        assert!(parse_key("short").is_err());
    }
}
