//! The flusher against both backends (SQLite file and a real PostgreSQL): a multi-shard journal
//! written out in batches, resumed after a stop, then reconciled; a tampered balance and a
//! deleted movement are found; partitions appear across a month boundary.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use paycore_engine::EngineConfig;
use paycore_store::flusher::{FlushStatus, FlusherConfig, run};
use paycore_store::reconcile::{ReconcileConfig, Silent, reconcile};
use paycore_store::store::{Store, StoreTarget};
use paycore_store::testing::PgSchema;
use paycore_store::workload::{Workload, WorkloadConfig, write_journals};

const SHARDS: u16 = 2;

fn workload(start_ns: u64, step_ns: u64) -> Workload {
    Workload::new(WorkloadConfig {
        shards: SHARDS,
        seed: 11,
        users: 40,
        start_ns,
        step_ns,
        transfers_only: false,
        legs_in_flight_max: None,
    })
}

fn flush_all(data_dir: &Path, target: &StoreTarget, batch: usize) {
    for shard in 0..SHARDS {
        let mut config = FlusherConfig::new(
            data_dir.to_path_buf(),
            EngineConfig {
                shard,
                shard_count: SHARDS,
                ..EngineConfig::default()
            },
            target.clone(),
        );
        config.stop_at_end = true;
        config.batch_records_max = batch;
        let status = FlushStatus::default();
        run(&config, &status, &AtomicBool::new(false)).expect("flush");
    }
}

fn check(data_dir: &Path, target: &StoreTarget) -> paycore_store::reconcile::Report {
    let config = ReconcileConfig {
        data_dir: data_dir.to_path_buf(),
        shard_count: SHARDS,
        engine_config: EngineConfig::default(),
        target: target.clone(),
    };
    reconcile(&config, &Silent).expect("reconcile runs")
}

fn scenario(target: &StoreTarget, data_dir: &Path) {
    // 2026-01-31 23:00 UTC, 2 s per command: the stream crosses into February.
    let mut workload = workload(1_769_900_400_000_000_000, 2_000_000_000);
    let mut records = Vec::new();
    workload.generate(3_000, &mut records);
    write_journals(data_dir, SHARDS, &records, 100).expect("journal");
    flush_all(data_dir, target, 257);
    let report = check(data_dir, target);
    assert!(report.ok(), "{}", report.summary());

    // More commands (and all legs delivered), then the flusher resumes from its checkpoint.
    let mut more = Vec::new();
    workload.generate(2_000, &mut more);
    workload.drain_legs(&mut more);
    write_journals(data_dir, SHARDS, &more, 64).expect("journal");
    flush_all(data_dir, target, 1000);
    let report = check(data_dir, target);
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(
        report
            .shards
            .iter()
            .map(|s| s.checkpoint)
            .collect::<Vec<_>>(),
        workload
            .engines
            .iter()
            .map(|e| e.last_sequence())
            .collect::<Vec<_>>()
    );
    let movements: u64 = report.shards.iter().map(|s| s.movements).sum();
    assert!(movements > 1_000, "{movements} movements");

    // Exactly once: rows match the engine one for one (a duplicate movement would fail the
    // primary key, a duplicate posting would break check 2).
    let mut store = Store::connect(target).expect("connect");
    let wallets: u64 = store
        .query_text("SELECT CAST(count(*) AS TEXT) FROM wallets")
        .expect("count")
        .and_then(|v| v.parse().ok())
        .expect("a count");
    let engine_wallets: usize = workload.engines.iter().map(|e| e.wallet_count()).sum();
    assert_eq!(wallets, engine_wallets as u64);

    // Tamper with one balance: found by checks 1, 2 and 3.
    let user_wallet = workload.wallets[3].0;
    store
        .execute_batch(&format!(
            "UPDATE wallets SET balance = '123.45', available_balance = '123.45' WHERE id = {}",
            user_wallet.0
        ))
        .expect("tamper");
    let report = check(data_dir, target);
    assert!(!report.ok());
    let subject = format!("wallet {}", user_wallet.0);
    for check in ["1-sum-zero", "2-wallet-postings", "3-engine-wallet"] {
        assert!(
            report
                .discrepancies
                .iter()
                .any(|d| d.check == check
                    && (check == "1-sum-zero" || d.subject.starts_with(&subject))),
            "{check} not found:\n{}",
            report.summary()
        );
    }
    let listed = report
        .discrepancies
        .iter()
        .find(|d| d.check == "3-engine-wallet")
        .expect("listed");
    assert!(listed.found.contains("123.45"), "{listed:?}");
    assert!(!listed.expected.contains("123.45"), "{listed:?}");
    drop(store);
    flush_all(data_dir, target, 1000); // nothing new: the flusher does not repair or duplicate
    let mut store = Store::connect(target).expect("connect");
    store
        .execute_batch(&format!(
            "UPDATE wallets SET balance = '{b}', available_balance = '{a}' WHERE id = {id}",
            b = paycore_store::decimal::format_minor(
                workload.engines[usize::from(user_wallet.shard())]
                    .wallet(user_wallet)
                    .expect("wallet")
                    .balance(),
                2
            ),
            a = paycore_store::decimal::format_minor(
                workload.engines[usize::from(user_wallet.shard())]
                    .wallet(user_wallet)
                    .expect("wallet")
                    .available,
                2
            ),
            id = user_wallet.0
        ))
        .expect("restore");
    let report = check(data_dir, target);
    assert!(report.ok(), "restored: {}", report.summary());

    // Delete one movement row: its postings have no movement.
    let victim = store
        .query_text("SELECT CAST(id AS TEXT) FROM transactions WHERE kind = 'transfer' ORDER BY sequence LIMIT 1")
        .expect("query")
        .expect("a transfer");
    store
        .execute_batch(&format!("DELETE FROM transactions WHERE id = '{victim}'"))
        .expect("delete");
    let report = check(data_dir, target);
    assert!(!report.ok());
    assert!(
        report
            .discrepancies
            .iter()
            .any(|d| d.check == "2-movement-postings" && d.subject.contains(&victim)),
        "{}",
        report.summary()
    );
    let json = report.to_json();
    assert_eq!(json["ok"], false);
    assert!(json["discrepancy_count"].as_u64().unwrap_or(0) >= 1);

    // Check 4 without an engine image: a changed outcome is found by looking the stored key up
    // in the engine; a deleted record, and a hold closed in the store only, by counting, and
    // then named.
    let (hex_of, key_literal): (&str, fn(&str) -> String) = if store.is_postgres() {
        ("encode(idempotency_key, 'hex')", |k| {
            format!("decode('{k}', 'hex')")
        })
    } else {
        ("lower(hex(idempotency_key))", |k| format!("x'{k}'"))
    };
    let latest_keys = |store: &mut Store, skip: u32| {
        store
            .query_text(&format!(
                "SELECT {hex_of} FROM transaction_idempotency WHERE outcome = 'transferred'
                 ORDER BY sequence DESC LIMIT 1 OFFSET {skip}"
            ))
            .expect("query")
            .expect("a transferred key")
    };
    let (changed, deleted) = (latest_keys(&mut store, 0), latest_keys(&mut store, 1));
    store
        .execute_batch(&format!(
            "UPDATE transaction_idempotency SET outcome = 'rejected:insufficient_funds'
             WHERE idempotency_key = {};
             DELETE FROM transaction_idempotency WHERE idempotency_key = {};",
            key_literal(&changed),
            key_literal(&deleted)
        ))
        .expect("tamper idempotency");
    let open_holds = |store: &mut Store, skip: u32| {
        store
            .query_text(&format!(
                "SELECT CAST(id AS TEXT) FROM holds WHERE status = 'open' ORDER BY id
                 LIMIT 1 OFFSET {skip}"
            ))
            .expect("query")
            .expect("two open holds in the workload")
    };
    let (closed, shrunk) = (open_holds(&mut store, 0), open_holds(&mut store, 1));
    store
        .execute_batch(&format!(
            "UPDATE holds SET status = 'released' WHERE id = {closed};
             UPDATE holds SET amount = '0.01' WHERE id = {shrunk};"
        ))
        .expect("tamper holds");
    let report = check(data_dir, target);
    let found = |check: &str, subject: &str, found: &str| {
        report
            .discrepancies
            .iter()
            .any(|d| d.check == check && d.subject == subject && d.found.contains(found))
    };
    let summary = report.summary();
    assert!(
        found("4-idempotency", &format!("key {changed}"), "rejected"),
        "{summary}"
    );
    assert!(
        found("4-idempotency", &format!("key {deleted}"), "no record"),
        "{summary}"
    );
    assert!(
        found(
            "4-holds",
            &format!("hold {closed}"),
            "not open in the store"
        ),
        "{summary}"
    );
    assert!(
        found("4-holds", &format!("hold {shrunk}"), "amount 0.01"),
        "{summary}"
    );
    assert_eq!(
        report
            .discrepancies
            .iter()
            .filter(|d| d.check.starts_with('4'))
            .count(),
        4,
        "{summary}"
    );
}

#[test]
fn sqlite_flush_resume_reconcile_tamper() {
    let dir = tempdir("sqlite");
    let target = StoreTarget::Sqlite(dir.join("store.sqlite"));
    scenario(&target, &dir.join("data"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_flush_resume_reconcile_tamper_and_month_partitions() {
    let Some(pg) = PgSchema::create("flush_reconcile") else {
        return;
    };
    let dir = tempdir("pg");
    scenario(&pg.target, &dir.join("data"));
    // The stream started on 31 January and crossed into February: rows landed in both
    // monthly partitions, and the month after the last timestamp was created ahead.
    let mut store = Store::connect(&pg.target).expect("connect");
    let partitions = store
        .query_text(&format!(
            "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = p.relnamespace
             WHERE p.relname = 'transactions' AND n.nspname = '{}'",
            pg.schema
        ))
        .expect("partitions")
        .unwrap_or_default();
    assert_eq!(
        partitions,
        "transactions_2026_01,transactions_2026_02,transactions_2026_03"
    );
    for (partition, at_least) in [("transactions_2026_01", 100), ("transactions_2026_02", 100)] {
        let rows: u64 = store
            .query_text(&format!("SELECT count(*)::text FROM {partition}"))
            .expect("count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(rows >= at_least, "{partition}: {rows} rows");
    }
    let misplaced = store
        .query_text(
            "SELECT count(*)::text FROM transactions_2026_01 WHERE created_at >= '2026-02-01'",
        )
        .expect("query");
    assert_eq!(misplaced.as_deref(), Some("0"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The writer appends opened wallets and updates the others; a store that does not match (a
/// wallet row lost, or one there already) makes it write the batch again with upserts, not fail
/// or skip the wallet.
#[test]
fn postgres_wallet_rows_the_store_does_not_match_are_written_again() {
    let Some(pg) = PgSchema::create("wallet_rows") else {
        return;
    };
    let dir = tempdir("wallet-rows");
    let data_dir = dir.join("data");
    let mut workload = workload(1_767_225_600_000_000_000, 1_000_000);
    let mut records = Vec::new();
    workload.generate(2_000, &mut records);
    write_journals(&data_dir, SHARDS, &records, 100).expect("journal");
    flush_all(&data_dir, &pg.target, 500);
    let mut store = Store::connect(&pg.target).expect("connect");
    let count = |store: &mut Store, sql: &str| -> u64 {
        store
            .query_text(sql)
            .expect("count")
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    let wallets = count(&mut store, "SELECT count(*)::text FROM wallets");
    // Every user wallet moves money in the next commands (40 users, 2 000 commands).
    let lost = workload.wallets[5].0.0;
    store
        .execute_batch(&format!("DELETE FROM wallets WHERE id = {lost}"))
        .expect("delete");
    let mut more = Vec::new();
    workload.generate(2_000, &mut more);
    workload.drain_legs(&mut more);
    write_journals(&data_dir, SHARDS, &more, 64).expect("journal");
    flush_all(&data_dir, &pg.target, 500);
    assert_eq!(
        count(&mut store, "SELECT count(*)::text FROM wallets"),
        wallets
    );
    let report = check(&data_dir, &pg.target);
    assert!(report.ok(), "{}", report.summary());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    paycore_store::testing::temp_dir(&format!("paycore-store-{name}"))
}

/// A running flusher whose store goes back in time (restored from a backup: rows and
/// checkpoint together) notices at its next write and writes everything again from there.
fn rewind_scenario(target: &StoreTarget, data_dir: &Path) {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let mut workload = workload(1_767_225_600_000_000_000, 1_000_000);
    let mut records = Vec::new();
    workload.generate(3_000, &mut records);
    write_journals(data_dir, SHARDS, &records, 100).expect("journal");
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Vec<Arc<FlushStatus>> = (0..SHARDS).map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let mut config = FlusherConfig::new(
                data_dir.to_path_buf(),
                EngineConfig {
                    shard,
                    shard_count: SHARDS,
                    ..EngineConfig::default()
                },
                target.clone(),
            );
            config.batch_records_max = 97;
            let (status, stop) = (statuses[usize::from(shard)].clone(), stop.clone());
            std::thread::spawn(move || run(&config, &status, &stop))
        })
        .collect();
    let caught_up = |engines: &[paycore_engine::Engine]| {
        (0..usize::from(SHARDS)).all(|s| {
            statuses[s].flushed_sequence.load(Ordering::Acquire) == engines[s].last_sequence()
        })
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !caught_up(&workload.engines) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(caught_up(&workload.engines), "first catch-up");
    // "Restore a backup" of shard 0 taken at sequence 700.
    let mut store = Store::connect(target).expect("connect");
    store
        .execute_batch(
            "DELETE FROM transactions WHERE shard = 0 AND sequence > 700;
             DELETE FROM ledger_entries WHERE shard = 0 AND sequence > 700;
             DELETE FROM transaction_idempotency WHERE shard = 0 AND sequence > 700;
             DELETE FROM holds WHERE shard = 0 AND sequence > 700;
             UPDATE flush_checkpoints SET last_sequence = 700 WHERE shard = 0;",
        )
        .expect("rewind");
    drop(store);
    let mut more = Vec::new();
    workload.generate(1_000, &mut more);
    workload.drain_legs(&mut more);
    write_journals(data_dir, SHARDS, &more, 100).expect("journal");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !caught_up(&workload.engines) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(caught_up(&workload.engines), "catch-up after the rewind");
    stop.store(true, Ordering::Release);
    for thread in threads {
        thread.join().expect("thread").expect("flusher");
    }
    let report = check(data_dir, target);
    assert!(report.ok(), "{}", report.summary());
}

#[test]
fn sqlite_store_restored_from_backup_is_rewritten() {
    let dir = tempdir("rewind");
    let target = StoreTarget::Sqlite(dir.join("store.sqlite"));
    rewind_scenario(&target, &dir.join("data"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_store_restored_from_backup_is_rewritten() {
    let Some(pg) = PgSchema::create("rewind") else {
        return;
    };
    let dir = tempdir("pgrewind");
    rewind_scenario(&pg.target, &dir.join("data"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written from one history is refused by a flusher following another: the same
/// sequences journaled in a later epoch (what a new primary writes after a failover that lost
/// the old primary's tail).
#[test]
fn sqlite_store_of_another_history_is_refused() {
    use paycore_store::flusher::FlushError;
    use paycore_store::workload::Journals;
    let dir = tempdir("diverged");
    let target = StoreTarget::Sqlite(dir.join("store.sqlite"));
    let mut workload = workload(1_767_225_600_000_000_000, 1_000_000);
    let mut records = Vec::new();
    workload.generate(1_000, &mut records);
    write_journals(&dir.join("a"), SHARDS, &records, 100).expect("journal");
    flush_all(&dir.join("a"), &target, 100);
    let mut other = Journals::open_with_epoch(&dir.join("b"), SHARDS, 100, 2).expect("open");
    other.append(&records).expect("append");
    other.commit().expect("commit");
    drop(other);
    let mut config = FlusherConfig::new(
        dir.join("b"),
        EngineConfig {
            shard: 0,
            shard_count: SHARDS,
            ..EngineConfig::default()
        },
        target.clone(),
    );
    config.stop_at_end = true;
    let result = run(&config, &FlushStatus::default(), &AtomicBool::new(false));
    assert!(
        matches!(
            result,
            Err(FlushError::Diverged {
                store_epoch: 1,
                journal_epoch: 2,
                ..
            })
        ),
        "{result:?}"
    );
    // The same history (epoch 1) resumes without complaint.
    config.data_dir = dir.join("a");
    run(&config, &FlushStatus::default(), &AtomicBool::new(false)).expect("same history");
    let _ = std::fs::remove_dir_all(&dir);
}
