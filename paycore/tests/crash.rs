//! Crash consistency: a real `paycore torture` process under load is SIGKILLed at random
//! moments, many times, and restarted on the same data folder. Afterwards:
//! - every acknowledged command is in the journal, byte for byte what the client sent;
//! - the state after recovery (snapshot + journal tail) equals a full replay of the journal;
//! - at every acknowledged sequence, the full replay's state hash equals the one the process
//!   reported when it acknowledged (nothing acknowledged was lost or changed, nothing
//!   unacknowledged was half applied: commands apply whole or not at all);
//! - money is conserved.
//!
//! Bounded: at most `ROUNDS` kills and `DEADLINE` of wall time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use paycore::torture::command_for;
use paycore_engine::codec::{decode_command, encode_command};
use paycore_engine::{Effects, Engine, EngineConfig};
use paycore_journal::{JournalConfig, JournalReader, MmapStorage, RecoveryOptions};
use paycore_snapshot::open_shard;

const ROUNDS: u64 = 12;
const DEADLINE: Duration = Duration::from_secs(120);
const SEED: u64 = 7;
const WALLETS: u64 = 100;

fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// Parses `ACK <seq> <hash>` / `RECOVERED <seq> <hash>`.
fn parse(line: &str) -> Option<(&str, u64, u128)> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?;
    let sequence = parts.next()?.parse().ok()?;
    let hash = u128::from_str_radix(parts.next()?, 16).ok()?;
    Some((kind, sequence, hash))
}

struct Round {
    recovered: (u64, u128),
    acks: Vec<(u64, u128)>,
}

fn run_round(data_dir: &Path, round: u64) -> Round {
    let batch = 1 + mix(round) % 200;
    let stderr_path = data_dir.with_file_name(format!("round-{round}.stderr"));
    std::fs::create_dir_all(data_dir.parent().expect("data dir has a parent")).expect("root");
    let mut child = Process::new(env!("CARGO_BIN_EXE_paycore"))
        .args([
            "torture",
            "--seed",
            &SEED.to_string(),
            "--wallets",
            &WALLETS.to_string(),
        ])
        .args([
            "--batch",
            &batch.to_string(),
            "--snapshot-every",
            "3000",
            "--segment-kib",
            "512",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start paycore torture");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    // Generous: on a machine still writing back a cold build, the first syncs can be slow.
    let first = match lines.recv_timeout(Duration::from_secs(120)) {
        Ok(line) => line,
        Err(error) => {
            let _ = child.kill();
            let status = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!(
                "round {round} (batch {batch}): no recovery line ({error}); exit {status:?}; \
                 stderr:\n{stderr}"
            );
        }
    };
    let (kind, sequence, hash) = parse(&first).expect("RECOVERED line");
    assert_eq!(kind, "RECOVERED");
    // Let it run under load for a random while, then pull the plug.
    std::thread::sleep(Duration::from_millis(30 + mix(round + 1000) % 400));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    reader.join().expect("reader thread");
    let acks = lines
        .try_iter()
        .filter_map(|line| parse(&line).map(|(_, s, h)| (s, h)))
        .collect();
    Round {
        recovered: (sequence, hash),
        acks,
    }
}

/// A folder with hard links to every journal segment, live and archived, for a full replay.
fn all_segments(journal: &Path, scratch: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).expect("scratch");
    for dir in [journal.join("archive"), journal.to_path_buf()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".wal") {
                std::fs::hard_link(entry.path(), scratch.join(&name)).expect("link segment");
            }
        }
    }
    scratch.to_path_buf()
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let root = std::env::temp_dir().join(format!("paycore-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data_dir = root.join("data");
    let started = Instant::now();
    let mut reported: BTreeMap<u64, u128> = BTreeMap::new();
    let mut last_acked = 0u64;
    let mut rounds = 0;
    for round in 0..ROUNDS {
        if started.elapsed() > DEADLINE {
            break;
        }
        let Round { recovered, acks } = run_round(&data_dir, round);
        assert!(
            recovered.0 >= last_acked,
            "round {round}: recovered to {} but {last_acked} was acknowledged",
            recovered.0
        );
        if recovered.0 > 0 {
            reported.insert(recovered.0, recovered.1);
        }
        for (sequence, hash) in acks {
            reported.insert(sequence, hash);
            last_acked = last_acked.max(sequence);
        }
        rounds += 1;
    }
    assert!(rounds >= 3, "too few rounds ran: {rounds}");
    assert!(
        last_acked > 2 * WALLETS + 1,
        "the load never got past set-up: {last_acked}"
    );

    // Recovery as the node does it: newest snapshot plus the journal after it.
    let shard = open_shard(
        &data_dir,
        EngineConfig::default(),
        JournalConfig::default(),
        RecoveryOptions::default(),
    )
    .expect("recovers after the last kill");
    let recovered = shard.engine;
    assert!(recovered.last_sequence() >= last_acked);
    assert!(
        recovered.balance_sums().iter().all(|s| *s == 0),
        "money conserved"
    );
    let journal_dir = shard.paths.journal.clone();
    drop(shard.journal);

    // Full replay from the first record, checking every reported hash on the way.
    let scratch = all_segments(&journal_dir, &root.join("all-segments"));
    let storage = MmapStorage::open_dir(&scratch).expect("scratch storage");
    let mut reader = JournalReader::new(storage, 1, None);
    let mut engine = Engine::new(EngineConfig::default());
    let mut effects = Effects::default();
    let mut checked = 0;
    let mut expected_payload = Vec::new();
    let mut mismatch = None;
    loop {
        let read = reader
            .read(4096, |record| {
                let command = decode_command(record.payload).expect("journal payload decodes");
                expected_payload.clear();
                encode_command(
                    &command_for(SEED, WALLETS, record.sequence),
                    &mut expected_payload,
                );
                if expected_payload != record.payload && mismatch.is_none() {
                    mismatch = Some(record.sequence);
                }
                engine.apply(record.sequence, record.timestamp_ns, &command, &mut effects);
                effects.clear();
                if let Some(hash) = reported.get(&record.sequence) {
                    assert_eq!(
                        engine.state_hash(),
                        *hash,
                        "state at acknowledged sequence {}",
                        record.sequence
                    );
                    checked += 1;
                }
            })
            .expect("full replay reads");
        if read == 0 {
            break;
        }
    }
    assert_eq!(
        mismatch, None,
        "a journaled command differs from what was sent"
    );
    assert_eq!(
        engine.last_sequence(),
        recovered.last_sequence(),
        "full replay reaches the end"
    );
    assert_eq!(
        engine.state_hash(),
        recovered.state_hash(),
        "snapshot + tail == full replay"
    );
    assert_eq!(checked, reported.len(), "every reported state was checked");
    let _ = std::fs::remove_dir_all(&root);
}
