//! Journal: the per-shard, memory-mapped write-ahead log with group commit.
//!
//! **Not built yet** (issue 3). It will hold preallocated segment files framed with length,
//! CRC32C and sequence number, a named durability mode, poisoning after a failed sync, a reader
//! that follows the writer, and crash recovery that truncates only an unacknowledged torn tail.
