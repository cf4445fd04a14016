//! Replies: one client batch may be split over several shards; each shard fills in the results
//! of its commands, and the last one to finish hands the whole batch back, in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The shard is read-only: free space on its journal's disk is below the reserve (or the
    /// next segment could not be prepared). Nothing was journaled; retry with the same key
    /// once there is room (the shard resumes writes by itself).
    DiskFull,
}

/// Result index meaning "apply, but nobody reads this result" (the copies of a command sent to
/// every shard, beyond the one whose outcome the client sees).
pub(crate) const DISCARD: u32 = u32::MAX;

/// Called once with a batch's results, in order, on the thread that finishes it (a shard
/// writer): it must be quick — hand the results to a channel.
pub type OnDone = Box<dyn FnOnce(Vec<CommandResult>) + Send>;

/// A batch in flight: its results so far, and how many shard parts are still out.
pub(crate) struct BatchReply {
    results: Mutex<Vec<CommandResult>>,
    parts_left: AtomicUsize,
    done: Mutex<Option<OnDone>>,
}

impl std::fmt::Debug for BatchReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchReply")
            .field("parts_left", &self.parts_left)
            .finish()
    }
}

impl BatchReply {
    pub(crate) fn new(commands: usize, parts: usize, done: OnDone) -> Arc<BatchReply> {
        Arc::new(BatchReply {
            results: Mutex::new(vec![CommandResult::ShardUnavailable; commands]),
            parts_left: AtomicUsize::new(parts),
            done: Mutex::new(Some(done)),
        })
    }

    /// Records the result of command `index` of the batch.
    pub(crate) fn set(&self, index: u32, result: CommandResult) {
        if index != DISCARD {
            let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
            results[index as usize] = result;
        }
    }

    /// One shard part is complete; the last one hands the batch over.
    pub(crate) fn part_done(&self) {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let results =
                std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()));
            let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(done) = done {
                done(results);
            }
        }
    }
}
