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
    /// [`can_defer`], asked once per call (a call's task stays on its runtime).
    defer: Option<bool>,
}

impl Meter {
    pub fn new(sink: Arc<dyn UsageSink>, event: UsageEvent, started: Instant, bytes_in: Arc<AtomicU64>) -> Self {
        Meter { sink, event: Some(event), token: 0, started, bytes_in, defer: None }
    }

    fn can_defer(&mut self) -> bool {
        *self.defer.get_or_insert_with(can_defer)
    }

    /// Notes durably that the call is about to be forwarded. On a gateway worker the record
    /// waits in the worker's buffer, and the upstream connection writes it before the call's
    /// first byte ([`BeginsFirst`]), together with the records of the worker's other calls
    /// that moved in the same turn (group commit, see [`JournalGate`]). Elsewhere it is
    /// written before this returns.
    pub fn begin(&mut self) {
        if self.event.is_none() {
            return;
        }
        let defer = self.can_defer();
        let Some(e) = self.event.as_ref() else { return };
        self.token = if defer { self.sink.begin_deferred(e).0 } else { self.sink.begin(e) };
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

    /// Records the call's end. `defer`: on a gateway worker the record may wait in the
    /// worker's buffer, for the connection's [`JournalFirst`] to write before the response's
    /// last bytes (every consumer connection has one: `serve.rs` is the only way in).
    fn finish(&mut self, bytes_out: u64, defer: bool) {
        if self.event.is_none() {
            return;
        }
        let defer = defer && self.can_defer();
        let Some(mut e) = self.event.take() else { return };
        e.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        e.bytes_out = bytes_out;
        if defer {
            self.sink.end_deferred(self.token, e);
        } else {
            self.sink.end(self.token, e);
        }
    }
}

/// Whether records may wait for a flush on this thread: only on a current-thread runtime (the
/// gateway's workers), whose tasks never move to another thread before they flush.
fn can_defer() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish(0, false);
    }
}

/// The response body on its way to the consumer; records the usage event when it ends. On a
/// gateway worker the end record waits in the worker's buffer: the connection's
/// [`JournalFirst`] writes it before the response's last bytes reach the socket.
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
                if this.inner.is_end_stream()
                    && let Some(mut m) = this.meter.take()
                {
                    m.finish(this.bytes, true);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut m) = this.meter.take() {
                    m.finish(this.bytes, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut m) = this.meter.take() {
                    m.finish(this.bytes, false);
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
            m.finish(self.bytes, false);
        }
    }
}

/// What holds a connection's writes until the usage journal has the worker's records: while
/// the worker holds records not yet written, a write first lets the worker's other ready tasks
/// run (`yield_now` resumes the task after the worker next polls its sockets, so the calls that
/// became ready meanwhile add their records too), then writes them all with one `write(2)`,
/// then lets the bytes go. Both sides of a call wait at it: a call's first byte to its upstream
/// never leaves before its begin record is written, nor its response's last byte before its
/// end record is. A worker's turn then costs one journal write for the begins and ends of all
/// the calls it moved, instead of one for the begins and one for the ends.
struct JournalGate {
    sink: Arc<dyn UsageSink>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl JournalGate {
    fn new(sink: Arc<dyn UsageSink>) -> Self {
        JournalGate { sink, wait: None }
    }

    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.wait.is_none() {
            if !self.sink.pending() {
                return Poll::Ready(());
            }
            self.wait = Some(Box::pin(tokio::task::yield_now()));
        }
        if let Some(wait) = self.wait.as_mut()
            && wait.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        self.wait = None;
        self.sink.flush(u64::MAX);
        Poll::Ready(())
    }
}

/// A consumer's connection whose writes wait at the [`JournalGate`]: a response's last bytes
/// never leave before its end record is written.
pub struct JournalFirst<S> {
    inner: S,
    gate: JournalGate,
}

impl<S> JournalFirst<S> {
    pub fn new(inner: S, sink: Arc<dyn UsageSink>) -> Self {
        JournalFirst { inner, gate: JournalGate::new(sink) }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JournalFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JournalFirst<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.ready(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.ready(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An upstream connection whose writes wait at the [`JournalGate`]: the worker's records not
/// yet written (the begin records of the calls it is about to forward among them) are written
/// before any byte goes to the upstream, so no call reaches an upstream before its begin
/// record is in the journal.
pub struct BeginsFirst<T> {
    inner: T,
    gate: JournalGate,
}

impl<T> BeginsFirst<T> {
    pub fn new(inner: T, sink: Arc<dyn UsageSink>) -> Self {
        BeginsFirst { inner, gate: JournalGate::new(sink) }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for BeginsFirst<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for BeginsFirst<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.ready(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.ready(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
