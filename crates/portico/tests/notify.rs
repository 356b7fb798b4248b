//! The outbound channel against real peers: an SMTP server and a webhook receiver run by the
//! test. E-mail verification and password reset links (single use), the outbox when no SMTP
//! server is configured, Standard Webhooks signatures, retries, the delivery log and re-send,
//! and quota and error-rate alerts sent through both.

mod common;

use base64::Engine;
use common::{Backend, TestApp, echo_openapi, spawn_app, spawn_app_configured, spawn_upstream};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A minimal SMTP server that accepts every message and keeps its DATA.
async fn smtp_sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = mails.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                let (mut data, mut in_data) = (String::new(), false);
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            store.lock().unwrap().push(std::mem::take(&mut data));
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250-sink\r\n250 OK\r\n"
                    } else if cmd.starts_with("DATA") {
                        in_data = true;
                        b"354 go on\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (format!("smtp://{addr}"), mails)
}

/// The token in a link like `…/page?token=pte_…` in a message (quoted-printable soft breaks
/// undone).
fn token_in(message: &str, page: &str) -> String {
    let text = message.replace("\r\n", "\n").replace("=\n", "").replace("=3D", "=");
    let at = text.find(&format!("/{page}?token=")).unwrap_or_else(|| panic!("no {page} link in {text}"));
    text[at + page.len() + 8..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn email_verification_over_smtp() {
    let (url, mails) = smtp_sink().await;
    let app = spawn_app_configured(Backend::Sqlite, |s| s.smtp.url = Some(url)).await;
    let token = app.signup("vera@consumer.example", "consumer").await;
    let (_, me) = app.get("/me", Some(&token)).await;
    assert_eq!(me["user"]["email_verified"], false);
    let mail = wait_for("the verification e-mail", || mails.lock().unwrap().first().cloned()).await;
    assert!(mail.contains("To: vera@consumer.example"), "{mail}");
    let t = token_in(&mail, "verify-email");
    // The link opens a page that confirms with a button (opening it changes nothing).
    let page = app.http.get(format!("{}/verify-email?token={t}", app.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(&t));
    let (_, me) = app.get("/me", Some(&token)).await;
    assert_eq!(me["user"]["email_verified"], false, "a GET verifies nothing");
    let odd = app.http.get(format!("{}/verify-email?token=a&token=b&x=%ZZ", app.api)).send().await.unwrap();
    assert_eq!(odd.status(), 200, "an odd query is just no usable token");
    let (s, v) = app.post("/auth/verify-email", None, json!({"token": t})).await;
    assert_eq!(s, 204, "{v}");
    let (_, me) = app.get("/me", Some(&token)).await;
    assert_eq!(me["user"]["email_verified"], true);
    let (s, v) = app.post("/auth/verify-email", None, json!({"token": t})).await;
    assert_eq!(s, 400, "a link works once: {v}");
    let (s, _) = app.post("/me/verify-email", Some(&token), json!({})).await;
    assert_eq!(s, 409, "already verified");
    app.stop().await;
}

fn outbox(app: &TestApp) -> Vec<String> {
    let dir = app.dir.path().join("outbox");
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).collect()).unwrap_or_default();
    files.sort_by_key(|e| e.file_name());
    files
        .iter()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

#[tokio::test]
async fn password_reset_through_the_outbox() {
    let app = spawn_app(Backend::Sqlite).await;
    let old_session = app.signup("rita@consumer.example", "consumer").await;
    wait_for("the verification e-mail in the outbox", || (outbox(&app).len() == 1).then_some(())).await;

    // Unknown addresses get the same answer and no mail.
    let (s, _) = app.post("/auth/password-reset", None, json!({"email": "nobody@consumer.example"})).await;
    assert_eq!(s, 202);
    let (s, _) = app.post("/auth/password-reset", None, json!({"email": "rita@consumer.example"})).await;
    assert_eq!(s, 202);
    let mail = wait_for("the reset e-mail", || outbox(&app).into_iter().find(|m| m.contains("reset-password"))).await;
    assert_eq!(outbox(&app).len(), 2, "no mail for the unknown address");
    let t = token_in(&mail, "reset-password");

    let (s, v) = app.post("/auth/password-reset/confirm", None, json!({"token": t, "new_password": "password"})).await;
    assert_eq!(s, 400, "a common password is refused: {v}");
    let (s, v) = app
        .post("/auth/password-reset/confirm", None, json!({"token": t, "new_password": "a brand new passphrase"}))
        .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(app.get("/me", Some(&old_session)).await.0, 401, "sessions end with a reset");
    let (s, _) = app
        .post("/auth/login", None, json!({"email": "rita@consumer.example", "password": "a brand new passphrase"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post("/auth/password-reset/confirm", None, json!({"token": t, "new_password": "yet another passphrase"}))
        .await;
    assert_eq!(s, 400, "a reset link works once");
    app.stop().await;
}

/// A webhook receiver that records every request and answers the statuses it is told to, in
/// order (then 200).
async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(reqwest::header::HeaderMap, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let plan = Arc::new(Mutex::new(statuses));
    let s = seen.clone();
    let app = axum::Router::new().fallback(axum::routing::any(move |req: axum::extract::Request| {
        let (s, plan) = (s.clone(), plan.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in &parts.headers {
                h.insert(k.clone(), v.clone());
            }
            s.lock().unwrap().push((h, String::from_utf8_lossy(&body).into_owned()));
            let mut p = plan.lock().unwrap();
            let status = if p.is_empty() { 200 } else { p.remove(0) };
            axum::http::StatusCode::from_u16(status).unwrap()
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn verify_standard_webhook(secret: &str, h: &reqwest::header::HeaderMap, body: &str) -> bool {
    use hmac::{KeyInit, Mac};
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let (id, ts) = (h["webhook-id"].to_str().unwrap(), h["webhook-timestamp"].to_str().unwrap());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    h["webhook-signature"].to_str().unwrap().split(' ').any(|s| s == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_alerts() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("paz@provider.example", "provider").await;
    assert_eq!(app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await.0, 201);
    let v = json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": echo_openapi(), "state": "published"});
    assert_eq!(app.post("/apis/echo/versions", Some(&provider), v).await.0, 201);
    let plan = json!({"slug": "tiny", "name": "Tiny", "pricing": {"type": "free"}, "monthly_quota": 5});
    assert_eq!(app.post("/apis/echo/plans", Some(&provider), plan).await.0, 201);
    let consumer = app.signup("cy@consumer.example", "consumer").await;
    let (_, me) = app.get("/me", Some(&consumer)).await;
    let org = me["organizations"][0]["id"].as_str().unwrap().to_owned();

    // An endpoint that fails once, then accepts.
    let (hook, seen) = receiver(vec![500]).await;
    let (s, ep) = app.post(&format!("/orgs/{org}/webhooks"), Some(&consumer), json!({"url": hook})).await;
    assert_eq!(s, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_owned();
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    // Refused targets and strangers.
    let (s, v) =
        app.post(&format!("/orgs/{org}/webhooks"), Some(&consumer), json!({"url": "http://169.254.169.254/x"})).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = app.post(&format!("/orgs/{org}/webhooks"), Some(&consumer), json!({"url": "ftp://example.com"})).await;
    assert_eq!(s, 400);
    assert_eq!(app.get(&format!("/orgs/{org}/webhooks"), Some(&provider)).await.0, 404);
    let (_, list) = app.get(&format!("/orgs/{org}/webhooks"), Some(&consumer)).await;
    assert!(!list.to_string().contains(&secret), "the secret is shown once");

    // A subscription: the event is delivered, signed; the first attempt got a 500.
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "A"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    let (s, _) =
        app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": "echo", "plan": "tiny"})).await;
    assert_eq!(s, 201);
    wait_for("the first attempt", || (!seen.lock().unwrap().is_empty()).then_some(())).await;
    let (h, body) = seen.lock().unwrap()[0].clone();
    assert!(verify_standard_webhook(&secret, &h, &body), "signed the Standard Webhooks way");
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "subscription.created");
    let (_, log) = app.get(&format!("/orgs/{org}/webhooks/{ep_id}/deliveries"), Some(&consumer)).await;
    let d = &log[0];
    assert_eq!(
        (d["state"].as_str(), d["attempts"].as_i64(), d["last_status"].as_i64()),
        (Some("pending"), Some(1), Some(500)),
        "{log}"
    );
    // A manual re-send goes now, with the same webhook-id.
    let did = d["id"].as_str().unwrap();
    let (s, _, _) = app
        .call(Method::POST, &format!("/orgs/{org}/webhooks/{ep_id}/deliveries/{did}/resend"), Some(&consumer), None)
        .await;
    assert_eq!(s, 202);
    wait_for("the re-send", || (seen.lock().unwrap().len() >= 2).then_some(())).await;
    let (h2, body2) = seen.lock().unwrap()[1].clone();
    assert_eq!(h2["webhook-id"], h["webhook-id"], "the same id on every attempt");
    assert!(verify_standard_webhook(&secret, &h2, &body2));
    let delivered = wait_for("the delivery log to say delivered", || {
        let log = futures_lite_block(app.get(&format!("/orgs/{org}/webhooks/{ep_id}/deliveries"), Some(&consumer)));
        (log.1[0]["state"] == "delivered").then_some(log.1)
    })
    .await;
    assert_eq!(delivered[0]["attempts"], 2);

    // Quota alerts at 80% and 100%: 4 then 5 of 5 calls.
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        let r =
            app.http.get(format!("{}/echo/v1/things/1", app.gateway)).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let shipped = |n: u64| {
        let state = app.app_state.clone();
        async move {
            let started = Instant::now();
            loop {
                let mut c = state.store.conn().await.unwrap();
                let used = portico_store::rollups::units_by_subscription_since(&mut c, 0).await.unwrap();
                if used.values().sum::<u64>() >= n {
                    return;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "calls not shipped");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    shipped(4).await;
    assert_eq!(portico_control::services::alerts::evaluate(&app.app_state).await.unwrap(), 1, "80% fires");
    assert_eq!(portico_control::services::alerts::evaluate(&app.app_state).await.unwrap(), 0, "and only once");
    let r = app.http.get(format!("{}/echo/v1/things/1", app.gateway)).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    shipped(5).await;
    assert_eq!(portico_control::services::alerts::evaluate(&app.app_state).await.unwrap(), 1, "100% fires");
    let quota_events = wait_for("two quota webhooks", || {
        let v: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap())
            .filter(|e| e["type"] == "quota.threshold_reached")
            .collect();
        (v.len() == 2).then_some(v)
    })
    .await;
    let pcts: Vec<i64> = quota_events.iter().map(|e| e["data"]["threshold_percent"].as_i64().unwrap()).collect();
    assert_eq!(pcts, [80, 100]);
    let mails = outbox(&app);
    assert!(mails.iter().any(|m| m.contains("To: cy@consumer.example") && m.contains("100%")), "the owner is e-mailed");

    // An error-rate rule on the provider's side: the upstream is stopped, calls fail with 502.
    let (s, rule) = app
        .post("/apis/echo/alerts", Some(&provider), json!({"kind": "error_rate", "threshold": 50, "window_minutes": 5}))
        .await;
    assert_eq!(s, 201, "{rule}");
    let (s, _) = app.post("/apis/echo/alerts", Some(&consumer), json!({"kind": "error_rate", "threshold": 50})).await;
    assert_eq!(s, 404, "only the provider sets alert rules");
    let (s, v) = app.post("/apis/echo/alerts", Some(&provider), json!({"kind": "error_rate", "threshold": 500})).await;
    assert_eq!(s, 400, "{v}");
    let (_, pme) = app.get("/me", Some(&provider)).await;
    let porg = pme["organizations"][0]["id"].as_str().unwrap().to_owned();
    let (phook, pseen) = receiver(vec![]).await;
    let (s, _) = app
        .post(&format!("/orgs/{porg}/webhooks"), Some(&provider), json!({"url": phook, "events": ["alert.triggered"]}))
        .await;
    assert_eq!(s, 201);
    // A second app on another plan, calling a version whose upstream is gone.
    let plan = json!({"slug": "big", "name": "Big", "pricing": {"type": "free"}});
    assert_eq!(app.post("/apis/echo/plans", Some(&provider), plan).await.0, 201);
    let (s, _, _) = app
        .call(
            Method::PATCH,
            "/apis/echo/versions/1.0.0",
            Some(&provider),
            Some(json!({"upstream_url": "http://127.0.0.1:9"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = app.post("/apps", Some(&consumer), json!({"name": "Second app"})).await;
    assert_eq!(s, 201, "{b}");
    let b_id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post("/subscriptions", Some(&consumer), json!({"app_id": b_id, "api": "echo", "plan": "big"})).await.0,
        201
    );
    let (_, k2) = app.post(&format!("/apps/{b_id}/keys"), Some(&consumer), json!({})).await;
    let key2 = k2["key"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        let r =
            app.http.get(format!("{}/echo/v1/things/1", app.gateway)).header("x-api-key", &key2).send().await.unwrap();
        assert!(matches!(r.status().as_u16(), 502 | 503), "{}", r.status());
    }
    let started = Instant::now();
    loop {
        let mut c = app.app_state.store.conn().await.unwrap();
        let now = portico_store::now_millis();
        let f = portico_store::rollups::Filter {
            from_millis: now - 600_000,
            to_millis: now,
            status_class: Some("5xx".into()),
            ..Default::default()
        };
        let rows =
            portico_store::rollups::read(&mut c, portico_store::rollups::Granularity::Minute, &f, None).await.unwrap();
        if rows.iter().map(|r| r.calls).sum::<i64>() >= 10 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "502s not shipped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        portico_control::services::alerts::evaluate(&app.app_state).await.unwrap(),
        1,
        "the error-rate rule fires"
    );
    let alert = wait_for("the alert webhook", || pseen.lock().unwrap().first().cloned()).await;
    let alert: Value = serde_json::from_str(&alert.1).unwrap();
    assert_eq!((alert["type"].as_str(), alert["data"]["kind"].as_str()), (Some("alert.triggered"), Some("error_rate")));
    assert!(alert["data"]["value"].as_f64().unwrap() >= 50.0, "{alert}");

    // A p95-latency rule: the version's upstream now answers after 300 ms.
    let (s, rule) = app
        .post(
            "/apis/echo/alerts",
            Some(&provider),
            json!({"kind": "p95_latency", "threshold": 200, "window_minutes": 5}),
        )
        .await;
    assert_eq!(s, 201, "{rule}");
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_url = format!("http://{}", slow.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (s, _) = slow.accept().await.unwrap();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    // A GET without a body: its head ends with an empty line.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match s.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let resp = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (s, _, _) = app
        .call(Method::PATCH, "/apis/echo/versions/1.0.0", Some(&provider), Some(json!({"upstream_url": slow_url})))
        .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (http, url, key) = (app.http.clone(), format!("{}/echo/v1/things/1", app.gateway), key2.clone());
        calls.spawn(async move { http.get(url).header("x-api-key", key).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let started = Instant::now();
    let alert = loop {
        portico_control::services::alerts::evaluate(&app.app_state).await.unwrap();
        let found = pseen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap())
            .find(|e| e["data"]["kind"] == "p95_latency");
        if let Some(a) = found {
            break a;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no p95 alert: {:?}", pseen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(alert["type"], "alert.triggered", "{alert}");
    assert!(alert["data"]["value"].as_f64().unwrap() >= 200.0, "{alert}");
    assert_eq!(alert["data"]["threshold"], 200, "{alert}");
    app.stop().await;
}

/// Runs a future to completion from a sync closure (the test's polling helper).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
