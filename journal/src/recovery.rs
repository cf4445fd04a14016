//! Recovery: validate every record on start, cut an unacknowledged torn tail, refuse damage.
//!
//! Segments are scanned in sequence order; every record's checksums, marks, padding and
//! sequence number are checked. The first record that does not check out at offset X is
//! classified:
//! - **torn tail** when it is in the newest segment and the written bytes of that segment end
//!   inside it (the last non-zero byte lies before the record's expected end). A crash cut that
//!   write short; its batch was never synced, so never acknowledged. The tail is zeroed, synced,
//!   and the start-up log says so.
//! - **corruption** otherwise: a record whose every byte is written yet does not check out (a bit
//!   flip; the marks at the end of the header and of the record have two bits set in every byte,
//!   so one flip cannot make a complete record look cut short), a gap in the sequence, non-zero
//!   bytes after the end of the data, a bad segment header. Recovery refuses, naming the file and
//!   byte offset. With `truncate_corruption` (an operator decision, after a backup) the journal
//!   is cut at that point: the damaged segment is first copied aside, later segments removed.

use crate::error::JournalError;
use crate::format::{
    InvalidRecord, Parsed, SEGMENT_HEADER_BYTES, SegmentHeader, parse_record, parse_segment_name,
};
use crate::storage::{SegmentFile, Storage};
use crate::writer::SegmentInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryOptions {
    /// Cut the journal at the first corruption instead of refusing to start. The damaged file
    /// is copied to `<name>.corrupt-<offset>` first.
    pub truncate_corruption: bool,
}

/// What recovery found: enough for a writer to continue and for a reader to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub segments: Vec<SegmentInfo>,
    /// First sequence in the journal (0 when empty).
    pub first_sequence: u64,
    /// Last valid sequence (0 when empty).
    pub last_sequence: u64,
    pub next_sequence: u64,
    /// Offset just past the last valid record of the newest segment.
    pub end_offset: usize,
    /// What was cut, if anything.
    pub truncation: Option<Truncation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub file: String,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
    /// A torn tail (never acknowledged) rather than operator-approved corruption cut.
    pub torn_tail: bool,
}

/// Scans the journal in `storage` for `shard`. An empty folder is an empty journal whose first
/// record will be `start_sequence`.
pub fn recover<S: Storage>(
    storage: &mut S,
    shard: u16,
    start_sequence: u64,
    options: RecoveryOptions,
) -> Result<Recovered, JournalError> {
    let listing = storage.list().map_err(JournalError::io(storage.path("")))?;
    for leftover in listing.iter().filter(|n| n.ends_with(".creating")) {
        // A segment whose creation did not finish: never held a record.
        storage
            .remove(leftover)
            .map_err(JournalError::io(storage.path(leftover)))?;
    }
    let mut names: Vec<(u64, String)> = listing
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|s| (s, n)))
        .collect();
    names.sort();

    let mut recovered = Recovered {
        segments: Vec::new(),
        first_sequence: 0,
        last_sequence: 0,
        next_sequence: start_sequence.max(1),
        end_offset: 0,
        truncation: None,
    };
    let count = names.len();
    for (index, (first_sequence, name)) in names.iter().enumerate() {
        let is_last = index + 1 == count;
        let path = storage.path(name);
        let mut file = storage.open(name).map_err(JournalError::io(path.clone()))?;
        let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };

        let header = file.with_bytes(SegmentHeader::decode);
        let Some(header) = header else {
            if is_last
                && file.with_bytes(|b| last_non_zero(b).is_none_or(|at| at < SEGMENT_HEADER_BYTES))
            {
                // Created, but the header was never (completely) synced: it never held a record.
                tracing::warn!(file = %path.display(), "removing an empty segment without a header");
                drop(file);
                storage
                    .remove(name)
                    .map_err(JournalError::io(path.clone()))?;
                break;
            }
            let error = corrupt(0, "segment header invalid".into());
            return cut_or_refuse(
                storage,
                &mut recovered,
                name,
                0,
                error,
                options,
                &names[index..],
            );
        };
        if header.shard != shard {
            return Err(JournalError::WrongShard {
                path,
                found: header.shard,
                expected: shard,
            });
        }
        let misplaced = if header.first_sequence != *first_sequence {
            Some(corrupt(
                24,
                format!("header says first sequence {}", header.first_sequence),
            ))
        } else if index > 0 && *first_sequence != recovered.next_sequence {
            let expected = recovered.next_sequence;
            Some(corrupt(
                0,
                format!("segment starts at {first_sequence}, {expected} expected"),
            ))
        } else {
            None
        };
        if let Some(error) = misplaced {
            return cut_or_refuse(
                storage,
                &mut recovered,
                name,
                0,
                error,
                options,
                &names[index..],
            );
        }
        if index == 0 {
            recovered.first_sequence = *first_sequence;
            recovered.next_sequence = *first_sequence;
        }
        recovered.segments.push(SegmentInfo {
            name: name.clone(),
            first_sequence: *first_sequence,
        });

        let mut expected = recovered.next_sequence;
        let outcome = file.with_bytes(|bytes| scan(bytes, &mut expected, is_last));
        recovered.next_sequence = expected;
        recovered.last_sequence = expected - 1;
        match outcome {
            Scan::Clean { end } => recovered.end_offset = end,
            Scan::TornTail {
                offset,
                written_end,
                reason,
            } => {
                let bytes = written_end - offset;
                file.write(offset, &vec![0u8; bytes]);
                file.sync(offset, bytes)
                    .map_err(JournalError::io(path.clone()))?;
                tracing::warn!(
                    file = %path.display(), offset, bytes, %reason,
                    "journal: truncated a torn tail (an unacknowledged write cut short by a crash)"
                );
                recovered.end_offset = offset;
                recovered.truncation = Some(Truncation {
                    file: name.clone(),
                    offset: offset as u64,
                    bytes: bytes as u64,
                    reason,
                    torn_tail: true,
                });
            }
            Scan::Corrupt { offset, reason } => {
                drop(file);
                let error = corrupt(offset as u64, reason);
                return cut_or_refuse(
                    storage,
                    &mut recovered,
                    name,
                    offset,
                    error,
                    options,
                    &names[index + 1..],
                );
            }
        }
    }
    if recovered.segments.is_empty() {
        recovered.first_sequence = 0;
        recovered.last_sequence = recovered.next_sequence - 1;
    }
    Ok(recovered)
}

/// Refuses with `error`, or (operator option) cuts the journal at `offset` of `name` and drops
/// the segments in `later` (after backing everything up).
fn cut_or_refuse<S: Storage>(
    storage: &mut S,
    recovered: &mut Recovered,
    name: &str,
    offset: usize,
    error: JournalError,
    options: RecoveryOptions,
    later: &[(u64, String)],
) -> Result<Recovered, JournalError> {
    if !options.truncate_corruption {
        return Err(error);
    }
    let path = storage.path(name);
    let backup = storage
        .backup(name, &format!("corrupt-{offset}"))
        .map_err(JournalError::io(path.clone()))?;
    tracing::error!(%error, backup = %backup.display(), "journal: cutting at corruption (operator option)");
    let mut cut_bytes = 0u64;
    if offset < SEGMENT_HEADER_BYTES {
        // The header itself is bad: the whole segment goes. `end_offset` still describes the
        // previous segment, which was scanned clean.
        storage
            .remove(name)
            .map_err(JournalError::io(path.clone()))?;
        recovered.segments.retain(|s| s.name != name);
    } else {
        let mut file = storage.open(name).map_err(JournalError::io(path.clone()))?;
        let len = file.len();
        cut_bytes = (len - offset) as u64;
        file.write(offset, &vec![0u8; len - offset]);
        file.sync(offset, len - offset)
            .map_err(JournalError::io(path.clone()))?;
        recovered.end_offset = offset;
    }
    for (_, later_name) in later.iter().filter(|(_, n)| n != name) {
        storage
            .backup(later_name, "after-corruption")
            .map_err(JournalError::io(storage.path(later_name)))?;
        storage
            .remove(later_name)
            .map_err(JournalError::io(storage.path(later_name)))?;
    }
    recovered.truncation = Some(Truncation {
        file: name.to_string(),
        offset: offset as u64,
        bytes: cut_bytes,
        reason: error.to_string(),
        torn_tail: false,
    });
    Ok(recovered.clone())
}

enum Scan {
    Clean {
        end: usize,
    },
    TornTail {
        offset: usize,
        written_end: usize,
        reason: String,
    },
    Corrupt {
        offset: usize,
        reason: String,
    },
}

fn scan(bytes: &[u8], expected: &mut u64, is_last: bool) -> Scan {
    let mut offset = SEGMENT_HEADER_BYTES;
    loop {
        match parse_record(&bytes[offset..]) {
            Parsed::Record(record) => {
                if record.sequence != *expected {
                    return Scan::Corrupt {
                        offset,
                        reason: format!(
                            "record has sequence {}, {} expected",
                            record.sequence, expected
                        ),
                    };
                }
                *expected += 1;
                offset += record.bytes;
            }
            Parsed::End => {
                return match last_non_zero(&bytes[offset..]) {
                    None => Scan::Clean { end: offset },
                    Some(at) => Scan::Corrupt {
                        offset: offset + at,
                        reason: "non-zero bytes after the end of the journal".into(),
                    },
                };
            }
            Parsed::Invalid {
                reason,
                expected_end,
            } => {
                let written_end =
                    last_non_zero(&bytes[offset..]).map_or(offset, |at| offset + at + 1);
                let cut_short = written_end < offset + expected_end;
                return if is_last && cut_short && reason != InvalidRecord::Padding {
                    Scan::TornTail {
                        offset,
                        written_end,
                        reason: reason.to_string(),
                    }
                } else {
                    Scan::Corrupt {
                        offset,
                        reason: reason.to_string(),
                    }
                };
            }
        }
    }
}

/// Index of the last non-zero byte, scanning 64 bytes at a time.
pub(crate) fn last_non_zero(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while end >= 64 {
        let chunk = &bytes[end - 64..end];
        if chunk.iter().fold(0u8, |acc, b| acc | b) != 0 {
            break;
        }
        end -= 64;
    }
    bytes[..end].iter().rposition(|b| *b != 0)
}
