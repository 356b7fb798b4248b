//! OpenTelemetry traces from the real binary to a real OTLP/HTTP receiver: `serve --demo
//! --otlp-endpoint …` exports, as protobuf `ExportTraceServiceRequest`s, a server span per
//! gateway call that continues the client's `traceparent`, a span per phase under it, and an
//! upstream span whose id is the parent the upstream was told of. Without an endpoint no
//! trace is exported and the client's `traceparent` goes upstream unchanged.

mod common;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An OTLP/HTTP receiver: every POST to /v1/traces decoded; anything else is a 404 that
/// the test notices.
async fn receiver() -> (String, Arc<Mutex<Vec<ExportTraceServiceRequest>>>, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let (g, w) = (got.clone(), wrong.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (g, w) = (g.clone(), w.clone());
        async move {
            let (parts, body) = req.into_parts();
            let ok_type = parts.headers.get("content-type").is_some_and(|v| v == "application/x-protobuf");
            let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
            if parts.method != "POST" || parts.uri.path() != "/v1/traces" || !ok_type {
                w.lock().unwrap().push(format!(
                    "{} {} {:?}",
                    parts.method,
                    parts.uri,
                    parts.headers.get("content-type")
                ));
                return axum::http::StatusCode::NOT_FOUND;
            }
            match ExportTraceServiceRequest::decode(bytes) {
                Ok(r) => {
                    g.lock().unwrap().push(r);
                    axum::http::StatusCode::OK
                }
                Err(e) => {
                    w.lock().unwrap().push(format!("undecodable export: {e}"));
                    axum::http::StatusCode::BAD_REQUEST
                }
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got, wrong)
}

struct Demo {
    child: Child,
    dir: tempfile::TempDir,
    log: std::path::PathBuf,
    key: String,
    gateway: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

async fn demo(extra: &[&str]) -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let log = common::test_log_path("traces").unwrap_or_else(|| dir.path().join("stderr.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["serve", "--demo", "--gateway-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", "off", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        // The SDK's batch delay, so the test does not wait the default 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut d = Demo { child, dir, log, key: String::new(), gateway: String::new() };
    let info: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(d.dir.path().join("demo.json"))
            && let Ok(v) = serde_json::from_slice(&bytes)
        {
            break v;
        }
        assert!(Instant::now() < deadline, "demo.json did not appear: {}", d.log());
        assert!(d.child.try_wait().unwrap().is_none(), "portico exited early: {}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    d.key = info["consumer_api_key"].as_str().unwrap().to_owned();
    d.gateway = info["gateway_url"].as_str().unwrap().trim_end_matches('/').to_owned();
    d
}

impl Demo {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// One weather call with `traceparent`; the upstream's echo of what it received.
    async fn call(&self, traceparent: Option<&str>) -> serde_json::Value {
        let mut req = reqwest::Client::new()
            .get(format!("{}/weather/v1/current?city=Porto", self.gateway))
            .header("X-Api-Key", &self.key);
        if let Some(t) = traceparent {
            req = req.header("traceparent", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn spans(got: &Mutex<Vec<ExportTraceServiceRequest>>) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for req in got.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
            }
        }
    }
    out
}

#[tokio::test]
async fn gateway_calls_are_traced_over_otlp_and_continue_the_callers_trace() {
    portico::install_crypto();
    let (collector, got, wrong) = receiver().await;
    let d = demo(&["--otlp-endpoint", &collector]).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let echo = d.call(Some(&format!("00-{trace_id}-{parent}-01"))).await;
    let upstream_tp = echo["served_for"]["traceparent"].as_str().unwrap().to_owned();
    let p: Vec<&str> = upstream_tp.split('-').collect();
    assert_eq!(p.len(), 4, "{upstream_tp}");
    assert_eq!(p[1], trace_id, "the upstream is in the caller's trace");
    assert_ne!(p[2], parent, "the upstream's parent is the gateway's span, not the caller's");
    assert_eq!(p[3], "01");

    // The spans arrive within the batch delay.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mine = loop {
        let mine: Vec<(String, Span)> = spans(&got).into_iter().filter(|(_, s)| hex(&s.trace_id) == trace_id).collect();
        if mine.iter().any(|(_, s)| s.name == "upstream") && mine.len() >= 5 {
            break mine;
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace arrived: {:?}; wrong: {:?}; log: {}",
            mine,
            wrong.lock().unwrap(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(wrong.lock().unwrap().is_empty(), "{:?}", wrong.lock().unwrap());
    assert!(mine.iter().all(|(service, _)| service.contains("portico")), "service.name is portico");
    let server: Vec<&Span> = mine.iter().map(|(_, s)| s).filter(|s| s.kind == 2).collect();
    assert_eq!(server.len(), 1, "one server span per call: {mine:?}");
    let server = server[0];
    assert_eq!(hex(&server.parent_span_id), parent, "the server span's parent is the caller's span");
    assert_eq!(server.name, "GET /weather/v1");
    let attr = |s: &Span, k: &str| {
        s.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.as_ref()).map(|v| format!("{:?}", v.value))
    };
    assert!(attr(server, "http.response.status_code").is_some_and(|v| v.contains("200")), "{server:?}");
    assert!(attr(server, "portico.api").is_some_and(|v| v.contains("weather")), "{server:?}");
    for phase in ["route", "identify", "limit", "journal", "upstream"] {
        let s =
            mine.iter().map(|(_, s)| s).find(|s| s.name == phase).unwrap_or_else(|| panic!("a {phase} span: {mine:?}"));
        assert_eq!(s.parent_span_id, server.span_id, "{phase} is a child of the call's span");
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    let upstream = mine.iter().map(|(_, s)| s).find(|s| s.name == "upstream").unwrap();
    assert_eq!(upstream.kind, 3, "the upstream span is a client span");
    assert_eq!(hex(&upstream.span_id), p[2], "the upstream was told the upstream span's id");
    // No credential in any span.
    let all = format!("{:?}", spans(&got));
    assert!(!all.contains(&d.key), "the API key is in no span");

    // A call without traceparent starts a new trace, still exported.
    let echo = d.call(None).await;
    let fresh = echo["served_for"]["traceparent"].as_str().unwrap().split('-').nth(1).unwrap().to_owned();
    assert_ne!(fresh, trace_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spans(&got).iter().any(|(_, s)| hex(&s.trace_id) == fresh && s.kind == 2) {
        assert!(Instant::now() < deadline, "the new trace was not exported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_callers_traceparent_passes() {
    portico::install_crypto();
    let (collector, got, _) = receiver().await;
    // The collector is running but not configured: nothing may reach it.
    let d = demo(&[]).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let echo = d.call(Some(tp)).await;
    assert_eq!(echo["served_for"]["traceparent"], tp, "passed through unchanged");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(got.lock().unwrap().is_empty(), "nothing exported to {collector}");
}

#[test]
fn a_bad_endpoint_is_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--otlp-endpoint", "collector:4318"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("otlp_endpoint") && err.contains("http://"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--trace-sample-ratio", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample_ratio"));
}
