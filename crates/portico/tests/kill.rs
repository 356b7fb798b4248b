//! The metering promise under SIGKILL: load through the real binary to an upstream that notes
//! every call it serves; the gateway is killed and restarted three times mid-load; after it
//! drains, every call the upstream served is in the store exactly once — metered, or orphaned
//! when the kill cut it off — and no call was metered that the upstream did not serve.

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
    async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let api =
                http.get(format!("{}/readyz", self.api)).send().await.map(|r| r.status().is_success()).unwrap_or(false);
            let gw = http
                .get(format!("{}/readyz", self.gateway))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if api && gw {
                return;
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

async fn upstream(seen: Arc<Mutex<Vec<String>>>) -> String {
    let app = axum::Router::new().fallback(move |h: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            if let Some(id) = h.get("x-portico-request-id").and_then(|v| v.to_str().ok()) {
                seen.lock().unwrap().push(id.to_owned());
            }
            "served"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

async fn kill_test(database: Option<String>) {
    portico::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (api_port, gw_port) = (free_port(), free_port());
    let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into(), dir.path().display().to_string()];
    args.extend([
        "--api-addr".into(),
        format!("127.0.0.1:{api_port}"),
        "--gateway-addr".into(),
        format!("127.0.0.1:{gw_port}"),
    ]);
    let mut store_args = vec!["--data-dir".to_string(), dir.path().display().to_string()];
    if let Some(db) = &database {
        args.extend(["--database".into(), db.clone()]);
        store_args.extend(["--database".into(), db.clone()]);
    }
    let p = Portico {
        args,
        api: format!("http://127.0.0.1:{api_port}"),
        gateway: format!("http://127.0.0.1:{gw_port}"),
        log: dir.path().join("portico.log"),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = upstream(seen.clone()).await;

    let mut child = p.start();
    p.wait_ready(&http).await;
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
    let sub_id: portico_core::ids::SubscriptionId = subs["items"][0]["id"].as_str().unwrap().parse().unwrap();
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

    // Load: 8 clients calling as fast as they can, through kills and restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (http, url, key, stop) = (http.clone(), format!("{}/hits/v1/hit", p.gateway), key.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).header("X-Api-Key", &key).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            ok
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = p.start();
        p.wait_ready(&http).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok_responses = 0;
    for l in load {
        ok_responses += l.await.unwrap();
    }
    // A clean stop drains, seals and ships the rest.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success(), "log: {}", std::fs::read_to_string(&p.log).unwrap_or_default());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(left.is_empty(), "every journal segment was shipped and removed: {left:?}");

    let url = database.clone().unwrap_or_else(|| format!("sqlite://{}", dir.path().join("portico.db").display()));
    let store = portico_store::Store::connect(&url).await.unwrap();
    let mut c = store.conn().await.unwrap();
    let calls = portico_store::usage::calls_of_subscription(&mut c, sub_id).await.unwrap();
    let days = portico_store::usage::daily(&mut c, sub_id, "2000-01-01", "2999-12-31").await.unwrap();
    let metered: HashSet<String> = calls.iter().filter(|(_, o)| !o).map(|(id, _)| id.to_string()).collect();
    let orphaned: HashSet<String> = calls.iter().filter(|(_, o)| *o).map(|(id, _)| id.to_string()).collect();
    let served: Vec<String> = seen.lock().unwrap().clone();
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
    assert!(metered.len() as u64 >= ok_responses, "every 2xx a client got is metered");
    assert!(metered.len() > 100, "the load was real: {} metered", metered.len());
    eprintln!(
        "kill test: served {}, metered {}, orphaned {} ({} of them served), client 2xx {}",
        served_set.len(),
        metered.len(),
        orphaned.len(),
        orphaned_served,
        ok_responses
    );
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
