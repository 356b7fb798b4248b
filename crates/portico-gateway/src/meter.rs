//! Metering on the request path: bodies that count their bytes as they stream, and a [`Meter`]
//! that hands exactly one usage event to the sink when the response is done (or dropped).

use crate::{GwBody, UpBody};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use portico_core::usage::{UsageEvent, UsageSink};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

/// One call's usage, recorded once.
pub struct Meter {
    sink: Arc<dyn UsageSink>,
    event: Option<UsageEvent>,
    /// From `UsageSink::begin`, once the call is about to be forwarded.
    token: u64,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
}

impl Meter {
    pub fn new(sink: Arc<dyn UsageSink>, event: UsageEvent, started: Instant, bytes_in: Arc<AtomicU64>) -> Self {
        Meter { sink, event: Some(event), token: 0, started, bytes_in }
    }

    /// Notes durably that the call is about to be forwarded.
    pub fn begin(&mut self) {
        if let Some(e) = self.event.as_ref() {
            self.token = self.sink.begin(e);
        }
    }

    /// The status and latency are fixed when the response head is ready.
    pub fn respond(&mut self, status: u16) {
        if let Some(e) = self.event.as_mut() {
            e.status = status;
            e.latency_micros = self.started.elapsed().as_micros() as u64;
        }
    }

    /// Portico answered itself (a limit, a refusal, no upstream answer): the call is metered
    /// with no billable units.
    pub fn refuse(&mut self, status: u16) {
        self.respond(status);
        if let Some(e) = self.event.as_mut() {
            e.units = 0;
        }
    }

    fn finish(&mut self, bytes_out: u64) {
        if let Some(mut e) = self.event.take() {
            e.bytes_in = self.bytes_in.load(Ordering::Relaxed);
            e.bytes_out = bytes_out;
            self.sink.end(self.token, e);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish(0);
    }
}

/// The response body on its way to the consumer; records the usage event when it ends.
pub struct MeteredBody {
    inner: GwBody,
    bytes: u64,
    meter: Option<Meter>,
}

impl MeteredBody {
    pub fn new(inner: GwBody, meter: Meter) -> Self {
        MeteredBody { inner, bytes: 0, meter: Some(meter) }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(mut m) = this.meter.take() {
                    m.finish(this.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(mut m) = self.meter.take() {
            m.finish(self.bytes);
        }
    }
}

/// The request body on its way to the upstream, counting its bytes.
pub struct CountingBody {
    inner: UpBody,
    count: Arc<AtomicU64>,
}

impl CountingBody {
    pub fn new(inner: UpBody, count: Arc<AtomicU64>) -> Self {
        CountingBody { inner, count }
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
