//! The durable local journal: a [`UsageSink`] that appends a *begin* record before a call is
//! forwarded and an *end* record after it, each with one `write(2)` to an append-only segment
//! file. A write that returned has reached the kernel, so it survives the process being
//! killed; nothing here waits on fsync or on the database.
//!
//! Segments are `<instance>-<n>.seg`. A segment is retired when it grows past its size limit
//! and sealed (a `Seal` record) once its last in-flight call has ended; the end of a call is
//! always written to the segment that holds its begin. One journal per directory: it holds
//! an exclusive lock on `LOCK`.
//!
//! A gateway worker thread may *defer* end records ([`UsageSink::defer_ends_on_this_thread`]):
//! its ends wait in a buffer of the thread and go out with the thread's next begin, in the same
//! `write(2)`, or when the thread goes idle ([`UsageSink::flush_this_thread`], from the worker
//! runtime's park hook), so a loaded worker makes one write per call instead of two. This
//! keeps the promise: a begin is always written before its call is forwarded, and an end that
//! a kill catches in the buffer leaves its call orphaned (reported, never billed), exactly as a
//! kill between the upstream's answer and the end's write did before.

use crate::codec::{self, BEGIN, END, SEAL};
use portico_core::usage::{UsageEvent, UsageSink};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

/// Past this many deferred bytes a thread writes its ends at once.
const DEFER_MAX_BYTES: usize = 16 << 10;

pub(crate) struct Segment {
    no: u64,
    file: File,
    bytes: AtomicU64,
    /// Calls begun here and not yet ended, plus writes under way.
    inflight: AtomicU64,
    retired: AtomicBool,
    sealed: AtomicBool,
}

struct State {
    current: Arc<Segment>,
    open: HashMap<u64, Arc<Segment>>,
}

pub struct Journal {
    /// This journal, for a thread's deferred ends to hold it (see [`Deferred`]).
    me: Weak<Journal>,
    dir: PathBuf,
    instance: String,
    state: RwLock<State>,
    max_segment_bytes: u64,
    write_errors: AtomicU64,
    /// Bytes written and not yet shipped: set by the shipper each round, grown by every write.
    backlog: AtomicU64,
    /// Past this backlog the journal refuses new calls (`accepting` is false).
    max_backlog: AtomicU64,
    /// Whether the 80% warning has been logged (re-armed below 50%).
    warned: AtomicBool,
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).field("instance", &self.instance).finish()
    }
}

pub(crate) fn segment_name(instance: &str, no: u64) -> String {
    format!("{instance}-{no:08}.seg")
}

/// The instance a segment file belongs to, from its name.
pub(crate) fn instance_of(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(".seg").and_then(|s| s.rsplit_once('-')).map(|(inst, _)| inst)
}

fn open_segment(dir: &Path, instance: &str, no: u64) -> std::io::Result<Arc<Segment>> {
    let file = OpenOptions::new().create_new(true).append(true).open(dir.join(segment_name(instance, no)))?;
    Ok(Arc::new(Segment {
        no,
        file,
        bytes: AtomicU64::new(0),
        inflight: AtomicU64::new(0),
        retired: AtomicBool::new(false),
        sealed: AtomicBool::new(false),
    }))
}

impl Journal {
    /// Opens the journal in `dir` (created if missing) for a new process instance.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> std::io::Result<Arc<Journal>> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "another Portico process uses the journal in {}; give each process its own --data-dir",
                    dir.display()
                ),
            )
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let instance = format!("{now:013}{:04x}", rand_u16());
        let current = open_segment(dir, &instance, 1)?;
        let open = HashMap::from([(1, current.clone())]);
        Ok(Arc::new_cyclic(|me| Journal {
            me: me.clone(),
            dir: dir.to_path_buf(),
            instance,
            state: RwLock::new(State { current, open }),
            max_segment_bytes: max_segment_bytes.max(4096),
            write_errors: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            max_backlog: AtomicU64::new(u64::MAX),
            warned: AtomicBool::new(false),
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This process's instance id: the prefix of its segment files.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Bounds the unshipped backlog (e.g. while the database is down): from `bytes` on, the
    /// gateway refuses calls rather than serve them unmetered.
    pub fn set_max_backlog(&self, bytes: u64) {
        self.max_backlog.store(bytes.max(1 << 20), Ordering::Relaxed);
        metrics::gauge!("portico_journal_backlog_limit_bytes").set(bytes as f64);
    }

    /// The shipper's count of bytes still to ship.
    pub fn report_backlog(&self, bytes: u64) {
        self.backlog.store(bytes, Ordering::Relaxed);
        metrics::gauge!("portico_journal_backlog_bytes").set(bytes as f64);
        let max = self.max_backlog.load(Ordering::Relaxed);
        if max == u64::MAX {
            return;
        }
        if bytes >= max / 10 * 8 {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    backlog_bytes = bytes,
                    limit_bytes = max,
                    "the usage journal is over 80% of its limit: the store is not taking usage; at the limit the gateway refuses calls"
                );
            }
        } else if bytes < max / 2 && self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(backlog_bytes = bytes, "the usage journal's backlog is draining");
        }
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Writes that failed (disk full, …): each one is an event lost.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn append(&self, seg: &Segment, kind: u8, event: Option<&UsageEvent>) {
        // Each thread encodes into a buffer of its own, kept between records.
        thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512)));
        let done = BUF.try_with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                codec::encode(kind, event, &mut buf);
                self.write_record(seg, &buf);
                true
            }
            Err(_) => false,
        });
        if done != Ok(true) {
            // The thread is exiting (its buffer is gone) or already encoding.
            let mut buf = Vec::with_capacity(512);
            codec::encode(kind, event, &mut buf);
            self.write_record(seg, &buf);
        }
    }

    fn write_record(&self, seg: &Segment, buf: &[u8]) {
        // `&File` writes with one write(2) on an O_APPEND file: records never interleave.
        match (&seg.file).write_all(buf) {
            Ok(()) => {
                seg.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                self.backlog.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                metrics::counter!("portico_journal_write_errors_total").increment(1);
                if self.write_errors.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the usage journal; events are being lost");
                }
            }
        }
    }

    /// Takes a reference on the current segment (or on segment `no`), so it cannot be sealed
    /// under the caller.
    fn enter(&self, no: Option<u64>) -> Option<Arc<Segment>> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let seg = match no {
            None => st.current.clone(),
            Some(n) => st.open.get(&n)?.clone(),
        };
        seg.inflight.fetch_add(1, Ordering::AcqRel);
        Some(seg)
    }

    fn leave(&self, seg: &Arc<Segment>) {
        self.leave_n(seg, 1);
    }

    /// Releases `n` references on `seg` (calls whose end has been written).
    fn leave_n(&self, seg: &Arc<Segment>, n: u64) {
        if n > 0 && seg.inflight.fetch_sub(n, Ordering::AcqRel) == n && seg.retired.load(Ordering::Acquire) {
            self.seal(seg);
        }
    }

    fn seal(&self, seg: &Arc<Segment>) {
        if !seg.sealed.swap(true, Ordering::AcqRel) {
            self.append(seg, SEAL, None);
            self.state.write().unwrap_or_else(|p| p.into_inner()).open.remove(&seg.no);
        }
    }

    fn maybe_rotate(&self, seg: &Arc<Segment>) {
        if seg.bytes.load(Ordering::Relaxed) < self.max_segment_bytes {
            return;
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if st.current.no != seg.no {
            return;
        }
        match open_segment(&self.dir, &self.instance, seg.no + 1) {
            Ok(next) => {
                st.open.insert(next.no, next.clone());
                st.current = next;
                seg.retired.store(true, Ordering::Release);
                let idle = seg.inflight.load(Ordering::Acquire) == 0;
                drop(st);
                if idle {
                    self.seal(seg);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot open a new journal segment; the current one keeps growing"),
        }
    }

    /// Seals the current segment (on shutdown: every call has ended).
    pub fn close(&self) {
        let seg = self.state.read().unwrap_or_else(|p| p.into_inner()).current.clone();
        seg.retired.store(true, Ordering::Release);
        if seg.inflight.load(Ordering::Acquire) == 0 {
            self.seal(&seg);
        }
    }
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16
}

/// The end records a deferring thread holds back: all for one segment of one journal, each
/// holding the reference on the segment that its call took (released once written).
#[derive(Default)]
struct Deferred {
    on: bool,
    buf: Vec<u8>,
    target: Option<(Arc<Journal>, Arc<Segment>)>,
    ends: u64,
}

impl Deferred {
    /// Whether the held ends belong to `seg` of `journal` (or none are held).
    fn holds(&self, journal: &Journal, seg: &Segment) -> bool {
        match &self.target {
            Some((j, s)) => std::ptr::eq(Arc::as_ptr(j), journal) && std::ptr::eq(Arc::as_ptr(s), seg),
            None => true,
        }
    }

    /// Writes the held ends (and whatever was encoded after them) in one write.
    fn flush(&mut self) {
        if let Some((journal, seg)) = self.target.take() {
            journal.write_record(&seg, &self.buf);
            journal.leave_n(&seg, std::mem::take(&mut self.ends));
        }
        self.buf.clear();
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local!(static DEFERRED: std::cell::RefCell<Deferred> = std::cell::RefCell::default());

impl Journal {
    /// Writes an end for `seg`, whose reference the caller holds (released here, at once or
    /// once the deferred end is written).
    fn write_end(&self, seg: Arc<Segment>, event: &UsageEvent) {
        let deferred = DEFERRED.try_with(|d| {
            let Ok(mut d) = d.try_borrow_mut() else { return false };
            if !d.on {
                return false;
            }
            if !d.holds(self, &seg) {
                d.flush();
            }
            if d.target.is_none() {
                let Some(me) = self.me.upgrade() else { return false };
                d.target = Some((me, seg.clone()));
            }
            codec::encode(END, Some(event), &mut d.buf);
            d.ends += 1;
            if d.buf.len() >= DEFER_MAX_BYTES {
                d.flush();
            }
            true
        });
        if deferred != Ok(true) {
            self.append(&seg, END, Some(event));
            self.leave(&seg);
        }
    }

    /// Writes a begin to `seg` (the current segment), with the thread's deferred ends when
    /// they belong to the same segment: one write for both.
    fn write_begin(&self, seg: &Arc<Segment>, event: &UsageEvent) {
        let joined = DEFERRED.try_with(|d| {
            let Ok(mut d) = d.try_borrow_mut() else { return false };
            if d.target.is_none() {
                return false;
            }
            if !d.holds(self, seg) {
                d.flush();
                return false;
            }
            codec::encode(BEGIN, Some(event), &mut d.buf);
            d.flush();
            true
        });
        if joined != Ok(true) {
            self.append(seg, BEGIN, Some(event));
        }
    }
}

impl UsageSink for Journal {
    fn accepting(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) < self.max_backlog.load(Ordering::Relaxed)
    }

    fn begin(&self, event: &UsageEvent) -> u64 {
        let Some(seg) = self.enter(None) else { return 0 };
        self.write_begin(&seg, event);
        self.maybe_rotate(&seg);
        // The reference taken here is released once the end is written.
        seg.no
    }

    fn end(&self, token: u64, event: UsageEvent) {
        if token == 0 {
            // Refused before forwarding: a lone end record, in the current segment.
            if let Some(seg) = self.enter(None) {
                self.write_end(seg.clone(), &event);
                self.maybe_rotate(&seg);
            }
            return;
        }
        let seg = self.state.read().unwrap_or_else(|p| p.into_inner()).open.get(&token).cloned();
        match seg {
            Some(seg) => self.write_end(seg, &event),
            None => tracing::error!(segment = token, "usage end for a segment that is already sealed"),
        }
    }

    fn defer_ends_on_this_thread(&self) {
        let _ = DEFERRED.try_with(|d| {
            if let Ok(mut d) = d.try_borrow_mut() {
                d.on = true;
            }
        });
    }

    fn flush_this_thread(&self) {
        let _ = DEFERRED.try_with(|d| {
            if let Ok(mut d) = d.try_borrow_mut() {
                d.flush();
            }
        });
    }
}
