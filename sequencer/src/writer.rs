//! The shard writer: the one thread that owns a shard's engine and journal (LMAX's business
//! logic processor).
//!
//! Each turn of its loop: wait for work (client requests from the bounded ring, legs from other
//! shards, or a tick when idle with open holds), drain more up to `batch_commands_max`, give
//! every command its sequence number and the timestamp (the only clock read in the core),
//! journal the whole batch with one group commit, apply it, and only then release the replies
//! and send the cross-shard legs. A command is never applied before it is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};
use paycore_engine::codec::{decode_command, encode_command};
use paycore_engine::{Command, Effects, Engine, ShardMessage};
use paycore_journal::JournalError;
use paycore_journal::format::{Parsed, parse_record, record_bytes};
use paycore_snapshot::{DurableShard, Snapshotter};

use crate::disk::{DiskStats, DiskWatch, Health, default_reserve_bytes, is_full, now_ms};
use crate::events::{EventBatch, EventLog};
use crate::replication::ReplicationGate;
use crate::reply::{BatchReply, CommandResult};

/// Commands ahead of the one applied whose wallets are prefetched.
const PREFETCH_DISTANCE: usize = 4;

/// A query run on the writer thread between two batches. It reads the engine through a
/// [`ReadView`] and returns how to hand its answer over; the writer hands it over at once, or
/// parks it at the replication gate until the state it read has been released.
pub(crate) type QueryFn = Box<dyn FnOnce(&ReadView<'_>) -> Deliver + Send>;

/// Hands a query's answer to whoever asked (a channel send).
pub type Deliver = Box<dyn FnOnce() + Send>;

/// The engine as a query sees it, and whether what the query read is released.
///
/// With a standby, a group commit is applied before the standby holds it, so the engine can
/// show changes that a failover would erase. A query reports the change time of what it
/// read ([`saw`](Self::saw)); anything changed at or after the oldest group commit not yet
/// released makes its answer wait at the gate until that commit is released. Reads of state
/// that no waiting commit touched are answered at once, so reads keep flowing while writes
/// wait for a standby. (Batch timestamps never go back, so "changed before the oldest
/// unreleased batch's time" means "changed by a released batch"; equal times are treated as
/// unreleased.)
pub struct ReadView<'a> {
    engine: &'a Engine,
    /// Timestamp of the oldest group commit not yet released (`None`: all released).
    unreleased_since_ns: Option<u64>,
    unreleased_seen: std::cell::Cell<bool>,
}

impl std::fmt::Debug for ReadView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView")
            .field("unreleased_since_ns", &self.unreleased_since_ns)
            .field("unreleased_seen", &self.unreleased_seen.get())
            .finish()
    }
}

impl<'a> ReadView<'a> {
    pub(crate) fn new(engine: &'a Engine, unreleased_since_ns: Option<u64>) -> ReadView<'a> {
        ReadView {
            engine,
            unreleased_since_ns,
            unreleased_seen: std::cell::Cell::new(false),
        }
    }

    pub fn engine(&self) -> &'a Engine {
        self.engine
    }

    /// The answer shows state last changed at `changed_at_ns` (a wallet's `updated_at_ns`, an
    /// idempotency record's time).
    pub fn saw(&self, changed_at_ns: u64) {
        if self
            .unreleased_since_ns
            .is_some_and(|since| changed_at_ns >= since)
        {
            self.unreleased_seen.set(true);
        }
    }

    /// The answer shows state whose change time is not known (e.g. a hold that is gone): it
    /// waits whenever anything is unreleased.
    pub fn saw_unknown(&self) {
        if self.unreleased_since_ns.is_some() {
            self.unreleased_seen.set(true);
        }
    }

    /// True when the answer must wait for the release of the newest commit.
    pub fn shows_unreleased(&self) -> bool {
        self.unreleased_seen.get()
    }
}

pub(crate) enum Request {
    /// Client commands of this shard, each with its index in the client's batch.
    Submit {
        commands: Vec<(u32, Command)>,
        reply: Arc<BatchReply>,
    },
    Query(QueryFn),
    /// Standby: journal records received from the primary (the journal's framing), to be
    /// journaled as they are (sequence, epoch, timestamp) and applied. `done` gets the durable
    /// sequence, or why nothing was taken.
    Replicate {
        records: Vec<u8>,
        done: Box<dyn FnOnce(Result<u64, String>) + Send>,
    },
    /// Standby -> primary of `epoch`: take writes from now on. `done` gets the last sequence.
    Promote {
        epoch: u64,
        done: Box<dyn FnOnce(u64) + Send>,
    },
}

/// What a group commit lets out once the gate allows: replies, events, legs.
pub(crate) struct Release {
    pub last_sequence: u64,
    pub parts: Vec<Arc<BatchReply>>,
    pub events: Option<EventBatch>,
    pub messages: Vec<(u16, Command)>,
}

/// Lets a release out: events to subscribers, legs to their shards, replies to clients.
pub(crate) fn let_out(
    release: Release,
    events: &EventLog,
    peers: &[Sender<Command>],
    gate: &ReplicationGate,
) {
    if let Some(batch) = release.events {
        events.append(batch);
    }
    for (to, command) in release.messages {
        // Unbounded by design: the engine bounds transfers in flight, and a bounded channel
        // here could deadlock two shards sending to each other.
        if peers[usize::from(to)].send(command).is_err() {
            tracing::warn!(to, "peer shard stopped; leg stays pending in the journal");
        }
    }
    for part in release.parts {
        part.part_done();
    }
    gate.mark_released(release.last_sequence);
}

/// Counters the writer publishes for status and metrics.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub last_sequence: AtomicU64,
    pub durable_sequence: AtomicU64,
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    /// Commands in the largest group commit so far.
    pub batch_commands_max_seen: AtomicU64,
    /// Set when the journal refused a write: the shard answers `ShardUnavailable` from then on.
    pub poisoned: AtomicBool,
    /// Time of each group commit's journal write + sync (the fsync latency operators watch).
    pub commit_latency: LatencyHistogram,
    /// Sequence of the newest snapshot the replica wrote (0: none yet, or no snapshots).
    pub snapshot_sequence: Arc<AtomicU64>,
    /// Sequence of the last record the snapshot replica applied.
    pub replica_sequence: Arc<AtomicU64>,
    /// The engine's counters as of the last batch, published by the writer so that a status
    /// query never waits for the writer thread (operators ask exactly when it is stuck).
    pub engine: EngineCounters,
    /// True while client writes are refused as busy because group commits wait at the
    /// replication gate (the release queue is full): reads still flow.
    pub writes_held: AtomicBool,
    /// Healthy / read-only (disk full) / poisoned, since when and why; free space and reserve.
    pub disk: DiskStats,
}

/// Engine counters a shard writer publishes after each batch (see [`ShardStats::engine`]).
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub last_timestamp_ns: AtomicU64,
    pub wallets: AtomicU64,
    pub open_holds: AtomicU64,
    pub transfers_in_flight: AtomicU64,
    pub idempotency_entries: AtomicU64,
    pub idempotency_evicted_early: AtomicU64,
}

impl EngineCounters {
    pub(crate) fn publish(&self, engine: &Engine) {
        let store = |counter: &AtomicU64, value: u64| counter.store(value, Ordering::Relaxed);
        store(&self.last_timestamp_ns, engine.last_timestamp_ns());
        store(&self.wallets, engine.wallet_count() as u64);
        store(&self.open_holds, engine.open_hold_count() as u64);
        store(
            &self.transfers_in_flight,
            engine.transfers_in_flight() as u64,
        );
        store(
            &self.idempotency_entries,
            engine.idempotency_entries() as u64,
        );
        store(
            &self.idempotency_evicted_early,
            engine.idempotency_evicted_early(),
        );
    }
}

/// Upper bounds (µs) of the commit-latency buckets; the last bucket is everything above.
pub const COMMIT_LATENCY_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// A fixed-bucket latency histogram, lock-free (Prometheus-style cumulative on export).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Count per bucket of [`COMMIT_LATENCY_BOUNDS_US`], then the overflow bucket.
    pub buckets: [AtomicU64; 13],
    pub sum_us: AtomicU64,
    pub count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, micros: u64) {
        let bucket = COMMIT_LATENCY_BOUNDS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(COMMIT_LATENCY_BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct WriterConfig {
    pub batch_commands_max: usize,
    pub tick_interval: Duration,
}

/// Where a command of the batch came from, so its result can go back.
enum Origin {
    Client { reply: Arc<BatchReply>, index: u32 },
    Internal,
}

pub(crate) struct ShardWriter {
    pub shard: DurableShard,
    pub ring: Receiver<Request>,
    pub internal: Receiver<Command>,
    pub peers: Vec<Sender<Command>>,
    pub config: WriterConfig,
    pub stats: Arc<ShardStats>,
    pub snapshotter: Option<Snapshotter>,
    pub events: Arc<EventLog>,
    pub gate: Arc<ReplicationGate>,
    /// `Some` with a standby configured: releases wait at the gate on the releaser thread.
    pub releaser: Option<Sender<Release>>,
    /// False on a standby: client writes are refused, ticks and legs wait for promotion.
    pub primary: bool,
    /// Sequences other consumers still need (the Postgres flusher): retention keeps them.
    pub retention_floors: Arc<std::sync::Mutex<Vec<Arc<AtomicU64>>>>,
    /// Group commits handed to the releaser and not yet released: (last sequence, batch
    /// timestamp), oldest first. At most the release queue's size plus one turn's batch.
    pub unreleased: std::collections::VecDeque<(u64, u64)>,
    /// Set for a turn in which the release queue is full: client writes are answered busy.
    pub writes_held: bool,
    /// Free-space checks, the reserve, and size-triggered snapshots (see `disk.rs`).
    pub disk: DiskWatch,
    /// Where each command's encoding ends in the batch's payload buffer.
    pub payload_ends: Vec<usize>,
}

/// An estimate of a snapshot of the engine as it stands, on the generous side. Measured on a
/// 2-shard node under transfers: 16.8 MB and 23.3 MB snapshots at ~370 k and ~510 k records,
/// with about 270 k idempotency records kept (~85 bytes per idempotency record, which dominate).
fn snapshot_estimate_bytes(engine: &EngineCounters) -> u64 {
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    count(&engine.idempotency_entries)
        .saturating_mul(96)
        .saturating_add(count(&engine.wallets).saturating_mul(256))
        .saturating_add(count(&engine.open_holds).saturating_mul(256))
        .saturating_add(count(&engine.transfers_in_flight).saturating_mul(256))
}

/// Bytes as MiB with one decimal, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl ShardWriter {
    pub(crate) fn run(mut self) {
        let mut commands: Vec<Command> = Vec::new();
        let mut origins: Vec<Origin> = Vec::new();
        let mut parts: Vec<Arc<BatchReply>> = Vec::new();
        let mut queries: Vec<QueryFn> = Vec::new();
        let mut effects = Effects::default();
        let mut payload = Vec::with_capacity(4096);
        let mut open = true;
        self.stats.engine.publish(&self.shard.engine);
        while open {
            // Below the disk reserve the shard is read-only: no writes, like `writes_held`.
            self.check_disk();
            let disk_full = is_full(&self.stats.disk);
            // With the release queue full (a standby that does not acknowledge), this turn
            // takes no writes: client commands are answered busy, legs wait in their channel,
            // and queries go on being answered. The writer itself never blocks on the queue.
            self.writes_held = self.releaser.as_ref().is_some_and(|r| r.is_full());
            self.stats
                .writes_held
                .store(self.writes_held, Ordering::Relaxed);
            // Wait for the first piece of work. A standby takes only its ring (replicated
            // records, queries, promotion): ticks and legs belong to a primary.
            if self.writes_held || (disk_full && self.primary) {
                match self.ring.recv_timeout(self.config.tick_interval) {
                    Ok(request) => self.take(
                        request,
                        &mut commands,
                        &mut origins,
                        &mut parts,
                        &mut queries,
                    ),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => open = false,
                }
            } else if !self.primary {
                match self.ring.recv() {
                    Ok(request) => self.take(
                        request,
                        &mut commands,
                        &mut origins,
                        &mut parts,
                        &mut queries,
                    ),
                    Err(_) => open = false,
                }
            } else {
                select! {
                    recv(self.internal) -> leg => {
                        if let Ok(leg) = leg {
                            commands.push(leg);
                            origins.push(Origin::Internal);
                        }
                    }
                    recv(self.ring) -> request => match request {
                        Ok(request) => self.take(request, &mut commands, &mut origins, &mut parts, &mut queries),
                        Err(_) => open = false,
                    },
                    default(self.config.tick_interval) => {
                        if self.shard.engine.open_hold_count() > 0 {
                            commands.push(Command::Tick);
                            origins.push(Origin::Internal);
                        }
                    }
                }
            }
            // Drain what else is waiting, up to the batch limit: legs first (they settle money
            // already in flight), then client requests.
            while self.primary
                && !self.writes_held
                && !disk_full
                && commands.len() < self.config.batch_commands_max
            {
                match self.internal.try_recv() {
                    Ok(leg) => {
                        commands.push(leg);
                        origins.push(Origin::Internal);
                    }
                    Err(_) => break,
                }
            }
            while commands.len() < self.config.batch_commands_max {
                match self.ring.try_recv() {
                    Ok(request) => self.take(
                        request,
                        &mut commands,
                        &mut origins,
                        &mut parts,
                        &mut queries,
                    ),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.answer(&mut queries);
            if commands.is_empty() && parts.is_empty() {
                // A turn of queries only: nothing to release (queuing an empty release here
                // once filled the release queue behind a missing standby and hung the reads).
                commands.clear();
                origins.clear();
                continue;
            }
            let mut release = Release {
                last_sequence: self.shard.journal.durable_sequence(),
                parts: Vec::new(),
                events: None,
                messages: Vec::new(),
            };
            if !commands.is_empty() {
                if self.primary {
                    self.commit_and_apply(
                        &commands,
                        &origins,
                        &mut effects,
                        &mut payload,
                        &mut release,
                    );
                } else {
                    // A standby journals nothing of its own: a client command slipped in
                    // before a demotion is refused.
                    for origin in &origins {
                        if let Origin::Client { reply, index } = origin {
                            reply.set(*index, CommandResult::ShardUnavailable);
                        }
                    }
                }
            }
            release.parts.append(&mut parts);
            match &self.releaser {
                Some(releaser) if self.primary => {
                    if let Err(refused) = releaser.send(release) {
                        let_out(refused.0, &self.events, &self.peers, &self.gate);
                    }
                }
                _ => let_out(release, &self.events, &self.peers, &self.gate),
            }
            commands.clear();
            origins.clear();
            self.stats.engine.publish(&self.shard.engine);
            self.retire();
        }
        // Graceful end: the last batch was committed above; legs still queued for this shard
        // stay unapplied (they are in the sender's journal, see docs/design.md §14).
        if let Some(snapshotter) = self.snapshotter.take()
            && let Err(error) = snapshotter.stop()
        {
            tracing::warn!(%error, "snapshotter stopped with an error");
        }
    }

    /// Runs the turn's queries against the engine as it stands; an answer that shows state
    /// not yet released waits at the gate for the newest commit's release (see [`ReadView`]).
    fn answer(&mut self, queries: &mut Vec<QueryFn>) {
        if queries.is_empty() {
            return;
        }
        let released = self.gate.released();
        while self
            .unreleased
            .front()
            .is_some_and(|(last, _)| *last <= released)
        {
            self.unreleased.pop_front();
        }
        let since = self.unreleased.front().map(|(_, timestamp)| *timestamp);
        let last_sequence = self.shard.engine.last_sequence();
        for query in queries.drain(..) {
            let view = ReadView::new(&self.shard.engine, since);
            let deliver = query(&view);
            if view.shows_unreleased() {
                debug_assert!(last_sequence > released);
                self.gate.park(last_sequence, deliver);
            } else {
                deliver();
            }
        }
    }

    /// Archives journal segments every consumer is done with: covered by a snapshot, held by
    /// the standby, flushed to the store.
    fn retire(&mut self) {
        let Some(snapshotter) = &self.snapshotter else {
            return;
        };
        // Read-only for lack of space: covered segments are deleted, not moved to the archive
        // (on the same disk, archiving frees nothing).
        let archive = !is_full(&self.stats.disk);
        let mut covered = snapshotter.latest.load(Ordering::Acquire);
        if let Some(floor) = self.gate.retention_floor() {
            covered = covered.min(floor);
        }
        for floor in self
            .retention_floors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            covered = covered.min(floor.load(Ordering::Acquire));
        }
        if covered == 0 {
            return;
        }
        match self.shard.journal.retire_through(covered, archive) {
            Ok(retired) if !retired.is_empty() && !archive => tracing::warn!(
                shard = self.shard.engine.config().shard,
                segments = ?retired,
                "disk full: journal segments covered by a snapshot deleted instead of archived"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(shard = self.shard.engine.config().shard, %error, "journal retention failed")
            }
        }
    }

    /// Every `check_interval_ms`: asks for a snapshot when the journal grew past its size
    /// threshold, reads the free space, and turns the shard read-only below the reserve or
    /// writable again when there is room and the next segment is ready.
    fn check_disk(&mut self) {
        let interval = Duration::from_millis(self.disk.policy.check_interval_ms);
        if self.disk.last_check.elapsed() < interval {
            return;
        }
        self.disk.last_check = std::time::Instant::now();
        self.snapshot_by_size();
        // Retention also runs here, not only after a batch: a read-only shard commits no
        // batches, and the snapshot it asked for must free covered segments.
        self.retire();
        if self.stats.poisoned.load(Ordering::Acquire) {
            return;
        }
        let space = match self.shard.journal.space() {
            Ok(Some(space)) => space,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(shard = self.shard.engine.config().shard, %error, "cannot read the journal disk's free space");
                return;
            }
        };
        let disk = &self.stats.disk;
        disk.free_bytes.store(space.free_bytes, Ordering::Relaxed);
        disk.total_bytes.store(space.total_bytes, Ordering::Relaxed);
        let written = match &self.snapshotter {
            Some(s) if s.latest_bytes.load(Ordering::Acquire) > 0 => {
                s.latest_bytes.load(Ordering::Acquire)
            }
            _ => self.disk.snapshot_bytes,
        };
        // The next snapshot is as large as the state now, not as the last one was: without
        // room for it a read-only shard could never snapshot, retire, and resume.
        let snapshot_bytes = written.max(snapshot_estimate_bytes(&self.stats.engine));
        let segment_bytes = self.shard.journal.config().segment_bytes;
        let reserve = self
            .disk
            .policy
            .reserve_bytes
            .unwrap_or_else(|| default_reserve_bytes(segment_bytes, snapshot_bytes));
        disk.reserve_bytes.store(reserve, Ordering::Relaxed);
        if !self.primary {
            // A standby cannot refuse its primary's records; it reports its space only.
            return;
        }
        let full = is_full(disk);
        // Say so before it happens: once below twice the reserve (again after it recovered
        // to three times).
        let low = space.free_bytes < reserve.saturating_mul(2);
        if low && !self.disk.warned_low {
            tracing::warn!(
                shard = self.shard.engine.config().shard,
                free = %mib(space.free_bytes),
                reserve = %mib(reserve),
                "journal disk nearly full: the shard turns read-only below the reserve"
            );
            self.disk.warned_low = true;
        } else if space.free_bytes > reserve.saturating_mul(3) {
            self.disk.warned_low = false;
        }
        if space.free_bytes < reserve {
            if !full {
                self.enter_read_only(format!(
                    "{} free on the journal's disk, below the reserve of {}",
                    mib(space.free_bytes),
                    mib(reserve)
                ));
            }
            return;
        }
        if full {
            // Room again: resume once the next segment is ready (its preparation may have
            // failed while the disk was full).
            match self.shard.journal.ensure_room(segment_bytes) {
                Ok(()) => self.leave_read_only(),
                Err(error) => {
                    tracing::debug!(shard = self.shard.engine.config().shard, %error, "still no room for the next segment")
                }
            }
        }
    }

    /// Asks the replica for a snapshot once the journal written since the last one passes
    /// the size threshold (retention can only retire what a snapshot covers).
    fn snapshot_by_size(&mut self) {
        let Some(snapshotter) = &self.snapshotter else {
            return;
        };
        let latest = snapshotter.latest.load(Ordering::Acquire);
        if latest != self.disk.snapshot_seen {
            self.disk.snapshot_seen = latest;
            self.disk.journal_bytes_since_snapshot = 0;
            self.disk.snapshot_asked = false;
        }
        let every = self.disk.policy.snapshot_every_journal_bytes;
        if every > 0 && !self.disk.snapshot_asked && self.disk.journal_bytes_since_snapshot >= every
        {
            snapshotter.requested.store(true, Ordering::Release);
            self.disk.snapshot_asked = true;
            self.stats
                .disk
                .snapshots_requested
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                shard = self.shard.engine.config().shard,
                journal_bytes = self.disk.journal_bytes_since_snapshot,
                "snapshot asked for: the journal grew past its size threshold"
            );
        }
    }

    /// Stops taking writes (`disk_full`) and asks for a snapshot so that retention can free
    /// covered segments.
    fn enter_read_only(&mut self, reason: String) {
        let shard = self.shard.engine.config().shard;
        tracing::error!(shard, %reason, "disk nearly full: shard read-only, writes answered disk_full until there is room");
        let disk = &self.stats.disk;
        disk.set_health(Health::ReadOnly {
            since_ms: now_ms(),
            reason,
        });
        disk.full.store(true, Ordering::Release);
        disk.read_only_episodes.fetch_add(1, Ordering::Relaxed);
        if let Some(snapshotter) = &self.snapshotter {
            snapshotter.requested.store(true, Ordering::Release);
            disk.snapshots_requested.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave_read_only(&mut self) {
        let disk = &self.stats.disk;
        let since = disk.health().since_ms().unwrap_or_else(now_ms);
        disk.set_health(Health::Healthy);
        disk.full.store(false, Ordering::Release);
        tracing::warn!(
            shard = self.shard.engine.config().shard,
            read_only_ms = now_ms().saturating_sub(since),
            "disk has room again: shard takes writes"
        );
    }

    /// A journal write failed: the shard answers `shard_unavailable` until a restart.
    fn poison(&self, reason: String) {
        let shard = self.shard.engine.config().shard;
        tracing::error!(shard, %reason, "journal write failed; shard unavailable");
        self.stats.disk.set_health(Health::Poisoned {
            since_ms: now_ms(),
            reason,
        });
        self.stats.disk.full.store(false, Ordering::Release);
        self.stats.poisoned.store(true, Ordering::Release);
    }

    /// Standby: journals the primary's records as they are, then applies them.
    fn replicate(&mut self, records: &[u8], effects: &mut Effects) -> Result<u64, String> {
        let shard = self.shard.engine.config().shard;
        let mut parsed = Vec::new();
        let mut offset = 0;
        let mut expected = self.shard.journal.next_sequence();
        while offset < records.len() {
            match parse_record(&records[offset..]) {
                Parsed::Record(record) => {
                    if record.sequence != expected {
                        return Err(format!(
                            "shard {shard}: received record {} where {expected} was expected",
                            record.sequence
                        ));
                    }
                    let command = decode_command(record.payload).map_err(|e| {
                        format!(
                            "shard {shard}: record {} does not decode: {e}",
                            record.sequence
                        )
                    })?;
                    parsed.push((
                        record.sequence,
                        record.epoch,
                        record.timestamp_ns,
                        record.payload,
                        command,
                    ));
                    expected += 1;
                    offset += record.bytes;
                }
                Parsed::End => {
                    return Err(format!(
                        "shard {shard}: zero bytes inside received records at offset {offset}"
                    ));
                }
                Parsed::Invalid { reason, .. } => {
                    return Err(format!(
                        "shard {shard}: received record at offset {offset}: {reason}"
                    ));
                }
            }
        }
        if parsed.is_empty() {
            return Ok(self.shard.journal.durable_sequence());
        }
        for (sequence, epoch, timestamp_ns, payload, _) in &parsed {
            if let Err(error) =
                self.shard
                    .journal
                    .append_with_epoch(*sequence, *epoch, *timestamp_ns, payload)
            {
                self.poison(format!("journal write failed: {error}"));
                return Err(format!("shard {shard}: journal: {error}"));
            }
        }
        let durable = match self.shard.journal.commit() {
            Ok(durable) => durable,
            Err(error) => {
                self.poison(format!("journal write failed: {error}"));
                return Err(format!("shard {shard}: journal: {error}"));
            }
        };
        let first = parsed[0].0;
        let mut batch_events = Vec::new();
        let mut last_timestamp = 0;
        for (sequence, _, timestamp_ns, _, command) in &parsed {
            let before = effects.events.len();
            self.shard
                .engine
                .apply(*sequence, *timestamp_ns, command, effects);
            batch_events.extend(effects.events[before..].iter().map(|e| (*sequence, *e)));
            last_timestamp = *timestamp_ns;
        }
        // Legs are the primary's business: its journals carry them to the other shards.
        effects.clear();
        self.events.append(EventBatch {
            first_sequence: first,
            last_sequence: durable,
            timestamp_ns: last_timestamp,
            events: batch_events,
        });
        self.gate.mark_replicated(durable);
        self.stats.last_sequence.store(durable, Ordering::Release);
        self.stats
            .durable_sequence
            .store(durable, Ordering::Release);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(parsed.len() as u64, Ordering::Relaxed);
        Ok(durable)
    }

    /// Standby -> primary of `epoch`: records from now on carry the new epoch, and legs
    /// debited here and not settled are sent (again) to their shards.
    fn promote(&mut self, epoch: u64) -> u64 {
        self.primary = true;
        self.shard.journal.set_epoch(epoch);
        for leg in self.shard.engine.pending_credit_legs() {
            let to = usize::from(leg.to.shard());
            if let Some(peer) = self.peers.get(to) {
                let _ = peer.send(Command::CreditLeg(leg));
            }
        }
        self.shard.engine.last_sequence()
    }

    fn take(
        &mut self,
        request: Request,
        commands: &mut Vec<Command>,
        origins: &mut Vec<Origin>,
        parts: &mut Vec<Arc<BatchReply>>,
        queries: &mut Vec<QueryFn>,
    ) {
        match request {
            Request::Submit {
                commands: submitted,
                reply,
            } if self.primary && is_full(&self.stats.disk) => {
                let refused = submitted.len() as u64;
                for (index, _) in submitted {
                    reply.set(index, CommandResult::DiskFull);
                }
                self.stats
                    .disk
                    .refused_commands
                    .fetch_add(refused, Ordering::Relaxed);
                reply.part_done();
            }
            Request::Submit {
                commands: submitted,
                reply,
            } if self.writes_held => {
                for (index, _) in submitted {
                    reply.set(index, CommandResult::Busy);
                }
                reply.part_done();
            }
            Request::Submit {
                commands: submitted,
                reply,
            } => {
                for (index, command) in submitted {
                    commands.push(command);
                    origins.push(Origin::Client {
                        reply: reply.clone(),
                        index,
                    });
                }
                parts.push(reply);
            }
            Request::Query(query) => queries.push(query),
            Request::Replicate { records, done } => {
                if self.primary {
                    done(Err(
                        "this node is a primary: it takes no replicated records".into(),
                    ));
                    return;
                }
                let mut effects = Effects::default();
                done(self.replicate(&records, &mut effects));
            }
            Request::Promote { epoch, done } => done(self.promote(epoch)),
        }
    }

    /// A batch refused for lack of disk: clients get `disk_full`; legs go back to this shard's
    /// own channel (they settle money in flight and must be journaled later, not dropped); a
    /// tick is simply not taken.
    fn refuse_for_disk(&self, commands: &[Command], origins: &[Origin]) {
        let own = usize::from(self.shard.engine.config().shard);
        let mut refused = 0u64;
        for (command, origin) in commands.iter().zip(origins) {
            match origin {
                Origin::Client { reply, index } => {
                    reply.set(*index, CommandResult::DiskFull);
                    refused += 1;
                }
                Origin::Internal if !matches!(command, Command::Tick) => {
                    let _ = self.peers[own].send(command.clone());
                }
                Origin::Internal => {}
            }
        }
        self.stats
            .disk
            .refused_commands
            .fetch_add(refused, Ordering::Relaxed);
    }

    fn commit_and_apply(
        &mut self,
        commands: &[Command],
        origins: &[Origin],
        effects: &mut Effects,
        payload: &mut Vec<u8>,
        release: &mut Release,
    ) {
        let answer_all = |result: CommandResult| {
            for origin in origins {
                if let Origin::Client { reply, index } = origin {
                    reply.set(*index, result);
                }
            }
        };
        if self.stats.poisoned.load(Ordering::Acquire) {
            answer_all(CommandResult::ShardUnavailable);
            return;
        }
        // Encode the batch first: its journal bytes say whether it needs a new segment, and a
        // segment the disk refuses turns the shard read-only before anything is appended.
        payload.clear();
        self.payload_ends.clear();
        let mut batch_bytes = 0u64;
        for command in commands {
            let start = payload.len();
            encode_command(command, payload);
            self.payload_ends.push(payload.len());
            batch_bytes += record_bytes(payload.len() - start) as u64;
        }
        match self.shard.journal.ensure_room(batch_bytes) {
            Ok(()) => {}
            Err(JournalError::NoRoom { path, source }) => {
                self.enter_read_only(format!(
                    "the next journal segment cannot be prepared in {}: {source}",
                    path.display()
                ));
                self.refuse_for_disk(commands, origins);
                return;
            }
            Err(error) => {
                self.poison(format!("journal write failed: {error}"));
                answer_all(CommandResult::ShardUnavailable);
                return;
            }
        }
        // Prepare: sequence numbers and one timestamp for the batch (time never goes back).
        let timestamp_ns = now_ns().max(self.shard.engine.last_timestamp_ns());
        let first = self.shard.journal.next_sequence();
        let mut journaled = Ok(());
        let mut start = 0;
        for (i, end) in self.payload_ends.iter().enumerate() {
            journaled =
                self.shard
                    .journal
                    .append(first + i as u64, timestamp_ns, &payload[start..*end]);
            start = *end;
            if journaled.is_err() {
                break;
            }
        }
        // Measuring the sync is the node's business, not the engine's: no determinism concern.
        let sync_started = std::time::Instant::now();
        let journaled = journaled.and_then(|()| self.shard.journal.commit().map(|_| ()));
        self.stats
            .commit_latency
            .record(sync_started.elapsed().as_micros() as u64);
        if let Err(error) = journaled {
            self.poison(format!("journal write failed: {error}"));
            answer_all(CommandResult::ShardUnavailable);
            return;
        }
        self.disk.journal_bytes_since_snapshot += batch_bytes;
        // Apply: the batch is durable; now it must all apply.
        let mut batch_events: Vec<(u64, paycore_engine::Event)> = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            if let Some(ahead) = commands.get(i + PREFETCH_DISTANCE) {
                self.shard.engine.prefetch(ahead);
            }
            let sequence = first + i as u64;
            let events_before = effects.events.len();
            let outcome = self
                .shard
                .engine
                .apply(sequence, timestamp_ns, command, effects);
            batch_events.extend(
                effects.events[events_before..]
                    .iter()
                    .map(|e| (sequence, *e)),
            );
            if let Origin::Client { reply, index } = &origins[i] {
                reply.set(*index, CommandResult::Outcome(outcome));
            }
        }
        release.events = Some(EventBatch {
            first_sequence: first,
            last_sequence: first + commands.len() as u64 - 1,
            timestamp_ns,
            events: batch_events,
        });
        for message in effects.messages.drain(..) {
            release.messages.push(match message {
                ShardMessage::Credit { to_shard, leg } => (to_shard, Command::CreditLeg(leg)),
                ShardMessage::Settle { to_shard, leg } => (to_shard, Command::SettleLeg(leg)),
            });
        }
        effects.clear();
        let last = first + commands.len() as u64 - 1;
        release.last_sequence = last;
        if self.releaser.is_some() {
            let released = self.gate.released();
            while self.unreleased.front().is_some_and(|(l, _)| *l <= released) {
                self.unreleased.pop_front();
            }
            self.unreleased.push_back((last, timestamp_ns));
        }
        self.gate.committed(last);
        self.stats.last_sequence.store(last, Ordering::Release);
        self.stats
            .durable_sequence
            .store(self.shard.journal.durable_sequence(), Ordering::Release);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        self.stats
            .batch_commands_max_seen
            .fetch_max(commands.len() as u64, Ordering::Relaxed);
    }
}
