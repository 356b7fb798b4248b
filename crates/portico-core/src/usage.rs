//! The usage event: one per call the gateway answered for a known subscription, and the sink
//! the gateway hands it to. The metering crate implements the sink; the gateway only knows this
//! trait.

use crate::ids::{ApiId, AppId, OrgId, PlanId, SubscriptionId, VersionId};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub request_id: Uuid,
    pub at: OffsetDateTime,
    pub api_id: ApiId,
    pub version_id: VersionId,
    pub app_id: AppId,
    pub subscription_id: SubscriptionId,
    pub consumer_org_id: OrgId,
    pub plan_id: PlanId,
    /// The operation of the API's document that the call matched (`operationId` or
    /// `METHOD /template`), when the version's operations are known.
    pub operation: Option<Arc<str>>,
    pub status: u16,
    pub latency_micros: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Billable units: the operation's weight when the upstream answered (or the cache did);
    /// 0 when Portico answered itself (a limit, a refusal, an unreachable upstream) — such calls
    /// are metered but never billed.
    pub units: u32,
    /// The `X-Request-Id` the client sent (at most 128 of `[A-Za-z0-9._-]`), so support can
    /// find a call by the id the client logged; `None` when it sent none (the call's
    /// `X-Request-Id` is then Portico's `request_id`).
    pub client_request_id: Option<Arc<str>>,
}

impl UsageEvent {
    /// 2xx/3xx, 4xx or 5xx, as the rollups count them.
    pub fn status_class(&self) -> StatusClass {
        StatusClass::of(self.status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of(status: u16) -> Self {
        match status {
            500.. => StatusClass::ServerError,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::Success,
        }
    }
}

/// Where the gateway hands usage events. Neither method may block on I/O beyond a local
/// `write(2)`: the request path calls them.
pub trait UsageSink: Send + Sync + 'static {
    /// Just before a call is forwarded upstream: a durable sink notes that the call started,
    /// so a call cut off by the process's death is found later (orphaned). Returns a token for
    /// [`UsageSink::end`].
    fn begin(&self, event: &UsageEvent) -> u64;
    /// Once per metered call, when it is done. `token` is what `begin` returned, or 0 for a
    /// call refused before it was forwarded.
    fn end(&self, token: u64, event: UsageEvent);
    /// Like [`UsageSink::begin`], but the record may wait in the calling thread's buffer, so
    /// that calls arriving together are written together (group commit). Returns the token and
    /// a ticket: before any byte of the call is forwarded, [`UsageSink::flush`] must run *on the
    /// same thread*, of this ticket or of all (0: already written). The gateway flushes all of
    /// them from its upstream connections, before each write (`meter::BeginsFirst`).
    fn begin_deferred(&self, event: &UsageEvent) -> (u64, u64) {
        (self.begin(event), 0)
    }
    /// Like [`UsageSink::end`], deferred as [`UsageSink::begin_deferred`] is: the response's
    /// last bytes may go out only after [`UsageSink::flush`] (of the ticket, or of all) on the
    /// same thread.
    fn end_deferred(&self, token: u64, event: UsageEvent) -> u64 {
        self.end(token, event);
        0
    }
    /// Writes the calling thread's deferred records unless the one with `ticket` is written
    /// (`u64::MAX`: all of them).
    fn flush(&self, _ticket: u64) {}
    /// Whether the calling thread holds deferred records not yet written.
    fn pending(&self) -> bool {
        false
    }
    /// Whether the sink can record more calls now. A durable sink whose backlog is full says
    /// no, and the gateway refuses calls (503) rather than serve them unmetered.
    fn accepting(&self) -> bool {
        true
    }
}

/// A sink that drops events, for a gateway run without metering.
#[derive(Debug, Default)]
pub struct DiscardUsage;

impl UsageSink for DiscardUsage {
    fn begin(&self, _event: &UsageEvent) -> u64 {
        0
    }
    fn end(&self, _token: u64, _event: UsageEvent) {}
}
