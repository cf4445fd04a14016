//! Snapshot files: one engine image at a sequence number, checksummed, written atomically.
//!
//! ```text
//! header, 64 bytes (little-endian):
//!   0  [u8; 8] magic "PAYCSNP1"
//!   8  u32     format version (1)
//!  12  u16     shard
//!  14  u16     reserved (0)
//!  16  u64     sequence (last command applied)
//!  24  u128    state hash of the engine at that sequence
//!  40  u64     payload length
//!  48  u32     payload crc32c
//!  52  [u8; 8] reserved (0)
//!  60  u32     crc32c of bytes 0..60
//! payload: the rkyv encoding of `paycore_engine::image::EngineImage`
//! ```
//! Written to `<name>.tmp`, fsynced, renamed to `<sequence:020>.snap`, folder fsynced: a crash
//! leaves either the old set of snapshots or the new one, never a half file under a real name.
//! Loading checks both checksums, validates the archive, rebuilds the engine (which checks the
//! ledger invariants) and compares its state hash with the header's.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use paycore_engine::image::EngineImage;
use paycore_engine::{Engine, EngineConfig};
use paycore_journal::sync_dir;
use rkyv::util::AlignedVec;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"PAYCSNP1";
pub const SNAPSHOT_VERSION: u32 = 1;
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// Bytes written between two syncs while writing a snapshot.
pub const SNAPSHOT_SYNC_CHUNK_BYTES: usize = 32 << 20;
/// Largest snapshot payload read back (a bound on what a damaged length can make us allocate).
pub const SNAPSHOT_PAYLOAD_BYTES_MAX: u64 = 64 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a snapshot header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub shard: u16,
    pub sequence: u64,
    pub state_hash: u128,
    pub payload_bytes: u64,
    pub payload_crc: u32,
}

impl SnapshotHeader {
    fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut out = [0u8; SNAPSHOT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        out[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out[12..14].copy_from_slice(&self.shard.to_le_bytes());
        out[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        out[24..40].copy_from_slice(&self.state_hash.to_le_bytes());
        out[40..48].copy_from_slice(&self.payload_bytes.to_le_bytes());
        out[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; SNAPSHOT_HEADER_BYTES]) -> Result<SnapshotHeader, String> {
        if bytes[0..8] != SNAPSHOT_MAGIC {
            return Err("not a snapshot (bad magic)".into());
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let long = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if crc32c::crc32c(&bytes[..60]) != word(60) {
            return Err("header checksum mismatch".into());
        }
        if word(8) != SNAPSHOT_VERSION {
            return Err(format!(
                "format version {} (this build reads {SNAPSHOT_VERSION})",
                word(8)
            ));
        }
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&bytes[24..40]);
        Ok(SnapshotHeader {
            shard: u16::from_le_bytes([bytes[12], bytes[13]]),
            sequence: long(16),
            state_hash: u128::from_le_bytes(hash),
            payload_bytes: long(40),
            payload_crc: word(48),
        })
    }
}

/// File name of the snapshot at `sequence`.
pub fn snapshot_name(sequence: u64) -> String {
    format!("{sequence:020}.snap")
}

/// Snapshots in `dir`, newest first, as (sequence, path).
pub fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => {
            return Err(SnapshotError::Io {
                path: dir.to_path_buf(),
                source: error,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.strip_suffix(".snap") else {
            continue;
        };
        if digits.len() == 20
            && let Ok(sequence) = digits.parse::<u64>()
        {
            found.push((sequence, entry.path()));
        }
    }
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    Ok(found)
}

/// Serialises an image (outside any lock: the caller owns the image).
pub fn encode_image(image: &EngineImage) -> AlignedVec {
    // Serialising plain owned data into memory cannot fail except by running out of memory.
    rkyv::to_bytes::<rkyv::rancor::Error>(image)
        .unwrap_or_else(|error| panic!("rkyv serialisation of an engine image failed: {error}"))
}

/// Writes a snapshot of `engine` into `dir` atomically; returns its path and size.
pub fn write_snapshot(dir: &Path, engine: &Engine) -> Result<(PathBuf, u64), SnapshotError> {
    let image = engine.to_image();
    let payload = encode_image(&image);
    let header = SnapshotHeader {
        shard: engine.config().shard,
        sequence: engine.last_sequence(),
        state_hash: engine.state_hash(),
        payload_bytes: payload.len() as u64,
        payload_crc: crc32c::crc32c(&payload),
    };
    write_snapshot_bytes(dir, &header, &payload)
}

fn write_snapshot_bytes(
    dir: &Path,
    header: &SnapshotHeader,
    payload: &[u8],
) -> Result<(PathBuf, u64), SnapshotError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = snapshot_name(header.sequence);
    let path = dir.join(&name);
    let temporary = dir.join(format!("{name}.tmp"));
    // Check the room first: a snapshot that cannot fit is refused before it takes the journal's
    // last free blocks.
    let needed = (SNAPSHOT_HEADER_BYTES + payload.len()) as u64;
    let space = paycore_journal::disk_space(dir).map_err(io(dir))?;
    if space.free_bytes < needed {
        return Err(SnapshotError::Io {
            path: temporary,
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "no room for a snapshot of {needed} bytes ({} bytes free)",
                    space.free_bytes
                ),
            ),
        });
    }
    let written = write_file(&temporary, header, payload);
    if written.is_err() {
        // A partial image only takes space: nothing reads a `.tmp`.
        let _ = fs::remove_file(&temporary);
    }
    written?;
    fs::rename(&temporary, &path).map_err(io(&path))?;
    sync_dir(dir).map_err(io(dir))?;
    Ok((path, needed))
}

fn write_file(
    temporary: &Path,
    header: &SnapshotHeader,
    payload: &[u8],
) -> Result<(), SnapshotError> {
    let mut file = File::create(temporary).map_err(io(temporary))?;
    file.write_all(&header.encode()).map_err(io(temporary))?;
    // Write in chunks and sync as we go: one fsync of a gigabyte at the end would saturate the
    // disk for seconds and stall the journal's group commits behind it.
    for chunk in payload.chunks(SNAPSHOT_SYNC_CHUNK_BYTES) {
        file.write_all(chunk).map_err(io(temporary))?;
        file.sync_data().map_err(io(temporary))?;
    }
    file.sync_all().map_err(io(temporary))
}

/// Reads and fully validates one snapshot into an engine.
pub fn read_snapshot(path: &Path, config: &EngineConfig) -> Result<Engine, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(io(path))?;
    let mut header_bytes = [0u8; SNAPSHOT_HEADER_BYTES];
    file.read_exact(&mut header_bytes)
        .map_err(|e| invalid(format!("header unreadable: {e}")))?;
    let header = SnapshotHeader::decode(&header_bytes).map_err(invalid)?;
    if header.shard != config.shard {
        return Err(invalid(format!(
            "snapshot of shard {}, not {}",
            header.shard, config.shard
        )));
    }
    let file_bytes = file.metadata().map_err(io(path))?.len();
    if header.payload_bytes > SNAPSHOT_PAYLOAD_BYTES_MAX
        || file_bytes != SNAPSHOT_HEADER_BYTES as u64 + header.payload_bytes
    {
        return Err(invalid(format!(
            "length mismatch: header says {} payload bytes, file has {file_bytes} bytes",
            header.payload_bytes
        )));
    }
    let mut payload = AlignedVec::<16>::with_capacity(header.payload_bytes as usize);
    payload.resize(header.payload_bytes as usize, 0);
    file.read_exact(&mut payload)
        .map_err(|e| invalid(format!("payload unreadable: {e}")))?;
    if crc32c::crc32c(&payload) != header.payload_crc {
        return Err(invalid("payload checksum mismatch".into()));
    }
    let image = rkyv::from_bytes::<EngineImage, rkyv::rancor::Error>(&payload)
        .map_err(|e| invalid(format!("archive invalid: {e}")))?;
    let engine = Engine::from_image(config.clone(), &image).map_err(|e| invalid(e.to_string()))?;
    if engine.last_sequence() != header.sequence || engine.state_hash() != header.state_hash {
        return Err(invalid(
            "state hash or sequence differs from the header".into(),
        ));
    }
    Ok(engine)
}

/// Deletes all but the `keep` newest snapshots (and stray `.tmp` files); returns what it removed.
pub fn prune_snapshots(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut removed = Vec::new();
    for (_, path) in list_snapshots(dir)?.into_iter().skip(keep.max(1)) {
        fs::remove_file(&path).map_err(io(&path))?;
        removed.push(path);
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(io(&path))?;
                removed.push(path);
            }
        }
    }
    if !removed.is_empty() {
        sync_dir(dir).map_err(io(dir))?;
    }
    Ok(removed)
}
