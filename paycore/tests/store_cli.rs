//! `paycore flush --once` then `paycore reconcile` as an operator runs them: exit code 0 and a
//! JSON report when the store matches; after a balance row is tampered with and a movement row
//! deleted, exit code 1 with both discrepancies listed (wallet, expected, found), on stdout and
//! in the report. The embedded SQLite store (the default) and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use paycore_store::store::{Store, StoreTarget};
use paycore_store::testing::PgSchema;
use paycore_store::workload::{Workload, WorkloadConfig, write_journals};

fn tempdir(name: &str) -> PathBuf {
    paycore_store::testing::temp_dir(&format!("paycore-store-cli-{name}"))
}

fn paycore(args: &[&str], data_dir: &Path, store: &[String]) -> (i32, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_paycore"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--shards", "2"])
        .args(store)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run paycore");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn scenario(dir: &Path, target: &StoreTarget, store: &[String]) {
    let data_dir = dir.join("data");
    let mut workload = Workload::new(WorkloadConfig {
        shards: 2,
        seed: 3,
        users: 50,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 1_000_000,
        transfers_only: false,
        legs_in_flight_max: None,
    });
    let mut records = Vec::new();
    workload.generate(4_000, &mut records);
    write_journals(&data_dir, 2, &records, 100).expect("journal");
    let (code, out) = paycore(&["flush", "--once"], &data_dir, store);
    assert_eq!(code, 0, "{out}");

    // A shard count that does not match the folder is refused (exit 2), not silently wrong.
    let out = Process::new(env!("CARGO_BIN_EXE_paycore"))
        .args(["reconcile", "--quiet", "--shards", "1", "--data-dir"])
        .arg(&data_dir)
        .args(store)
        .output()
        .expect("run paycore");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 shard folder(s)"));

    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().to_string();
    let (code, out) = paycore(
        &["reconcile", "--quiet", "--report", &report_arg],
        &data_dir,
        store,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: every check matches"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["ok"], true);

    let wallet = workload.wallets[7].0;
    let mut db = Store::connect(target).expect("connect");
    db.execute_batch(&format!(
        "UPDATE wallets SET balance = '999999.99', available_balance = '999999.99' WHERE id = {}",
        wallet.0
    ))
    .expect("tamper");
    let victim = db
        .query_text("SELECT CAST(id AS TEXT) FROM transactions WHERE kind = 'deposit' LIMIT 1")
        .expect("query")
        .expect("a deposit");
    db.execute_batch(&format!("DELETE FROM transactions WHERE id = '{victim}'"))
        .expect("delete");
    drop(db);
    let (code, out) = paycore(
        &["reconcile", "--quiet", "--report", &report_arg],
        &data_dir,
        store,
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISMATCH"), "{out}");
    assert!(out.contains(&format!("wallet {}", wallet.0)), "{out}");
    assert!(out.contains("999999.99"), "{out}");
    assert!(out.contains(&victim), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["ok"], false);
    let listed = json["discrepancies"].as_array().expect("list");
    assert!(listed.iter().any(|d| {
        d["check"] == "3-engine-wallet"
            && d["subject"]
                .as_str()
                .unwrap_or("")
                .contains(&wallet.0.to_string())
            && d["found"].as_str().unwrap_or("").contains("999999.99")
    }));
    assert!(listed.iter().any(|d| d["check"] == "2-movement-postings"
        && d["subject"].as_str().unwrap_or("").contains(&victim)));
}

#[test]
fn sqlite_flush_and_reconcile_cli() {
    let dir = tempdir("sqlite");
    let target = StoreTarget::Sqlite(dir.join("data").join("store.sqlite"));
    scenario(&dir, &target, &[]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_flush_and_reconcile_cli() {
    let Some(pg) = PgSchema::create("cli") else {
        return;
    };
    let dir = tempdir("pg");
    let args = vec![
        "--postgres-url".to_string(),
        pg.url.clone(),
        "--postgres-schema".to_string(),
        pg.schema.clone(),
    ];
    scenario(&dir, &pg.target, &args);
    let _ = std::fs::remove_dir_all(&dir);
}
