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
use paycore_engine::codec::encode_command;
use paycore_engine::{Command, Effects, Engine, ShardMessage};
use paycore_snapshot::{DurableShard, Snapshotter};

use crate::events::{EventBatch, EventLog};
use crate::reply::{BatchReply, CommandResult};

/// Commands ahead of the one applied whose wallets are prefetched.
const PREFETCH_DISTANCE: usize = 4;

/// A query run on the writer thread between two batches.
pub(crate) type QueryFn = Box<dyn FnOnce(&Engine) + Send>;

pub(crate) enum Request {
    /// Client commands of this shard, each with its index in the client's batch.
    Submit {
        commands: Vec<(u32, Command)>,
        reply: Arc<BatchReply>,
    },
    Query(QueryFn),
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
        while open {
            // Wait for the first piece of work.
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
            // Drain what else is waiting, up to the batch limit: legs first (they settle money
            // already in flight), then client requests.
            while commands.len() < self.config.batch_commands_max {
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
            for query in queries.drain(..) {
                query(&self.shard.engine);
            }
            if !commands.is_empty() {
                self.commit_and_apply(&commands, &origins, &mut effects, &mut payload);
            }
            for part in parts.drain(..) {
                part.part_done();
            }
            commands.clear();
            origins.clear();
            if let Some(snapshotter) = &self.snapshotter {
                let covered = snapshotter.latest.load(Ordering::Acquire);
                if covered > 0
                    && let Err(error) = self.shard.journal.retire_through(covered, true)
                {
                    tracing::warn!(shard = self.shard.engine.config().shard, %error, "journal retention failed");
                }
            }
        }
        // Graceful end: the last batch was committed above; legs still queued for this shard
        // stay unapplied (they are in the sender's journal, see docs/design.md §14).
        if let Some(snapshotter) = self.snapshotter.take()
            && let Err(error) = snapshotter.stop()
        {
            tracing::warn!(%error, "snapshotter stopped with an error");
        }
    }

    fn take(
        &self,
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
        }
    }

    fn commit_and_apply(
        &mut self,
        commands: &[Command],
        origins: &[Origin],
        effects: &mut Effects,
        payload: &mut Vec<u8>,
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
        // Prepare: sequence numbers and one timestamp for the batch (time never goes back).
        let timestamp_ns = now_ns().max(self.shard.engine.last_timestamp_ns());
        let first = self.shard.journal.next_sequence();
        let mut journaled = Ok(());
        for (i, command) in commands.iter().enumerate() {
            payload.clear();
            encode_command(command, payload);
            journaled = self
                .shard
                .journal
                .append(first + i as u64, timestamp_ns, payload);
            if journaled.is_err() {
                break;
            }
        }
        let journaled = journaled.and_then(|()| self.shard.journal.commit().map(|_| ()));
        if let Err(error) = journaled {
            tracing::error!(shard = self.shard.engine.config().shard, %error, "journal write failed; shard unavailable");
            self.stats.poisoned.store(true, Ordering::Release);
            answer_all(CommandResult::ShardUnavailable);
            return;
        }
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
        self.events.append(EventBatch {
            first_sequence: first,
            last_sequence: first + commands.len() as u64 - 1,
            timestamp_ns,
            events: batch_events,
        });
        for message in effects.messages.drain(..) {
            let (to, command) = match message {
                ShardMessage::Credit { to_shard, leg } => (to_shard, Command::CreditLeg(leg)),
                ShardMessage::Settle { to_shard, leg } => (to_shard, Command::SettleLeg(leg)),
            };
            // Unbounded by design: the engine bounds transfers in flight, and a bounded channel
            // here could deadlock two shards sending to each other.
            if self.peers[usize::from(to)].send(command).is_err() {
                tracing::warn!(to, "peer shard stopped; leg stays pending in the journal");
            }
        }
        effects.clear();
        let last = first + commands.len() as u64 - 1;
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
