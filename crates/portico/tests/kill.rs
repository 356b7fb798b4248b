//! The metering promise under SIGKILL: load through the real binary to an upstream that notes
//! every call it serves; the gateway is killed and restarted three times mid-load; after it
//! drains, every call the upstream served is in the store exactly once — metered, or orphaned
//! when the kill cut it off — and no call was metered that the upstream did not serve.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Portico {
    args: Vec<String>,
    api: String,
    gateway: String,
    log: std::path::PathBuf,
}

impl Portico {
    fn start(&self) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_portico")).args(&self.args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }
    /// Waits until both listeners answer; `Err(log)` when the process exited first.
    async fn wait_ready(&self, http: &reqwest::Client, child: &mut Child) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            let api =
                http.get(format!("{}/readyz", self.api)).send().await.map(|r| r.status().is_success()).unwrap_or(false);
            let gw = http
                .get(format!("{}/readyz", self.gateway))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if api && gw {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "portico did not become ready; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// With `journal` (the gateway's journal directory), the upstream also looks there for each
/// call's begin record (its id's 16 bytes) before it answers, and notes the calls it does not
/// find in `unjournaled`.
async fn upstream(
    seen: Arc<Mutex<Vec<String>>>,
    journal: Option<std::path::PathBuf>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let unjournaled = Arc::new(Mutex::new(Vec::new()));
    let missing = unjournaled.clone();
    let app = axum::Router::new().fallback(move |h: axum::http::HeaderMap| {
        let (seen, journal, missing) = (seen.clone(), journal.clone(), missing.clone());
        async move {
            if let Some(id) = h.get("x-portico-request-id").and_then(|v| v.to_str().ok()) {
                seen.lock().unwrap().push(id.to_owned());
                if let Some(dir) = journal {
                    let raw = *uuid::Uuid::parse_str(id).unwrap().as_bytes();
                    let found = std::fs::read_dir(&dir)
                        .unwrap()
                        .flatten()
                        .any(|f| memchr::memmem::find(&std::fs::read(f.path()).unwrap_or_default(), &raw).is_some());
                    if !found {
                        missing.lock().unwrap().push(id.to_owned());
                    }
                }
            }
            "served"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, unjournaled)
}

struct Harness {
    p: Portico,
    http: reqwest::Client,
    key: String,
    sub_id: portico_core::ids::SubscriptionId,
    seen: Arc<Mutex<Vec<String>>>,
    /// Calls the upstream served before their begin record was in the journal (checked only
    /// when `setup` was asked to).
    unjournaled: Arc<Mutex<Vec<String>>>,
    child: Child,
    dir: tempfile::TempDir,
    /// Where the test reads the store from (not through any proxy).
    store_url: String,
}

/// Starts Portico on `database` (SQLite in the data dir when `None`), seeds a provider's API
/// over the counting upstream, a consumer's app subscribed to it and a key.
async fn setup(database: Option<String>, store_url: Option<String>) -> Harness {
    setup_checked(database, store_url, false).await
}

async fn setup_checked(database: Option<String>, store_url: Option<String>, check_journal: bool) -> Harness {
    portico::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let mut store_args = vec!["--data-dir".to_string(), dir.path().display().to_string()];
    if let Some(db) = &database {
        store_args.extend(["--database".into(), db.clone()]);
    }
    let log = common::test_log_path("kill").unwrap_or_else(|| dir.path().join("portico.log"));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (up, unjournaled) = upstream(seen.clone(), check_journal.then(|| dir.path().join("journal"))).await;

    // The ports are chosen free and then bound by the child: another test may take one in
    // between, so a start that finds its port taken is tried again on new ones.
    let mut attempt = 0;
    let (p, child) = loop {
        attempt += 1;
        let (api_port, gw_port) = (free_port(), free_port());
        let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into(), dir.path().display().to_string()];
        args.extend([
            "--api-addr".into(),
            format!("127.0.0.1:{api_port}"),
            "--gateway-addr".into(),
            format!("127.0.0.1:{gw_port}"),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            // The counting upstream runs on loopback.
            "--outbound-allow-cidrs".into(),
            "127.0.0.0/8".into(),
        ]);
        if let Some(db) = &database {
            args.extend(["--database".into(), db.clone()]);
        }
        let p = Portico {
            args,
            api: format!("http://127.0.0.1:{api_port}"),
            gateway: format!("http://127.0.0.1:{gw_port}"),
            log: log.clone(),
        };
        let mut child = p.start();
        match p.wait_ready(&http, &mut child).await {
            Ok(()) => break (p, child),
            Err(log) if attempt < 5 && log.contains("already in use") => continue,
            Err(log) => panic!("portico exited before it was ready; log: {log}"),
        }
    };
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["admin", "create", "--email", "ops@example.com", "--password", "ops password 123"])
        .args(&store_args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_owned();
    let doc = format!(
        "providers:\n  - slug: prov\n    name: P\n    apis:\n      - slug: hits\n        name: Hits\n        versions:\n          - version: 1.0.0\n            state: published\n            upstream_url: {up}\n            openapi: {{openapi: 3.1.0, info: {{title: Hits, version: 1.0.0}}, paths: {{/hit: {{get: {{responses: {{'200': {{description: ok}}}}}}}}}}}}\n        plans:\n          - slug: open\n            name: Open\n            pricing: {{type: free}}\nconsumers:\n  - slug: cons\n    name: C\n    apps:\n      - slug: load\n        name: Load\n        subscriptions: [{{api: hits, plan: open}}]\n"
    );
    let file = dir.path().join("m.yaml");
    std::fs::write(&file, doc).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["apply", "-f"])
        .arg(&file)
        .args(["--server", &p.api, "--token", &token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let apps: serde_json::Value =
        http.get(format!("{}/api/v1/apps", p.api)).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let app_id = apps["items"][0]["id"].as_str().unwrap().to_owned();
    let subs: serde_json::Value = http
        .get(format!("{}/api/v1/subscriptions?app_id={app_id}", p.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sub_id = subs["items"][0]["id"].as_str().unwrap().parse().unwrap();
    let key: serde_json::Value = http
        .post(format!("{}/api/v1/apps/{app_id}/keys", p.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let store_url =
        store_url.or(database).unwrap_or_else(|| format!("sqlite://{}", dir.path().join("portico.db").display()));
    Harness { p, http, key, sub_id, seen, unjournaled, child, dir, store_url }
}

/// 8 clients calling as fast as they can until `stop`; returns their 2xx count.
fn start_load(h: &Harness, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..8)
        .map(|_| {
            let (http, url, key, stop) =
                (h.http.clone(), format!("{}/hits/v1/hit", h.p.gateway), h.key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).header("X-Api-Key", &key).send().await {
                        Ok(r) if r.status().is_success() => ok += 1,
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                ok
            })
        })
        .collect()
}

/// Stops Portico cleanly and checks the store against what the upstream served.
async fn finish_and_check(mut h: Harness, ok_responses: u64, label: &str) {
    Command::new("kill").arg("-TERM").arg(h.child.id().to_string()).status().unwrap();
    assert!(h.child.wait().unwrap().success(), "log: {}", std::fs::read_to_string(&h.p.log).unwrap_or_default());
    let left: Vec<_> = std::fs::read_dir(h.dir.path().join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(left.is_empty(), "every journal segment was shipped and removed: {left:?}");

    let store = portico_store::Store::connect(&h.store_url).await.unwrap();
    let mut c = store.conn().await.unwrap();
    let calls = portico_store::usage::calls_of_subscription(&mut c, h.sub_id).await.unwrap();
    let days = portico_store::usage::daily(&mut c, h.sub_id, "2000-01-01", "2999-12-31").await.unwrap();
    let metered: HashSet<String> = calls.iter().filter(|(_, o)| !o).map(|(id, _)| id.to_string()).collect();
    let orphaned: HashSet<String> = calls.iter().filter(|(_, o)| *o).map(|(id, _)| id.to_string()).collect();
    let served: Vec<String> = h.seen.lock().unwrap().clone();
    let served_set: HashSet<String> = served.iter().cloned().collect();

    assert_eq!(served.len(), served_set.len(), "the upstream saw no call twice");
    assert_eq!(metered.len() + orphaned.len(), calls.len(), "no request id is stored twice");
    let lost: Vec<&String> = served_set.iter().filter(|id| !metered.contains(*id) && !orphaned.contains(*id)).collect();
    assert!(lost.is_empty(), "{} served calls were neither metered nor orphaned", lost.len());
    assert!(metered.is_subset(&served_set), "every metered call was served");
    let orphaned_served = orphaned.intersection(&served_set).count();
    assert_eq!(
        served_set.len(),
        metered.len() + orphaned_served,
        "served = metered + orphaned (that reached the upstream)"
    );
    assert_eq!(days.iter().map(|d| d.calls).sum::<i64>(), metered.len() as i64, "the rollups agree with the calls");
    assert_eq!(days.iter().map(|d| d.orphaned).sum::<i64>(), orphaned.len() as i64);
    // The minute and day rollups (what analytics and quotas read) agree too: every metered
    // call counted once, with its unit; every orphan once, never billed.
    for g in [portico_store::rollups::Granularity::Minute, portico_store::rollups::Granularity::Day] {
        let f = portico_store::rollups::Filter { from_millis: 0, to_millis: i64::MAX, ..Default::default() };
        let rows: Vec<_> = portico_store::rollups::read(&mut c, g, &f, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.subscription_id == h.sub_id)
            .collect();
        let sum = |k: fn(&portico_store::rollups::Rollup) -> i64| rows.iter().map(k).sum::<i64>();
        assert_eq!(sum(|r| r.calls), metered.len() as i64, "{g:?} rollups count every metered call once");
        assert_eq!(
            sum(|r| r.units),
            sum(|r| r.calls - r.refused),
            "{g:?}: one billable unit per call the upstream answered"
        );
        assert_eq!(sum(|r| r.orphaned), orphaned.len() as i64, "{g:?} rollups count every orphan once");
        assert_eq!(rows.iter().map(|r| r.sketch.count() as i64).sum::<i64>(), metered.len() as i64, "{g:?} sketches");
    }
    assert!(metered.len() as u64 >= ok_responses, "every 2xx a client got is metered");
    assert!(metered.len() > 100, "the load was real: {} metered", metered.len());
    eprintln!(
        "{label}: served {}, metered {}, orphaned {} ({} of them served), client 2xx {}",
        served_set.len(),
        metered.len(),
        orphaned.len(),
        orphaned_served,
        ok_responses
    );
}

async fn kill_test(database: Option<String>) {
    let mut h = setup(database, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&h, stop.clone());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        h.child.kill().unwrap(); // SIGKILL
        h.child.wait().unwrap();
        h.child = h.p.start();
        if let Err(log) = h.p.wait_ready(&h.http, &mut h.child).await {
            panic!("portico exited before it was ready after a restart; log: {log}");
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for l in load {
        ok += l.await.unwrap();
    }
    finish_and_check(h, ok, "kill test").await;
}

/// A TCP proxy the test owns in front of PostgreSQL, that it can cut and restore (the
/// machine's shared server is never stopped).
struct CutProxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CutProxy {
    async fn start(target: String) -> CutProxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (u, cs) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else { continue };
                if !u.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let target = target.clone();
                cs.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        CutProxy { port, up, conns }
    }
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The begin record of a call is in the journal before the call reaches its upstream (the
/// gateway's workers write the records of a burst of calls together, just before the first
/// of them goes out): under load from eight clients, the upstream finds every call's id in
/// the journal's files when the call arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_reaches_the_upstream_before_its_begin_record_is_in_the_journal() {
    let h = setup_checked(None, None, true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&h, stop.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for l in load {
        ok += l.await.unwrap();
    }
    // `finish_and_check` wants more than 100 metered calls.
    assert!(ok > 100, "only {ok} calls were served in 2.5 s: too few to tell");
    let unjournaled = h.unjournaled.lock().unwrap().clone();
    assert!(
        unjournaled.is_empty(),
        "{} of {ok} calls reached the upstream before their begin record: {unjournaled:?}",
        unjournaled.len()
    );
    finish_and_check(h, ok, "begin before forward").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_call_and_counts_none_twice_on_sqlite() {
    kill_test(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_call_and_counts_none_twice_on_postgres() {
    let db = portico_store::testing::fresh_postgres_database().await.unwrap_or_else(|e| panic!("{e}"));
    kill_test(Some(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_the_gateway_serves_and_nothing_is_lost() {
    let direct = portico_store::testing::fresh_postgres_database().await.unwrap_or_else(|e| panic!("{e}"));
    let (hostport, db) = direct
        .strip_prefix("postgres://postgres@")
        .and_then(|r| r.split_once('/'))
        .expect("a postgres://postgres@HOST:PORT/DB url");
    let proxy = CutProxy::start(hostport.to_owned()).await;
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port);
    let h = setup(Some(via_proxy), Some(direct.clone())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&h, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let served_before = h.seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let served_during = h.seen.lock().unwrap().len() - served_before;
    assert!(served_during > 100, "the gateway kept serving while the database was unreachable ({served_during} calls)");
    let api_ready = h.http.get(format!("{}/readyz", h.p.api)).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    assert_ne!(api_ready, 200, "the API reports that its database is unreachable");
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for l in load {
        ok += l.await.unwrap();
    }
    finish_and_check(h, ok, "store outage").await;
}

/// SQLite's form of an unavailable store: another process holds the database's write lock (a
/// backup tool, a long migration, an operator's open transaction) for a while. The gateway
/// keeps serving from its snapshot, the journal takes the calls, nothing reaches the store
/// while the lock is held, and everything is shipped once, after it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_sqlite_is_locked_the_gateway_serves_and_nothing_is_lost() {
    use sqlx::Connection;
    let h = setup(None, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&h, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut lock = sqlx::SqliteConnection::connect(&h.store_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut lock).await.unwrap();
    let count = "SELECT COALESCE(SUM(calls), 0) FROM request_log_pages";
    let stored_at_lock: i64 = sqlx::query_scalar(count).fetch_one(&mut lock).await.unwrap();
    let served_before = h.seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let served_during = h.seen.lock().unwrap().len() - served_before;
    assert!(served_during > 100, "the gateway kept serving while the store was locked ({served_during} calls)");
    let stored: i64 = sqlx::query_scalar(count).fetch_one(&mut lock).await.unwrap();
    assert_eq!(stored, stored_at_lock, "nothing was written while the lock was held");
    let segments = std::fs::read_dir(h.dir.path().join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .count();
    assert!(segments > 0, "the calls wait in the journal");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for l in load {
        ok += l.await.unwrap();
    }
    finish_and_check(h, ok, "sqlite locked").await;
}
