//! The gateway's per-call steps in isolation (`cargo bench -p portico-gateway --bench hot_path`):
//! the path parse and operation match, the key lookup (checksum, HMAC, hash-map probe in a
//! snapshot of 10,000 keys) and the limiter (GCRA + monthly quota).
//! Figures and how they relate to the whole proxy are in bench/README.md.

use criterion::{Criterion, criterion_group, criterion_main};
use portico_core::api_key::{ApiKey, Pepper};
use portico_core::ids::{AppId, KeyId, OrgId, PlanId, SubscriptionId};
use portico_core::openapi::Operation;
use portico_core::operations::OperationRouter;
use portico_core::snapshot::{KeyGrant, Snapshot, SubscriptionGrant};
use portico_core::values::{Period, RateLimit, Slug};
use portico_gateway::limit::{Limiter, Limits};
use std::hint::black_box;
use std::sync::Arc;

fn operations() -> OperationRouter {
    let mut ops = Vec::new();
    for r in ["cities", "forecasts", "alerts", "stations", "observations", "radars", "warnings", "tiles"] {
        for (method, path, id) in [
            ("GET", format!("/{r}"), format!("list_{r}")),
            ("POST", format!("/{r}"), format!("create_{r}")),
            ("GET", format!("/{r}/{{id}}"), format!("get_{r}")),
            ("PATCH", format!("/{r}/{{id}}"), format!("update_{r}")),
            ("GET", format!("/{r}/{{id}}/history/{{day}}"), format!("history_{r}")),
        ] {
            ops.push(Operation { method: method.into(), path, operation_id: Some(id), summary: None });
        }
    }
    OperationRouter::compile(&ops).expect("the operations compile")
}

fn snapshot_with_keys(pepper: &Pepper, n: usize) -> (Snapshot, String) {
    let mut snap = Snapshot::default();
    let mut last = String::new();
    for _ in 0..n {
        let key = ApiKey::generate();
        let hash = key.hash(pepper);
        snap.keys.insert(
            hash,
            KeyGrant {
                key_id: KeyId::new(),
                hash,
                app_id: AppId::new(),
                consumer_org_id: OrgId::new(),
                consumer_slug: Slug::parse("bench-consumer").unwrap(),
                expires_at_ms: None,
                scopes: None,
                last_used: Arc::default(),
                rehash: Arc::default(),
            },
        );
        last = key.expose_secret().to_owned();
    }
    (snap, last)
}

fn grant() -> SubscriptionGrant {
    SubscriptionGrant {
        subscription_id: SubscriptionId::new(),
        plan_id: PlanId::new(),
        plan_slug: Slug::parse("unlimited").unwrap(),
        // The highest rate a plan may set: at bench speed most checks are over it (refused).
        rate_limits: vec![RateLimit::new(1_000_000, Period::Second).unwrap()],
        monthly_quota: Some(u64::MAX / 2),
        daily_quota: None,
        operation_limits: None,
        quota_used: 0,
        quota_month: 0,
        quota_used_today: 0,
        quota_day: 0,
    }
}

fn hot_path(c: &mut Criterion) {
    let router = operations();
    c.bench_function("route: parse /{slug}/v{major}/rest", |b| {
        b.iter(|| portico_gateway::route::parse(black_box("/weather/v1/forecasts/lisbon/history/2026-11-25")))
    });
    c.bench_function("route: operation match (40 operations)", |b| {
        b.iter(|| router.lookup(black_box("GET"), black_box("/forecasts/lisbon/history/2026-11-25")))
    });
    let pepper = Pepper::generate();
    let (snap, key) = snapshot_with_keys(&pepper, 10_000);
    c.bench_function("key lookup: checksum + HMAC + probe (10k keys)", |b| {
        b.iter(|| portico_gateway::identify::lookup(&snap, &pepper, black_box(&key)).is_ok())
    });
    c.bench_function("key lookup: malformed key refused", |b| {
        b.iter(|| portico_gateway::identify::lookup(&snap, &pepper, black_box("ptc_not_a_key")).is_err())
    });
    let limiter = Limiter::new();
    let g = grant();
    c.bench_function("limiter: GCRA (1M/s) + monthly quota, one unit", |b| {
        b.iter(|| limiter.check(black_box(&g), None, 1).is_ok())
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
