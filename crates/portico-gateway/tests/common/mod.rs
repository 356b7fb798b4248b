//! The gateway on its own for black-box tests: a snapshot with one API (`slug`, major 1) over
//! an upstream, one consumer key subscribed to it, and the gateway serving on port 0.
#![allow(dead_code)]

use arc_swap::ArcSwap;
use portico_core::api_key::{ApiKey, Pepper};
use portico_core::ids::*;
use portico_core::model::LifecycleState;
use portico_core::policy::Policies;
use portico_core::snapshot::*;
use portico_core::upstream::UpstreamPolicy;
use portico_core::usage::{DiscardUsage, UsageSink};
use portico_core::values::{RateLimit, Slug, UpstreamUrl, VersionNumber};
use portico_gateway::{Gateway, GatewayConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// An upstream that answers every request with what it received, as JSON: method, path,
/// query, headers and the body's length (and the body, when it is UTF-8). It also sends an
/// `x-upstream-internal` header that response rules may remove.
pub async fn echo_upstream() -> String {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let headers: serde_json::Map<String, Value> =
                        parts.headers.iter().map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("")))).collect();
                    let out = json!({"method": parts.method.as_str(), "path": parts.uri.path(), "query": parts.uri.query(),
                        "headers": headers, "body_len": body.len(), "body": String::from_utf8(body.to_vec()).ok()});
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(out.to_string())));
                    resp.headers_mut().insert("x-upstream-internal", "build-42".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// The outbound policy of the tests: loopback allowed, since every test upstream runs on it.
pub fn loopback() -> portico_core::outbound::OutboundPolicy {
    portico_core::outbound::OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])
}

/// A raw TCP upstream on a free loopback port that hands every connection to `serve` on its
/// own task (for upstreams that misbehave or speak more than HTTP); its `http://` URL.
pub async fn tcp_server<F, Fut>(serve: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(serve(s));
        }
    });
    url
}

/// The gateway's defaults with loopback upstreams allowed.
pub fn config() -> GatewayConfig {
    GatewayConfig { outbound: loopback(), ..GatewayConfig::default() }
}

pub struct Setup {
    pub slug: &'static str,
    pub upstream: String,
    pub policy: UpstreamPolicy,
    pub policies: Policies,
    pub rate_limit: Option<RateLimit>,
    /// More windows, after `rate_limit`.
    pub rate_limits: Vec<RateLimit>,
    pub monthly_quota: Option<u64>,
    pub daily_quota: Option<u64>,
    /// operationId → its own windows.
    pub operation_limits: HashMap<String, Vec<RateLimit>>,
    pub operations: Option<Arc<portico_core::operations::OperationRouter>>,
    pub config: GatewayConfig,
    pub sink: Arc<dyn UsageSink>,
    /// Consumer apps, each with its own key and subscription (`c1`, `c2`, …): at least one.
    pub consumers: usize,
    /// When it fires, the gateway stops accepting and drains; `None`: it serves until the test ends.
    pub shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Setup {
    pub fn new(slug: &'static str, upstream: &str) -> Self {
        Setup {
            slug,
            upstream: upstream.to_owned(),
            policy: UpstreamPolicy::default(),
            policies: Policies::default(),
            rate_limit: None,
            rate_limits: Vec::new(),
            monthly_quota: None,
            daily_quota: None,
            operation_limits: HashMap::new(),
            operations: None,
            config: config(),
            sink: Arc::new(DiscardUsage),
            consumers: 1,
            shutdown: None,
        }
    }
}

pub struct Running {
    pub addr: std::net::SocketAddr,
    /// `http://addr/{slug}/v1`
    pub base: String,
    pub key: String,
    /// One key per consumer app; `key` is the first.
    pub keys: Vec<String>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The gateway's `serve`: ends after a [`Setup::shutdown`] once the drain is over.
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn start(s: Setup) -> Running {
    let pepper = Pepper::generate();
    let api_id = ApiId::new();
    let version = VersionRoute {
        version_id: VersionId::new(),
        version: VersionNumber::parse("1.0.0").unwrap(),
        state: LifecycleState::Published,
        upstream: UpstreamUrl::parse(&s.upstream).unwrap(),
        operations: s.operations,
        policy: Arc::new(s.policy),
        policies: Arc::new(s.policies),
    };
    let slug = Slug::parse(s.slug).unwrap();
    let (mut keys, mut grants, mut subscriptions) = (Vec::new(), HashMap::new(), HashMap::new());
    for i in 1..=s.consumers.max(1) {
        let (key, app) = (ApiKey::generate(), AppId::new());
        let grant = KeyGrant {
            key_id: KeyId::new(),
            hash: key.hash(&pepper),
            app_id: app,
            consumer_org_id: OrgId::new(),
            consumer_slug: Slug::parse(&format!("c{i}")).unwrap(),
            expires_at_ms: None,
            scopes: None,
            last_used: Default::default(),
            rehash: Default::default(),
        };
        let sub = SubscriptionGrant {
            subscription_id: SubscriptionId::new(),
            plan_id: PlanId::new(),
            plan_slug: Slug::parse("p1").unwrap(),
            rate_limits: s.rate_limit.into_iter().chain(s.rate_limits.iter().copied()).collect(),
            monthly_quota: s.monthly_quota,
            daily_quota: s.daily_quota,
            operation_limits: (!s.operation_limits.is_empty()).then(|| Arc::new(s.operation_limits.clone())),
            quota_used: 0,
            quota_month: 0,
            quota_used_today: 0,
            quota_day: 0,
        };
        grants.insert(key.hash(&pepper), grant);
        subscriptions.insert((app, api_id), sub);
        keys.push(key.expose_secret().to_owned());
    }
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
        generation: 1,
        apis: HashMap::from([(slug.clone(), ApiRoute { api_id, slug, majors: BTreeMap::from([(1, version)]) })]),
        keys: grants,
        subscriptions,
        ..Default::default()
    }));
    let gw = Gateway::new(snapshot.clone(), pepper, s.sink, s.config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = s.shutdown;
    let served = tokio::spawn(gw.serve(listener, async move {
        match shutdown {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }));
    Running { addr, base: format!("http://{addr}/{}/v1", s.slug), key: keys[0].clone(), keys, snapshot, served }
}
