//! The reader: records from a given sequence on, in order, while the writer appends.
//!
//! Used by recovery replay, and later by the hot standby and the Postgres flusher. A reader
//! opens the segment files itself (its own mapping) and reads only records at or below the
//! writer's published durable sequence (the watermark), so it never sees a record that is still
//! being written. Without a watermark it reads to the end of the valid data (replay after
//! recovery, when no writer runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::JournalError;
use crate::format::{Parsed, RecordRef, SEGMENT_HEADER_BYTES, parse_record, parse_segment_name};
use crate::storage::{SegmentFile, Storage};

pub struct JournalReader<S: Storage> {
    storage: S,
    watermark: Option<Arc<AtomicU64>>,
    segment: Option<(String, S::File)>,
    offset: usize,
    next_sequence: u64,
}

impl<S: Storage> std::fmt::Debug for JournalReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("next_sequence", &self.next_sequence)
            .finish()
    }
}

impl<S: Storage> JournalReader<S> {
    /// A reader whose first record will be `from_sequence` (or the first one after it that the
    /// journal still holds, if older segments were retired).
    pub fn new(storage: S, from_sequence: u64, watermark: Option<Arc<AtomicU64>>) -> Self {
        JournalReader {
            storage,
            watermark,
            segment: None,
            offset: 0,
            next_sequence: from_sequence.max(1),
        }
    }

    /// Sequence of the next record this reader returns.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    fn limit(&self) -> u64 {
        self.watermark
            .as_ref()
            .map_or(u64::MAX, |w| w.load(Ordering::Acquire))
    }

    /// Opens the segment holding `next_sequence`, if any.
    fn open_segment(&mut self) -> Result<bool, JournalError> {
        let names = self
            .storage
            .list()
            .map_err(JournalError::io(self.storage.path("")))?;
        let mut segments: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|n| parse_segment_name(&n).map(|s| (s, n)))
            .collect();
        segments.sort();
        let Some((first, name)) = segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= self.next_sequence)
            .cloned()
            .or_else(|| segments.first().cloned())
        else {
            return Ok(false);
        };
        if first > self.next_sequence {
            // Older records were retired; continue from what is there.
            self.next_sequence = first;
        }
        let file = self
            .storage
            .open(&name)
            .map_err(JournalError::io(self.storage.path(&name)))?;
        self.segment = Some((name, file));
        self.offset = SEGMENT_HEADER_BYTES;
        Ok(true)
    }

    /// Calls `visit` with up to `max_records` records, in order, and returns how many it read.
    /// Zero means nothing new is readable yet.
    pub fn read(
        &mut self,
        max_records: usize,
        mut visit: impl FnMut(RecordRef<'_>),
    ) -> Result<usize, JournalError> {
        let limit = self.limit();
        let mut read = 0;
        while read < max_records && self.next_sequence <= limit {
            if self.segment.is_none() && !self.open_segment()? {
                break;
            }
            let Some((name, file)) = &self.segment else {
                unreachable!("segment opened above")
            };
            let mut offset = self.offset;
            let mut next = self.next_sequence;
            let step = file.with_bytes(|bytes| -> Result<bool, JournalError> {
                while read < max_records && next <= limit {
                    match parse_record(&bytes[offset..]) {
                        Parsed::Record(record) => {
                            offset += record.bytes;
                            if record.sequence < next {
                                continue; // before the requested start
                            }
                            if record.sequence != next {
                                return Err(JournalError::Corrupt {
                                    path: self.storage.path(name),
                                    offset: (offset - record.bytes) as u64,
                                    reason: format!(
                                        "sequence {} where {next} expected",
                                        record.sequence
                                    ),
                                });
                            }
                            visit(record);
                            next += 1;
                            read += 1;
                        }
                        Parsed::End => return Ok(true),
                        Parsed::Invalid { reason, .. } => {
                            if limit == u64::MAX {
                                // No writer: the end of valid data (recovery already judged it).
                                return Ok(false);
                            }
                            return Err(JournalError::Corrupt {
                                path: self.storage.path(name),
                                offset: offset as u64,
                                reason: reason.to_string(),
                            });
                        }
                    }
                }
                Ok(false)
            })?;
            self.offset = offset;
            self.next_sequence = next;
            if step {
                // End of this segment's data: move on if the next segment exists.
                let names = self
                    .storage
                    .list()
                    .map_err(JournalError::io(self.storage.path("")))?;
                // The next segment starts exactly at `next_sequence`; an empty segment (a roll
                // whose first record never became durable) may be the current one itself, and
                // reopening it would spin forever.
                let has_next = names
                    .iter()
                    .any(|n| n != name && parse_segment_name(n) == Some(self.next_sequence));
                if !has_next {
                    break;
                }
                self.segment = None;
            } else if read < max_records && next <= limit && limit == u64::MAX {
                break;
            }
        }
        Ok(read)
    }
}
