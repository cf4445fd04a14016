//! # paycore-engine: the deterministic ledger of one shard
//!
//! An in-memory state machine that holds every wallet of one shard and applies money commands
//! to it, one at a time, in the order the sequencer journaled them. Everything else in paycore
//! (journal, standby, Postgres flush, gateway) is built on its semantics; they are written down
//! in `docs/design.md` and in the docs of [`Op`] and [`Reject`].
//!
//! What it is **not**: it reads no clock, draws no random number, does no I/O and never iterates
//! a hash table to decide anything. The sequencer supplies the sequence number and timestamp of
//! each command; the journal owns the disk. So the same commands give the same outcomes, events
//! and [`Engine::state_hash`] on any machine: that is what makes replay, standby and recovery
//! trustworthy.
//!
//! Invariants, checked by assertions and by the property tests in `tests/`:
//! - money is integer minor units; the sum of all balances of a currency on a shard is zero
//!   after every command (double entry through the system wallets, see [`SystemRole`]);
//! - `balance = available + frozen`; a user wallet's available and frozen are never negative;
//! - a wallet's version grows by one with each change;
//! - a rejected command changes nothing but its idempotency record; a retry with the same key
//!   and parameters returns the first outcome, a rejection included.

#![deny(unsafe_code)] // reasoned exceptions: the prefetch hint (`prefetch.rs`), huge-page advice (`huge_pages.rs`), unchecked chunk indexing below a checked length (`chunked.rs`)

pub mod amount;
mod chunked;
pub mod codec;
mod command;
pub mod currency;
mod digest;
mod engine;
mod event;
mod hashing;
mod hold;
mod huge_pages;
mod idempotency;
mod ids;
pub mod image;
mod outcome;
mod prefetch;
pub mod velocity;
mod wallet;

pub use command::{
    Command, CreditLeg, IDEMPOTENCY_KEY_BYTES_MAX, IdempotencyKey, LINKED_OPS_MAX, Op, Rate,
    SettleLeg, Tier,
};
pub use currency::{CurrencyCode, CurrencyId};
pub use engine::{CurrencyInfo, DAY_NS, Engine, EngineConfig, SYSTEM_BALANCE_MAX, convert};
pub use event::{Effects, Event, ReleaseReason, ShardMessage, TransferKind, TransferStatus};
pub use hold::Hold;
pub use ids::{HoldId, SHARD_COUNT_MAX, ShardId, TransferId, UserId, WalletId};
pub use outcome::{Applied, Outcome, Reject};
pub use wallet::{SystemRole, WALLET_STORED_BYTES, Wallet, WalletKind, WalletStatus};
