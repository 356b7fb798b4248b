//! The shipper: reads journal segments and ships their calls to the store, one transaction per
//! round. Exactly-once rests on the segment's shipped offset (`journal_offsets`), written in
//! the same transaction as the rollups it added to: a batch is counted exactly when its offset
//! moves, so a process that dies after the commit re-reads the segment and skips what the
//! stored offset covers. Each call also lands in the request log (pages of calls, `portico_store::request_log`).
//!
//! A segment whose writer is gone (another instance) or that is sealed is read to its end; its
//! begins without an end are the *orphaned* calls: recorded, never billed. A segment is deleted
//! once all of it is in the store.

use crate::codec::{self, Record};
use crate::journal::instance_of;
use portico_core::ids::SubscriptionId;
use portico_store::Store;
use portico_store::usage::{CallRecord, DailyUsage};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Per segment: how far it has been read and shipped, and its calls still in flight.
#[derive(Default, Clone)]
struct Progress {
    /// Loaded from the store on first sight of the segment.
    loaded: bool,
    read_to: u64,
    shipped_to: u64,
    open: foldhash::HashMap<Uuid, CallRecord>,
    sealed: bool,
}

pub struct Shipper {
    dir: PathBuf,
    instance: String,
    store: Store,
    files: HashMap<PathBuf, Progress>,
    /// Largest read from one segment per round, to bound a transaction.
    max_read: usize,
    request_log: RequestLog,
    /// The live journal, told the backlog each round (it bounds it).
    journal: Option<std::sync::Arc<crate::Journal>>,
    /// When a round last left nothing unshipped (or when the shipper started).
    drained_at: std::time::Instant,
    /// The read buffer, kept between rounds.
    buf: Vec<u8>,
    /// The round's calls, kept between rounds (its capacity: no fresh pages every round).
    calls: Vec<CallRecord>,
}

/// Which calls the request log keeps. The rollups, which analytics, quotas
/// and billing read, always count every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestLog {
    /// Every call (the default): any request id can be looked up.
    #[default]
    All,
    /// Calls that failed (4xx, 5xx), were refused by Portico, or were cut off.
    Errors,
    /// None.
    Off,
}

impl RequestLog {
    fn keeps(self, c: &CallRecord) -> bool {
        match self {
            RequestLog::All => true,
            RequestLog::Errors => c.orphaned || c.status >= 400 || c.units == 0,
            RequestLog::Off => false,
        }
    }
}

/// What one round shipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub calls: u64,
    pub orphaned: u64,
    /// Calls read again after a restart and skipped: the store already had them.
    pub duplicates: u64,
    pub segments_done: u64,
}

fn day_of(ms: i64) -> String {
    let d = portico_store::from_millis(ms).date();
    crate::day_string(d)
}

/// Adds a call to the rollup rows, keyed by the UTC day's first millisecond (made into a date
/// string once per row, not per call).
fn aggregate(rows: &mut foldhash::HashMap<(SubscriptionId, i64), DailyUsage>, c: &CallRecord) {
    const DAY: i64 = 86_400_000;
    let u = rows.entry((c.subscription_id, c.at_millis.div_euclid(DAY) * DAY)).or_default();
    if c.orphaned {
        u.orphaned += 1;
        return;
    }
    u.calls += 1;
    match c.status {
        500.. => u.server_errors += 1,
        400..=499 => u.client_errors += 1,
        _ => u.success += 1,
    }
    u.bytes_in += c.bytes_in;
    u.bytes_out += c.bytes_out;
    u.latency_micros_sum += c.latency_micros;
}

/// One segment's part of a round, applied after the commit.
struct Step {
    path: PathBuf,
    name: String,
    progress: Progress,
    done: bool,
    /// Whether the stored offset must be written.
    moved: bool,
}

impl Shipper {
    /// `instance`: the live journal's own instance (its unsealed segments are still growing).
    pub fn new(dir: &Path, instance: &str, store: Store) -> Self {
        Shipper {
            dir: dir.to_path_buf(),
            instance: instance.to_owned(),
            store,
            files: HashMap::new(),
            max_read: 4 << 20,
            request_log: RequestLog::All,
            journal: None,
            drained_at: std::time::Instant::now(),
            buf: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// Reports the backlog to the live journal each round.
    pub fn with_journal(mut self, journal: std::sync::Arc<crate::Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Ships into `store` (e.g. a pool made on the shipper's own thread).
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// Which calls go to the request log.
    pub fn with_request_log(mut self, mode: RequestLog) -> Self {
        self.request_log = mode;
        self
    }

    fn segments(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Ships what the journal holds now. On a store error nothing is marked shipped and the
    /// next round retries.
    pub async fn ship_once(&mut self) -> Result<Shipped, String> {
        let out = self.ship_round().await;
        metrics::gauge!("portico_journal_lag_seconds").set(self.lag().as_secs_f64());
        out
    }

    /// How far the store is behind the journal: the time since a round last shipped everything
    /// the journal held (near 0 while it keeps up; it grows while the store is unreachable).
    pub fn lag(&self) -> std::time::Duration {
        self.drained_at.elapsed()
    }

    async fn ship_round(&mut self) -> Result<Shipped, String> {
        let mut out = Shipped::default();
        let mut calls = std::mem::take(&mut self.calls);
        calls.clear();
        let shipped = self.ship_into(&mut out, &mut calls).await;
        calls.clear();
        self.calls = calls;
        shipped.map(|()| out)
    }

    async fn ship_into(&mut self, out: &mut Shipped, calls: &mut Vec<CallRecord>) -> Result<(), String> {
        let mut steps: Vec<Step> = Vec::new();
        for path in self.segments().map_err(|e| format!("listing {}: {e}", self.dir.display()))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let writer_alive = instance_of(&name) == Some(self.instance.as_str());
            let mut prog = self.files.get(&path).cloned().unwrap_or_default();
            if !prog.loaded {
                let mut c = self.store.conn().await.map_err(|e| e.to_string())?;
                let stored = portico_store::usage::journal_offset(&mut c, &name).await.map_err(|e| e.to_string())?;
                if let Some((_, true)) = stored {
                    // Fully shipped before; only the file's removal was lost.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                // Read from the start again to pair begins with ends; ship only past the offset.
                prog = Progress { loaded: true, shipped_to: stored.map_or(0, |s| s.0), ..Progress::default() };
            }
            let mut f = std::fs::File::open(&path).map_err(|e| format!("opening {name}: {e}"))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            f.seek(SeekFrom::Start(prog.read_to)).map_err(|e| e.to_string())?;
            // One buffer for every round: a fresh 4 MiB each time costs the kernel a page
            // zeroing per 4 KiB (it showed in the gateway's profile as much as the decoding).
            self.buf.clear();
            f.take(self.max_read as u64).read_to_end(&mut self.buf).map_err(|e| format!("reading {name}: {e}"))?;
            let mut records = codec::Decoder::new(&self.buf);
            for (r, end) in records.by_ref() {
                // Past what the store has: to ship (else read again after a restart, to pair).
                let fresh = prog.read_to + end as u64 > prog.shipped_to;
                match r {
                    Record::Begin(c) => {
                        prog.open.insert(c.request_id, c);
                    }
                    Record::End(c) => {
                        prog.open.remove(&c.request_id);
                        if fresh {
                            calls.push(c);
                        } else {
                            out.duplicates += 1;
                        }
                    }
                    Record::Outcome(o) => match prog.open.remove(&o.request_id) {
                        Some(mut c) if fresh => {
                            o.complete(&mut c);
                            calls.push(c);
                        }
                        Some(_) => out.duplicates += 1,
                        // Told once: a segment read again from its start meets it again.
                        None if !fresh => {}
                        None => {
                            // Its begin was not written (a failed write): the call cannot be told.
                            metrics::counter!("portico_usage_outcomes_without_begin_total").increment(1);
                            tracing::warn!(segment = %name, request_id = %o.request_id, "a call's end has no begin in its journal segment; the call is not counted");
                        }
                    },
                    Record::Seal => prog.sealed = true,
                }
            }
            let (used, corrupt) = (records.used(), records.corrupt());
            let read_all = prog.read_to + self.buf.len() as u64 >= len;
            prog.read_to += used as u64;
            if corrupt {
                tracing::warn!(segment = %name, offset = prog.read_to, "the journal segment has a damaged record; the rest of it is skipped");
            }
            // A dead writer's torn or damaged tail will never be completed: it ends there.
            let at_end = prog.read_to >= len || (!writer_alive && read_all);
            let done = at_end && (prog.sealed || !writer_alive);
            if done {
                for (_, mut c) in prog.open.drain() {
                    c.orphaned = true;
                    calls.push(c);
                }
            }
            let moved = prog.read_to > prog.shipped_to || done;
            prog.shipped_to = prog.shipped_to.max(prog.read_to);
            steps.push(Step { path, name, progress: prog, done, moved });
        }
        let pending: u64 = steps
            .iter()
            .map(|s| std::fs::metadata(&s.path).map(|m| m.len().saturating_sub(s.progress.read_to)).unwrap_or(0))
            .sum();
        metrics::gauge!("portico_journal_pending_bytes").set(pending as f64);
        if let Some(j) = &self.journal {
            j.report_backlog(pending);
        }

        if steps.iter().any(|s| s.moved) {
            let stored = match self.store_round(calls, &steps).await {
                Ok(stored) => stored,
                Err(e) => {
                    metrics::counter!("portico_usage_ship_failures_total").increment(1);
                    // A commit whose answer was lost (the connection cut after the server
                    // committed) may have landed: what was shipped is known only to the store
                    // now, so these segments are read again against their stored offsets, as
                    // after a restart, and nothing is counted twice.
                    for s in &steps {
                        self.files.remove(&s.path);
                    }
                    return Err(e);
                }
            };
            out.calls += stored.0;
            out.orphaned += stored.1;
        }
        metrics::counter!("portico_usage_calls_shipped_total").increment(out.calls);
        metrics::counter!("portico_usage_calls_orphaned_total").increment(out.orphaned);
        for s in steps {
            if s.done {
                if let Err(e) = std::fs::remove_file(&s.path) {
                    tracing::warn!(error = %e, segment = %s.path.display(), "cannot remove a shipped journal segment");
                }
                self.files.remove(&s.path);
                out.segments_done += 1;
            } else {
                self.files.insert(s.path, s.progress);
            }
        }
        if pending == 0 {
            self.drained_at = std::time::Instant::now();
        }
        Ok(())
    }

    /// One transaction: the request log, the daily and minute rollups, and the offsets that account
    /// for them.
    async fn store_round(&self, calls: &[CallRecord], steps: &[Step]) -> Result<(u64, u64), String> {
        let mut rows: foldhash::HashMap<(SubscriptionId, i64), DailyUsage> = foldhash::HashMap::default();
        let (mut metered, mut orphaned) = (0, 0);
        for c in calls {
            aggregate(&mut rows, c);
            if c.orphaned {
                orphaned += 1;
            } else {
                metered += 1;
            }
        }
        let batch: Vec<(SubscriptionId, DailyUsage)> = rows
            .into_iter()
            .map(|((s, day), u)| (s, DailyUsage { subscription_id: Some(s), day: day_of(day), ..u }))
            .collect();
        let run = async {
            let mut tx = self.store.begin().await?;
            let kept: Vec<&CallRecord> = calls.iter().filter(|c| self.request_log.keeps(c)).collect();
            portico_store::usage::insert_calls(&mut tx, &kept).await?;
            portico_store::usage::add(&mut tx, &batch).await?;
            portico_store::rollups::add(&mut tx, &self.instance, calls).await?;
            for s in steps.iter().filter(|s| s.moved) {
                portico_store::usage::set_journal_offset(&mut tx, &s.name, s.progress.shipped_to, s.done).await?;
            }
            tx.commit().await?;
            Ok::<_, portico_store::Error>(())
        };
        run.await.map_err(|e| e.to_string())?;
        Ok((metered, orphaned))
    }

    /// Ships every `every` until `shutdown` resolves, then once more, on a task of the current
    /// runtime.
    pub fn spawn(
        self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(every, shutdown))
    }

    /// Ships every `every` until `shutdown` resolves, then once more.
    pub async fn run(mut self, every: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => break,
            }
            match self.ship_once().await {
                Ok(s) if failing || s.duplicates > 0 => {
                    failing = false;
                    tracing::info!(
                        calls = s.calls,
                        orphaned = s.orphaned,
                        skipped = s.duplicates,
                        "usage shipping resumed"
                    );
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "usage shipping failed; the journal keeps the calls and retries");
                }
                Err(_) => {}
            }
        }
        if let Err(e) = self.ship_once().await {
            tracing::warn!(error = %e, "the last usage shipping before exit failed; the journal keeps the calls for the next start");
        }
    }
}

/// Gives the calling thread the CPU priority `nice` (0 = normal … 19 = lowest). On Linux the
/// nice value belongs to the thread, and threads it starts inherit it — so a store pool created
/// on it (SQLite's worker threads) runs at that priority too. The shipper runs this way: under
/// saturation the journal (durable) lags instead of the gateway losing throughput, and it
/// catches up as soon as the CPU has room.
#[cfg(target_os = "linux")]
pub fn lower_thread_priority(nice: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice).map_err(std::io::Error::from)
}

/// Elsewhere the nice value is the whole process's: the shipper keeps the gateway's priority.
#[cfg(not(target_os = "linux"))]
pub fn lower_thread_priority(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priorities need Linux"))
}
