//! Snapshots: a consistent, checksummed rkyv image of one shard at a sequence number.
//!
//! **Not built yet** (issue 3). Start-up will load the newest valid snapshot and replay the journal
//! after it; a corrupt snapshot falls back to the one before.

#![forbid(unsafe_code)]
