//! The durable local journal: a [`UsageSink`] that appends a *begin* record before a call is
//! forwarded and an *end* record after it (for a begun call, only its outcome: the shipper
//! completes it from the begin), with `write(2)` to an append-only segment file. A
//! write that returned has reached the kernel, so it survives the process being killed;
//! nothing here waits on fsync or on the database.
//!
//! Group commit: a gateway worker may defer a record into its thread's pending buffer
//! ([`UsageSink::begin_deferred`], [`UsageSink::end_deferred`]), let the worker's other ready
//! calls add theirs, and then [`UsageSink::flush`] them all with one `write(2)`. The rules that
//! keep counts exact: a call is forwarded only once its begin is written, and the last bytes of
//! its response go out only once its end is; a record written at once (`begin`, `end`) writes
//! the thread's pending ones first, so a call's end never precedes its begin (an outcome
//! before its begin could not be completed, and the call would not be counted); an end releases
//! its segment (which may then be sealed) only once it is written.
//!
//! Segments are `<instance>-<n>.seg`, one per writing thread at a time (a gateway worker's
//! appends never wait for another worker's). A segment is retired when it grows past its size
//! limit (its thread goes on in a new one) and sealed (a `Seal` record) once its last in-flight
//! call has ended; the end of a call is always written to the segment that holds its begin,
//! whichever thread writes it. `close` seals them all. One journal per directory: it holds an
//! exclusive lock on `LOCK`.

use crate::codec::{self, BEGIN, END, OUTCOME, SEAL};
use portico_core::usage::{UsageEvent, UsageSink};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

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
    /// The number the next new segment gets.
    next_no: u64,
    /// By number: an end record's token names its begin's segment.
    open: foldhash::HashMap<u64, Arc<Segment>>,
}

pub struct Journal {
    /// This journal, for the pending buffers that refer to it.
    me: Weak<Journal>,
    /// Tells this journal's segments apart in a thread's [`CURRENT`] (unlike an address, never
    /// reused by a later journal).
    id: u64,
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
        // The opening thread's segment, made now so that a journal that cannot write fails here.
        let first = open_segment(dir, &instance, 1)?;
        let open = foldhash::HashMap::from_iter([(1, first.clone())]);
        let id = JOURNAL_IDS.fetch_add(1, Ordering::Relaxed);
        set_current(id, &first);
        Ok(Arc::new_cyclic(|me| Journal {
            me: me.clone(),
            id,
            dir: dir.to_path_buf(),
            instance,
            state: RwLock::new(State { next_no: 2, open }),
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

    /// Writes one record now, on its own (the seal; pending records cannot precede it).
    fn append(&self, seg: &Segment, kind: u8, event: Option<&UsageEvent>) {
        // Each thread encodes into a buffer of its own, kept between records.
        thread_local!(static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512)));
        let write = |buf: &mut Vec<u8>| {
            buf.clear();
            codec::encode(kind, event, buf);
            self.write_record(seg, buf);
        };
        // At a thread's exit (its pending records written by their destructor) the buffer
        // may be gone already.
        if BUF.try_with(|b| write(&mut b.borrow_mut())).is_err() {
            write(&mut Vec::new());
        }
    }

    /// Adds a record to this thread's pending buffer (written first if it holds another
    /// segment's records) and returns its ticket for [`Pending::flush_to`]. `release`: the
    /// record gives back a reference on `seg` once written.
    fn defer(&self, seg: &Arc<Segment>, kind: u8, event: &UsageEvent, release: bool) -> u64 {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let same = p.to.as_ref().is_some_and(|(j, s)| std::ptr::eq(Arc::as_ptr(j), self) && Arc::ptr_eq(s, seg));
            if !same {
                p.flush();
                let Some(me) = self.me.upgrade() else {
                    // Not reached: a journal only exists in an `Arc`. Written at once, then.
                    self.append(seg, kind, Some(event));
                    self.leave(seg, u64::from(release));
                    return 0;
                };
                p.to = Some((me, seg.clone()));
            }
            codec::encode(kind, Some(event), &mut p.buf);
            p.releases += u64::from(release);
            p.appended += 1;
            let ticket = p.appended;
            // A burst's records are written together, but never too many at once.
            if p.buf.len() >= PENDING_MAX {
                p.flush();
            }
            ticket
        })
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

    /// Takes a reference on this thread's current segment (or on segment `no`), so it cannot
    /// be sealed under the caller.
    fn enter(&self, no: Option<u64>) -> Option<Arc<Segment>> {
        let seg = match no {
            None => self.current()?,
            Some(n) => self.state.read().unwrap_or_else(|p| p.into_inner()).open.get(&n)?.clone(),
        };
        seg.inflight.fetch_add(1, Ordering::AcqRel);
        Some(seg)
    }

    /// This thread's segment: each writing thread appends to a file of its own, so gateway
    /// workers never wait for each other in `write(2)` (two threads appending to one file
    /// serialise on its position lock, and one preempted inside its write stalls the other).
    /// Made on a thread's first record and when the last one is retired.
    fn current(&self) -> Option<Arc<Segment>> {
        let mine = CURRENT
            .try_with(|c| {
                c.borrow()
                    .iter()
                    .find(|(id, s)| *id == self.id && !s.retired.load(Ordering::Acquire))
                    .map(|(_, s)| s.clone())
            })
            .ok()
            .flatten();
        if mine.is_some() {
            return mine;
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        match self.new_segment(&mut st) {
            Ok(seg) => Some(seg),
            Err(e) => {
                tracing::error!(error = %e, "cannot open a new journal segment; writing to another thread's");
                st.open.values().find(|s| !s.retired.load(Ordering::Acquire)).cloned()
            }
        }
    }

    /// Opens the next segment and makes it this thread's current one.
    fn new_segment(&self, st: &mut State) -> std::io::Result<Arc<Segment>> {
        let seg = open_segment(&self.dir, &self.instance, st.next_no)?;
        st.next_no += 1;
        st.open.insert(seg.no, seg.clone());
        set_current(self.id, &seg);
        Ok(seg)
    }

    /// Gives back `n` references on `seg`; the last one out of a retired segment seals it.
    fn leave(&self, seg: &Arc<Segment>, n: u64) {
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
        // Only this thread's own current segment is rotated (by this thread).
        let mine = CURRENT
            .try_with(|c| c.borrow().iter().any(|(id, s)| *id == self.id && Arc::ptr_eq(s, seg)))
            .unwrap_or(false);
        if !mine || seg.retired.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        match self.new_segment(&mut st) {
            Ok(_) => {
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

    /// Seals every thread's segment (on shutdown: every call has ended).
    pub fn close(&self) {
        let open: Vec<Arc<Segment>> =
            self.state.read().unwrap_or_else(|p| p.into_inner()).open.values().cloned().collect();
        for seg in open {
            seg.retired.store(true, Ordering::Release);
            if seg.inflight.load(Ordering::Acquire) == 0 {
                self.seal(&seg);
            }
        }
    }
}

static JOURNAL_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Each thread's current segment, by journal id (a thread writes to one journal, or a few
    /// in tests).
    static CURRENT: RefCell<Vec<(u64, Arc<Segment>)>> = const { RefCell::new(Vec::new()) };
}

fn set_current(journal: u64, seg: &Arc<Segment>) {
    let _ = CURRENT.try_with(|c| {
        let mut c = c.borrow_mut();
        // Segments of journals that are gone or retired are let go here.
        c.retain(|(id, s)| *id != journal && !s.sealed.load(Ordering::Acquire));
        c.push((journal, seg.clone()));
    });
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16
}

/// Pending records past this size are written at once.
const PENDING_MAX: usize = 64 << 10;

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// One thread's records not yet written, all for one segment.
#[derive(Default)]
struct Pending {
    to: Option<(Arc<Journal>, Arc<Segment>)>,
    buf: Vec<u8>,
    /// Segment references to give back once `buf` is written (one per end record in it).
    releases: u64,
    /// Records this thread has appended, and how many of them are written.
    appended: u64,
    written: u64,
}

impl Pending {
    fn flush(&mut self) {
        let Some((journal, seg)) = self.to.take() else { return };
        if !self.buf.is_empty() {
            journal.write_record(&seg, &self.buf);
            self.buf.clear();
        }
        self.written = self.appended;
        journal.leave(&seg, std::mem::take(&mut self.releases));
    }

    /// Writes the pending records unless the one with `ticket` is written already.
    fn flush_to(&mut self, ticket: u64) {
        if self.written < ticket {
            self.flush();
        }
    }
}

impl Drop for Pending {
    /// A thread that exits writes what it still holds.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes this thread's pending records now.
fn flush_now() {
    PENDING.with(|p| p.borrow_mut().flush());
}

impl UsageSink for Journal {
    fn accepting(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) < self.max_backlog.load(Ordering::Relaxed)
    }

    fn begin(&self, event: &UsageEvent) -> u64 {
        let (token, _) = self.begin_deferred(event);
        flush_now();
        token
    }

    fn end(&self, token: u64, event: UsageEvent) {
        self.end_deferred(token, event);
        flush_now();
    }

    fn begin_deferred(&self, event: &UsageEvent) -> (u64, u64) {
        let Some(seg) = self.enter(None) else { return (0, 0) };
        let ticket = self.defer(&seg, BEGIN, event, false);
        self.maybe_rotate(&seg);
        // The reference taken here is released by the end record.
        (seg.no, ticket)
    }

    fn end_deferred(&self, token: u64, event: UsageEvent) -> u64 {
        if token == 0 {
            // Refused before forwarding: a lone end record, in the current segment.
            let Some(seg) = self.enter(None) else { return 0 };
            let ticket = self.defer(&seg, END, &event, true);
            self.maybe_rotate(&seg);
            return ticket;
        }
        let seg = self.state.read().unwrap_or_else(|p| p.into_inner()).open.get(&token).cloned();
        match seg {
            // Its begin is in this segment: the end says only how the call went.
            Some(seg) => self.defer(&seg, OUTCOME, &event, true),
            None => {
                tracing::error!(segment = token, "usage end for a segment that is already sealed");
                0
            }
        }
    }

    fn flush(&self, ticket: u64) {
        PENDING.with(|p| p.borrow_mut().flush_to(ticket));
    }

    fn pending(&self) -> bool {
        PENDING.with(|p| p.borrow().to.is_some())
    }
}
