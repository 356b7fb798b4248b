//! Per-subscription limits: GCRA rate limits over one or more windows (e.g. 10 a second and
//! 1000 an hour, all enforced) and quotas per calendar day and month (UTC). In one process,
//! exact and lock-light: a subscription's windows sit behind a mutex of their own, the maps are
//! read-locked on the common path, and nothing is held across an await. A refused call takes
//! nothing from any budget. The scale-out issue puts a Redis implementation behind [`Limits`].

use portico_core::ids::SubscriptionId;
use portico_core::snapshot::SubscriptionGrant;
use portico_core::values::RateLimit;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The most rate-limit windows a plan has (`check_rate_windows` holds plans to it).
pub const MAX_WINDOWS: usize = 4;

/// A calendar quota's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    Day,
    Month,
}

impl QuotaPeriod {
    /// The policy's name in the `RateLimit` headers (`daily`: a rate-limit window may be `day`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "daily",
            QuotaPeriod::Month => "month",
        }
    }
    /// The window's nominal length in seconds, for `RateLimit-Policy`'s `w`.
    pub fn seconds(self) -> u64 {
        match self {
            QuotaPeriod::Day => 86_400,
            QuotaPeriod::Month => 2_592_000,
        }
    }
}

/// What is left after an admitted call, for the `RateLimit` headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Each rate-limit window: (limit, units left now, seconds until it is full again).
    pub rates: [Option<(RateLimit, u32, u64)>; MAX_WINDOWS],
    /// The same for the called operation's own windows.
    pub op_rates: [Option<(RateLimit, u32, u64)>; MAX_WINDOWS],
    /// Each quota: (period, quota, units left, seconds until it resets).
    pub quotas: [Option<(QuotaPeriod, u64, u64, u64)>; 2],
}

/// Why a call was refused, with how long to wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `for_operation`: the window is one of the called operation's own.
    RateLimited {
        retry_after: Duration,
        limit: RateLimit,
        for_operation: bool,
    },
    QuotaExhausted {
        retry_after: Duration,
        quota: u64,
        period: QuotaPeriod,
    },
}

/// Admits calls against a subscription's limits. [`Limiter`] is the in-process one.
pub trait Limits: Send + Sync {
    /// Admits one call costing `units` (an operation's weight, at least 1) for `grant`, or
    /// says why not. A refused call takes nothing from any budget.
    /// `operation`: the called operation's id, for the plan's per-operation windows.
    fn check(&self, grant: &SubscriptionGrant, operation: Option<&str>, units: u32) -> Result<Admitted, Refusal>;
}

/// A subscription's limiter state, behind one mutex of its own: each window's theoretical
/// arrival time (nanoseconds since the limiter's epoch) with the limits it was made for, and
/// the quota counters.
#[derive(Default)]
struct Windows {
    limits: Vec<RateLimit>,
    tat: [u64; MAX_WINDOWS],
    /// The windows of single operations: operationId → (limits, arrival times).
    ops: HashMap<Box<str>, (Vec<RateLimit>, [u64; MAX_WINDOWS])>,
    /// `None` until the subscription's first call with a quota.
    counted: Option<Counted>,
}

#[derive(Default, Clone, Copy)]
struct Counted {
    month: i32,
    month_used: u64,
    day: i32,
    day_used: u64,
}

pub struct Limiter {
    epoch: Instant,
    subs: RwLock<foldhash::HashMap<SubscriptionId, Arc<Mutex<Windows>>>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { epoch: Instant::now(), subs: RwLock::default() }
    }
}

/// The month index (`year * 12 + month - 1`) and the day (days since 1970-01-01) now, UTC,
/// with the seconds until each ends.
fn calendar_now() -> ((i32, u64), (i32, u64)) {
    let now = time::OffsetDateTime::now_utc();
    let idx = now.year() * 12 + i32::from(u8::from(now.month())) - 1;
    let (y, m) = if now.month() == time::Month::December {
        (now.year() + 1, time::Month::January)
    } else {
        (now.year(), now.month().next())
    };
    let next = time::Date::from_calendar_date(y, m, 1).map(|d| d.midnight().assume_utc());
    let month_left = next.map(|n| (n - now).whole_seconds().max(1) as u64).unwrap_or(3600);
    let secs = now.unix_timestamp();
    let day = secs.div_euclid(86_400) as i32;
    let day_left = (86_400 - secs.rem_euclid(86_400)).max(1) as u64;
    ((idx, month_left), (day, day_left))
}

impl Limiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self, sub: SubscriptionId) -> Arc<Mutex<Windows>> {
        if let Some(w) = self.subs.read().unwrap_or_else(|p| p.into_inner()).get(&sub) {
            return w.clone();
        }
        self.subs.write().unwrap_or_else(|p| p.into_inner()).entry(sub).or_default().clone()
    }
}

/// GCRA over every window at once — the plan's and the operation's: admitted only if each
/// admits, and then each is spent. Windows whose limits changed start afresh.
fn check_rates(
    w: &mut Windows,
    grant: &SubscriptionGrant,
    operation: Option<&str>,
    units: u32,
    now: u64,
    admitted: &mut Admitted,
) -> Result<(), Refusal> {
    let limits = &grant.rate_limits[..grant.rate_limits.len().min(MAX_WINDOWS)];
    let op = operation
        .and_then(|o| grant.operation_limits.as_ref()?.get_key_value(o))
        .map(|(name, ws)| (name, &ws[..ws.len().min(MAX_WINDOWS)]));
    if w.limits != limits {
        w.limits = limits.to_vec();
        w.tat = [0; MAX_WINDOWS];
    }
    let mut next = [0u64; MAX_WINDOWS];
    let mut refused = gcra(limits, &w.tat, now, units, &mut next).map(|(d, l)| (d, l, false));
    let mut op_next = [0u64; MAX_WINDOWS];
    if let Some((name, op_limits)) = op {
        if !w.ops.get(name.as_str()).is_some_and(|(l, _)| l.as_slice() == op_limits) {
            w.ops.insert(name.as_str().into(), (op_limits.to_vec(), [0; MAX_WINDOWS]));
        }
        let tat = w.ops.get(name.as_str()).map(|(_, t)| *t).unwrap_or_default();
        if let Some((d, l)) = gcra(op_limits, &tat, now, units, &mut op_next)
            && refused.is_none_or(|(r, _, _)| d > r)
        {
            refused = Some((d, l, true));
        }
    }
    if let Some((retry_after, limit, for_operation)) = refused {
        return Err(Refusal::RateLimited { retry_after, limit, for_operation });
    }
    w.tat = next;
    for (i, l) in limits.iter().enumerate() {
        admitted.rates[i] = Some(window_state(*l, next[i], now));
    }
    if let Some((name, op_limits)) = op {
        if let Some((_, tat)) = w.ops.get_mut(name.as_str()) {
            *tat = op_next;
        }
        for (i, l) in op_limits.iter().enumerate() {
            admitted.op_rates[i] = Some(window_state(*l, op_next[i], now));
        }
    }
    Ok(())
}

fn interval_and_period(l: RateLimit) -> (u64, u64) {
    let period = l.per().seconds() * 1_000_000_000;
    (period / u64::from(l.requests().max(1)), period)
}

/// GCRA for `units` over `limits` with their arrival times `tat` (nanoseconds): fills `next`
/// with each window's arrival time after the call, or says which window refuses and how long
/// to wait (the longest wait, when several refuse).
fn gcra(
    limits: &[RateLimit],
    tat: &[u64; MAX_WINDOWS],
    now: u64,
    units: u32,
    next: &mut [u64; MAX_WINDOWS],
) -> Option<(Duration, RateLimit)> {
    let mut refused: Option<(Duration, RateLimit)> = None;
    for (i, l) in limits.iter().enumerate() {
        let (interval, period) = interval_and_period(*l);
        if units > l.requests() {
            // The operation costs more units than the window's whole burst.
            if refused.is_none_or(|(r, _)| Duration::from_nanos(period) > r) {
                refused = Some((Duration::from_nanos(period), *l));
            }
            continue;
        }
        let after = tat[i].max(now).saturating_add(interval * u64::from(units));
        // The window's burst is `requests` intervals (not the period: the interval is rounded
        // down, and `requests + 1` calls must not fit).
        let burst = interval * u64::from(l.requests());
        let wait = if after - now > burst { Some(Duration::from_nanos(after - now - burst)) } else { None };
        match wait {
            Some(d) if refused.is_none_or(|(r, _)| d > r) => refused = Some((d, *l)),
            Some(_) => {}
            None => next[i] = after,
        }
    }
    refused
}

/// (limit, units left now, seconds until the window is full again) after a call.
fn window_state(l: RateLimit, tat: u64, now: u64) -> (RateLimit, u32, u64) {
    let (interval, _) = interval_and_period(l);
    let burst = interval * u64::from(l.requests());
    let busy = tat.saturating_sub(now);
    let left = (burst.saturating_sub(busy) / interval.max(1)).min(u64::from(l.requests())) as u32;
    (l, left, busy.div_ceil(1_000_000_000))
}

impl Limits for Limiter {
    fn check(&self, grant: &SubscriptionGrant, operation: Option<&str>, units: u32) -> Result<Admitted, Refusal> {
        let units = units.max(1);
        let mut admitted = Admitted::default();
        let has_op_limits = operation.is_some() && grant.operation_limits.is_some();
        let has_quota = grant.monthly_quota.is_some() || grant.daily_quota.is_some();
        if grant.rate_limits.is_empty() && !has_op_limits && !has_quota {
            return Ok(admitted);
        }
        let state = self.state(grant.subscription_id);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut w = state.lock().unwrap_or_else(|p| p.into_inner());
        if !has_quota {
            check_rates(&mut w, grant, operation, units, now, &mut admitted)?;
            return Ok(admitted);
        }
        let ((month, month_left), (day, day_left)) = calendar_now();
        // A subscription first seen by this process starts from what the store had counted
        // (for the period it was counted in).
        let mut c = w.counted.unwrap_or(Counted {
            month: grant.quota_month,
            month_used: grant.quota_used,
            day: grant.quota_day,
            day_used: grant.quota_used_today,
        });
        if c.month != month {
            (c.month, c.month_used) = (month, 0);
        }
        if c.day != day {
            (c.day, c.day_used) = (day, 0);
        }
        // The quotas are looked at first, so that a call they refuse spends no rate budget.
        let u = u64::from(units);
        if let Some(quota) = grant.daily_quota
            && c.day_used + u > quota
        {
            return Err(Refusal::QuotaExhausted {
                retry_after: Duration::from_secs(day_left),
                quota,
                period: QuotaPeriod::Day,
            });
        }
        if let Some(quota) = grant.monthly_quota
            && c.month_used + u > quota
        {
            return Err(Refusal::QuotaExhausted {
                retry_after: Duration::from_secs(month_left),
                quota,
                period: QuotaPeriod::Month,
            });
        }
        check_rates(&mut w, grant, operation, units, now, &mut admitted)?;
        c.month_used += u;
        c.day_used += u;
        w.counted = Some(c);
        drop(w);
        if let Some(quota) = grant.daily_quota {
            admitted.quotas[0] = Some((QuotaPeriod::Day, quota, quota - c.day_used, day_left));
        }
        if let Some(quota) = grant.monthly_quota {
            admitted.quotas[1] = Some((QuotaPeriod::Month, quota, quota - c.month_used, month_left));
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
        let ((month, _), (day, _)) = calendar_now();
        SubscriptionGrant {
            subscription_id: SubscriptionId::new(),
            plan_id: PlanId::new(),
            plan_slug: Slug::parse("free").unwrap(),
            rate_limits: rate.into_iter().collect(),
            monthly_quota: quota,
            daily_quota: None,
            operation_limits: None,
            quota_used: 0,
            quota_month: month,
            quota_used_today: 0,
            quota_day: day,
        }
    }

    impl Limiter {
        fn check_plan(&self, g: &SubscriptionGrant, units: u32) -> Result<Admitted, Refusal> {
            self.check(g, None, units)
        }
    }

    fn first(a: &Admitted) -> (u32, u64) {
        let (_, left, reset) = a.rates[0].unwrap();
        (left, reset)
    }
    fn month_left(a: &Admitted) -> u64 {
        a.quotas[1].unwrap().2
    }

    #[test]
    fn every_window_is_enforced_and_a_refusal_spends_none() {
        let l = Limiter::new();
        let mut g = grant(Some(RateLimit::new(5, Period::Second).unwrap()), None);
        g.rate_limits.push(RateLimit::new(3, Period::Hour).unwrap());
        let a = l.check_plan(&g, 1).unwrap();
        let windows: Vec<_> = a.rates.iter().flatten().map(|(lim, left, _)| (lim.per(), *left)).collect();
        assert_eq!(windows, [(Period::Second, 4), (Period::Hour, 2)]);
        assert!(l.check_plan(&g, 2).is_ok(), "3 of the hour's 3");
        match l.check_plan(&g, 1) {
            Err(Refusal::RateLimited { limit, retry_after, .. }) => {
                assert_eq!(limit.per(), Period::Hour, "the hour's window refuses");
                assert!(retry_after > Duration::from_secs(1000), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        // A call a window refuses spends no quota either.
        let mut q = grant(Some(RateLimit::new(1, Period::Hour).unwrap()), Some(10));
        q.daily_quota = Some(5);
        assert_eq!(l.check_plan(&q, 1).unwrap().quotas[0].unwrap().2, 4);
        assert!(l.check_plan(&q, 1).is_err());
        q.rate_limits.clear();
        assert_eq!(l.check_plan(&q, 1).unwrap().quotas[0].unwrap().2, 3, "the refused call took none of the day");
        // A refusal by one window takes nothing from the others.
        let l2 = Limiter::new();
        let mut tight = grant(Some(RateLimit::new(2, Period::Minute).unwrap()), None);
        tight.rate_limits.push(RateLimit::new(1, Period::Hour).unwrap());
        assert!(l2.check_plan(&tight, 1).is_ok());
        assert!(l2.check_plan(&tight, 1).is_err(), "the hour refuses");
        match &l2.subs.read().unwrap()[&tight.subscription_id].lock().unwrap().tat {
            [minute, hour, ..] => {
                let spent_minute = *minute - l2.epoch.elapsed().as_nanos().min(u128::from(*minute)) as u64;
                assert!(spent_minute <= 30_000_000_000, "one call's interval (30 s) of the minute, not two");
                assert!(*hour > 0);
            }
        }
    }

    #[test]
    fn an_operations_windows_add_to_the_plans() {
        let l = Limiter::new();
        let mut g = grant(Some(RateLimit::new(10, Period::Minute).unwrap()), None);
        let ops = HashMap::from([("search".to_owned(), vec![RateLimit::new(2, Period::Minute).unwrap()])]);
        g.operation_limits = Some(Arc::new(ops));
        let a = l.check(&g, Some("search"), 1).unwrap();
        assert_eq!((a.rates[0].unwrap().1, a.op_rates[0].unwrap().1), (9, 1));
        assert!(l.check(&g, Some("search"), 1).is_ok());
        match l.check(&g, Some("search"), 1) {
            Err(Refusal::RateLimited { for_operation: true, limit, .. }) => assert_eq!(limit.requests(), 2),
            other => panic!("{other:?}"),
        }
        // Other operations only spend the plan's window, which the refusal did not touch.
        let other = l.check(&g, Some("getItem"), 1).unwrap();
        assert_eq!((other.rates[0].unwrap().1, other.op_rates[0]), (7, None));
        assert_eq!(first(&l.check(&g, None, 1).unwrap()).0, 6);
    }

    #[test]
    fn the_daily_quota_resets_each_day_and_is_seeded_for_today_only() {
        let l = Limiter::new();
        let mut g = grant(None, Some(100));
        g.daily_quota = Some(3);
        g.quota_used_today = 2;
        g.quota_used = 50;
        let a = l.check_plan(&g, 1).unwrap();
        assert_eq!(a.quotas[0].map(|q| (q.0, q.1, q.2)), Some((QuotaPeriod::Day, 3, 0)));
        assert_eq!(month_left(&a), 49);
        match l.check_plan(&g, 1) {
            Err(Refusal::QuotaExhausted { period: QuotaPeriod::Day, retry_after, .. }) => {
                assert!(retry_after <= Duration::from_secs(86_400));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(month_left(&l.check_plan(&grant(None, Some(100)), 1).unwrap()), 99, "others are not affected");
        let mut yesterday = grant(None, None);
        yesterday.daily_quota = Some(3);
        yesterday.quota_used_today = 3;
        yesterday.quota_day -= 1;
        assert_eq!(
            l.check_plan(&yesterday, 1).unwrap().quotas[0].unwrap().2,
            2,
            "yesterday's count does not seed today"
        );
    }

    #[test]
    fn gcra_allows_the_burst_then_refuses_with_a_wait() {
        let l = Limiter::new();
        let g = grant(Some(RateLimit::new(3, Period::Minute).unwrap()), None);
        let lefts: Vec<u32> = (0..3).map(|_| first(&l.check_plan(&g, 1).unwrap()).0).collect();
        assert_eq!(lefts, [2, 1, 0]);
        match l.check_plan(&g, 1) {
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
        let g2 = grant(g.rate_limits.first().copied(), None);
        assert!(l.check_plan(&g2, 1).is_ok());
    }

    #[test]
    fn weighted_operations_spend_several_units() {
        let l = Limiter::new();
        let g = grant(Some(RateLimit::new(10, Period::Minute).unwrap()), Some(12));
        assert_eq!(first(&l.check_plan(&g, 4).unwrap()).0, 6);
        assert_eq!(month_left(&l.check_plan(&g, 4).unwrap()), 4);
        assert!(matches!(l.check_plan(&g, 4), Err(Refusal::RateLimited { .. })), "2 rate units left");
        assert_eq!(month_left(&l.check_plan(&g, 2).unwrap()), 2);
        assert!(matches!(l.check_plan(&g, 3), Err(Refusal::QuotaExhausted { .. })));
        assert!(
            matches!(l.check_plan(&grant(g.rate_limits.first().copied(), None), 11), Err(Refusal::RateLimited { .. })),
            "above the burst"
        );
    }

    #[test]
    fn last_months_count_does_not_seed_this_month() {
        let l = Limiter::new();
        let mut g = grant(Some(RateLimit::new(10, Period::Minute).unwrap()), Some(10));
        g.quota_used = 10;
        g.quota_month -= 1;
        assert_eq!(month_left(&l.check_plan(&g, 1).unwrap()), 9, "a new month starts at zero");
        let mut full = grant(Some(RateLimit::new(3, Period::Minute).unwrap()), Some(10));
        full.quota_used = 10;
        assert!(matches!(l.check_plan(&full, 1), Err(Refusal::QuotaExhausted { .. })));
        assert_eq!(first(&l.check_plan(&grant(full.rate_limits.first().copied(), None), 3).unwrap()).0, 0);
        full.rate_limits.clear();
        assert!(
            matches!(l.check_plan(&full, 1), Err(Refusal::QuotaExhausted { .. })),
            "refused before spending rate budget"
        );
    }

    #[test]
    fn the_quota_starts_from_what_the_store_counted() {
        let l = Limiter::new();
        let mut g = grant(None, Some(10));
        g.quota_used = 9;
        assert_eq!(month_left(&l.check_plan(&g, 1).unwrap()), 0);
        assert!(l.check_plan(&g, 1).is_err());
        g.quota_used = 0;
        assert!(l.check_plan(&g, 1).is_err(), "a later snapshot does not reset a counter in use");
    }

    #[test]
    fn a_changed_limit_takes_effect() {
        let l = Limiter::new();
        let mut g = grant(Some(RateLimit::new(1, Period::Hour).unwrap()), None);
        assert!(l.check_plan(&g, 1).is_ok());
        assert!(l.check_plan(&g, 1).is_err());
        g.rate_limits = vec![RateLimit::new(5, Period::Hour).unwrap()];
        assert!(l.check_plan(&g, 1).is_ok());
    }

    #[test]
    fn the_monthly_quota_counts_admitted_calls() {
        let l = Limiter::new();
        let g = grant(None, Some(2));
        assert_eq!(l.check_plan(&g, 1).unwrap().quotas[1].map(|q| (q.1, q.2)), Some((2, 1)));
        assert_eq!(l.check_plan(&g, 1).unwrap().quotas[1].map(|q| (q.1, q.2)), Some((2, 0)));
        assert!(matches!(
            l.check_plan(&g, 1),
            Err(Refusal::QuotaExhausted { quota: 2, period: QuotaPeriod::Month, .. })
        ));
        assert!(grant(None, None).monthly_quota.is_none());
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }
}
