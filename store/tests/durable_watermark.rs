//! Deferred commits and the durable watermark (store/src/durability.rs), on both backends: the
//! flusher reports as flushed (what journal retention trusts) only commits made durable; when
//! it catches up or finishes, everything it committed is made durable and reported; and the
//! durable commit refuses to vouch for a store that lost commits (its checkpoint went back),
//! after which the flusher writes them again from the journal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paycore_engine::EngineConfig;
use paycore_store::flusher::{FlushStatus, FlusherConfig, run};
use paycore_store::reconcile::{ReconcileConfig, Silent, reconcile};
use paycore_store::store::{Store, StoreError, StoreTarget};
use paycore_store::testing::PgSchema;
use paycore_store::workload::{Workload, WorkloadConfig, write_journals};

const SHARDS: u16 = 2;
/// Long enough that no commit is made durable for the interval's sake during a test.
const NEVER_MS: u64 = 3_600_000;
/// Small batches, so almost every batch is full (and so deferred).
const BATCH_RECORDS: usize = 50;

fn workload() -> Workload {
    Workload::new(WorkloadConfig {
        shards: SHARDS,
        seed: 7,
        users: 30,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 1_000_000,
        transfers_only: false,
        legs_in_flight_max: None,
    })
}

fn config(data_dir: &Path, target: &StoreTarget, shard: u16) -> FlusherConfig {
    let mut config = FlusherConfig::new(
        data_dir.to_path_buf(),
        EngineConfig {
            shard,
            shard_count: SHARDS,
            ..EngineConfig::default()
        },
        target.clone(),
    );
    config.batch_records_max = BATCH_RECORDS;
    config.durable_interval_ms_max = NEVER_MS;
    config
}

fn reconciled(data_dir: &Path, target: &StoreTarget) {
    let report = reconcile(
        &ReconcileConfig {
            data_dir: data_dir.to_path_buf(),
            shard_count: SHARDS,
            engine_config: EngineConfig::default(),
            target: target.clone(),
        },
        &Silent,
    )
    .expect("reconcile runs");
    assert!(report.ok(), "{}", report.summary());
}

fn scenario(target: &StoreTarget, data_dir: &Path) {
    let mut workload = workload();
    let mut records = Vec::new();
    workload.generate(1_500, &mut records);
    write_journals(data_dir, SHARDS, &records, 100).expect("journal");

    // 1. `--once` with deferred commits: at the end everything committed is durable and
    //    reported, and the store holds the whole journal.
    for shard in 0..SHARDS {
        let mut config = config(data_dir, target, shard);
        config.stop_at_end = true;
        let status = FlushStatus::default();
        run(&config, &status, &AtomicBool::new(false)).expect("flush");
        let end = workload.engines[usize::from(shard)].last_sequence();
        assert!(end > 10 * BATCH_RECORDS as u64, "most batches were full");
        assert_eq!(status.committed_sequence.load(Ordering::Acquire), end);
        assert_eq!(status.flushed_sequence.load(Ordering::Acquire), end);
    }
    reconciled(data_dir, target);

    // 2. A durable commit checks the checkpoint first: a store that lost commits (here: its
    //    checkpoint set back, as a crash losing deferred commits leaves it) is refused. The
    //    idempotency records after 400 are kept: rewritten, their keys are fresh to the
    //    flusher's engine but already stored, which PostgreSQL's append of fresh keys meets as
    //    a duplicate and writes with upserts instead.
    let mut store = Store::connect(target).expect("connect");
    let end0 = workload.engines[0].last_sequence();
    store
        .make_durable(0, end0)
        .expect("the checkpoint is where it was left");
    store
        .execute_batch(
            "DELETE FROM transactions WHERE shard = 0 AND sequence > 400;
             DELETE FROM ledger_entries WHERE shard = 0 AND sequence > 400;
             DELETE FROM holds WHERE shard = 0 AND sequence > 400;
             UPDATE flush_checkpoints SET last_sequence = 400 WHERE shard = 0;",
        )
        .expect("lose the commits after 400");
    match store.make_durable(0, end0) {
        Err(StoreError::CheckpointMoved {
            expected, found, ..
        }) => assert_eq!((expected, found), (end0, Some(400))),
        other => panic!("a lost commit must not be made durable: {other:?}"),
    }
    drop(store);

    // 3. Following (not `--once`) with deferred commits: the flusher starts from the lowered
    //    checkpoint, writes the lost batches again, and once it has caught up (journal idle) it
    //    has made everything durable: flushed (reported to retention) == committed == the end.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Vec<Arc<FlushStatus>> = (0..SHARDS).map(|_| Arc::default()).collect();
    let watermarks: Vec<Arc<AtomicU64>> = (0..SHARDS)
        .map(|s| {
            Arc::new(AtomicU64::new(
                workload.engines[usize::from(s)].last_sequence(),
            ))
        })
        .collect();
    let threads: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let mut config = config(data_dir, target, shard);
            config.watermark = Some(watermarks[usize::from(shard)].clone());
            let (status, stop) = (statuses[usize::from(shard)].clone(), stop.clone());
            std::thread::spawn(move || run(&config, &status, &stop))
        })
        .collect();
    let mut more = Vec::new();
    workload.generate(1_000, &mut more);
    workload.drain_legs(&mut more);
    write_journals(data_dir, SHARDS, &more, 100).expect("journal");
    for (shard, watermark) in watermarks.iter().enumerate() {
        watermark.store(workload.engines[shard].last_sequence(), Ordering::Release);
    }
    let caught_up = || {
        (0..usize::from(SHARDS)).all(|s| {
            let end = workload.engines[s].last_sequence();
            statuses[s].flushed_sequence.load(Ordering::Acquire) == end
        })
    };
    let until = Instant::now() + Duration::from_secs(60);
    while !caught_up() && Instant::now() < until {
        // Retention may only ever trust what was committed.
        for status in &statuses {
            assert!(
                status.flushed_sequence.load(Ordering::Acquire)
                    <= status.committed_sequence.load(Ordering::Acquire)
                    || status.committed_sequence.load(Ordering::Acquire) == 0
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(caught_up(), "caught up and made durable");
    stop.store(true, Ordering::Release);
    for thread in threads {
        thread.join().expect("thread").expect("flusher");
    }
    for (shard, status) in statuses.iter().enumerate() {
        assert_eq!(
            status.committed_sequence.load(Ordering::Acquire),
            workload.engines[shard].last_sequence()
        );
    }
    reconciled(data_dir, target);
}

#[test]
fn sqlite_deferred_commits_and_the_durable_watermark() {
    let dir = tempdir("sqlite");
    let target = StoreTarget::Sqlite(dir.join("store.sqlite"));
    scenario(&target, &dir.join("data"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_deferred_commits_and_the_durable_watermark() {
    let Some(pg) = PgSchema::create("durable_watermark") else {
        return;
    };
    let dir = tempdir("pg");
    scenario(&pg.target, &dir.join("data"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    paycore_store::testing::temp_dir(&format!("paycore-durable-{name}"))
}
