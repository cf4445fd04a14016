//! The event log: the committed events of each shard, kept in memory for subscribers, and
//! appended to the shard's [event archive](crate::event_archive) on disk.
//!
//! The writer appends one [`EventBatch`] per group commit (one allocation per batch, not per
//! command), after the batch is durable and applied and before its replies leave. Subscribers
//! read batches from any sequence still held; the log keeps the most recent `events_kept_max`
//! events per shard in memory and drops the oldest batches beyond that. A subscriber further
//! behind reads the archive ([`EventLog::archive_reader`]); only a position older than the
//! archive's retention (the journal's) is refused (`position_unavailable`, naming the first
//! sequence still available), never given a silent gap.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use paycore_engine::Event;

use crate::event_archive::{ArchiveReader, ArchiveWriter};

/// The events of one group commit: `(sequence, event)` in commit order, and the batch's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub timestamp_ns: u64,
    pub events: Vec<(u64, Event)>,
}

/// What a subscriber gets for a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Batches holding `from` and later (possibly none yet).
    Batches(Vec<Arc<EventBatch>>),
    /// `from` is older than the oldest event kept.
    Unavailable { oldest_kept: u64 },
}

/// Batches kept at most, whatever their events (empty batches still mark progress).
const BATCHES_KEPT_MAX: usize = 64 * 1024;

#[derive(Debug)]
pub struct EventLog {
    batches: Mutex<VecDeque<Arc<EventBatch>>>,
    kept_events: AtomicU64,
    /// First sequence the log can still answer for (everything before was dropped).
    first_kept: AtomicU64,
    /// Last sequence appended.
    last_sequence: AtomicU64,
    events_kept_max: u64,
    /// The archive on disk, if any: its folder and writer (`None` after a write failed).
    archive: Option<(PathBuf, Mutex<Option<ArchiveWriter>>)>,
}

impl EventLog {
    /// A log that also appends every batch to the archive in `dir` (see the module docs).
    /// An archive that cannot be opened is logged and left out: events are then served from
    /// memory only.
    pub fn with_archive(
        next_sequence: u64,
        events_kept_max: u64,
        dir: &Path,
        journal_dir: Option<&Path>,
    ) -> EventLog {
        let mut log = EventLog::new(next_sequence, events_kept_max);
        // `PAYCORE_EVENTS_ARCHIVE=off`: no archive (a node nobody subscribes to late; and the
        // A/B measurement of its cost in BENCHMARKS.md "Core link").
        if std::env::var("PAYCORE_EVENTS_ARCHIVE").is_ok_and(|v| v == "off") {
            tracing::info!("event archive off (PAYCORE_EVENTS_ARCHIVE=off)");
            return log;
        }
        match ArchiveWriter::open(dir, journal_dir, next_sequence) {
            Ok(writer) => log.archive = Some((dir.to_path_buf(), Mutex::new(Some(writer)))),
            Err(error) => tracing::error!(
                dir = %dir.display(),
                %error,
                "event archive unavailable: subscribers further behind than the memory window will be refused"
            ),
        }
        log
    }

    /// A reader of the archive from `position`, or the first sequence the archive can give
    /// (0 when there is no archive).
    pub fn archive_reader(&self, position: u64) -> Result<ArchiveReader, u64> {
        match &self.archive {
            Some((dir, _)) => ArchiveReader::open(dir, position),
            None => Err(0),
        }
    }

    /// A log whose first answerable sequence is `next_sequence` (what the shard applies next).
    pub fn new(next_sequence: u64, events_kept_max: u64) -> EventLog {
        EventLog {
            batches: Mutex::new(VecDeque::new()),
            kept_events: AtomicU64::new(0),
            first_kept: AtomicU64::new(next_sequence),
            last_sequence: AtomicU64::new(next_sequence.saturating_sub(1)),
            events_kept_max: events_kept_max.max(1),
            archive: None,
        }
    }

    /// The oldest sequence the log can still answer for.
    pub fn first_kept(&self) -> u64 {
        self.first_kept.load(Ordering::Acquire)
    }

    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Acquire)
    }

    pub(crate) fn append(&self, batch: EventBatch) {
        if let Some((dir, writer)) = &self.archive {
            let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(archive) = writer.as_mut()
                && let Err(error) = archive.append(&batch)
            {
                // The shard goes on (the journal is the truth); the archive stops here, and a
                // reader past this point is told of the hole.
                tracing::error!(dir = %dir.display(), %error, "event archive write failed; archive stopped");
                *writer = None;
            }
        }
        let last = batch.last_sequence;
        let count = batch.events.len() as u64;
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        batches.push_back(Arc::new(batch));
        let mut kept = self.kept_events.load(Ordering::Relaxed) + count;
        while (kept > self.events_kept_max || batches.len() > BATCHES_KEPT_MAX) && batches.len() > 1
        {
            let Some(oldest) = batches.pop_front() else {
                break;
            };
            kept -= oldest.events.len() as u64;
            self.first_kept
                .store(oldest.last_sequence + 1, Ordering::Release);
        }
        self.kept_events.store(kept, Ordering::Relaxed);
        drop(batches);
        self.last_sequence.store(last, Ordering::Release);
    }

    /// Batches with events of sequence `>= from`, at most `batches_max` of them.
    pub fn read(&self, from: u64, batches_max: usize) -> Read {
        let batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        let oldest_kept = self.first_kept.load(Ordering::Acquire);
        if from < oldest_kept {
            return Read::Unavailable { oldest_kept };
        }
        let start = batches.partition_point(|b| b.last_sequence < from);
        Read::Batches(
            batches
                .iter()
                .skip(start)
                .take(batches_max)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paycore_engine::{TransferId, TransferStatus};

    fn batch(first: u64, last: u64, events: usize) -> EventBatch {
        let event = Event::TransferSettled {
            transfer: TransferId(1),
            status: TransferStatus::Completed,
        };
        EventBatch {
            first_sequence: first,
            last_sequence: last,
            timestamp_ns: 0,
            events: vec![(first, event); events],
        }
    }

    #[test]
    fn reads_from_a_position_and_drops_the_oldest() {
        let log = EventLog::new(1, 10);
        log.append(batch(1, 3, 4));
        log.append(batch(4, 6, 4));
        assert!(matches!(log.read(1, 10), Read::Batches(b) if b.len() == 2));
        assert!(
            matches!(log.read(5, 10), Read::Batches(b) if b.len() == 1 && b[0].first_sequence == 4)
        );
        assert!(matches!(log.read(7, 10), Read::Batches(b) if b.is_empty()));
        log.append(batch(7, 9, 4)); // 12 events > 10: the first batch goes
        assert_eq!(log.read(2, 10), Read::Unavailable { oldest_kept: 4 });
        assert!(matches!(log.read(4, 10), Read::Batches(b) if b.len() == 2));
        assert_eq!(log.last_sequence(), 9);
    }
}
