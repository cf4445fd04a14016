//! The event stream out (issue 19): every committed event of every shard, as versioned JSON
//! (`schemas/events/`), into NATS JetStream, exactly once, gapless and in order per shard;
//! and the first consumer, a hash-chained append-only audit log in PostgreSQL.
//!
//! What it is not: a second source of truth. The journal is; events are re-derived from it
//! by a shadow engine exactly as the store flusher does (see [`publisher`] for why not the
//! event archive), and the broker sits behind the small [`sink::EventSink`] trait so a Kafka
//! sink can come later without touching the publisher.
#![forbid(unsafe_code)]

pub mod audit;
pub mod event_json;
pub mod publisher;
pub mod sink;
pub mod threads;
