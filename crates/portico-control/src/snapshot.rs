//! The snapshot compiler: reads the store, builds the gateway's immutable
//! [`Snapshot`], and swaps it in. Changes made through this process republish at once
//! (`refresh` after each commit); changes made by other processes are picked up by `watch`,
//! which polls the store's config generation.

use arc_swap::ArcSwap;
use portico_core::api_key::Pepper;
use portico_core::ids::ApiId;
use portico_core::operations::OperationRouter;
use portico_core::snapshot::{ApiRoute, ExternalGrant, KeyGrant, Snapshot, SubscriptionGrant, VersionRoute};
use portico_core::values::Slug;
use portico_store::{Store, apps, catalog};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct SnapshotPublisher {
    current: Arc<ArcSwap<Snapshot>>,
    compile: tokio::sync::Mutex<()>,
    /// Opens the secrets in versions' policies (stored sealed).
    secrets: Arc<portico_core::secret::Keyring>,
}

impl std::fmt::Debug for SnapshotPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotPublisher(generation {})", self.current.load().generation)
    }
}

impl SnapshotPublisher {
    /// Writes keys' last-used times that moved since `flushed` (seconds by key) to the store,
    /// in one transaction.
    pub async fn flush_last_used(
        &self,
        store: &Store,
        flushed: &mut HashMap<portico_core::ids::KeyId, i64>,
    ) -> Result<usize, portico_store::Error> {
        let snapshot = self.current.load_full();
        let moved: Vec<(portico_core::ids::KeyId, i64)> = snapshot
            .keys
            .values()
            .filter_map(|g| {
                let at = g.last_used.load(std::sync::atomic::Ordering::Relaxed);
                (at > 0 && flushed.get(&g.key_id).is_none_or(|f| *f < at)).then_some((g.key_id, at))
            })
            .collect();
        if moved.is_empty() {
            return Ok(0);
        }
        let millis: Vec<_> = moved.iter().map(|(k, s)| (*k, s * 1000)).collect();
        let mut tx = store.begin().await?;
        apps::set_last_used(&mut tx, &millis).await?;
        tx.commit().await?;
        flushed.extend(moved.iter().copied());
        Ok(moved.len())
    }

    /// Writes the hashes under the current pepper of keys the gateway found under a previous
    /// one (after a pepper rotation), then recompiles the snapshot so that they are known by
    /// them. Returns how many keys moved.
    pub async fn flush_rehashed(&self, store: &Store, pepper: &Pepper) -> Result<u64, portico_store::Error> {
        let snapshot = self.current.load_full();
        let rehashed: Vec<_> =
            snapshot.keys.values().filter_map(|g| g.rehash.get().map(|new| (g.key_id, g.hash, *new))).collect();
        if rehashed.is_empty() {
            return Ok(0);
        }
        let mut tx = store.begin().await?;
        let n = apps::rehash_keys(&mut tx, &rehashed, &pepper.id()).await?;
        let left = apps::hashes_under_other_peppers(&mut tx, &pepper.id()).await?;
        tx.commit().await?;
        tracing::info!(rehashed = n, left, "keys made under a previous pepper now hashed under the current one");
        self.refresh(store).await?;
        Ok(n)
    }

    /// Flushes last-used times and re-hashed keys every `every` until the task is aborted.
    pub fn flush_every(self: Arc<Self>, store: Store, pepper: Pepper, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut flushed = HashMap::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.flush_last_used(&store, &mut flushed).await {
                    tracing::warn!(error = %e, "writing keys' last-used times failed; retrying");
                }
                if pepper.previous_count() > 0
                    && let Err(e) = self.flush_rehashed(&store, &pepper).await
                {
                    tracing::warn!(error = %e, "writing re-hashed keys failed; retrying");
                }
            }
        })
    }

    pub fn new(secrets: Arc<portico_core::secret::Keyring>) -> Self {
        SnapshotPublisher {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            compile: tokio::sync::Mutex::new(()),
            secrets,
        }
    }

    /// The handle the gateway reads.
    pub fn handle(&self) -> Arc<ArcSwap<Snapshot>> {
        self.current.clone()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Compiles from the store and publishes. Compiles are serialised, so a slower, older
    /// compile can never overwrite a newer one.
    pub async fn refresh(&self, store: &Store) -> Result<u64, portico_store::Error> {
        let _one_at_a_time = self.compile.lock().await;
        let previous = self.current.load_full();
        let snapshot = compile(store, &self.secrets, Some(&previous)).await?;
        let generation = snapshot.generation;
        self.current.store(Arc::new(snapshot));
        tracing::debug!(generation, "config snapshot published");
        Ok(generation)
    }

    /// Polls the store's config generation every `every` and recompiles when it moved.
    pub fn watch(self: Arc<Self>, store: Store, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let stored = match store.conn().await {
                    Ok(mut c) => portico_store::generation(&mut c).await.ok(),
                    Err(_) => None,
                };
                match stored {
                    Some(g) if g as u64 != self.generation() => {
                        if let Err(e) = self.refresh(&store).await {
                            tracing::warn!(error = %e, "snapshot compile failed; keeping the current one");
                        }
                    }
                    Some(_) => {}
                    None => tracing::warn!("store unreachable; the gateway keeps serving its last snapshot"),
                }
            }
        })
    }
}

/// Reads everything the gateway needs in one transaction, so the snapshot is consistent.
pub async fn compile(
    store: &Store,
    secrets: &portico_core::secret::Keyring,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, portico_store::Error> {
    let mut tx = store.begin().await?;
    let generation = portico_store::generation(&mut tx).await? as u64;
    let all_apis = catalog::list_apis(&mut tx, catalog::ApiScope::All, portico_store::Page::all()).await?;
    let claimed_hosts = catalog::all_hosts(&mut tx).await?;
    let versions = catalog::all_serving_versions(&mut tx).await?;
    let plans: HashMap<_, _> = catalog::all_plans(&mut tx).await?.into_iter().map(|p| (p.id, p)).collect();
    let keys = apps::active_keys(&mut tx).await?;
    let subs = apps::active_subscriptions(&mut tx).await?;
    let today = time::OffsetDateTime::now_utc().date();
    let month_start = today.replace_day(1).unwrap_or(today);
    let token_keys = portico_store::oauth::signing_keys(&mut tx, crate::services::oauth::RETIRED_KEY_KEEP_MS)
        .await?
        .into_iter()
        .filter_map(|k| {
            let raw = crate::services::oauth::raw_public_key(&k.public_key)?;
            Some((k.kid, raw, k.retired_at.map(|t| t.unix_timestamp())))
        })
        .collect();
    let oauth_clients = portico_store::oauth::active_client_ids(&mut tx).await?.into_iter().collect();
    let mut external_clients: HashMap<String, HashMap<String, HashMap<String, ExternalGrant>>> = HashMap::new();
    for (x, org, slug) in portico_store::oauth::external_client_grants(&mut tx).await? {
        let grant = ExternalGrant { app_id: x.app_id, consumer_org_id: org, consumer_slug: slug };
        external_clients.entry(x.jwks_url).or_default().entry(x.issuer).or_default().insert(x.client_id, grant);
    }
    let month_start_ms = (month_start.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let used = portico_store::rollups::units_by_subscription_since(&mut tx, month_start_ms).await?;
    let today_ms = (today.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let used_today = portico_store::rollups::units_by_subscription_since(&mut tx, today_ms).await?;
    tx.commit().await?;

    let mut by_api: HashMap<ApiId, Vec<VersionRoute>> = HashMap::new();
    for v in versions {
        let policies =
            Arc::new(v.policies.map_secrets(|s| secrets.open(s)).map_err(|e| portico_store::Error::Corrupt {
                table: "api_versions",
                message: format!("policies of version {}: {e}", v.id),
            })?);
        let operations = match portico_core::openapi::OpenApiDoc::parse(v.openapi).map_err(|e| e.to_string()).and_then(
            |doc| {
                if policies.validate_requests {
                    OperationRouter::compile_validated(&doc.operations, &doc.upgraded())
                } else {
                    OperationRouter::compile(&doc.operations).map(|r| (r, Vec::new()))
                }
            },
        ) {
            Ok((router, unchecked)) => {
                for problem in unchecked {
                    // Refused when the policy is set; a document stored before can still hold one.
                    tracing::warn!(version = %v.id, problem = %problem, "this operation's calls are forwarded unchecked");
                }
                Some(Arc::new(router))
            }
            Err(e) => {
                // Stored documents were validated on upload; if one still cannot be compiled,
                // the version forwards every path under its prefix rather than none.
                tracing::warn!(version = %v.id, error = %e, "operations not matched for this version");
                None
            }
        };
        by_api.entry(v.api_id).or_default().push(VersionRoute {
            version_id: v.id,
            version: v.version,
            state: v.state,
            upstream: v.upstream_url,
            policy: Arc::new(v.policy),
            policies,
            operations,
        });
    }
    // From the table that holds each name once (`apis.hosts` is the copy for reading).
    let slugs: HashMap<ApiId, &Slug> = all_apis.iter().map(|a| (a.id, &a.slug)).collect();
    let hosts = claimed_hosts.into_iter().filter_map(|(h, id)| Some((h, (*slugs.get(&id)?).clone()))).collect();
    let apis = all_apis
        .into_iter()
        .map(|a| {
            let majors = ApiRoute::select(by_api.remove(&a.id).unwrap_or_default());
            (a.slug.clone(), ApiRoute { api_id: a.id, slug: a.slug, majors })
        })
        .collect();
    // Last-used counters live on across snapshots, so no call is forgotten by a recompile.
    let counters: HashMap<_, _> =
        previous.map(|p| p.keys.values().map(|g| (g.key_id, g.last_used.clone())).collect()).unwrap_or_default();
    let keys = keys
        .into_iter()
        .map(|k| {
            (
                k.hash,
                KeyGrant {
                    key_id: k.id,
                    hash: k.hash,
                    app_id: k.app_id,
                    consumer_org_id: k.org_id,
                    consumer_slug: k.org_slug,
                    expires_at_ms: k.expires_at,
                    scopes: (!k.scopes.is_empty()).then(|| k.scopes.into()),
                    last_used: counters.get(&k.id).cloned().unwrap_or_default(),
                    rehash: Default::default(),
                },
            )
        })
        .collect();
    let op_limits: HashMap<_, _> = plans
        .values()
        .filter(|p| !p.fields.operation_limits.is_empty())
        .map(|p| (p.id, Arc::new(p.fields.operation_limits.clone().into_iter().collect::<HashMap<_, _>>())))
        .collect();
    let subscriptions = subs
        .into_iter()
        .filter_map(|s| {
            let plan = plans.get(&s.plan_id)?;
            Some((
                (s.app_id, s.api_id),
                SubscriptionGrant {
                    subscription_id: s.id,
                    plan_id: plan.id,
                    plan_slug: plan.slug.clone(),
                    rate_limits: plan
                        .fields
                        .rate_limit
                        .into_iter()
                        .chain(plan.fields.rate_limits.iter().copied())
                        .collect(),
                    monthly_quota: plan.fields.monthly_quota,
                    daily_quota: plan.fields.daily_quota,
                    operation_limits: op_limits.get(&plan.id).cloned(),
                    quota_used: used.get(&s.id).copied().unwrap_or(0),
                    quota_month: today.year() * 12 + i32::from(u8::from(today.month())) - 1,
                    quota_used_today: used_today.get(&s.id).copied().unwrap_or(0),
                    quota_day: (today.midnight().assume_utc().unix_timestamp() / 86_400) as i32,
                },
            ))
        })
        .collect();
    Ok(Snapshot { generation, apis, hosts, keys, subscriptions, token_keys, oauth_clients, external_clients })
}
