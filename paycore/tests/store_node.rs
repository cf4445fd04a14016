//! The node's own flushers, end to end: a `paycore node` (in process, two shards, no store
//! configured) takes deposits and local and cross-shard transfers over QUIC; its flushers write
//! the embedded SQLite store `<data_dir>/store.sqlite` while it runs; once they have caught up
//! (lag 0), the node stops and `reconcile` finds the store equal to the engine. With
//! `DATABASE_URL` reachable, the same against PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use paycore::node::{NodeArgs, start_node, stop_sequencer};
use paycore_client::{Client, ClientConfig};
use paycore_engine::{
    Applied, Command, CurrencyCode, EngineConfig, IdempotencyKey, Op, Outcome, UserId, WalletId,
};
use paycore_protocol::CommandResult;
use paycore_store::reconcile::{ReconcileConfig, Silent, reconcile};
use paycore_store::store::StoreTarget;
use paycore_store::testing::PgSchema;

const SHARDS: u16 = 2;

fn data_dir(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("paycore-store-node-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn command(key: String, op: Op) -> Command {
    Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    }
}

fn applied(results: &[CommandResult]) -> Vec<Outcome> {
    results
        .iter()
        .map(|r| match r {
            CommandResult::Outcome(outcome) => *outcome,
            other => panic!("not applied: {other:?}"),
        })
        .collect()
}

/// Runs the node part on its own runtime (the store's PostgreSQL client blocks on a runtime of
/// its own, so the checks below run outside any).
fn scenario(dir: &Path, pg: Option<&PgSchema>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run_node(dir, pg));
    check(dir, pg);
}

async fn run_node(dir: &Path, pg: Option<&PgSchema>) {
    let mut args = NodeArgs::local(dir);
    args.shards = Some(SHARDS);
    if let Some(pg) = pg {
        args.store.postgres_url = Some(pg.url.clone());
        args.store.postgres_schema = pg.schema.clone();
    } else {
        args.store.postgres_url = None;
    }
    let node = start_node(&args).await.expect("node starts");
    let client = Client::connect(ClientConfig::new(node.listen, dir.join("tls/cert.der")))
        .await
        .expect("connect");
    let usd = CurrencyCode::parse("USD").expect("code");
    let register = command(
        "usd".into(),
        Op::RegisterCurrency {
            code: usd,
            scale: 2,
        },
    );
    assert!(applied(&client.submit(vec![register]).await.expect("register"))[0].is_ok());
    let opens = (1..=40u128)
        .map(|u| {
            command(
                format!("open-{u}"),
                Op::OpenWallet {
                    user: UserId(u),
                    currency: usd,
                },
            )
        })
        .collect();
    let wallets: Vec<WalletId> = applied(&client.submit(opens).await.expect("open"))
        .into_iter()
        .map(|o| match o {
            Outcome::Ok(Applied::WalletOpened(w)) => w,
            other => panic!("open: {other:?}"),
        })
        .collect();
    let deposits = wallets
        .iter()
        .map(|&wallet| {
            command(
                format!("dep-{}", wallet.0),
                Op::Deposit {
                    wallet,
                    amount: 100_000,
                    currency: usd,
                },
            )
        })
        .collect();
    client.submit(deposits).await.expect("deposits");
    for round in 0..5u64 {
        let transfers = (0..200u64)
            .map(|i| {
                let from = wallets[((i * 7 + round) % 40) as usize];
                let to = wallets[((i * 13 + round * 3 + 1) % 40) as usize];
                command(
                    format!("t-{round}-{i}"),
                    Op::Transfer {
                        from,
                        to,
                        amount: 1 + u128::from(i % 97),
                        currency: usd,
                    },
                )
            })
            .collect();
        client.submit(transfers).await.expect("transfers");
    }
    // The flushers catch up while the node runs (cross-shard legs settle on their own).
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = {
            let flushers = node.role.flushers.lock().unwrap_or_else(|p| p.into_inner());
            let flushers = flushers.as_ref().expect("the primary runs flushers");
            (0..SHARDS).all(|shard| {
                let durable = node
                    .sequencer
                    .durable_watermark(shard)
                    .load(Ordering::Acquire);
                let (flushed, lag_records, _) = flushers.lag(shard, durable);
                durable > 0 && flushed == durable && lag_records == 0
            })
        };
        if caught_up {
            break;
        }
        assert!(Instant::now() < until, "flushers did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.role.stop_flushing();
    node.endpoint.close(0u32.into(), b"done");
    stop_sequencer(node.sequencer).await;
}

fn check(dir: &Path, pg: Option<&PgSchema>) {
    let target = match pg {
        Some(pg) => pg.target.clone(),
        None => StoreTarget::Sqlite(dir.join("store.sqlite")),
    };
    let report = reconcile(
        &ReconcileConfig {
            data_dir: dir.to_path_buf(),
            shard_count: SHARDS,
            engine_config: EngineConfig::default(),
            target,
        },
        &Silent,
    )
    .expect("reconcile");
    assert!(report.ok(), "{}", report.summary());
    let movements: u64 = report.shards.iter().map(|s| s.movements).sum();
    assert!(movements >= 1_040, "{movements} movements");
}

#[test]
fn node_flushes_into_embedded_sqlite() {
    let dir = data_dir("sqlite");
    scenario(&dir, None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_flushes_into_postgres() {
    let Some(pg) = PgSchema::create("node") else {
        return;
    };
    let dir = data_dir("pg");
    scenario(&dir, Some(&pg));
    let _ = std::fs::remove_dir_all(&dir);
}
