//! One shard's publisher: journal -> shadow engine -> events -> JSON -> sink, exactly once,
//! gapless and in order.
//!
//! **Source: the journal, replayed on a shadow engine** (as the store flusher does), not the
//! event archive (`<shard>/events/`). The archive is not fsynced and a crash between a
//! journal commit and its archive append leaves a hole in it; it is pruned with the journal
//! without waiting for consumers; and a standby does not apply client writes with events. The
//! journal is the durable, replicated truth, and the engine is deterministic, so replaying a
//! record gives the same events with the same indexes every time — which is what makes the
//! event id `<shard>-<sequence>-<index>` a stable message id. Cost: a second copy of the
//! shard's state and a replay from the newest snapshot when the publisher (re)starts.
//!
//! **Resume point: recovered from the stream itself.** Each shard has its own stream, and
//! every message is stored only if the stream ends where the publisher says
//! ([`Chain`]: `Nats-Expected-Last-Sequence` for the first message after a (re)sync — that
//! survives NATS restarts — then `Nats-Expected-Last-Msg-Id` of the previous event for every
//! message in flight behind it). So the stream is always a gapless prefix of the shard's
//! events: if a message is lost (NATS restarted, the connection broke), every later one is
//! refused, the publisher reads the stream's last message again and sends from the one after.
//! Its last message names the last event held (`Nats-Msg-Id`), hence the resume point after a
//! publisher crash, a node crash or a NATS restart. `Nats-Msg-Id` also dedupes within the
//! stream's duplicate window (a second safety net; correctness does not depend on the window).
//! A stream whose messages all aged out (idle > max age) holds none to resume from: then a
//! checkpoint file `<shard>/publish-<stream>.checkpoint` (written atomically, only ever behind
//! what the stream acknowledged) gives the point; with neither, publishing starts at the
//! journal's first record.
//!
//! **Backpressure**: the publisher only reads the journal; a slow or absent broker slows
//! nothing but itself. Its acknowledged position is a journal retention floor, so the
//! journal keeps what is not yet published (the log says so while it lags).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paycore_engine::codec::decode_command;
use paycore_engine::{Effects, Engine, EngineConfig};
use paycore_store::flusher::{FlushError, FlusherConfig};
use paycore_store::follow::Follower;

use crate::event_json::{self, EventMeta, EventPosition};
use crate::sink::{Chain, EventSink, OutMessage, SinkEnd, SinkError};

/// Messages sent and not yet acknowledged, at most.
pub const IN_FLIGHT_DEFAULT: usize = 8192;
/// Journal records read per step.
const READ_RECORDS_MAX: usize = 1024;
const BACKOFF_MS_MIN: u64 = 50;
const BACKOFF_MS_MAX: u64 = 2_000;
const IDLE_POLL_MS: u64 = 5;
/// A lag past this many seconds is logged (once a minute) as holding journal segments back.
const LAG_LOG_SECS: u64 = 30;

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub data_dir: PathBuf,
    /// `shard` and `shard_count` set.
    pub engine_config: EngineConfig,
    /// The journal writer's durable sequence, or the replication gate's flushable one with a
    /// standby (`None`: read to the end of the valid journal, a stopped node's folder).
    pub watermark: Option<Arc<AtomicU64>>,
    /// Return once everything readable is acknowledged (`paycore publish --once`).
    pub stop_at_end: bool,
    pub in_flight_max: usize,
    /// Name of the checkpoint file in the shard folder.
    pub checkpoint_name: String,
}

/// What a shard's publisher exports (status, metrics, retention).
#[derive(Debug, Default)]
pub struct PublishStatus {
    /// Every record through this sequence has all its events acknowledged by the broker: the
    /// journal retention floor.
    pub published_sequence: Arc<AtomicU64>,
    /// Events acknowledged since start.
    pub events_published: AtomicU64,
    /// Timestamp (ns) of the oldest event sent and not yet acknowledged (0: none).
    pub oldest_pending_ns: AtomicU64,
    pub failures: AtomicU64,
    pub resyncs: AtomicU64,
    pub finished: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl PublishStatus {
    pub fn lag_records(&self, durable_sequence: u64) -> u64 {
        durable_sequence.saturating_sub(self.published_sequence.load(Ordering::Acquire))
    }

    pub fn lag_ms(&self) -> u64 {
        let oldest = self.oldest_pending_ns.load(Ordering::Acquire);
        if oldest == 0 {
            return 0;
        }
        now_ns().saturating_sub(oldest) / 1_000_000
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The last error, to be set by the thread that runs the publisher.
    pub fn last_error_slot(
        &self,
    ) -> Result<
        std::sync::MutexGuard<'_, Option<String>>,
        std::sync::PoisonError<std::sync::MutexGuard<'_, Option<String>>>,
    > {
        self.last_error.lock()
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Journal(#[from] FlushError),
    #[error("{0}")]
    Sink(String),
    #[error(
        "shard {shard}: the stream's last event {id} has epoch {stream_epoch} but the journal's \
         record {sequence} has epoch {journal_epoch}: the journal was cut after a failover and \
         the stream holds events of another history; it must be rebuilt"
    )]
    Diverged {
        shard: u16,
        id: String,
        sequence: u64,
        stream_epoch: u64,
        journal_epoch: u64,
    },
    #[error("shard {shard}: the stream ends at {id}, after the journal ({journal_last})")]
    StreamAhead {
        shard: u16,
        id: String,
        journal_last: u64,
    },
}

struct InFlight<A> {
    message: OutMessage,
    timestamp_ns: u64,
    ack: Option<A>,
}

/// The shadow engine and where it reads.
struct Replay {
    engine: Engine,
    follower: Follower,
    effects: Effects,
    /// Events of this record up to this index are in the sink already (the resume point fell
    /// inside a record).
    skip: Option<EventPosition>,
}

impl Replay {
    /// The engine right before `from` (the first record whose events are not all sent).
    fn start(config: &PublisherConfig, from: u64) -> Result<Replay, PublishError> {
        let flusher = FlusherConfig::new(
            config.data_dir.clone(),
            config.engine_config.clone(),
            paycore_store::store::StoreTarget::from_options(None, "public", &config.data_dir),
        );
        let engine = paycore_store::flusher::engine_at(&flusher, from.saturating_sub(1))?;
        let paths = journal_dir(&config.data_dir, config.engine_config.shard);
        let follower = Follower::new(&paths, engine.last_sequence() + 1, config.watermark.clone());
        Ok(Replay {
            engine,
            follower,
            effects: Effects::default(),
            skip: None,
        })
    }
}

fn journal_dir(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard:03}")).join("journal")
}

fn checkpoint_path(config: &PublisherConfig) -> PathBuf {
    config
        .data_dir
        .join(format!("shard-{:03}", config.engine_config.shard))
        .join(&config.checkpoint_name)
}

/// The checkpoint file: `<shard> <sequence> <index> <epoch>`.
fn read_checkpoint(config: &PublisherConfig) -> Option<(EventPosition, u64)> {
    let text = std::fs::read_to_string(checkpoint_path(config)).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [shard, sequence, index, epoch] => Some((
            EventPosition {
                shard: u16::try_from(shard).ok()?,
                sequence,
                index: u32::try_from(index).ok()?,
            },
            epoch,
        )),
        _ => None,
    }
}

fn write_checkpoint(config: &PublisherConfig, last: (EventPosition, u64)) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = checkpoint_path(config);
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    let (p, epoch) = last;
    writeln!(file, "{} {} {} {epoch}", p.shard, p.sequence, p.index)?;
    file.sync_data()?;
    std::fs::rename(&temporary, &path)
}

/// Sleeps up to `ms`, waking early on `stop`. Returns whether to stop.
async fn pause(stop: &AtomicBool, ms: u64) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if stop.load(Ordering::Acquire) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(ms.min(10))).await;
    }
    stop.load(Ordering::Acquire)
}

/// The state of one shard's publishing between resyncs.
struct Publisher<'a, S: EventSink> {
    config: &'a PublisherConfig,
    status: &'a PublishStatus,
    sink: S,
    replay: Option<Replay>,
    in_flight: VecDeque<InFlight<S::Ack>>,
    /// Last event the sink acknowledged (with its epoch).
    acknowledged: Option<(EventPosition, u64)>,
    /// The sink's own position of that event.
    acknowledged_sink_sequence: u64,
    checkpoint_written: Instant,
    lag_logged: Option<Instant>,
}

/// Runs one shard's publisher until `stop` (or, with `stop_at_end`, until everything
/// readable is acknowledged). Broker trouble is retried forever; only what retrying cannot
/// fix returns an error.
pub async fn run<S: EventSink>(
    config: &PublisherConfig,
    sink: S,
    status: &PublishStatus,
    stop: &AtomicBool,
) -> Result<(), PublishError> {
    let mut publisher = Publisher {
        config,
        status,
        sink,
        replay: None,
        in_flight: VecDeque::new(),
        acknowledged: None,
        acknowledged_sink_sequence: 0,
        checkpoint_written: Instant::now(),
        lag_logged: None,
    };
    let mut backoff_ms = BACKOFF_MS_MIN;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let outcome = match publisher.resync().await {
            Ok(()) => publisher.pump(stop).await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(Step::Fatal(error)) => {
                status.set_error(Some(error.to_string()));
                return Err(error);
            }
            Err(Step::Retry(error)) => {
                // Stalled with nothing in flight (the broker was never reached): the lag in
                // time counts from the stall at least.
                if status.oldest_pending_ns.load(Ordering::Acquire) == 0 {
                    status.oldest_pending_ns.store(now_ns(), Ordering::Release);
                }
                status.failures.fetch_add(1, Ordering::Relaxed);
                status.resyncs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    shard = config.engine_config.shard,
                    %error,
                    retry_in_ms = backoff_ms,
                    "publishing interrupted; resyncing with the stream"
                );
                status.set_error(Some(error.to_string()));
                if pause(stop, backoff_ms).await {
                    return Ok(());
                }
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
            }
            Err(Step::Progress) => backoff_ms = BACKOFF_MS_MIN,
        }
    }
}

enum Step {
    /// Retry after a backoff, from a resync.
    Retry(SinkError),
    /// Resync at once (acknowledgements were made since the last one).
    Progress,
    Fatal(PublishError),
}

impl From<SinkError> for Step {
    fn from(error: SinkError) -> Step {
        match error {
            SinkError::Fatal(text) => Step::Fatal(PublishError::Sink(text)),
            other => Step::Retry(other),
        }
    }
}

impl From<PublishError> for Step {
    fn from(error: PublishError) -> Step {
        Step::Fatal(error)
    }
}

impl From<FlushError> for Step {
    fn from(error: FlushError) -> Step {
        Step::Fatal(error.into())
    }
}

impl<S: EventSink> Publisher<'_, S> {
    fn shard(&self) -> u16 {
        self.config.engine_config.shard
    }

    /// Learns where the stream ends, drops what it holds from the in-flight queue, rebuilds
    /// the shadow engine if the stream is not where this publisher left it, and sends what is
    /// still in flight again, chained to the stream's end.
    async fn resync(&mut self) -> Result<(), Step> {
        let shard = self.shard();
        self.sink.prepare(shard).await?;
        let SinkEnd {
            sink_sequence,
            last,
        } = self.sink.end(shard).await?;
        let last = last.or_else(|| read_checkpoint(self.config));
        // Every in-flight message at or before the stream's end is stored.
        let held = |m: &InFlight<S::Ack>| last.is_some_and(|(p, _)| m.message.position <= p);
        let known = last == self.acknowledged
            || self
                .in_flight
                .iter()
                .any(|m| Some((m.message.position, m.message.epoch)) == last);
        if self.replay.is_some() && known {
            while self.in_flight.front().is_some_and(held) {
                self.in_flight.pop_front();
            }
        } else {
            self.in_flight.clear();
            self.replay = Some(self.start_replay(last)?);
        }
        self.acknowledged = last;
        self.acknowledged_sink_sequence = sink_sequence;
        let mut chain = Chain::AfterSinkSequence(sink_sequence);
        for entry in &mut self.in_flight {
            entry.ack = Some(self.sink.send(&entry.message, chain).await?);
            chain = Chain::AfterEvent(entry.message.position);
        }
        self.publish_marks();
        Ok(())
    }

    fn start_replay(&self, last: Option<(EventPosition, u64)>) -> Result<Replay, Step> {
        let shard = self.shard();
        let Some((position, epoch)) = last else {
            return Ok(Replay::start(self.config, 1)?);
        };
        // Same sequence, other epoch: another history (a failover cut the journal).
        let journal = journal_dir(&self.config.data_dir, shard);
        let mut probe = Follower::new(&journal, position.sequence, None);
        let mut journal_epoch = None;
        probe.read(1, |record| {
            journal_epoch = Some(record.epoch);
            Ok(())
        })?;
        let Some(journal_epoch) = journal_epoch else {
            return Err(Step::Fatal(PublishError::StreamAhead {
                shard,
                id: position.id(),
                journal_last: position.sequence.saturating_sub(1),
            }));
        };
        if journal_epoch != epoch {
            return Err(Step::Fatal(PublishError::Diverged {
                shard,
                id: position.id(),
                sequence: position.sequence,
                stream_epoch: epoch,
                journal_epoch,
            }));
        }
        // Read that record again with the events it emits, skipping those already held.
        let mut replay = Replay::start(self.config, position.sequence)?;
        replay.skip = Some(position);
        tracing::info!(
            shard,
            resume_after = %position.id(),
            "publisher resumes after the stream's last event"
        );
        Ok(replay)
    }

    /// Reads, applies, sends; awaits acknowledgements in order. Returns when stopping, or
    /// with the reason to resync.
    async fn pump(&mut self, stop: &AtomicBool) -> Result<(), Step> {
        let mut messages = Vec::with_capacity(READ_RECORDS_MAX * 4);
        let mut acknowledged_any = false;
        loop {
            if stop.load(Ordering::Acquire) {
                self.save_checkpoint();
                return Ok(());
            }
            messages.clear();
            let read = self.read_some(&mut messages)?;
            for (message, timestamp_ns) in messages.drain(..) {
                while self.in_flight.len() >= self.config.in_flight_max.max(1) {
                    self.confirm_front()
                        .await
                        .map_err(|e| progress_or(e, acknowledged_any))?;
                    acknowledged_any = true;
                }
                let chain = match self.in_flight.back() {
                    Some(previous) => Chain::AfterEvent(previous.message.position),
                    None => Chain::AfterSinkSequence(self.acknowledged_sink_sequence),
                };
                let ack = self.sink.send(&message, chain).await;
                self.in_flight.push_back(InFlight {
                    message,
                    timestamp_ns,
                    ack: None,
                });
                match ack {
                    Ok(ack) => {
                        if let Some(entry) = self.in_flight.back_mut() {
                            entry.ack = Some(ack);
                        }
                    }
                    Err(error) => return Err(progress_or(error, acknowledged_any)),
                }
            }
            self.publish_marks();
            if read == 0 {
                // Caught up with the journal: wait for every acknowledgement.
                while !self.in_flight.is_empty() {
                    self.confirm_front()
                        .await
                        .map_err(|e| progress_or(e, acknowledged_any))?;
                    acknowledged_any = true;
                }
                self.publish_marks();
                self.save_checkpoint();
                if self.config.stop_at_end {
                    self.status.finished.store(true, Ordering::Release);
                    return Ok(());
                }
                if pause(stop, IDLE_POLL_MS).await {
                    return Ok(());
                }
            } else if self.checkpoint_written.elapsed() > Duration::from_secs(1) {
                self.save_checkpoint();
            }
            self.log_lag();
        }
    }

    /// Reads up to [`READ_RECORDS_MAX`] records, applies them and encodes their events.
    fn read_some(&mut self, out: &mut Vec<(OutMessage, u64)>) -> Result<usize, Step> {
        let shard = self.shard();
        let Some(replay) = self.replay.as_mut() else {
            return Ok(0);
        };
        let Replay {
            engine,
            follower,
            effects,
            skip,
        } = replay;
        let mut json = String::with_capacity(512);
        let read = follower.read(READ_RECORDS_MAX, |record| {
            let command = decode_command(record.payload).map_err(|e| FlushError::Decode {
                sequence: record.sequence,
                reason: e.to_string(),
            })?;
            effects.clear();
            engine.apply(record.sequence, record.timestamp_ns, &command, effects);
            for (index, event) in effects.events.iter().enumerate() {
                let position = EventPosition {
                    shard,
                    sequence: record.sequence,
                    index: index as u32,
                };
                if skip.is_some_and(|s| position <= s) {
                    continue;
                }
                let meta = EventMeta {
                    position,
                    epoch: record.epoch,
                    timestamp_ns: record.timestamp_ns,
                };
                json.clear();
                event_json::encode(event, &meta, &*engine, &mut json);
                out.push((
                    OutMessage {
                        position,
                        topic: event_json::topic(event),
                        epoch: record.epoch,
                        payload: bytes::Bytes::copy_from_slice(json.as_bytes()),
                    },
                    record.timestamp_ns,
                ));
            }
            Ok(())
        })?;
        if read > 0 {
            *skip = None;
        }
        Ok(read)
    }

    async fn confirm_front(&mut self) -> Result<(), SinkError> {
        let Some(entry) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let Some(ack) = entry.ack.take() else {
            return Err(SinkError::Unavailable("a message was never sent".into()));
        };
        self.acknowledged_sink_sequence = ack.await?;
        if let Some(entry) = self.in_flight.pop_front() {
            self.acknowledged = Some((entry.message.position, entry.message.epoch));
            self.status.events_published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes the retention floor and the age of the oldest unacknowledged event.
    fn publish_marks(&self) {
        let Some(replay) = &self.replay else {
            return;
        };
        let through = match self.in_flight.front() {
            Some(front) => front.message.position.sequence.saturating_sub(1),
            None => replay.engine.last_sequence(),
        };
        self.status
            .published_sequence
            .store(through, Ordering::Release);
        self.status.oldest_pending_ns.store(
            self.in_flight.front().map_or(0, |f| f.timestamp_ns.max(1)),
            Ordering::Release,
        );
    }

    fn save_checkpoint(&mut self) {
        if let Some(last) = self.acknowledged
            && let Err(error) = write_checkpoint(self.config, last)
        {
            tracing::warn!(shard = self.shard(), %error, "publisher checkpoint not written");
        }
        self.checkpoint_written = Instant::now();
    }

    fn log_lag(&mut self) {
        let lag_secs = self.status.lag_ms() / 1000;
        if lag_secs < LAG_LOG_SECS || self.lag_logged.is_some_and(|t| t.elapsed().as_secs() < 60) {
            return;
        }
        self.lag_logged = Some(Instant::now());
        tracing::warn!(
            shard = self.shard(),
            lag_secs,
            published_through = self.status.published_sequence.load(Ordering::Acquire),
            "event publisher lags: journal retention holds back every segment after the last published record"
        );
    }
}

/// A failure after some acknowledgements is worth an immediate resync (not a backoff).
fn progress_or(error: SinkError, acknowledged_any: bool) -> Step {
    match error {
        SinkError::Fatal(_) => error.into(),
        _ if acknowledged_any => {
            tracing::info!(%error, "publisher resyncs after progress");
            Step::Progress
        }
        other => Step::Retry(other),
    }
}
