//! The journal and the shipper against a real SQLite store: calls are counted once, a dead
//! writer's unfinished calls are orphaned, shipping twice changes nothing.

use portico_core::ids::*;
use portico_core::usage::{UsageEvent, UsageSink};
use portico_metering::{Journal, Shipper};
use portico_store::Store;

async fn store(dir: &std::path::Path) -> Store {
    let s = Store::connect(&format!("sqlite://{}", dir.join("t.db").display())).await.unwrap();
    s.migrate().await.unwrap();
    s
}

fn event(sub: SubscriptionId, status: u16) -> UsageEvent {
    UsageEvent {
        request_id: uuid::Uuid::new_v4(),
        at: time::OffsetDateTime::now_utc(),
        api_id: ApiId::new(),
        version_id: VersionId::new(),
        app_id: AppId::new(),
        subscription_id: sub,
        consumer_org_id: OrgId::new(),
        plan_id: PlanId::new(),
        operation: None,
        status,
        latency_micros: 100,
        bytes_in: 1,
        bytes_out: 2,
        units: 1,
        client_request_id: None,
    }
}

async fn totals(store: &Store, sub: SubscriptionId) -> (i64, i64) {
    let mut c = store.conn().await.unwrap();
    let days = portico_store::usage::daily(&mut c, sub, "2000-01-01", "2999-12-31").await.unwrap();
    (days.iter().map(|d| d.calls).sum(), days.iter().map(|d| d.orphaned).sum())
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
        .count()
}

#[tokio::test]
async fn calls_are_shipped_once_and_a_dead_writers_open_calls_are_orphaned() {
    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let store = store(tmp.path()).await;
    let sub = SubscriptionId::new();

    // A first process: 3 calls end, 1 is cut off mid-call, 1 refused (no begin).
    let first = Journal::open(&jdir, 1 << 20).unwrap();
    for _ in 0..3 {
        let e = event(sub, 200);
        let t = first.begin(&e);
        first.end(t, e);
    }
    let cut = event(sub, 0);
    first.begin(&cut);
    first.end(0, event(sub, 429));
    assert!(Journal::open(&jdir, 1 << 20).is_err(), "one live journal per directory");
    drop(first); // the process dies: no close, no seal

    // The next process ships everything the dead one wrote, and reports the orphan.
    let second = Journal::open(&jdir, 1 << 20).unwrap();
    let mut shipper = Shipper::new(&jdir, second.instance(), store.clone());
    let shipped = shipper.ship_once().await.unwrap();
    assert_eq!((shipped.calls, shipped.orphaned, shipped.segments_done), (4, 1, 1));
    assert_eq!(totals(&store, sub).await, (4, 1));
    let mut c = store.conn().await.unwrap();
    let calls = portico_store::usage::calls_of_subscription(&mut c, sub).await.unwrap();
    assert!(calls.contains(&(cut.request_id, true)));
    drop(c);

    // The live journal's calls ship as they end; a begin waits for its end.
    let e = event(sub, 503);
    let t = second.begin(&e);
    assert_eq!(shipper.ship_once().await.unwrap().calls, 0);
    second.end(t, e);
    assert_eq!(shipper.ship_once().await.unwrap().calls, 1);
    assert_eq!(totals(&store, sub).await, (5, 1));

    // A shipper that lost its progress (a restart before it noted it) re-reads: nothing doubles.
    let mut again = Shipper::new(&jdir, second.instance(), store.clone());
    let s = again.ship_once().await.unwrap();
    assert_eq!((s.calls, s.duplicates), (0, 1));
    assert_eq!(totals(&store, sub).await, (5, 1));

    // On close the segment is sealed, shipped to the end and removed.
    second.close();
    shipper.ship_once().await.unwrap();
    assert_eq!(segments(&jdir), 0);
}

#[tokio::test]
async fn segments_rotate_and_every_one_is_shipped() {
    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let store = store(tmp.path()).await;
    let sub = SubscriptionId::new();
    let j = Journal::open(&jdir, 4096).unwrap();
    // A long call spans several rotations: its end still goes to its begin's segment.
    let long = event(sub, 200);
    let long_token = j.begin(&long);
    for _ in 0..200 {
        let e = event(sub, 200);
        let t = j.begin(&e);
        j.end(t, e);
    }
    assert!(segments(&jdir) > 3);
    j.end(long_token, long);
    let mut shipper = Shipper::new(&jdir, j.instance(), store.clone());
    shipper.ship_once().await.unwrap();
    j.close();
    shipper.ship_once().await.unwrap();
    assert_eq!(totals(&store, sub).await, (201, 0));
    assert_eq!(segments(&jdir), 0);
}

#[tokio::test]
async fn while_the_store_is_down_the_journal_keeps_the_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let store = store(tmp.path()).await;
    let sub = SubscriptionId::new();
    let j = Journal::open(&jdir, 1 << 20).unwrap();
    let e = event(sub, 200);
    let t = j.begin(&e);
    j.end(t, e);
    store.close().await;
    let mut shipper = Shipper::new(&jdir, j.instance(), store.clone());
    assert!(shipper.ship_once().await.is_err());
    // The lag grows round after failed round: the store never caught up.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(shipper.ship_once().await.is_err());
    assert!(shipper.lag() >= std::time::Duration::from_millis(150), "{:?}", shipper.lag());
    // Back up (a new pool on the same database): the same calls ship, once.
    let store = Store::connect(&format!("sqlite://{}", tmp.path().join("t.db").display())).await.unwrap();
    let mut shipper = Shipper::new(&jdir, j.instance(), store.clone());
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let before = shipper.lag();
    assert_eq!(shipper.ship_once().await.unwrap().calls, 1);
    assert_eq!(totals(&store, sub).await, (1, 0));
    // Everything journaled is in the store: the lag starts again from that round.
    assert!(shipper.lag() < before, "{:?} then {:?}", before, shipper.lag());
}

#[tokio::test]
async fn a_full_backlog_stops_new_calls_until_the_shipper_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal"), 64 << 20).unwrap();
    assert!(journal.accepting(), "unbounded by default");
    journal.set_max_backlog(1 << 20);
    let sub = SubscriptionId::new();
    while journal.accepting() {
        let e = event(sub, 200);
        let t = journal.begin(&e);
        journal.end(t, e);
    }
    assert!(journal.backlog() >= 1 << 20);
    // The store is reachable: one shipping round drains it and calls are accepted again.
    let store = store(dir.path()).await;
    let mut shipper = Shipper::new(journal.dir(), journal.instance(), store.clone()).with_journal(journal.clone());
    let shipped = shipper.ship_once().await.unwrap();
    assert!(shipped.calls > 1000, "{shipped:?}");
    let mut rounds = 0;
    while !journal.accepting() && rounds < 100 {
        shipper.ship_once().await.unwrap();
        rounds += 1;
    }
    assert!(journal.accepting(), "backlog {} after {rounds} rounds", journal.backlog());
}

/// A TCP proxy in front of PostgreSQL that, once armed, passes on the first `COMMIT` it sees
/// and then cuts the connection before the server's answer can come back: the transaction
/// lands, and the client is told the connection failed.
async fn commit_cutter(upstream: String, armed: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = l.accept().await.unwrap();
            let (upstream, armed) = (upstream.clone(), armed.clone());
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
                loop {
                    tokio::select! {
                        n = client.read(&mut a) => {
                            let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                            if server.write_all(&a[..n]).await.is_err() { return; }
                            if a[..n].windows(6).any(|w| w == b"COMMIT") && armed.swap(false, Ordering::SeqCst) {
                                // Let the server commit, then drop both sides unanswered.
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                return;
                            }
                        }
                        n = server.read(&mut b) => {
                            let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                            if client.write_all(&b[..n]).await.is_err() { return; }
                        }
                    }
                }
            });
        }
    });
    port
}

/// The commit of a shipping round lands but its answer is lost: the shipper sees an error,
/// and the next round must learn from the store what landed instead of shipping it again.
#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_not_shipped_twice() {
    let direct = portico_store::testing::fresh_postgres_database().await.unwrap_or_else(|e| panic!("{e}"));
    let (scheme_user, rest) = direct.split_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = commit_cutter(hostport.to_owned(), armed.clone()).await;
    let reference = Store::connect(&direct).await.unwrap();
    reference.migrate().await.unwrap();
    // In clear, so that the proxy can see the COMMIT.
    let sep = if db.contains('?') { '&' } else { '?' };
    let via_cutter = Store::connect(&format!("{scheme_user}@127.0.0.1:{port}/{db}{sep}sslmode=disable")).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let j = Journal::open(&jdir, 1 << 20).unwrap();
    let sub = SubscriptionId::new();
    for _ in 0..5 {
        let e = event(sub, 200);
        let t = j.begin(&e);
        j.end(t, e);
    }
    // A first round ships, so the shipper knows how far the segment went.
    let mut shipper = Shipper::new(&jdir, j.instance(), via_cutter.clone());
    assert_eq!(shipper.ship_once().await.unwrap().calls, 5);
    for _ in 0..5 {
        let e = event(sub, 200);
        let t = j.begin(&e);
        j.end(t, e);
    }
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(shipper.ship_once().await.is_err(), "the round's answer was cut off");
    assert!(!armed.load(std::sync::atomic::Ordering::SeqCst), "the proxy cut a COMMIT");
    assert_eq!(totals(&reference, sub).await, (10, 0), "and that commit landed");

    // The next rounds (the pool reconnects) ship nothing again.
    let mut shipped = None;
    for _ in 0..5 {
        if let Ok(s) = shipper.ship_once().await {
            shipped = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(shipped.expect("shipping resumes").calls, 0);
    assert_eq!(totals(&reference, sub).await, (10, 0), "no call counted twice");
    let mut c = reference.conn().await.unwrap();
    let f = portico_store::rollups::Filter { from_millis: 0, to_millis: i64::MAX, ..Default::default() };
    let rows =
        portico_store::rollups::read(&mut c, portico_store::rollups::Granularity::Minute, &f, None).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.calls).sum::<i64>(), 10, "nor in the minute rollups");
}

fn journal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Group commit: deferred records wait in the thread's buffer and are written together by one
/// flush; a record written at once writes the pending ones first (a call's begin never follows
/// its end); a deferred end keeps its segment from being sealed until it is written.
#[tokio::test(flavor = "current_thread")]
async fn deferred_records_are_written_together_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let store = store(tmp.path()).await;
    let sub = SubscriptionId::new();
    let j = Journal::open(&jdir, 1 << 20).unwrap();
    let mut shipper = Shipper::new(&jdir, j.instance(), store.clone());

    // Three calls begin together: nothing reaches the file until the flush, then all of it.
    let calls: Vec<UsageEvent> = (0..3).map(|_| event(sub, 200)).collect();
    let begun: Vec<(u64, u64)> = calls.iter().map(|e| j.begin_deferred(e)).collect();
    assert!(j.pending());
    assert_eq!(journal_bytes(&jdir), 0, "deferred begins wait in the buffer");
    j.flush(begun[0].1);
    assert!(!j.pending());
    let after_begins = journal_bytes(&jdir);
    assert!(after_begins > 0);
    // The others' tickets are written already: flushing them writes nothing more.
    j.flush(begun[2].1);
    assert_eq!(journal_bytes(&jdir), after_begins);

    // Their ends are deferred too; until written, the calls are in flight, not shipped.
    let mut tickets = Vec::new();
    for (e, (token, _)) in calls.iter().zip(&begun) {
        tickets.push(j.end_deferred(*token, e.clone()));
    }
    assert_eq!(shipper.ship_once().await.unwrap().calls, 0);
    j.flush(u64::MAX);
    assert_eq!(shipper.ship_once().await.unwrap().calls, 3);

    // A deferred begin followed by an immediate end (the call dropped before it was forwarded):
    // one write, begin first, so the call counts once and is not orphaned.
    let dropped = event(sub, 499);
    let (token, _) = j.begin_deferred(&dropped);
    j.end(token, dropped);
    assert!(!j.pending());

    // Closing waits for a deferred end: the seal comes after it.
    let late = event(sub, 200);
    let token = j.begin(&late);
    j.end_deferred(token, late);
    j.close();
    assert_eq!(shipper.ship_once().await.unwrap().segments_done, 0, "not sealed while an end waits");
    j.flush(u64::MAX);
    shipper.ship_once().await.unwrap();
    assert_eq!(totals(&store, sub).await, (5, 0));
    assert_eq!(segments(&jdir), 0);
}

#[tokio::test]
async fn a_begun_call_is_shipped_with_its_ends_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let store = store(tmp.path()).await;
    let sub = SubscriptionId::new();
    let j = Journal::open(&jdir, 1 << 20).unwrap();
    // What is known when the call is forwarded, then how it went.
    let begun = UsageEvent { status: 0, latency_micros: 0, bytes_in: 0, bytes_out: 0, ..event(sub, 0) };
    let token = j.begin(&begun);
    j.end(token, UsageEvent { status: 503, latency_micros: 4_000, bytes_in: 7, bytes_out: 900, ..begun.clone() });
    // And one refused before forwarding: its end is the whole record.
    j.end(0, UsageEvent { status: 429, latency_micros: 50, bytes_in: 3, bytes_out: 80, ..event(sub, 429) });
    j.close();
    let mut shipper = Shipper::new(&jdir, j.instance(), store.clone());
    assert_eq!(shipper.ship_once().await.unwrap().calls, 2);
    let mut c = store.conn().await.unwrap();
    let days = portico_store::usage::daily(&mut c, sub, "2000-01-01", "2999-12-31").await.unwrap();
    let d = &days[0];
    assert_eq!((d.calls, d.server_errors, d.client_errors, d.success), (2, 1, 1, 0));
    assert_eq!((d.bytes_in, d.bytes_out, d.latency_micros_sum), (10, 980, 4_050));
}

#[tokio::test]
async fn each_writing_thread_appends_to_a_segment_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let jdir = tmp.path().join("journal");
    let store = store(tmp.path()).await;
    let sub = SubscriptionId::new();
    let j = Journal::open(&jdir, 1 << 20).unwrap();
    let jr = &j;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(move || {
                for _ in 0..50 {
                    let e = event(sub, 200);
                    let t = jr.begin(&e);
                    jr.end(t, e);
                }
            });
        }
    });
    assert_eq!(segments(&jdir), 4, "the opening thread's, and one for each writing thread");
    // A call that ends on another thread than it began on: its end joins its begin's segment.
    let e = event(sub, 201);
    let t = j.begin(&e);
    std::thread::scope(|s| {
        s.spawn(move || jr.end(t, e));
    });
    assert_eq!(segments(&jdir), 4, "no segment for a thread that only ends a call");
    let mut shipper = Shipper::new(&jdir, j.instance(), store.clone());
    shipper.ship_once().await.unwrap();
    j.close();
    shipper.ship_once().await.unwrap();
    assert_eq!(totals(&store, sub).await, (151, 0));
    assert_eq!(segments(&jdir), 0, "every segment sealed, shipped and removed");
}
