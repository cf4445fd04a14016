//! # paycore-protocol: the binary wire format between paycore nodes and their clients
//!
//! Gateways, the load generator and operator tools talk to a paycore node in **frames**:
//! length-prefixed, versioned, little-endian messages, each with a request id. A client submits
//! batches of up to [`BATCH_COMMANDS_MAX`] commands and gets one result per command, in order;
//! it queries wallets, holds, outcomes and the node's status; and it subscribes to the committed
//! events of every shard from resume positions, so that it can reconnect without gaps. The
//! format is written down in `docs/design.md` §13 and in the docs of [`Frame`].
//!
//! What this crate **is**: pure functions over byte buffers — [`encode`], [`decode`], and
//! [`FrameReader`], which cuts frames out of a stream that arrives in pieces. Decoding is total
//! (any input gives a frame or a [`ProtocolError`] naming the byte offset, never a panic) and
//! allocation-bounded (a length over [`FRAME_BYTES_MAX`] is refused before its bytes are
//! buffered, and no count field reserves more than the bytes present can hold). Whatever
//! decodes re-encodes to the same bytes. Commands and outcomes travel in the engine codec's
//! encoding (`paycore_engine::codec`); events in this crate's ([`encode_event`]).
//!
//! What it is **not**: no transport (QUIC, TLS, connections and flow control belong to the
//! node and its clients), no async, no I/O, no routing of commands to shards, no
//! authentication.

#![forbid(unsafe_code)]

mod error;
mod event;
mod frame;
mod replication;
mod view;
mod wire;

pub use error::{EncodeError, ErrorCode, ProtocolError, ProtocolErrorKind};
pub use event::{EVENT_BYTES_MAX, EVENT_BYTES_MIN, decode_event, encode_event};
pub use frame::{Frame, FrameKind, FrameReader, decode, encode, frame_bytes};
pub use replication::{
    ADMIN_RESULT_BYTES_MAX, AdminCommand, EPOCH_HISTORY_MAX, EpochStart, REPLICA_RECORDS_BYTES_MAX,
};
pub use view::{CommandResult, HoldView, Query, QueryResult, ShardStatus, StatusView, WalletView};

/// The protocol version this crate speaks (the header's version byte).
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of a frame header: `length:u32 version:u8 kind:u8 request_id:u64`.
pub const FRAME_HEADER_BYTES: usize = 14;

/// Largest frame, in bytes, its length field included. The largest valid batch
/// ([`BATCH_COMMANDS_MAX`] commands of [`COMMAND_BYTES_MAX`]) fits, so a client that counts
/// commands never meets this limit; typical batches are far smaller (8189 transfers with
/// 36-byte keys take about 0.65 MB). A node may set a lower limit per connection
/// ([`FrameReader::with_frame_bytes_max`]).
pub const FRAME_BYTES_MAX: usize = 32 << 20;

/// Most commands in one batch (TigerBeetle's number: 8189 of its 128-byte transfers fill its
/// 1 MiB message).
pub const BATCH_COMMANDS_MAX: usize = 8189;

/// Largest encoded command in a batch, in bytes. The engine codec's longest client command is
/// 3459 bytes (a 255-byte key and a linked group of 64 exchanges).
pub const COMMAND_BYTES_MAX: usize = 4000;

/// Shortest encoded client command: tag, key length, a 1-byte key, an empty linked group.
pub(crate) const CLIENT_COMMAND_BYTES_MIN: usize = 5;

/// Most wallets in one query result: a user has at most one open wallet per currency, and a
/// shard registers at most this many currencies.
pub const QUERY_RESULT_WALLETS_MAX: usize = paycore_engine::currency::CURRENCIES_MAX;

/// Most events in one `events` frame (about 270 KiB at [`EVENT_BYTES_MAX`]); a command with
/// more events is sent in several frames.
pub const EVENTS_PER_FRAME_MAX: usize = 4096;

/// Most resume positions in a `subscribe` frame: one per shard.
pub const SUBSCRIBE_SHARDS_MAX: usize = paycore_engine::SHARD_COUNT_MAX as usize;

/// Most shards in a status result.
pub const STATUS_SHARDS_MAX: usize = paycore_engine::SHARD_COUNT_MAX as usize;

/// Longest error message, in bytes of UTF-8.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Longest credential an `authenticate` frame carries.
pub const AUTH_TOKEN_BYTES_MAX: usize = 128;

/// Longest role name an `authenticated` frame carries.
pub const ROLE_NAME_BYTES_MAX: usize = 32;

// Every count fits its u16 field, and the largest batch fits a frame.
const _: () = {
    assert!(BATCH_COMMANDS_MAX <= u16::MAX as usize);
    assert!(QUERY_RESULT_WALLETS_MAX <= u16::MAX as usize);
    assert!(EVENTS_PER_FRAME_MAX <= u16::MAX as usize);
    assert!(ERROR_MESSAGE_BYTES_MAX <= u16::MAX as usize);
    assert!(
        FRAME_HEADER_BYTES + 2 + BATCH_COMMANDS_MAX * (4 + COMMAND_BYTES_MAX) <= FRAME_BYTES_MAX
    );
    assert!(FRAME_BYTES_MAX - 4 <= u32::MAX as usize);
};
