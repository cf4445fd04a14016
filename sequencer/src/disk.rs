//! Disk head-room: a shard stops taking writes *before* its journal would fail.
//!
//! A journal segment is preallocated, so records written into it never meet a full disk; what
//! can fail is preparing the next segment, or a snapshot. The writer therefore checks the free
//! space of the journal's filesystem every [`DiskPolicy::check_interval_ms`] and keeps a reserve
//! (by default two segments and the newest snapshot's size). Below it, or when the next segment
//! cannot be prepared, the shard turns **read-only**: client writes are answered
//! [`CommandResult::DiskFull`](crate::CommandResult::DiskFull), legs wait in their channel,
//! queries and status go on, a snapshot is asked for and retention deletes (instead of
//! archiving) the segments it covers. When the space is back and the next segment is ready,
//! writes resume by themselves. Only a write that still fails (ENOSPC or EIO in the middle of a
//! commit) poisons the shard, as before; both states are kept with their time and reason.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How a shard watches its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPolicy {
    /// Free bytes kept on the journal's filesystem: below them, writes are refused. `None`: two
    /// segments plus the newest snapshot's size.
    pub reserve_bytes: Option<u64>,
    /// A snapshot is asked for once this many journal bytes were written since the last one
    /// (besides the snapshot policy's count and time), so that retention can keep the journal
    /// small. Capped at start to a quarter of the free space, and at least one segment. 0: off.
    pub snapshot_every_journal_bytes: u64,
    /// Refuse to start a shard whose disk is already below the reserve (instead of starting it
    /// read-only and saying why).
    pub require_writable: bool,
    /// How often the free space is read (one `statvfs`).
    pub check_interval_ms: u64,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy {
            reserve_bytes: None,
            snapshot_every_journal_bytes: 1 << 30,
            require_writable: false,
            check_interval_ms: 100,
        }
    }
}

/// The default reserve: room for two more segments and one more snapshot.
pub fn default_reserve_bytes(segment_bytes: u64, snapshot_bytes: u64) -> u64 {
    segment_bytes
        .saturating_mul(2)
        .saturating_add(snapshot_bytes)
}

/// Whether a shard takes writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Healthy,
    /// Writes refused (`disk_full`) until there is room again; reads go on.
    ReadOnly { since_ms: u64, reason: String },
    /// A journal write failed: the shard answers `shard_unavailable` until a restart.
    Poisoned { since_ms: u64, reason: String },
}

impl Health {
    /// `healthy`, `read_only` or `poisoned`.
    pub fn name(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::ReadOnly { .. } => "read_only",
            Health::Poisoned { .. } => "poisoned",
        }
    }

    /// 0 healthy, 1 read-only, 2 poisoned (a metric's value).
    pub fn code(&self) -> u64 {
        match self {
            Health::Healthy => 0,
            Health::ReadOnly { .. } => 1,
            Health::Poisoned { .. } => 2,
        }
    }

    pub fn since_ms(&self) -> Option<u64> {
        match self {
            Health::Healthy => None,
            Health::ReadOnly { since_ms, .. } | Health::Poisoned { since_ms, .. } => {
                Some(*since_ms)
            }
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Healthy => None,
            Health::ReadOnly { reason, .. } | Health::Poisoned { reason, .. } => Some(reason),
        }
    }
}

/// What a shard publishes about its disk, for status and metrics.
#[derive(Debug, Default)]
pub struct DiskStats {
    pub health: Mutex<Health>,
    /// True while read-only for lack of disk space.
    pub full: AtomicBool,
    pub free_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
    pub reserve_bytes: AtomicU64,
    /// Client commands answered `disk_full`.
    pub refused_commands: AtomicU64,
    /// Times the shard turned read-only for lack of space.
    pub read_only_episodes: AtomicU64,
    /// Snapshots asked for because the journal grew past its size threshold or the disk filled.
    pub snapshots_requested: AtomicU64,
}

impl DiskStats {
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_health(&self, health: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes of the newest snapshot file in `dir` (0: none): what the next one needs, about.
pub(crate) fn newest_snapshot_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .filter_map(|e| Some((e.file_name(), e.metadata().ok()?.len())))
        .max()
        .map_or(0, |(_, bytes)| bytes)
}

/// The writer's side: when it last looked, and how much journal was written since the last
/// snapshot.
#[derive(Debug)]
pub(crate) struct DiskWatch {
    pub policy: DiskPolicy,
    pub last_check: std::time::Instant,
    pub snapshot_bytes: u64,
    /// Journal bytes appended since the newest snapshot the writer knows of.
    pub journal_bytes_since_snapshot: u64,
    pub snapshot_seen: u64,
    /// A size-triggered snapshot was asked for and is not there yet.
    pub snapshot_asked: bool,
    /// "Nearly full" was logged (below twice the reserve) and the space has not recovered.
    pub warned_low: bool,
}

impl DiskWatch {
    pub fn new(policy: DiskPolicy, snapshot_bytes: u64) -> DiskWatch {
        DiskWatch {
            policy,
            // Due at the first turn.
            last_check: std::time::Instant::now()
                .checked_sub(std::time::Duration::from_millis(policy.check_interval_ms))
                .unwrap_or_else(std::time::Instant::now),
            snapshot_bytes,
            journal_bytes_since_snapshot: 0,
            snapshot_seen: 0,
            snapshot_asked: false,
            warned_low: false,
        }
    }
}

/// Size of a journal folder's files: live segments (and the spare), and the archive.
pub fn journal_disk_use(dir: &std::path::Path) -> (u64, u64) {
    let size = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    (size(dir), size(&dir.join("archive")))
}

/// True when the shard is read-only for lack of space.
pub(crate) fn is_full(stats: &DiskStats) -> bool {
    stats.full.load(Ordering::Acquire)
}
