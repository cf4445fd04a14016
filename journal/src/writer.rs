//! The writer: appends records to the newest segment and makes batches durable (group commit).
//!
//! One writer per shard, owned by the shard's writer thread. `append` copies records into the
//! mapped segment; `commit` makes everything appended so far durable with one sync of the dirty
//! range and publishes the durable sequence to readers. The bytes not yet committed never exceed
//! `batch_bytes_max` (a larger batch commits on its own first), which bounds what a crash can
//! tear. A failed sync poisons the writer: it never carries on as if the data were durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::JournalError;
use crate::format::{
    RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES, SegmentHeader, record_bytes, segment_name,
    write_record,
};
use crate::recovery::Recovered;
use crate::storage::{SegmentFile, Storage};

/// When a reply may be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the record is synced to the medium (msync of the dirty range). The default.
    #[default]
    Fsync,
    /// After the record is written to the page cache (never fsynced): a process crash loses
    /// nothing, a power cut loses recent records. For benchmarks only, and labelled as such
    /// wherever a figure is reported.
    None,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::None => "none (not durable)",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    pub shard: u16,
    /// Epoch of the primary writing (issue 5): stamped on every record.
    pub epoch: u64,
    /// Size of a segment file, preallocated.
    pub segment_bytes: u64,
    /// Most bytes appended before a commit.
    pub batch_bytes_max: u32,
    pub durability: Durability,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            shard: 0,
            epoch: 1,
            segment_bytes: 64 << 20,
            batch_bytes_max: 1 << 20,
            durability: Durability::Fsync,
        }
    }
}

/// What the writer knows about each segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub name: String,
    pub first_sequence: u64,
}

pub struct JournalWriter<S: Storage> {
    storage: S,
    config: JournalConfig,
    segments: Vec<SegmentInfo>,
    segment: Option<S::File>,
    write_offset: usize,
    synced_offset: usize,
    next_sequence: u64,
    durable: Arc<AtomicU64>,
    poisoned: Option<String>,
    record: Vec<u8>,
}

impl<S: Storage> std::fmt::Debug for JournalWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("config", &self.config)
            .field("segments", &self.segments.len())
            .field("next_sequence", &self.next_sequence)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<S: Storage> JournalWriter<S> {
    /// A writer that continues the journal `recovered` found (see [`crate::recover`]).
    pub fn open(
        mut storage: S,
        config: JournalConfig,
        recovered: &Recovered,
    ) -> Result<Self, JournalError> {
        let smallest_batch = record_bytes(RECORD_PAYLOAD_BYTES_MAX) as u64;
        if u64::from(config.batch_bytes_max) < smallest_batch {
            return Err(JournalError::Config(format!(
                "batch_bytes_max must be at least {smallest_batch}"
            )));
        }
        if config.segment_bytes < SEGMENT_HEADER_BYTES as u64 + u64::from(config.batch_bytes_max) {
            return Err(JournalError::Config(
                "segment_bytes must exceed batch_bytes_max plus the segment header".into(),
            ));
        }
        let segment = match recovered.segments.last() {
            Some(last) => Some(
                storage
                    .open(&last.name)
                    .map_err(JournalError::io(storage.path(&last.name)))?,
            ),
            None => None,
        };
        let last = recovered.last_sequence;
        Ok(JournalWriter {
            storage,
            segments: recovered.segments.clone(),
            segment,
            write_offset: recovered.end_offset,
            synced_offset: recovered.end_offset,
            next_sequence: recovered.next_sequence,
            durable: Arc::new(AtomicU64::new(last)),
            poisoned: None,
            record: Vec::with_capacity(record_bytes(RECORD_PAYLOAD_BYTES_MAX)),
            config,
        })
    }

    /// The epoch written into records appended from now on (and into new segment headers):
    /// a promoted standby starts its own epoch.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.config.epoch = epoch;
    }

    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// Sequence the next appended record must carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Highest sequence that is durable (0: none).
    pub fn durable_sequence(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The durable sequence as readers in this process follow it.
    pub fn watermark(&self) -> Arc<AtomicU64> {
        self.durable.clone()
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poisoned(&self) -> Result<(), JournalError> {
        match &self.poisoned {
            Some(reason) => Err(JournalError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Makes sure `bytes` of records can be appended without preparing a segment the disk may
    /// refuse: they fit in the current segment, or the next one is complete on disk (the spare).
    /// On `Err(NoRoom)` nothing was appended and the journal is not poisoned: the caller refuses
    /// the batch (disk full) and asks again once there is space. Good for one roll: a batch of
    /// more than a segment's bytes may still need a segment prepared while it is appended.
    pub fn ensure_room(&mut self, bytes: u64) -> Result<(), JournalError> {
        self.check_poisoned()?;
        let fits = self
            .segment
            .as_ref()
            .is_some_and(|s| self.write_offset as u64 + bytes <= s.len() as u64);
        if fits {
            return Ok(());
        }
        self.storage
            .prepare_next(self.config.segment_bytes)
            .map_err(|source| JournalError::NoRoom {
                path: self.storage.path(""),
                source,
            })
    }

    /// Space on the journal's filesystem (`None`: not known, e.g. simulated storage).
    pub fn space(&self) -> std::io::Result<Option<crate::storage::DiskSpace>> {
        self.storage.space()
    }

    /// Why the journal refuses writes, if it does.
    pub fn poisoned_reason(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Appends one record. It is durable only after the next [`commit`](Self::commit).
    pub fn append(
        &mut self,
        sequence: u64,
        timestamp_ns: u64,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        self.append_with_epoch(sequence, self.config.epoch, timestamp_ns, payload)
    }

    /// Appends a record written by the primary of `epoch` (a standby copying its primary's
    /// journal keeps each record's epoch).
    pub fn append_with_epoch(
        &mut self,
        sequence: u64,
        epoch: u64,
        timestamp_ns: u64,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        self.check_poisoned()?;
        if payload.is_empty() || payload.len() > RECORD_PAYLOAD_BYTES_MAX {
            return Err(JournalError::PayloadSize {
                len: payload.len(),
                max: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        if sequence != self.next_sequence {
            return Err(JournalError::SequenceOutOfOrder {
                expected: self.next_sequence,
                got: sequence,
            });
        }
        let bytes = record_bytes(payload.len());
        if self.write_offset - self.synced_offset + bytes > self.config.batch_bytes_max as usize {
            self.commit()?;
        }
        let fits = self
            .segment
            .as_ref()
            .is_some_and(|s| self.write_offset + bytes <= s.len());
        if !fits {
            self.roll(sequence)?;
        }
        self.record.clear();
        self.record.resize(bytes, 0);
        write_record(&mut self.record, sequence, epoch, timestamp_ns, payload);
        let Some(segment) = self.segment.as_mut() else {
            unreachable!("roll opened a segment")
        };
        segment.write(self.write_offset, &self.record);
        self.write_offset += bytes;
        self.next_sequence += 1;
        Ok(())
    }

    /// Makes every appended record durable (per the durability mode) with one sync, and returns
    /// the durable sequence.
    pub fn commit(&mut self) -> Result<u64, JournalError> {
        self.check_poisoned()?;
        if self.write_offset > self.synced_offset {
            let Some(segment) = self.segment.as_mut() else {
                unreachable!("dirty bytes without a segment")
            };
            // `None` still writes every record to the page cache (a process crash loses
            // nothing); it only skips waiting for the medium.
            let written = match self.config.durability {
                Durability::Fsync => {
                    segment.sync(self.synced_offset, self.write_offset - self.synced_offset)
                }
                Durability::None => segment.write_out(),
            };
            if let Err(error) = written {
                let reason = error.to_string();
                tracing::error!(shard = self.config.shard, %reason, "journal write failed; poisoned");
                self.poisoned = Some(reason.clone());
                return Err(JournalError::Poisoned { reason });
            }
            self.synced_offset = self.write_offset;
        }
        let durable = self.next_sequence - 1;
        self.durable.store(durable, Ordering::Release);
        Ok(durable)
    }

    /// Bytes appended and not yet committed.
    pub fn pending_bytes(&self) -> usize {
        self.write_offset - self.synced_offset
    }

    /// Commits the current segment and starts a new one whose first record is `sequence`.
    fn roll(&mut self, sequence: u64) -> Result<(), JournalError> {
        self.commit()?;
        let name = segment_name(sequence);
        let path = self.storage.path(&name);
        let mut segment = self
            .storage
            .create(&name, self.config.segment_bytes)
            .map_err(JournalError::io(path.clone()))?;
        let header = SegmentHeader {
            shard: self.config.shard,
            epoch: self.config.epoch,
            first_sequence: sequence,
            segment_bytes: self.config.segment_bytes,
            batch_bytes_max: self.config.batch_bytes_max,
        };
        segment.write(0, &header.encode());
        if let Err(error) = segment.sync(0, SEGMENT_HEADER_BYTES) {
            let reason = format!("{}: {error}", path.display());
            self.poisoned = Some(reason.clone());
            return Err(JournalError::Poisoned { reason });
        }
        self.segments.push(SegmentInfo {
            name,
            first_sequence: sequence,
        });
        self.segment = Some(segment);
        self.write_offset = SEGMENT_HEADER_BYTES;
        self.synced_offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }

    /// Archives (or deletes) every segment whose records all have sequences `<= through`,
    /// never the newest. Returns the names retired.
    pub fn retire_through(
        &mut self,
        through: u64,
        archive: bool,
    ) -> Result<Vec<String>, JournalError> {
        let mut retired = Vec::new();
        while self.segments.len() > 1
            && self.segments[1].first_sequence <= through.saturating_add(1)
        {
            let segment = self.segments.remove(0);
            let path = self.storage.path(&segment.name);
            if archive {
                self.storage
                    .archive(&segment.name)
                    .map_err(JournalError::io(path))?;
            } else {
                self.storage
                    .remove(&segment.name)
                    .map_err(JournalError::io(path))?;
            }
            retired.push(segment.name);
        }
        Ok(retired)
    }
}
