//! `portico-gateway` is Portico's data plane: a hyper 1 server (HTTP/1.1 and h2c, and HTTP/1.1 and
//! HTTP/2 over TLS when the binary hands it a TLS listener) that takes a
//! consumer's call through route → screen → identify → entitle → limit → proxy → meter, reading
//! only an immutable [`Snapshot`] that the control plane swaps in through an `ArcSwap`.
//!
//! It is **not** a control plane: it never touches the store or a database, and it makes no
//! decision the snapshot does not encode. Usage goes to a [`UsageSink`] that the binary wires
//! in; the sink must not block. Every answer the gateway makes itself is
//! `application/problem+json` from [`errors`].
//!
//! Code map: [`route`] (path → API, major, rest), [`screen`] (checks before any lookup),
//! [`identify`] (API key → grant), [`limit`] (GCRA rate limit and monthly quota per
//! subscription), [`proxy`] (header rewriting), [`forward`] and [`pool`] (upstream targets,
//! timeouts, retries, breakers, health checks), [`meter`] (byte counting and the usage event),
//! [`cors`], [`metrics`]; `outbound` (the SSRF guard every upstream connection goes through);
//! `trace` (OpenTelemetry spans per call and phase, only with [`GatewayConfig::traces`]);
//! `serve` runs the listener.
//!
//! A version's `policies` (IP lists, JSON depth, operation weights, header and path rewriting,
//! the provider's credential, `Portico-Signature`, CORS) are applied here and in [`proxy`] /
//! [`forward`] / [`cors`].
//!
//! [`cache`] keeps answers of versions whose policies have a `cache` (per app, or shared when
//! the route allows it and the upstream says `public`).
//!
//! With a version's `validate_requests`, each call is checked against its operation in the
//! version's OpenAPI document ([`portico_core::validation`], rules compiled into the snapshot):
//! parameters and media type before the limiter, a JSON body once read.
//!
//! Not here yet: a shared (Redis) limiter across gateway replicas.

pub mod cache;
mod client;
mod conns;
pub mod cors;
pub mod errors;
pub mod forward;
mod framing;
mod health;
pub mod identify;
mod jwks;
pub mod limit;
pub mod meter;
pub mod metrics;
mod outbound;
pub mod pool;
pub mod proxy;
pub mod route;
pub mod screen;
mod serve;
pub mod token;
mod trace;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use identify::{Credential, KeyError};
use meter::{CountingBody, Meter, MeteredBody};
use portico_core::api_key::Pepper;
use portico_core::operations::OperationMatch;
use portico_core::snapshot::Snapshot;
use portico_core::usage::{UsageEvent, UsageSink};
use portico_core::values::Slug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use token::ExternalIssuers;

pub(crate) use client::{UpstreamClient, upstream_client};
pub(crate) use screen::{body_too_large, client_body_failed};
use screen::{key_in_query, smuggling};

/// The error of a body streamed through the gateway (hyper's, a limit's, a deadline's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the gateway sends: streamed from the upstream or made by the gateway.
pub type GwBody = UnsyncBoxBody<Bytes, BoxError>;
/// A consumer's request body on its way upstream (limited, so its error is boxed).
pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// A request whose `Content-Length` is larger is refused with 413 before it is read.
    pub max_body_bytes: u64,
    /// More request headers than this: 431.
    pub max_headers: usize,
    /// A request head (request line and headers) larger than this: 431 (HTTP/1.1; HTTP/2's
    /// header list is bounded the same).
    pub max_head_bytes: usize,
    /// A path and query longer than this: 414.
    pub max_url_bytes: usize,
    /// From sending the request to the upstream's response head; then 504.
    pub upstream_timeout: Duration,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight connections get to finish.
    pub drain_timeout: Duration,
    /// Worker threads, each with its own runtime and upstream pool [default: one per core].
    pub workers: usize,
    /// CA certificates trusted for HTTPS upstreams besides the webpki roots.
    pub upstream_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// One log line per call (target `portico::access`; JSON with `--log-format json`).
    pub access_log: bool,
    /// Where Portico's access tokens come from and who they are for (`iss`, `aud`); `None`:
    /// tokens are refused.
    pub token_trust: Option<token::TokenTrust>,
    /// Proxies in front of the gateway (load balancers) whose `X-Forwarded-For` is believed:
    /// the client's address, for IP lists and for the upstream, is read through them.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which addresses upstream connections (calls and health checks) may go to: loopback,
    /// private, link-local and other special ranges are refused unless allowed here.
    pub outbound: portico_core::outbound::OutboundPolicy,
    /// The response cache's bound for the whole process (bodies, headers and keys).
    pub cache_max_bytes: u64,
    /// Make a span per call and per phase (target `portico::trace`) for the binary's OTLP
    /// exporter, and send the upstream span's id in `traceparent`. Off: no span is made.
    pub traces: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 10 * 1024 * 1024,
            max_headers: 100,
            max_head_bytes: 64 * 1024,
            max_url_bytes: 8 * 1024,
            upstream_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            upstream_roots: Vec::new(),
            trusted_proxies: Vec::new(),
            outbound: portico_core::outbound::OutboundPolicy::default(),
            token_trust: None,
            cache_max_bytes: 64 * 1024 * 1024,
            access_log: false,
            traces: false,
        }
    }
}

struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    pepper: Pepper,
    sink: Arc<dyn UsageSink>,
    config: GatewayConfig,
    limiter: Arc<dyn limit::Limits>,
    metrics: metrics::GatewayMetrics,
    tls: rustls::ClientConfig,
    /// The same policy as `config.outbound`, shared by every worker's connector.
    outbound: Arc<portico_core::outbound::OutboundPolicy>,
    pool: pool::Pool,
    cache: cache::ResponseCache,
    /// External token issuers' signing keys, by JWKS URL.
    jwks: jwks::Jwks,
}

/// The gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Who is calling, from a key or an access token.
struct Caller {
    app_id: portico_core::ids::AppId,
    consumer_org_id: portico_core::ids::OrgId,
    consumer_slug: Slug,
}

/// The `RateLimit` state to report on a refusal: the exhausted policy, nothing left.
fn refused_policy(r: &limit::Refusal) -> limit::Admitted {
    let mut a = limit::Admitted::default();
    match r {
        limit::Refusal::RateLimited { retry_after, limit, for_operation } => {
            let slot = if *for_operation { &mut a.op_rates[0] } else { &mut a.rates[0] };
            *slot = Some((*limit, 0, limit::retry_after_secs(*retry_after)));
        }
        limit::Refusal::QuotaExhausted { retry_after, quota, period } => {
            a.quotas[0] = Some((*period, *quota, 0, limit::retry_after_secs(*retry_after)));
        }
    }
    a
}

impl Gateway {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        pepper: Pepper,
        sink: Arc<dyn UsageSink>,
        config: GatewayConfig,
    ) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                tls: client::tls_config(&config.upstream_roots),
                cache: cache::ResponseCache::new(config.cache_max_bytes),
                outbound: Arc::new(config.outbound.clone()),
                snapshot,
                pepper,
                sink,
                config,
                limiter: Arc::new(limit::Limiter::new()),
                metrics: metrics::GatewayMetrics::default(),
                pool: pool::Pool::default(),
                jwks: jwks::Jwks::default(),
            }),
        }
    }

    /// [`Gateway::handle`], counted in the metrics by API and status class.
    async fn handle_measured(
        &self,
        client: &UpstreamClient,
        req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
    ) -> Response<GwBody> {
        let started = Instant::now();
        let snapshot = self.inner.snapshot.load();
        let target = route::resolve(&snapshot.hosts, request_host(&req), req.uri().path()).ok();
        let m = self.inner.metrics.for_api(target.as_ref().map(|t| t.slug), |s| snapshot.apis.contains_key(s));
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        let cors = origin.as_ref().map(|_| policies_of(&snapshot, target.as_ref()));
        // The access log: method and path only (never the query, a header or a body).
        let access = self.inner.config.access_log.then(|| (req.method().clone(), req.uri().path().to_owned()));
        let span = if self.inner.config.traces {
            // The span's name is set at its start (a known API's slug and major, or none).
            let known = target.as_ref().filter(|t| snapshot.apis.contains_key(t.slug));
            let name = match known {
                Some(t) => format!("{} /{}/v{}", req.method(), t.slug, t.major),
                None => req.method().to_string(),
            };
            trace::server(&name, req.method(), req.uri().path(), req.headers())
        } else {
            tracing::Span::none()
        };
        drop(snapshot);
        let call = self.handle(client, req, remote, https, started);
        // Without a span the call is awaited as it is: wrapping it moves its (large) future once more.
        let mut resp =
            if span.is_none() { call.await } else { tracing::Instrument::instrument(call, span.clone()).await };
        if !span.is_none() {
            let status = resp.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        if let (Some(origin), Some(policies)) = (origin, cors) {
            cors::allow(resp.headers_mut(), &origin, policies.as_deref().and_then(|p| p.cors.as_ref()));
        }
        let elapsed = started.elapsed();
        m.record(resp.status().as_u16(), elapsed);
        if let Some((method, path)) = access {
            let h = resp.headers();
            tracing::info!(
                target: "portico::access",
                method = %method,
                path = %path,
                status = resp.status().as_u16(),
                latency_us = elapsed.as_micros() as u64,
                client = %remote.ip(),
                request_id = h.get(&proxy::X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                call_id = h.get(&proxy::X_PORTICO_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                cache = h.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("-"),
                "call"
            );
        }
        resp
    }

    /// The whole request path for one call.
    async fn handle(
        &self,
        client: &UpstreamClient,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
        started: Instant,
    ) -> Response<GwBody> {
        let inner = &self.inner;
        let traces = inner.config.traces;
        // First of all: a head whose framing is in doubt is answered before anything else, and
        // the connection closed (what follows it cannot be framed with confidence).
        if let Some(why) = smuggling(req.headers()) {
            let mut refused = errors::bad_request(why);
            refused.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return refused;
        }
        let path = req.uri().path();
        if path == "/healthz" {
            return errors::json(StatusCode::OK, serde_json::json!({"status": "ok"}));
        }
        if path == "/readyz" {
            let generation = inner.snapshot.load().generation;
            return errors::json(StatusCode::OK, serde_json::json!({"status": "ready", "generation": generation}));
        }

        // Screen: the cheap checks, before any lookup.
        let url_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if url_len > inner.config.max_url_bytes {
            return errors::uri_too_long(inner.config.max_url_bytes);
        }
        if req.headers().len() > inner.config.max_headers {
            // HTTP/1.1 heads are cut off by the server already; this is for HTTP/2.
            return errors::too_many_headers(inner.config.max_headers);
        }
        let declared_len = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > inner.config.max_body_bytes) {
            return errors::payload_too_large(inner.config.max_body_bytes);
        }
        if key_in_query(req.uri().query()) {
            return errors::bad_request(
                "API keys are not accepted in the URL (it ends up in logs); send it in the X-Api-Key header",
            );
        }
        let route_span = trace::phase(traces, "route");
        // Route, identify and entitle from one snapshot; keep only what the proxy needs.
        let snapshot = inner.snapshot.load();
        let target = match route::resolve(&snapshot.hosts, request_host(&req), path) {
            Ok(t) => t,
            Err(route::RouteError::NoMatch) => {
                let on_api_host = request_host(&req)
                    .map(|h| route::host_name(h).to_ascii_lowercase())
                    .and_then(|h| snapshot.hosts.get(&h));
                return match on_api_host {
                    Some(api) => errors::not_found(&format!(
                        "nothing here: on this host, call API `{api}` as /v{{major}}/{{path}}"
                    )),
                    None => errors::not_found("nothing here: call an API as /{api}/v{major}/{path}"),
                };
            }
            Err(route::RouteError::Unsafe) => {
                return errors::bad_request("the path has dot segments or encoded separators; send a normalised path");
            }
        };

        let Some(api) = snapshot.apis.get(target.slug) else {
            return errors::not_found(&format!("there is no API `{}` on this gateway", target.slug.escape_default()));
        };
        let Some(version) = api.majors.get(&target.major) else {
            return errors::not_found(&format!("API `{}` has no published version {}", api.slug, target.major));
        };
        let policies = &version.policies;
        let client_ip = proxy::client_ip(remote.ip(), req.headers(), &inner.config.trusted_proxies);
        if !policies.ip_permitted(client_ip) {
            inner.metrics.ip_refused.increment(1);
            return errors::forbidden(&format!("calls to API `{}` are not accepted from your network", api.slug));
        }
        if let Some(resp) = cors::preflight(&req, version, target.rest) {
            return resp;
        }
        let operation = match version.operations.as_deref().map(|ops| ops.lookup(req.method().as_str(), target.rest)) {
            None => None,
            Some(OperationMatch::Found(name)) => Some(name),
            Some(OperationMatch::NotFound) => {
                return errors::not_found(&format!(
                    "API `{}` v{} has no operation at this path; see its reference in the portal",
                    api.slug, target.major
                ));
            }
            Some(OperationMatch::MethodNotAllowed(allow)) => {
                return errors::method_not_allowed(&allow, &format!("this path of API `{}` accepts {allow}", api.slug));
            }
        };
        drop(route_span);
        if traces {
            tracing::Span::current().record("portico.api", api.slug.as_str());
        }
        let identify_span = trace::phase(traces, "identify");
        // The call's one reading of the wall clock: key expiry, the usage event's time, the
        // call's id.
        let mut now = time::OffsetDateTime::now_utc();
        let (caller, key_in_authorization) = match identify::credential(req.headers()) {
            Credential::Key { value, from_authorization } => match identify::lookup(&snapshot, &inner.pepper, value) {
                Ok(g) => {
                    let now = now.unix_timestamp();
                    if g.expires_at_ms.is_some_and(|at| at <= now.saturating_mul(1000)) {
                        return errors::unauthenticated(
                            "the API key has expired; use its replacement or create a new one",
                        );
                    }
                    if let Some(scopes) = &g.scopes
                        && !scopes.iter().any(|s| s == api.slug.as_str())
                    {
                        return errors::forbidden(&format!(
                            "this API key may not call API `{}` (see its scopes)",
                            api.slug
                        ));
                    }
                    // One relaxed store, only when the second changed; the control plane writes it out.
                    if g.last_used.load(std::sync::atomic::Ordering::Relaxed) != now {
                        g.last_used.store(now, std::sync::atomic::Ordering::Relaxed);
                    }
                    (
                        Caller {
                            app_id: g.app_id,
                            consumer_org_id: g.consumer_org_id,
                            consumer_slug: g.consumer_slug.clone(),
                        },
                        from_authorization,
                    )
                }
                Err(KeyError::Malformed) => {
                    return errors::unauthenticated("that is not a valid Portico API key (check it was copied whole)");
                }
                Err(KeyError::Unknown) => {
                    return errors::unauthenticated("the API key is not valid (unknown or revoked)");
                }
            },
            Credential::Token(t)
                if let Some(issuer) = policies.external_issuer(t, inner.config.token_trust.as_ref()) =>
            {
                match token::verify_external(&inner.jwks, client, issuer, t).await {
                    Ok(client_id) => {
                        // Fetching the issuer's keys may have taken a while: the call's time is now.
                        now = time::OffsetDateTime::now_utc();
                        let registered = snapshot
                            .external_clients
                            .get(&issuer.jwks_url)
                            .and_then(|m| m.get(&issuer.issuer))
                            .and_then(|m| m.get(&client_id));
                        match registered {
                            Some(x) => (
                                Caller {
                                    app_id: x.app_id,
                                    consumer_org_id: x.consumer_org_id,
                                    consumer_slug: x.consumer_slug.clone(),
                                },
                                true,
                            ),
                            None => {
                                return errors::unauthenticated(&format!(
                                    "client `{}` of this token's issuer is not registered on any Portico app; \
                                     register it under the app's external clients",
                                    client_id.escape_default()
                                ));
                            }
                        }
                    }
                    Err(token::ExternalRefused::Invalid(why)) => return errors::unauthenticated(&why),
                    Err(token::ExternalRefused::KeysUnavailable) => {
                        return errors::service_unavailable(
                            "the signing keys of this token's issuer could not be fetched; try again shortly",
                        );
                    }
                }
            }
            Credential::Token(t) => match token::verify(&snapshot, inner.config.token_trust.as_ref(), t) {
                Ok(tc) if !tc.allows(api.slug.as_str()) => {
                    return errors::forbidden(&format!(
                        "this access token's scope does not include API `{}`",
                        api.slug
                    ));
                }
                Ok(tc) => (
                    Caller { app_id: tc.app_id, consumer_org_id: tc.consumer_org_id, consumer_slug: tc.consumer_slug },
                    true,
                ),
                Err(token::Refused(why)) => return errors::unauthenticated(why),
            },
            Credential::None => {
                return errors::unauthenticated(
                    "send your API key in the X-Api-Key header, or an access token as Authorization: Bearer",
                );
            }
        };
        let grant = &caller;
        let Some(sub) = snapshot.subscriptions.get(&(grant.app_id, api.api_id)) else {
            return errors::forbidden(&format!(
                "this app has no active subscription to API `{}`; subscribe to one of its plans",
                api.slug
            ));
        };
        drop(identify_span);
        let units = policies.weight(operation.as_deref());
        // Portico's own id of the call: the metering key, never taken from the client.
        let call_id = proxy::call_uuid(now);
        let call_id_header = proxy::uuid_header(call_id);
        // The call's X-Request-Id: the client's, or else Portico's id of the call.
        let client_request_id = proxy::client_request_id(req.headers()).cloned();
        let request_id = client_request_id.clone().unwrap_or_else(|| call_id_header.clone());
        let bytes_in = Arc::new(AtomicU64::new(0));
        let event = UsageEvent {
            request_id: call_id,
            at: now,
            api_id: api.api_id,
            version_id: version.version_id,
            app_id: grant.app_id,
            subscription_id: sub.subscription_id,
            consumer_org_id: grant.consumer_org_id,
            plan_id: sub.plan_id,
            operation: operation.clone(),
            status: 0,
            latency_micros: 0,
            bytes_in: 0,
            bytes_out: 0,
            units,
            client_request_id: client_request_id.and_then(|v| v.to_str().ok().map(Arc::from)),
        };
        // A call that cannot be metered is not served (and, never begun, is not metered either).
        if !inner.sink.accepting() {
            inner.metrics.upstream_errors.increment(1);
            return errors::service_unavailable(
                "usage cannot be recorded right now (the metering backlog is full); retry shortly",
            );
        }
        let mut meter = Meter::new(inner.sink.clone(), event, started, bytes_in.clone());
        if traces {
            tracing::Span::current().record("portico.call_id", tracing::field::display(call_id));
        }

        // The operation's contract, where the version checks calls against its document: the
        // parameters, and whether a body is required and of a declared type, before any quota
        // is spent; a JSON body is checked once read, below.
        let checks = match version.operations.as_deref().filter(|_| policies.validate_requests) {
            Some(ops) => ops.rules(req.method().as_str(), target.rest).map(|(rules, path_values)| {
                let query = req.uri().query();
                let headers = req.headers();
                let header = |h: &str| headers.get_all(h).iter().map(|v| v.to_str().ok()).collect();
                (rules.clone(), rules.check_parameters(&path_values, query, header))
            }),
            None => None,
        };
        let checks = match checks {
            Some((_, violations)) if !violations.is_empty() => {
                inner.metrics.invalid_requests.increment(1);
                meter.refuse(400);
                return errors::request_invalid(&violations);
            }
            Some((rules, _)) => {
                let mut types = req.headers().get_all(http::header::CONTENT_TYPE).iter();
                let content_type = types.next().map(|v| v.to_str().unwrap_or("\u{fffd}"));
                if types.next().is_some() {
                    inner.metrics.invalid_requests.increment(1);
                    meter.refuse(400);
                    return errors::bad_request("the request has more than one Content-Type header; send one");
                }
                match rules.body_check(content_type, hyper::body::Body::is_end_stream(req.body())) {
                    portico_core::validation::BodyCheck::Missing => {
                        inner.metrics.invalid_requests.increment(1);
                        meter.refuse(400);
                        return errors::request_invalid(&[portico_core::validation::Violation::body_missing()]);
                    }
                    portico_core::validation::BodyCheck::Unsupported(accepted) => {
                        inner.metrics.invalid_requests.increment(1);
                        meter.refuse(415);
                        return errors::unsupported_media_type(&format!(
                            "this operation of API `{}` accepts a body of type {accepted}: send it with one of them as Content-Type",
                            api.slug
                        ));
                    }
                    // The type is kept as sent: header rules may rewrite it before the body is read.
                    portico_core::validation::BodyCheck::Json(_) => content_type.map(|t| (rules, t.to_owned())),
                    portico_core::validation::BodyCheck::Skip => None,
                }
            }
            None => None,
        };

        let limit_span = trace::phase(traces, "limit");
        let admitted = match inner.limiter.check(sub, operation.as_deref(), units) {
            Ok(a) => a,
            Err(refusal) => {
                match &refusal {
                    limit::Refusal::RateLimited { .. } => inner.metrics.rate_limited.increment(1),
                    limit::Refusal::QuotaExhausted { .. } => inner.metrics.quota_exhausted.increment(1),
                }
                let detail = match &refusal {
                    limit::Refusal::RateLimited { limit, for_operation: false, .. } => format!(
                        "rate limit of plan `{}` reached ({} per {}); retry later",
                        sub.plan_slug,
                        limit.requests(),
                        limit.per().as_str()
                    ),
                    limit::Refusal::RateLimited { limit, for_operation: true, .. } => format!(
                        "rate limit of plan `{}` for operation `{}` reached ({} per {}); retry later",
                        sub.plan_slug,
                        operation.as_deref().unwrap_or_default(),
                        limit.requests(),
                        limit.per().as_str()
                    ),
                    limit::Refusal::QuotaExhausted { quota, period: limit::QuotaPeriod::Month, .. } => format!(
                        "the monthly quota of plan `{}` ({quota} calls) is used up; it resets at the start of next month (UTC)",
                        sub.plan_slug
                    ),
                    limit::Refusal::QuotaExhausted { quota, period: limit::QuotaPeriod::Day, .. } => format!(
                        "the daily quota of plan `{}` ({quota} calls) is used up; it resets at midnight UTC",
                        sub.plan_slug
                    ),
                };
                let wait = match &refusal {
                    limit::Refusal::RateLimited { retry_after, .. }
                    | limit::Refusal::QuotaExhausted { retry_after, .. } => limit::retry_after_secs(*retry_after),
                };
                let state = refused_policy(&refusal);
                let mut resp = errors::rate_limited(wait, &detail);
                proxy::rate_limit_headers(resp.headers_mut(), &state, operation.as_deref());
                meter.refuse(resp.status().as_u16());
                return resp;
            }
        };

        drop(limit_span);

        // The cache: a hit is a call (identified, entitled, limited, billed) that never reaches
        // the upstream.
        let cache_span = cache_plan_span(traces, policies);
        let cache_plan = policies.cache.as_ref().and_then(|c| {
            let target = req.uri().path_and_query().map_or(path, |p| p.as_str());
            cache::Plan::new(c, req.method(), req.headers(), version.version_id, target, grant.app_id)
        });
        if let Some(plan) = &cache_plan {
            if let Some(mut resp) = plan.lookup(&inner.cache) {
                inner.metrics.cache_hit.increment(1);
                proxy::downstream_headers(resp.headers_mut(), request_id, call_id_header);
                if !policies.response_headers.is_empty() {
                    proxy::apply_rules(resp.headers_mut(), &policies.response_headers);
                }
                resp.headers_mut().insert(cache::X_CACHE.clone(), http::HeaderValue::from_static("HIT"));
                proxy::rate_limit_headers(resp.headers_mut(), &admitted, operation.as_deref());
                meter.respond(resp.status().as_u16());
                let (parts, body) = resp.into_parts();
                return Response::from_parts(parts, MeteredBody::new(body, meter).boxed_unsync());
            }
            inner.metrics.cache_miss.increment(1);
        }
        drop(cache_span);

        let cache_plan_used = cache_plan.is_some();
        let rest = policies.rewrite_path(target.rest);
        let mut path_and_query = String::with_capacity(rest.len() + 64);
        path_and_query.push_str(&rest);
        if let Some(q) = req.uri().query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let rest_empty = rest.is_empty();
        let api_slug = api.slug.clone();
        let (primary, policy) = (version.upstream.clone(), version.policy.clone());
        let policies = policies.clone();
        let hash = pool::hash_key(&policy, req.headers(), grant.consumer_slug.as_str());
        let journal_span = trace::phase(traces, "journal");
        meter.begin();
        drop(journal_span);
        // WebSocket and other upgrades: forwarded, and on a 101 the two connections are joined.
        let upgrade = proxy::upgrade_protocol(req.headers()).map(|p| (p, hyper::upgrade::on(&mut req)));
        let (mut parts, body) = req.into_parts();
        // HTTP/2 carries the host as `:authority`, not `Host`.
        if !parts.headers.contains_key(http::header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(http::header::HOST, host);
        }
        // With traces on, the upstream learns the gateway's own span as its parent.
        let upstream_span = trace::upstream(traces, api_slug.as_str());
        let traceparent = trace::traceparent_of(&upstream_span).unwrap_or_else(|| proxy::traceparent(&parts.headers));
        let original_host = match policies.host_header {
            portico_core::policy::HostHeader::Preserve => parts.headers.get(http::header::HOST).cloned(),
            portico_core::policy::HostHeader::Upstream => None,
        };
        let trusted_peer = !inner.config.trusted_proxies.is_empty()
            && inner.config.trusted_proxies.iter().any(|n| n.contains(&portico_core::policy::canonical(remote.ip())));
        proxy::upstream_headers(
            &mut parts.headers,
            proxy::Forwarded {
                client_ip: remote.ip(),
                trusted_peer,
                consumer: grant.consumer_slug.as_str(),
                plan: sub.plan_slug.as_str(),
                request_id: request_id.clone(),
                call_id: call_id_header.clone(),
                traceparent,
                key_in_authorization,
                https,
            },
        );
        drop(snapshot);
        if !policies.request_headers.is_empty() {
            proxy::apply_rules(&mut parts.headers, &policies.request_headers);
        }
        if let Some(auth) = &policies.upstream_auth {
            proxy::inject_credential(&mut parts.headers, auth);
        }
        if let Some(host) = original_host {
            parts.headers.insert(http::header::HOST, host);
        }
        if let Some((protocol, _)) = &upgrade {
            proxy::keep_upgrade(&mut parts.headers, protocol.clone());
        }
        let encoded = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let schema = checks.as_ref().and_then(|(r, sent)| match r.body_check(Some(sent), false) {
            portico_core::validation::BodyCheck::Json(v) => Some(v),
            _ => None,
        });
        if encoded && (schema.is_some() || (policies.max_json_depth.is_some() && screen::is_json(&parts.headers))) {
            // The depth of a compressed body cannot be checked without inflating it.
            meter.refuse(415);
            return errors::unsupported_media_type(&format!(
                "API `{api_slug}` checks JSON bodies: send them without Content-Encoding"
            ));
        }
        // Marked, so that a client's broken body is never taken for the upstream's failure.
        let body = body.map_err(screen::ClientBodyError);
        let limited = http_body_util::Limited::new(body, inner.config.max_body_bytes as usize);
        let depth = policies.max_json_depth.filter(|_| screen::is_json(&parts.headers));
        let body = match (depth, schema) {
            (None, None) => limited.boxed_unsync(),
            // The depth check and the schema need the whole body before anything is forwarded.
            (depth, schema) => match limited.collect().await {
                Ok(b) => {
                    let b = b.to_bytes();
                    if let Some(max) = depth
                        && screen::json_too_deep(&b, max)
                    {
                        meter.refuse(400);
                        return errors::bad_request(&format!(
                            "the JSON body is nested deeper than {max} levels, the limit of API `{api_slug}`"
                        ));
                    }
                    if let (Some(schema), Some((rules, _))) = (schema, checks.as_ref()) {
                        let violations = if b.is_empty() {
                            if rules.body_required() {
                                vec![portico_core::validation::Violation::body_missing()]
                            } else {
                                Vec::new()
                            }
                        } else {
                            portico_core::validation::RequestRules::check_json(schema, &b)
                        };
                        if !violations.is_empty() {
                            inner.metrics.invalid_requests.increment(1);
                            meter.refuse(400);
                            return errors::request_invalid(&violations);
                        }
                    }
                    http_body_util::Full::new(b).map_err(|never| match never {}).boxed_unsync()
                }
                Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    meter.refuse(413);
                    return errors::payload_too_large(inner.config.max_body_bytes);
                }
                Err(_) => {
                    meter.refuse(400);
                    return errors::bad_request("the request body could not be read");
                }
            },
        };
        // A body with nothing to stream (a GET's) has no bytes to count: no wrapper, no box.
        let body = if hyper::body::Body::is_end_stream(&body) {
            body
        } else {
            CountingBody::new(body, bytes_in).boxed_unsync()
        };
        let signer = policies
            .signing_secret
            .is_some()
            .then(|| forward::Signer { policies: policies.clone(), consumer: caller.consumer_slug.clone() });
        let out = forward::Outgoing {
            method: parts.method,
            // The upstream connection's protocol is the connector's choice (ALPN), not the
            // client's: an HTTP/2 call goes to an HTTP/1.1-only upstream as HTTP/1.1.
            version: match parts.version {
                http::Version::HTTP_10 => http::Version::HTTP_10,
                _ => http::Version::HTTP_11,
            },
            headers: parts.headers,
            body,
            path_and_query,
            rest_empty,
            signer,
        };
        let connect = conns::Connect {
            tls: &inner.tls,
            outbound: &inner.outbound,
            connect_ms: policy.connect_timeout_ms,
            sink: &inner.sink,
        };
        let deadline =
            policy.total_timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(u64::from(ms)));
        let sent = forward::send(&inner.pool, &connect, &primary, &policy, hash, deadline, out).await;
        if let Ok(resp) = &sent {
            upstream_span.record("http.response.status_code", resp.status().as_u16());
        }
        drop(upstream_span);
        match sent {
            Ok(mut resp) => {
                let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let tunnel = match (switched, upgrade) {
                    (true, Some((protocol, from_client))) => {
                        Some((protocol, from_client, hyper::upgrade::on(&mut resp)))
                    }
                    _ => None,
                };
                let (mut parts, body) = resp.into_parts();
                proxy::downstream_headers(&mut parts.headers, request_id, call_id_header);
                let mut body = body.map_err(BoxError::from).boxed_unsync();
                if let Some(deadline) = deadline.filter(|_| !switched) {
                    body = forward::DeadlineBody::new(body, deadline).boxed_unsync();
                }
                if let Some(plan) = cache_plan {
                    body = plan.fill(&inner.cache, parts.status, &parts.headers, body);
                }
                if !policies.response_headers.is_empty() {
                    proxy::apply_rules(&mut parts.headers, &policies.response_headers);
                }
                if cache_plan_used {
                    parts.headers.insert(cache::X_CACHE.clone(), http::HeaderValue::from_static("MISS"));
                }
                if let Some((protocol, from_client, from_upstream)) = tunnel {
                    proxy::keep_upgrade(&mut parts.headers, protocol);
                    tokio::spawn(async move {
                        if let (Ok(client), Ok(upstream)) = tokio::join!(from_client, from_upstream) {
                            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    });
                }
                proxy::rate_limit_headers(&mut parts.headers, &admitted, operation.as_deref());
                meter.respond(parts.status.as_u16());
                Response::from_parts(parts, MeteredBody::new(body, meter).boxed_unsync())
            }
            Err(forward::Failure::BodyTooLarge) => {
                meter.refuse(413);
                errors::payload_too_large(inner.config.max_body_bytes)
            }
            Err(forward::Failure::ClientBody) => {
                tracing::debug!(api = %api_slug, "the client's request body failed mid-call");
                meter.refuse(400);
                errors::bad_request(
                    "the request body ended before its declared length or its chunked framing is broken; the call was abandoned",
                )
            }
            Err(forward::Failure::BadPath) => {
                meter.refuse(400);
                errors::bad_request("the request path cannot be forwarded as given")
            }
            Err(forward::Failure::NoTarget) => {
                inner.metrics.upstream_errors.increment(1);
                meter.refuse(503);
                let mut r = errors::service_unavailable(&format!(
                    "no upstream target of API `{api_slug}` is healthy right now; retry shortly"
                ));
                r.headers_mut().insert(&proxy::X_REQUEST_ID, request_id);
                r
            }
            Err(e @ (forward::Failure::Connect | forward::Failure::BadAnswer)) => {
                inner.metrics.upstream_errors.increment(1);
                let connect = matches!(e, forward::Failure::Connect);
                tracing::warn!(api = %api_slug, step = if connect { "connect" } else { "response" }, "upstream request failed");
                meter.refuse(502);
                let detail = if connect {
                    format!("the gateway could not connect to the upstream of API `{api_slug}`")
                } else {
                    format!(
                        "the upstream of API `{api_slug}` closed the connection or sent a response that is not valid HTTP"
                    )
                };
                let mut r = errors::bad_gateway(&detail);
                r.headers_mut().insert(&proxy::X_REQUEST_ID, request_id);
                r
            }
            Err(forward::Failure::Refused) => {
                inner.metrics.upstream_errors.increment(1);
                meter.refuse(502);
                let mut r = errors::bad_gateway(&format!(
                    "the upstream address of API `{api_slug}` is not allowed by this gateway's outbound policy"
                ));
                r.headers_mut().insert(&proxy::X_REQUEST_ID, request_id);
                r
            }
            Err(forward::Failure::TotalTimeout(ms)) => {
                inner.metrics.upstream_errors.increment(1);
                tracing::warn!(api = %api_slug, timeout_ms = ms, "upstream call exceeded its total timeout");
                meter.refuse(504);
                let mut r = errors::gateway_timeout(&format!(
                    "the upstream of API `{api_slug}` did not answer within the call's total timeout of {ms} ms"
                ));
                r.headers_mut().insert(&proxy::X_REQUEST_ID, request_id);
                r
            }
            Err(forward::Failure::Timeout(ms)) => {
                inner.metrics.upstream_errors.increment(1);
                tracing::warn!(api = %api_slug, timeout_ms = ms, "upstream timed out");
                meter.refuse(504);
                let mut r = errors::gateway_timeout(&format!(
                    "the upstream of API `{api_slug}` did not begin its response within {ms} ms"
                ));
                r.headers_mut().insert(&proxy::X_REQUEST_ID, request_id);
                r
            }
        }
    }
}

/// The cache phase's span, only for versions that cache.
fn cache_plan_span(traces: bool, policies: &portico_core::policy::Policies) -> tracing::Span {
    if policies.cache.is_some() { trace::phase(traces, "cache") } else { tracing::Span::none() }
}

/// The host a call was made to: the request target's authority (HTTP/2, absolute form), else
/// the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().host().or_else(|| req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()))
}

/// The policies of the version a call routes to (for CORS on answers of any kind).
fn policies_of(
    snapshot: &portico_core::snapshot::Snapshot,
    target: Option<&route::Target<'_>>,
) -> Option<Arc<portico_core::policy::Policies>> {
    let t = target?;
    let api = snapshot.apis.get(t.slug)?;
    Some(api.majors.get(&t.major)?.policies.clone())
}
