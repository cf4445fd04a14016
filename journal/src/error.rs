//! Journal errors. Only I/O and damage are errors; every variant names what it is about.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O call failed (open, create, map, rename…).
    #[error("journal I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A sync failed earlier: the data may or may not be durable, so the journal refuses all
    /// further writes until the process restarts and recovery decides what is on disk.
    #[error("journal poisoned by a failed sync ({reason}); it accepts no more writes")]
    Poisoned { reason: String },
    /// The next segment could not be prepared (a full disk): nothing was appended and the
    /// journal is not poisoned; the writer refuses writes until there is room again.
    #[error("no room for the next journal segment in {path}: {source}")]
    NoRoom { path: PathBuf, source: io::Error },
    /// Damage that is not an unacknowledged torn tail: refuse to start.
    #[error(
        "journal corrupt: {path} at byte {offset}: {reason} (back up the folder, then start with \
         the truncate-corruption option to cut the journal there)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal configuration invalid: {0}")]
    Config(String),
    #[error("record payload of {len} bytes is outside 1..={max}")]
    PayloadSize { len: usize, max: usize },
    #[error("record {got} appended where {expected} is next")]
    SequenceOutOfOrder { expected: u64, got: u64 },
    #[error("{path} belongs to shard {found}, not shard {expected}")]
    WrongShard {
        path: PathBuf,
        found: u16,
        expected: u16,
    },
}

impl JournalError {
    pub(crate) fn io(path: PathBuf) -> impl FnOnce(io::Error) -> JournalError {
        move |source| JournalError::Io { path, source }
    }
}
