//! The **config snapshot**: everything the gateway needs to serve a request, compiled by the
//! control plane from the store and swapped in atomically. The gateway never reads the store.

use crate::api_key::KeyHash;
use crate::ids::{ApiId, AppId, KeyId, OrgId, PlanId, SubscriptionId, VersionId};
use crate::model::LifecycleState;
use crate::operations::OperationRouter;
use crate::policy::Policies;
use crate::upstream::UpstreamPolicy;
use crate::values::{RateLimit, Slug, UpstreamUrl, VersionNumber};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One immutable view of the marketplace's routing and access rules.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with each compile; shown in logs and `/readyz`.
    pub generation: u64,
    /// API slug → route.
    pub apis: HashMap<Slug, ApiRoute>,
    /// Host name (lowercase) → the API that answers on it as `/v{major}/…`.
    pub hosts: HashMap<String, Slug>,
    /// Hashed key → who it belongs to. Revoked keys are absent.
    pub keys: HashMap<KeyHash, KeyGrant>,
    /// (app, API) → the active subscription that lets the app call the API.
    pub subscriptions: HashMap<(AppId, ApiId), SubscriptionGrant>,
    /// Portico's access-token signing keys: (kid, raw Ed25519 public key, retired at — unix
    /// seconds). Tokens signed by a key not listed here are refused, and so are tokens a
    /// retired key signed after its retirement (a rotation after a leak).
    pub token_keys: Vec<(String, [u8; 32], Option<i64>)>,
    /// OAuth client ids that are not revoked: a token issued to any other is refused at once,
    /// before it expires.
    pub oauth_clients: std::collections::HashSet<String>,
    /// An external issuer's JWKS URL → its `iss` → client id (its tokens' client claim) → the
    /// app it calls as: what the apps' owners registered (and proved) for an API's
    /// `policies.token_issuers`. An issuer is its `iss` with its keys: the same `iss` with other
    /// keys reaches none of these.
    pub external_clients: HashMap<String, HashMap<String, HashMap<String, ExternalGrant>>>,
}

/// The app an external issuer's client calls as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalGrant {
    pub app_id: AppId,
    pub consumer_org_id: OrgId,
    pub consumer_slug: Slug,
}

#[derive(Debug, Clone)]
pub struct ApiRoute {
    pub api_id: ApiId,
    pub slug: Slug,
    /// Major version → the newest version of that major that serves traffic.
    pub majors: BTreeMap<u32, VersionRoute>,
}

#[derive(Debug, Clone)]
pub struct VersionRoute {
    pub version_id: VersionId,
    pub version: VersionNumber,
    pub state: LifecycleState,
    pub upstream: UpstreamUrl,
    /// The document's operations. `None`: any path under the prefix is forwarded.
    pub operations: Option<Arc<OperationRouter>>,
    /// Targets beyond `upstream`, balancing, timeouts, retries, health checks.
    pub policy: Arc<UpstreamPolicy>,
    /// IP lists, JSON depth, weights, rewriting, upstream credential, signing, CORS.
    pub policies: Arc<Policies>,
}

#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub key_id: KeyId,
    pub hash: KeyHash,
    pub app_id: AppId,
    pub consumer_org_id: OrgId,
    pub consumer_slug: Slug,
    /// Unix millis from which the key is refused (expiry, or the end of a rotation's overlap).
    pub expires_at_ms: Option<i64>,
    /// API slugs the key may call; `None`: every API its app subscribes to.
    pub scopes: Option<Arc<[String]>>,
    /// Unix seconds of the last call with this key: set by the gateway (one relaxed atomic
    /// store), written to the store in batches by the control plane; carried from snapshot to
    /// snapshot.
    pub last_used: Arc<std::sync::atomic::AtomicI64>,
    /// The key's hash under the current pepper, set by the gateway when it found the key under
    /// a previous pepper (after a rotation); the control plane writes it to the store in its
    /// next batch, and the next snapshot knows the key by it.
    pub rehash: Arc<std::sync::OnceLock<KeyHash>>,
}

#[derive(Debug, Clone)]
pub struct SubscriptionGrant {
    pub subscription_id: SubscriptionId,
    pub plan_id: PlanId,
    pub plan_slug: Slug,
    /// The plan's rate-limit windows (each of its own period), all enforced.
    pub rate_limits: Vec<RateLimit>,
    pub monthly_quota: Option<u64>,
    /// Units per calendar day (UTC).
    pub daily_quota: Option<u64>,
    /// The plan's windows for single operations (operationId → windows), shared by the plan's
    /// subscriptions; `None` when it has none.
    pub operation_limits: Option<Arc<HashMap<String, Vec<RateLimit>>>>,
    /// Quota units the store had counted for this subscription in the current period when the
    /// snapshot was compiled: where a gateway that restarts starts counting from.
    pub quota_used: u64,
    /// The month `quota_used` was counted in (`year * 12 + month - 1`, UTC): a counter seeded in
    /// another month starts at zero.
    pub quota_month: i32,
    /// Units the store had counted today, and the day that is (days since 1970-01-01, UTC).
    pub quota_used_today: u64,
    pub quota_day: i32,
}

impl ApiRoute {
    /// The version that serves `/v{major}`: among versions that serve traffic, the newest.
    pub fn select(versions: impl IntoIterator<Item = VersionRoute>) -> BTreeMap<u32, VersionRoute> {
        let mut majors: BTreeMap<u32, VersionRoute> = BTreeMap::new();
        for v in versions.into_iter().filter(|v| v.state.serves_traffic()) {
            match majors.get(&v.version.major) {
                Some(cur) if cur.version >= v.version => {}
                _ => {
                    majors.insert(v.version.major, v);
                }
            }
        }
        majors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str, state: LifecycleState) -> VersionRoute {
        VersionRoute {
            version_id: VersionId::new(),
            version: VersionNumber::parse(s).unwrap(),
            state,
            upstream: UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            operations: None,
            policy: Default::default(),
            policies: Default::default(),
        }
    }

    #[test]
    fn newest_serving_version_of_each_major_wins() {
        use LifecycleState::*;
        let m = ApiRoute::select([
            v("1.0.0", Published),
            v("1.2.0", Published),
            v("1.3.0", Draft),
            v("2.0.0", Retired),
            v("2.1.0", Deprecated),
        ]);
        assert_eq!(m[&1].version.to_string(), "1.2.0");
        assert_eq!(m[&2].version.to_string(), "2.1.0");
        assert_eq!(m.len(), 2);
    }
}
