//! Frames: the header, one body per kind, whole-buffer [`encode`] / [`decode`], and the
//! streaming [`FrameReader`].

use paycore_engine::codec::{decode_command, encode_command};
use paycore_engine::{Command, Event, LINKED_OPS_MAX, Op, ShardId};

use crate::error::{EncodeError, ErrorCode, ProtocolError, ProtocolErrorKind};
use crate::event::{EVENT_BYTES_MIN, encode_event, read_event};
use crate::replication::{self, AdminCommand, EpochStart};
use crate::view::{
    COMMAND_RESULT_BYTES_MIN, CommandResult, Query, QueryResult, check_count, check_shard,
    put_command_result, put_query, put_query_result, read_command_result, read_query,
    read_query_result,
};
use crate::wire::{Reader, Result, put_count, put_u16, put_u32, put_u64};
use crate::{
    AUTH_TOKEN_BYTES_MAX, BATCH_COMMANDS_MAX, CLIENT_COMMAND_BYTES_MIN, COMMAND_BYTES_MAX,
    ERROR_MESSAGE_BYTES_MAX, EVENTS_PER_FRAME_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
    PROTOCOL_VERSION, ROLE_NAME_BYTES_MAX, SUBSCRIBE_SHARDS_MAX,
};

/// The kind byte of a frame. Numbers are stable; a new kind gets a new number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    SubmitBatch = 1,
    BatchResult = 2,
    Query = 3,
    QueryResult = 4,
    Subscribe = 5,
    Events = 6,
    Error = 7,
    ReplicaHello = 8,
    ReplicaWelcome = 9,
    ReplicaRecords = 10,
    ReplicaAck = 11,
    ReplicaDiverged = 12,
    Admin = 13,
    AdminResult = 14,
    ReplicaSnapshotRequest = 15,
    ReplicaSnapshotChunk = 16,
    Authenticate = 17,
    Authenticated = 18,
}

impl FrameKind {
    pub const ALL: [FrameKind; 18] = [
        FrameKind::SubmitBatch,
        FrameKind::BatchResult,
        FrameKind::Query,
        FrameKind::QueryResult,
        FrameKind::Subscribe,
        FrameKind::Events,
        FrameKind::Error,
        FrameKind::ReplicaHello,
        FrameKind::ReplicaWelcome,
        FrameKind::ReplicaRecords,
        FrameKind::ReplicaAck,
        FrameKind::ReplicaDiverged,
        FrameKind::Admin,
        FrameKind::AdminResult,
        FrameKind::ReplicaSnapshotRequest,
        FrameKind::ReplicaSnapshotChunk,
        FrameKind::Authenticate,
        FrameKind::Authenticated,
    ];

    pub fn from_u8(value: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|k| *k as u8 == value)
    }

    /// A client (gateway, load generator, operator tool) sends this kind; the others come
    /// from the node. `error` goes both ways. A receiver answers a kind that may not come from
    /// its peer with [`ErrorCode::UNEXPECTED_FRAME`].
    pub fn sent_by_client(self) -> bool {
        matches!(
            self,
            FrameKind::SubmitBatch
                | FrameKind::Query
                | FrameKind::Subscribe
                | FrameKind::Error
                | FrameKind::ReplicaHello
                | FrameKind::ReplicaAck
                | FrameKind::Admin
                | FrameKind::ReplicaSnapshotRequest
                | FrameKind::Authenticate
        )
    }

    /// A node sends this kind.
    pub fn sent_by_node(self) -> bool {
        !matches!(
            self,
            FrameKind::SubmitBatch
                | FrameKind::Query
                | FrameKind::Subscribe
                | FrameKind::ReplicaHello
                | FrameKind::ReplicaAck
                | FrameKind::Admin
                | FrameKind::ReplicaSnapshotRequest
                | FrameKind::Authenticate
        )
    }
}

/// One message of the protocol. It travels with a request id (see [`encode`]): a client picks
/// it, the node answers with the same id (`batch_result`, `query_result`, each `events` frame
/// of a subscription, an `error` about the request); 0 is for errors tied to no request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client -> node: 1 to [`BATCH_COMMANDS_MAX`] client commands (`Command::Client` only).
    /// The node answers with one `batch_result`.
    SubmitBatch { commands: Vec<Command> },
    /// Node -> client: one result per command of the batch, in the batch's order.
    BatchResult { results: Vec<CommandResult> },
    /// Client -> node; answered by one `query_result`.
    Query(Query),
    /// Node -> client.
    QueryResult(QueryResult),
    /// Client -> node: start a subscription to the committed events of every shard the node
    /// serves. `from` holds resume positions: events of commands with sequence `>= sequence`
    /// on `shard`; a shard not listed starts from its first available record. At most one
    /// entry per shard. Answered by `events` frames with the same request id, until the
    /// connection closes.
    Subscribe { from: Vec<(ShardId, u64)> },
    /// Node -> client: events of one committed command of one shard (or a part of them when a
    /// command produced more than [`EVENTS_PER_FRAME_MAX`]). Per shard, frames come in
    /// sequence order and, within a command, in event order; shards interleave freely.
    ///
    /// `events` are the command's events `first_index .. first_index + events.len()` out of
    /// `events_total`; the command's events are complete when that range reaches
    /// `events_total`. A frame with no events (and `first_index = events_total = 0`) is a
    /// progress mark: every command of `shard` up to `sequence` has been delivered (the node
    /// sends one after a run of commands without events, so a consumer's resume position
    /// advances); commands without events are otherwise not sent.
    Events {
        shard: ShardId,
        sequence: u64,
        timestamp_ns: u64,
        first_index: u32,
        events_total: u32,
        events: Vec<Event>,
    },
    /// Either way: the request (or, with request id 0, the connection) failed. The sender
    /// closes the connection after it when [`ErrorCode::closes_connection`] says so.
    Error { code: ErrorCode, message: String },
    /// Standby -> primary, first frame of a shard's replication stream: the standby's next
    /// wanted record, the epoch of its last record (0 when it has none) and its node epoch.
    ReplicaHello {
        shard: ShardId,
        from_sequence: u64,
        last_epoch: u64,
        epoch: u64,
    },
    /// Primary -> standby: accepted; the primary's epoch, its replication mode (0 off,
    /// 1 async, 2 sync) and the shard's epoch history.
    ReplicaWelcome {
        shard: ShardId,
        epoch: u64,
        mode: u8,
        history: Vec<EpochStart>,
    },
    /// Primary -> standby: whole journal records (the journal's framing, CRC32C each), in
    /// sequence order; `primary_durable` is the primary's durable sequence when sent.
    ReplicaRecords {
        shard: ShardId,
        primary_durable: u64,
        records: Vec<u8>,
    },
    /// Standby -> primary: every record up to `durable_sequence` is durable on the standby.
    ReplicaAck {
        shard: ShardId,
        durable_sequence: u64,
    },
    /// Primary -> standby: the standby's records after `keep_through` are not in the history
    /// of `epoch`; it must cut them (backed up) before following.
    ReplicaDiverged {
        shard: ShardId,
        epoch: u64,
        keep_through: u64,
    },
    /// Operator -> node.
    Admin(AdminCommand),
    /// Node -> operator: a JSON document (status, or what a promotion did).
    AdminResult { json: String },
    /// Standby -> primary: send the shard's newest snapshot (a new or far-behind standby
    /// whose next record the primary's journal no longer holds).
    ReplicaSnapshotRequest { shard: ShardId },
    /// Primary -> standby: `bytes` at `offset` of the snapshot file taken at `sequence`,
    /// `total_bytes` long; chunks come in order and the last one ends at `total_bytes`.
    ReplicaSnapshotChunk {
        shard: ShardId,
        sequence: u64,
        total_bytes: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Client -> node: present a credential (at most [`AUTH_TOKEN_BYTES_MAX`] bytes); the
    /// connection takes the role the node gives that credential. Answered by `authenticated`,
    /// or by an `unauthorized` error (the connection stays, with the role it had).
    Authenticate { token: Vec<u8> },
    /// Node -> client: the connection's role from now on (e.g. `replica`).
    Authenticated { role: String },
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::SubmitBatch { .. } => FrameKind::SubmitBatch,
            Frame::BatchResult { .. } => FrameKind::BatchResult,
            Frame::Query(_) => FrameKind::Query,
            Frame::QueryResult(_) => FrameKind::QueryResult,
            Frame::Subscribe { .. } => FrameKind::Subscribe,
            Frame::Events { .. } => FrameKind::Events,
            Frame::Error { .. } => FrameKind::Error,
            Frame::ReplicaHello { .. } => FrameKind::ReplicaHello,
            Frame::ReplicaWelcome { .. } => FrameKind::ReplicaWelcome,
            Frame::ReplicaRecords { .. } => FrameKind::ReplicaRecords,
            Frame::ReplicaAck { .. } => FrameKind::ReplicaAck,
            Frame::ReplicaDiverged { .. } => FrameKind::ReplicaDiverged,
            Frame::Admin(_) => FrameKind::Admin,
            Frame::AdminResult { .. } => FrameKind::AdminResult,
            Frame::ReplicaSnapshotRequest { .. } => FrameKind::ReplicaSnapshotRequest,
            Frame::ReplicaSnapshotChunk { .. } => FrameKind::ReplicaSnapshotChunk,
            Frame::Authenticate { .. } => FrameKind::Authenticate,
            Frame::Authenticated { .. } => FrameKind::Authenticated,
        }
    }

    /// An error frame; the message is cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes (at a character
    /// boundary) so that an error frame always encodes.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_BYTES_MAX {
            let mut end = ERROR_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Frame::Error { code, message }
    }
}

/// Appends the frame to `out`: `length:u32 version:u8 kind:u8 request_id:u64 body`, where
/// `length` counts the bytes after itself.
///
/// Checks every rule the decoder enforces, so that a frame that encodes also decodes (to an
/// equal frame); on an error `out` is left as it was.
pub fn encode(
    frame: &Frame,
    request_id: u64,
    out: &mut Vec<u8>,
) -> std::result::Result<(), EncodeError> {
    let start = out.len();
    let result = encode_inner(frame, request_id, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_inner(
    frame: &Frame,
    request_id: u64,
    out: &mut Vec<u8>,
    start: usize,
) -> std::result::Result<(), EncodeError> {
    put_u32(out, 0); // the length, patched below
    out.push(PROTOCOL_VERSION);
    out.push(frame.kind() as u8);
    put_u64(out, request_id);
    match frame {
        Frame::SubmitBatch { commands } => put_batch(out, commands)?,
        Frame::BatchResult { results } => {
            if results.is_empty() || results.len() > BATCH_COMMANDS_MAX {
                return Err(EncodeError::BatchSize(results.len()));
            }
            put_count(out, results.len());
            for result in results {
                put_command_result(out, result);
            }
        }
        Frame::Query(query) => put_query(out, query)?,
        Frame::QueryResult(result) => put_query_result(out, result)?,
        Frame::Subscribe { from } => {
            check_count("subscribe positions", from.len(), SUBSCRIBE_SHARDS_MAX)?;
            let mut seen = ShardSet::default();
            put_count(out, from.len());
            for (shard, sequence) in from {
                check_shard(*shard)?;
                if !seen.insert(*shard) {
                    return Err(EncodeError::DuplicateShard(*shard));
                }
                put_u16(out, *shard);
                put_u64(out, *sequence);
            }
        }
        Frame::Events {
            shard,
            sequence,
            timestamp_ns,
            first_index,
            events_total,
            events,
        } => {
            check_shard(*shard)?;
            check_count("events", events.len(), EVENTS_PER_FRAME_MAX)?;
            if !event_range_valid(*first_index, *events_total, events.len()) {
                return Err(EncodeError::EventRange);
            }
            put_u16(out, *shard);
            put_u64(out, *sequence);
            put_u64(out, *timestamp_ns);
            put_u32(out, *first_index);
            put_u32(out, *events_total);
            put_count(out, events.len());
            for event in events {
                encode_event(event, out);
            }
        }
        Frame::Error { code, message } => {
            check_count(
                "error message bytes",
                message.len(),
                ERROR_MESSAGE_BYTES_MAX,
            )?;
            put_u16(out, code.0);
            put_count(out, message.len());
            out.extend_from_slice(message.as_bytes());
        }
        Frame::ReplicaHello {
            shard,
            from_sequence,
            last_epoch,
            epoch,
        } => replication::put_hello(out, *shard, *from_sequence, *last_epoch, *epoch)?,
        Frame::ReplicaWelcome {
            shard,
            epoch,
            mode,
            history,
        } => replication::put_welcome(out, *shard, *epoch, *mode, history)?,
        Frame::ReplicaRecords {
            shard,
            primary_durable,
            records,
        } => replication::put_records(out, *shard, *primary_durable, records)?,
        Frame::ReplicaAck {
            shard,
            durable_sequence,
        } => {
            check_shard(*shard)?;
            put_u16(out, *shard);
            put_u64(out, *durable_sequence);
        }
        Frame::ReplicaDiverged {
            shard,
            epoch,
            keep_through,
        } => {
            check_shard(*shard)?;
            put_u16(out, *shard);
            put_u64(out, *epoch);
            put_u64(out, *keep_through);
        }
        Frame::Admin(command) => replication::put_admin(out, command),
        Frame::AdminResult { json } => replication::put_admin_result(out, json)?,
        Frame::ReplicaSnapshotRequest { shard } => {
            check_shard(*shard)?;
            put_u16(out, *shard);
        }
        Frame::Authenticate { token } => {
            check_count("auth token bytes", token.len(), AUTH_TOKEN_BYTES_MAX)?;
            put_count(out, token.len());
            out.extend_from_slice(token);
        }
        Frame::Authenticated { role } => {
            check_count("role name bytes", role.len(), ROLE_NAME_BYTES_MAX)?;
            put_count(out, role.len());
            out.extend_from_slice(role.as_bytes());
        }
        Frame::ReplicaSnapshotChunk {
            shard,
            sequence,
            total_bytes,
            offset,
            bytes,
        } => replication::put_snapshot_chunk(out, *shard, *sequence, *total_bytes, *offset, bytes)?,
    }
    let bytes = out.len() - start;
    if bytes > FRAME_BYTES_MAX {
        return Err(EncodeError::FrameTooLarge(bytes));
    }
    // bytes - 4 <= FRAME_BYTES_MAX fits in u32.
    let length = ((bytes - 4) as u32).to_le_bytes();
    out[start..start + 4].copy_from_slice(&length);
    Ok(())
}

/// `count:u16 { len:u32 command:[u8; len] }{count}`, each command in the engine codec's
/// encoding (the bytes a journal record holds); the length lets a reader step over a command
/// without decoding it.
fn put_batch(out: &mut Vec<u8>, commands: &[Command]) -> std::result::Result<(), EncodeError> {
    if commands.is_empty() || commands.len() > BATCH_COMMANDS_MAX {
        return Err(EncodeError::BatchSize(commands.len()));
    }
    put_count(out, commands.len());
    for (index, command) in commands.iter().enumerate() {
        let Command::Client { op, .. } = command else {
            return Err(EncodeError::NotClientCommand { index });
        };
        // The engine codec asserts these; check them first so encoding never panics.
        if let Op::Linked(ops) = op
            && (ops.len() > LINKED_OPS_MAX || ops.iter().any(|op| matches!(op, Op::Linked(_))))
        {
            return Err(EncodeError::LinkedGroup { index });
        }
        let at = out.len();
        put_u32(out, 0);
        encode_command(command, out);
        let bytes = out.len() - at - 4;
        if bytes > COMMAND_BYTES_MAX {
            return Err(EncodeError::CommandTooLong { index, bytes });
        }
        // bytes <= COMMAND_BYTES_MAX fits in u32.
        out[at..at + 4].copy_from_slice(&(bytes as u32).to_le_bytes());
    }
    Ok(())
}

/// `first_index + count <= total`, and a frame without events is a progress mark (0, 0).
fn event_range_valid(first_index: u32, events_total: u32, count: usize) -> bool {
    if count == 0 {
        return first_index == 0 && events_total == 0;
    }
    u64::from(first_index) + count as u64 <= u64::from(events_total)
}

/// Shards seen so far (a bitmap of [`paycore_engine::SHARD_COUNT_MAX`] bits).
#[derive(Default)]
struct ShardSet([u64; 16]);

impl ShardSet {
    /// Adds a shard below 1024; false when it was there already.
    fn insert(&mut self, shard: ShardId) -> bool {
        let (word, bit) = (usize::from(shard / 64) % 16, shard % 64);
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }
}

/// Decodes exactly one frame, which must fill `bytes`: returns its request id and the frame.
///
/// Total: any input gives a frame or an error, never a panic. The length field is checked
/// against [`FRAME_BYTES_MAX`] before anything else, and no count makes the decoder reserve
/// more than the bytes present could hold.
pub fn decode(bytes: &[u8]) -> std::result::Result<(u64, Frame), ProtocolError> {
    match frame_bytes(bytes, FRAME_BYTES_MAX)? {
        None => Err(ProtocolError {
            offset: bytes.len(),
            request_id: header_request_id(bytes),
            kind: ProtocolErrorKind::Truncated,
        }),
        Some(len) if len < bytes.len() => Err(ProtocolError {
            offset: len,
            request_id: header_request_id(bytes),
            kind: ProtocolErrorKind::TrailingBytes,
        }),
        Some(_) => decode_complete(bytes),
    }
}

/// The size of the frame at the start of `bytes`, once it is all there: `Ok(None)` while more
/// bytes are needed. Fails as soon as the bytes present show the frame is bad: a length over
/// `frame_bytes_max` or shorter than a header (from 4 bytes on), an unsupported version (from
/// 5), an unknown kind (from 6). `frame_bytes_max` is at most [`FRAME_BYTES_MAX`]; a node may
/// choose less.
pub fn frame_bytes(
    bytes: &[u8],
    frame_bytes_max: usize,
) -> std::result::Result<Option<usize>, ProtocolError> {
    let fail = |offset, kind| ProtocolError {
        offset,
        request_id: header_request_id(bytes),
        kind,
    };
    let Some(length) = bytes.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
        return Ok(None);
    };
    let total = 4 + u64::from(length);
    let max = frame_bytes_max.min(FRAME_BYTES_MAX);
    if total > max as u64 {
        let kind = ProtocolErrorKind::FrameTooLarge { bytes: total, max };
        return Err(fail(0, kind));
    }
    if total < FRAME_HEADER_BYTES as u64 {
        return Err(fail(0, ProtocolErrorKind::FrameTooShort { length }));
    }
    if let Some(&version) = bytes.get(4)
        && version != PROTOCOL_VERSION
    {
        return Err(fail(4, ProtocolErrorKind::UnsupportedVersion(version)));
    }
    if let Some(&kind) = bytes.get(5)
        && FrameKind::from_u8(kind).is_none()
    {
        return Err(fail(5, ProtocolErrorKind::UnknownKind(kind)));
    }
    // total <= FRAME_BYTES_MAX fits in usize.
    let total = total as usize;
    Ok((bytes.len() >= total).then_some(total))
}

fn header_request_id(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(6..FRAME_HEADER_BYTES)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
}

/// Decodes a frame whose header `frame_bytes` accepted and whose bytes are all in `frame`.
fn decode_complete(frame: &[u8]) -> std::result::Result<(u64, Frame), ProtocolError> {
    // `frame_bytes` accepted at least a whole header, so the request id is there.
    let request_id = header_request_id(frame);
    match decode_body(frame) {
        Ok(decoded) => Ok((request_id.unwrap_or(0), decoded)),
        Err(mut error) => {
            error.request_id = request_id;
            Err(error)
        }
    }
}

fn decode_body(frame: &[u8]) -> Result<Frame> {
    let mut r = Reader::new(frame, 5);
    let kind_byte = r.u8()?;
    r.skip(8)?; // the request id
    let Some(kind) = FrameKind::from_u8(kind_byte) else {
        return r.fail(5, ProtocolErrorKind::UnknownKind(kind_byte));
    };
    let decoded = match kind {
        FrameKind::SubmitBatch => Frame::SubmitBatch {
            commands: read_batch(&mut r)?,
        },
        FrameKind::BatchResult => {
            let at = r.offset;
            let count = usize::from(r.u16()?);
            if count == 0 || count > BATCH_COMMANDS_MAX {
                return r.fail(at, ProtocolErrorKind::BatchSize(count));
            }
            let mut results = Vec::with_capacity(r.capacity(count, COMMAND_RESULT_BYTES_MIN));
            for _ in 0..count {
                results.push(read_command_result(&mut r)?);
            }
            Frame::BatchResult { results }
        }
        FrameKind::Query => Frame::Query(read_query(&mut r)?),
        FrameKind::QueryResult => Frame::QueryResult(read_query_result(&mut r)?),
        FrameKind::Subscribe => {
            let count = r.count("subscribe positions", SUBSCRIBE_SHARDS_MAX)?;
            let mut from = Vec::with_capacity(r.capacity(count, 10));
            let mut seen = ShardSet::default();
            for _ in 0..count {
                let at = r.offset;
                let shard = r.shard()?;
                if !seen.insert(shard) {
                    return r.fail(at, ProtocolErrorKind::DuplicateShard(shard));
                }
                from.push((shard, r.u64()?));
            }
            Frame::Subscribe { from }
        }
        FrameKind::Events => {
            let shard = r.shard()?;
            let sequence = r.u64()?;
            let timestamp_ns = r.u64()?;
            let range_at = r.offset;
            let first_index = r.u32()?;
            let events_total = r.u32()?;
            let count = r.count("events", EVENTS_PER_FRAME_MAX)?;
            if !event_range_valid(first_index, events_total, count) {
                return r.fail(range_at, ProtocolErrorKind::EventRange);
            }
            let mut events = Vec::with_capacity(r.capacity(count, EVENT_BYTES_MIN));
            for _ in 0..count {
                events.push(read_event(&mut r)?);
            }
            Frame::Events {
                shard,
                sequence,
                timestamp_ns,
                first_index,
                events_total,
                events,
            }
        }
        FrameKind::Error => {
            let code = ErrorCode(r.u16()?);
            let len = r.count("error message bytes", ERROR_MESSAGE_BYTES_MAX)?;
            let at = r.offset;
            let message = match std::str::from_utf8(r.slice(len)?) {
                Ok(text) => text.to_owned(),
                Err(e) => return r.fail(at + e.valid_up_to(), ProtocolErrorKind::MessageUtf8),
            };
            Frame::Error { code, message }
        }
        FrameKind::ReplicaHello => Frame::ReplicaHello {
            shard: r.shard()?,
            from_sequence: r.u64()?,
            last_epoch: r.u64()?,
            epoch: r.u64()?,
        },
        FrameKind::ReplicaWelcome => Frame::ReplicaWelcome {
            shard: r.shard()?,
            epoch: r.u64()?,
            mode: r.u8()?,
            history: replication::read_history(&mut r)?,
        },
        FrameKind::ReplicaRecords => Frame::ReplicaRecords {
            shard: r.shard()?,
            primary_durable: r.u64()?,
            records: replication::read_records(&mut r)?,
        },
        FrameKind::ReplicaAck => Frame::ReplicaAck {
            shard: r.shard()?,
            durable_sequence: r.u64()?,
        },
        FrameKind::ReplicaDiverged => Frame::ReplicaDiverged {
            shard: r.shard()?,
            epoch: r.u64()?,
            keep_through: r.u64()?,
        },
        FrameKind::Admin => Frame::Admin(replication::read_admin(&mut r)?),
        FrameKind::AdminResult => Frame::AdminResult {
            json: replication::read_admin_result(&mut r)?,
        },
        FrameKind::ReplicaSnapshotRequest => Frame::ReplicaSnapshotRequest { shard: r.shard()? },
        FrameKind::Authenticate => {
            let len = r.count("auth token bytes", AUTH_TOKEN_BYTES_MAX)?;
            Frame::Authenticate {
                token: r.slice(len)?.to_vec(),
            }
        }
        FrameKind::Authenticated => {
            let len = r.count("role name bytes", ROLE_NAME_BYTES_MAX)?;
            let at = r.offset;
            match std::str::from_utf8(r.slice(len)?) {
                Ok(role) => Frame::Authenticated {
                    role: role.to_owned(),
                },
                Err(e) => return r.fail(at + e.valid_up_to(), ProtocolErrorKind::MessageUtf8),
            }
        }
        FrameKind::ReplicaSnapshotChunk => {
            let shard = r.shard()?;
            let sequence = r.u64()?;
            let total_bytes = r.u64()?;
            let offset = r.u64()?;
            let bytes = replication::read_records(&mut r)?;
            Frame::ReplicaSnapshotChunk {
                shard,
                sequence,
                total_bytes,
                offset,
                bytes,
            }
        }
    };
    if r.remaining() != 0 {
        return r.fail(r.offset, ProtocolErrorKind::TrailingBytes);
    }
    Ok(decoded)
}

fn read_batch(r: &mut Reader<'_>) -> Result<Vec<Command>> {
    let at = r.offset;
    let count = usize::from(r.u16()?);
    if count == 0 || count > BATCH_COMMANDS_MAX {
        return r.fail(at, ProtocolErrorKind::BatchSize(count));
    }
    let mut commands = Vec::with_capacity(r.capacity(count, 4 + CLIENT_COMMAND_BYTES_MIN));
    for _ in 0..count {
        let len_at = r.offset;
        let len = r.u32()?;
        if len == 0 || len as usize > COMMAND_BYTES_MAX {
            return r.fail(len_at, ProtocolErrorKind::CommandLength(len));
        }
        let start = r.offset;
        let command = match decode_command(r.slice(len as usize)?) {
            Ok(command) => command,
            Err(e) => return r.fail(start + e.offset, ProtocolErrorKind::Command(e.kind)),
        };
        if !matches!(command, Command::Client { .. }) {
            return r.fail(start, ProtocolErrorKind::NotClientCommand);
        }
        commands.push(command);
    }
    Ok(commands)
}

/// Cuts complete frames out of a byte stream that arrives in pieces (a QUIC stream).
///
/// Append what the transport delivers with [`FrameReader::extend`], then call
/// [`FrameReader::next_frame`] until it returns `Ok(None)`. The buffer holds at most the
/// frames not yet taken plus one partial frame, and a partial frame is at most the reader's
/// limit: a header announcing more fails at once, before its bytes arrive. After an error the
/// reader keeps returning it; send [`ProtocolError::to_frame`] and close the connection.
#[derive(Debug)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already returned as frames.
    consumed: usize,
    frame_bytes_max: usize,
    failed: Option<ProtocolError>,
}

/// Capacity the buffer gives back once it is empty (after a large frame).
const IDLE_BUFFER_BYTES_MAX: usize = 1 << 20;

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader that accepts frames up to [`FRAME_BYTES_MAX`].
    pub fn new() -> FrameReader {
        FrameReader::with_frame_bytes_max(FRAME_BYTES_MAX)
    }

    /// A reader that refuses frames over `frame_bytes_max` (itself capped at
    /// [`FRAME_BYTES_MAX`]) with `frame_too_large`: a node may bound each connection's buffer
    /// below the protocol's limit.
    pub fn with_frame_bytes_max(frame_bytes_max: usize) -> FrameReader {
        FrameReader {
            buffer: Vec::new(),
            consumed: 0,
            frame_bytes_max: frame_bytes_max.min(FRAME_BYTES_MAX),
            failed: None,
        }
    }

    /// Appends bytes received from the peer.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame with its request id, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> std::result::Result<Option<(u64, Frame)>, ProtocolError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let pending = self.buffer.get(self.consumed..).unwrap_or(&[]);
        let result = match frame_bytes(pending, self.frame_bytes_max) {
            Ok(None) => Ok(None),
            Ok(Some(len)) => {
                let decoded = pending.get(..len).map(decode_complete);
                self.consumed += len;
                match decoded {
                    Some(Ok(frame)) => Ok(Some(frame)),
                    Some(Err(error)) => Err(error),
                    None => Ok(None), // frame_bytes said the frame is all there
                }
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            self.failed = Some(error);
        }
        if self.consumed == self.buffer.len() {
            self.buffer.clear();
            self.consumed = 0;
            if self.buffer.capacity() > IDLE_BUFFER_BYTES_MAX {
                self.buffer.shrink_to(IDLE_BUFFER_BYTES_MAX / 16);
            }
        }
        result
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }
}
