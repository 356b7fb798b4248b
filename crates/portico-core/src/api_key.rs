//! API keys: scannable secrets, hashed at rest.
//!
//! A key looks like `ptc_` + 22 base62 characters of randomness (≥ 130 bits) + 6 base62
//! characters of CRC32 checksum over everything before it, 32 characters in all. Secret
//! scanners can match it with
//!
//! ```text
//! \bptc_[0-9A-Za-z]{28}\b
//! ```
//!
//! and verify the checksum offline, as with GitHub's tokens. A key with a bad checksum is
//! refused before any lookup. Portico stores only `HMAC-SHA256(pepper, key)`; the pepper is a
//! server secret, so a stolen database does not let anyone test guesses offline.

use crate::{Error, Result};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "ptc_";
const RANDOM_LEN: usize = 22;
const CHECK_LEN: usize = 6;
/// Total length of a key, prefix included.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;
/// The regular expression documented for secret scanners.
pub const SCANNER_REGEX: &str = r"\bptc_[0-9A-Za-z]{28}\b";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A well-formed API key (format and checksum verified). Its `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut s = String::with_capacity(KEY_LEN);
        s.push_str(PREFIX);
        for _ in 0..RANDOM_LEN {
            s.push(ALPHABET[rand::random_range(0..62usize)] as char);
        }
        let check = crc32fast::hash(s.as_bytes());
        s.push_str(&base62_fixed(check));
        ApiKey(s)
    }

    /// Checks the format and the checksum; cheap, constant work, no lookup.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("api_key", why.to_owned());
        if s.len() != KEY_LEN || !s.starts_with(PREFIX) {
            return Err(bad("not a Portico API key (they look like ptc_ followed by 28 letters and digits)"));
        }
        if !s.as_bytes()[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
            return Err(bad("not a Portico API key (it has characters other than letters and digits)"));
        }
        let (body, check) = s.split_at(KEY_LEN - CHECK_LEN);
        if base62_fixed(crc32fast::hash(body.as_bytes())) != check {
            return Err(bad("the API key's checksum does not match: it was mistyped or truncated"));
        }
        Ok(ApiKey(s.to_owned()))
    }

    /// Whether a string has the shape of a key (prefix and length), without the checksum:
    /// the gateway uses it to tell a key in `Authorization: Bearer` from a token.
    pub fn looks_like_key(s: &str) -> bool {
        s.len() == KEY_LEN && s.starts_with(PREFIX)
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// What lists show instead of the key: its first 8 characters (`ptc_` + 4).
    pub fn display_prefix(&self) -> String {
        self.0[..PREFIX.len() + 4].to_owned()
    }

    /// What lists show instead of the key: its last 4 characters.
    pub fn last4(&self) -> String {
        self.0[KEY_LEN - 4..].to_owned()
    }

    /// The key's hash under the current pepper: what a new key is stored as.
    pub fn hash(&self, pepper: &Pepper) -> KeyHash {
        pepper.hash_current(self.0.as_bytes())
    }

    /// The key's hashes under the previous peppers, newest first: a key made before a
    /// rotation is found by one of these, then re-hashed under the current pepper.
    pub fn previous_hashes<'p>(&'p self, pepper: &'p Pepper) -> impl Iterator<Item = KeyHash> + 'p {
        pepper.previous.iter().map(|p| hmac(p, self.0.as_bytes()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", &self.0[..PREFIX.len() + 4])
    }
}

fn base62_fixed(mut n: u32) -> String {
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn keyed(key: &[u8; 32]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any size")
}

fn hmac(key: &[u8; 32], data: &[u8]) -> KeyHash {
    finish(keyed(key), data)
}

fn finish(mut mac: Hmac<Sha256>, data: &[u8]) -> KeyHash {
    mac.update(data);
    KeyHash(mac.finalize().into_bytes().into())
}

/// The server secret that keys are hashed under (32 bytes), and the previous ones after a
/// rotation: new keys and secrets are hashed under the current one; those made before the
/// rotation are still recognised under a previous one until they are re-hashed.
#[derive(Clone)]
pub struct Pepper {
    current: [u8; 32],
    /// The HMAC state keyed with `current` (its inner and outer pads hashed once, not on every
    /// call's key lookup: two of the four SHA-256 blocks of a key's hash).
    keyed: Hmac<Sha256>,
    previous: std::sync::Arc<[[u8; 32]]>,
}

impl Pepper {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Pepper { current: b, keyed: keyed(&b), previous: std::sync::Arc::new([]) }
    }
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        Pepper::from_bytes(b)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self> {
        let v =
            hex::decode(s.trim()).map_err(|_| Error::invalid("pepper", "the key pepper must be 64 hex characters"))?;
        let b: [u8; 32] = v
            .try_into()
            .map_err(|_| Error::invalid("pepper", "the key pepper must be 64 hex characters (32 bytes)"))?;
        Ok(Pepper::from_bytes(b))
    }
    /// The current pepper as 64 hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.current)
    }
    /// This pepper, still recognising what `previous` (newest first) hashed.
    pub fn with_previous(self, previous: impl IntoIterator<Item = Pepper>) -> Self {
        let previous: Vec<[u8; 32]> = previous.into_iter().map(|p| p.current).filter(|p| *p != self.current).collect();
        Pepper { previous: previous.into(), ..self }
    }
    /// How many previous peppers are still recognised.
    pub fn previous_count(&self) -> usize {
        self.previous.len()
    }
    /// The current pepper's id: 8 hex digits of a SHA-256 over it, which reveal nothing about
    /// it. The store notes it beside each hash, so an operator can tell when no key is left
    /// under a previous pepper.
    pub fn id(&self) -> String {
        use sha2::Digest;
        hex::encode(&Sha256::new().chain_update(b"portico key pepper\0").chain_update(self.current).finalize()[..4])
    }

    /// `HMAC-SHA256(pepper, secret)`: how other random secrets (OAuth client secrets) are kept.
    pub fn mac(&self, secret: &str) -> KeyHash {
        self.hash_current(secret.as_bytes())
    }

    fn hash_current(&self, data: &[u8]) -> KeyHash {
        finish(self.keyed.clone(), data)
    }
    /// [`Pepper::mac`] under each previous pepper, newest first.
    pub fn previous_macs<'p>(&'p self, secret: &'p str) -> impl Iterator<Item = KeyHash> + 'p {
        self.previous.iter().map(|p| hmac(p, secret.as_bytes()))
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(***)")
    }
}

/// `HMAC-SHA256(pepper, key)`: what the store keeps and the gateway looks keys up by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

/// Hashed by its first 8 bytes: an HMAC's output is uniform already, and a lookup (one per
/// call) then hashes 8 bytes instead of 32.
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

impl KeyHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Result<Self> {
        let v = hex::decode(s).map_err(|_| Error::invalid("key_hash", "not hex"))?;
        let b: [u8; 32] = v.try_into().map_err(|_| Error::invalid("key_hash", "not 32 bytes"))?;
        Ok(KeyHash(b))
    }
    /// Constant-time equality, for the final check after a lookup.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        let k = ApiKey::generate();
        assert_eq!(k.expose_secret().len(), KEY_LEN);
        assert!(ApiKey::parse(k.expose_secret()).is_ok());
        assert!(ApiKey::looks_like_key(k.expose_secret()));
        let p = Pepper::generate();
        assert_eq!(k.hash(&p), k.hash(&p));
        assert!(k.hash(&p).ct_eq(&k.hash(&p)));
        assert_ne!(k.hash(&p), k.hash(&Pepper::generate()));
        assert!(!format!("{k:?}").contains(&k.expose_secret()[8..]));
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let k = ApiKey::generate();
        let s = k.expose_secret();
        for i in PREFIX.len()..KEY_LEN {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(b).unwrap();
            assert!(ApiKey::parse(&changed).is_err(), "position {i}");
        }
    }

    #[test]
    fn the_kept_keyed_state_hashes_as_a_fresh_hmac() {
        let p = Pepper::generate();
        let k = ApiKey::generate();
        let fresh = hmac(&p.current, k.expose_secret().as_bytes());
        assert_eq!(k.hash(&p), fresh);
        assert_eq!(k.hash(&p), k.hash(&p), "the kept state is not consumed");
        assert_eq!(p.mac("a client secret"), hmac(&p.current, b"a client secret"));
        let rotated = Pepper::generate().with_previous([p.clone()]);
        assert_eq!(k.hash(&rotated), hmac(&rotated.current, k.expose_secret().as_bytes()));
    }

    #[test]
    fn pepper_hex_round_trips() {
        let p = Pepper::generate();
        assert_eq!(Pepper::from_hex(&p.to_hex()).unwrap().to_hex(), p.to_hex());
        assert!(Pepper::from_hex("abcd").is_err());
    }

    #[test]
    fn a_rotated_pepper_still_recognises_what_the_previous_one_hashed() {
        let (old, new) = (Pepper::generate(), Pepper::generate());
        let key = ApiKey::generate();
        let stored = key.hash(&old);
        let rotated = new.clone().with_previous([old.clone(), new.clone()]);
        assert_eq!(rotated.previous_count(), 1, "the current pepper is not its own previous");
        assert_ne!(key.hash(&rotated), stored);
        assert_eq!(key.hash(&rotated), key.hash(&new));
        assert_eq!(key.previous_hashes(&rotated).collect::<Vec<_>>(), [stored]);
        assert_eq!(rotated.previous_macs("s").collect::<Vec<_>>(), [old.mac("s")]);
        assert_eq!(rotated.id(), new.id());
        assert_ne!(old.id(), new.id());
        assert_eq!(key.previous_hashes(&old).count(), 0);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,64}") {
            let _ = ApiKey::parse(&s);
        }

        #[test]
        fn any_body_with_its_checksum_parses(body in "[0-9A-Za-z]{28}") {
            let s = format!("ptc_{body}");
            let fixed = {
                let b = &s[..KEY_LEN - CHECK_LEN];
                format!("{b}{}", base62_fixed(crc32fast::hash(b.as_bytes())))
            };
            prop_assert!(ApiKey::parse(&fixed).is_ok());
        }
    }
}
