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

fn keys(account: &str, ip: Option<IpAddr>) -> [(Option<String>, u32); 2] {
    [(Some(format!("a:{}", account.to_ascii_lowercase())), PER_ACCOUNT), (ip.map(|ip| format!("i:{ip}")), PER_ADDRESS)]
}

impl LoginThrottle {
    /// `Err(seconds to wait)` when the account or the address has failed too often.
    pub fn check(&self, account: &str, ip: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (key, limit) in keys(account, ip) {
            if let Some((start, n)) = key.and_then(|k| counts.get(&k).copied())
                && now.duration_since(start) < WINDOW
                && n >= limit
            {
                return Err((WINDOW - now.duration_since(start)).as_secs().max(1));
            }
        }
        Ok(())
    }

    pub fn failed(&self, account: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > 100_000 {
            counts.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        for (key, _) in keys(account, ip) {
            if let Some(k) = key {
                let e = counts.entry(k).or_insert((now, 0));
                if now.duration_since(e.0) >= WINDOW {
                    *e = (now, 0);
                }
                e.1 += 1;
            }
        }
    }

    pub fn succeeded(&self, account: &str) {
        let key = format!("a:{}", account.to_ascii_lowercase());
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
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
            assert!(t.check("Ada@x.example", ip).is_ok());
            t.failed("ada@x.example", ip);
        }
        let wait = t.check("ADA@x.example", None).unwrap_err();
        assert!(wait > 800 && wait <= 900, "{wait}");
        assert!(t.check("bob@x.example", ip).is_ok(), "another account from the same address");
        t.succeeded("ada@x.example");
        assert!(t.check("ada@x.example", ip).is_ok());
    }

    #[test]
    fn an_address_is_throttled_across_accounts() {
        let t = LoginThrottle::default();
        let ip: Option<IpAddr> = Some("192.0.2.9".parse().unwrap());
        for i in 0..PER_ADDRESS {
            t.failed(&format!("user{i}@x.example"), ip);
        }
        assert!(t.check("someone-new@x.example", ip).is_err());
        assert!(t.check("someone-new@x.example", Some("192.0.2.10".parse().unwrap())).is_ok());
    }
}
