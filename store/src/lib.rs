//! Store: the asynchronous flusher that mirrors committed state into PostgreSQL (or an
//! embedded SQLite file) exactly once, and the reconciliation job that proves the two agree.
//!
//! Work in progress (issue 6).

#![forbid(unsafe_code)]

pub mod decimal;
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
