//! When a batch's commit must be durable, and which flushed sequence may be trusted.
//!
//! Why: a durable commit waits for the store to flush its write-ahead log (an fsync) before it
//! answers. Waiting for every batch costs throughput, and exactly-once does not need it: the
//! rows of a batch and the checkpoint that covers them commit together, so a store crash that
//! loses non-durable commits loses rows and checkpoint together, and the flusher, finding the
//! checkpoint gone back, writes them again from the journal (`flusher::run`).
//!
//! What does need durability is **journal retention**: it deletes journal segments the store
//! is said to hold, so it must only be told about commits the store cannot lose. Hence two
//! watermarks per shard:
//!
//! - *committed*: the last batch committed, durably or not (readers see it);
//! - *durable*: the last batch known to survive a store crash — the checkpoint of the last
//!   durable commit. Both stores write one log in commit order, so a durable commit also makes
//!   every earlier commit durable, and the durable one always checks the stored checkpoint
//!   first: after a crash that lost commits it finds the checkpoint gone back and refuses
//!   instead of vouching for rows that are gone.
//!
//! Only the durable watermark is published as `FlushStatus::flushed_sequence`, which retention
//! reads. A commit is made durable when the batch is not full (the flusher has caught up with
//! the journal: nothing to gain from waiting), when `durable_interval_ms_max` has passed since
//! the last durable one, and, when a commit is still not durable as the flusher falls idle or
//! stops, by a separate durable commit of the checkpoint row alone (`Store::make_durable`). So
//! under a steady load the durable watermark trails the committed one by at most about
//! `durable_interval_ms_max` plus one batch.

use std::time::{Duration, Instant};

/// Default longest time between durable commits, in milliseconds.
pub const DURABLE_INTERVAL_MS_MAX_DEFAULT: u64 = 1_000;

/// How a batch's SQL transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The store answers once the commit is in its durable log (PostgreSQL
    /// `synchronous_commit = on`, SQLite `synchronous = FULL`).
    Durable,
    /// The store answers before its log is flushed (PostgreSQL `synchronous_commit = off`,
    /// SQLite `synchronous = NORMAL`): a store crash may lose it, rows and checkpoint together.
    Deferred,
}

/// The two watermarks of one shard and the rule that picks each batch's [`Commit`].
#[derive(Debug)]
pub struct Watermarks {
    interval: Duration,
    durable_at: Instant,
    committed: u64,
    durable: u64,
}

impl Watermarks {
    /// Both watermarks at `checkpoint` (read from the store, so already durable or about to be
    /// checked by the first durable commit). `durable_interval_ms_max` 0: every commit durable.
    pub fn new(checkpoint: u64, durable_interval_ms_max: u64, now: Instant) -> Self {
        Watermarks {
            interval: Duration::from_millis(durable_interval_ms_max),
            durable_at: now,
            committed: checkpoint,
            durable: checkpoint,
        }
    }

    /// How the next batch commits: durably when it is not full or the interval has passed.
    pub fn commit_for(&self, batch_full: bool, now: Instant) -> Commit {
        if !batch_full || now.saturating_duration_since(self.durable_at) >= self.interval {
            Commit::Durable
        } else {
            Commit::Deferred
        }
    }

    /// A batch ending at `last_sequence` committed as `commit`.
    pub fn committed(&mut self, last_sequence: u64, commit: Commit, now: Instant) {
        assert!(
            last_sequence > self.committed,
            "commits move the checkpoint forward"
        );
        self.committed = last_sequence;
        if commit == Commit::Durable {
            self.made_durable(now);
        }
    }

    /// Everything committed so far is durable (a durable commit, or `Store::make_durable`).
    pub fn made_durable(&mut self, now: Instant) {
        self.durable = self.committed;
        self.durable_at = now;
    }

    /// Whether some commit is not known to be durable yet.
    pub fn behind(&self) -> bool {
        self.durable < self.committed
    }

    pub fn committed_sequence(&self) -> u64 {
        self.committed
    }

    /// The last sequence the store cannot lose: what journal retention may trust.
    pub fn durable_sequence(&self) -> u64 {
        self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batches_defer_until_the_interval_passes() {
        let start = Instant::now();
        let mut marks = Watermarks::new(10, 1_000, start);
        let later = |ms| start + Duration::from_millis(ms);
        assert_eq!(marks.commit_for(true, later(100)), Commit::Deferred);
        marks.committed(20, Commit::Deferred, later(100));
        marks.committed(30, Commit::Deferred, later(200));
        assert_eq!(
            (marks.committed_sequence(), marks.durable_sequence()),
            (30, 10)
        );
        assert!(marks.behind());
        // The interval passed: the next batch commits durably and carries the earlier ones.
        assert_eq!(marks.commit_for(true, later(1_000)), Commit::Durable);
        marks.committed(40, Commit::Durable, later(1_000));
        assert_eq!(marks.durable_sequence(), 40);
        assert!(!marks.behind());
        // The interval restarts from that durable commit.
        assert_eq!(marks.commit_for(true, later(1_500)), Commit::Deferred);
        assert_eq!(marks.commit_for(true, later(2_000)), Commit::Durable);
    }

    #[test]
    fn a_batch_that_is_not_full_is_durable() {
        let start = Instant::now();
        let marks = Watermarks::new(0, 60_000, start);
        assert_eq!(marks.commit_for(false, start), Commit::Durable);
    }

    #[test]
    fn a_zero_interval_makes_every_commit_durable() {
        let start = Instant::now();
        let marks = Watermarks::new(0, 0, start);
        assert_eq!(marks.commit_for(true, start), Commit::Durable);
    }

    #[test]
    fn making_durable_catches_the_durable_watermark_up() {
        let start = Instant::now();
        let mut marks = Watermarks::new(5, 60_000, start);
        marks.committed(9, Commit::Deferred, start);
        assert_eq!(marks.durable_sequence(), 5);
        marks.made_durable(start);
        assert_eq!(marks.durable_sequence(), 9);
        assert!(!marks.behind());
    }
}
