//! Store: the asynchronous flusher that mirrors committed state into PostgreSQL (or an
//! embedded SQLite file) exactly once, and the reconciliation job that proves the two agree.
//!
//! **Not built yet** (issue 6).

#![forbid(unsafe_code)]
