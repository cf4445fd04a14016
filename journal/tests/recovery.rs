//! Recovery scenarios: clean restarts, torn tails cut at every byte, single-bit flips anywhere,
//! power cuts that drop unsynced writes, poisoning after a failed sync, and the operator's
//! truncate option.

use paycore_journal::format::{SEGMENT_HEADER_BYTES, record_bytes, segment_name};
use paycore_journal::sim::SimStorage;
use paycore_journal::{
    Durability, JournalConfig, JournalError, JournalReader, JournalWriter, MmapStorage,
    RecoveryOptions, Storage, recover,
};
use proptest::prelude::*;

fn config() -> JournalConfig {
    JournalConfig {
        shard: 0,
        epoch: 1,
        segment_bytes: 256 * 1024,
        batch_bytes_max: 128 * 1024,
        durability: Durability::Fsync,
    }
}

fn payload(sequence: u64) -> Vec<u8> {
    let len = 1 + (sequence as usize * 7) % 60;
    (0..len)
        .map(|i| (sequence as u8).wrapping_add(i as u8) | 1)
        .collect()
}

fn open<S: Storage + Clone>(storage: &S, config: JournalConfig) -> JournalWriter<S> {
    let mut scan = storage.clone();
    let recovered =
        recover(&mut scan, config.shard, 1, RecoveryOptions::default()).expect("journal recovers");
    JournalWriter::open(storage.clone(), config, &recovered).expect("writer opens")
}

/// Appends records `from..=to` and commits once.
fn write<S: Storage>(writer: &mut JournalWriter<S>, from: u64, to: u64) {
    for sequence in from..=to {
        writer
            .append(sequence, sequence * 10, &payload(sequence))
            .expect("append");
    }
    assert_eq!(writer.commit().expect("commit"), to);
}

/// Every record the journal holds, read back from the start.
fn read_all<S: Storage>(storage: S) -> Vec<(u64, u64, Vec<u8>)> {
    let mut reader = JournalReader::new(storage, 1, None);
    let mut records = Vec::new();
    while reader
        .read(1000, |r| {
            records.push((r.sequence, r.timestamp_ns, r.payload.to_vec()))
        })
        .expect("read")
        > 0
    {}
    records
}

fn assert_records(records: &[(u64, u64, Vec<u8>)], last: u64) {
    assert_eq!(records.len() as u64, last, "record count");
    for (i, (sequence, timestamp, bytes)) in records.iter().enumerate() {
        assert_eq!(*sequence, i as u64 + 1);
        assert_eq!(*timestamp, sequence * 10);
        assert_eq!(bytes, &payload(*sequence));
    }
}

#[test]
fn restart_continues_across_segments_on_disk() {
    let dir = tempfile_dir("restart");
    let storage = MmapStorage::open_dir(&dir).expect("dir");
    let mut writer = open(&storage, config());
    // ~100 B per record, 256 KiB segments: several segments.
    for batch in 0..50u64 {
        write(&mut writer, batch * 200 + 1, batch * 200 + 200);
    }
    assert!(
        writer.segments().len() > 3,
        "{} segments",
        writer.segments().len()
    );
    drop(writer);
    let mut writer = open(&storage, config());
    assert_eq!(writer.next_sequence(), 10_001);
    write(&mut writer, 10_001, 10_010);
    drop(writer);
    assert_records(&read_all(storage.clone()), 10_010);
    // Reading from the middle starts at the requested sequence.
    let mut reader = JournalReader::new(storage, 5_000, None);
    let mut first = None;
    reader.read(1, |r| first = Some(r.sequence)).expect("read");
    assert_eq!(first, Some(5_000));
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// A power cut right after a segment roll leaves a new segment holding only its header (the
/// roll syncs the header; its first record was never committed). Recovery and a full read must
/// end at the last committed record, not spin on the empty segment.
#[test]
fn an_empty_segment_after_a_roll_ends_the_journal() {
    let storage = SimStorage::new();
    let mut writer = open(&storage, config());
    let mut sequence = 0u64;
    loop {
        sequence += 1;
        let segments = writer.segments().len();
        writer
            .append(sequence, sequence * 10, &payload(sequence))
            .expect("append");
        if writer.segments().len() > segments && segments > 0 {
            break; // this record opened a new segment and is not committed
        }
        writer.commit().expect("commit");
        assert!(sequence < 100_000, "the segment never rolled");
    }
    drop(writer);
    storage.power_cut(0);
    let committed = sequence - 1;
    let (done, result) = std::sync::mpsc::channel();
    let scan = storage.clone();
    std::thread::spawn(move || {
        let recovered = recover(&mut scan.clone(), 0, 1, RecoveryOptions::default())
            .expect("recovers")
            .last_sequence;
        let _ = done.send((recovered, read_all(scan)));
    });
    let (recovered, records) = result
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("recovery and the read finish");
    assert_eq!(recovered, committed);
    assert_records(&records, committed);
    // The writer continues in the empty segment.
    let mut writer = open(&storage, config());
    assert_eq!(writer.next_sequence(), committed + 1);
    write(&mut writer, committed + 1, committed + 5);
    drop(writer);
    assert_records(&read_all(storage), committed + 5);
}

#[test]
fn retention_archives_covered_segments() {
    let storage = SimStorage::new();
    let mut writer = open(&storage, config());
    for batch in 0..20u64 {
        write(&mut writer, batch * 500 + 1, batch * 500 + 500);
    }
    let segments = writer.segments().to_vec();
    assert!(segments.len() >= 3);
    let covered = segments[2].first_sequence - 1; // segments 0 and 1 wholly covered
    let retired = writer.retire_through(covered, true).expect("retire");
    assert_eq!(
        retired,
        vec![segments[0].name.clone(), segments[1].name.clone()]
    );
    assert_eq!(storage.archived(), retired);
    // A reader from 1 starts at the first record still held.
    let mut reader = JournalReader::new(storage.clone(), 1, None);
    let mut first = None;
    reader.read(1, |r| first = Some(r.sequence)).expect("read");
    assert_eq!(first, Some(covered + 1));
    drop(writer);
    // Recovery accepts a journal that starts later.
    let recovered =
        recover(&mut storage.clone(), 0, 1, RecoveryOptions::default()).expect("recover");
    assert_eq!(recovered.first_sequence, covered + 1);
    assert_eq!(recovered.last_sequence, 10_000);
}

#[test]
fn torn_tail_cut_at_every_byte_of_the_last_record_is_truncated() {
    let base = SimStorage::new();
    let mut writer = open(&base, config());
    write(&mut writer, 1, 20);
    drop(writer);
    let name = segment_name(1);
    let image = base.contents(&name);
    let last_len = record_bytes(payload(20).len());
    let end: usize = SEGMENT_HEADER_BYTES
        + (1..=20)
            .map(|s| record_bytes(payload(s).len()))
            .sum::<usize>();
    let last_start = end - last_len;
    for cut in last_start..end {
        let storage = SimStorage::new();
        let mut writer = open(&storage, config());
        write(&mut writer, 1, 20);
        drop(writer);
        // Everything from `cut` on never reached the disk.
        storage.overwrite(&name, cut, &vec![0u8; end - cut]);
        assert_eq!(storage.contents(&name)[..cut], image[..cut]);
        let recovered = recover(&mut storage.clone(), 0, 1, RecoveryOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(recovered.last_sequence, 19, "cut at {cut}");
        if cut > last_start {
            let truncation = recovered.truncation.as_ref().expect("reported");
            assert!(truncation.torn_tail);
            assert_eq!(truncation.offset as usize, last_start);
        }
        // The writer continues where the valid data ends.
        let mut writer = JournalWriter::open(storage.clone(), config(), &recovered).expect("open");
        write(&mut writer, 20, 21);
        drop(writer);
        assert_records(&read_all(storage), 21);
    }
}

#[test]
fn every_single_bit_flip_is_detected_and_named() {
    let clean = SimStorage::new();
    let mut writer = open(&clean, config());
    write(&mut writer, 1, 6);
    drop(writer);
    let name = segment_name(1);
    let end: usize = SEGMENT_HEADER_BYTES
        + (1..=6)
            .map(|s| record_bytes(payload(s).len()))
            .sum::<usize>();
    // Every bit of the written part, and some of the zero space after it.
    let positions: Vec<usize> = (0..end + 64)
        .chain([end + 1000, 200_000, 256 * 1024 - 1])
        .collect();
    for &offset in &positions {
        for bit in 0..8u8 {
            let storage = SimStorage::new();
            let mut writer = open(&storage, config());
            write(&mut writer, 1, 6);
            drop(writer);
            storage.flip_bit(&name, offset, bit);
            match recover(&mut storage.clone(), 0, 1, RecoveryOptions::default()) {
                Err(JournalError::Corrupt {
                    path, offset: at, ..
                }) => {
                    assert!(path.ends_with(&name), "named file: {path:?}");
                    assert!(
                        at as usize <= offset,
                        "offset {at} named for a flip at {offset}"
                    );
                }
                Err(other) => panic!("flip at {offset}.{bit}: unexpected {other}"),
                Ok(recovered) => {
                    // Only a flip in never-written space right after the data may pass, as a
                    // torn tail of a record that never existed: every record must be intact.
                    assert!(
                        offset >= end,
                        "flip at {offset}.{bit} inside the data went unnoticed"
                    );
                    let truncation = recovered.truncation.expect("a flip must be reported");
                    assert_eq!(truncation.offset as usize, end);
                    assert_eq!(recovered.last_sequence, 6);
                    assert_records(&read_all(storage), 6);
                }
            }
        }
    }
}

#[test]
fn operator_truncate_option_backs_up_and_cuts_at_corruption() {
    let storage = SimStorage::new();
    let mut writer = open(&storage, config());
    write(&mut writer, 1, 10);
    drop(writer);
    let name = segment_name(1);
    let fourth: usize = SEGMENT_HEADER_BYTES
        + (1..=3)
            .map(|s| record_bytes(payload(s).len()))
            .sum::<usize>();
    storage.flip_bit(&name, fourth + 45, 3); // payload of record 4
    let refused = recover(&mut storage.clone(), 0, 1, RecoveryOptions::default());
    assert!(
        matches!(refused, Err(JournalError::Corrupt { offset, .. }) if offset as usize == fourth)
    );
    let recovered = recover(
        &mut storage.clone(),
        0,
        1,
        RecoveryOptions {
            truncate_corruption: true,
        },
    )
    .expect("operator cut");
    assert_eq!(recovered.last_sequence, 3);
    let truncation = recovered.truncation.expect("reported");
    assert!(!truncation.torn_tail);
    assert_eq!(truncation.offset as usize, fourth);
    let backups: Vec<String> = storage
        .list()
        .expect("list")
        .into_iter()
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert_eq!(backups, vec![format!("{name}.corrupt-{fourth}")]);
    assert_records(&read_all(storage), 3);
}

#[test]
fn a_failed_sync_poisons_the_writer() {
    let storage = SimStorage::new();
    let mut writer = open(&storage, config());
    write(&mut writer, 1, 5);
    storage.fail_syncs_after(0);
    writer
        .append(6, 60, &payload(6))
        .expect("append before the sync");
    assert!(matches!(
        writer.commit(),
        Err(JournalError::Poisoned { .. })
    ));
    assert!(writer.is_poisoned());
    assert!(matches!(
        writer.append(7, 70, &payload(7)),
        Err(JournalError::Poisoned { .. })
    ));
    assert!(matches!(
        writer.commit(),
        Err(JournalError::Poisoned { .. })
    ));
    assert_eq!(
        writer.durable_sequence(),
        5,
        "the failed batch is not reported durable"
    );
}

#[test]
fn reader_never_passes_the_durable_watermark() {
    let storage = SimStorage::new();
    let mut writer = open(&storage, config());
    let mut reader = JournalReader::new(storage.clone(), 1, Some(writer.watermark()));
    write(&mut writer, 1, 10);
    for sequence in 11..=15 {
        writer
            .append(sequence, sequence * 10, &payload(sequence))
            .expect("append");
    }
    let mut seen = Vec::new();
    reader.read(100, |r| seen.push(r.sequence)).expect("read");
    assert_eq!(
        seen,
        (1..=10).collect::<Vec<_>>(),
        "uncommitted records are invisible"
    );
    writer.commit().expect("commit");
    reader.read(100, |r| seen.push(r.sequence)).expect("read");
    assert_eq!(seen, (1..=15).collect::<Vec<_>>());
    assert_eq!(reader.read(100, |_| {}).expect("read"), 0);
}

#[test]
fn bad_appends_are_refused() {
    let storage = SimStorage::new();
    let mut writer = open(&storage, config());
    assert!(matches!(
        writer.append(2, 0, b"x"),
        Err(JournalError::SequenceOutOfOrder {
            expected: 1,
            got: 2
        })
    ));
    assert!(matches!(
        writer.append(1, 0, b""),
        Err(JournalError::PayloadSize { .. })
    ));
    let big = vec![1u8; 64 * 1024 + 1];
    assert!(matches!(
        writer.append(1, 0, &big),
        Err(JournalError::PayloadSize { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random batches, then a power cut that keeps a random prefix of the unsynced writes:
    /// recovery never fails, keeps every committed record intact, and may keep a few
    /// uncommitted ones (never a half of one).
    #[test]
    fn power_cut_keeps_every_committed_record(
        batches in proptest::collection::vec(1u64..300, 1..12),
        uncommitted in 0u64..300,
        keep_bytes in 0usize..40_000,
        cuts in 1usize..4,
    ) {
        let storage = SimStorage::new();
        let mut committed = 0u64;
        for _ in 0..cuts {
            let mut writer = open(&storage, config());
            prop_assert_eq!(writer.next_sequence(), committed + 1);
            for &size in &batches {
                write(&mut writer, committed + 1, committed + size);
                committed += size;
            }
            for sequence in committed + 1..=committed + uncommitted {
                writer.append(sequence, sequence * 10, &payload(sequence)).expect("append");
            }
            drop(writer);
            storage.power_cut(keep_bytes);
            let recovered = recover(&mut storage.clone(), 0, 1, RecoveryOptions::default())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(recovered.last_sequence >= committed);
            prop_assert!(recovered.last_sequence <= committed + uncommitted);
            let records = read_all(storage.clone());
            assert_records(&records, recovered.last_sequence);
            committed = recovered.last_sequence;
        }
    }
}

fn tempfile_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-journal-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A returning old primary cuts the records after the new primary's history took over: the
/// cut segments are backed up, recovery then ends at the kept record, and a writer continues
/// with records of the new epoch.
#[test]
fn a_divergent_tail_is_backed_up_and_cut() {
    for keep in [0u64, 1, 700, 2_999, 5_000, 7_999, 8_000] {
        let storage = SimStorage::new();
        let mut writer = open(&storage, config());
        for batch in 0..40u64 {
            write(&mut writer, batch * 200 + 1, batch * 200 + 200);
        }
        assert!(writer.segments().len() > 1);
        drop(writer);
        let mut cut_storage = storage.clone();
        let tail = paycore_journal::truncate_after(&mut cut_storage, 0, keep).expect("cut");
        if keep >= 8_000 {
            assert_eq!(tail, None);
        } else {
            let tail = tail.expect("something was cut");
            assert_eq!((tail.first_sequence, tail.last_sequence), (keep + 1, 8_000));
            assert!(!tail.backups.is_empty());
        }
        let records = read_all(storage.clone());
        assert_records(&records, keep);
        let last = paycore_journal::last_record(&storage, 0).expect("scan");
        assert_eq!(last, (keep > 0).then_some((keep, 1)));
        let mut writer = open(&storage, config());
        assert_eq!(writer.next_sequence(), keep + 1);
        writer.set_epoch(2);
        write(&mut writer, keep + 1, keep + 10);
        drop(writer);
        assert_records(&read_all(storage.clone()), keep + 10);
        assert_eq!(
            paycore_journal::last_record(&storage, 0).expect("scan"),
            Some((keep + 10, 2))
        );
    }
}

/// `Durability::None` writes every committed record to the page cache (it only skips the
/// fsync): a writer dropped without any further call — a process killed, as far as the files
/// are concerned — leaves every committed record readable, with the default write method and
/// the two mapped ones. (It wrote nothing at all with the default method before.)
#[test]
fn durability_none_writes_every_committed_record_to_the_files() {
    use paycore_journal::SyncMethod;
    for sync in [
        SyncMethod::PwriteFdatasync,
        SyncMethod::Fdatasync,
        SyncMethod::Msync,
    ] {
        let dir = tempfile_dir(&format!("none-{sync:?}"));
        let storage = MmapStorage::with_sync(&dir, sync).expect("storage");
        let none = JournalConfig {
            durability: Durability::None,
            ..config()
        };
        let mut writer = open(&storage, none.clone());
        // Several segments, several commits.
        for batch in 0..30u64 {
            write(&mut writer, batch * 200 + 1, batch * 200 + 200);
        }
        assert!(writer.segments().len() > 1, "{sync:?}: rolled over");
        drop(writer);
        drop(storage);
        let reopened = MmapStorage::with_sync(&dir, sync).expect("storage reopened");
        let records = read_all(reopened.clone());
        assert_records(&records, 6_000);
        let writer = open(&reopened, none);
        assert_eq!(writer.next_sequence(), 6_001, "{sync:?}");
        drop(writer);
        drop(reopened);
        std::fs::remove_dir_all(&dir).expect("folder removed");
    }
}
