//! Consumers' apps, their keys and subscriptions, and what they used. Every lookup checks that
//! the caller may see the app's organization; another tenant's app answers 404.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::services::{parse_id, publish, visible_api};
use crate::state::AppState;
use crate::views::{AppView, CreatedKey, KeyView, SubscriptionView, UsageDayView, UsageReport};
use portico_core::api_key::ApiKey;
use portico_core::ids::{AppId, KeyId, OrgId, SubscriptionId};
use portico_core::model::{OrgKind, Visibility};
use portico_core::values::{Name, Slug};
use portico_store::apps::{self, App, Subscription};
use portico_store::{Page, catalog, orgs};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// The consumer organization; may be left out when you belong to one.
    pub org_id: Option<String>,
    #[schema(value_type = String, example = "Weather dashboard")]
    pub name: Name,
    /// Defaults to one made from the name.
    #[schema(value_type = Option<String>)]
    pub slug: Option<Slug>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    #[schema(value_type = Option<String>)]
    pub name: Option<Name>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label to tell keys apart, e.g. `production`.
    pub name: Option<String>,
    /// The key stops working this many days from now (1-3650); none: it does not expire.
    pub expires_in_days: Option<u32>,
    /// API slugs the key may call; none: every API the app subscribes to.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working beside the new one, 0-720 hours (default 24).
    pub overlap_hours: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    pub app_id: String,
    /// The API's slug.
    #[schema(example = "weather")]
    pub api: String,
    /// The plan's slug.
    #[schema(example = "free")]
    pub plan: String,
}

/// The app, if `who` may read it; 404 otherwise.
pub(crate) async fn readable_app(state: &AppState, who: &Principal, id: &str) -> Result<App> {
    let id: AppId = parse_id(id, "app")?;
    let mut c = state.store.conn().await?;
    match apps::app_by_id(&mut c, id).await? {
        Some(a) if who.can_read(a.org_id) => Ok(a),
        _ => Err(Error::not_found(format_args!("app `{id}`"))),
    }
}

async fn managed_app(state: &AppState, who: &Principal, id: &str) -> Result<App> {
    let app = readable_app(state, who, id).await?;
    if !who.can_manage(app.org_id) {
        return Err(Error::Forbidden("your role in this organization cannot change its apps".into()));
    }
    Ok(app)
}

pub async fn list(state: &AppState, who: &Principal, page: Page) -> Result<Vec<AppView>> {
    let mut c = state.store.conn().await?;
    let orgs = who.org_ids();
    let rows = if who.is_admin() {
        apps::list_apps(&mut c, None, page).await?
    } else {
        apps::list_apps(&mut c, Some(&orgs), page).await?
    };
    Ok(rows.iter().map(AppView::from).collect())
}

pub async fn create(state: &AppState, who: &Principal, req: CreateApp) -> Result<AppView> {
    let org: OrgId = match req.org_id.as_deref() {
        Some(id) => parse_id(id, "organization")?,
        None => match who.orgs_of_kind(OrgKind::Consumer).as_slice() {
            [one] => *one,
            [] => return Err(Error::Forbidden("apps belong to consumer organizations and you are in none; create one with POST /api/v1/orgs (kind: consumer)".into())),
            _ => return Err(Error::Invalid("you belong to several consumer organizations: set org_id".into())),
        },
    };
    if !who.can_read(org) {
        return Err(Error::not_found(format_args!("organization `{org}`")));
    }
    if !who.can_manage(org) {
        return Err(Error::Forbidden("your role in this organization cannot create apps".into()));
    }
    let mut c = state.store.conn().await?;
    let kind = orgs::by_id(&mut c, org).await?.map(|o| o.kind);
    drop(c);
    if kind != Some(OrgKind::Consumer) {
        return Err(Error::Invalid(format!(
            "organization `{org}` is not a consumer organization; apps belong to consumer organizations"
        )));
    }
    let slug = match req.slug {
        Some(s) => s,
        None => Slug::slugify(req.name.as_str()).or_else(|_| Slug::parse("app"))?,
    };
    let mut tx = state.store.begin().await?;
    let app = apps::insert_app(&mut tx, org, &slug, &req.name, &req.description).await?;
    let view = AppView::from(&app);
    audit::record(&mut tx, who, Change::new("app.create", "app", app.id, Some(org)).after(&view)).await?;
    tx.commit().await?;
    Ok(view)
}

pub async fn get(state: &AppState, who: &Principal, id: &str) -> Result<AppView> {
    Ok(AppView::from(&readable_app(state, who, id).await?))
}

pub async fn update(state: &AppState, who: &Principal, id: &str, req: UpdateApp) -> Result<AppView> {
    let mut app = managed_app(state, who, id).await?;
    let before = AppView::from(&app);
    if let Some(n) = req.name {
        app.name = n;
    }
    if let Some(d) = req.description {
        app.description = d;
    }
    let mut tx = state.store.begin().await?;
    apps::update_app(&mut tx, app.id, &app.name, &app.description).await?;
    let view = AppView::from(&app);
    audit::record(&mut tx, who, Change::new("app.update", "app", app.id, Some(app.org_id)).before(before).after(&view))
        .await?;
    tx.commit().await?;
    Ok(view)
}

pub async fn delete(state: &AppState, who: &Principal, id: &str) -> Result<()> {
    let app = managed_app(state, who, id).await?;
    let mut tx = state.store.begin().await?;
    apps::delete_app(&mut tx, app.id).await?;
    audit::record(&mut tx, who, Change::new("app.delete", "app", app.id, Some(app.org_id)).before(AppView::from(&app)))
        .await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(())
}

pub async fn list_keys(state: &AppState, who: &Principal, app: &str) -> Result<Vec<KeyView>> {
    let app = readable_app(state, who, app).await?;
    let mut c = state.store.conn().await?;
    Ok(apps::keys(&mut c, app.id).await?.iter().map(KeyView::from).collect())
}

/// Issues a key. Its secret is in the answer and nowhere else: only its hash is kept.
pub async fn create_key(state: &AppState, who: &Principal, app: &str, req: CreateKey) -> Result<CreatedKey> {
    let app = managed_app(state, who, app).await?;
    let name = req.name.unwrap_or_else(|| "default".into());
    if name.trim().is_empty() || name.len() > 60 {
        return Err(Error::Invalid("name: a key's name needs 1-60 characters".into()));
    }
    let expires_at = match req.expires_in_days {
        None => None,
        Some(d) if (1..=3650).contains(&d) => Some(portico_store::now_millis() + i64::from(d) * 86_400_000),
        Some(_) => return Err(Error::Invalid("expires_in_days: 1-3650".into())),
    };
    if req.scopes.len() > 100 || req.scopes.iter().any(|s| Slug::parse(s).is_err()) {
        return Err(Error::Invalid("scopes: a list of API slugs (at most 100)".into()));
    }
    let mut tx = state.store.begin().await?;
    let created = issue_key(&mut tx, state, who, &app, name.trim(), expires_at, &req.scopes, "key.create").await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(created)
}

/// Inserts a new key in `c` (the caller's transaction), with its audit entry.
#[allow(clippy::too_many_arguments)]
async fn issue_key(
    c: &mut portico_store::Conn,
    state: &AppState,
    who: &Principal,
    app: &App,
    name: &str,
    expires_at: Option<i64>,
    scopes: &[String],
    action: &'static str,
) -> Result<CreatedKey> {
    let key = ApiKey::generate();
    let hash = key.hash(&state.pepper);
    let (prefix, last4) = (key.display_prefix(), key.last4());
    let rec = apps::insert_key(
        c,
        apps::NewKey {
            app: app.id,
            name,
            prefix: &prefix,
            last4: &last4,
            hash: &hash,
            expires_at,
            scopes,
            pepper_id: &state.pepper.id(),
        },
    )
    .await?;
    let info = KeyView::from(&rec);
    audit::record(c, who, Change::new(action, "key", rec.id, Some(app.org_id)).after(&info)).await?;
    Ok(CreatedKey { key: key.expose_secret().to_owned(), info })
}

/// Rotates a key: a new one with the same name and scopes, and the old one expiring after the
/// overlap, so clients can switch without a gap.
pub async fn rotate_key(state: &AppState, who: &Principal, app: &str, key: &str, req: RotateKey) -> Result<CreatedKey> {
    let app = managed_app(state, who, app).await?;
    let key_id: KeyId = parse_id(key, "key")?;
    let overlap = req.overlap_hours.unwrap_or(24);
    if overlap > 720 {
        return Err(Error::Invalid("overlap_hours: 0-720".into()));
    }
    let mut c = state.store.conn().await?;
    let old = apps::keys(&mut c, app.id)
        .await?
        .into_iter()
        .find(|k| k.id == key_id && k.revoked_at.is_none())
        .ok_or_else(|| Error::not_found(format_args!("key `{key_id}`")))?;
    drop(c);
    let now = time::OffsetDateTime::now_utc();
    if old.expires_at.is_some_and(|at| at <= now) {
        return Err(Error::Invalid("this key has expired: create a new one instead of rotating it".into()));
    }
    let until = portico_store::now_millis() + i64::from(overlap) * 3_600_000;
    // The new key lives as long as the old one was meant to (its lifetime, from now).
    let lifetime = old.expires_at.map(|at| (at - old.created_at).whole_milliseconds() as i64);
    let expires_at = lifetime.map(|ms| portico_store::now_millis() + ms);
    // The new key and the old one's expiry in one transaction: both or neither.
    let mut tx = state.store.begin().await?;
    let created = issue_key(&mut tx, state, who, &app, &old.name, expires_at, &old.scopes, "key.rotate").await?;
    apps::expire_key(&mut tx, app.id, key_id, until).await.map_err(|e| match e {
        portico_store::Error::NotFound => Error::not_found(format_args!("key `{key_id}`")),
        other => other.into(),
    })?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(created)
}

pub async fn revoke_key(state: &AppState, who: &Principal, app: &str, key: &str) -> Result<()> {
    let app = managed_app(state, who, app).await?;
    let key: KeyId = parse_id(key, "key")?;
    let mut tx = state.store.begin().await?;
    apps::revoke_key(&mut tx, app.id, key).await.map_err(|e| match e {
        portico_store::Error::NotFound => Error::not_found(format_args!("key `{key}`")),
        other => other.into(),
    })?;
    audit::record(&mut tx, who, Change::new("key.revoke", "key", key, Some(app.org_id))).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(())
}

async fn sub_view(state: &AppState, s: &Subscription) -> Result<SubscriptionView> {
    let mut c = state.store.conn().await?;
    let api = catalog::api_by_id(&mut c, s.api_id).await?.map(|a| a.slug.to_string()).unwrap_or_default();
    let plan = catalog::plan_by_id(&mut c, s.plan_id).await?.map(|p| p.slug.to_string()).unwrap_or_default();
    Ok(SubscriptionView::from(s, &api, &plan))
}

pub async fn subscribe(state: &AppState, who: &Principal, req: CreateSubscription) -> Result<SubscriptionView> {
    let app = managed_app(state, who, &req.app_id).await?;
    let api = visible_api(state, Some(who), &req.api).await?;
    let mut c = state.store.conn().await?;
    let plans = catalog::plans(&mut c, api.id).await?;
    drop(c);
    let insider = who.can_read(api.org_id);
    let plan = plans
        .iter()
        .find(|p| p.slug.as_str() == req.plan && (insider || p.fields.visibility == Visibility::Public))
        .ok_or_else(|| {
            let known: Vec<&str> = plans
                .iter()
                .filter(|p| insider || p.fields.visibility == Visibility::Public)
                .map(|p| p.slug.as_str())
                .collect();
            Error::NotFound(format!(
                "API `{}` has no plan `{}`; its plans are: {}",
                api.slug,
                req.plan,
                known.join(", ")
            ))
        })?;
    let mut tx = state.store.begin().await?;
    let sub = apps::insert_subscription(&mut tx, app.id, api.id, plan.id).await?;
    let view = SubscriptionView::from(&sub, api.slug.as_str(), plan.slug.as_str());
    audit::record(
        &mut tx,
        who,
        Change::new("subscription.create", "subscription", sub.id, Some(app.org_id)).after(&view),
    )
    .await?;
    let event = serde_json::to_value(&view).unwrap_or_default();
    crate::services::webhooks::emit(&mut tx, app.org_id, "subscription.created", event.clone()).await?;
    crate::services::webhooks::emit(&mut tx, api.org_id, "subscription.created", event).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

/// Subscriptions of the caller's apps (all, for platform admins), optionally of one app.
pub async fn list_subscriptions(
    state: &AppState,
    who: &Principal,
    app: Option<&str>,
    page: Page,
) -> Result<Vec<SubscriptionView>> {
    let apps_list: Vec<App> = match app {
        Some(id) => vec![readable_app(state, who, id).await?],
        None => {
            let mut c = state.store.conn().await?;
            if who.is_admin() {
                apps::list_apps(&mut c, None, Page::all()).await?
            } else {
                apps::list_apps(&mut c, Some(&who.org_ids()), Page::all()).await?
            }
        }
    };
    let mut out = Vec::new();
    for a in &apps_list {
        let mut c = state.store.conn().await?;
        let subs = apps::subscriptions_of_app(&mut c, a.id).await?;
        drop(c);
        for s in &subs {
            out.push(sub_view(state, s).await?);
        }
    }
    Ok(out.into_iter().skip(page.offset as usize).take(page.limit as usize).collect())
}

async fn readable_subscription(state: &AppState, who: &Principal, id: &str) -> Result<Subscription> {
    let sid: SubscriptionId = parse_id(id, "subscription")?;
    let mut c = state.store.conn().await?;
    let sub = apps::subscription_by_id(&mut c, sid)
        .await?
        .ok_or_else(|| Error::not_found(format_args!("subscription `{sid}`")))?;
    let app = apps::app_by_id(&mut c, sub.app_id).await?;
    match app {
        Some(a) if who.can_read(a.org_id) => Ok(sub),
        _ => Err(Error::not_found(format_args!("subscription `{sid}`"))),
    }
}

pub async fn get_subscription(state: &AppState, who: &Principal, id: &str) -> Result<SubscriptionView> {
    let s = readable_subscription(state, who, id).await?;
    sub_view(state, &s).await
}

pub async fn cancel_subscription(state: &AppState, who: &Principal, id: &str) -> Result<SubscriptionView> {
    let s = readable_subscription(state, who, id).await?;
    let app = managed_app(state, who, &s.app_id.to_string()).await?;
    let mut tx = state.store.begin().await?;
    apps::cancel_subscription(&mut tx, s.id).await?;
    audit::record(&mut tx, who, Change::new("subscription.cancel", "subscription", s.id, Some(app.org_id))).await?;
    let event = serde_json::json!({"id": s.id.to_string(), "app_id": s.app_id.to_string(), "api_id": s.api_id.to_string(), "plan_id": s.plan_id.to_string()});
    crate::services::webhooks::emit(&mut tx, app.org_id, "subscription.cancelled", event.clone()).await?;
    if let Some(api) = catalog::api_by_id(&mut tx, s.api_id).await? {
        crate::services::webhooks::emit(&mut tx, api.org_id, "subscription.cancelled", event).await?;
    }
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    let mut c = state.store.conn().await?;
    let s = apps::subscription_by_id(&mut c, s.id).await?.ok_or_else(|| Error::not_found("the subscription"))?;
    drop(c);
    sub_view(state, &s).await
}

/// A `from`..`to` range of UTC days (`YYYY-MM-DD`); defaults to the last 30 days.
pub fn day_range(from: Option<&str>, to: Option<&str>) -> Result<(String, String)> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let parse = |s: &str, field: &str| {
        time::Date::parse(s, &fmt).map_err(|_| Error::Invalid(format!("{field}: `{s}` is not a date like 2026-11-25")))
    };
    let today = time::OffsetDateTime::now_utc().date();
    let to = match to {
        Some(s) => parse(s, "to")?,
        None => today,
    };
    let from = match from {
        Some(s) => parse(s, "from")?,
        None => to - time::Duration::days(29),
    };
    if from > to {
        return Err(Error::Invalid("from must not be after to".into()));
    }
    let f = |d: time::Date| d.format(&fmt).unwrap_or_default();
    Ok((f(from), f(to)))
}

async fn report(state: &AppState, subs: &[SubscriptionId], from: &str, to: &str) -> Result<UsageReport> {
    let mut c = state.store.conn().await?;
    let mut days = Vec::new();
    for s in subs {
        days.extend(portico_store::usage::daily(&mut c, *s, from, to).await?.iter().map(UsageDayView::from));
    }
    days.sort_by(|a, b| (&a.day, &a.subscription_id).cmp(&(&b.day, &b.subscription_id)));
    Ok(UsageReport { from: from.into(), to: to.into(), total_calls: days.iter().map(|d| d.calls).sum(), days })
}

pub async fn subscription_usage(
    state: &AppState,
    who: &Principal,
    id: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<UsageReport> {
    let s = readable_subscription(state, who, id).await?;
    let (from, to) = day_range(from, to)?;
    report(state, &[s.id], &from, &to).await
}

pub async fn app_usage(
    state: &AppState,
    who: &Principal,
    app: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<UsageReport> {
    let app = readable_app(state, who, app).await?;
    let (from, to) = day_range(from, to)?;
    let mut c = state.store.conn().await?;
    let subs: Vec<SubscriptionId> = apps::subscriptions_of_app(&mut c, app.id).await?.iter().map(|s| s.id).collect();
    drop(c);
    report(state, &subs, &from, &to).await
}
