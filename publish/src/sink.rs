//! The broker behind one small trait ([`EventSink`]), and its NATS JetStream implementation.
//!
//! A sink keeps, per shard, an ordered log of events and can say which event it holds last;
//! it stores a message only if the log ends where the publisher says it does ([`Chain`]).
//! That conditional append is what makes the publisher gapless and in order with many
//! messages in flight: if one is lost, every later one is refused, never stored past a hole.
//! Kafka maps the same way (an idempotent producer per shard partition, the last offset's key
//! as the resume point).

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};

use crate::event_json::{EventPosition, Topic};

/// One event on its way out.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub position: EventPosition,
    pub topic: Topic,
    pub epoch: u64,
    pub payload: bytes::Bytes,
}

/// Where the sink's log of a shard ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkEnd {
    /// The broker's own position of its last message (JetStream stream sequence; 0: none).
    pub sink_sequence: u64,
    /// The last event held, with its epoch; `None` when the log holds no message (new, or
    /// every message aged out).
    pub last: Option<(EventPosition, u64)>,
}

/// The condition a message is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// The log's last message is the broker's `sink_sequence` (the first message after a
    /// resync: that position survives broker restarts).
    AfterSinkSequence(u64),
    /// The log's last message is this event (every later message in flight).
    AfterEvent(EventPosition),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker cannot be reached or did not answer in time: retried after a backoff.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message because its log does not end where the publisher
    /// thought (an earlier message was lost, or another publisher wrote): resync.
    #[error("the broker's log moved: {0}")]
    Moved(String),
    /// Configuration the publisher must not paper over (a stream with other settings, a
    /// foreign message at the end of our stream): the publisher stops with this.
    #[error("{0}")]
    Fatal(String),
}

/// The publisher's view of a broker. Every method is about one shard's log.
pub trait EventSink {
    /// Resolves to the broker's position of the stored message.
    type Ack: Future<Output = Result<u64, SinkError>> + Send + Unpin;

    /// Creates the shard's destination if missing; refuses one that exists with other settings.
    fn prepare(&mut self, shard: u16) -> impl Future<Output = Result<(), SinkError>>;
    /// Where the shard's log ends.
    fn end(&mut self, shard: u16) -> impl Future<Output = Result<SinkEnd, SinkError>>;
    /// Sends `message`, stored only under `chain`; the returned future says whether it was.
    fn send(
        &mut self,
        message: &OutMessage,
        chain: Chain,
    ) -> impl Future<Output = Result<Self::Ack, SinkError>>;
}

/// Settings of the JetStream sink (flattened into the CLI by `paycore`).
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// `nats://host:port` (several, comma-separated).
    pub url: String,
    /// Stream of shard N: `<stream_prefix>_<NNN>`.
    pub stream_prefix: String,
    /// Subjects of shard N: `<subject_prefix>.<topic>.<N>`.
    pub subject_prefix: String,
    pub max_age: Duration,
    pub replicas: usize,
    pub duplicate_window: Duration,
    /// Longest wait for a message's acknowledgement.
    pub ack_timeout: Duration,
}

impl JetStreamConfig {
    pub const MAX_AGE_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DUPLICATE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);

    pub fn new(url: &str) -> JetStreamConfig {
        JetStreamConfig {
            url: url.to_string(),
            stream_prefix: "PAYCORE_EVENTS".into(),
            subject_prefix: "paycore".into(),
            max_age: Self::MAX_AGE_DEFAULT,
            replicas: 1,
            duplicate_window: Self::DUPLICATE_WINDOW_DEFAULT,
            ack_timeout: Duration::from_secs(5),
        }
    }

    pub fn stream_name(&self, shard: u16) -> String {
        format!("{}_{shard:03}", self.stream_prefix)
    }

    pub fn subject(&self, topic: Topic, shard: u16) -> String {
        format!("{}.{}.{shard}", self.subject_prefix, topic.name())
    }

    fn stream_config(&self, shard: u16) -> stream::Config {
        stream::Config {
            name: self.stream_name(shard),
            subjects: Topic::ALL
                .iter()
                .map(|topic| self.subject(*topic, shard))
                .collect(),
            max_age: self.max_age,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// Refuses a malformed URL or prefix before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        for server in self.url.split(',') {
            server
                .trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("--nats-url {:?}: {e}", self.url))?;
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&self.stream_prefix) {
            return Err(format!(
                "stream prefix {:?}: letters, digits, '_' and '-' only",
                self.stream_prefix
            ));
        }
        if !self.subject_prefix.split('.').all(name_ok) {
            return Err(format!(
                "subject prefix {:?}: dot-separated tokens of letters, digits, '_' and '-'",
                self.subject_prefix
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(format!("replicas must be in 1..=5, not {}", self.replicas));
        }
        Ok(())
    }
}

/// The JetStream sink: one stream per shard, so a stream's last message is the shard's last
/// event and `Nats-Expected-Last-Msg-Id` chains a shard's messages.
#[derive(Debug)]
pub struct JetStreamSink {
    config: JetStreamConfig,
    context: jetstream::Context,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

impl JetStreamSink {
    /// Connects (in the background: a broker that is down now is retried, nothing waits).
    pub async fn connect(config: JetStreamConfig) -> Result<JetStreamSink, SinkError> {
        config.validate().map_err(SinkError::Fatal)?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(config.url.as_str())
            .await
            .map_err(unavailable)?;
        let context = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .ack_timeout(config.ack_timeout)
            .max_ack_inflight(16_384)
            .build(client);
        Ok(JetStreamSink { config, context })
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }
}

/// The header that carries a message's epoch (the event id alone does not tell histories
/// apart after a failover cut the journal).
pub const EPOCH_HEADER: &str = "Paycore-Epoch";

impl EventSink for JetStreamSink {
    type Ack = std::pin::Pin<Box<dyn Future<Output = Result<u64, SinkError>> + Send>>;

    async fn prepare(&mut self, shard: u16) -> Result<(), SinkError> {
        let wanted = self.config.stream_config(shard);
        let mut stream = self
            .context
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(unavailable)?;
        let found = &stream.info().await.map_err(unavailable)?.config;
        let mut differences = Vec::new();
        let mut subjects = found.subjects.clone();
        subjects.sort();
        let mut wanted_subjects = wanted.subjects.clone();
        wanted_subjects.sort();
        if subjects != wanted_subjects {
            differences.push(format!("subjects {subjects:?} (want {wanted_subjects:?})"));
        }
        if found.max_age != wanted.max_age {
            differences.push(format!(
                "max_age {:?} (want {:?})",
                found.max_age, wanted.max_age
            ));
        }
        if found.num_replicas != wanted.num_replicas {
            differences.push(format!(
                "replicas {} (want {})",
                found.num_replicas, wanted.num_replicas
            ));
        }
        if found.duplicate_window != wanted.duplicate_window {
            differences.push(format!(
                "duplicate_window {:?} (want {:?})",
                found.duplicate_window, wanted.duplicate_window
            ));
        }
        if found.storage != wanted.storage {
            differences.push(format!("storage {:?} (want file)", found.storage));
        }
        if found.retention != wanted.retention {
            differences.push(format!("retention {:?} (want limits)", found.retention));
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Fatal(format!(
                "stream {} exists with other settings: {}; change it (nats stream edit) or \
                 choose another --nats-stream-prefix",
                wanted.name,
                differences.join(", ")
            )))
        }
    }

    async fn end(&mut self, shard: u16) -> Result<SinkEnd, SinkError> {
        let name = self.config.stream_name(shard);
        let mut stream = self.context.get_stream(&name).await.map_err(unavailable)?;
        let state = stream.info().await.map_err(unavailable)?.state.clone();
        if state.messages == 0 {
            return Ok(SinkEnd {
                sink_sequence: state.last_sequence,
                last: None,
            });
        }
        let message = stream
            .get_raw_message(state.last_sequence)
            .await
            .map_err(unavailable)?;
        let id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let epoch = message
            .headers
            .get(EPOCH_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok());
        match (EventPosition::parse(&id), epoch) {
            (Some(position), Some(epoch)) if position.shard == shard => Ok(SinkEnd {
                sink_sequence: state.last_sequence,
                last: Some((position, epoch)),
            }),
            _ => Err(SinkError::Fatal(format!(
                "the last message of stream {name} (stream sequence {}, subject {}, \
                 Nats-Msg-Id {id:?}) is not a paycore event of shard {shard}: something else \
                 publishes on its subjects; the publisher will not guess where to resume",
                state.last_sequence, message.subject
            ))),
        }
    }

    async fn send(&mut self, message: &OutMessage, chain: Chain) -> Result<Self::Ack, SinkError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(message.position.id())
            .header(EPOCH_HEADER, message.epoch.to_string().as_str());
        publish = match chain {
            Chain::AfterSinkSequence(sequence) => publish.expected_last_sequence(sequence),
            Chain::AfterEvent(previous) => publish.expected_last_message_id(previous.id()),
        };
        let subject = self.config.subject(message.topic, message.position.shard);
        let ack = self
            .context
            .send_publish(subject, publish)
            .await
            .map_err(unavailable)?;
        Ok(Box::pin(async move {
            match ack.await {
                Ok(ack) => Ok(ack.sequence),
                Err(error) => match error.kind() {
                    PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                        Err(SinkError::Moved(error.to_string()))
                    }
                    _ => Err(unavailable(error)),
                },
            }
        }))
    }
}
