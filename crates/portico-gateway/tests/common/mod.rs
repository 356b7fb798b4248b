//! The gateway on its own for black-box tests: a snapshot with one API (`slug`, major 1) over
//! an upstream, one consumer key subscribed to it, and the gateway serving on port 0.
#![allow(dead_code)]

use arc_swap::ArcSwap;
use portico_core::api_key::{ApiKey, Pepper};
use portico_core::ids::*;
use portico_core::model::LifecycleState;
use portico_core::snapshot::*;
use portico_core::upstream::UpstreamPolicy;
use portico_core::usage::{DiscardUsage, UsageSink};
use portico_core::values::{RateLimit, Slug, UpstreamUrl, VersionNumber};
use portico_gateway::{Gateway, GatewayConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub struct Setup {
    pub slug: &'static str,
    pub upstream: String,
    pub policy: UpstreamPolicy,
    pub rate_limit: Option<RateLimit>,
    pub config: GatewayConfig,
    pub sink: Arc<dyn UsageSink>,
}

impl Setup {
    pub fn new(slug: &'static str, upstream: &str) -> Self {
        Setup {
            slug,
            upstream: upstream.to_owned(),
            policy: UpstreamPolicy::default(),
            rate_limit: None,
            config: GatewayConfig::default(),
            sink: Arc::new(DiscardUsage),
        }
    }
}

pub struct Running {
    pub addr: std::net::SocketAddr,
    /// `http://addr/{slug}/v1`
    pub base: String,
    pub key: String,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

pub async fn start(s: Setup) -> Running {
    let pepper = Pepper::generate();
    let key = ApiKey::generate();
    let (api_id, app) = (ApiId::new(), AppId::new());
    let version = VersionRoute {
        version_id: VersionId::new(),
        version: VersionNumber::parse("1.0.0").unwrap(),
        state: LifecycleState::Published,
        upstream: UpstreamUrl::parse(&s.upstream).unwrap(),
        operations: None,
        policy: Arc::new(s.policy),
    };
    let slug = Slug::parse(s.slug).unwrap();
    let grant = KeyGrant {
        key_id: KeyId::new(),
        hash: key.hash(&pepper),
        app_id: app,
        consumer_org_id: OrgId::new(),
        consumer_slug: Slug::parse("c1").unwrap(),
    };
    let sub = SubscriptionGrant {
        subscription_id: SubscriptionId::new(),
        plan_id: PlanId::new(),
        plan_slug: Slug::parse("p1").unwrap(),
        rate_limit: s.rate_limit,
        monthly_quota: None,
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
        generation: 1,
        apis: HashMap::from([(slug.clone(), ApiRoute { api_id, slug, majors: BTreeMap::from([(1, version)]) })]),
        keys: HashMap::from([(key.hash(&pepper), grant)]),
        subscriptions: HashMap::from([((app, api_id), sub)]),
    }));
    let gw = Gateway::new(snapshot.clone(), pepper, s.sink, s.config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gw.serve(listener, std::future::pending()));
    Running { addr, base: format!("http://{addr}/{}/v1", s.slug), key: key.expose_secret().to_owned(), snapshot }
}
