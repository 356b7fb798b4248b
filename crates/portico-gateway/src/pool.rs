//! Upstream targets at run time: which are available (active health checks, a circuit breaker
//! fed by passive failures), how one is chosen (round robin, least requests, consistent hash),
//! and the retry budget. State is keyed by target URL, so it survives snapshot swaps.
//!
//! The breaker: closed → open after `BREAKER_THRESHOLD` failures in a row (no call for
//! `BREAKER_COOLDOWN_MS`) → half-open, where one trial call at a time goes through: its
//! success closes the breaker, its failure opens it again for another cool-down. A trial that
//! never reports (its caller went away) stops blocking others after `PROBE_STALE_MS`.

use portico_core::upstream::{Balance, UpstreamPolicy};
use portico_core::values::UpstreamUrl;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Consecutive failures that open a target's breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_COOLDOWN_MS: u64 = 10_000;
const PROBE_STALE_MS: u64 = 30_000;
/// Each call adds 0.2 retries to the budget (so retries stay ≤ 20% extra load), up to 10.
const BUDGET_PER_CALL: i64 = 200;
const BUDGET_PER_RETRY: i64 = 1000;
const BUDGET_MAX: i64 = 10_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct TargetState {
    pub inflight: AtomicU64,
    /// Set by active health checks; true until a check says otherwise.
    unhealthy: AtomicBool,
    health_streak: AtomicI64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// When the half-open breaker's trial call started (0: none in flight).
    probe_since_ms: AtomicU64,
}

impl TargetState {
    /// Healthy, and its breaker closed, or half-open with no trial call in flight.
    pub fn available(&self) -> bool {
        if self.unhealthy.load(Ordering::Relaxed) {
            return false;
        }
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        if open_until == 0 {
            return true;
        }
        let now = now_ms();
        let probe = self.probe_since_ms.load(Ordering::Relaxed);
        open_until <= now && (probe == 0 || now.saturating_sub(probe) >= PROBE_STALE_MS)
    }

    /// Takes the target for one call: always when its breaker is closed; when half-open, only
    /// as the one trial call (false: another caller holds the trial).
    pub fn admit(&self) -> bool {
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        if open_until == 0 {
            return true;
        }
        let now = now_ms();
        if open_until > now {
            return false;
        }
        let probe = self.probe_since_ms.load(Ordering::Relaxed);
        if probe != 0 && now.saturating_sub(probe) < PROBE_STALE_MS {
            return false;
        }
        self.probe_since_ms.compare_exchange(probe, now.max(1), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Whether the breaker is closed (for metrics and tests).
    pub fn closed(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) == 0
    }

    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 || self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.open_until_ms.store(0, Ordering::Relaxed);
            self.probe_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// A passive failure (connection error, timeout, 502/503/504). Returns true when it opened
    /// the breaker.
    pub fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_THRESHOLD {
            // Opened, or a failed trial re-opens it for another cool-down.
            let was_trial = self.probe_since_ms.swap(0, Ordering::Relaxed) != 0;
            self.open_until_ms.store(now_ms() + BREAKER_COOLDOWN_MS, Ordering::Relaxed);
            return n == BREAKER_THRESHOLD || was_trial;
        }
        false
    }

    /// An active health check's result; flips after `healthy`/`unhealthy` checks in a row.
    pub fn checked(&self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) {
        let streak = self.health_streak.load(Ordering::Relaxed);
        let streak = match (ok, streak >= 0) {
            (true, true) => streak + 1,
            (true, false) => 1,
            (false, true) => -1,
            (false, false) => streak - 1,
        };
        self.health_streak.store(streak, Ordering::Relaxed);
        if ok && streak >= i64::from(healthy_threshold) {
            self.unhealthy.store(false, Ordering::Relaxed);
        } else if !ok && -streak >= i64::from(unhealthy_threshold) {
            self.unhealthy.store(true, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    states: RwLock<foldhash::HashMap<String, Arc<TargetState>>>,
    rr: AtomicUsize,
    budget: AtomicI64,
}

impl Default for Pool {
    fn default() -> Self {
        Pool { states: RwLock::default(), rr: AtomicUsize::new(0), budget: AtomicI64::new(BUDGET_MAX / 2) }
    }
}

/// The `i`-th target of a version: its `upstream_url`, then the policy's extra targets.
pub fn target<'a>(primary: &'a UpstreamUrl, policy: &'a UpstreamPolicy, i: usize) -> &'a UpstreamUrl {
    if i == 0 { primary } else { &policy.targets[i - 1] }
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// What consistent hashing hashes: the configured header's value, else the consumer.
pub fn hash_key(policy: &UpstreamPolicy, headers: &http::HeaderMap, consumer: &str) -> u64 {
    if policy.balance != Balance::ConsistentHash {
        return 0;
    }
    let from_header = policy.hash_header.as_deref().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok());
    hash_of(&[from_header.unwrap_or(consumer)])
}

impl Pool {
    pub fn state(&self, url: &UpstreamUrl) -> Arc<TargetState> {
        if let Some(s) = self.states.read().unwrap_or_else(|p| p.into_inner()).get(url.as_str()) {
            return s.clone();
        }
        self.states.write().unwrap_or_else(|p| p.into_inner()).entry(url.as_str().to_owned()).or_default().clone()
    }

    /// Picks a target among those available, preferring ones not `tried` yet (a bit set).
    pub fn choose(
        &self,
        primary: &UpstreamUrl,
        policy: &UpstreamPolicy,
        hash: u64,
        tried: u64,
    ) -> Option<(usize, Arc<TargetState>)> {
        if policy.targets.is_empty() {
            // One target: no choice to make.
            let state = self.state(primary);
            return (state.available() && state.admit()).then_some((0, state));
        }
        let n = 1 + policy.targets.len();
        let all: Vec<(usize, Arc<TargetState>)> =
            (0..n).map(|i| (i, self.state(target(primary, policy, i)))).filter(|(_, s)| s.available()).collect();
        let fresh: Vec<(usize, Arc<TargetState>)> =
            all.iter().filter(|(i, _)| tried & (1 << i) == 0).cloned().collect();
        let mut candidates = if fresh.is_empty() { all } else { fresh };
        if candidates.is_empty() {
            return None;
        }
        let pick = match policy.balance {
            Balance::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len(),
            Balance::LeastRequests => {
                let offset = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..candidates.len())
                    .map(|k| (k + offset) % candidates.len())
                    .min_by_key(|&k| candidates[k].1.inflight.load(Ordering::Relaxed))
                    .unwrap_or(0)
            }
            // Rendezvous hashing: stable as targets come and go.
            Balance::ConsistentHash => (0..candidates.len())
                .max_by_key(|&k| hash_of(&[&hash.to_string(), target(primary, policy, candidates[k].0).as_str()]))
                .unwrap_or(0),
        };
        let chosen = candidates.swap_remove(pick);
        // A half-open target takes one trial call; if another caller just took it, the next
        // available target serves instead.
        if chosen.1.admit() {
            return Some(chosen);
        }
        candidates.into_iter().find(|(_, s)| s.admit())
    }

    /// Every call adds to the retry budget.
    pub fn deposit(&self) {
        let _ = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + BUDGET_PER_CALL).min(BUDGET_MAX)));
    }

    /// A retry spends from it; none when it is empty.
    pub fn withdraw(&self) -> bool {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= BUDGET_PER_RETRY).then_some(b - BUDGET_PER_RETRY)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(targets: &[&str], balance: Balance) -> (UpstreamUrl, UpstreamPolicy) {
        let primary = UpstreamUrl::parse("http://a:1").unwrap();
        let p = UpstreamPolicy {
            targets: targets.iter().map(|t| UpstreamUrl::parse(t).unwrap()).collect(),
            balance,
            ..Default::default()
        };
        (primary, p)
    }

    #[test]
    fn round_robin_spreads_and_skips_open_breakers() {
        let pool = Pool::default();
        let (primary, p) = policy(&["http://b:1", "http://c:1"], Balance::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| pool.choose(&primary, &p, 0, 0).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
        let b = pool.state(&p.targets[0]);
        for _ in 0..BREAKER_THRESHOLD {
            b.failure();
        }
        assert!(!b.available());
        assert!((0..10).all(|_| pool.choose(&primary, &p, 0, 0).unwrap().0 != 1), "an open breaker takes no calls");
        b.success();
        assert!(b.available());
    }

    #[test]
    fn retries_prefer_an_untried_target() {
        let pool = Pool::default();
        let (primary, p) = policy(&["http://b:1"], Balance::RoundRobin);
        for _ in 0..10 {
            let (first, _) = pool.choose(&primary, &p, 0, 0).unwrap();
            let (second, _) = pool.choose(&primary, &p, 0, 1 << first).unwrap();
            assert_ne!(first, second);
        }
        // With one target, a retry goes to it again.
        let (primary, single) = policy(&[], Balance::RoundRobin);
        assert_eq!(pool.choose(&primary, &single, 0, 1).unwrap().0, 0);
    }

    #[test]
    fn consistent_hash_sticks_and_least_requests_balances() {
        let pool = Pool::default();
        let (primary, p) = policy(&["http://b:1", "http://c:1", "http://d:1"], Balance::ConsistentHash);
        let h = hash_key(&p, &http::HeaderMap::new(), "globex");
        let first = pool.choose(&primary, &p, h, 0).unwrap().0;
        assert!((0..20).all(|_| pool.choose(&primary, &p, h, 0).unwrap().0 == first));
        let spread: std::collections::HashSet<usize> = (0..50)
            .map(|i| pool.choose(&primary, &p, hash_key(&p, &http::HeaderMap::new(), &format!("c{i}")), 0).unwrap().0)
            .collect();
        assert!(spread.len() > 1, "different consumers spread over targets");

        let (primary, p) = policy(&["http://b:1"], Balance::LeastRequests);
        pool.state(&primary).inflight.store(5, Ordering::Relaxed);
        assert!((0..5).all(|_| pool.choose(&primary, &p, 0, 0).unwrap().0 == 1));
    }

    #[test]
    fn health_checks_flip_after_thresholds_and_the_budget_bounds_retries() {
        let s = TargetState::default();
        s.checked(false, 2, 2);
        assert!(s.available());
        s.checked(false, 2, 2);
        assert!(!s.available());
        s.checked(true, 2, 2);
        assert!(!s.available());
        s.checked(true, 2, 2);
        assert!(s.available());

        let pool = Pool::default();
        let mut retries = 0;
        for _ in 0..100 {
            pool.deposit();
            while pool.withdraw() {
                retries += 1;
            }
        }
        assert!(retries <= 100 * BUDGET_PER_CALL / BUDGET_PER_RETRY + BUDGET_MAX / 2 / BUDGET_PER_RETRY, "{retries}");
    }
}

#[cfg(test)]
mod breaker {
    use super::*;

    #[test]
    fn open_then_half_open_with_one_trial_then_closed_or_open_again() {
        let s = TargetState::default();
        assert!(s.closed() && s.available() && s.admit() && s.admit(), "closed: every call");
        for _ in 0..BREAKER_THRESHOLD {
            s.failure();
        }
        assert!(!s.closed() && !s.available(), "open during the cool-down");
        // The cool-down ends: half-open, one trial at a time.
        s.open_until_ms.store(now_ms() - 1, Ordering::Relaxed);
        assert!(s.available() && s.admit(), "the trial call goes through");
        assert!(!s.available() && !s.admit(), "only one trial at a time");
        // The trial fails: open again for a whole cool-down.
        s.failure();
        assert!(!s.available() && !s.admit());
        assert!(s.open_until_ms.load(Ordering::Relaxed) > now_ms() + BREAKER_COOLDOWN_MS / 2);
        // Next cool-down over, the trial succeeds: closed.
        s.open_until_ms.store(now_ms() - 1, Ordering::Relaxed);
        assert!(s.admit());
        s.success();
        assert!(s.closed() && s.admit() && s.admit() && s.available());
        // A trial whose caller went away stops blocking once stale.
        for _ in 0..BREAKER_THRESHOLD {
            s.failure();
        }
        s.open_until_ms.store(now_ms() - 1, Ordering::Relaxed);
        assert!(s.admit() && !s.admit());
        s.probe_since_ms.store(now_ms() - PROBE_STALE_MS - 1, Ordering::Relaxed);
        assert!(s.available() && s.admit());
    }
}
