//! Sequencer: one single-writer thread per shard (LMAX business-logic processor).
//!
//! **Not built yet** (issue 4). It will own each shard's `paycore_engine::Engine`, drain a
//! bounded ring of commands in batches, assign sequence numbers and the timestamp (the only clock
//! read in the core), journal the batch with group commit, apply it, and only then release replies
//! and events. Cross-shard credit legs travel through the destination shard's ring and journal.

#![forbid(unsafe_code)]
