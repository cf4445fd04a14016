//! Snapshots taken from a replica, so the shard writer never stops for them.
//!
//! A [`Replica`] is a second engine that follows the journal's durable records (its own reader,
//! its own copy of the state) on another thread. Taking a snapshot serialises the replica, not
//! the live engine: the writer thread is not paused at all, whatever the number of wallets. The
//! price is a second copy of the shard in memory and the CPU to apply each command twice (the
//! engine applies millions per second, so a fraction of a core). The same replica is what a hot
//! standby runs (issue 5).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use paycore_engine::Engine;
use paycore_journal::{JournalReader, MmapStorage};

use crate::background::{self, Priority};
use crate::file::{prune_snapshots, write_snapshot};
use crate::replay::{ReplayBatch, replay_some};
use crate::shard::ShardError;

/// Records applied per reader call.
const FOLLOW_BATCH_RECORDS: usize = 16 * 1024;

pub struct Replica {
    engine: Engine,
    reader: JournalReader<MmapStorage>,
    batch: ReplayBatch,
    snapshots: PathBuf,
    /// The writer's durable sequence: how far behind the replica is.
    watermark: Arc<AtomicU64>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("last_sequence", &self.engine.last_sequence())
            .finish()
    }
}

impl Replica {
    /// A replica starting from `engine` (a copy of the live state) that follows `journal` up to
    /// the writer's durable `watermark`.
    pub fn new(
        engine: Engine,
        journal: MmapStorage,
        watermark: Arc<AtomicU64>,
        snapshots: PathBuf,
    ) -> Replica {
        let reader =
            JournalReader::new(journal, engine.last_sequence() + 1, Some(watermark.clone()));
        Replica {
            engine,
            reader,
            batch: ReplayBatch::default(),
            snapshots,
            watermark,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Durable records the replica has not applied yet.
    pub fn lag_records(&self) -> u64 {
        self.watermark
            .load(Ordering::Acquire)
            .saturating_sub(self.engine.last_sequence())
    }

    /// Applies every durable record not yet applied; returns how many.
    pub fn catch_up(&mut self) -> Result<u64, ShardError> {
        let mut applied = 0u64;
        loop {
            let read = replay_some(
                &mut self.reader,
                &mut self.engine,
                &mut self.batch,
                FOLLOW_BATCH_RECORDS,
            )?;
            applied += read as u64;
            if read < FOLLOW_BATCH_RECORDS {
                return Ok(applied);
            }
        }
    }

    /// Writes a snapshot of the replica's state; returns its sequence and size in bytes.
    pub fn snapshot(&mut self) -> Result<(u64, u64), ShardError> {
        let (_, bytes) = write_snapshot(&self.snapshots, &self.engine)?;
        Ok((self.engine.last_sequence(), bytes))
    }
}

/// When the snapshotter takes a snapshot: after `every_records` new records or `every_ms`
/// milliseconds with at least one new record, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every_records: u64,
    pub every_ms: u64,
    /// Snapshots kept on disk (the newest ones).
    pub keep: usize,
    /// Nice value of the replica thread (1..=19; 0 keeps normal priority): it applies every
    /// command again, and at a low priority it does so in the CPU the writers leave idle
    /// instead of delaying their batches (see [`crate::background`]). More than
    /// `every_records` behind, it asks for normal priority until it has caught up.
    pub nice: i32,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_records: 20_000_000,
            every_ms: 300_000,
            keep: 2,
            nice: 10,
        }
    }
}

/// How long after a failed snapshot (a full disk) the next attempt waits.
pub const SNAPSHOT_RETRY_MS: u64 = 1_000;

/// Handle of a snapshotter thread.
#[derive(Debug)]
pub struct Snapshotter {
    stop: Arc<AtomicBool>,
    /// Sequence of the newest snapshot on disk (0: none yet).
    pub latest: Arc<AtomicU64>,
    /// Sequence of the last record the replica applied (its lag behind the writer is what a
    /// low priority can let grow; exported as a metric).
    pub applied: Arc<AtomicU64>,
    /// Set to ask for a snapshot as soon as the replica has caught up, whatever the policy
    /// says (a standby that must be seeded, a disk running full); cleared when taken.
    pub requested: Arc<AtomicBool>,
    /// Bytes of the newest snapshot written here (0: none yet): what the next one needs on
    /// disk, about (the node's disk reserve counts it).
    pub latest_bytes: Arc<AtomicU64>,
    /// Snapshots that could not be written (a full disk): the replica goes on and tries again
    /// [`SNAPSHOT_RETRY_MS`] later. The last failure's reason is logged.
    pub failures: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), ShardError>>>,
}

impl Snapshotter {
    /// Runs `replica` on its own thread under `policy`.
    pub fn spawn(mut replica: Replica, policy: SnapshotPolicy) -> Snapshotter {
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(AtomicU64::new(0));
        let applied = Arc::new(AtomicU64::new(replica.engine.last_sequence()));
        let requested = Arc::new(AtomicBool::new(false));
        let latest_bytes = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let (stop_flag, latest_out, applied_out) = (stop.clone(), latest.clone(), applied.clone());
        let (bytes_out, failures_out) = (latest_bytes.clone(), failures.clone());
        let asked = requested.clone();
        let thread = std::thread::Builder::new()
            .name(format!("snapshot-{}", replica.engine.config().shard))
            .spawn(move || {
                let mut since = 0u64;
                let mut last_at = Instant::now();
                let mut priority = Priority::Normal;
                let mut boost_refused = false;
                let mut retry_at: Option<Instant> = None;
                while !stop_flag.load(Ordering::Acquire) {
                    let wanted = if policy.nice <= 0 {
                        Priority::Normal
                    } else if replica.lag_records() > policy.every_records {
                        // Far behind under sustained load: take a fair share until caught up.
                        if boost_refused {
                            Priority::Background(policy.nice)
                        } else {
                            Priority::Normal
                        }
                    } else {
                        Priority::Background(policy.nice)
                    };
                    if wanted != priority {
                        if background::set_current_thread(wanted) {
                            priority = wanted;
                        } else if wanted == Priority::Normal {
                            boost_refused = true;
                            tracing::warn!(
                                shard = replica.engine.config().shard,
                                lag_records = replica.lag_records(),
                                "the snapshot replica is behind and may not raise its priority \
                                 again (needs CAP_SYS_NICE); it stays at nice {}",
                                policy.nice
                            );
                        }
                    }
                    let applied = replica.catch_up()?;
                    applied_out.store(replica.engine.last_sequence(), Ordering::Release);
                    since += applied;
                    // On request: unless the newest snapshot taken here is already current.
                    let on_request = asked.load(Ordering::Acquire)
                        && (since > 0 || latest_out.load(Ordering::Acquire) == 0);
                    let due = (on_request
                        || since >= policy.every_records
                        || (since > 0
                            && last_at.elapsed() >= Duration::from_millis(policy.every_ms)))
                        && retry_at.is_none_or(|at| Instant::now() >= at);
                    if asked.load(Ordering::Acquire) && !on_request {
                        asked.store(false, Ordering::Release);
                    }
                    if due {
                        let started = Instant::now();
                        match replica.snapshot() {
                            Ok((sequence, bytes)) => {
                                // Older snapshots go only once the new one is in place.
                                if let Err(error) = prune_snapshots(&replica.snapshots, policy.keep)
                                {
                                    tracing::warn!(%error, "old snapshots not pruned");
                                }
                                bytes_out.store(bytes, Ordering::Release);
                                latest_out.store(sequence, Ordering::Release);
                                asked.store(false, Ordering::Release);
                                tracing::info!(
                                    shard = replica.engine.config().shard,
                                    sequence,
                                    bytes,
                                    took_ms = started.elapsed().as_millis() as u64,
                                    "snapshot written"
                                );
                                since = 0;
                                last_at = Instant::now();
                                retry_at = None;
                            }
                            Err(error) => {
                                // A full disk must not end snapshots for good: the journal
                                // can only be retired behind one. Try again a little later.
                                failures_out.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(
                                    shard = replica.engine.config().shard,
                                    %error,
                                    retry_ms = SNAPSHOT_RETRY_MS,
                                    "snapshot not written"
                                );
                                retry_at =
                                    Some(Instant::now() + Duration::from_millis(SNAPSHOT_RETRY_MS));
                            }
                        }
                    } else if applied == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|error| panic!("cannot start the snapshot thread: {error}"));
        Snapshotter {
            stop,
            latest,
            applied,
            requested,
            latest_bytes,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the thread and returns its result.
    pub fn stop(mut self) -> Result<(), ShardError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => panic!("snapshot thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
