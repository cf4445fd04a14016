//! Injected I/O failures for tests of a whole node (a sync that fails as a full or broken disk
//! would), where the journal's storage cannot be swapped for [`crate::sim::SimStorage`].
//!
//! A test arms a folder; every later sync of a segment file under it fails with the given OS
//! error until the test clears it. Unarmed, the cost is one relaxed atomic load per sync.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static ARMED: AtomicBool = AtomicBool::new(false);
static SYNC_FAULTS: Mutex<Vec<(PathBuf, i32)>> = Mutex::new(Vec::new());

/// From now on, every sync of a segment file under `dir` fails with OS error `errno`
/// (e.g. `libc::ENOSPC`, `libc::EIO`).
pub fn fail_syncs_under(dir: &Path, errno: i32) {
    let mut faults = SYNC_FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults.push((dir.to_path_buf(), errno));
    ARMED.store(true, Ordering::Release);
}

/// Syncs under `dir` succeed again.
pub fn clear_sync_faults(dir: &Path) {
    let mut faults = SYNC_FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults.retain(|(armed, _)| armed != dir);
    ARMED.store(!faults.is_empty(), Ordering::Release);
}

/// The error a sync of `path` must fail with, if a test armed one.
pub(crate) fn sync_fault(path: &Path) -> Option<io::Error> {
    if !ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let faults = SYNC_FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults
        .iter()
        .find(|(dir, _)| path.starts_with(dir))
        .map(|(_, errno)| io::Error::from_raw_os_error(*errno))
}
