//! Replication and operator frames: a standby following its primary's journal, and the
//! operator commands (`paycore status`, `paycore promote`) a node answers.
//!
//! A standby opens one stream per shard and sends `replica_hello` (its last record and epoch);
//! the primary answers `replica_welcome` (its epoch history for the shard) or
//! `replica_diverged` (the standby's tail after `keep_through` is not in the primary's
//! history: cut it and come back), then streams `replica_records` — journal records byte for
//! byte as the journal frames them (CRC32C each), so the standby verifies what it stores — and
//! the standby answers `replica_ack` with its durable sequence. See `docs/design.md` §16.

use crate::error::{EncodeError, ProtocolErrorKind};
use crate::view::check_shard;
use crate::wire::{Reader, Result, put_count, put_u16, put_u32, put_u64};
use paycore_engine::ShardId;

/// Most bytes of journal records in one `replica_records` frame.
pub const REPLICA_RECORDS_BYTES_MAX: usize = 8 << 20;
/// Most entries in an epoch history.
pub const EPOCH_HISTORY_MAX: usize = 4096;
/// Longest operator result document, in bytes of UTF-8 JSON.
pub const ADMIN_RESULT_BYTES_MAX: usize = 1 << 20;

/// The epoch whose primary wrote a shard's records from `first_sequence` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u64,
    pub first_sequence: u64,
}

/// An operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    /// Role, epoch, shards, replication: answered with a JSON document.
    Status,
    /// Make this standby the primary of a new epoch. Refused when the standby knows it is
    /// behind its primary, unless `force`.
    Promote { force: bool },
}

pub(crate) fn put_hello(
    out: &mut Vec<u8>,
    shard: ShardId,
    from_sequence: u64,
    last_epoch: u64,
    epoch: u64,
) -> std::result::Result<(), EncodeError> {
    check_shard(shard)?;
    put_u16(out, shard);
    put_u64(out, from_sequence);
    put_u64(out, last_epoch);
    put_u64(out, epoch);
    Ok(())
}

pub(crate) fn put_welcome(
    out: &mut Vec<u8>,
    shard: ShardId,
    epoch: u64,
    mode: u8,
    history: &[EpochStart],
) -> std::result::Result<(), EncodeError> {
    check_shard(shard)?;
    crate::view::check_count("epoch history", history.len(), EPOCH_HISTORY_MAX)?;
    put_u16(out, shard);
    put_u64(out, epoch);
    out.push(mode);
    put_count(out, history.len());
    for start in history {
        put_u64(out, start.epoch);
        put_u64(out, start.first_sequence);
    }
    Ok(())
}

pub(crate) fn read_history(r: &mut Reader<'_>) -> Result<Vec<EpochStart>> {
    let count = r.count("epoch history", EPOCH_HISTORY_MAX)?;
    let mut history = Vec::with_capacity(r.capacity(count, 16));
    for _ in 0..count {
        history.push(EpochStart {
            epoch: r.u64()?,
            first_sequence: r.u64()?,
        });
    }
    Ok(history)
}

pub(crate) fn put_records(
    out: &mut Vec<u8>,
    shard: ShardId,
    primary_durable: u64,
    records: &[u8],
) -> std::result::Result<(), EncodeError> {
    check_shard(shard)?;
    crate::view::check_count(
        "replica record bytes",
        records.len(),
        REPLICA_RECORDS_BYTES_MAX,
    )?;
    put_u16(out, shard);
    put_u64(out, primary_durable);
    // At most REPLICA_RECORDS_BYTES_MAX, checked above.
    put_u32(out, records.len() as u32);
    out.extend_from_slice(records);
    Ok(())
}

pub(crate) fn read_records(r: &mut Reader<'_>) -> Result<Vec<u8>> {
    let at = r.offset;
    let len = r.u32()? as usize;
    if len > REPLICA_RECORDS_BYTES_MAX {
        return r.fail(
            at,
            ProtocolErrorKind::TooMany {
                field: "replica record bytes",
                count: len,
                max: REPLICA_RECORDS_BYTES_MAX,
            },
        );
    }
    Ok(r.slice(len)?.to_vec())
}

pub(crate) fn put_admin(out: &mut Vec<u8>, command: &AdminCommand) {
    match command {
        AdminCommand::Status => out.push(1),
        AdminCommand::Promote { force } => {
            out.push(2);
            out.push(u8::from(*force));
        }
    }
}

pub(crate) fn read_admin(r: &mut Reader<'_>) -> Result<AdminCommand> {
    let at = r.offset;
    match r.u8()? {
        1 => Ok(AdminCommand::Status),
        2 => Ok(AdminCommand::Promote { force: r.flag()? }),
        tag => r.fail(
            at,
            ProtocolErrorKind::Tag {
                field: "admin command",
                tag,
            },
        ),
    }
}

pub(crate) fn put_admin_result(
    out: &mut Vec<u8>,
    json: &str,
) -> std::result::Result<(), EncodeError> {
    crate::view::check_count("admin result bytes", json.len(), ADMIN_RESULT_BYTES_MAX)?;
    put_u32(out, json.len() as u32);
    out.extend_from_slice(json.as_bytes());
    Ok(())
}

pub(crate) fn read_admin_result(r: &mut Reader<'_>) -> Result<String> {
    let at = r.offset;
    let len = r.u32()? as usize;
    if len > ADMIN_RESULT_BYTES_MAX {
        return r.fail(
            at,
            ProtocolErrorKind::TooMany {
                field: "admin result bytes",
                count: len,
                max: ADMIN_RESULT_BYTES_MAX,
            },
        );
    }
    let start = r.offset;
    match std::str::from_utf8(r.slice(len)?) {
        Ok(text) => Ok(text.to_owned()),
        Err(e) => r.fail(start + e.valid_up_to(), ProtocolErrorKind::MessageUtf8),
    }
}

pub(crate) fn put_snapshot_chunk(
    out: &mut Vec<u8>,
    shard: ShardId,
    sequence: u64,
    total_bytes: u64,
    offset: u64,
    bytes: &[u8],
) -> std::result::Result<(), EncodeError> {
    check_shard(shard)?;
    crate::view::check_count(
        "snapshot chunk bytes",
        bytes.len(),
        REPLICA_RECORDS_BYTES_MAX,
    )?;
    put_u16(out, shard);
    put_u64(out, sequence);
    put_u64(out, total_bytes);
    put_u64(out, offset);
    // At most REPLICA_RECORDS_BYTES_MAX, checked above.
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
    Ok(())
}
