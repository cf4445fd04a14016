//! # paycore-sequencer: one single-writer thread per shard
//!
//! The LMAX business-logic processor of paycore. [`Sequencer::start`] recovers every shard of a
//! data folder (snapshot + journal, `paycore_snapshot::open_shard`), then gives each its own
//! writer thread that owns the shard's engine and journal. Clients hand commands over through
//! a bounded ring per shard; the writer drains a batch, assigns sequence numbers and the
//! timestamp, journals the batch with one group commit, applies it, and only then releases the
//! replies and the cross-shard legs (see `writer.rs`).
//!
//! - Backpressure: a full ring answers [`CommandResult::Busy`] at once (retry with the same
//!   idempotency key); memory stays bounded by `ring_requests_max` requests per shard and the
//!   engine's limit on transfers in flight.
//! - Cross-shard transfers: the debit leg's `CreditLeg` travels to the destination shard's
//!   internal channel and is journaled there; its `SettleLeg` comes back the same way.
//! - Snapshots: each shard has a replica snapshotter; journal segments it covers are archived.
//!
//! - Restarts: legs debited and not settled are sent again at start; a destination that applied
//!   one already answers with its recorded decision, so every transfer settles exactly once.

#![forbid(unsafe_code)]

mod disk;
pub mod event_archive;
mod events;
mod replication;
mod reply;
mod routing;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use paycore_engine::{Command, Engine, EngineConfig, LINKED_OPS_MAX, Op, Outcome, Reject};
use paycore_journal::{JournalConfig, MmapStorage, RecoveryOptions};
use paycore_snapshot::{
    DurableShard, Replica, ShardError, SnapshotPolicy, Snapshotter, open_shard,
};

pub use disk::{DiskPolicy, DiskStats, Health, default_reserve_bytes, journal_disk_use};
pub use events::{EventBatch, EventLog, Read};
pub use replication::{ReplicationGate, ReplicationMode};
pub use reply::{CommandResult, OnDone};
pub use routing::{Route, route};
pub use writer::{
    COMMIT_LATENCY_BOUNDS_US, Deliver, EngineCounters, LatencyHistogram, ReadView, ShardStats,
};

use reply::{BatchReply, DISCARD};
use writer::{Release, Request, ShardWriter, WriterConfig, let_out};

/// Group commits waiting at the replication gate per shard before the writer itself waits.
const RELEASES_WAITING_MAX: usize = 4096;

/// Everything a node's shards need to start.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    pub data_dir: PathBuf,
    pub shard_count: u16,
    /// Client requests (batch parts) waiting per shard before `Busy`.
    pub ring_requests_max: usize,
    /// Most commands in one group commit.
    pub batch_commands_max: usize,
    /// When idle with open holds, a `Tick` is journaled this often so holds expire on time.
    pub tick_interval_ms: u64,
    /// Template: `shard` is set per shard.
    pub journal: JournalConfig,
    /// Template: `shard` and `shard_count` are set per shard.
    pub engine: EngineConfig,
    /// `None`: no snapshots (tests, benchmarks).
    pub snapshots: Option<SnapshotPolicy>,
    pub recovery: RecoveryOptions,
    /// Events kept in memory per shard for subscribers (older positions must resync).
    pub events_kept_max: u64,
    /// How replies wait for a standby (see [`ReplicationGate`]).
    pub replication: ReplicationMode,
    /// Start as a standby: no client writes until [`Sequencer::promote`].
    pub standby: bool,
    /// Disk head-room: the reserve below which a shard turns read-only (`disk_full`), and
    /// snapshots by journal size.
    pub disk: DiskPolicy,
}

impl SequencerConfig {
    pub fn new(data_dir: PathBuf, shard_count: u16) -> SequencerConfig {
        SequencerConfig {
            data_dir,
            shard_count,
            ring_requests_max: 1024,
            batch_commands_max: 8192,
            tick_interval_ms: 100,
            journal: JournalConfig::default(),
            engine: EngineConfig::default(),
            snapshots: Some(SnapshotPolicy::default()),
            recovery: RecoveryOptions::default(),
            events_kept_max: 1 << 20,
            replication: ReplicationMode::Off,
            standby: false,
            disk: DiskPolicy::default(),
        }
    }
}

/// Handle to the running shards.
#[derive(Debug)]
pub struct Sequencer {
    rings: Vec<Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<ShardStats>>,
    events: Vec<Arc<EventLog>>,
    gates: Vec<Arc<ReplicationGate>>,
    watermarks: Vec<Arc<std::sync::atomic::AtomicU64>>,
    journal_dirs: Vec<PathBuf>,
    retention_floors: Vec<Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicU64>>>>>,
    releasers: Vec<JoinHandle<()>>,
    release_stop: Arc<std::sync::atomic::AtomicBool>,
    /// False while a standby: client writes are refused at once.
    accepting_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Per shard, the flag that asks its snapshot replica for a snapshot now (`None`: no
    /// snapshots).
    snapshot_requests: Vec<Option<Arc<std::sync::atomic::AtomicBool>>>,
    shard_count: u16,
    ring_capacity: usize,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Submit { commands, .. } => write!(f, "Submit({} commands)", commands.len()),
            Request::Query(_) => f.write_str("Query"),
            Request::Replicate { records, .. } => write!(f, "Replicate({} bytes)", records.len()),
            Request::Promote { epoch, .. } => write!(f, "Promote({epoch})"),
        }
    }
}

/// A recovered shard, and the engine its snapshot replica starts from (when snapshots are on).
type Recovered = (DurableShard, Option<Engine>);

/// The shard's disk policy with the size threshold fitted to its disk (at most a quarter of the
/// free space, at least a segment); with `require_writable`, refuses a shard already below the
/// reserve (otherwise it starts read-only and its first check says why).
fn disk_policy_at_start(
    config: &SequencerConfig,
    durable: &DurableShard,
) -> Result<DiskPolicy, ShardError> {
    let mut policy = config.disk;
    let segment_bytes = config.journal.segment_bytes;
    let space =
        paycore_journal::disk_space(&durable.paths.journal).map_err(|source| ShardError::Io {
            path: durable.paths.journal.clone(),
            source,
        })?;
    if policy.snapshot_every_journal_bytes > 0 {
        policy.snapshot_every_journal_bytes = policy
            .snapshot_every_journal_bytes
            .min(space.free_bytes / 4)
            .max(segment_bytes);
    }
    let reserve = policy.reserve_bytes.unwrap_or_else(|| {
        default_reserve_bytes(
            segment_bytes,
            disk::newest_snapshot_bytes(&durable.paths.snapshots),
        )
    });
    if space.free_bytes < reserve {
        let shard = durable.engine.config().shard;
        let reason = format!(
            "{} bytes free on the journal's disk, below the reserve of {reserve}",
            space.free_bytes
        );
        if policy.require_writable {
            return Err(ShardError::Io {
                path: durable.paths.journal.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "shard {shard} cannot take writes ({reason}) and writability is required"
                    ),
                ),
            });
        }
        tracing::error!(shard, %reason, "shard starts read-only: writes answered disk_full until there is room");
    }
    Ok(policy)
}

/// Recovers every shard (snapshot load + journal replay) and copies its engine for the snapshot
/// replica, as many shards at once as there are cores: shards share nothing, so a node's
/// restart takes about as long as its largest shard, not the sum of them. Returns them in shard
/// order, or the first shard's error.
fn recover_shards(config: &SequencerConfig) -> Result<Vec<Recovered>, ShardError> {
    let open = |shard: u16| -> Result<Recovered, ShardError> {
        let engine = EngineConfig {
            shard,
            shard_count: config.shard_count,
            ..config.engine.clone()
        };
        let journal = JournalConfig {
            shard,
            ..config.journal.clone()
        };
        let durable = open_shard(&config.data_dir, engine, journal, config.recovery)?;
        let replica = config.snapshots.map(|_| {
            // A clone keeps only the room it uses: give the replica the reserve too, so its
            // tables do not grow (and burn a core rehashing) mid-load.
            let mut engine = durable.engine.clone();
            engine.reserve_as_configured();
            engine
        });
        Ok((durable, replica))
    };
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards: Vec<u16> = (0..config.shard_count).collect();
    let mut opened = Vec::with_capacity(shards.len());
    for group in shards.chunks(at_once) {
        let results: Vec<Result<Recovered, ShardError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|&shard| {
                    std::thread::Builder::new()
                        .name(format!("recover-{shard}"))
                        .spawn_scoped(scope, move || open(shard))
                })
                .collect();
            handles
                .into_iter()
                .zip(group)
                .map(|(handle, &shard)| match handle {
                    Ok(handle) => handle.join().unwrap_or_else(|panic| {
                        std::panic::resume_unwind(panic);
                    }),
                    // No thread to be had: recover this one here.
                    Err(_) => open(shard),
                })
                .collect()
        });
        for result in results {
            opened.push(result?);
        }
    }
    Ok(opened)
}

impl Sequencer {
    /// Recovers every shard (in parallel) and starts its writer thread.
    pub fn start(config: SequencerConfig) -> Result<Sequencer, ShardError> {
        assert!(
            config.shard_count > 0 && config.ring_requests_max > 0 && config.batch_commands_max > 0
        );
        let count = usize::from(config.shard_count);
        let (internal_senders, internal_receivers): (Vec<_>, Vec<_>) = (0..count)
            .map(|_| crossbeam_channel::unbounded::<Command>())
            .unzip();
        let opened = recover_shards(&config)?;
        let mut rings = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let mut stats = Vec::with_capacity(count);
        let mut events = Vec::with_capacity(count);
        let mut gates = Vec::with_capacity(count);
        let mut watermarks = Vec::with_capacity(count);
        let mut journal_dirs = Vec::with_capacity(count);
        let mut retention_floors = Vec::with_capacity(count);
        let mut releasers = Vec::new();
        let mut snapshot_requests = Vec::with_capacity(count);
        let release_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Legs debited before the last stop and not settled: send them again. A destination
        // that already applied one answers with its original decision (engine `decisions`).
        for (durable, _) in opened.iter().filter(|_| !config.standby) {
            for leg in durable.engine.pending_credit_legs() {
                let to = usize::from(leg.to.shard());
                if let Some(sender) = internal_senders.get(to) {
                    let _ = sender.send(Command::CreditLeg(leg));
                }
            }
        }
        for ((durable, replica_engine), internal) in opened.into_iter().zip(internal_receivers) {
            let shard = durable.engine.config().shard;
            let disk = disk_policy_at_start(&config, &durable)?;
            let snapshotter = match (config.snapshots, replica_engine) {
                (Some(policy), Some(replica_engine)) => {
                    let storage =
                        MmapStorage::open_dir(&durable.paths.journal).map_err(|source| {
                            ShardError::Io {
                                path: durable.paths.journal.clone(),
                                source,
                            }
                        })?;
                    let replica = Replica::new(
                        replica_engine,
                        storage,
                        durable.journal.watermark(),
                        durable.paths.snapshots.clone(),
                    );
                    Some(Snapshotter::spawn(replica, policy))
                }
                _ => None,
            };
            snapshot_requests.push(snapshotter.as_ref().map(|s| s.requested.clone()));
            let (ring, ring_receiver) = crossbeam_channel::bounded(config.ring_requests_max);
            let mut shard_stats = ShardStats::default();
            if let Some(snapshotter) = &snapshotter {
                shard_stats.snapshot_sequence = snapshotter.latest.clone();
                shard_stats.replica_sequence = snapshotter.applied.clone();
            }
            let shard_stats = Arc::new(shard_stats);
            let shard_events = Arc::new(EventLog::with_archive(
                durable.engine.last_sequence() + 1,
                config.events_kept_max,
                &durable.paths.journal.with_file_name("events"),
                Some(&durable.paths.journal),
            ));
            shard_stats.last_sequence.store(
                durable.engine.last_sequence(),
                std::sync::atomic::Ordering::Release,
            );
            let gate = Arc::new(ReplicationGate::new(config.replication, 0));
            gate.mark_replicated(durable.engine.last_sequence());
            let floors = Arc::new(std::sync::Mutex::new(Vec::new()));
            watermarks.push(durable.journal.watermark());
            journal_dirs.push(durable.paths.journal.clone());
            let releaser = if config.replication == ReplicationMode::Off {
                None
            } else {
                let (sender, receiver) =
                    crossbeam_channel::bounded::<Release>(RELEASES_WAITING_MAX);
                let (gate, events, peers, stop) = (
                    gate.clone(),
                    shard_events.clone(),
                    internal_senders.clone(),
                    release_stop.clone(),
                );
                let thread = std::thread::Builder::new()
                    .name(format!("release-{shard}"))
                    .spawn(move || {
                        let mut legs: std::collections::VecDeque<(u64, Vec<(u16, Command)>)> =
                            std::collections::VecDeque::new();
                        loop {
                            while let Some((sequence, _)) = legs.front()
                                && gate.allows_legs(*sequence)
                            {
                                let (_, messages) = legs.pop_front().expect("front exists");
                                for (to, command) in messages {
                                    // Unbounded by design (see writer.rs).
                                    let _ = peers[usize::from(to)].send(command);
                                }
                            }
                            let mut release = match receiver.recv_timeout(Duration::from_millis(2))
                            {
                                Ok(release) => release,
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                            };
                            gate.wait_for(release.last_sequence, &stop);
                            if gate.allows(release.last_sequence) {
                                if !release.messages.is_empty() {
                                    legs.push_back((
                                        release.last_sequence,
                                        std::mem::take(&mut release.messages),
                                    ));
                                }
                                let_out(release, &events, &peers, &gate);
                            }
                            // Else stopping: results not on the standby are never released;
                            // their clients see the request fail and retry with the same keys.
                            // Legs not sent stay pending in the journal and are resent at start.
                        }
                    })
                    .map_err(|source| ShardError::Io {
                        path: config.data_dir.clone(),
                        source,
                    })?;
                releasers.push(thread);
                Some(sender)
            };
            let durable_snapshots_dir = durable.paths.snapshots.clone();
            let writer = ShardWriter {
                shard: durable,
                ring: ring_receiver,
                internal,
                peers: internal_senders.clone(),
                config: WriterConfig {
                    batch_commands_max: config.batch_commands_max,
                    tick_interval: Duration::from_millis(config.tick_interval_ms.max(1)),
                },
                stats: shard_stats.clone(),
                snapshotter,
                events: shard_events.clone(),
                gate: gate.clone(),
                releaser,
                primary: !config.standby,
                retention_floors: floors.clone(),
                unreleased: std::collections::VecDeque::new(),
                writes_held: false,
                disk: disk::DiskWatch::new(
                    disk,
                    disk::newest_snapshot_bytes(&durable_snapshots_dir),
                ),
                payload_ends: Vec::with_capacity(config.batch_commands_max),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shard-{shard}"))
                .spawn(move || writer.run())
                .map_err(|source| ShardError::Io {
                    path: config.data_dir.clone(),
                    source,
                })?;
            rings.push(ring);
            threads.push(thread);
            stats.push(shard_stats);
            events.push(shard_events);
            gates.push(gate);
            retention_floors.push(floors);
        }
        Ok(Sequencer {
            rings,
            threads,
            stats,
            events,
            gates,
            watermarks,
            journal_dirs,
            retention_floors,
            releasers,
            release_stop,
            accepting_writes: Arc::new(std::sync::atomic::AtomicBool::new(!config.standby)),
            snapshot_requests,
            shard_count: config.shard_count,
            ring_capacity: config.ring_requests_max,
        })
    }

    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The shard's replication gate (standby acknowledgements, release watermark).
    pub fn gate(&self, shard: u16) -> &Arc<ReplicationGate> {
        &self.gates[usize::from(shard)]
    }

    /// The shard journal's durable sequence, as its writer publishes it.
    pub fn durable_watermark(&self, shard: u16) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.watermarks[usize::from(shard)]
    }

    /// The folder of the shard's journal segments (for readers: replication, the flusher).
    pub fn journal_dir(&self, shard: u16) -> &std::path::Path {
        &self.journal_dirs[usize::from(shard)]
    }

    /// Journal retention on `shard` keeps every record after `floor` (a consumer's position,
    /// e.g. the Postgres flusher's).
    pub fn add_retention_floor(&self, shard: u16, floor: Arc<std::sync::atomic::AtomicU64>) {
        self.retention_floors[usize::from(shard)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(floor);
    }

    /// Asks `shard`'s snapshot replica for a snapshot as soon as it has caught up; false when
    /// this node takes no snapshots. [`ShardStats::snapshot_sequence`] says when it is there.
    pub fn request_snapshot(&self, shard: u16) -> bool {
        match self.snapshot_requests.get(usize::from(shard)) {
            Some(Some(requested)) => {
                requested.store(true, std::sync::atomic::Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// True on a primary; false on a standby (client writes are refused).
    pub fn is_primary(&self) -> bool {
        self.accepting_writes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Standby: hands records received from the primary to `shard`'s writer (waiting up to
    /// `timeout` for room in its ring); the receiver yields the durable sequence after them.
    pub fn replicate(
        &self,
        shard: u16,
        records: Vec<u8>,
        timeout: Duration,
    ) -> Receiver<Result<u64, String>> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let answer = sender.clone();
        let request = Request::Replicate {
            records,
            done: Box::new(move |result| {
                let _ = answer.send(result);
            }),
        };
        match self.rings.get(usize::from(shard)) {
            Some(ring) => {
                if ring.send_timeout(request, timeout).is_err() {
                    let _ = sender.send(Err(format!("shard {shard} is not taking records")));
                }
            }
            None => {
                let _ = sender.send(Err(format!("no shard {shard}")));
            }
        }
        receiver
    }

    /// Standby -> primary of `epoch`: every shard applies what it holds, switches its
    /// journal to the new epoch and resends its unsettled legs; then client writes are taken.
    /// Returns each shard's last sequence (the new epoch starts after it).
    pub fn promote(&self, epoch: u64, timeout: Duration) -> Result<Vec<u64>, String> {
        let mut receivers = Vec::with_capacity(self.rings.len());
        for (shard, ring) in self.rings.iter().enumerate() {
            let (sender, receiver) = crossbeam_channel::bounded(1);
            let request = Request::Promote {
                epoch,
                done: Box::new(move |last| {
                    let _ = sender.send(last);
                }),
            };
            ring.send_timeout(request, timeout)
                .map_err(|_| format!("shard {shard} did not take the promotion"))?;
            receivers.push(receiver);
        }
        let mut last = Vec::with_capacity(receivers.len());
        for (shard, receiver) in receivers.into_iter().enumerate() {
            last.push(
                receiver
                    .recv_timeout(timeout)
                    .map_err(|_| format!("shard {shard} did not confirm the promotion"))?,
            );
        }
        self.accepting_writes
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(last)
    }

    pub fn stats(&self, shard: u16) -> &ShardStats {
        &self.stats[usize::from(shard)]
    }

    /// The committed events of a shard, for subscribers.
    pub fn events(&self, shard: u16) -> &Arc<EventLog> {
        &self.events[usize::from(shard)]
    }

    /// Requests a shard's ring holds before `Busy`.
    pub fn ring_capacity(&self) -> usize {
        self.ring_capacity
    }

    /// Requests waiting in a shard's ring.
    pub fn ring_depth(&self, shard: u16) -> usize {
        self.rings[usize::from(shard)].len()
    }

    /// Hands a batch to the shards; never blocks. The receiver yields one result per command,
    /// in order, once every shard part is applied (or refused as busy).
    pub fn submit(&self, commands: Vec<Command>) -> Receiver<Vec<CommandResult>> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        self.submit_with(
            commands,
            Box::new(move |results| {
                // The caller may have gone away; then nobody needs the answer.
                let _ = sender.send(results);
            }),
        );
        receiver
    }

    /// Like [`submit`](Self::submit), calling `on_done` once with the results instead of
    /// returning a receiver (for async callers: send them to a oneshot channel).
    pub fn submit_with(&self, commands: Vec<Command>, on_done: OnDone) {
        let total = commands.len();
        if !self.is_primary() {
            on_done(vec![CommandResult::ShardUnavailable; total]);
            return;
        }
        let count = usize::from(self.shard_count);
        let mut parts: Vec<Vec<(u32, Command)>> = vec![Vec::new(); count];
        let mut refused = Vec::new();
        for (index, command) in commands.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(DISCARD - 1);
            let Command::Client { op, .. } = &command else {
                refused.push((index, CommandResult::ShardUnavailable));
                continue;
            };
            // A group the journal codec cannot encode (nested, or over 64 operations) never
            // reaches a shard: the engine would refuse it anyway.
            if let Op::Linked(ops) = op
                && (ops.len() > LINKED_OPS_MAX || ops.iter().any(|o| matches!(o, Op::Linked(_))))
            {
                let invalid = Outcome::Rejected(Reject::LinkedGroupInvalid);
                refused.push((index, CommandResult::Outcome(invalid)));
                continue;
            }
            match route(op, self.shard_count) {
                Route::One(shard) => parts[usize::from(shard)].push((index, command)),
                Route::All => {
                    for (shard, part) in parts.iter_mut().enumerate() {
                        part.push((if shard == 0 { index } else { DISCARD }, command.clone()));
                    }
                }
            }
        }
        let used = parts.iter().filter(|p| !p.is_empty()).count();
        let reply = BatchReply::new(total.max(1), used + 1, on_done);
        for (index, result) in refused {
            reply.set(index, result);
        }
        for (shard, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let indexes: Vec<u32> = part.iter().map(|(index, _)| *index).collect();
            let request = Request::Submit {
                commands: part,
                reply: reply.clone(),
            };
            match self.rings[shard].try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    let result = if self.stats[shard]
                        .poisoned
                        .load(std::sync::atomic::Ordering::Acquire)
                    {
                        CommandResult::ShardUnavailable
                    } else if self.stats[shard]
                        .disk
                        .full
                        .load(std::sync::atomic::Ordering::Acquire)
                    {
                        CommandResult::DiskFull
                    } else {
                        CommandResult::Busy
                    };
                    for index in indexes {
                        reply.set(index, result);
                    }
                    reply.part_done();
                }
            }
        }
        // The submitter's own part: done once everything is handed over.
        reply.part_done();
    }

    /// `submit`, waiting up to `timeout` for the results.
    pub fn submit_wait(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
    ) -> Option<Vec<CommandResult>> {
        let expected = commands.len();
        let results = self.submit(commands).recv_timeout(timeout).ok()?;
        Some(results.into_iter().take(expected).collect())
    }

    /// Runs `query` on `shard`'s writer thread between two batches and returns its answer
    /// (`None` if the shard is gone or does not answer within `timeout`). It sees the engine
    /// as it stands, released or not: for tools, tests and the node's own bookkeeping; what
    /// clients read goes through [`read_with`](Self::read_with).
    pub fn query<R: Send + 'static>(
        &self,
        shard: u16,
        timeout: Duration,
        query: impl FnOnce(&Engine) -> R + Send + 'static,
    ) -> Option<R> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let request = Request::Query(Box::new(move |view: &ReadView<'_>| {
            let _ = sender.send(query(view.engine()));
            Box::new(|| {}) as Deliver
        }));
        self.rings
            .get(usize::from(shard))?
            .send_timeout(request, timeout)
            .ok()?;
        receiver.recv_timeout(timeout).ok()
    }

    /// Runs `query` on `shard`'s writer thread between two batches without waiting, on the
    /// engine as it stands (see [`query`](Self::query)); `Err` if the shard's ring is full or
    /// the shard is gone (then `query` is not run).
    pub fn query_with(
        &self,
        shard: u16,
        query: impl FnOnce(&Engine) + Send + 'static,
    ) -> Result<(), CommandResult> {
        self.send_query(
            shard,
            Box::new(move |view: &ReadView<'_>| {
                query(view.engine());
                Box::new(|| {}) as Deliver
            }),
        )
    }

    /// A client's read: runs `read` on `shard`'s writer thread between two batches and calls
    /// `answer` with its result once everything the result shows is released (replicated
    /// as the replication mode requires): a client never reads a change that a failover can
    /// erase. `read` reports what it looked at through [`ReadView::saw`]; reads of state no
    /// waiting commit touched are answered at once. `Err` when the ring is full (`Busy`), the
    /// shard is gone, or this primary has been fenced (`ShardUnavailable`); an answer that
    /// cannot be released (a standby that never returns, a fencing) is dropped, never called.
    pub fn read_with<R: Send + 'static>(
        &self,
        shard: u16,
        read: impl FnOnce(&ReadView<'_>) -> R + Send + 'static,
        answer: impl FnOnce(R) + Send + 'static,
    ) -> Result<(), CommandResult> {
        if self
            .gates
            .get(usize::from(shard))
            .is_none_or(|gate| gate.fenced())
        {
            return Err(CommandResult::ShardUnavailable);
        }
        self.send_query(
            shard,
            Box::new(move |view: &ReadView<'_>| {
                let result = read(view);
                Box::new(move || answer(result)) as Deliver
            }),
        )
    }

    fn send_query(&self, shard: u16, query: writer::QueryFn) -> Result<(), CommandResult> {
        let ring = self
            .rings
            .get(usize::from(shard))
            .ok_or(CommandResult::ShardUnavailable)?;
        match ring.try_send(Request::Query(query)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(CommandResult::Busy),
            Err(TrySendError::Disconnected(_)) => Err(CommandResult::ShardUnavailable),
        }
    }

    /// This node learned that a newer primary exists: it takes no writes and answers no reads
    /// from now on (both could show or acknowledge what the new primary never had).
    pub fn fence(&self) {
        self.accepting_writes
            .store(false, std::sync::atomic::Ordering::Release);
        for gate in &self.gates {
            gate.fence();
        }
    }

    /// True once [`fence`](Self::fence) was called.
    pub fn is_fenced(&self) -> bool {
        self.gates.first().is_some_and(|gate| gate.fenced())
    }

    /// Stops accepting work, lets every writer finish its current batch, and joins them.
    pub fn shutdown(mut self) {
        // What still waits for a standby that will not answer is dropped (never acknowledged),
        // so no writer stays blocked on a full release queue.
        self.release_stop
            .store(true, std::sync::atomic::Ordering::Release);
        self.rings.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for thread in self.releasers.drain(..) {
            let _ = thread.join();
        }
    }
}
