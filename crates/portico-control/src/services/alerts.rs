//! Alerts, evaluated every minute on the rollups and sent through the outbound channel
//! (webhooks to the organization's endpoints, e-mail to its owners):
//! - **quota**: a subscription has used 80% and 100% of its plan's monthly quota (to the
//!   consumer), once per threshold per month;
//! - **rules** of an API (its provider's): `error_rate` (5xx share of calls, percent) or
//!   `p95_latency` (ms) over the last `window_minutes`, at most once per `window_minutes` while it
//!   stays breached (measured from when it last fired, not from aligned windows).

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::services::{managed_api, webhooks};
use crate::state::AppState;
use portico_core::ids::OrgId;
use portico_core::model::MemberRole;
use portico_core::sketch::LatencySketch;
use portico_store::notify::{self, AlertRule};
use portico_store::rollups::{self, Filter, Granularity};
use portico_store::{apps, catalog, orgs};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    /// `error_rate` (threshold: percent of calls answered 5xx) or `p95_latency` (threshold: ms).
    pub kind: String,
    pub threshold: i64,
    /// The window the rule looks at, 1-1440 minutes (default 5).
    pub window_minutes: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    pub id: String,
    pub kind: String,
    pub threshold: i64,
    pub window_minutes: i64,
    pub created_at: String,
}

impl From<&AlertRule> for RuleView {
    fn from(r: &AlertRule) -> Self {
        RuleView {
            id: r.id.to_string(),
            kind: r.kind.clone(),
            threshold: r.threshold,
            window_minutes: r.window_minutes,
            created_at: r.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        }
    }
}

pub async fn create_rule(state: &AppState, who: &Principal, slug: &str, req: CreateRule) -> Result<RuleView> {
    let api = managed_api(state, who, slug).await?;
    let window = req.window_minutes.unwrap_or(5);
    match req.kind.as_str() {
        "error_rate" if (1..=100).contains(&req.threshold) => {}
        "p95_latency" if (1..=600_000).contains(&req.threshold) => {}
        "error_rate" => return Err(Error::Invalid("threshold: an error rate in percent, 1-100".into())),
        "p95_latency" => return Err(Error::Invalid("threshold: a latency in ms, 1-600000".into())),
        other => return Err(Error::Invalid(format!("kind: `{other}` is not one of error_rate, p95_latency"))),
    }
    if !(1..=1440).contains(&window) {
        return Err(Error::Invalid("window_minutes: 1-1440".into()));
    }
    let mut tx = state.store.begin().await?;
    let r = notify::insert_rule(&mut tx, api.id, &req.kind, req.threshold, window).await?;
    let view = RuleView::from(&r);
    audit::record(&mut tx, who, Change::new("alert_rule.create", "alert_rule", r.id, Some(api.org_id)).after(&view))
        .await?;
    tx.commit().await?;
    Ok(view)
}

pub async fn list_rules(state: &AppState, who: &Principal, slug: &str) -> Result<Vec<RuleView>> {
    let api = managed_api(state, who, slug).await?;
    let mut c = state.store.conn().await?;
    Ok(notify::rules(&mut c, Some(api.id)).await?.iter().map(RuleView::from).collect())
}

pub async fn delete_rule(state: &AppState, who: &Principal, slug: &str, id: &str) -> Result<()> {
    let api = managed_api(state, who, slug).await?;
    let not_found = || Error::not_found(format_args!("alert rule `{id}`"));
    let rid: uuid::Uuid = id.parse().map_err(|_| not_found())?;
    let mut tx = state.store.begin().await?;
    if !notify::delete_rule(&mut tx, api.id, rid).await? {
        return Err(not_found());
    }
    audit::record(&mut tx, who, Change::new("alert_rule.delete", "alert_rule", rid, Some(api.org_id))).await?;
    tx.commit().await?;
    Ok(())
}

/// Webhook + e-mail to the organization's owners: the webhook is queued in `tx` (which also
/// marked the alert fired), the e-mails go after the commit.
async fn notify_org(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    org: OrgId,
    event: &str,
    subject: &str,
    text: &str,
    data: serde_json::Value,
) -> Result<()> {
    webhooks::emit(&mut tx, org, event, data).await?;
    let owners = orgs::member_emails(&mut tx, org, MemberRole::Owner).await?;
    tx.commit().await?;
    for to in owners {
        state.mailer.send(&to, subject, text.to_owned());
    }
    Ok(())
}

/// One round of evaluation; returns how many alerts fired.
pub async fn evaluate(state: &AppState) -> Result<usize> {
    let mut fired = 0;
    let now = time::OffsetDateTime::now_utc();
    let mut c = state.store.conn().await?;

    // Quotas.
    let month_start = now.date().replace_day(1).unwrap_or(now.date()).midnight().assume_utc();
    let month_ms = (month_start.unix_timestamp_nanos() / 1_000_000) as i64;
    let month = format!("{}-{:02}", now.year(), u8::from(now.month()));
    let used = rollups::units_by_subscription_since(&mut c, month_ms).await?;
    let plans: HashMap<_, _> = catalog::all_plans(&mut c).await?.into_iter().map(|p| (p.id, p)).collect();
    let subs = apps::active_subscriptions(&mut c).await?;
    drop(c);
    for s in subs {
        let Some(plan) = plans.get(&s.plan_id) else { continue };
        let Some(quota) = plan.fields.monthly_quota.filter(|q| *q > 0) else { continue };
        let units = used.get(&s.id).copied().unwrap_or(0);
        for pct in [80u64, 100] {
            if units * 100 < quota * pct {
                continue;
            }
            // Marked fired and queued in one transaction: either both happen or neither.
            let mut tx = state.store.begin().await?;
            if !notify::fire_once(&mut tx, &format!("quota:{}:{month}:{pct}", s.id)).await? {
                continue;
            }
            let Some(app) = apps::app_by_id(&mut tx, s.app_id).await? else { continue };
            let api = catalog::api_by_id(&mut tx, s.api_id).await?.map(|a| a.slug.to_string()).unwrap_or_default();
            let data = serde_json::json!({
                "subscription_id": s.id.to_string(), "app_id": app.id.to_string(), "api": api, "plan": plan.slug.as_str(),
                "month": month, "threshold_percent": pct, "used": units, "quota": quota,
            });
            let text = format!(
                "Your app `{}` has used {units} of the {quota} calls its plan `{}` of API `{api}` allows in {month} ({pct}%).{}",
                app.name.as_str(),
                plan.slug,
                if pct >= 100 {
                    " Further calls are refused with 429 until the month ends, or until you change plans."
                } else {
                    ""
                }
            );
            notify_org(
                state,
                tx,
                app.org_id,
                "quota.threshold_reached",
                &format!("{pct}% of your {api} quota used"),
                &text,
                data,
            )
            .await?;
            fired += 1;
        }
    }

    // Rules.
    let mut c = state.store.conn().await?;
    let rules = notify::rules(&mut c, None).await?;
    drop(c);
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    for r in rules {
        let window_ms = r.window_minutes * 60_000;
        let f =
            Filter { from_millis: now_ms - window_ms, to_millis: now_ms, api_id: Some(r.api_id), ..Default::default() };
        let mut c = state.store.conn().await?;
        let rows = rollups::read(&mut c, Granularity::Minute, &f, None).await?;
        drop(c);
        let calls: i64 = rows.iter().map(|x| x.calls).sum();
        if calls == 0 {
            continue;
        }
        let (value, breached) = match r.kind.as_str() {
            "error_rate" => {
                let errors: i64 = rows.iter().filter(|x| x.status_class == "5xx").map(|x| x.calls).sum();
                let pct = errors as f64 * 100.0 / calls as f64;
                (pct, pct >= r.threshold as f64)
            }
            "p95_latency" => {
                let mut sk = LatencySketch::new();
                rows.iter().for_each(|x| sk.merge(&x.sketch));
                let ms = sk.quantile(0.95).unwrap_or(0.0) / 1000.0;
                (ms, ms >= r.threshold as f64)
            }
            _ => continue,
        };
        if !breached {
            continue;
        }
        let mut tx = state.store.begin().await?;
        if !notify::fire_unless_fired_within(&mut tx, &format!("rule:{}", r.id), now_ms, window_ms).await? {
            continue;
        }
        let Some(api) = catalog::api_by_id(&mut tx, r.api_id).await? else { continue };
        let unit = if r.kind == "error_rate" { "%" } else { " ms" };
        let data = serde_json::json!({
            "rule_id": r.id.to_string(), "api": api.slug.as_str(), "kind": r.kind, "threshold": r.threshold,
            "value": (value * 100.0).round() / 100.0, "window_minutes": r.window_minutes, "calls": calls,
        });
        let text = format!(
            "API `{}`: {} was {:.2}{unit} over the last {} minutes ({calls} calls), at or above the rule's threshold of {}{unit}.",
            api.slug, r.kind, value, r.window_minutes, r.threshold
        );
        notify_org(
            state,
            tx,
            api.org_id,
            "alert.triggered",
            &format!("Alert on {}: {}", api.slug, r.kind),
            &text,
            data,
        )
        .await?;
        fired += 1;
    }
    Ok(fired)
}

/// Evaluates every 60 s (first run after 5 s) until the task is aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    spawn_every(state, Duration::from_secs(60))
}

pub fn spawn_every(state: AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5).min(every)).await;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = evaluate(&state).await {
                tracing::warn!(error = %e, "alert evaluation failed; retrying next minute");
            }
        }
    })
}
