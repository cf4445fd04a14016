//! # paycore-snapshot: shard images on disk, and start-up recovery
//!
//! A snapshot is a consistent image of one shard's engine at a sequence number, serialised with
//! rkyv, checksummed, and written atomically (temporary file, fsync, rename, folder fsync); see
//! [`file`] for the layout. Start-up ([`open_shard`]) loads the newest valid snapshot, falls back
//! to an older one if it is damaged (and says so), and replays the journal after it.
//!
//! Snapshots are taken from a [`Replica`] that follows the journal on its own thread, so the
//! shard's writer thread never pauses for one (design in `docs/design.md`, figures in
//! `BENCHMARKS.md`).

// Unsafe only in `background` (two libc calls that set a thread's priority).
#![deny(unsafe_code)]

pub mod background;
pub mod file;
mod replay;
mod replica;
mod shard;

pub use file::{SnapshotError, list_snapshots, prune_snapshots, read_snapshot, write_snapshot};
pub use replay::{ReplayBatch, replay_some, replay_to_end};
pub use replica::{Replica, SnapshotPolicy, Snapshotter};
pub use shard::{DurableShard, RecoveryReport, ShardError, ShardPaths, open_shard};
