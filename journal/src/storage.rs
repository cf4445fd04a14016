//! Storage: the seam between the journal and the disk.
//!
//! The journal sees a folder of segment files, each a fixed-length byte array it writes into and
//! syncs by range. [`MmapStorage`] is the real one (files preallocated with `fallocate`, so they
//! read as zeros and their space is reserved; mapped with memmap2 for readers; commits written
//! with `pwrite` and synced with `fdatasync`). [`crate::sim::SimStorage`] keeps a live and a
//! durable image of every file so a test can cut the power and keep only what was synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::MmapMut;

/// A folder of segment files.
pub trait Storage: Send {
    type File: SegmentFile;

    /// Names of the files in the folder (not sorted).
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a file of `len` bytes that reads as zeros, durably (file and folder synced).
    fn create(&mut self, name: &str, len: u64) -> io::Result<Self::File>;
    fn open(&mut self, name: &str) -> io::Result<Self::File>;
    /// Moves a file into the `archive/` subfolder (durably).
    fn archive(&mut self, name: &str) -> io::Result<()>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Copies a file to `name.<suffix>` before an operator-approved truncation.
    fn backup(&mut self, name: &str, suffix: &str) -> io::Result<PathBuf>;
    /// Where a file lives, for messages.
    fn path(&self, name: &str) -> PathBuf;
    /// Makes sure the next [`create`](Self::create) of `len` bytes needs no new disk space: the
    /// spare segment is complete (waiting for the one being prepared, or preparing it now). An
    /// error (a full disk) leaves no partial file and changes nothing: the caller may try again
    /// later. Storage without a spare has nothing to prepare.
    fn prepare_next(&mut self, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Space on the folder's filesystem; `None` where it is not known (simulated storage).
    fn space(&self) -> io::Result<Option<DiskSpace>> {
        Ok(None)
    }
}

/// Free and total bytes of a filesystem, as an unprivileged process may use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// One segment file: a fixed-length byte array.
pub trait SegmentFile: Send {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Runs `f` over the whole file's current contents.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
    fn write(&mut self, offset: usize, data: &[u8]);
    /// Hands every byte written so far to the operating system (its page cache), without
    /// waiting for the medium: what `Durability::None` promises. A process crash after it loses
    /// nothing; a power cut may.
    fn write_out(&mut self) -> io::Result<()>;
    /// Makes `offset..offset + len` durable. An error means the bytes may or may not be durable.
    fn sync(&mut self, offset: usize, len: usize) -> io::Result<()>;
}

/// How a mapped segment's dirty range is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// Records are copied into the mapping; `fdatasync` on the file writes back the pages
    /// dirtied through it.
    Fdatasync,
    /// `msync(MS_SYNC)` of the dirty range only.
    Msync,
    /// The default. A commit's records are written with one `pwrite` instead of through the
    /// mapping (which stays for readers and recovery: one page cache), then `fdatasync`. It
    /// avoids the write-protect / page_mkwrite cycle a shared mapping pays per commit: measured
    /// 5x lower commit latency and 2.8-5x more records/s than writing through the mapping
    /// (BENCHMARKS.md, all three side by side).
    #[default]
    PwriteFdatasync,
}

/// Name of the file prepared in the background for the next segment.
const SPARE_NAME: &str = "next-segment.creating";

/// The next segment file: being prepared on a background thread, or complete.
#[derive(Debug)]
struct Spare {
    len: u64,
    state: SpareState,
}

#[derive(Debug)]
enum SpareState {
    Preparing(std::thread::JoinHandle<io::Result<()>>),
    /// Complete on disk (its thread was joined and succeeded).
    Ready,
}

impl Spare {
    /// Waits for the spare; true when it is complete on disk.
    fn finish(self) -> bool {
        match self.state {
            SpareState::Ready => true,
            SpareState::Preparing(thread) => matches!(thread.join(), Ok(Ok(()))),
        }
    }
}

/// Where the spare's thread is kept, shared by every clone of one [`MmapStorage`].
///
/// Dropping the last clone joins the thread: a journal that is closed has no thread left
/// creating or filling a file in its folder (a test removing the folder, or a node that
/// stops, would otherwise race it).
#[derive(Debug, Default)]
struct SpareSlot(Mutex<Option<Spare>>);

impl SpareSlot {
    fn take(&self) -> Option<Spare> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, spare: Spare) {
        let previous = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(spare);
        if let Some(previous) = previous {
            // A clone created a segment meanwhile: its spare is the newer one.
            previous.finish();
        }
    }
}

impl Drop for SpareSlot {
    fn drop(&mut self) {
        if let Some(spare) = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            // The spare stays on disk, complete; `create` replaces it when sizes differ.
            spare.finish();
        }
    }
}

/// Segment files on disk, memory-mapped.
///
/// Creating a segment means writing `segment_bytes` of zeros (a 64 MiB segment takes about a
/// tenth of a second here), so the storage prepares the next one on a background thread as soon
/// as a segment is created; rolling over then costs a rename instead of a pause.
#[derive(Debug, Clone)]
pub struct MmapStorage {
    dir: PathBuf,
    sync: SyncMethod,
    spare: Arc<SpareSlot>,
}

impl MmapStorage {
    /// Opens (creating if needed) the folder `dir`, with the default [`SyncMethod`].
    pub fn open_dir(dir: &Path) -> io::Result<MmapStorage> {
        Self::with_sync(dir, SyncMethod::default())
    }

    pub fn with_sync(dir: &Path, sync: SyncMethod) -> io::Result<MmapStorage> {
        fs::create_dir_all(dir)?;
        Ok(MmapStorage {
            dir: dir.to_path_buf(),
            sync,
            spare: Arc::new(SpareSlot::default()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Creates `path` as a segment file of `len` bytes that read as zeros, and syncs it.
///
/// The blocks are reserved with `fallocate` (unwritten extents): the disk space is taken now (a
/// full disk fails here, at preparation, not in the middle of a group commit), yet no data is
/// written. Writing 64 MiB of real zeros instead, as this did before, put that much data in the
/// disk's queue every few seconds, and every group commit's flush behind it waited: at 200,000
/// transfers/s the open-loop p99 was 24-64 ms with zeros and 6.3-7.4 ms with `fallocate`, with
/// the same commit latency at every group size (BENCHMARKS.md, "The latency tail found").
///
/// Where the filesystem has no `fallocate`, real zeros are written, 1 MiB at a time with an
/// `fdatasync` after each, so that at most 1 MiB of them is ever queued ahead of a commit.
///
/// On failure (a full disk) the partial file is removed: blocks a failed `fallocate` kept would
/// otherwise stay taken, and the file would be left behind for an operator to find.
fn prepare_segment(path: &Path, len: u64) -> io::Result<()> {
    let prepared = prepare_segment_file(path, len);
    if prepared.is_err() {
        let _ = fs::remove_file(path);
    }
    prepared
}

fn prepare_segment_file(path: &Path, len: u64) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    if !allocate(&file, len)? {
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut left = len;
        while left > 0 {
            let chunk = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk])?;
            file.sync_data()?;
            left -= chunk as u64;
        }
    }
    debug_assert_eq!(file.metadata()?.len(), len);
    file.sync_all()
}

/// Zeros written per step (and synced) where `fallocate` is not available.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Reserves `len` bytes of blocks for `file` (which then reads as `len` zeros). `Ok(false)`:
/// this filesystem cannot; the caller writes zeros instead.
#[cfg(target_os = "linux")]
fn allocate(file: &File, len: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    loop {
        // SAFETY: a plain system call on a descriptor `file` keeps open; no memory is shared.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(false),
            _ => return Err(error),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(_file: &File, _len: u64) -> io::Result<bool> {
    Ok(false)
}

/// Free and total space of the filesystem `dir` is on (`statvfs`: the free blocks an
/// unprivileged process may use).
#[cfg(unix)]
pub fn disk_space(dir: &Path) -> io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    #[allow(unsafe_code)]
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` is a valid,
    // exclusively borrowed struct the call fills in.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = stats.f_frsize as u64;
    Ok(DiskSpace {
        free_bytes: (stats.f_bavail as u64).saturating_mul(block),
        total_bytes: (stats.f_blocks as u64).saturating_mul(block),
    })
}

/// Fsyncs a folder, so that a file created, renamed or removed in it stays so after a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for MmapStorage {
    type File = MmapFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str, len: u64) -> io::Result<MmapFile> {
        let path = self.dir.join(name);
        let spare = self.spare.take();
        let spare_ready = match spare {
            Some(spare) if spare.len == len => spare.finish(),
            Some(spare) => {
                spare.finish();
                false
            }
            None => false,
        };
        if spare_ready {
            fs::rename(self.dir.join(SPARE_NAME), &path)?;
        } else {
            let temporary = self.dir.join(format!("{name}.creating"));
            prepare_segment(&temporary, len)?;
            fs::rename(&temporary, &path)?;
        }
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mapped = MmapFile::map(file, path, self.sync)?;
        // Prepare the next one while this one fills.
        let spare_path = self.dir.join(SPARE_NAME);
        let thread = std::thread::Builder::new()
            .name("journal-spare".into())
            .spawn(move || prepare_segment(&spare_path, len))?;
        self.spare.put(Spare {
            len,
            state: SpareState::Preparing(thread),
        });
        Ok(mapped)
    }

    fn prepare_next(&mut self, len: u64) -> io::Result<()> {
        if let Some(spare) = self.spare.take() {
            let same_len = spare.len == len;
            if spare.finish() && same_len {
                self.spare.put(Spare {
                    len,
                    state: SpareState::Ready,
                });
                return Ok(());
            }
        }
        // None, of another size, or its preparation failed (a full disk): try again now.
        prepare_segment(&self.dir.join(SPARE_NAME), len)?;
        sync_dir(&self.dir)?;
        self.spare.put(Spare {
            len,
            state: SpareState::Ready,
        });
        Ok(())
    }

    fn space(&self) -> io::Result<Option<DiskSpace>> {
        disk_space(&self.dir).map(Some)
    }

    fn open(&mut self, name: &str) -> io::Result<MmapFile> {
        let path = self.dir.join(name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        MmapFile::map(file, path, self.sync)
    }

    fn archive(&mut self, name: &str) -> io::Result<()> {
        let archive = self.dir.join("archive");
        fs::create_dir_all(&archive)?;
        fs::rename(self.dir.join(name), archive.join(name))?;
        sync_dir(&archive)?;
        sync_dir(&self.dir)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        sync_dir(&self.dir)
    }

    fn backup(&mut self, name: &str, suffix: &str) -> io::Result<PathBuf> {
        let target = self.dir.join(format!("{name}.{suffix}"));
        fs::copy(self.dir.join(name), &target)?;
        File::open(&target)?.sync_all()?;
        sync_dir(&self.dir)?;
        Ok(target)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A memory-mapped segment file.
#[derive(Debug)]
pub struct MmapFile {
    map: MmapMut,
    file: File,
    path: PathBuf,
    sync: SyncMethod,
    /// A failed pwrite, reported by the next sync.
    write_error: Option<io::Error>,
    /// Bytes gathered for one pwrite (`PwriteFdatasync`), starting at `pending_offset`.
    pending: Vec<u8>,
    pending_offset: usize,
}

impl MmapFile {
    fn map(file: File, path: PathBuf, sync: SyncMethod) -> io::Result<MmapFile> {
        #[allow(unsafe_code)]
        // SAFETY: the mapping is only sound while no one truncates or rewrites the file behind
        // our back. Segment files belong to this shard's journal: one writer per data folder
        // (the node takes a lock file before opening it), and other processes only read.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(MmapFile {
            map,
            file,
            sync,
            path,
            write_error: None,
            pending: Vec::new(),
            pending_offset: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the gathered bytes with one pwrite; a failure is kept for the next sync.
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        use std::os::unix::fs::FileExt;
        if let Err(error) = self
            .file
            .write_all_at(&self.pending, self.pending_offset as u64)
            && self.write_error.is_none()
        {
            self.write_error = Some(error);
        }
        self.pending_offset += self.pending.len();
        self.pending.clear();
    }
}

impl SegmentFile for MmapFile {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.map)
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        if self.sync == SyncMethod::PwriteFdatasync {
            // Gather the batch and write it with one pwrite at the sync.
            if offset != self.pending_offset + self.pending.len() {
                self.flush_pending();
                self.pending_offset = offset;
            }
            self.pending.extend_from_slice(data);
        } else {
            self.map[offset..offset + data.len()].copy_from_slice(data);
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        // Through the mapping, bytes are in the page cache as soon as they are copied.
        self.flush_pending();
        if let Some(error) = crate::faults::sync_fault(&self.path) {
            return Err(error);
        }
        match self.write_error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn sync(&mut self, offset: usize, len: usize) -> io::Result<()> {
        self.flush_pending();
        if let Some(error) = crate::faults::sync_fault(&self.path) {
            return Err(error);
        }
        if let Some(error) = self.write_error.take() {
            return Err(error);
        }
        match self.sync {
            // Writes back every page of the file dirtied through the mapping, then flushes.
            SyncMethod::Fdatasync | SyncMethod::PwriteFdatasync => self.file.sync_data(),
            // msync(MS_SYNC) on the range: Linux turns it into a data sync of those pages.
            SyncMethod::Msync => self.map.flush_range(offset, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_folder(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("paycore-storage-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A new segment (the first, made in place, and the next, made by the spare thread) reads as
    /// zeros and owns its disk blocks: not a sparse file, whose space a full disk would refuse in
    /// the middle of a group commit.
    #[test]
    fn segments_read_as_zeros_and_own_their_blocks() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = temp_folder("prepare");
        let mut storage = MmapStorage::open_dir(&dir).expect("storage folder");
        let len = 4 << 20;
        for name in ["00000000000000000001.wal", "00000000000000000002.wal"] {
            let file = storage.create(name, len).expect("segment created");
            assert_eq!(file.len(), len as usize);
            assert!(file.with_bytes(|bytes| bytes.iter().all(|b| *b == 0)));
            let metadata = fs::metadata(dir.join(name)).expect("segment metadata");
            assert_eq!(metadata.len(), len);
            assert!(
                metadata.blocks() * 512 >= len,
                "{name}: {} bytes of blocks for a {len}-byte segment",
                metadata.blocks() * 512
            );
        }
        drop(storage);
        // Dropping the storage joined the spare's thread: the next segment is complete and
        // nothing writes into the folder any more (the removal below raced it before).
        let spare = fs::metadata(dir.join(SPARE_NAME)).expect("spare prepared before the drop");
        assert_eq!(spare.len(), len);
        assert!(spare.blocks() * 512 >= len);
        fs::remove_dir_all(&dir).expect("folder removed");
    }

    /// A storage cloned for a reader and dropped while the writer's clone lives keeps the
    /// spare's thread; the last clone joins it.
    #[test]
    fn the_last_clone_joins_the_spare_thread() {
        let dir = temp_folder("clones");
        let mut storage = MmapStorage::open_dir(&dir).expect("storage folder");
        let reader = storage.clone();
        let len = 4 << 20;
        storage
            .create("00000000000000000001.wal", len)
            .expect("segment created");
        drop(reader);
        drop(storage);
        assert_eq!(
            fs::metadata(dir.join(SPARE_NAME)).expect("spare").len(),
            len
        );
        fs::remove_dir_all(&dir).expect("folder removed");
    }
}
