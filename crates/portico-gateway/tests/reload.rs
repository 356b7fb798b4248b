//! Config without downtime: new snapshots swapped in again and again while calls are in flight
//! (the version moved between two upstreams, a key added and a plan changed each time) and
//! not one call fails.

mod common;

use portico_core::values::{Period, RateLimit, UpstreamUrl};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An upstream that answers its name after a few milliseconds, so that calls are in flight
/// while snapshots change.
async fn named(name: &'static str) -> String {
    use bytes::Bytes;
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_swapped_under_load_fail_no_call() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (a, b) = (named("a").await, named("b").await);
    let running = common::start(common::Setup { consumers: 2, ..common::Setup::new("moving", &a) }).await;
    let url = format!("{}/x", running.base);
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for i in 0..8 {
        let (url, key, stop) = (url.clone(), running.keys[i % 2].clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut answers, mut failures) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).header("x-api-key", &key).send().await {
                    Ok(r) if r.status() == 200 => answers.push(r.text().await.unwrap()),
                    Ok(r) => failures.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (answers, failures)
        }));
    }

    let mut swaps = 0u64;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        let mut next = (**running.snapshot.load()).clone();
        next.generation += 1;
        for api in next.apis.values_mut() {
            for v in api.majors.values_mut() {
                v.upstream = UpstreamUrl::parse(if swaps.is_multiple_of(2) { &b } else { &a }).unwrap();
            }
        }
        for sub in next.subscriptions.values_mut() {
            // A plan change each time: a rate limit far above the load, then none.
            sub.rate_limits = if swaps.is_multiple_of(2) {
                vec![RateLimit::new(1_000_000, Period::Second).unwrap()]
            } else {
                Vec::new()
            };
        }
        running.snapshot.store(Arc::new(next));
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut answers, mut failures) = (Vec::new(), Vec::new());
    for c in clients {
        let (a, f) = c.await.unwrap();
        answers.extend(a);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls failed across {swaps} swaps: {:?}",
        failures.len(),
        answers.len() + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(swaps > 50 && answers.len() > 200, "{swaps} swaps, {} calls", answers.len());
    for name in ["a", "b"] {
        assert!(answers.iter().any(|x| x == name), "calls reached upstream {name} as the snapshots moved the version");
    }
}
