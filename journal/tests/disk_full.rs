//! A full disk: the writer learns that the next segment cannot be prepared *before* it appends
//! a batch (so the batch is refused, not half-written and poisoned), a failed preparation leaves
//! no partial file behind, and writes resume once there is room, without a restart. On a real
//! (tmpfs) filesystem of a few MiB made by the test, and on the simulated storage.

use std::path::{Path, PathBuf};
use std::process::Command;

use paycore_journal::format::record_bytes;
use paycore_journal::sim::SimStorage;
use paycore_journal::{
    Durability, JournalConfig, JournalError, JournalReader, JournalWriter, MmapStorage,
    RecoveryOptions, Storage, recover,
};

const SEGMENT_BYTES: u64 = 1 << 20;

fn config() -> JournalConfig {
    JournalConfig {
        shard: 0,
        epoch: 1,
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 128 * 1024,
        durability: Durability::Fsync,
    }
}

const PAYLOAD: [u8; 200] = [7u8; 200];

fn open<S: Storage + Clone>(storage: &S) -> JournalWriter<S> {
    let mut scan = storage.clone();
    let recovered = recover(&mut scan, 0, 1, RecoveryOptions::default()).expect("recovers");
    JournalWriter::open(storage.clone(), config(), &recovered).expect("writer opens")
}

/// Appends `count` records after the last one, each batch checked first with `ensure_room`;
/// returns how many were appended and committed before the room ran out.
fn append_batches<S: Storage>(writer: &mut JournalWriter<S>, count: u64) -> Result<u64, String> {
    let batch = 64u64;
    let mut done = 0;
    while done < count {
        let bytes = batch * record_bytes(PAYLOAD.len()) as u64;
        match writer.ensure_room(bytes) {
            Ok(()) => {}
            Err(JournalError::NoRoom { .. }) => return Ok(done),
            Err(other) => return Err(other.to_string()),
        }
        for _ in 0..batch {
            let sequence = writer.next_sequence();
            writer
                .append(sequence, sequence, &PAYLOAD)
                .map_err(|e| e.to_string())?;
        }
        writer.commit().map_err(|e| e.to_string())?;
        done += batch;
    }
    Ok(done)
}

#[test]
fn a_full_disk_refuses_the_batch_before_appending_and_writes_resume_when_room_returns() {
    let storage = SimStorage::new();
    let mut writer = open(&storage);
    let per_segment = SEGMENT_BYTES / record_bytes(PAYLOAD.len()) as u64;
    assert_eq!(
        append_batches(&mut writer, per_segment / 2).expect("room"),
        (per_segment / 2).div_ceil(64) * 64
    );
    storage.set_full(true);
    let written = append_batches(&mut writer, 10 * per_segment).expect("refused, not failed");
    assert!(written < per_segment, "stops within the first segment");
    let durable = writer.durable_sequence();
    assert!(
        !writer.is_poisoned(),
        "a refusal seen coming poisons nothing"
    );
    assert_eq!(writer.next_sequence(), durable + 1, "nothing half-appended");
    storage.set_full(false);
    assert_eq!(
        append_batches(&mut writer, 2 * per_segment).expect("room again"),
        (2 * per_segment).div_ceil(64) * 64
    );
    assert!(writer.segments().len() >= 3, "rolled over twice");
    let mut reader = JournalReader::new(storage, 1, None);
    let mut last = 0;
    while reader
        .read(10_000, |r| {
            assert_eq!(r.sequence, last + 1);
            last = r.sequence;
        })
        .expect("read")
        > 0
    {}
    assert_eq!(last, writer.durable_sequence());
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallVolume {
    dir: PathBuf,
}

impl SmallVolume {
    fn mount(label: &str, size_kib: u64) -> Option<SmallVolume> {
        let dir = std::env::temp_dir().join(format!("paycore-{label}-{}", std::process::id()));
        let _ = Command::new("umount").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&dir)
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); run as root",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        Some(SmallVolume { dir })
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        // Lazy: a failed test may still hold files open (threads of a node); the mount must
        // not outlive the test.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn creating_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".creating"))
        .collect()
}

#[test]
fn on_a_real_full_volume_no_partial_segment_stays_and_room_returns_without_a_restart() {
    // 5 MiB: two 1 MiB segments and a spare, then a blocker takes the rest.
    let Some(volume) = SmallVolume::mount("journal-full", 5120) else {
        return;
    };
    let journal = volume.path().join("journal");
    let storage = MmapStorage::open_dir(&journal).expect("storage");
    let mut writer = open(&storage);
    let per_segment = SEGMENT_BYTES / record_bytes(PAYLOAD.len()) as u64;
    append_batches(&mut writer, per_segment + per_segment / 2).expect("two segments' worth");
    assert_eq!(writer.segments().len(), 2);
    // The spare for the third segment was being prepared; wait for it, then fill the disk.
    writer.ensure_room(SEGMENT_BYTES).expect("spare ready");
    let blocker = volume.path().join("blocker");
    let free = writer.space().expect("statvfs").expect("known").free_bytes;
    std::fs::write(&blocker, vec![1u8; free as usize]).ok();
    // Roll into the spare: the next spare cannot be prepared.
    let written = append_batches(&mut writer, 4 * per_segment).expect("refused, not failed");
    assert!(written > 0 && written < 2 * per_segment, "wrote {written}");
    assert!(!writer.is_poisoned());
    assert_eq!(writer.segments().len(), 3);
    assert_eq!(
        creating_files(&journal),
        Vec::<String>::new(),
        "a failed preparation leaves no partial file"
    );
    let durable = writer.durable_sequence();
    // Room again: writes continue in the same process.
    std::fs::remove_file(&blocker).expect("blocker removed");
    let written = append_batches(&mut writer, per_segment).expect("room again");
    assert!(
        written >= per_segment,
        "wrote {written} after the room returned"
    );
    assert_eq!(writer.durable_sequence(), durable + written);
    assert!(writer.segments().len() >= 4, "rolled on");
    drop(writer);
    drop(storage);
}
