//! Sending a call to its upstream pool: choose a target, send with the version's response
//! timeout (and within what is left of its total timeout), feed the target's breaker, and retry an idempotent call without a body on another
//! target (within the retry budget, with a short backoff) when a target fails.

use crate::UpBody;
use crate::conns::{self, Connect, PooledBody, SendError};
use crate::pool::{self, Pool};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use hyper::body::{Frame, SizeHint};
use portico_core::upstream::UpstreamPolicy;
use portico_core::values::UpstreamUrl;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

pub enum Failure {
    /// Our own body limit tripped while the body streamed.
    BodyTooLarge,
    /// The client's request body failed while it streamed (not the target's fault).
    ClientBody,
    /// No target is available (all unhealthy or their breakers open).
    NoTarget,
    /// No connection to the target could be made (refused, unroutable, connect timeout).
    Connect,
    /// Connected, but the target reset the connection, closed it early or sent something that
    /// is not an HTTP response.
    BadAnswer,
    /// The outbound policy refused the target's address (SSRF protection).
    Refused,
    /// No response head within the version's `response_timeout_ms`.
    Timeout(u32),
    /// The version's `total_timeout_ms` passed before a response head.
    TotalTimeout(u32),
    /// The path could not be joined to a target's URL.
    BadPath,
}

/// What the upstream request is made of.
pub struct Outgoing {
    pub method: Method,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: UpBody,
    /// The path after `/v{major}` plus `?query`.
    pub path_and_query: String,
    /// Empty path after the prefix.
    pub rest_empty: bool,
    /// Signs each attempt (`Portico-Signature`) when the version has a signing secret.
    pub signer: Option<Signer>,
}

pub struct Signer {
    pub policies: std::sync::Arc<portico_core::policy::Policies>,
    pub consumer: portico_core::values::Slug,
}

static PORTICO_SIGNATURE: http::HeaderName = http::HeaderName::from_static("portico-signature");

fn uri_for(base: &UpstreamUrl, out: &Outgoing) -> Option<Uri> {
    let mut s = String::with_capacity(base.as_str().len() + out.path_and_query.len() + 1);
    s.push_str(base.as_str());
    if out.rest_empty && !base.has_path() {
        s.push('/');
    }
    s.push_str(&out.path_and_query);
    s.parse().ok()
}

pub(crate) fn empty() -> UpBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

fn retryable_status(s: StatusCode) -> bool {
    matches!(s, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

pub(crate) async fn send(
    pool: &Pool,
    connect: &Connect<'_>,
    primary: &UpstreamUrl,
    policy: &UpstreamPolicy,
    hash: u64,
    deadline: Option<Instant>,
    mut out: Outgoing,
) -> Result<Response<PooledBody>, Failure> {
    pool.deposit();
    let can_retry = policy.retries > 0 && idempotent(&out.method) && out.body.is_end_stream();
    let response_timeout = Duration::from_millis(u64::from(policy.response_timeout_ms));
    let mut body = Some(std::mem::replace(&mut out.body, empty()));
    let mut tried = 0u64;
    let mut last = Failure::NoTarget;
    // An unwell answer (502/503/504) kept in case no other target does better.
    let mut fallback: Option<Response<PooledBody>> = None;
    for attempt in 0..=u32::from(policy.retries) {
        if attempt > 0 {
            if !can_retry {
                break;
            }
            let backoff = 10u64 << attempt.min(4);
            let wake = Instant::now() + Duration::from_millis(backoff + rand::random_range(0..=backoff));
            // No time left for another try (checked before the budget pays for one), or no budget:
            // the last failure stands.
            if deadline.is_some_and(|d| d <= wake) || !pool.withdraw() {
                break;
            }
            tokio::time::sleep_until(wake).await;
        }
        let Some((i, state)) = pool.choose(primary, policy, hash, tried) else {
            break;
        };
        tried |= 1 << i;
        let Some(uri) = uri_for(pool::target(primary, policy, i), &out) else {
            return Err(Failure::BadPath);
        };
        let mut req = Request::new(body.take().unwrap_or_else(empty));
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = out.version;
        *req.headers_mut() = if can_retry { out.headers.clone() } else { std::mem::take(&mut out.headers) };
        if let Some(s) = &out.signer
            && let Some(secret) = &s.policies.signing_secret
        {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let sig = portico_core::policy::signature(secret, now, out.method.as_str(), pq, s.consumer.as_str());
            if let Ok(v) = http::HeaderValue::from_str(&sig) {
                req.headers_mut().insert(PORTICO_SIGNATURE.clone(), v);
            }
        }
        // The attempt's own timeout, or what is left of the call's, whichever ends first.
        let (until, by_deadline) = match deadline {
            Some(d) if d < Instant::now() + response_timeout => (d, true),
            _ => (Instant::now() + response_timeout, false),
        };
        state.inflight.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout_at(until, conns::send(connect, req)).await;
        state.inflight.fetch_sub(1, Ordering::Relaxed);
        if sent.is_err() && by_deadline {
            // The call's time is up, which says nothing about the target's health. An unwell answer
            // kept from an earlier try is not sent either: its body could no longer be streamed.
            return Err(Failure::TotalTimeout(policy.total_timeout_ms.unwrap_or(0)));
        }
        match sent {
            Ok(Ok(resp)) if retryable_status(resp.status()) && can_retry && attempt < u32::from(policy.retries) => {
                state.failure();
                fallback = Some(resp);
            }
            Ok(Ok(resp)) => {
                if retryable_status(resp.status()) {
                    state.failure();
                } else {
                    state.success();
                }
                return Ok(resp);
            }
            Ok(Err(SendError::Send(e))) if crate::body_too_large(&e) => return Err(Failure::BodyTooLarge),
            Ok(Err(SendError::Send(e))) if crate::client_body_failed(&e) => return Err(Failure::ClientBody),
            Ok(Err(SendError::Connect(e))) if crate::outbound::is_refused(&*e) => {
                // Not the target's health: its address is refused, and it stays refused.
                last = Failure::Refused;
            }
            Ok(Err(e)) => {
                if state.failure() {
                    tracing::warn!(target = %pool::target(primary, policy, i), "upstream target's circuit breaker opened");
                }
                last = match e {
                    SendError::Connect(e) => {
                        tracing::debug!(error = %e, "upstream connection failed");
                        Failure::Connect
                    }
                    SendError::Send(e) => {
                        tracing::debug!(error = %e, "upstream attempt failed");
                        Failure::BadAnswer
                    }
                };
            }
            Err(_) => {
                state.failure();
                last = Failure::Timeout(policy.response_timeout_ms);
            }
        }
    }
    match fallback {
        Some(resp) => Ok(resp),
        None => Err(last),
    }
}

/// A response body cut off when the call's total timeout passes before it ends.
pub struct DeadlineBody {
    inner: crate::GwBody,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    pub fn new(inner: crate::GwBody, deadline: Instant) -> Self {
        DeadlineBody { inner, sleep: Box::pin(tokio::time::sleep_until(deadline)) }
    }
}

#[derive(Debug)]
struct TotalTimeoutPassed;

impl std::fmt::Display for TotalTimeoutPassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call's total timeout passed while its response streamed")
    }
}

impl std::error::Error for TotalTimeoutPassed {}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        // The deadline first: a body that keeps frames coming is cut off all the same. An error,
        // not an end: the client must not take a cut body for a whole one.
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(TotalTimeoutPassed))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
