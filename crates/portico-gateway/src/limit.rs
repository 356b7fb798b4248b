//! Per-subscription limits: a GCRA rate limit (governor) and a calendar-month quota. In one
//! process, exact and lock-light: the maps are read-locked on the common path and never held
//! across an await. The scale-out issue puts a Redis implementation behind the same type.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use portico_core::ids::SubscriptionId;
use portico_core::snapshot::SubscriptionGrant;
use portico_core::values::RateLimit;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// What is left after an admitted call, for the `RateLimit` headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// (limit, calls left now, seconds until the budget is full again)
    pub rate: Option<(RateLimit, u32, u64)>,
    /// (quota, calls left this month, seconds until the month ends)
    pub quota: Option<(u64, u64, u64)>,
}

/// Why a call was refused, with how long to wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    RateLimited { retry_after: Duration, limit: RateLimit },
    QuotaExhausted { retry_after: Duration, quota: u64 },
}

#[derive(Default)]
pub struct Limiter {
    rates: RwLock<HashMap<SubscriptionId, (RateLimit, Arc<Gcra>)>>,
    /// subscription → (month index, calls counted in it)
    quotas: Mutex<HashMap<SubscriptionId, (i32, u64)>>,
}

fn quota_of(r: RateLimit) -> Quota {
    let n = NonZeroU32::new(r.requests()).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs(r.per().seconds()) / n.get();
    Quota::with_period(period.max(Duration::from_nanos(1))).unwrap_or_else(|| Quota::per_second(n)).allow_burst(n)
}

/// Months since year 0, and the seconds until the next month starts (UTC).
fn month_now() -> (i32, u64) {
    let now = time::OffsetDateTime::now_utc();
    let idx = now.year() * 12 + i32::from(u8::from(now.month())) - 1;
    let (y, m) = if now.month() == time::Month::December {
        (now.year() + 1, time::Month::January)
    } else {
        (now.year(), now.month().next())
    };
    let next = time::Date::from_calendar_date(y, m, 1).map(|d| d.midnight().assume_utc());
    let secs = next.map(|n| (n - now).whole_seconds().max(1) as u64).unwrap_or(3600);
    (idx, secs)
}

impl Limiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn rate_limiter(&self, sub: SubscriptionId, limit: RateLimit) -> Arc<Gcra> {
        if let Some((l, rl)) = self.rates.read().unwrap_or_else(|p| p.into_inner()).get(&sub)
            && *l == limit
        {
            return rl.clone();
        }
        let mut w = self.rates.write().unwrap_or_else(|p| p.into_inner());
        match w.get(&sub) {
            Some((l, rl)) if *l == limit => rl.clone(),
            _ => {
                // New subscription, or its plan's limit changed: start afresh with the new limit.
                let rl = Arc::new(RateLimiter::direct(quota_of(limit)).with_middleware::<StateInformationMiddleware>());
                w.insert(sub, (limit, rl.clone()));
                rl
            }
        }
    }

    /// Admits one call costing `units` (an operation's weight, at least 1) for `grant`, or
    /// says why not. A refused call takes nothing from either budget.
    pub fn check(&self, grant: &SubscriptionGrant, units: u32) -> Result<Admitted, Refusal> {
        let units = NonZeroU32::new(units).unwrap_or(NonZeroU32::MIN);
        let mut admitted = Admitted::default();
        // The quota is looked at first so that a call refused by it does not spend rate budget.
        let (month, until_next) = month_now();
        // The store's count seeds a counter this process has not seen, for the month it was taken in.
        let seed = if grant.quota_month == month { grant.quota_used } else { 0 };
        if let Some(quota) = grant.monthly_quota {
            let q = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
            let used = match q.get(&grant.subscription_id) {
                Some((m, used)) if *m == month => *used,
                Some(_) => 0,
                None => seed,
            };
            if used + u64::from(units.get()) > quota {
                return Err(Refusal::QuotaExhausted { retry_after: Duration::from_secs(until_next), quota });
            }
        }
        if let Some(limit) = grant.rate_limit {
            let rl = self.rate_limiter(grant.subscription_id, limit);
            match rl.check_n(units) {
                Ok(Ok(state)) => {
                    let left = state.remaining_burst_capacity();
                    let per_call = Duration::from_secs(limit.per().seconds()) / limit.requests().max(1);
                    let refill = per_call * limit.requests().saturating_sub(left);
                    admitted.rate = Some((limit, left, refill.as_millis().div_ceil(1000) as u64));
                }
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(rl.clock().now());
                    return Err(Refusal::RateLimited { retry_after: wait, limit });
                }
                Err(_) => {
                    // The operation costs more units than the plan's whole burst.
                    let wait = Duration::from_secs(limit.per().seconds());
                    return Err(Refusal::RateLimited { retry_after: wait, limit });
                }
            }
        }
        if let Some(quota) = grant.monthly_quota {
            let mut q = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
            // A subscription first seen by this process starts from what the store had counted.
            let entry = q.entry(grant.subscription_id).or_insert((month, seed));
            if entry.0 != month {
                *entry = (month, 0);
            }
            let after = entry.1 + u64::from(units.get());
            if after > quota {
                return Err(Refusal::QuotaExhausted { retry_after: Duration::from_secs(until_next), quota });
            }
            entry.1 = after;
            admitted.quota = Some((quota, quota - entry.1, until_next));
        }
        Ok(admitted)
    }
}

/// Whole seconds to wait, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::ids::PlanId;
    use portico_core::values::{Period, Slug};

    fn grant(rate: Option<RateLimit>, quota: Option<u64>) -> SubscriptionGrant {
        SubscriptionGrant {
            subscription_id: SubscriptionId::new(),
            plan_id: PlanId::new(),
            plan_slug: Slug::parse("free").unwrap(),
            rate_limit: rate,
            monthly_quota: quota,
            quota_used: 0,
            quota_month: month_now().0,
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_refuses_with_a_wait() {
        let l = Limiter::new();
        let g = grant(Some(RateLimit::new(3, Period::Minute).unwrap()), None);
        let lefts: Vec<u32> = (0..3).map(|_| l.check(&g, 1).unwrap().rate.unwrap().1).collect();
        assert_eq!(lefts, [2, 1, 0]);
        match l.check(&g, 1) {
            Err(Refusal::RateLimited { retry_after, .. }) => {
                assert!(
                    retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20),
                    "{retry_after:?}"
                );
                assert!(retry_after_secs(retry_after) >= 1);
            }
            other => panic!("{other:?}"),
        }
        // Another subscription has its own budget.
        let g2 = grant(g.rate_limit, None);
        assert!(l.check(&g2, 1).is_ok());
    }

    #[test]
    fn weighted_operations_spend_several_units() {
        let l = Limiter::new();
        let g = grant(Some(RateLimit::new(10, Period::Minute).unwrap()), Some(12));
        assert_eq!(l.check(&g, 4).unwrap().rate.unwrap().1, 6);
        assert_eq!(l.check(&g, 4).unwrap().quota.unwrap().1, 4);
        assert!(matches!(l.check(&g, 4), Err(Refusal::RateLimited { .. })), "2 rate units left");
        assert_eq!(l.check(&g, 2).unwrap().quota.unwrap().1, 2);
        assert!(matches!(l.check(&g, 3), Err(Refusal::QuotaExhausted { .. })));
        assert!(matches!(l.check(&grant(g.rate_limit, None), 11), Err(Refusal::RateLimited { .. })), "above the burst");
    }

    #[test]
    fn last_months_count_does_not_seed_this_month() {
        let l = Limiter::new();
        let mut g = grant(Some(RateLimit::new(10, Period::Minute).unwrap()), Some(10));
        g.quota_used = 10;
        g.quota_month -= 1;
        assert_eq!(l.check(&g, 1).unwrap().quota.unwrap().1, 9, "a new month starts at zero");
        let mut full = grant(Some(RateLimit::new(3, Period::Minute).unwrap()), Some(10));
        full.quota_used = 10;
        assert!(matches!(l.check(&full, 1), Err(Refusal::QuotaExhausted { .. })));
        assert_eq!(l.check(&grant(full.rate_limit, None), 3).unwrap().rate.unwrap().1, 0);
        full.rate_limit = None;
        assert!(
            matches!(l.check(&full, 1), Err(Refusal::QuotaExhausted { .. })),
            "refused before spending rate budget"
        );
    }

    #[test]
    fn the_quota_starts_from_what_the_store_counted() {
        let l = Limiter::new();
        let mut g = grant(None, Some(10));
        g.quota_used = 9;
        assert_eq!(l.check(&g, 1).unwrap().quota.unwrap().1, 0);
        assert!(l.check(&g, 1).is_err());
        g.quota_used = 0;
        assert!(l.check(&g, 1).is_err(), "a later snapshot does not reset a counter in use");
    }

    #[test]
    fn a_changed_limit_takes_effect() {
        let l = Limiter::new();
        let mut g = grant(Some(RateLimit::new(1, Period::Hour).unwrap()), None);
        assert!(l.check(&g, 1).is_ok());
        assert!(l.check(&g, 1).is_err());
        g.rate_limit = Some(RateLimit::new(5, Period::Hour).unwrap());
        assert!(l.check(&g, 1).is_ok());
    }

    #[test]
    fn the_monthly_quota_counts_admitted_calls() {
        let l = Limiter::new();
        let g = grant(None, Some(2));
        assert_eq!(l.check(&g, 1).unwrap().quota.map(|q| (q.0, q.1)), Some((2, 1)));
        assert_eq!(l.check(&g, 1).unwrap().quota.map(|q| (q.0, q.1)), Some((2, 0)));
        assert!(matches!(l.check(&g, 1), Err(Refusal::QuotaExhausted { quota: 2, .. })));
        assert!(grant(None, None).monthly_quota.is_none());
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }
}
