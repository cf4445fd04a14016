//! Exactly once across SIGKILL: a `paycore flush` child process writing a two-shard journal
//! into the store is killed at random moments (mid-batch: its SQL transaction is rolled back),
//! restarted each time, and finally run to the end. Afterwards the store equals the engine:
//! reconciliation passes, and every movement and posting is there exactly once (counted
//! against a replay of the journal). Against SQLite and a real PostgreSQL.
//!
//! Bounded: at most `KILLS` kills and `DEADLINE` of wall time.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use paycore_engine::{Effects, Engine, EngineConfig, Event};
use paycore_store::reconcile::{ReconcileConfig, Silent, reconcile};
use paycore_store::store::{Store, StoreTarget};
use paycore_store::testing::PgSchema;
use paycore_store::workload::{Record, Workload, WorkloadConfig, write_journals};

const SHARDS: u16 = 2;
const KILLS: u64 = 4;
const DEADLINE: Duration = Duration::from_secs(180);

fn tempdir(name: &str) -> PathBuf {
    paycore_store::testing::temp_dir(&format!("paycore-sigkill-{name}"))
}

/// Movements (Transfer events) and postings the journal must produce, from a replay.
fn expected_counts(records: &[Record]) -> (u64, u64) {
    let mut engines: Vec<Engine> = (0..SHARDS)
        .map(|shard| {
            Engine::new(EngineConfig {
                shard,
                shard_count: SHARDS,
                ..EngineConfig::default()
            })
        })
        .collect();
    let mut effects = Effects::default();
    let mut movements = 0;
    for r in records {
        effects.clear();
        engines[usize::from(r.shard)].apply(r.sequence, r.timestamp_ns, &r.command, &mut effects);
        movements += effects
            .events
            .iter()
            .filter(|e| matches!(e, Event::Transfer { .. }))
            .count() as u64;
    }
    (movements, movements * 2)
}

fn flush_process(data_dir: &Path, store: &[String]) -> std::process::Child {
    Process::new(env!("CARGO_BIN_EXE_paycore"))
        .arg("flush")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--shards", &SHARDS.to_string(), "--once"])
        .args(["--flush-batch-records-max", "300"])
        .args(store)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paycore flush")
}

fn count(store: &mut Store, table: &str) -> u64 {
    store
        .query_text(&format!("SELECT CAST(count(*) AS TEXT) FROM {table}"))
        .expect("count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scenario(target: &StoreTarget, store_args: &[String], dir: &Path) {
    let started = Instant::now();
    let data_dir = dir.join("data");
    let mut workload = Workload::new(WorkloadConfig {
        shards: SHARDS,
        seed: 23,
        users: 300,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 1_000_000,
        transfers_only: false,
        legs_in_flight_max: None,
    });
    let mut records = Vec::new();
    workload.generate(30_000, &mut records);
    workload.drain_legs(&mut records);
    write_journals(&data_dir, SHARDS, &records, 512).expect("journal");
    let last: Vec<u64> = workload.engines.iter().map(|e| e.last_sequence()).collect();

    let mut kills_mid_flush = 0;
    for round in 0..KILLS {
        assert!(started.elapsed() < DEADLINE, "deadline");
        let mut child = flush_process(&data_dir, store_args);
        // Kill at a varying moment: after 150..750 ms of flushing.
        std::thread::sleep(Duration::from_millis(150 + (round * 211) % 600));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let mut store = Store::connect(target).expect("connect");
        let progress: Vec<u64> = (0..SHARDS)
            .map(|s| store.checkpoint(s).expect("checkpoint"))
            .collect();
        if progress.iter().zip(&last).any(|(p, l)| p < l) {
            kills_mid_flush += 1;
        }
        eprintln!("round {round}: killed at checkpoints {progress:?} of {last:?}");
    }
    assert!(kills_mid_flush >= 1, "no kill landed before the end");
    let mut child = flush_process(&data_dir, store_args);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the last flush did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "final flush: {status}");

    let mut store = Store::connect(target).expect("connect");
    for shard in 0..SHARDS {
        assert_eq!(
            store.checkpoint(shard).expect("checkpoint"),
            last[usize::from(shard)]
        );
    }
    let (movements, postings) = expected_counts(&records);
    assert_eq!(count(&mut store, "transactions"), movements);
    assert_eq!(count(&mut store, "ledger_entries"), postings);
    let report = reconcile(
        &ReconcileConfig {
            data_dir: data_dir.clone(),
            shard_count: SHARDS,
            engine_config: EngineConfig::default(),
            target: target.clone(),
        },
        &Silent,
    )
    .expect("reconcile");
    assert!(report.ok(), "{}", report.summary());
}

#[test]
fn sqlite_exactly_once_after_sigkill() {
    let dir = tempdir("sqlite");
    let target = StoreTarget::Sqlite(dir.join("data").join("store.sqlite"));
    scenario(&target, &[], &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_exactly_once_after_sigkill() {
    let Some(pg) = PgSchema::create("sigkill") else {
        return;
    };
    let dir = tempdir("pg");
    let args = vec![
        "--postgres-url".to_string(),
        pg.url.clone(),
        "--postgres-schema".to_string(),
        pg.schema.clone(),
    ];
    scenario(&pg.target, &args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}
