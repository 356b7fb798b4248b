//! `serve --demo`: a whole marketplace on one machine with no network. Starts the demo upstream
//! in this process, applies `examples/demo-marketplace.yaml` through the same service functions
//! as `portico apply`, seeds an admin and a consumer with a key, and writes what a newcomer
//! needs to `<data-dir>/demo.json`.

use crate::app::App;
use anyhow::Context;
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::routing::get;
use portico_control::auth;
use portico_control::services::{accounts, apps, declarative};
use portico_core::api_key::ApiKey;
use portico_core::model::MemberRole;
use portico_core::values::{Email, Name, Password};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

pub const DEMO_FILE: &str = include_str!("../../../examples/demo-marketplace.yaml");
const ADMIN_EMAIL: &str = "admin@portico.local";
const CONSUMER_EMAIL: &str = "dev@globex.example";

/// What `demo.json` holds; scripts read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoInfo {
    pub portal_url: String,
    pub api_url: String,
    pub gateway_url: String,
    pub admin_email: String,
    pub admin_password: String,
    pub admin_token: String,
    pub consumer_email: String,
    pub consumer_password: String,
    pub consumer_api_key: String,
    pub curl: String,
}

/// Starts the demo upstream on a free loopback port and returns its base URL.
pub async fn start_upstream() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("starting the demo upstream")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, upstream_router()).await {
            tracing::error!(error = %e, "the demo upstream stopped");
        }
    });
    Ok(format!("http://{addr}"))
}

fn served_for(h: &HeaderMap) -> Value {
    json!({
        "consumer": h.get("x-portico-consumer").and_then(|v| v.to_str().ok()),
        "plan": h.get("x-portico-plan").and_then(|v| v.to_str().ok()),
        "request_id": h.get("x-request-id").and_then(|v| v.to_str().ok()),
        "traceparent": h.get("traceparent").and_then(|v| v.to_str().ok()),
    })
}

fn seed(s: &str) -> u32 {
    s.bytes().fold(2166136261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619))
}

const CONDITIONS: [&str; 5] = ["sunny", "partly cloudy", "cloudy", "light rain", "windy"];
const QUOTES: [(&str, &str); 4] = [
    (
        "The Analytical Engine weaves algebraic patterns just as the Jacquard loom weaves flowers and leaves.",
        "Ada Lovelace",
    ),
    ("Simplicity is prerequisite for reliability.", "Edsger W. Dijkstra"),
    ("Premature optimization is the root of all evil.", "Donald Knuth"),
    ("The most dangerous phrase in the language is: we've always done it this way.", "Grace Hopper"),
];

fn upstream_router() -> axum::Router {
    axum::Router::new()
        .route("/weather/current", get(|h: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
            let city = q.get("city").cloned().unwrap_or_else(|| "Lisbon".into());
            let s = seed(&city);
            axum::Json(json!({
                "city": city, "temperature_c": (s % 300) as f64 / 10.0, "condition": CONDITIONS[(s % 5) as usize],
                "wind_kph": (s % 40) as f64, "served_for": served_for(&h)
            }))
        }))
        .route("/weather/forecast", get(|h: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
            let city = q.get("city").cloned().unwrap_or_else(|| "Lisbon".into());
            let days = q.get("days").and_then(|d| d.parse::<u32>().ok()).unwrap_or(3).clamp(1, 7);
            let s = seed(&city);
            let list: Vec<Value> = (0..days).map(|d| json!({"day": d, "high_c": (s.wrapping_add(d * 7) % 300) as f64 / 10.0 + 3.0, "condition": CONDITIONS[((s + d) % 5) as usize]})).collect();
            axum::Json(json!({"city": city, "days": list, "served_for": served_for(&h)}))
        }))
        .route("/quotes/random", get(|h: HeaderMap| async move {
            let (text, author) = QUOTES[rand::random_range(0..QUOTES.len())];
            axum::Json(json!({"text": text, "author": author, "served_for": served_for(&h)}))
        }))
        .route("/quotes/quotes/{id}", get(|h: HeaderMap, Path(id): Path<usize>| async move {
            match QUOTES.get(id) {
                Some((text, author)) => (axum::http::StatusCode::OK, axum::Json(json!({"id": id, "text": text, "author": author, "served_for": served_for(&h)}))),
                None => (axum::http::StatusCode::NOT_FOUND, axum::Json(json!({"error": format!("no quotation {id}; ids are 0-{}", QUOTES.len() - 1)}))),
            }
        }))
        .route("/fx/rates", get(|Query(q): Query<HashMap<String, String>>| async move {
            let base = q.get("base").cloned().unwrap_or_else(|| "USD".into()).to_uppercase();
            let usd = rates();
            let b = usd.get(base.as_str()).copied().unwrap_or(1.0);
            let rel: HashMap<&str, f64> = usd.iter().map(|(k, v)| (*k, (v / b * 10000.0).round() / 10000.0)).collect();
            axum::Json(json!({"base": base, "rates": rel}))
        }))
        .route("/fx/convert", get(|Query(q): Query<HashMap<String, String>>| async move {
            let usd = rates();
            let from = q.get("from").map(|s| s.to_uppercase()).unwrap_or_default();
            let to = q.get("to").map(|s| s.to_uppercase()).unwrap_or_default();
            let amount: f64 = q.get("amount").and_then(|a| a.parse().ok()).unwrap_or(1.0);
            match (usd.get(from.as_str()), usd.get(to.as_str())) {
                (Some(f), Some(t)) => (axum::http::StatusCode::OK, axum::Json(json!({"from": from, "to": to, "amount": amount, "result": (amount / f * t * 100.0).round() / 100.0}))),
                _ => (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": "unknown currency; try USD, EUR, GBP, JPY or CHF"}))),
            }
        }))
}

fn rates() -> HashMap<&'static str, f64> {
    HashMap::from([("USD", 1.0), ("EUR", 0.92), ("GBP", 0.79), ("JPY", 151.3), ("CHF", 0.88)])
}

fn random_password() -> String {
    auth::new_token()[4..24].to_owned()
}

/// Loads the demo into a built (not yet running) app and returns what to print.
pub async fn seed_demo(app: &App, data_dir: &std::path::Path, upstream: &str) -> anyhow::Result<DemoInfo> {
    let state = &app.state;
    let info_path = data_dir.join("demo.json");
    let previous: Option<DemoInfo> = std::fs::read(&info_path).ok().and_then(|b| serde_json::from_slice(&b).ok());

    let admin_password = previous.as_ref().map(|p| p.admin_password.clone()).unwrap_or_else(random_password);
    let admin =
        accounts::create_admin(&state.store, &Email::parse(ADMIN_EMAIL)?, Some(&admin_password)).await.map_err(
            |e| anyhow::anyhow!("{e} — the data dir holds another demo; remove {} to start afresh", data_dir.display()),
        )?;
    let who = auth::resolve(state, &admin.token, Default::default())
        .await?
        .context("the demo admin's token does not resolve")?;

    let text = crate::document::expand_env(DEMO_FILE, "demo-marketplace.yaml", |k| {
        (k == "DEMO_UPSTREAM").then(|| upstream.to_owned())
    })?;
    let doc = crate::document::parse(&text, "demo-marketplace.yaml")?;
    let report = declarative::apply(state, &who, doc, false).await?;
    tracing::info!(changes = report.changes.len(), "demo marketplace applied");

    let consumer_password = previous.as_ref().map(|p| p.consumer_password.clone()).unwrap_or_else(random_password);
    let consumer = accounts::ensure_member(
        &state.store,
        &Email::parse(CONSUMER_EMAIL)?,
        &Name::parse("Globex Developer")?,
        &Password::parse(&consumer_password)?,
        "globex",
        MemberRole::Owner,
    )
    .await?;
    let consumer_token = accounts::issue_token(&state.store, &consumer).await?;
    let dev = auth::resolve(state, &consumer_token, Default::default())
        .await?
        .context("the demo consumer's token does not resolve")?;

    // Keep the previous key while it is still live; otherwise issue one.
    let snapshot = state.snapshot.handle().load_full();
    let live = previous
        .as_ref()
        .and_then(|p| ApiKey::parse(&p.consumer_api_key).ok())
        .filter(|k| snapshot.keys.contains_key(&k.hash(&state.pepper)))
        .map(|k| k.expose_secret().to_owned());
    let key = match live {
        Some(k) => k,
        None => {
            let app_id = apps::list(state, &dev, portico_store::Page::new(Some(200), None))
                .await?
                .into_iter()
                .find(|a| a.slug == "weather-dashboard")
                .context("the demo app weather-dashboard is missing")?
                .id;
            apps::create_key(
                state,
                &dev,
                &app_id,
                apps::CreateKey { name: Some("demo".into()), expires_in_days: None, scopes: Vec::new() },
            )
            .await?
            .key
        }
    };

    let portal = app.api_url();
    let gateway = app.gateway_url();
    let info = DemoInfo {
        portal_url: format!("{portal}/"),
        api_url: format!("{portal}/api/v1"),
        gateway_url: gateway.clone(),
        admin_email: ADMIN_EMAIL.into(),
        admin_password,
        admin_token: admin.token,
        consumer_email: CONSUMER_EMAIL.into(),
        consumer_password,
        consumer_api_key: key.clone(),
        curl: format!("curl -s -H 'X-Api-Key: {key}' '{gateway}/weather/v1/current?city=Lisbon'"),
    };
    crate::settings::write_private(&info_path, &serde_json::to_string_pretty(&info)?)?;
    Ok(info)
}
