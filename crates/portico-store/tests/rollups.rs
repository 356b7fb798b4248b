//! Rollups on SQLite and PostgreSQL: batches added in several rounds and by two instances read
//! back as the same totals and the same merged sketch as rolling everything up at once;
//! retention deletes what is past it.

use portico_core::ids::*;
use portico_core::sketch::LatencySketch;
use portico_store::rollups::{self, Filter, Granularity};
use portico_store::usage::CallRecord;
use portico_store::{Store, usage};

mod common;
use common::{postgres, sqlite};

fn call(sub: SubscriptionId, at_millis: i64, status: i64, latency: i64, units: i64, orphaned: bool) -> CallRecord {
    let id = uuid::Builder::from_unix_timestamp_millis(at_millis as u64, &rand::random::<[u8; 10]>()).into_uuid();
    CallRecord {
        request_id: id,
        at_millis,
        subscription_id: sub,
        api_id: ApiId::from_uuid(uuid::Uuid::nil()),
        version_id: VersionId::from_uuid(uuid::Uuid::nil()),
        app_id: AppId::from_uuid(uuid::Uuid::nil()),
        consumer_org_id: OrgId::from_uuid(uuid::Uuid::nil()),
        plan_id: PlanId::from_uuid(uuid::Uuid::nil()),
        operation: Some("search".into()),
        status,
        latency_micros: latency,
        bytes_in: 10,
        bytes_out: 100,
        units,
        client_request_id: None,
        orphaned,
    }
}

async fn exercise(store: &Store) {
    let sub = SubscriptionId::new();
    let base = 1_764_000_000_000i64 - 1_764_000_000_000i64 % 86_400_000; // a midnight
    let mut calls = Vec::new();
    for i in 0..300i64 {
        let status = if i % 10 == 0 {
            429
        } else if i % 17 == 0 {
            502
        } else {
            200
        };
        let units = if status == 429 { 0 } else { 2 };
        calls.push(call(sub, base + i * 7_000, status, 500 + i * 37, units, i % 50 == 49));
    }
    // Three rounds from instance a, one from instance b, over the same buckets.
    let mut c = store.conn().await.unwrap();
    rollups::add(&mut c, "a", &calls[..100]).await.unwrap();
    rollups::add(&mut c, "a", &calls[100..200]).await.unwrap();
    rollups::add(&mut c, "b", &calls[200..250]).await.unwrap();
    rollups::add(&mut c, "a", &calls[250..]).await.unwrap();

    let f = Filter { from_millis: base, to_millis: base + 86_400_000, ..Default::default() };
    for g in [Granularity::Minute, Granularity::Day] {
        let rows = rollups::read(&mut c, g, &f, None).await.unwrap();
        let (mut calls_n, mut units, mut refused, mut orphaned) = (0, 0, 0, 0);
        let mut sketch = LatencySketch::new();
        for r in &rows {
            calls_n += r.calls;
            units += r.units;
            refused += r.refused;
            orphaned += r.orphaned;
            sketch.merge(&r.sketch);
        }
        let answered: Vec<&CallRecord> = calls.iter().filter(|c| !c.orphaned).collect();
        assert_eq!(calls_n, answered.len() as i64, "{g:?}");
        assert_eq!(units, answered.iter().map(|c| c.units).sum::<i64>(), "{g:?}");
        assert_eq!(refused, answered.iter().filter(|c| c.units == 0).count() as i64, "{g:?}");
        assert_eq!(orphaned, calls.iter().filter(|c| c.orphaned).count() as i64, "{g:?}");
        let mut all = LatencySketch::new();
        for c in &answered {
            all.add(c.latency_micros as u64);
        }
        assert_eq!(sketch, all, "{g:?}: the stored sketches merge to the sketch of every call");
    }
    // A plan change within a bucket: the calls after it are the new plan's, in a row of its own.
    let (old_plan, new_plan) = (PlanId::new(), PlanId::new());
    let switcher = SubscriptionId::new();
    let at = base + 2 * 86_400_000 + 3_600_000; // another day: the sums below stay as they are
    let switched: Vec<CallRecord> = (0..6)
        .map(|i| CallRecord {
            plan_id: if i < 4 { old_plan } else { new_plan },
            ..call(switcher, at + i, 200, 900, 1, false)
        })
        .collect();
    rollups::add(&mut c, "a", &switched[..3]).await.unwrap();
    rollups::add(&mut c, "a", &switched[3..]).await.unwrap();
    for g in [Granularity::Minute, Granularity::Day] {
        for (plan, n) in [(old_plan, 4), (new_plan, 2)] {
            let by_plan = Filter {
                plan_id: Some(plan),
                from_millis: at - 3_600_000,
                to_millis: at + 3_600_000,
                ..Default::default()
            };
            let rows = rollups::read(&mut c, g, &by_plan, None).await.unwrap();
            assert_eq!(rows.iter().map(|r| r.calls).sum::<i64>(), n, "{g:?}: {rows:?}");
            assert!(rows.iter().all(|r| r.plan_id == plan && r.subscription_id == switcher));
        }
    }
    // Filters narrow; another subscription's rows are not mixed in.
    let only_5xx = Filter { status_class: Some("5xx".into()), ..f.clone() };
    let rows = rollups::read(&mut c, Granularity::Day, &only_5xx, None).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.calls).sum::<i64>(),
        calls.iter().filter(|c| c.status == 502 && !c.orphaned).count() as i64
    );
    let nobody = rollups::read(&mut c, Granularity::Day, &f, Some(&[OrgId::new()])).await.unwrap();
    assert!(nobody.is_empty(), "rows of other organizations are not visible");
    // Quotas start from the billable units.
    let units = rollups::units_by_subscription_since(&mut c, base).await.unwrap();
    assert_eq!(units[&sub] as i64, calls.iter().filter(|c| !c.orphaned).map(|c| c.units).sum::<i64>());

    // Retention: minute rows and request-log rows before the cut go, day rows stay.
    let refs: Vec<&CallRecord> = calls.iter().collect();
    usage::insert_calls(&mut c, &refs).await.unwrap();
    assert_eq!(usage::logged_calls(&mut c).await.unwrap(), 300);
    let cut = base + 150 * 7_000;
    let gone = rollups::prune(&mut c, Granularity::Minute, cut).await.unwrap();
    assert!(gone > 0);
    let left = rollups::read(&mut c, Granularity::Minute, &f, None).await.unwrap();
    assert!(left.iter().all(|r| r.bucket >= cut - 60_000));
    let deleted = rollups::prune_request_log(&mut c, cut).await.unwrap();
    assert_eq!(deleted, calls.iter().filter(|c| c.at_millis < cut).count() as u64);
    assert_eq!(
        rollups::read(&mut c, Granularity::Day, &f, None).await.unwrap().iter().map(|r| r.calls).sum::<i64>(),
        294
    );
}

#[tokio::test]
async fn rollups_on_sqlite() {
    let (store, _dir) = sqlite().await;
    exercise(&store).await;
}

#[tokio::test]
async fn rollups_on_postgres() {
    exercise(&postgres().await).await;
}
