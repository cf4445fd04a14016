//! Replies: one client batch may be split over several shards; each shard fills in the results
//! of its commands, and the last one to finish sends the whole batch back, in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use paycore_engine::Outcome;

/// What became of one command of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandResult {
    /// Journaled (durably, per the journal's mode) and applied.
    Outcome(Outcome),
    /// The shard's ring was full: nothing was journaled; retry with the same key.
    Busy,
    /// The shard cannot write (its journal is poisoned, or it is shutting down), or the command
    /// is not a client command; retry later or elsewhere with the same key.
    ShardUnavailable,
}

/// Result index meaning "apply, but nobody reads this result" (the copies of a command sent to
/// every shard, beyond the one whose outcome the client sees).
pub(crate) const DISCARD: u32 = u32::MAX;

/// A batch in flight: its results so far, and how many shard parts are still out.
#[derive(Debug)]
pub(crate) struct BatchReply {
    results: Mutex<Vec<CommandResult>>,
    parts_left: AtomicUsize,
    done: Sender<Vec<CommandResult>>,
}

impl BatchReply {
    pub(crate) fn new(
        commands: usize,
        parts: usize,
    ) -> (Arc<BatchReply>, Receiver<Vec<CommandResult>>) {
        let (done, receiver) = crossbeam_channel::bounded(1);
        let reply = BatchReply {
            results: Mutex::new(vec![CommandResult::ShardUnavailable; commands]),
            parts_left: AtomicUsize::new(parts),
            done,
        };
        (Arc::new(reply), receiver)
    }

    /// Records the result of command `index` of the batch.
    pub(crate) fn set(&self, index: u32, result: CommandResult) {
        if index != DISCARD {
            let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
            results[index as usize] = result;
        }
    }

    /// One shard part is complete; the last one sends the batch.
    pub(crate) fn part_done(&self) {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let results =
                std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()));
            // The client may have gone away; then nobody needs the answer.
            let _ = self.done.send(results);
        }
    }
}
