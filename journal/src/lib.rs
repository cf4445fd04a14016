//! # paycore-journal: the per-shard write-ahead log
//!
//! Every command a shard applies is journaled before its reply; a restart, the hot standby and
//! the Postgres flusher all read this journal. Records live in preallocated (reading as zeros),
//! memory-mapped segment files, framed with length, CRC32C, sequence number, epoch and timestamp
//! (layout in [`format`] and `docs/design.md`).
//!
//! - [`JournalWriter`]: appends, and makes batches durable with one sync (group commit).
//!   Durability is named ([`Durability::Fsync`] by default, [`Durability::None`] for
//!   benchmarks). A failed sync poisons the writer.
//! - [`recover`]: validates everything on start, truncates only an unacknowledged torn tail,
//!   refuses corruption with file and offset (or cuts there on the operator's say-so).
//! - [`JournalReader`]: records from a sequence on, up to the durable watermark.
//! - [`Storage`]: the disk seam; [`MmapStorage`] for real, [`sim::SimStorage`] for power-loss
//!   tests.
//!
//! The journal does not know what a payload means: it stores bytes. The engine's codec
//! (`paycore_engine::codec`) encodes commands into them.

mod divergence;
mod error;
pub mod faults;
pub mod format;
mod reader;
mod recovery;
pub mod sim;
mod storage;
mod writer;

pub use divergence::{DivergentTail, last_record, truncate_after};
pub use error::JournalError;
pub use format::RecordRef;
pub use reader::JournalReader;
pub use recovery::{Recovered, RecoveryOptions, Truncation, recover};
pub use storage::{
    DiskSpace, MmapFile, MmapStorage, SegmentFile, Storage, SyncMethod, disk_space, sync_dir,
};
pub use writer::{Durability, JournalConfig, JournalWriter, SegmentInfo};
