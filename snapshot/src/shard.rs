//! A durable shard on disk: its folder layout, the start-up recovery (newest valid snapshot,
//! then the journal after it), and the lock that keeps two processes off one folder.
//!
//! ```text
//! <data_dir>/shard-<NNN>/LOCK          held (flock) by the process that owns the shard
//! <data_dir>/shard-<NNN>/journal/      segment files, archive/ for retired ones
//! <data_dir>/shard-<NNN>/snapshots/    <sequence>.snap
//! ```

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use paycore_engine::{Engine, EngineConfig};
use paycore_journal::{
    JournalConfig, JournalError, JournalReader, JournalWriter, MmapStorage, Recovered,
    RecoveryOptions, recover,
};

use crate::file::{SnapshotError, list_snapshots, read_snapshot};
use crate::replay::replay_to_end;

/// Records applied per reader call during replay.
const REPLAY_BATCH_RECORDS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPaths {
    pub root: PathBuf,
    pub journal: PathBuf,
    pub snapshots: PathBuf,
}

impl ShardPaths {
    pub fn new(data_dir: &Path, shard: u16) -> ShardPaths {
        let root = data_dir.join(format!("shard-{shard:03}"));
        ShardPaths {
            journal: root.join("journal"),
            snapshots: root.join("snapshots"),
            root,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is in use by another process (lock held)")]
    Locked { path: PathBuf },
    #[error(
        "journal starts at sequence {journal_first} but the state needs {needed} next \
         (segments were removed that no snapshot covers)"
    )]
    Gap { journal_first: u64, needed: u64 },
    #[error("journal record {sequence} does not decode: {reason}")]
    Replay { sequence: u64, reason: String },
}

/// What start-up found and did, for the log and for `paycore status`.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// The snapshot loaded: (sequence, path).
    pub snapshot: Option<(u64, PathBuf)>,
    /// Snapshots passed over, newest first, with why.
    pub skipped_snapshots: Vec<(PathBuf, String)>,
    /// Journal records replayed after the snapshot.
    pub replayed: u64,
    pub journal: Recovered,
    pub elapsed_ms: u64,
    /// Of which: loading and validating the snapshot, and replaying the journal after it.
    pub snapshot_load_ms: u64,
    pub replay_ms: u64,
}

/// One shard, recovered and ready to append.
pub struct DurableShard {
    pub engine: Engine,
    pub journal: JournalWriter<MmapStorage>,
    pub paths: ShardPaths,
    pub report: RecoveryReport,
    _lock: File,
}

impl std::fmt::Debug for DurableShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableShard")
            .field("paths", &self.paths)
            .field("report", &self.report)
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the shard folder's lock, or says who holds it.
fn lock(paths: &ShardPaths) -> Result<File, ShardError> {
    fs::create_dir_all(&paths.root).map_err(io(&paths.root))?;
    let path = paths.root.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(ShardError::Locked { path }),
        Err(fs::TryLockError::Error(error)) => Err(ShardError::Io {
            path,
            source: error,
        }),
    }
}

/// Recovers shard `engine_config.shard` under `data_dir`: the newest valid snapshot, then every
/// journal record after it. A corrupt snapshot falls back to the one before (and says so).
pub fn open_shard(
    data_dir: &Path,
    engine_config: EngineConfig,
    journal_config: JournalConfig,
    options: RecoveryOptions,
) -> Result<DurableShard, ShardError> {
    let started = Instant::now();
    let shard = engine_config.shard;
    assert_eq!(
        shard, journal_config.shard,
        "engine and journal shard differ"
    );
    let paths = ShardPaths::new(data_dir, shard);
    let lock = lock(&paths)?;
    let mut storage = MmapStorage::open_dir(&paths.journal).map_err(io(&paths.journal))?;
    let journal = recover(&mut storage, shard, 1, options)?;
    if let Some(truncation) = &journal.truncation {
        tracing::warn!(shard, ?truncation, "journal was cut during recovery");
    }

    let mut skipped = Vec::new();
    let mut loaded = None;
    for (sequence, path) in list_snapshots(&paths.snapshots)? {
        if sequence > journal.last_sequence && journal.last_sequence > 0 {
            let reason = format!(
                "ahead of the journal (which ends at {})",
                journal.last_sequence
            );
            tracing::warn!(shard, path = %path.display(), %reason, "snapshot skipped");
            skipped.push((path, reason));
            continue;
        }
        match read_snapshot(&path, &engine_config) {
            Ok(engine) => {
                loaded = Some((engine, sequence, path));
                break;
            }
            Err(error) => {
                tracing::warn!(shard, %error, "snapshot unusable; falling back to an older one");
                skipped.push((path, error.to_string()));
            }
        }
    }
    let (mut engine, snapshot) = match loaded {
        Some((engine, sequence, path)) => (engine, Some((sequence, path))),
        None => (Engine::new(engine_config), None),
    };
    let snapshot_load_ms = started.elapsed().as_millis() as u64;
    let needed = engine.last_sequence() + 1;
    let mut journal = journal;
    if journal.segments.is_empty() {
        // Nothing journaled since the snapshot: the next record follows it.
        journal.next_sequence = needed;
        journal.last_sequence = needed - 1;
    }
    if journal.first_sequence > needed {
        return Err(ShardError::Gap {
            journal_first: journal.first_sequence,
            needed,
        });
    }

    let reader = JournalReader::new(storage.clone(), needed, None);
    let replay_started = Instant::now();
    let replayed = replay_to_end(reader, &mut engine, REPLAY_BATCH_RECORDS)?;
    assert_eq!(
        engine.last_sequence(),
        journal.last_sequence.max(needed - 1),
        "replay stopped early"
    );

    let replay_ms = replay_started.elapsed().as_millis() as u64;
    let journal_writer = JournalWriter::open(storage, journal_config, &journal)?;
    let report = RecoveryReport {
        snapshot,
        skipped_snapshots: skipped,
        replayed,
        journal,
        elapsed_ms: started.elapsed().as_millis() as u64,
        snapshot_load_ms,
        replay_ms,
    };
    tracing::info!(
        shard,
        snapshot = ?report.snapshot.as_ref().map(|s| s.0),
        replayed,
        last_sequence = engine.last_sequence(),
        elapsed_ms = report.elapsed_ms,
        snapshot_load_ms = report.snapshot_load_ms,
        replay_ms = report.replay_ms,
        replay_records_per_s = replayed.saturating_mul(1_000) / report.replay_ms.max(1),
        "shard recovered"
    );
    Ok(DurableShard {
        engine,
        journal: journal_writer,
        paths,
        report,
        _lock: lock,
    })
}
