//! The replication gate: when a shard's results may leave the node.
//!
//! With a standby, a group commit's replies, events and cross-shard legs are handed to a
//! releaser thread instead of going out at once; the releaser lets them go when the gate says
//! the standby holds enough of the journal:
//!
//! - `sync`: the standby has made the batch durable (its `replica_ack` covers the batch's last
//!   sequence). Nothing acknowledged can be lost with the primary. With no standby connected,
//!   replies wait (clients time out and retry with the same keys): a sync primary never
//!   acknowledges alone — that is the fencing that keeps a promoted standby authoritative.
//! - `async`: the standby is at most `max_lag_records` behind; when it is disconnected for
//!   `alone_after_ms` (or never connected since start), the primary carries on alone. What a
//!   failover can lose: the acknowledged records the standby had not made durable — at most
//!   `max_lag_records` while connected, everything after the link was lost once alone.
//! - `off`: no standby; results go out directly from the writer (no releaser thread).
//!
//! Legs to other shards wait until the standby holds their debit, in both modes (async:
//! unless alone): a credit journaled on shard B must never reach a standby whose copy of
//! shard A lacks the matching debit, or a failover would create money. Replies do not wait for
//! legs; a cross-shard transfer's credit is just later.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::writer::Deliver;

/// How a primary waits for its standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    Off,
    Async {
        max_lag_records: u64,
        alone_after_ms: u64,
    },
    Sync,
}

impl ReplicationMode {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Off => "off",
            ReplicationMode::Async { .. } => "async",
            ReplicationMode::Sync => "sync",
        }
    }
}

/// One shard's view of its standby, shared by the writer, the releaser and the node's
/// replication stream.
pub struct ReplicationGate {
    mode: ReplicationMode,
    /// Every record up to here is durable on the standby.
    standby_durable: AtomicU64,
    /// Replication streams open (a reconnecting standby may briefly have two).
    connected: std::sync::atomic::AtomicU32,
    /// A standby connected at least once since start (from then on retention waits for it).
    ever_connected: AtomicBool,
    /// When the standby last disconnected (`None`: never connected since start).
    disconnected_at: Mutex<Option<Instant>>,
    /// Sequence up to which results have been released.
    released: AtomicU64,
    /// Sequence up to which the store flusher may write: released and held by the standby
    /// (or released while alone), so the store never holds what a failover would lose.
    flushable: Arc<AtomicU64>,
    /// Last sequence committed by the writer, and when the standby last held all of it.
    committed: AtomicU64,
    caught_up_at: Mutex<Instant>,
    changed: Condvar,
    lock: Mutex<()>,
    /// Called by the writer after each group commit (wakes the replication stream).
    commit_hook: OnceLock<Arc<dyn Fn() + Send + Sync>>,
    /// Query answers that show unreleased state, each with the sequence that must be released
    /// first (see `writer::ReadView`); at most [`PARKED_READS_MAX`].
    parked: Mutex<Vec<(u64, Deliver)>>,
    parked_count: AtomicUsize,
    /// Set when this primary learned that a newer primary exists: it refuses reads too.
    fenced: AtomicBool,
}

/// Query answers waiting for a release, per shard; past it a read is refused (its asker sees
/// the shard not answer) rather than holding memory for a standby that may never come back.
pub const PARKED_READS_MAX: usize = 65_536;

impl std::fmt::Debug for ReplicationGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationGate")
            .field("mode", &self.mode)
            .field("standby_durable", &self.standby_durable)
            .field("connected", &self.connected)
            .finish()
    }
}

impl ReplicationGate {
    pub fn new(mode: ReplicationMode, standby_durable: u64) -> ReplicationGate {
        ReplicationGate {
            mode,
            standby_durable: AtomicU64::new(standby_durable),
            connected: std::sync::atomic::AtomicU32::new(0),
            ever_connected: AtomicBool::new(false),
            disconnected_at: Mutex::new(None),
            released: AtomicU64::new(0),
            flushable: Arc::new(AtomicU64::new(0)),
            committed: AtomicU64::new(0),
            caught_up_at: Mutex::new(Instant::now()),
            changed: Condvar::new(),
            lock: Mutex::new(()),
            commit_hook: OnceLock::new(),
            parked: Mutex::new(Vec::new()),
            parked_count: AtomicUsize::new(0),
            fenced: AtomicBool::new(false),
        }
    }

    /// Hands `deliver` over once every record up to `sequence` is released (at once if it
    /// already is). Dropped, never called, past [`PARKED_READS_MAX`] or once fenced.
    pub(crate) fn park(&self, sequence: u64, deliver: Deliver) {
        if self.fenced() {
            return;
        }
        {
            let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            if parked.len() >= PARKED_READS_MAX {
                return;
            }
            parked.push((sequence, deliver));
            self.parked_count.store(parked.len(), Ordering::Release);
        }
        // The releaser may have passed `sequence` while this was being parked.
        if self.released() >= sequence {
            self.deliver_released();
        }
    }

    /// Query answers waiting for a release.
    pub fn parked_reads(&self) -> usize {
        self.parked_count.load(Ordering::Acquire)
    }

    fn deliver_released(&self) {
        let released = self.released();
        let ready: Vec<Deliver> = {
            let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            let mut ready = Vec::new();
            let mut i = 0;
            while i < parked.len() {
                if parked[i].0 <= released {
                    ready.push(parked.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
            self.parked_count.store(parked.len(), Ordering::Release);
            ready
        };
        for deliver in ready {
            deliver();
        }
    }

    /// This primary has been replaced: from now on it answers no reads (their answers may show
    /// writes the new primary never had); waiting answers are dropped.
    pub fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
        self.parked_count.store(0, Ordering::Release);
        drop(dropped);
        self.wake();
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    pub fn standby_durable(&self) -> u64 {
        self.standby_durable.load(Ordering::Acquire)
    }

    pub fn standby_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) > 0
    }

    /// Sequence up to which replies and events have left the node.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// A standby connected whose hello says it holds records up to `durable`: the gate follows
    /// it from now on (the position can move back, to a standby that holds less than the
    /// one before).
    pub fn standby_joined(&self, durable: u64) {
        self.standby_durable.store(durable, Ordering::Release);
        self.wake();
    }

    /// A standby acknowledged `durable` (never moves back).
    pub fn acknowledge(&self, durable: u64) {
        self.standby_durable.fetch_max(durable, Ordering::AcqRel);
        self.flushable
            .fetch_max(durable.min(self.released()), Ordering::AcqRel);
        if durable >= self.committed.load(Ordering::Acquire) {
            *self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        self.wake();
    }

    /// How long the standby has lacked committed records: 0 when it holds everything, else
    /// the time since it last did (ms).
    pub fn lag_ms(&self) -> u64 {
        if self.standby_durable() >= self.committed.load(Ordering::Acquire) {
            return 0;
        }
        self.caught_up_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            .as_millis() as u64
    }

    /// A replication stream opened (`true`) or closed (`false`); calls pair up.
    pub fn set_connected(&self, connected: bool) {
        if connected {
            self.connected.fetch_add(1, Ordering::AcqRel);
            self.ever_connected.store(true, Ordering::Release);
        } else {
            let before = self
                .connected
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .unwrap_or(0);
            if before == 1 {
                *self
                    .disconnected_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
        }
        self.wake();
    }

    /// Sets the hook the writer calls after each commit (once; later calls are ignored).
    pub fn set_commit_hook(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.commit_hook.set(hook);
    }

    pub(crate) fn committed(&self, last_sequence: u64) {
        if self.standby_durable() >= self.committed.swap(last_sequence, Ordering::AcqRel) {
            // Everything before this batch was on the standby: the lag clock starts now.
            *self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        if let Some(hook) = self.commit_hook.get() {
            hook();
        }
    }

    fn wake(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// May results of records up to `sequence` leave the node now?
    pub fn allows(&self, sequence: u64) -> bool {
        match self.mode {
            ReplicationMode::Off => true,
            ReplicationMode::Sync => self.standby_durable() >= sequence,
            ReplicationMode::Async {
                max_lag_records,
                alone_after_ms,
            } => {
                if self.standby_durable().saturating_add(max_lag_records) >= sequence {
                    return true;
                }
                if self.standby_connected() {
                    return false;
                }
                match *self
                    .disconnected_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                {
                    None => true,
                    Some(at) => at.elapsed() >= Duration::from_millis(alone_after_ms),
                }
            }
        }
    }

    /// May legs to other shards from records up to `sequence` leave? Only once the standby
    /// holds those records (in every mode with a standby), or when an async primary carries
    /// on alone: a credit on shard B must never reach a standby that lacks shard A's debit.
    pub fn allows_legs(&self, sequence: u64) -> bool {
        match self.mode {
            ReplicationMode::Off => true,
            ReplicationMode::Sync => self.standby_durable() >= sequence,
            ReplicationMode::Async { .. } => {
                self.standby_durable() >= sequence
                    || (!self.standby_connected() && self.allows(u64::MAX))
            }
        }
    }

    /// Waits until [`allows`](Self::allows)`(sequence)`, or `stop` is set.
    pub(crate) fn wait_for(&self, sequence: u64, stop: &AtomicBool) {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.allows(sequence) && !stop.load(Ordering::Acquire) {
            guard = self
                .changed
                .wait_timeout(guard, Duration::from_millis(5))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub(crate) fn mark_released(&self, sequence: u64) {
        self.released.fetch_max(sequence, Ordering::AcqRel);
        if self.parked_count.load(Ordering::Acquire) > 0 {
            self.deliver_released();
        }
        let flushable = match self.mode {
            ReplicationMode::Off => sequence,
            _ if self.alone() => sequence,
            _ => sequence.min(self.standby_durable()),
        };
        self.flushable.fetch_max(flushable, Ordering::AcqRel);
    }

    /// A standby's copy (or records recovered at start): released and flushable at once.
    pub(crate) fn mark_replicated(&self, sequence: u64) {
        self.released.fetch_max(sequence, Ordering::AcqRel);
        self.flushable.fetch_max(sequence, Ordering::AcqRel);
        if self.parked_count.load(Ordering::Acquire) > 0 {
            self.deliver_released();
        }
    }

    /// An async primary carrying on without its standby.
    fn alone(&self) -> bool {
        matches!(self.mode, ReplicationMode::Async { .. })
            && !self.standby_connected()
            && self.allows(u64::MAX)
    }

    /// What the store flusher may read up to (see `flushable`).
    pub fn flushable(&self) -> Arc<AtomicU64> {
        self.flushable.clone()
    }

    /// Journal retention must keep every record the standby does not have yet: once a
    /// standby has connected since start, even while it is away (it resumes from where it
    /// was). A standby that first connects after segments were archived cannot be served.
    pub fn retention_floor(&self) -> Option<u64> {
        let waits =
            self.mode != ReplicationMode::Off && self.ever_connected.load(Ordering::Acquire);
        waits.then(|| self.standby_durable())
    }
}
