//! The audit log: every published event appended, exactly once, to an append-only
//! PostgreSQL table whose rows form a hash chain; and its verification.
//!
//! Table `<schema>.audit_log`: `row_id` (1, 2, 3, … with no gap), `event_id` (unique: a
//! redelivered event is skipped, so the log holds each event once), `subject`,
//! `stream_sequence`, `payload` (the exact bytes received, as text), `received_at`,
//! `prev_hash`, `hash` where
//!
//! ```text
//! hash = SHA-256( prev_hash || row_id (8 bytes BE) || len(event_id) (4 BE) || event_id
//!                 || len(payload) (4 BE) || payload )          prev_hash of row 1: 32 zero bytes
//! ```
//!
//! `audit_head` (one row) holds the last row id and hash: appends lock it (`FOR UPDATE`), so
//! any number of `paycore audit` processes (one durable JetStream consumer shared as a
//! consumer group) append one chain, one batch at a time; truncating the log's tail is seen
//! against it. A trigger refuses UPDATE and DELETE on the log; whoever gets past it (a
//! superuser disabling the trigger) is caught by `verify`: a changed row breaks its own hash,
//! a deleted one leaves a gap in `row_id`, a reordered one breaks the links.
//!
//! Messages on the audit subjects that are not paycore events (no event id, a payload that
//! does not name it) are not dropped: they go to `audit_rejected` with the reason, and are
//! acknowledged so they do not block the consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use futures_util::StreamExt;
use tokio_postgres::{Client, NoTls};

use crate::event_json::EventPosition;
use crate::sink::JetStreamConfig;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("PostgreSQL: {}", postgres_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{0}")]
    Invalid(String),
}

/// The server's own message when there is one ("db error" alone says nothing).
fn postgres_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

fn nats(e: impl std::fmt::Display) -> AuditError {
    AuditError::Nats(e.to_string())
}

/// Settings of `paycore audit`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub jetstream: JetStreamConfig,
    pub shards: u16,
    pub postgres_url: String,
    pub schema: String,
    /// Durable consumer name: processes with the same name share the work.
    pub consumer: String,
    /// Messages fetched and appended per transaction, at most.
    pub batch_max: usize,
    /// Return once a fetch finds nothing new on every shard (tests, `--once`).
    pub stop_when_idle: bool,
}

/// What a run appended.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditStats {
    pub appended: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

pub fn validate_schema(schema: &str) -> Result<(), AuditError> {
    paycore_store::postgres::validate_schema(schema).map_err(|e| AuditError::Invalid(e.to_string()))
}

pub async fn connect(url: &str) -> Result<Client, AuditError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "audit: PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Creates the tables, the head row and the append-only trigger if missing.
pub async fn create_schema(client: &Client, schema: &str) -> Result<(), AuditError> {
    validate_schema(schema)?;
    client
        .batch_execute(&format!(
            "BEGIN;
             -- Members of a consumer group start together: one creates, the others wait.
             SELECT pg_advisory_xact_lock(hashtext('paycore_audit_schema'));
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.audit_log (
                 row_id BIGINT PRIMARY KEY,
                 event_id TEXT NOT NULL UNIQUE,
                 subject TEXT NOT NULL,
                 stream_sequence BIGINT NOT NULL,
                 payload TEXT NOT NULL,
                 received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 prev_hash BYTEA NOT NULL,
                 hash BYTEA NOT NULL);
             CREATE TABLE IF NOT EXISTS {schema}.audit_head (
                 id INT PRIMARY KEY CHECK (id = 1),
                 row_id BIGINT NOT NULL,
                 hash BYTEA NOT NULL);
             INSERT INTO {schema}.audit_head VALUES (1, 0, '\\x{zero}') ON CONFLICT DO NOTHING;
             CREATE TABLE IF NOT EXISTS {schema}.audit_rejected (
                 stream TEXT NOT NULL,
                 stream_sequence BIGINT NOT NULL,
                 subject TEXT NOT NULL,
                 payload BYTEA NOT NULL,
                 reason TEXT NOT NULL,
                 received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (stream, stream_sequence));
             CREATE OR REPLACE FUNCTION {schema}.audit_log_append_only() RETURNS trigger
                 LANGUAGE plpgsql AS $$ BEGIN
                 RAISE EXCEPTION 'audit_log is append-only'; END $$;
             DROP TRIGGER IF EXISTS audit_log_append_only ON {schema}.audit_log;
             CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
                 ON {schema}.audit_log FOR EACH STATEMENT
                 EXECUTE FUNCTION {schema}.audit_log_append_only();
             COMMIT;",
            zero = "00".repeat(32)
        ))
        .await?;
    Ok(())
}

/// The chain's hash of one row.
pub fn row_hash(prev_hash: &[u8], row_id: i64, event_id: &str, payload: &str) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(prev_hash);
    context.update(&row_id.to_be_bytes());
    context.update(&(event_id.len() as u32).to_be_bytes());
    context.update(event_id.as_bytes());
    context.update(&(payload.len() as u32).to_be_bytes());
    context.update(payload.as_bytes());
    context.finish().as_ref().to_vec()
}

/// One message judged: an event to append, or why it is not ours.
enum Judged {
    Event {
        event_id: String,
        subject: String,
        stream_sequence: i64,
        payload: String,
    },
    Rejected {
        stream: String,
        stream_sequence: i64,
        subject: String,
        payload: Vec<u8>,
        reason: String,
    },
}

fn judge(message: &jetstream::Message) -> Judged {
    let (stream, stream_sequence) = message
        .info()
        .map(|i| (i.stream.to_string(), i.stream_sequence as i64))
        .unwrap_or_default();
    let subject = message.subject.to_string();
    let id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string());
    let reject = |reason: String| Judged::Rejected {
        stream: stream.clone(),
        stream_sequence,
        subject: subject.clone(),
        payload: message.payload.to_vec(),
        reason,
    };
    let Some(id) = id.filter(|id| EventPosition::parse(id).is_some()) else {
        return reject("no paycore event id (Nats-Msg-Id <shard>-<sequence>-<index>)".into());
    };
    let Ok(payload) = std::str::from_utf8(&message.payload) else {
        return reject(format!("event {id}: payload is not UTF-8"));
    };
    let named = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("event_id")
                .and_then(|e| e.as_str())
                .map(str::to_string)
        });
    if named.as_deref() != Some(id.as_str()) {
        return reject(format!("event {id}: payload is not the JSON of that event"));
    }
    Judged::Event {
        event_id: id,
        subject,
        stream_sequence,
        payload: payload.to_string(),
    }
}

/// Appends `batch` in one transaction under the head's lock; returns (appended, duplicates,
/// rejected).
async fn append(
    client: &mut Client,
    schema: &str,
    batch: &[Judged],
) -> Result<(u64, u64, u64), AuditError> {
    let transaction = client.transaction().await?;
    let head = transaction
        .query_one(
            &format!("SELECT row_id, hash FROM {schema}.audit_head WHERE id = 1 FOR UPDATE"),
            &[],
        )
        .await?;
    let mut row_id: i64 = head.get(0);
    let mut hash: Vec<u8> = head.get(1);
    let ids: Vec<&str> = batch
        .iter()
        .filter_map(|j| match j {
            Judged::Event { event_id, .. } => Some(event_id.as_str()),
            Judged::Rejected { .. } => None,
        })
        .collect();
    let present: std::collections::HashSet<String> = transaction
        .query(
            &format!("SELECT event_id FROM {schema}.audit_log WHERE event_id = ANY($1)"),
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let (mut appended, mut duplicates, mut rejected) = (0, 0, 0);
    // Columns of the rows to append, written in one statement.
    let (mut row_ids, mut event_ids, mut subjects, mut sequences) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut payloads, mut prevs, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for judged in batch {
        match judged {
            Judged::Event {
                event_id,
                subject,
                stream_sequence,
                payload,
            } => {
                if present.contains(event_id) || !seen.insert(event_id.as_str()) {
                    duplicates += 1;
                    continue;
                }
                row_id += 1;
                let next = row_hash(&hash, row_id, event_id, payload);
                row_ids.push(row_id);
                event_ids.push(event_id.as_str());
                subjects.push(subject.as_str());
                sequences.push(*stream_sequence);
                payloads.push(payload.as_str());
                prevs.push(std::mem::replace(&mut hash, next.clone()));
                hashes.push(next);
                appended += 1;
            }
            Judged::Rejected {
                stream,
                stream_sequence,
                subject,
                payload,
                reason,
            } => {
                tracing::error!(%stream, stream_sequence, %subject, %reason, "audit: a message that is not a paycore event, kept in audit_rejected");
                transaction
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.audit_rejected
                                 (stream, stream_sequence, subject, payload, reason)
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
                        ),
                        &[stream, stream_sequence, subject, payload, reason],
                    )
                    .await?;
                rejected += 1;
            }
        }
    }
    if !row_ids.is_empty() {
        transaction
            .execute(
                &format!(
                    "INSERT INTO {schema}.audit_log
                         (row_id, event_id, subject, stream_sequence, payload, prev_hash, hash)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                          $5::text[], $6::bytea[], $7::bytea[])"
                ),
                &[
                    &row_ids, &event_ids, &subjects, &sequences, &payloads, &prevs, &hashes,
                ],
            )
            .await?;
    }
    transaction
        .execute(
            &format!("UPDATE {schema}.audit_head SET row_id = $1, hash = $2 WHERE id = 1"),
            &[&row_id, &hash],
        )
        .await?;
    transaction.commit().await?;
    Ok((appended, duplicates, rejected))
}

/// Consumes every shard's stream with the durable consumer `config.consumer` and appends
/// to the log. A message is acknowledged only after its batch committed: a crash in between
/// redelivers it, and the unique event id makes that a no-op.
pub async fn run(
    config: &AuditConfig,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<AuditStats, AuditError> {
    config.jetstream.validate().map_err(AuditError::Invalid)?;
    let mut client = connect(&config.postgres_url).await?;
    create_schema(&client, &config.schema).await?;
    let nats_client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(config.jetstream.url.as_str())
        .await
        .map_err(nats)?;
    let context = jetstream::new(nats_client);
    let mut consumers = Vec::new();
    for shard in 0..config.shards {
        let stream = context
            .get_stream(config.jetstream.stream_name(shard))
            .await
            .map_err(nats)?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &config.consumer,
                pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats)?;
        consumers.push(consumer);
    }
    let mut stats = AuditStats::default();
    loop {
        let mut idle = true;
        for consumer in &consumers {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(stats);
            }
            let mut batch = consumer
                .fetch()
                .max_messages(config.batch_max.max(1))
                .expires(Duration::from_millis(200))
                .messages()
                .await
                .map_err(nats)?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(nats)?);
            }
            if messages.is_empty() {
                continue;
            }
            idle = false;
            let judged: Vec<Judged> = messages.iter().map(judge).collect();
            let (appended, duplicates, rejected) =
                append(&mut client, &config.schema, &judged).await?;
            stats.appended += appended;
            stats.duplicates += duplicates;
            stats.rejected += rejected;
            for message in &messages {
                message.ack().await.map_err(nats)?;
            }
        }
        if idle && config.stop_when_idle {
            return Ok(stats);
        }
    }
}

/// The first broken link `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub row_id: i64,
    pub what: String,
    pub expected: String,
    pub found: String,
}

/// Rows checked, and the first broken link (None: intact).
#[derive(Debug, Clone)]
pub struct Verified {
    pub rows: u64,
    pub broken: Option<BrokenLink>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Walks the chain in `row_id` order (10 000 rows per query) and reports the first link that
/// does not hold: a row missing (gap), a `prev_hash` that is not the previous row's hash, a
/// `hash` that is not the row's content's, or a head that does not match the last row.
pub async fn verify(client: &Client, schema: &str) -> Result<Verified, AuditError> {
    validate_schema(schema)?;
    const PAGE_ROWS: i64 = 10_000;
    let mut expected_row = 1i64;
    let mut previous = vec![0u8; 32];
    let mut rows = 0u64;
    let broken = |row_id: i64, what: &str, expected: String, found: String| {
        Some(BrokenLink {
            row_id,
            what: what.to_string(),
            expected,
            found,
        })
    };
    loop {
        let page = client
            .query(
                &format!(
                    "SELECT row_id, event_id, payload, prev_hash, hash FROM {schema}.audit_log
                     WHERE row_id >= $1 ORDER BY row_id LIMIT $2"
                ),
                &[&expected_row, &PAGE_ROWS],
            )
            .await?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            let row_id: i64 = row.get(0);
            let event_id: String = row.get(1);
            let payload: String = row.get(2);
            let prev_hash: Vec<u8> = row.get(3);
            let hash: Vec<u8> = row.get(4);
            let mut found = None;
            if row_id != expected_row {
                found = broken(
                    expected_row,
                    "row missing",
                    format!("row {expected_row}"),
                    format!("row {row_id}"),
                );
            } else if prev_hash != previous {
                found = broken(row_id, "prev_hash", hex(&previous), hex(&prev_hash));
            } else {
                let computed = row_hash(&prev_hash, row_id, &event_id, &payload);
                if computed != hash {
                    found = broken(row_id, "hash", hex(&computed), hex(&hash));
                }
            }
            if let Some(link) = found {
                return Ok(Verified {
                    rows,
                    broken: Some(link),
                });
            }
            rows += 1;
            previous = hash;
            expected_row += 1;
        }
    }
    let head = client
        .query_one(
            &format!("SELECT row_id, hash FROM {schema}.audit_head WHERE id = 1"),
            &[],
        )
        .await?;
    let (head_row, head_hash): (i64, Vec<u8>) = (head.get(0), head.get(1));
    if head_row != expected_row - 1 || head_hash != previous {
        return Ok(Verified {
            rows,
            broken: Some(BrokenLink {
                row_id: head_row,
                what: "head (last row)".into(),
                expected: format!("row {head_row} hash {}", hex(&head_hash)),
                found: format!("row {} hash {}", expected_row - 1, hex(&previous)),
            }),
        });
    }
    Ok(Verified { rows, broken: None })
}
