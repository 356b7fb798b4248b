//! The request log's search on SQLite and PostgreSQL: calls written as pages are found by
//! Portico's id, by the client's `X-Request-Id`, by filters and time range, newest first and
//! paged, and only by those allowed to see them.

use portico_core::ids::*;
use portico_core::model::{OrgKind, Visibility};
use portico_core::values::{Name, Slug};
use portico_store::catalog::ApiFields;
use portico_store::usage::{CallFilter, CallRecord};
use portico_store::{Page, Store, catalog, orgs, rollups, usage};

mod common;
use common::{postgres, sqlite};

struct World {
    provider: OrgId,
    api: ApiId,
    other_api: ApiId,
    consumers: [OrgId; 2],
    calls: Vec<CallRecord>,
}

const BASE: i64 = 1_765_000_000_000;
const V4: &str = "9b2f3c1e-54a7-4d2b-8f0e-1c2d3e4f5a6b";

fn call(api: ApiId, org: OrgId, at_millis: i64, i: usize) -> CallRecord {
    CallRecord {
        request_id: uuid::Builder::from_unix_timestamp_millis(at_millis as u64, &rand::random::<[u8; 10]>())
            .into_uuid(),
        at_millis,
        subscription_id: SubscriptionId::from_uuid(uuid::Uuid::from_u128(i as u128 % 3)),
        api_id: api,
        version_id: VersionId::from_uuid(uuid::Uuid::nil()),
        app_id: AppId::from_uuid(uuid::Uuid::from_u128(10 + i as u128 % 2)),
        consumer_org_id: org,
        plan_id: PlanId::from_uuid(uuid::Uuid::nil()),
        operation: Some(if i % 4 == 1 { "create".into() } else { "search".into() }),
        status: if i % 10 == 1 { 429 } else { 200 },
        latency_micros: 100 + i as i64,
        bytes_in: 1,
        bytes_out: 2,
        units: 1,
        client_request_id: (i % 100 == 7).then(|| format!("client-{}", i / 100)),
        orphaned: i % 97 == 5,
    }
}

async fn world(store: &Store) -> World {
    let mut c = store.conn().await.unwrap();
    let org = |s: &str, kind| {
        let s = s.to_owned();
        let store = store.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            orgs::insert(&mut c, &Slug::parse(&s).unwrap(), &Name::parse(&s).unwrap(), kind).await.unwrap().id
        }
    };
    let provider = org("acme", OrgKind::Provider).await;
    let rival = org("rival", OrgKind::Provider).await;
    let consumers = [org("globex", OrgKind::Consumer).await, org("initech", OrgKind::Consumer).await];
    let fields = |n: &str| ApiFields {
        name: Name::parse(n).unwrap(),
        description: String::new(),
        category: None,
        tags: vec![],
        visibility: Visibility::Public,
        hosts: vec![],
    };
    let api =
        catalog::insert_api(&mut c, provider, &Slug::parse("weather").unwrap(), &fields("Weather")).await.unwrap().id;
    let other_api =
        catalog::insert_api(&mut c, rival, &Slug::parse("maps").unwrap(), &fields("Maps")).await.unwrap().id;
    // 3,000 calls over 600 seconds (more pages than one read takes), in three rounds.
    let mut calls: Vec<CallRecord> = (0..3000)
        .map(|i| {
            let (a, o) = match i % 5 {
                0 => (other_api, consumers[1]),
                1 | 2 => (api, consumers[0]),
                _ => (api, consumers[1]),
            };
            call(a, o, BASE + (i as i64) * 200, i)
        })
        .collect();
    // A client whose own ids are UUIDs (of another kind than Portico's).
    calls[2507].client_request_id = Some(V4.into());
    for round in calls.chunks(1000) {
        let refs: Vec<&CallRecord> = round.iter().collect();
        let mut tx = store.begin().await.unwrap();
        usage::insert_calls(&mut tx, &refs).await.unwrap();
        tx.commit().await.unwrap();
    }
    World { provider, api, other_api, consumers, calls }
}

fn newest_first(mut v: Vec<&CallRecord>) -> Vec<uuid::Uuid> {
    v.sort_by_key(|c| std::cmp::Reverse((c.at_millis / 1000, c.request_id)));
    v.into_iter().map(|c| c.request_id).collect()
}

async fn exercise(store: &Store) {
    let w = world(store).await;
    let mut c = store.conn().await.unwrap();
    assert_eq!(usage::logged_calls(&mut c).await.unwrap(), 3000);
    let all = Page::all();
    let ids = |v: &[usage::LoggedCall]| v.iter().map(|l| l.call.request_id).collect::<Vec<_>>();

    // Everything, newest first, for an admin; every call back exactly as written.
    let got = usage::list_calls(&mut c, &CallFilter::default(), None, all).await.unwrap();
    assert_eq!(ids(&got), newest_first(w.calls.iter().collect()));
    let by_id: std::collections::HashMap<_, _> = w.calls.iter().map(|c| (c.request_id, c)).collect();
    for l in &got {
        assert_eq!(&l.call, by_id[&l.call.request_id]);
        assert_eq!(l.api_slug, if l.call.api_id == w.api { "weather" } else { "maps" });
    }

    // Paging: pages of 50 at any offset are slices of the whole.
    let whole = ids(&got);
    for offset in [0, 50, 1234, 2990, 3000, 10_000] {
        let p =
            usage::list_calls(&mut c, &CallFilter::default(), None, Page::new(Some(50), Some(offset))).await.unwrap();
        let o = offset as usize;
        assert_eq!(ids(&p), whole[o.min(3000)..(o + 50).min(3000)].to_vec(), "offset {offset}");
    }

    // By Portico's id; by the client's id (seen in one second each, here).
    let target = &w.calls[1234];
    let f = CallFilter { request_id: Some(target.request_id), ..Default::default() };
    assert_eq!(ids(&usage::list_calls(&mut c, &f, None, all).await.unwrap()), vec![target.request_id]);
    let f = CallFilter { client_request_id: Some("client-12".into()), ..Default::default() };
    let found = usage::list_calls(&mut c, &f, None, all).await.unwrap();
    assert_eq!(ids(&found), vec![w.calls[1207].request_id]);
    let f = CallFilter { client_request_id: Some("never-sent".into()), ..Default::default() };
    assert!(usage::list_calls(&mut c, &f, None, all).await.unwrap().is_empty());
    // An id of another kind than Portico's can only be a client's: found as one (the API
    // searches both ways), and not at all as Portico's.
    let f = CallFilter { request_id: V4.parse().ok(), client_request_id: Some(V4.into()), ..Default::default() };
    assert_eq!(ids(&usage::list_calls(&mut c, &f, None, all).await.unwrap()), vec![w.calls[2507].request_id]);
    let f = CallFilter { request_id: V4.parse().ok(), ..Default::default() };
    assert!(usage::list_calls(&mut c, &f, None, all).await.unwrap().is_empty());

    // Filters and a time range.
    let f = CallFilter {
        status: Some(429),
        operation: Some("create".into()),
        api_id: Some(w.api),
        from_millis: Some(BASE + 100_000),
        to_millis: Some(BASE + 400_000),
        ..Default::default()
    };
    let want = newest_first(
        w.calls
            .iter()
            .filter(|c| {
                c.status == 429
                    && c.operation.as_deref() == Some("create")
                    && c.api_id == w.api
                    && (BASE + 100_000..=BASE + 400_000).contains(&c.at_millis)
            })
            .collect(),
    );
    assert!(!want.is_empty());
    assert_eq!(ids(&usage::list_calls(&mut c, &f, None, all).await.unwrap()), want);
    let app = AppId::from_uuid(uuid::Uuid::from_u128(11));
    let f = CallFilter { app_id: Some(app), consumer_org_id: Some(w.consumers[1]), ..Default::default() };
    let want =
        newest_first(w.calls.iter().filter(|c| c.app_id == app && c.consumer_org_id == w.consumers[1]).collect());
    assert_eq!(ids(&usage::list_calls(&mut c, &f, None, all).await.unwrap()), want);

    // Who sees what: a consumer its own calls, a provider the calls to its APIs, a stranger
    // nothing, and an id search never crosses those lines.
    let mine = usage::list_calls(&mut c, &CallFilter::default(), Some(&[w.consumers[0]]), all).await.unwrap();
    assert_eq!(ids(&mine), newest_first(w.calls.iter().filter(|c| c.consumer_org_id == w.consumers[0]).collect()));
    let theirs = usage::list_calls(&mut c, &CallFilter::default(), Some(&[w.provider]), all).await.unwrap();
    assert_eq!(ids(&theirs), newest_first(w.calls.iter().filter(|c| c.api_id == w.api).collect()));
    assert!(theirs.iter().all(|l| l.call.api_id != w.other_api));
    let f = CallFilter { request_id: Some(w.calls[0].request_id), ..Default::default() }; // to `maps`
    assert!(usage::list_calls(&mut c, &f, Some(&[w.provider]), all).await.unwrap().is_empty());
    assert!(usage::list_calls(&mut c, &f, Some(&[w.consumers[0]]), all).await.unwrap().is_empty());
    assert_eq!(usage::list_calls(&mut c, &f, Some(&[w.consumers[1]]), all).await.unwrap().len(), 1);
    assert!(usage::list_calls(&mut c, &CallFilter::default(), Some(&[]), all).await.unwrap().is_empty());

    // Calls of a subscription, and retention by whole seconds.
    let sub = SubscriptionId::from_uuid(uuid::Uuid::from_u128(1));
    let mut want: Vec<(uuid::Uuid, bool)> =
        w.calls.iter().filter(|c| c.subscription_id == sub).map(|c| (c.request_id, c.orphaned)).collect();
    want.sort();
    assert_eq!(usage::calls_of_subscription(&mut c, sub).await.unwrap(), want);
    let cut = BASE + 300_000;
    let gone = rollups::prune_request_log(&mut c, cut).await.unwrap();
    assert_eq!(gone, w.calls.iter().filter(|c| c.at_millis < cut).count() as u64);
    let left = usage::list_calls(&mut c, &CallFilter::default(), None, all).await.unwrap();
    assert_eq!(ids(&left), newest_first(w.calls.iter().filter(|c| c.at_millis >= cut).collect()));
    let f = CallFilter { client_request_id: Some("client-1".into()), ..Default::default() };
    assert!(usage::list_calls(&mut c, &f, None, all).await.unwrap().is_empty(), "pruned with its calls");

    // A request log written before pages (a row per call) is moved into pages by `migrate`.
    let old = call(w.api, w.consumers[0], BASE + 500_123, 7);
    sqlx::query(
        "INSERT INTO usage_events (request_id, at, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id, \
         operation, status, latency_micros, bytes_in, bytes_out, orphaned, units, client_request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(old.request_id.to_string())
    .bind(old.at_millis)
    .bind(old.subscription_id.to_string())
    .bind(old.api_id.to_string())
    .bind(old.version_id.to_string())
    .bind(old.app_id.to_string())
    .bind(old.consumer_org_id.to_string())
    .bind(old.plan_id.to_string())
    .bind(old.operation.clone())
    .bind(old.status)
    .bind(old.latency_micros)
    .bind(old.bytes_in)
    .bind(old.bytes_out)
    .bind(i64::from(old.orphaned))
    .bind(old.units)
    .bind(old.client_request_id.clone())
    .execute(&mut *c)
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let f = CallFilter { client_request_id: old.client_request_id.clone(), ..Default::default() };
    let found = usage::list_calls(&mut c, &f, None, all).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].call, old);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_events").fetch_one(&mut *c).await.unwrap();
    assert_eq!(left, 0);

    // A round of many client ids (statements of every size), one of them sent twice in a second.
    let bulk: Vec<CallRecord> = (0..150)
        .map(|i| CallRecord {
            client_request_id: Some(format!("bulk-{}", i.min(148))),
            ..call(w.api, w.consumers[0], BASE + 550_000 + i as i64 * 10, 1)
        })
        .collect();
    usage::insert_calls(&mut c, &bulk.iter().collect::<Vec<_>>()).await.unwrap();
    for (id, n) in [("bulk-0", 1), ("bulk-63", 1), ("bulk-64", 1), ("bulk-147", 1), ("bulk-148", 2)] {
        let f = CallFilter { client_request_id: Some(id.into()), ..Default::default() };
        assert_eq!(usage::list_calls(&mut c, &f, None, all).await.unwrap().len(), n, "{id}");
    }
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM request_log_client_ids WHERE client_request_id LIKE 'bulk-%'")
            .fetch_one(&mut *c)
            .await
            .unwrap();
    assert_eq!(rows, 149);
}

#[tokio::test]
async fn request_log_on_sqlite() {
    let (store, _dir) = sqlite().await;
    exercise(&store).await;
}

#[tokio::test]
async fn request_log_on_postgres() {
    exercise(&postgres().await).await;
}
