//! Webhooks, signed the Standard Webhooks way: each delivery carries `webhook-id` (the same on
//! every attempt, for deduplication), `webhook-timestamp` (unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the key is
//! the base64 part of the endpoint's `whsec_…` secret. Deliveries are rows: queued in the same
//! transaction as the change that caused them, sent by a background dispatcher, retried with
//! backoff (5 s, 30 s, 2 min, 10 min, 30 min, 2 h, 6 h, then given up), logged, and re-sendable
//! by hand. Every URL goes through the outbound (SSRF) policy: an address it refuses is never
//! connected to, and redirects are not followed.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::services::parse_id;
use crate::state::AppState;
use base64::Engine;
use portico_core::ids::OrgId;
use portico_core::outbound::{OutboundPolicy, literal_ip};
use portico_store::notify::{self, Delivery, Endpoint};
use portico_store::{Conn, Store};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// Event types an endpoint can ask for (`*`: all).
pub const EVENT_TYPES: [&str; 5] =
    ["subscription.created", "subscription.cancelled", "quota.threshold_reached", "alert.triggered", "webhook.test"];

/// Seconds to wait after the n-th failed attempt; past the end, the delivery has failed.
const BACKOFF_SECS: [i64; 7] = [5, 30, 120, 600, 1800, 7200, 21600];

const STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `webhook-signature` value for one attempt.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    use hmac::{KeyInit, Mac};
    let key = STD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", STD.encode(mac.finalize().into_bytes())))
}

/// Queues `event` for every live endpoint of `org` that wants it, in the caller's transaction.
pub async fn emit(c: &mut Conn, org: OrgId, event: &str, data: serde_json::Value) -> Result<()> {
    let endpoints = notify::endpoints_of(c, org).await?;
    if endpoints.is_empty() {
        return Ok(());
    }
    let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let payload = serde_json::json!({"type": event, "timestamp": at, "data": data}).to_string();
    for e in endpoints.iter().filter(|e| e.events.iter().any(|t| t == "*" || t == event)) {
        notify::enqueue(c, e.id, event, &payload).await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// Event types, or `["*"]` for all (the default).
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub org_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: String,
}

/// A new endpoint: its signing secret is in this answer only.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    /// `whsec_` + base64 key, as Standard Webhooks libraries expect.
    pub secret: String,
    #[serde(flatten)]
    pub endpoint: EndpointView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

fn rfc(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> Self {
        EndpointView {
            id: e.id.to_string(),
            org_id: e.org_id.to_string(),
            url: e.url.clone(),
            events: e.events.clone(),
            created_at: rfc(e.created_at),
        }
    }
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        DeliveryView {
            id: d.id.to_string(),
            event_type: d.event_type.clone(),
            state: d.state.clone(),
            attempts: d.attempts,
            next_attempt_at: (d.state == "pending").then(|| rfc(d.next_attempt_at)),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            created_at: rfc(d.created_at),
            delivered_at: d.delivered_at.map(rfc),
            payload: serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The organization, if `who` may manage its webhooks (another's answers 404).
fn managed_org(who: &Principal, org: &str) -> Result<OrgId> {
    let id: OrgId = parse_id(org, "organization")?;
    if !who.can_read(id) {
        return Err(Error::not_found(format_args!("organization `{org}`")));
    }
    if !who.can_manage(id) {
        return Err(Error::Forbidden("your role in this organization cannot manage its webhooks".into()));
    }
    Ok(id)
}

/// Checks an endpoint URL: http(s), a host, and not an address the outbound policy refuses.
fn check_url(policy: &OutboundPolicy, raw: &str) -> Result<reqwest::Url> {
    let url =
        reqwest::Url::parse(raw.trim()).map_err(|e| Error::Invalid(format!("url: `{raw}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !url.username().is_empty() {
        return Err(Error::Invalid("url: an http:// or https:// URL with a host and no credentials".into()));
    }
    if let Some(ip) = url.host_str().and_then(literal_ip)
        && let Err(why) = policy.check(ip)
    {
        return Err(Error::Invalid(format!(
            "url: `{raw}` points at an address that outbound calls may not reach ({why}); ask a platform admin to allow it with `outbound.allow_cidrs`"
        )));
    }
    Ok(url)
}

pub async fn create_endpoint(
    state: &AppState,
    who: &Principal,
    org: &str,
    req: CreateEndpoint,
) -> Result<CreatedEndpoint> {
    let org = managed_org(who, org)?;
    let url = check_url(&state.config.outbound, &req.url)?;
    let events = if req.events.is_empty() { vec!["*".to_owned()] } else { req.events };
    if let Some(bad) = events.iter().find(|e| *e != "*" && !EVENT_TYPES.contains(&e.as_str())) {
        return Err(Error::Invalid(format!("events: `{bad}` is not one of *, {}", EVENT_TYPES.join(", "))));
    }
    let secret = format!("whsec_{}", STD.encode(rand::random::<[u8; 24]>()));
    let mut tx = state.store.begin().await?;
    let e = notify::insert_endpoint(&mut tx, org, url.as_str(), &state.secrets.seal(&secret), &events).await?;
    let view = EndpointView::from(&e);
    audit::record(&mut tx, who, Change::new("webhook.create", "webhook_endpoint", e.id, Some(org)).after(&view))
        .await?;
    tx.commit().await?;
    Ok(CreatedEndpoint { secret, endpoint: view })
}

pub async fn list_endpoints(state: &AppState, who: &Principal, org: &str) -> Result<Vec<EndpointView>> {
    let org = managed_org(who, org)?;
    let mut c = state.store.conn().await?;
    Ok(notify::endpoints_of(&mut c, org).await?.iter().map(EndpointView::from).collect())
}

async fn owned_endpoint(state: &AppState, who: &Principal, org: &str, id: &str) -> Result<Endpoint> {
    let org = managed_org(who, org)?;
    let not_found = || Error::not_found(format_args!("webhook endpoint `{id}`"));
    let eid: uuid::Uuid = id.parse().map_err(|_| not_found())?;
    let mut c = state.store.conn().await?;
    notify::endpoint(&mut c, eid).await?.filter(|e| e.org_id == org && e.disabled_at.is_none()).ok_or_else(not_found)
}

pub async fn delete_endpoint(state: &AppState, who: &Principal, org: &str, id: &str) -> Result<()> {
    let e = owned_endpoint(state, who, org, id).await?;
    let mut tx = state.store.begin().await?;
    notify::disable_endpoint(&mut tx, e.id).await?;
    audit::record(&mut tx, who, Change::new("webhook.delete", "webhook_endpoint", e.id, Some(e.org_id))).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn deliveries(state: &AppState, who: &Principal, org: &str, id: &str) -> Result<Vec<DeliveryView>> {
    let e = owned_endpoint(state, who, org, id).await?;
    let mut c = state.store.conn().await?;
    Ok(notify::deliveries_of(&mut c, e.id, 100).await?.iter().map(DeliveryView::from).collect())
}

/// Sends a `webhook.test` event to one endpoint.
pub async fn test(state: &AppState, who: &Principal, org: &str, id: &str) -> Result<DeliveryView> {
    let e = owned_endpoint(state, who, org, id).await?;
    let at = rfc(time::OffsetDateTime::now_utc());
    let payload =
        serde_json::json!({"type": "webhook.test", "timestamp": at, "data": {"endpoint_id": e.id.to_string()}});
    let mut c = state.store.conn().await?;
    let did = notify::enqueue(&mut c, e.id, "webhook.test", &payload.to_string()).await?;
    let d = notify::delivery(&mut c, did).await?.ok_or_else(|| Error::Internal("a queued delivery vanished".into()))?;
    Ok(DeliveryView::from(&d))
}

/// Queues a delivery again, now (whatever its state).
pub async fn resend(state: &AppState, who: &Principal, org: &str, id: &str, delivery: &str) -> Result<()> {
    let e = owned_endpoint(state, who, org, id).await?;
    let not_found = || Error::not_found(format_args!("delivery `{delivery}`"));
    let did: uuid::Uuid = delivery.parse().map_err(|_| not_found())?;
    let mut tx = state.store.begin().await?;
    notify::delivery(&mut tx, did).await?.filter(|d| d.endpoint_id == e.id).ok_or_else(not_found)?;
    notify::resend(&mut tx, did).await?;
    audit::record(&mut tx, who, Change::new("webhook.resend", "webhook_delivery", did, Some(e.org_id))).await?;
    tx.commit().await?;
    Ok(())
}

/// One attempt at a delivery: `Ok(status)` when the endpoint answered.
async fn attempt(
    client: &reqwest::Client,
    policy: &OutboundPolicy,
    secrets: &portico_core::secret::Keyring,
    e: &Endpoint,
    d: &Delivery,
) -> std::result::Result<u16, String> {
    let url = check_url(policy, &e.url).map_err(|err| err.to_string())?;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let id = d.id.to_string();
    let secret = secrets.open(&e.secret).map_err(|err| err.to_string())?;
    let sig = sign(&secret, &id, ts, &d.payload).ok_or("the endpoint's secret is unreadable")?;
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(d.payload.clone())
        .send()
        .await
        .map_err(|err| {
            // Never the URL's query or a body in the log: only what failed.
            if err.is_timeout() {
                "timed out".to_owned()
            } else if err.is_connect() {
                "could not connect".to_owned()
            } else {
                "request failed".to_owned()
            }
        })?;
    Ok(resp.status().as_u16())
}

/// Sends what is due, once.
pub async fn dispatch_once(
    store: &Store,
    client: &reqwest::Client,
    policy: &OutboundPolicy,
    secrets: &portico_core::secret::Keyring,
) -> Result<usize> {
    let mut c = store.conn().await?;
    let due = notify::due(&mut c, 50).await?;
    drop(c);
    let mut sent = 0;
    for d in due {
        let mut c = store.conn().await?;
        // Another process may be dispatching too: take the delivery for a minute first.
        if !notify::claim(&mut c, d.id, d.next_attempt_at, 60_000).await? {
            continue;
        }
        let endpoint = notify::endpoint(&mut c, d.endpoint_id).await?;
        drop(c);
        let outcome = match &endpoint {
            Some(e) if e.disabled_at.is_none() => attempt(client, policy, secrets, e, &d).await,
            _ => Err("the endpoint was deleted".to_owned()),
        };
        let n = d.attempts as usize;
        let retry = |err: bool| {
            (err && endpoint.as_ref().is_some_and(|e| e.disabled_at.is_none()))
                .then(|| BACKOFF_SECS.get(n).map(|s| portico_store::now_millis() + s * 1000))
                .flatten()
        };
        let mut c = store.conn().await?;
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                notify::record_attempt(&mut c, d.id, true, Some(status), None, None).await?;
                sent += 1;
            }
            Ok(status) => {
                let why = format!("the endpoint answered {status}");
                notify::record_attempt(&mut c, d.id, false, Some(status), Some(&why), retry(true)).await?;
            }
            Err(why) => notify::record_attempt(&mut c, d.id, false, None, Some(&why), retry(true)).await?,
        }
    }
    Ok(sent)
}

/// Runs the dispatcher every second until the task is aborted.
pub fn spawn_dispatcher(
    store: Store,
    policy: OutboundPolicy,
    secrets: Arc<portico_core::secret::Keyring>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match crate::services::outbound::client(policy.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks cannot be delivered");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = dispatch_once(&store, &client, &policy, &secrets).await {
                tracing::warn!(error = %e, "webhook dispatch failed; retrying");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(sign(secret, id, 1614265330, body).unwrap(), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign("not-a-secret", id, 1, body).is_none());
    }
}
