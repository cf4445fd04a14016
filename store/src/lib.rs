//! # paycore-store: the SQL mirror of the core, and the proof that it agrees
//!
//! The core keeps balances in RAM and its journal on disk; PostgreSQL (or, by default, an
//! embedded SQLite file in the data folder) is where the business reads them. This crate is:
//!
//! - the **flusher** ([`flusher`]): one per shard, it follows the shard's journal
//!   ([`follow`]), applies each record to its own *shadow* engine — the engine is deterministic,
//!   so the shadow reproduces the primary's events exactly — turns the events into rows
//!   ([`rows`]) and writes each batch together with the shard's checkpoint in **one SQL
//!   transaction** ([`store`], [`postgres`], [`sqlite`]). Exactly once: the rows of a batch and
//!   the checkpoint that covers them commit together or not at all, and the transaction refuses
//!   unless the stored checkpoint is exactly where this flusher left it. A restarted flusher
//!   loads the newest snapshot at or below its checkpoint, replays the journal up to it without
//!   writing, and continues. A failed write is retried with capped exponential backoff; the core
//!   never waits for the store. Commits need not each be durable ([`durability`]): the
//!   flusher reports as flushed, for journal retention, only what a durable commit covered.
//! - the **reconciliation** job ([`reconcile`]): read-only, streaming, it checks that balances
//!   sum to zero per currency, that each balance equals its postings and each movement's
//!   postings balance, that the stored wallets equal the engine's at the flushed sequence, and
//!   that idempotency records and holds agree.
//!
//! What it is **not**: the source of truth. The journal is; the store can always be rebuilt
//! from it (drop the tables, run `paycore flush`). Nothing here changes the engine or the
//! journal.
//!
//! Invariants (tested in `rows/tests.rs`, `tests/`, `paycore/tests/store_*.rs`):
//! - money is exact: minor units become decimal text digit by digit ([`decimal`]); no float;
//! - per shard, every wallet's stored balance equals the sum of its `ledger_entries`, and each
//!   movement's entries on a shard sum to zero (double entry, cross-shard legs through the
//!   `in_transit` wallet);
//! - the store reflects exactly the journal prefix up to its checkpoint, per shard.
//!
//! Design and schema: `docs/design.md`, section "Store: flusher and reconciliation".

#![forbid(unsafe_code)]

pub mod copy_binary;
pub mod decimal;
pub mod durability;
pub mod flusher;
pub mod follow;
pub mod postgres;
pub mod reconcile;
pub mod rows;
pub mod schema;
pub mod sqlite;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod time;
pub mod workload;
