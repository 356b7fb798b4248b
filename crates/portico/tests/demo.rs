//! `portico serve --demo` as a newcomer runs it: the real binary, a fresh data dir, then the
//! printed gateway call returns the demo API's answer; SIGTERM stops it cleanly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn serve_demo_answers_the_printed_call() {
    portico::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = common::test_log_path("demo").unwrap_or_else(|| dir.path().join("stderr.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "serve",
            "--demo",
            "--gateway-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--access-log",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let info_path = dir.path().join("demo.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let info: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(&info_path)
            && let Ok(v) = serde_json::from_slice(&bytes)
        {
            break v;
        }
        assert!(Instant::now() < deadline, "demo.json did not appear");
        assert!(child.try_wait().unwrap().is_none(), "portico exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for k in ["portal_url", "api_url", "gateway_url", "admin_email", "admin_password", "consumer_api_key", "curl"] {
        assert!(info[k].as_str().is_some_and(|s| !s.is_empty()), "demo.json has {k}: {info}");
    }
    let key = info["consumer_api_key"].as_str().unwrap();
    let curl = info["curl"].as_str().unwrap();
    assert!(curl.contains(key));
    let url = curl.rsplit('\'').nth(1).unwrap();
    let http = reqwest::Client::new();
    let r = http.get(url).header("X-Api-Key", key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["city"], "Lisbon", "{body}");
    assert_eq!(body["served_for"]["consumer"], "globex");

    // Connections are spread over the gateway's workers: eight opened at once (each its own
    // client, kept alive) leave no worker more than one connection ahead of another.
    let clients: Vec<reqwest::Client> = (0..8).map(|_| reqwest::Client::new()).collect();
    let mut calls = tokio::task::JoinSet::new();
    for c in &clients {
        let (c, url, key) = (c.clone(), url.to_owned(), key.to_owned());
        calls.spawn(async move { c.get(url).header("X-Api-Key", key).send().await.unwrap().status() });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let text = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap().text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let per_worker: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "portico_gateway_connections")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => -1.0,
        })
        .collect();
    let workers = std::thread::available_parallelism().unwrap().get();
    assert_eq!(per_worker.len(), workers, "one gauge per worker: {text}");
    let (min, max) = per_worker.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(per_worker.iter().sum::<f64>() >= 8.0, "the eight connections are counted: {per_worker:?}");
    assert!(max - min <= 1.0, "connections spread over the workers: {per_worker:?}");
    drop(clients);

    // The portal lists the three demo APIs.
    let home = http.get(info["portal_url"].as_str().unwrap()).send().await.unwrap().text().await.unwrap();
    for api in ["Weather", "Quotes", "Currency Exchange"] {
        assert!(home.contains(api), "the portal lists {api}");
    }
    // The admin login works.
    let r = http
        .post(format!("{}/auth/login", info["api_url"].as_str().unwrap()))
        .json(&serde_json::json!({"email": info["admin_email"], "password": info["admin_password"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // SIGTERM drains and exits 0.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "portico did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");

    // The JSON access log has the call; no log line holds the key or the admin's password.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "portico::access")
        .collect();
    assert!(
        access
            .iter()
            .any(|v| v["fields"]["status"] == 200
                && v["fields"]["path"].as_str().is_some_and(|p| p.contains("/current"))),
        "{log}"
    );
    assert!(!log.contains(key), "the API key is not in the logs");
    assert!(!log.contains(info["admin_password"].as_str().unwrap()), "the admin's password is not in the logs");
}
