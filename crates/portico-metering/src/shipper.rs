//! The shipper: reads journal segments, and ships their calls to the store in batches, one
//! transaction each. Every call is inserted under its request id and added to the daily rollup
//! only if it was new, so a batch shipped twice (the process died after the commit, before it
//! could note its progress) counts once. A segment whose writer is gone (another instance) or
//! that is sealed is read to its end; its begins without an end are the *orphaned* calls:
//! recorded, never billed. A segment is deleted once all of it is in the store.

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

/// Per segment: how far it has been shipped, and its calls still in flight.
#[derive(Default)]
struct Progress {
    offset: u64,
    open: HashMap<Uuid, CallRecord>,
    sealed: bool,
}

pub struct Shipper {
    dir: PathBuf,
    instance: String,
    store: Store,
    files: HashMap<PathBuf, Progress>,
    /// Largest read from one segment per round, to bound a transaction.
    max_read: usize,
}

/// What one round shipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub calls: u64,
    pub orphaned: u64,
    pub duplicates: u64,
    pub segments_done: u64,
}

fn day_of(ms: i64) -> String {
    let d = portico_store::from_millis(ms).date();
    crate::day_string(d)
}

/// Adds a call to the rollup rows.
fn aggregate(rows: &mut HashMap<(SubscriptionId, String), DailyUsage>, c: &CallRecord) {
    let u = rows.entry((c.subscription_id, day_of(c.at_millis))).or_default();
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

impl Shipper {
    /// `instance`: the live journal's own instance (its unsealed segments are still growing).
    pub fn new(dir: &Path, instance: &str, store: Store) -> Self {
        Shipper {
            dir: dir.to_path_buf(),
            instance: instance.to_owned(),
            store,
            files: HashMap::new(),
            max_read: 4 << 20,
        }
    }

    fn segments(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Ships what the journal holds now. Returns what it shipped; on a store error nothing is
    /// marked shipped and the next round retries.
    pub async fn ship_once(&mut self) -> Result<Shipped, String> {
        let mut calls: Vec<CallRecord> = Vec::new();
        // Per segment: where it was read to, and whether it is done, applied after the commit.
        let mut advance: Vec<(PathBuf, Progress, bool)> = Vec::new();
        for path in self.segments().map_err(|e| format!("listing {}: {e}", self.dir.display()))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let writer_alive = instance_of(&name) == Some(self.instance.as_str());
            let prog = self.files.entry(path.clone()).or_default();
            let mut f = std::fs::File::open(&path).map_err(|e| format!("opening {name}: {e}"))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            f.seek(SeekFrom::Start(prog.offset)).map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            f.take(self.max_read as u64).read_to_end(&mut buf).map_err(|e| format!("reading {name}: {e}"))?;
            let (records, used, corrupt) = codec::decode(&buf);
            let mut open = prog.open.clone();
            let mut sealed = prog.sealed;
            for r in records {
                match r {
                    Record::Begin(c) => {
                        open.insert(c.request_id, c);
                    }
                    Record::End(c) => {
                        open.remove(&c.request_id);
                        calls.push(c);
                    }
                    Record::Seal => sealed = true,
                }
            }
            let offset = prog.offset + used as u64;
            // A dead writer's torn or damaged tail will never be completed: it ends there.
            let read_all = prog.offset + buf.len() as u64 >= len;
            let at_end = offset >= len || (!writer_alive && read_all);
            if corrupt {
                tracing::warn!(segment = %name, offset, "the journal segment has a damaged record; the rest of it is skipped");
            }
            // Done: nothing more will be written, and all of it has been read.
            let done = at_end && (sealed || !writer_alive);
            if done {
                for (_, mut c) in open.drain() {
                    c.orphaned = true;
                    calls.push(c);
                }
            }
            advance.push((path, Progress { offset, open, sealed }, done));
        }
        let shipped = self.store_calls(&calls).await;
        // Journal lag: what is written and not yet in the store.
        let pending: u64 = advance
            .iter()
            .map(|(p, prog, _)| std::fs::metadata(p).map(|m| m.len().saturating_sub(prog.offset)).unwrap_or(0))
            .sum();
        metrics::gauge!("portico_journal_pending_bytes").set(pending as f64);
        let mut out = shipped.inspect_err(|_| metrics::counter!("portico_usage_ship_failures_total").increment(1))?;
        metrics::counter!("portico_usage_calls_shipped_total").increment(out.calls);
        metrics::counter!("portico_usage_calls_orphaned_total").increment(out.orphaned);
        for (path, progress, done) in advance {
            if done {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(error = %e, segment = %path.display(), "cannot remove a shipped journal segment");
                }
                self.files.remove(&path);
                out.segments_done += 1;
            } else {
                self.files.insert(path, progress);
            }
        }
        Ok(out)
    }

    async fn store_calls(&self, calls: &[CallRecord]) -> Result<Shipped, String> {
        let mut out = Shipped::default();
        if calls.is_empty() {
            return Ok(out);
        }
        let mut rows: HashMap<(SubscriptionId, String), DailyUsage> = HashMap::new();
        let run = async {
            let mut tx = self.store.begin().await?;
            let new = portico_store::usage::insert_calls(&mut tx, calls).await?;
            for c in calls {
                if new.contains(&c.request_id) {
                    aggregate(&mut rows, c);
                    if c.orphaned {
                        out.orphaned += 1;
                    } else {
                        out.calls += 1;
                    }
                } else {
                    out.duplicates += 1;
                }
            }
            let batch: Vec<(SubscriptionId, DailyUsage)> =
                rows.into_iter().map(|((s, day), u)| (s, DailyUsage { subscription_id: Some(s), day, ..u })).collect();
            portico_store::usage::add(&mut tx, &batch).await?;
            tx.commit().await?;
            Ok::<_, portico_store::Error>(())
        };
        run.await.map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Ships every `every` until `shutdown` resolves, then once more.
    pub fn spawn(
        mut self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
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
                            duplicates = s.duplicates,
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
        })
    }
}
