//! Snapshots and start-up recovery on disk: snapshot + tail replay equals full replay, a corrupt
//! newest snapshot falls back to the one before, the replica snapshots while the writer appends.

use std::path::{Path, PathBuf};

use paycore_engine::codec::encode_command;
use paycore_engine::{
    Applied, Command, CurrencyCode, Effects, Engine, EngineConfig, IdempotencyKey, Op, Outcome,
    UserId, WalletId,
};
use paycore_journal::{JournalConfig, MmapStorage, RecoveryOptions};
use paycore_snapshot::{
    DurableShard, Replica, ShardError, SnapshotPolicy, Snapshotter, list_snapshots, open_shard,
    write_snapshot,
};

fn data_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-snap-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn journal_config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 256 * 1024,
        batch_bytes_max: 128 * 1024,
        ..JournalConfig::default()
    }
}

fn open(dir: &Path) -> DurableShard {
    open_shard(
        dir,
        EngineConfig::default(),
        journal_config(),
        RecoveryOptions::default(),
    )
    .expect("open shard")
}

/// Command number `n` of a simple stream: a currency, 50 funded wallets, then transfers.
fn command(n: u64) -> Command {
    let usd = CurrencyCode::parse("USD").expect("code");
    let key = IdempotencyKey::new(format!("s-{n}").as_bytes()).expect("key");
    let wallet = |i: u64| WalletId::new(0, 4 + i % 50);
    let op = match n {
        1 => Op::RegisterCurrency {
            code: usd,
            scale: 2,
        },
        2..=51 => Op::OpenWallet {
            user: UserId(u128::from(n)),
            currency: usd,
        },
        52..=101 => Op::Deposit {
            wallet: wallet(n),
            amount: 100_000,
            currency: usd,
        },
        _ => Op::Transfer {
            from: wallet(n * 7),
            to: wallet(n * 13 + 1),
            amount: u128::from(n % 97 + 1),
            currency: usd,
        },
    };
    Command::Client { key, op }
}

/// Journals and applies commands `from..=to` on the shard, in batches of 32.
fn drive(shard: &mut DurableShard, from: u64, to: u64) {
    let mut effects = Effects::default();
    let mut payload = Vec::new();
    let mut sequence = from;
    while sequence <= to {
        let end = (sequence + 31).min(to);
        for s in sequence..=end {
            payload.clear();
            encode_command(&command(s), &mut payload);
            shard
                .journal
                .append(s, s * 1_000, &payload)
                .expect("append");
        }
        shard.journal.commit().expect("commit");
        for s in sequence..=end {
            let outcome = shard.engine.apply(s, s * 1_000, &command(s), &mut effects);
            if s <= 101 {
                assert!(
                    matches!(outcome, Outcome::Ok(_)),
                    "set-up command {s}: {outcome:?}"
                );
            }
        }
        effects.clear();
        sequence = end + 1;
    }
}

/// An engine that applied commands 1..=to directly: the full replay.
fn full(to: u64) -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    let mut effects = Effects::default();
    for s in 1..=to {
        engine.apply(s, s * 1_000, &command(s), &mut effects);
        effects.clear();
    }
    engine
}

#[test]
fn snapshot_plus_tail_equals_full_replay_and_corrupt_newest_falls_back() {
    let dir = data_dir("fallback");
    let mut shard = open(&dir);
    drive(&mut shard, 1, 3_000);
    let (older, _) = write_snapshot(&shard.paths.snapshots, &shard.engine).expect("snapshot 1");
    drive(&mut shard, 3_001, 6_000);
    let (newer, _) = write_snapshot(&shard.paths.snapshots, &shard.engine).expect("snapshot 2");
    drive(&mut shard, 6_001, 7_500);
    let expected = full(7_500).state_hash();
    assert_eq!(shard.engine.state_hash(), expected);
    drop(shard);

    let shard = open(&dir);
    assert_eq!(shard.report.snapshot.as_ref().map(|s| s.0), Some(6_000));
    assert_eq!(shard.report.replayed, 1_500);
    assert_eq!(
        shard.engine.state_hash(),
        expected,
        "snapshot + tail == full replay"
    );
    drop(shard);

    // Damage the newest snapshot's payload: recovery says so and uses the older one.
    let mut bytes = std::fs::read(&newer).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&newer, bytes).expect("write");
    let shard = open(&dir);
    assert_eq!(shard.report.snapshot.as_ref().map(|s| &s.1), Some(&older));
    assert_eq!(shard.report.skipped_snapshots.len(), 1);
    assert!(
        shard.report.skipped_snapshots[0].1.contains("checksum"),
        "{:?}",
        shard.report.skipped_snapshots
    );
    assert_eq!(shard.report.replayed, 4_500);
    assert_eq!(shard.engine.state_hash(), expected);
    drop(shard);

    // A truncated snapshot is refused too, and so is a second process on the same folder.
    let shard = open(&dir);
    let second = open_shard(
        &dir,
        EngineConfig::default(),
        journal_config(),
        RecoveryOptions::default(),
    );
    assert!(matches!(second, Err(ShardError::Locked { .. })));
    drop(shard);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn replica_snapshots_while_the_writer_appends() {
    let dir = data_dir("replica");
    let mut shard = open(&dir);
    let storage = MmapStorage::open_dir(&shard.paths.journal).expect("storage");
    let replica = Replica::new(
        shard.engine.clone(),
        storage,
        shard.journal.watermark(),
        shard.paths.snapshots.clone(),
    );
    let snapshotter = Snapshotter::spawn(
        replica,
        SnapshotPolicy {
            every_records: 1_000,
            every_ms: 50,
            keep: 3,
            nice: 10,
        },
    );
    for chunk in 0..10u64 {
        drive(&mut shard, chunk * 1_000 + 1, chunk * 1_000 + 1_000);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Give the replica time to catch up with the last batch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while snapshotter
        .latest
        .load(std::sync::atomic::Ordering::Acquire)
        < 10_000
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Caught up, the replica runs in the background: its thread has the policy's nice value
    // (the test's own threads keep theirs).
    #[cfg(target_os = "linux")]
    {
        let nice = thread_nice("snapshot-0").expect("the replica thread is running");
        assert_eq!(nice, 10, "replica thread priority");
        assert_eq!(thread_nice_of_self(), 0);
    }
    snapshotter.stop().expect("snapshotter ran cleanly");
    let snapshots = list_snapshots(&shard.paths.snapshots).expect("list");
    assert!(
        !snapshots.is_empty() && snapshots.len() <= 3,
        "{snapshots:?}"
    );
    assert_eq!(
        snapshots[0].0, 10_000,
        "the newest snapshot caught up with the writer"
    );
    let covered = snapshots[0].0;
    let retired = shard.journal.retire_through(covered, true).expect("retire");
    assert!(
        !retired.is_empty(),
        "segments covered by the snapshot were archived"
    );
    let expected = shard.engine.state_hash();
    drop(shard);
    let shard = open(&dir);
    assert_eq!(shard.engine.state_hash(), expected);
    assert_eq!(shard.report.snapshot.as_ref().map(|s| s.0), Some(10_000));
    let opened = shard.engine.wallets().filter(|(_, w)| w.is_user()).count();
    assert_eq!(opened, 50);
    assert!(matches!(
        shard
            .engine
            .outcome_of(&IdempotencyKey::new(b"s-2").expect("key")),
        Some(Outcome::Ok(Applied::WalletOpened(_)))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// The nice value of this process's thread called `name` (field 19 of /proc/self/task/T/stat).
#[cfg(target_os = "linux")]
fn thread_nice(name: &str) -> Option<i64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // The command name (field 2) is in parentheses and may hold spaces: skip past it.
            let rest = &stat[stat.rfind(')')? + 2..];
            return rest.split(' ').nth(16)?.parse().ok();
        }
    }
    None
}

#[cfg(target_os = "linux")]
fn thread_nice_of_self() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.split(' ')
        .nth(16)
        .and_then(|v| v.parse().ok())
        .expect("nice")
}

/// Recovery's replay decodes on a second thread: the same state as applying every record on one
/// thread, whatever the batch size; a record that does not decode stops it, named by its
/// sequence, with everything before it applied and nothing after.
#[test]
fn replay_on_a_second_thread_equals_full_replay_and_names_an_undecodable_record() {
    use paycore_journal::JournalReader;
    use paycore_snapshot::{ShardPaths, replay_to_end};
    let dir = data_dir("replay-thread");
    let last = 3_000;
    let mut shard = open(&dir);
    drive(&mut shard, 1, last);
    drop(shard);
    let expected = full(last).state_hash();
    let journal = ShardPaths::new(&dir, 0).journal;
    for records_max in [1, 100, 4_096, 65_536] {
        let storage = MmapStorage::open_dir(&journal).expect("storage");
        let mut engine = Engine::new(EngineConfig::default());
        let replayed = replay_to_end(
            JournalReader::new(storage, 1, None),
            &mut engine,
            records_max,
        )
        .expect("replay");
        assert_eq!(replayed, last, "batch {records_max}");
        assert_eq!(engine.state_hash(), expected, "batch {records_max}");
    }

    // A record whose checksum is right but whose payload is no command.
    let mut shard = open(&dir);
    shard
        .journal
        .append(last + 1, (last + 1) * 1_000, &[0xFF, 0xFF, 0xFF])
        .expect("append");
    shard.journal.commit().expect("commit");
    drop(shard);
    let storage = MmapStorage::open_dir(&journal).expect("storage");
    let mut engine = Engine::new(EngineConfig::default());
    match replay_to_end(JournalReader::new(storage, 1, None), &mut engine, 100) {
        Err(ShardError::Replay { sequence, .. }) => assert_eq!(sequence, last + 1),
        other => panic!("expected a replay error at {}: {other:?}", last + 1),
    }
    assert_eq!(engine.last_sequence(), last);
    assert_eq!(engine.state_hash(), expected);
    let _ = std::fs::remove_dir_all(&dir);
}
