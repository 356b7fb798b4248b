//! Sign-in throttling (OWASP ASVS 5.0 §6.3): failed sign-ins are counted per account and per
//! client address in a fixed window; past the limit, sign-in answers 429 with `Retry-After`
//! until the window ends, even with the right password. A success clears the account's count.
//! In memory, per process: a scaled-out deployment throttles per replica.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins per account in one window.
pub const PER_ACCOUNT: u32 = 5;
/// Failed sign-ins per client address in one window (several people may share an address).
pub const PER_ADDRESS: u32 = 30;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
pub struct LoginThrottle {
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

/// At most this many counters are kept; past it, expired ones go, then (under a flood) all.
const MAX_ENTRIES: usize = 100_000;

/// The account key: a digest of the trimmed, lower-cased address, so spelling variants share
/// one budget and a huge input costs a fixed 32 bytes.
fn account_key(account: &str) -> String {
    use sha2::{Digest, Sha256};
    let norm = account.trim().to_lowercase();
    format!("a:{}", hex::encode(&Sha256::digest(norm.as_bytes())[..16]))
}

/// The address key: IPv4 as is, IPv6 by its /64 (one host usually owns a whole /64).
fn address_key(ip: IpAddr) -> String {
    match portico_core::policy::canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("i:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        v4 => format!("i:{v4}"),
    }
}

fn keys(account: &str, ip: Option<IpAddr>) -> [(Option<String>, u32); 2] {
    [(Some(account_key(account)), PER_ACCOUNT), (ip.map(address_key), PER_ADDRESS)]
}

impl LoginThrottle {
    /// Counts an attempt for the account and the address, up front (so that parallel guesses
    /// cannot all slip past a check made before the slow password hash), or `Err(seconds to
    /// wait)` when either has used its budget. A success gives the attempt back
    /// ([`LoginThrottle::succeeded`]).
    pub fn attempt(&self, account: &str, ip: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let ks = keys(account, ip);
        for (key, limit) in &ks {
            if let Some((start, n)) = key.as_ref().and_then(|k| counts.get(k).copied())
                && now.duration_since(start) < WINDOW
                && n >= *limit
            {
                return Err((WINDOW - now.duration_since(start)).as_secs().max(1));
            }
        }
        if counts.len() >= MAX_ENTRIES {
            counts.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if counts.len() >= MAX_ENTRIES {
                tracing::warn!("sign-in throttle table full: starting afresh");
                counts.clear();
            }
        }
        for (key, _) in ks {
            if let Some(k) = key {
                let e = counts.entry(k).or_insert((now, 0));
                if now.duration_since(e.0) >= WINDOW {
                    *e = (now, 0);
                }
                e.1 += 1;
            }
        }
        Ok(())
    }

    /// The attempt was right: the account's count is cleared, the address's attempt given back.
    pub fn succeeded(&self, account: &str, ip: Option<IpAddr>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.remove(&account_key(account));
        if let Some(k) = ip.map(address_key)
            && let Some(e) = counts.get_mut(&k)
        {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_throttled_after_five_failures_and_a_success_clears_it() {
        let t = LoginThrottle::default();
        let ip: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        for _ in 0..PER_ACCOUNT {
            assert!(t.attempt("Ada@x.example", ip).is_ok());
        }
        let wait = t.attempt(" ADA@x.example\t", None).unwrap_err();
        assert!(wait > 800 && wait <= 900, "{wait}: spelling variants share the budget");
        assert!(t.attempt("bob@x.example", ip).is_ok(), "another account from the same address");
        t.succeeded("ada@x.example", ip);
        assert!(t.attempt("ada@x.example", ip).is_ok());
    }

    #[test]
    fn an_address_is_throttled_across_accounts() {
        let t = LoginThrottle::default();
        let ip: Option<IpAddr> = Some("192.0.2.9".parse().unwrap());
        for i in 0..PER_ADDRESS {
            assert!(t.attempt(&format!("user{i}@x.example"), ip).is_ok());
        }
        assert!(t.attempt("someone-new@x.example", ip).is_err());
        assert!(t.attempt("someone-new@x.example", Some("192.0.2.10".parse().unwrap())).is_ok());
        // One IPv6 /64 is one address.
        let t = LoginThrottle::default();
        for i in 0..PER_ADDRESS {
            let ip: IpAddr = format!("2001:db8::{:x}", i + 1).parse().unwrap();
            assert!(t.attempt(&format!("v6-{i}@x.example"), Some(ip)).is_ok());
        }
        assert!(t.attempt("v6-new@x.example", Some("2001:db8::ffff".parse().unwrap())).is_err());
    }
}
