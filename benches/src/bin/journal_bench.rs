//! Journal and snapshot figures for BENCHMARKS.md (issue 3), measured side by side:
//!
//! - `append`: durable append throughput (fdatasync and msync) at group sizes 1, 16, 256 and 4096 records per
//!   commit, beside the raw `pwrite` + `fdatasync` rate of the same disk in the same run;
//! - `replay`: records/s reading the journal back and applying it to an engine;
//! - `restart`: `open_shard` time with a snapshot of N wallets and an M-record journal tail;
//! - `snapshot`: time to write a snapshot of N wallets from the replica, and the shard writer's
//!   longest batch (append + commit + apply) while a snapshot runs beside it versus without.
//!
//! `cargo run --release -p paycore-benches --bin journal_bench -- --help`

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paycore_benches::{Fixture, Mix, Picker};
use paycore_engine::codec::{decode_command, encode_command};
use paycore_engine::{Effects, EngineConfig};
use paycore_journal::{
    Durability, JournalConfig, JournalReader, MmapStorage, RecoveryOptions, SyncMethod,
};
use paycore_snapshot::{Replica, SnapshotPolicy, Snapshotter, open_shard, write_snapshot};

struct Args {
    dir: PathBuf,
    sections: Vec<String>,
    wallets: usize,
    tail: u64,
    seconds: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("/var/tmp/paycore-journal-bench"),
        sections: vec!["append".into(), "restart".into(), "snapshot".into()],
        wallets: 1_000_000,
        tail: 1_000_000,
        seconds: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()),
            "--section" => args.sections = value().split(',').map(String::from).collect(),
            "--wallets" => args.wallets = value().parse().expect("--wallets N"),
            "--tail" => args.tail = value().parse().expect("--tail N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds S"),
            "--help" | "-h" => {
                println!(
                    "journal_bench [--dir DIR] [--section append,restart(+replay),snapshot] \
                     [--wallets N (restart/snapshot/replay)] [--tail M (restart/replay)] \
                     [--seconds S per append run]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
}

/// A typical transfer command, encoded: what one journal record carries.
fn sample_payloads(count: usize) -> Vec<Vec<u8>> {
    let mut fixture = Fixture::new(1_000, 1_000);
    let mut picker = Picker::new(1_000, 7);
    fixture
        .transfer_chunk(&mut picker, Mix::Uniform, count)
        .iter()
        .map(|c| {
            let mut bytes = Vec::new();
            encode_command(c, &mut bytes);
            bytes
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Raw disk: 4 KiB pwrite + fdatasync into a preallocated zeroed file.
fn fdatasync_rate(dir: &Path, seconds: f64) -> (f64, Duration) {
    let path = dir.join("fdatasync.probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("probe");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        file.write_all(&zeros).expect("zero fill");
    }
    file.sync_all().expect("sync");
    let block = vec![0xA5u8; 4096];
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut offset = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        file.write_all_at(&block, offset).expect("pwrite");
        file.sync_data().expect("fdatasync");
        latencies.push(t.elapsed());
        offset = (offset + 4096) % (64 << 20);
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let _ = std::fs::remove_file(path);
    (rate, percentile(&latencies, 0.5))
}

fn append(args: &Args) {
    let dir = args.dir.join("append");
    fresh(&dir);
    let payloads = sample_payloads(4096);
    let record_bytes = paycore_journal::format::record_bytes(payloads[0].len());
    println!("## append (durability fsync; fdatasync of the file vs msync of the dirty range)");
    println!(
        "record: {} B payload, {record_bytes} B framed",
        payloads[0].len()
    );
    let (sync_rate, sync_p50) = fdatasync_rate(&dir, args.seconds);
    println!("raw disk, same run: {sync_rate:.0} pwrite(4 KiB)+fdatasync/s, p50 {sync_p50:?}");
    println!(
        "| sync | group size | records/s | MB/s | commits/s | commit p50 | commit p99 | commits/s vs raw fdatasync/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (method, group) in [
        SyncMethod::Fdatasync,
        SyncMethod::Msync,
        SyncMethod::PwriteFdatasync,
    ]
    .into_iter()
    .flat_map(|m| [1usize, 16, 256, 4096].map(|g| (m, g)))
    {
        let journal_dir = dir.join(format!("g{group}"));
        fresh(&journal_dir);
        let mut storage = MmapStorage::with_sync(&journal_dir, method).expect("dir");
        let recovered = paycore_journal::recover(&mut storage, 0, 1, RecoveryOptions::default())
            .expect("recover");
        let config = JournalConfig {
            durability: Durability::Fsync,
            ..JournalConfig::default()
        };
        let mut writer =
            paycore_journal::JournalWriter::open(storage, config, &recovered).expect("writer");
        // The first append creates the segment and starts zero-filling the spare for the next
        // one in the background; let that finish so it does not compete with the timed commits.
        writer.append(1, 1, &payloads[0]).expect("append");
        writer.commit().expect("commit");
        std::thread::sleep(Duration::from_millis(1500));
        let mut sequence = 2u64;
        let mut commits = Vec::new();
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < args.seconds {
            for i in 0..group {
                writer
                    .append(sequence, sequence, &payloads[i % payloads.len()])
                    .expect("append");
                sequence += 1;
            }
            let t = Instant::now();
            writer.commit().expect("commit");
            commits.push(t.elapsed());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let records = (sequence - 2) as f64;
        commits.sort();
        println!(
            "| {method:?} | {group} | {:.0} | {:.1} | {:.0} | {:?} | {:?} | {:.2}x |",
            records / elapsed,
            records * record_bytes as f64 / elapsed / 1e6,
            commits.len() as f64 / elapsed,
            percentile(&commits, 0.5),
            percentile(&commits, 0.99),
            commits.len() as f64 / elapsed / sync_rate,
        );
        drop(writer);
        let _ = std::fs::remove_dir_all(&journal_dir);
    }
}

/// Builds a shard folder holding a snapshot of `wallets` funded wallets and a journal of
/// `tail` transfers after it; returns the engine state hash at the end.
fn build_shard(dir: &Path, wallets: usize, tail: u64) -> (u128, Duration) {
    fresh(dir);
    let started = Instant::now();
    let mut fixture = Fixture::new(wallets, 1_000_000);
    eprintln!("  {wallets} wallets set up in {:?}", started.elapsed());
    let paths = paycore_snapshot::ShardPaths::new(dir, 0);
    let t = Instant::now();
    write_snapshot(&paths.snapshots, &fixture.engine).expect("snapshot");
    let snapshot_time = t.elapsed();
    eprintln!("  snapshot written in {snapshot_time:?}");
    let journal = JournalConfig {
        durability: Durability::Fsync,
        ..JournalConfig::default()
    };
    let mut shard = open_shard(
        dir,
        EngineConfig::default(),
        journal,
        RecoveryOptions::default(),
    )
    .expect("open");
    assert_eq!(shard.engine.state_hash(), fixture.engine.state_hash());
    let mut picker = Picker::new(wallets, 11);
    let mut payload = Vec::new();
    let mut effects = Effects::default();
    let mut written = 0u64;
    let mut timestamp = shard.engine.last_timestamp_ns();
    while written < tail {
        let n = (tail - written).min(4096) as usize;
        let chunk = fixture.transfer_chunk(&mut picker, Mix::Uniform, n);
        for command in &chunk {
            let sequence = shard.journal.next_sequence();
            timestamp += 1_000;
            payload.clear();
            encode_command(command, &mut payload);
            shard
                .journal
                .append(sequence, timestamp, &payload)
                .expect("append");
            shard
                .engine
                .apply(sequence, timestamp, command, &mut effects);
            effects.clear();
        }
        shard.journal.commit().expect("commit");
        written += n as u64;
    }
    (shard.engine.state_hash(), snapshot_time)
}

fn restart(args: &Args) {
    println!(
        "## restart ({} wallets in the snapshot, {} journal records after it)",
        args.wallets, args.tail
    );
    let dir = args.dir.join("restart");
    let (expected, snapshot_time) = build_shard(&dir, args.wallets, args.tail);
    println!(
        "snapshot of {} wallets written in {snapshot_time:?}",
        args.wallets
    );
    for run in 1..=3 {
        let started = Instant::now();
        let shard = open_shard(
            &dir,
            EngineConfig::default(),
            JournalConfig::default(),
            RecoveryOptions::default(),
        )
        .expect("restart");
        let elapsed = started.elapsed();
        assert_eq!(shard.engine.state_hash(), expected, "restart state");
        println!(
            "restart {run}: {elapsed:?} (replayed {} records; recovery report {} ms: snapshot load {} ms, replay {} ms)",
            shard.report.replayed,
            shard.report.elapsed_ms,
            shard.report.snapshot_load_ms,
            shard.report.replay_ms
        );
    }
    // Replay speed from the same journal: read + decode + apply, no snapshot load.
    println!("## replay");
    let shard = open_shard(
        &dir,
        EngineConfig::default(),
        JournalConfig::default(),
        RecoveryOptions::default(),
    )
    .expect("open");
    let from = shard.report.snapshot.as_ref().map_or(1, |s| s.0 + 1);
    let journal_dir = shard.paths.journal.clone();
    drop(shard);
    // Rewind the engine to the snapshot: replay the tail again onto the snapshot state.
    let snapshot_path =
        paycore_snapshot::list_snapshots(&paycore_snapshot::ShardPaths::new(&dir, 0).snapshots)
            .expect("list")[0]
            .1
            .clone();
    let base = paycore_snapshot::read_snapshot(&snapshot_path, &EngineConfig::default())
        .expect("snapshot");
    let storage = MmapStorage::open_dir(&journal_dir).expect("journal");
    // Read + decode only.
    let mut reader = JournalReader::new(storage.clone(), from, None);
    let started = Instant::now();
    let mut decoded = 0u64;
    while reader
        .read(65_536, |r| {
            let command = decode_command(r.payload).expect("decodes");
            std::hint::black_box(&command);
            decoded += 1;
        })
        .expect("read")
        > 0
    {}
    let read_rate = decoded as f64 / started.elapsed().as_secs_f64();
    // Batches with prefetch and no events on one thread (`replay_some`: the replica's loop).
    let mut engine = base.clone();
    let mut batch = paycore_snapshot::ReplayBatch::default();
    let mut reader = JournalReader::new(storage.clone(), from, None);
    let started = Instant::now();
    let mut replayed = 0u64;
    loop {
        let read = paycore_snapshot::replay_some(&mut reader, &mut engine, &mut batch, 65_536)
            .expect("replay");
        if read == 0 {
            break;
        }
        replayed += read as u64;
    }
    let batched_rate = replayed as f64 / started.elapsed().as_secs_f64();
    assert_eq!(engine.state_hash(), expected, "batched replay state");
    drop(engine);
    // The recovery path itself (`replay_to_end`: the same batches, decoded on a second thread
    // while the previous one is applied): what a restart does.
    let mut engine = base.clone();
    let reader = JournalReader::new(storage.clone(), from, None);
    let started = Instant::now();
    let replayed = paycore_snapshot::replay_to_end(reader, &mut engine, 65_536).expect("replay");
    let recovery_rate = replayed as f64 / started.elapsed().as_secs_f64();
    assert_eq!(engine.state_hash(), expected, "recovery replay state");
    drop(engine);
    // Read + decode + apply one by one, with events, no prefetch: the naive loop, for scale.
    let mut engine = base;
    let mut effects = Effects::default();
    let mut reader = JournalReader::new(storage, from, None);
    let started = Instant::now();
    let mut applied = 0u64;
    while reader
        .read(65_536, |r| {
            let command = decode_command(r.payload).expect("decodes");
            engine.apply(r.sequence, r.timestamp_ns, &command, &mut effects);
            applied += 1;
            if applied.is_multiple_of(1024) {
                effects.clear();
            }
        })
        .expect("read")
        > 0
    {}
    let apply_rate = applied as f64 / started.elapsed().as_secs_f64();
    assert_eq!(engine.state_hash(), expected);
    println!(
        "read + decode: {read_rate:.0} records/s; recovery replay (batches decoded on a second thread, prefetch, no events): {recovery_rate:.0} records/s; the same on one thread (replay_some): {batched_rate:.0} records/s; naive read + decode + apply: {apply_rate:.0} records/s ({applied} records)"
    );
}

fn snapshot(args: &Args) {
    println!(
        "## snapshot while the writer runs ({} wallets)",
        args.wallets
    );
    let dir = args.dir.join("snapshot");
    let (_, snapshot_time) = build_shard(&dir, args.wallets, 100_000);
    println!("snapshot write time (replica thread, not the writer): {snapshot_time:?}");
    let journal = JournalConfig {
        durability: Durability::Fsync,
        ..JournalConfig::default()
    };
    let mut shard = open_shard(
        &dir,
        EngineConfig::default(),
        journal,
        RecoveryOptions::default(),
    )
    .expect("open");
    let mut fixture = Fixture::new(1_000, 1_000); // only for command generation helpers
    let wallets: Vec<_> = shard
        .engine
        .wallets()
        .filter(|(_, w)| w.is_user())
        .map(|(id, _)| id)
        .collect();
    fixture.wallets = wallets.clone();
    let mut picker = Picker::new(wallets.len(), 5);
    let mut run_writer =
        |shard: &mut paycore_snapshot::DurableShard, seconds: f64| -> (Vec<Duration>, u64) {
            let mut effects = Effects::default();
            let mut payload = Vec::new();
            let mut batches = Vec::new();
            let mut commands = 0u64;
            let mut timestamp = shard.engine.last_timestamp_ns();
            let started = Instant::now();
            while started.elapsed().as_secs_f64() < seconds {
                let chunk = fixture.transfer_chunk(&mut picker, Mix::Uniform, 1024);
                let t = Instant::now();
                let first = shard.journal.next_sequence();
                for (i, command) in chunk.iter().enumerate() {
                    payload.clear();
                    encode_command(command, &mut payload);
                    shard
                        .journal
                        .append(first + i as u64, timestamp + i as u64, &payload)
                        .expect("append");
                }
                shard.journal.commit().expect("commit");
                for (i, command) in chunk.iter().enumerate() {
                    shard.engine.apply(
                        first + i as u64,
                        timestamp + i as u64,
                        command,
                        &mut effects,
                    );
                }
                effects.clear();
                timestamp += chunk.len() as u64;
                batches.push(t.elapsed());
                commands += chunk.len() as u64;
            }
            batches.sort();
            (batches, commands)
        };
    let (alone, alone_commands) = run_writer(&mut shard, args.seconds);
    let storage = MmapStorage::open_dir(&shard.paths.journal).expect("journal");
    let replica = Replica::new(
        shard.engine.clone(),
        storage,
        shard.journal.watermark(),
        shard.paths.snapshots.clone(),
    );
    let snapshotter = Snapshotter::spawn(
        replica,
        SnapshotPolicy {
            every_records: 1,
            every_ms: 0,
            keep: 2,
            nice: SnapshotPolicy::default().nice,
        },
    );
    let (beside, beside_commands) = run_writer(
        &mut shard,
        args.seconds.max(snapshot_time.as_secs_f64() * 2.5),
    );
    let latest = snapshotter
        .latest
        .load(std::sync::atomic::Ordering::Acquire);
    snapshotter.stop().expect("snapshotter");
    println!("| writer batches of 1024 | batches | transfers/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (label, batches, commands, seconds) in [
        ("alone", &alone, alone_commands, args.seconds),
        (
            "snapshots running beside",
            &beside,
            beside_commands,
            args.seconds.max(snapshot_time.as_secs_f64() * 2.5),
        ),
    ] {
        println!(
            "| {label} | {} | {:.0} | {:?} | {:?} | {:?} |",
            batches.len(),
            commands as f64 / seconds,
            percentile(batches, 0.5),
            percentile(batches, 0.99),
            batches.last().copied().unwrap_or_default()
        );
    }
    println!(
        "newest snapshot taken beside the writer: sequence {latest}; writer pause for it: none (the writer never waits on the replica)"
    );
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    println!(
        "journal_bench: dir {} (date {:?})",
        args.dir.display(),
        std::time::SystemTime::now()
    );
    for section in args.sections.clone() {
        match section.as_str() {
            "append" => append(&args),
            "restart" | "replay" => restart(&args),
            "snapshot" => snapshot(&args),
            other => panic!("unknown section {other}"),
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
