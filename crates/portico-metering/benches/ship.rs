//! Journal and shipper throughput (`cargo bench -p portico-metering --bench ship`, or
//! `bench/metering.sh`): how many calls per second the journal takes (a begin and an end record,
//! one `write(2)` each) and how many the shipper moves into a SQLite store (rollups, request
//! log, offsets in one transaction per round), with the request log keeping every call and
//! keeping none. The metering issue's floor is 100,000 events per second on this machine.
//!
//! `BENCH_CALLS` (default 200,000) sets the calls per pass; `BENCH_SUBSCRIPTIONS` (default 100)
//! how many subscriptions they spread over.

use portico_core::ids::*;
use portico_core::usage::{UsageEvent, UsageSink};
use portico_metering::{Journal, RequestLog, Shipper};
use portico_store::Store;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Ids {
    api: ApiId,
    version: VersionId,
    app: AppId,
    org: OrgId,
    plan: PlanId,
    subs: Vec<SubscriptionId>,
}

fn event(ids: &Ids, i: usize) -> UsageEvent {
    UsageEvent {
        request_id: uuid::Uuid::now_v7(),
        at: time::OffsetDateTime::now_utc(),
        api_id: ids.api,
        version_id: ids.version,
        app_id: ids.app,
        subscription_id: ids.subs[i % ids.subs.len()],
        consumer_org_id: ids.org,
        plan_id: ids.plan,
        operation: Some("get_weather".into()),
        status: if i.is_multiple_of(50) { 500 } else { 200 },
        latency_micros: 200 + (i % 1000) as u64,
        bytes_in: 120,
        bytes_out: 480,
        units: 1,
        client_request_id: None,
    }
}

async fn pass(calls: usize, ids: &Ids, log: RequestLog) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let store = Store::connect(&format!("sqlite://{}", tmp.path().join("bench.db").display())).await.expect("SQLite");
    store.migrate().await.expect("migrations");
    let jdir = tmp.path().join("journal");
    let journal = Journal::open(&jdir, 64 << 20).expect("the journal");

    let events: Vec<UsageEvent> = (0..calls).map(|i| event(ids, i)).collect();
    let started = Instant::now();
    for e in events {
        let t = journal.begin(&e);
        journal.end(t, e);
    }
    let wrote = started.elapsed();

    let mut shipper = Shipper::new(&jdir, journal.instance(), store.clone()).with_request_log(log);
    let started = Instant::now();
    let mut shipped = 0;
    let mut rounds = 0;
    while shipped < calls as u64 {
        shipped += shipper.ship_once().await.expect("shipping").calls;
        rounds += 1;
    }
    let moved = started.elapsed();
    println!(
        "request log {:6}: journal {:>9.0} calls/s ({:.2} µs per call, begin + end) · shipper {:>9.0} calls/s ({:.2} µs per call, {rounds} rounds)",
        format!("{log:?}").to_lowercase(),
        calls as f64 / wrote.as_secs_f64(),
        wrote.as_secs_f64() * 1e6 / calls as f64,
        calls as f64 / moved.as_secs_f64(),
        moved.as_secs_f64() * 1e6 / calls as f64,
    );
    journal.close();
}

fn main() {
    let calls = env("BENCH_CALLS", 200_000);
    let subs = env("BENCH_SUBSCRIPTIONS", 100);
    let ids = Ids {
        api: ApiId::new(),
        version: VersionId::new(),
        app: AppId::new(),
        org: OrgId::new(),
        plan: PlanId::new(),
        subs: (0..subs).map(|_| SubscriptionId::new()).collect(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    println!("metering: {calls} calls over {subs} subscriptions, SQLite in a temporary directory");
    for log in [RequestLog::All, RequestLog::Errors, RequestLog::Off] {
        rt.block_on(pass(calls, &ids, log));
    }
}
