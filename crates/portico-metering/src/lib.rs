//! `portico-metering` turns the gateway's usage events into stored counts.
//!
//! Today: [`DailyCounter`], a [`UsageSink`] that adds events up in memory per subscription and
//! UTC day and flushes the sums to the store every second, one transaction per flush. A flush
//! that fails keeps its counts for the next one. What it does not do yet (the metering issue):
//! a durable journal, so a process killed between flushes loses up to one interval of counts.

use portico_core::ids::SubscriptionId;
use portico_core::usage::{StatusClass, UsageEvent, UsageSink};
use portico_store::Store;
use portico_store::usage::DailyUsage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sums usage per (subscription, day) until the next flush.
#[derive(Debug, Default)]
pub struct DailyCounter {
    pending: Mutex<HashMap<(SubscriptionId, time::Date), DailyUsage>>,
}

impl DailyCounter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn take(&self) -> HashMap<(SubscriptionId, time::Date), DailyUsage> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn put_back(&self, batch: HashMap<(SubscriptionId, time::Date), DailyUsage>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (k, u) in batch {
            merge(pending.entry(k).or_default(), &u);
        }
    }

    /// Writes what has been counted since the last flush; returns how many rows it wrote.
    pub async fn flush(&self, store: &Store) -> Result<usize, portico_store::Error> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let rows: Vec<(SubscriptionId, DailyUsage)> =
            batch.iter().map(|((s, d), u)| (*s, DailyUsage { day: day_string(*d), ..u.clone() })).collect();
        let result = async {
            let mut tx = store.begin().await?;
            portico_store::usage::add(&mut tx, &rows).await?;
            tx.commit().await?;
            Ok::<_, portico_store::Error>(())
        }
        .await;
        match result {
            Ok(()) => Ok(rows.len()),
            Err(e) => {
                self.put_back(batch);
                Err(e)
            }
        }
    }

    /// Flushes every `every` until `shutdown` resolves, then flushes once more.
    pub fn spawn_flusher(
        self: Arc<Self>,
        store: Store,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = self.flush(&store).await {
                            tracing::warn!(error = %e, "usage flush failed; counts kept for the next try");
                        }
                    }
                    _ = &mut shutdown => break,
                }
            }
            if let Err(e) = self.flush(&store).await {
                tracing::error!(error = %e, "final usage flush failed; these counts are lost");
            }
        })
    }
}

fn merge(into: &mut DailyUsage, u: &DailyUsage) {
    into.subscription_id = u.subscription_id;
    into.calls += u.calls;
    into.success += u.success;
    into.client_errors += u.client_errors;
    into.server_errors += u.server_errors;
    into.bytes_in += u.bytes_in;
    into.bytes_out += u.bytes_out;
    into.latency_micros_sum += u.latency_micros_sum;
}

/// `YYYY-MM-DD`, as the store keys days.
pub fn day_string(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

impl UsageSink for DailyCounter {
    fn record(&self, e: UsageEvent) {
        let day = e.at.to_offset(time::UtcOffset::UTC).date();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let one = DailyUsage {
            subscription_id: Some(e.subscription_id),
            day: String::new(),
            calls: 1,
            success: i64::from(e.status_class() == StatusClass::Success),
            client_errors: i64::from(e.status_class() == StatusClass::ClientError),
            server_errors: i64::from(e.status_class() == StatusClass::ServerError),
            bytes_in: as_i64(e.bytes_in),
            bytes_out: as_i64(e.bytes_out),
            latency_micros_sum: as_i64(e.latency_micros),
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        merge(pending.entry((e.subscription_id, day)).or_default(), &one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::ids::*;

    fn event(sub: SubscriptionId, status: u16) -> UsageEvent {
        UsageEvent {
            request_id: uuid::Uuid::new_v4(),
            at: time::macros::datetime!(2026-11-25 23:59:59 UTC),
            api_id: ApiId::new(),
            version_id: VersionId::new(),
            app_id: AppId::new(),
            subscription_id: sub,
            consumer_org_id: OrgId::new(),
            plan_id: PlanId::new(),
            operation: None,
            status,
            latency_micros: 10,
            bytes_in: 1,
            bytes_out: 2,
        }
    }

    #[test]
    fn counts_by_subscription_day_and_status_class() {
        let c = DailyCounter::default();
        let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
        for s in [200, 201, 404, 503] {
            c.record(event(a, s));
        }
        c.record(event(b, 429));
        let batch = c.take();
        let day = time::macros::date!(2026 - 11 - 25);
        let ua = &batch[&(a, day)];
        assert_eq!((ua.calls, ua.success, ua.client_errors, ua.server_errors), (4, 2, 1, 1));
        assert_eq!((ua.bytes_in, ua.bytes_out, ua.latency_micros_sum), (4, 8, 40));
        assert_eq!(batch[&(b, day)].client_errors, 1);
        c.put_back(batch);
        c.record(event(a, 200));
        assert_eq!(c.take()[&(a, day)].calls, 5, "a failed flush keeps its counts");
        assert_eq!(day_string(day), "2026-11-25");
    }
}
