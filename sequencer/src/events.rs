//! The event log: the committed events of each shard, kept in memory for subscribers.
//!
//! The writer appends one [`EventBatch`] per group commit (one allocation per batch, not per
//! command), after the batch is durable and applied. Subscribers read batches from any
//! sequence still held; the log keeps the most recent `events_kept_max` events per shard and
//! drops the oldest batches beyond that. A subscriber that falls further behind than that must
//! resynchronise from the store (issue 6) — it is told so (`position_unavailable`), never given
//! a silent gap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use paycore_engine::Event;

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
}

impl EventLog {
    /// A log whose first answerable sequence is `next_sequence` (what the shard applies next).
    pub fn new(next_sequence: u64, events_kept_max: u64) -> EventLog {
        EventLog {
            batches: Mutex::new(VecDeque::new()),
            kept_events: AtomicU64::new(0),
            first_kept: AtomicU64::new(next_sequence),
            last_sequence: AtomicU64::new(next_sequence.saturating_sub(1)),
            events_kept_max: events_kept_max.max(1),
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
