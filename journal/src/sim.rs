//! A simulated storage for power-loss tests: every file has a live image (what the process
//! sees) and a durable image (what survives a power cut). `sync` copies the range from live to
//! durable; [`SimStorage::power_cut`] throws away everything not synced, optionally keeping a
//! prefix of the unsynced writes (a write that was cut short), and sync failures can be injected.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{SegmentFile, Storage};

#[derive(Debug, Default)]
struct SimImage {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Unsynced writes in the order they happened: (offset, len).
    unsynced: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<String, Arc<Mutex<SimImage>>>,
    archived: Vec<String>,
    /// Syncs left before every sync fails (None: never fail).
    syncs_before_failure: Option<u64>,
    /// The disk is full: creating or preparing a segment fails with `ENOSPC`.
    full: bool,
}

/// A simulated folder; clones share the same files (a "restarted" writer opens a clone).
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the files from the next assertion.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimStorage {
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// After `syncs` more successful syncs, every sync fails.
    pub fn fail_syncs_after(&self, syncs: u64) {
        lock(&self.state).syncs_before_failure = Some(syncs);
    }

    /// The disk fills up (`true`) or has room again (`false`): while full, creating or
    /// preparing a segment fails with `ENOSPC` (writes into existing segments still succeed, as
    /// they do into preallocated blocks).
    pub fn set_full(&self, full: bool) {
        lock(&self.state).full = full;
    }

    /// The power goes out: every file becomes its durable image plus, of the unsynced writes in
    /// order, the first `keep_unsynced_bytes` bytes (a write cut short keeps a prefix).
    pub fn power_cut(&self, keep_unsynced_bytes: usize) {
        let state = lock(&self.state);
        for image in state.files.values() {
            let mut image = lock(image);
            let mut kept = image.durable.clone();
            let mut budget = keep_unsynced_bytes;
            for &(offset, len) in &image.unsynced {
                let take = len.min(budget);
                kept[offset..offset + take].copy_from_slice(&image.live[offset..offset + take]);
                budget -= take;
            }
            // What reached the medium before the cut is on it, synced or not.
            image.durable = kept.clone();
            image.live = kept;
            image.unsynced.clear();
        }
        drop(state);
        lock(&self.state).syncs_before_failure = None;
    }

    /// Flips one bit of a file's live and durable images (damage on the medium).
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) {
        let state = lock(&self.state);
        let mut image = lock(&state.files[name]);
        image.live[offset] ^= 1 << bit;
        image.durable[offset] ^= 1 << bit;
    }

    /// Overwrites bytes in both images.
    pub fn overwrite(&self, name: &str, offset: usize, data: &[u8]) {
        let state = lock(&self.state);
        let mut image = lock(&state.files[name]);
        image.live[offset..offset + data.len()].copy_from_slice(data);
        image.durable[offset..offset + data.len()].copy_from_slice(data);
    }

    /// A copy of a file's live bytes.
    pub fn contents(&self, name: &str) -> Vec<u8> {
        let state = lock(&self.state);
        let image = lock(&state.files[name]);
        image.live.clone()
    }

    pub fn archived(&self) -> Vec<String> {
        lock(&self.state).archived.clone()
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.state).files.keys().cloned().collect())
    }

    fn create(&mut self, name: &str, len: u64) -> io::Result<SimFile> {
        if lock(&self.state).full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let image = SimImage {
            live: vec![0; len],
            durable: vec![0; len],
            unsynced: Vec::new(),
        };
        let image = Arc::new(Mutex::new(image));
        lock(&self.state)
            .files
            .insert(name.to_string(), image.clone());
        Ok(SimFile {
            image,
            state: self.state.clone(),
        })
    }

    fn open(&mut self, name: &str) -> io::Result<SimFile> {
        let state = lock(&self.state);
        let image = state
            .files
            .get(name)
            .cloned()
            .ok_or(io::ErrorKind::NotFound)?;
        Ok(SimFile {
            image,
            state: self.state.clone(),
        })
    }

    fn archive(&mut self, name: &str) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.files.remove(name).ok_or(io::ErrorKind::NotFound)?;
        state.archived.push(name.to_string());
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        lock(&self.state)
            .files
            .remove(name)
            .ok_or(io::ErrorKind::NotFound)?;
        Ok(())
    }

    fn backup(&mut self, name: &str, suffix: &str) -> io::Result<PathBuf> {
        let mut state = lock(&self.state);
        let image = state
            .files
            .get(name)
            .cloned()
            .ok_or(io::ErrorKind::NotFound)?;
        let copy = {
            let image = lock(&image);
            SimImage {
                live: image.live.clone(),
                durable: image.live.clone(),
                unsynced: Vec::new(),
            }
        };
        let backup = format!("{name}.{suffix}");
        state
            .files
            .insert(backup.clone(), Arc::new(Mutex::new(copy)));
        Ok(PathBuf::from(backup))
    }

    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from("sim").join(name)
    }

    fn prepare_next(&mut self, _len: u64) -> io::Result<()> {
        if lock(&self.state).full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct SimFile {
    image: Arc<Mutex<SimImage>>,
    state: Arc<Mutex<SimState>>,
}

impl SegmentFile for SimFile {
    fn len(&self) -> usize {
        lock(&self.image).live.len()
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&lock(&self.image).live)
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        let mut image = lock(&self.image);
        image.live[offset..offset + data.len()].copy_from_slice(data);
        image.unsynced.push((offset, data.len()));
    }

    fn write_out(&mut self) -> io::Result<()> {
        // Live bytes are what a process crash keeps; only a power cut drops unsynced ones.
        Ok(())
    }

    fn sync(&mut self, offset: usize, len: usize) -> io::Result<()> {
        {
            let mut state = lock(&self.state);
            match &mut state.syncs_before_failure {
                Some(0) => return Err(io::Error::other("injected sync failure")),
                Some(left) => *left -= 1,
                None => {}
            }
        }
        let mut image = lock(&self.image);
        let end = offset + len;
        let SimImage {
            live,
            durable,
            unsynced,
        } = &mut *image;
        durable[offset..end].copy_from_slice(&live[offset..end]);
        // Writes wholly inside the synced range are durable now.
        unsynced.retain(|&(o, l)| o < offset || o + l > end);
        Ok(())
    }
}
