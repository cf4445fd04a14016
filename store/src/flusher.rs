//! The flusher of one shard: follows the journal, applies every record to its own shadow
//! engine (the engine is deterministic, so it reproduces the primary's events exactly), turns
//! the events into rows and writes them with the checkpoint in one SQL transaction per batch.
//!
//! Phases: connect (retried) → read the checkpoint → load the newest snapshot at or below it →
//! replay the journal up to it without writing → follow: read a batch, apply, write with the
//! checkpoint, repeat. A failed write is retried with capped exponential backoff on a fresh
//! connection; the batch is kept, and a commit whose answer was lost is recognised by the
//! checkpoint having already moved to the batch's end.
//!
//! A batch's commit is durable or deferred ([`crate::durability`]): only durable commits move
//! `FlushStatus::flushed_sequence`, which journal retention trusts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paycore_engine::codec::decode_command;
use paycore_engine::{Effects, Engine, EngineConfig};
use paycore_snapshot::{ShardPaths, list_snapshots, read_snapshot};

use crate::durability::{DURABLE_INTERVAL_MS_MAX_DEFAULT, Watermarks};
use crate::follow::Follower;
use crate::rows::{BatchRows, key_known};
use crate::store::{Store, StoreError, StoreTarget};

/// Default most journal records per SQL transaction. Larger batches write each touched wallet
/// once for more movements and pay fewer round trips and commits (BENCHMARKS.md "Store"); the
/// rows of one batch are held in memory (measured: ~0.7 KB per record at 1 M wallets; 131 072
/// records were 14 % faster than 32 768 and as fast as 262 144, which took 0.3 GB more).
pub const BATCH_RECORDS_DEFAULT: usize = 131_072;
/// Upper limit of `batch_records_max` (rows of one batch are held in memory).
pub const BATCH_RECORDS_LIMIT: usize = 1 << 20;
/// First retry delay after a failed write or connect; doubles up to `retry_backoff_ms_max`.
const RETRY_BACKOFF_MS_MIN: u64 = 50;
/// Poll interval when the journal has nothing new, growing to the maximum while idle.
const IDLE_POLL_MS_MIN: u64 = 1;
const IDLE_POLL_MS_MAX: u64 = 20;

#[derive(Debug, Clone)]
pub struct FlusherConfig {
    pub data_dir: PathBuf,
    /// The shard's engine configuration: the node's own (capacities change outcomes).
    pub engine_config: EngineConfig,
    pub target: StoreTarget,
    pub batch_records_max: usize,
    pub retry_backoff_ms_max: u64,
    /// Longest time between durable commits while batches are full ([`crate::durability`]);
    /// 0 makes every commit durable.
    pub durable_interval_ms_max: u64,
    /// The journal writer's durable sequence when running inside a node; `None` reads to the end
    /// of the valid data (a stopped node's folder).
    pub watermark: Option<Arc<AtomicU64>>,
    /// Return once everything readable is written (offline `paycore flush --once`).
    pub stop_at_end: bool,
}

impl FlusherConfig {
    pub fn new(data_dir: PathBuf, engine_config: EngineConfig, target: StoreTarget) -> Self {
        FlusherConfig {
            data_dir,
            engine_config,
            target,
            batch_records_max: BATCH_RECORDS_DEFAULT,
            retry_backoff_ms_max: 5_000,
            durable_interval_ms_max: DURABLE_INTERVAL_MS_MAX_DEFAULT,
            watermark: None,
            stop_at_end: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("journal: {0}")]
    Journal(String),
    #[error(
        "journal record {needed} is needed but the journal (and its archive) starts at \
         {journal_first}: segments were deleted before they were flushed"
    )]
    Gap { needed: u64, journal_first: u64 },
    #[error("journal record {sequence} does not decode: {reason}")]
    Decode { sequence: u64, reason: String },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error(
        "the store's checkpoint for shard {shard} is {checkpoint} but the journal ends at \
         {journal_last}: the store is ahead of this data folder (another node's store?)"
    )]
    StoreAhead {
        shard: u16,
        checkpoint: u64,
        journal_last: u64,
    },
    #[error(
        "shard {shard}: the store holds a different history: its record {sequence} was \
         journaled in epoch {store_epoch}, this journal's in epoch {journal_epoch} (a failover \
         cut records the store already had); rebuild the store from this journal"
    )]
    Diverged {
        shard: u16,
        sequence: u64,
        store_epoch: u64,
        journal_epoch: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopped")]
    Stopped,
}

/// What a running flusher exports (shared with the node's status and journal retention).
#[derive(Debug, Default)]
pub struct FlushStatus {
    /// Last sequence whose rows are durably committed in the store: a store crash cannot lose
    /// them (retention keeps everything after).
    pub flushed_sequence: Arc<AtomicU64>,
    /// Last sequence whose rows are committed, durably or not (readers of the store see them;
    /// a store crash may take back what is after `flushed_sequence`).
    pub committed_sequence: AtomicU64,
    /// Last sequence read from the journal and applied to the shadow engine.
    pub read_sequence: AtomicU64,
    /// Command timestamp of the oldest record read but not yet committed (0: none).
    pub oldest_pending_ns: AtomicU64,
    /// Writes or connects that failed (and were retried).
    pub failures: AtomicU64,
    pub connected: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub finished: AtomicBool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl FlushStatus {
    /// Records durable in the journal (`durable_sequence`) but not yet in the store.
    pub fn lag_records(&self, durable_sequence: u64) -> u64 {
        durable_sequence.saturating_sub(self.flushed_sequence.load(Ordering::Acquire))
    }

    /// How long the oldest record not yet in the store has waited, in milliseconds (wall clock
    /// against its command timestamp); 0 when nothing read is pending.
    pub fn lag_ms(&self) -> u64 {
        match self.oldest_pending_ns.load(Ordering::Acquire) {
            0 => 0,
            since => now_ns().saturating_sub(since) / 1_000_000,
        }
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Sleeps up to `ms`, waking early when `stop` is set. Returns whether to stop.
fn pause(stop: &AtomicBool, ms: u64) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if stop.load(Ordering::Acquire) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(ms.min(10)));
    }
    stop.load(Ordering::Acquire)
}

struct Shard<'a> {
    config: &'a FlusherConfig,
    status: &'a FlushStatus,
    stop: &'a AtomicBool,
    store: Option<Store>,
    backoff_ms: u64,
}

impl Shard<'_> {
    fn shard(&self) -> u16 {
        self.config.engine_config.shard
    }

    /// Runs `op` on a connected store, reconnecting and retrying with backoff on failure.
    /// `CheckpointMoved` is the caller's to judge and is not retried.
    fn with_store<T>(
        &mut self,
        mut op: impl FnMut(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, FlushError> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(FlushError::Stopped);
            }
            if self.store.is_none() {
                match Store::connect(&self.config.target) {
                    Ok(store) => {
                        self.store = Some(store);
                        self.status.connected.store(true, Ordering::Release);
                    }
                    Err(error) => {
                        self.failed(&error);
                        if pause(self.stop, self.backoff_ms) {
                            return Err(FlushError::Stopped);
                        }
                        continue;
                    }
                }
            }
            let Some(store) = self.store.as_mut() else {
                unreachable!("connected above")
            };
            match op(store) {
                Ok(value) => {
                    self.backoff_ms = RETRY_BACKOFF_MS_MIN;
                    self.status.set_error(None);
                    return Ok(value);
                }
                Err(error @ StoreError::CheckpointMoved { .. }) => return Err(error.into()),
                Err(error @ StoreError::Invalid(_)) => return Err(error.into()),
                Err(error) => {
                    self.failed(&error);
                    // A fresh connection next time: the old one may be broken or mid-transaction.
                    self.store = None;
                    self.status.connected.store(false, Ordering::Release);
                    if pause(self.stop, self.backoff_ms) {
                        return Err(FlushError::Stopped);
                    }
                }
            }
        }
    }

    /// One attempt, no retry (the flusher is stopping), to make the deferred commits durable
    /// and report them; if it fails they stay unreported and the next run writes or checks
    /// them again.
    fn durable_before_stop(&mut self, marks: &mut Watermarks) {
        if !marks.behind() {
            return;
        }
        let shard = self.shard();
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.make_durable(shard, marks.committed_sequence()) {
            Ok(()) => {
                marks.made_durable(Instant::now());
                self.status
                    .flushed_sequence
                    .store(marks.durable_sequence(), Ordering::Release);
            }
            Err(error) => {
                tracing::warn!(shard, %error, "deferred commits left unreported at stop");
            }
        }
    }

    fn failed(&mut self, error: &StoreError) {
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            shard = self.shard(),
            %error,
            retry_in_ms = self.backoff_ms,
            "store write failed; retrying"
        );
        self.status.set_error(Some(error.to_string()));
        self.backoff_ms = (self.backoff_ms * 2).min(self.config.retry_backoff_ms_max.max(1));
    }
}

/// The newest snapshot at or below `sequence`, or an empty engine.
fn load_engine(config: &FlusherConfig, at_most: u64) -> Result<Engine, FlushError> {
    let paths = ShardPaths::new(&config.data_dir, config.engine_config.shard);
    let snapshots =
        list_snapshots(&paths.snapshots).map_err(|e| FlushError::Snapshot(e.to_string()))?;
    for (sequence, path) in snapshots {
        if sequence > at_most {
            continue;
        }
        match read_snapshot(&path, &config.engine_config) {
            Ok(engine) => return Ok(engine),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "snapshot unusable; trying an older one");
            }
        }
    }
    Ok(Engine::new(config.engine_config.clone()))
}

/// Reads up to `max` records, applies them to `engine` and (when `rows` is given) records
/// their rows. Returns how many were read.
fn apply_some(
    follower: &mut Follower,
    engine: &mut Engine,
    effects: &mut Effects,
    max: usize,
    mut rows: Option<&mut BatchRows>,
    last_epoch: &mut u64,
) -> Result<usize, FlushError> {
    follower.read(max, |record| {
        *last_epoch = record.epoch;
        let command = decode_command(record.payload).map_err(|e| FlushError::Decode {
            sequence: record.sequence,
            reason: e.to_string(),
        })?;
        effects.clear();
        let known = rows.is_some() && key_known(engine, &command);
        let outcome = engine.apply(record.sequence, record.timestamp_ns, &command, effects);
        if let Some(rows) = rows.as_deref_mut() {
            rows.record(
                engine,
                record.sequence,
                &command,
                &outcome,
                &effects.events,
                known,
            );
            rows.last_epoch = record.epoch;
        }
        Ok(())
    })
}

/// Replays the journal from `engine`'s state up to `until` without writing; returns the epoch
/// of the last record replayed (0 when none was).
pub fn replay_to(
    follower: &mut Follower,
    engine: &mut Engine,
    until: u64,
    batch: usize,
) -> Result<u64, FlushError> {
    let mut effects = Effects::default();
    let mut epoch = 0;
    while engine.last_sequence() < until {
        let want = ((until - engine.last_sequence()) as usize).min(batch);
        if apply_some(follower, engine, &mut effects, want, None, &mut epoch)? == 0 {
            return Err(FlushError::StoreAhead {
                shard: engine.config().shard,
                checkpoint: until,
                journal_last: engine.last_sequence(),
            });
        }
    }
    Ok(epoch)
}

/// The state of shard `config.engine_config.shard` at sequence `at` from the data folder
/// (newest snapshot at or below it, then the journal).
pub fn engine_at(config: &FlusherConfig, at: u64) -> Result<Engine, FlushError> {
    let mut engine = load_engine(config, at)?;
    let paths = ShardPaths::new(&config.data_dir, config.engine_config.shard);
    let mut follower = Follower::new(&paths.journal, engine.last_sequence() + 1, None);
    replay_to(&mut follower, &mut engine, at, 64 * 1024)?;
    Ok(engine)
}

/// Runs one shard's flusher until `stop` (or, with `stop_at_end`, until the journal is
/// written out). Errors only for what retrying cannot fix.
pub fn run(
    config: &FlusherConfig,
    status: &FlushStatus,
    stop: &AtomicBool,
) -> Result<(), FlushError> {
    let mut restarts = 0;
    loop {
        match run_from_checkpoint(config, status, stop) {
            // The store went back (restored from a backup, or it lost commits it had
            // acknowledged): everything after its checkpoint is written again, from the journal.
            Err(FlushError::Store(StoreError::CheckpointMoved {
                shard,
                expected,
                found,
            })) if found.unwrap_or(0) < expected && restarts < REWIND_RESTARTS_MAX => {
                restarts += 1;
                tracing::warn!(
                    shard,
                    expected,
                    found = found.unwrap_or(0),
                    "the store's checkpoint went back; resuming from it"
                );
            }
            other => return other,
        }
    }
}

/// Times in a row a flusher restarts after its store's checkpoint went back.
const REWIND_RESTARTS_MAX: u32 = 16;

fn run_from_checkpoint(
    config: &FlusherConfig,
    status: &FlushStatus,
    stop: &AtomicBool,
) -> Result<(), FlushError> {
    let batch_records_max = config.batch_records_max.clamp(1, BATCH_RECORDS_LIMIT);
    let shard_id = config.engine_config.shard;
    let mut shard = Shard {
        config,
        status,
        stop,
        store: None,
        backoff_ms: RETRY_BACKOFF_MS_MIN,
    };
    let checkpoint = shard.with_store(|s| s.checkpoint(shard_id))?;
    // The checkpoint may be a deferred commit of an earlier run: made durable before it is
    // reported (and checked: a store that lost commits shows a lower one).
    if checkpoint > 0 {
        shard.with_store(|s| s.make_durable(shard_id, checkpoint))?;
    }
    status.flushed_sequence.store(checkpoint, Ordering::Release);
    status
        .committed_sequence
        .store(checkpoint, Ordering::Release);
    let mut marks = Watermarks::new(checkpoint, config.durable_interval_ms_max, Instant::now());
    let mut engine = load_engine(config, checkpoint)?;
    let paths = ShardPaths::new(&config.data_dir, shard_id);
    let mut follower = Follower::new(
        &paths.journal,
        engine.last_sequence() + 1,
        config.watermark.clone(),
    );
    let started = Instant::now();
    let journal_epoch = replay_to(&mut follower, &mut engine, checkpoint, 64 * 1024)?;
    // Same sequence, other epoch: the journal was cut and rewritten after a failover, and the
    // store holds records this history does not have. (Not checked when the snapshot ends
    // exactly at the checkpoint: no record was replayed to read the epoch from.)
    let store_epoch = shard.with_store(|s| s.checkpoint_epoch(shard_id))?;
    if journal_epoch != 0 && store_epoch != 0 && journal_epoch != store_epoch {
        return Err(FlushError::Diverged {
            shard: shard_id,
            sequence: checkpoint,
            store_epoch,
            journal_epoch,
        });
    }
    tracing::info!(
        shard = shard_id,
        checkpoint,
        replay_ms = started.elapsed().as_millis() as u64,
        store = %config.target.describe(),
        "flusher resumed"
    );
    status.read_sequence.store(checkpoint, Ordering::Release);

    let mut effects = Effects::default();
    let mut rows = BatchRows::new(shard_id);
    let mut idle_ms = IDLE_POLL_MS_MIN;
    loop {
        if stop.load(Ordering::Acquire) {
            shard.durable_before_stop(&mut marks);
            return Ok(());
        }
        rows.clear();
        let mut epoch = 0;
        let read = apply_some(
            &mut follower,
            &mut engine,
            &mut effects,
            batch_records_max,
            Some(&mut rows),
            &mut epoch,
        )?;
        if read == 0 {
            // Caught up with the journal: nothing to gain by leaving a commit deferred.
            if marks.behind() {
                match shard.with_store(|s| s.make_durable(shard_id, marks.committed_sequence())) {
                    Ok(()) => {}
                    Err(FlushError::Stopped) => return Ok(()),
                    Err(error) => return Err(error),
                }
                marks.made_durable(Instant::now());
                status
                    .flushed_sequence
                    .store(marks.durable_sequence(), Ordering::Release);
            }
            if config.stop_at_end {
                status.finished.store(true, Ordering::Release);
                return Ok(());
            }
            if pause(stop, idle_ms) {
                return Ok(());
            }
            idle_ms = (idle_ms * 2).min(IDLE_POLL_MS_MAX);
            continue;
        }
        idle_ms = IDLE_POLL_MS_MIN;
        rows.finish(&engine);
        status
            .read_sequence
            .store(rows.last_sequence, Ordering::Release);
        let first_ns = rows
            .transactions
            .first()
            .map_or(rows.last_timestamp_ns, |t| t.created_at_ns);
        status
            .oldest_pending_ns
            .store(first_ns.max(1), Ordering::Release);
        let previous = rows.first_sequence - 1;
        let last = rows.last_sequence;
        let commit = marks.commit_for(read == batch_records_max, Instant::now());
        let written = shard.with_store(|store| match store.write_batch(&rows, previous, commit) {
            // The commit went through but its answer was lost: the checkpoint says so.
            Err(StoreError::CheckpointMoved {
                found: Some(found), ..
            }) if found == last => Ok(()),
            other => other,
        });
        match written {
            Ok(()) => {}
            Err(FlushError::Stopped) => {
                shard.durable_before_stop(&mut marks);
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        marks.committed(last, commit, Instant::now());
        status.committed_sequence.store(last, Ordering::Release);
        status
            .flushed_sequence
            .store(marks.durable_sequence(), Ordering::Release);
        status.oldest_pending_ns.store(0, Ordering::Release);
    }
}
