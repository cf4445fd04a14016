//! Divergent tails: the records a returning old primary wrote after the point where the new
//! primary's history took over (see `docs/design.md`, hot standby).
//!
//! In `sync` replication those records were never acknowledged (a reply needs the standby's
//! ack), so cutting them loses nothing a client saw. They are never silently dropped: every
//! segment touched is copied beside itself first (`<segment>.divergent-after-<seq>`), and the
//! caller reports what was cut.

use std::path::PathBuf;

use crate::error::JournalError;
use crate::format::{Parsed, SEGMENT_HEADER_BYTES, parse_record};
use crate::reader::JournalReader;
use crate::recovery::{RecoveryOptions, recover};
use crate::storage::{SegmentFile, Storage};

/// What [`truncate_after`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivergentTail {
    /// Records `first_sequence..=last_sequence` were cut.
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Copies of every segment touched, made before cutting.
    pub backups: Vec<PathBuf>,
}

/// Sequence and epoch of the last valid record of the journal (`None` when empty).
pub fn last_record<S: Storage + Clone>(
    storage: &S,
    shard: u16,
) -> Result<Option<(u64, u64)>, JournalError> {
    let recovered = recover(&mut storage.clone(), shard, 1, RecoveryOptions::default())?;
    if recovered.segments.is_empty() {
        return Ok(None);
    }
    let mut reader = JournalReader::new(storage.clone(), recovered.last_sequence, None);
    let mut last = None;
    reader.read(1, |record| last = Some((record.sequence, record.epoch)))?;
    Ok(last)
}

/// Cuts every record after `keep_through` (backing up each segment touched), so that the next
/// record appended is `keep_through + 1`. Returns `None` when nothing lies after it.
pub fn truncate_after<S: Storage + Clone>(
    storage: &mut S,
    shard: u16,
    keep_through: u64,
) -> Result<Option<DivergentTail>, JournalError> {
    let recovered = recover(storage, shard, 1, RecoveryOptions::default())?;
    if recovered.segments.is_empty() || recovered.last_sequence <= keep_through {
        return Ok(None);
    }
    let cut_from = keep_through + 1;
    if cut_from < recovered.first_sequence {
        return Err(JournalError::Corrupt {
            path: storage.path(&recovered.segments[0].name),
            offset: 0,
            reason: format!(
                "cannot keep through {keep_through}: the journal starts at {}",
                recovered.first_sequence
            ),
        });
    }
    let containing = recovered
        .segments
        .iter()
        .rposition(|s| s.first_sequence <= cut_from)
        .expect("the first segment starts at or before cut_from");
    let mut backups = Vec::new();
    let suffix = format!("divergent-after-{keep_through}");
    for segment in &recovered.segments[containing..] {
        let path = storage.path(&segment.name);
        backups.push(
            storage
                .backup(&segment.name, &suffix)
                .map_err(JournalError::io(path))?,
        );
    }
    let name = recovered.segments[containing].name.clone();
    let path = storage.path(&name);
    let mut file = storage
        .open(&name)
        .map_err(JournalError::io(path.clone()))?;
    let cut_offset = file.with_bytes(|bytes| {
        let mut offset = SEGMENT_HEADER_BYTES;
        while let Parsed::Record(record) = parse_record(&bytes[offset..]) {
            if record.sequence >= cut_from {
                return Some(offset);
            }
            offset += record.bytes;
        }
        None
    });
    let Some(cut_offset) = cut_offset else {
        return Err(JournalError::Corrupt {
            path,
            offset: 0,
            reason: format!("record {cut_from} not found in its segment"),
        });
    };
    if cut_offset == SEGMENT_HEADER_BYTES && containing > 0 {
        drop(file);
        storage.remove(&name).map_err(JournalError::io(path))?;
    } else {
        let len = file.len();
        file.write(cut_offset, &vec![0u8; len - cut_offset]);
        file.sync(cut_offset, len - cut_offset)
            .map_err(JournalError::io(path))?;
    }
    for segment in &recovered.segments[containing + 1..] {
        let path = storage.path(&segment.name);
        storage
            .remove(&segment.name)
            .map_err(JournalError::io(path))?;
    }
    tracing::warn!(
        shard,
        first = cut_from,
        last = recovered.last_sequence,
        "journal: cut a divergent tail (backed up beside the segments)"
    );
    Ok(Some(DivergentTail {
        first_sequence: cut_from,
        last_sequence: recovered.last_sequence,
        backups,
    }))
}
