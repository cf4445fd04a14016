//! A full disk, as an operator meets it (issue 25): a node on a small tmpfs made by the test
//! turns read-only (`disk_full`) before any journal write fails, keeps answering reads and
//! status, loses nothing acknowledged, and takes writes again by itself once there is room; a
//! restart on a full disk starts read-only (or refuses with `--require-writable`); a write that
//! still fails mid-commit poisons the shard and `status`, `/metrics` and the client all say
//! which shard, since when and why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use paycore::node::{Node, NodeArgs, start_node, stop_sequencer};
use paycore_client::{Client, ClientConfig};
use paycore_engine::{
    Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, UserId, WalletId,
};
use paycore_protocol::{AdminCommand, CommandResult, Query, QueryResult};
use serde_json::Value;

const EIO: i32 = 5;

fn args(dir: &Path, shards: u16) -> NodeArgs {
    let mut args = NodeArgs::local(dir);
    args.shards = Some(shards);
    args.journal_segment_mib = 2;
    args.snapshot_every_records = 1_000_000;
    args.snapshot_every_secs = 3600;
    // The embedded SQL store would share the small disk; this test is about the journal.
    args.store.no_flush = true;
    args
}

/// A tmpfs mounted for the test, unmounted (and removed) when dropped.
struct SmallVolume {
    dir: PathBuf,
}

impl SmallVolume {
    fn mount(label: &str, size_mib: u64) -> Option<SmallVolume> {
        let dir = std::env::temp_dir().join(format!("paycore-{label}-{}", std::process::id()));
        let _ = Process::new("umount").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Process::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); this test needs root",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        Some(SmallVolume { dir })
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        // Lazy: a failed test may still hold files open (threads of a node); the mount must
        // not outlive the test.
        let _ = Process::new("umount").arg("-l").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Takes every free byte of the volume (appending to `path` until the disk refuses).
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("blocker");
    let chunk = vec![0xA5u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let small = [0xA5u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

fn usd() -> CurrencyCode {
    CurrencyCode::parse("USD").expect("code")
}

fn command(key: &str, op: Op) -> Command {
    Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    }
}

async fn client(server: SocketAddr, dir: &Path) -> Client {
    Client::connect(ClientConfig::new(server, dir.join("tls/cert.der")))
        .await
        .expect("connect")
}

async fn status(client: &Client) -> Value {
    let text = client.admin(AdminCommand::Status).await.expect("status");
    serde_json::from_str(&text).expect("status JSON")
}

async fn open_wallets(client: &Client, users: u128, funds: u128) -> Vec<WalletId> {
    let register = client
        .submit(vec![command(
            "usd",
            Op::RegisterCurrency {
                code: usd(),
                scale: 2,
            },
        )])
        .await
        .expect("register");
    assert!(matches!(register[0], CommandResult::Outcome(o) if o.is_ok()));
    let opens = (1..=users).map(|u| {
        command(
            &format!("open-{u}"),
            Op::OpenWallet {
                user: UserId(u),
                currency: usd(),
            },
        )
    });
    let wallets: Vec<WalletId> = client
        .submit(opens.collect())
        .await
        .expect("opens")
        .iter()
        .map(|r| match r {
            CommandResult::Outcome(Outcome::Ok(Applied::WalletOpened(wallet))) => *wallet,
            other => panic!("{other:?}"),
        })
        .collect();
    let deposits = wallets.iter().enumerate().map(|(i, w)| {
        command(
            &format!("fund-{i}"),
            Op::Deposit {
                wallet: *w,
                amount: funds,
                currency: usd(),
            },
        )
    });
    for result in client.submit(deposits.collect()).await.expect("deposits") {
        assert!(matches!(result, CommandResult::Outcome(o) if o.is_ok()));
    }
    wallets
}

async fn balance(client: &Client, wallet: WalletId) -> i128 {
    match client
        .query(Query::WalletById(wallet))
        .await
        .expect("a read works")
    {
        QueryResult::Wallet(Some(view)) => view.available + view.frozen,
        other => panic!("{other:?}"),
    }
}

/// Transfers between wallets of the same shard (so every acknowledged one is final at once),
/// the model updated for each one applied.
struct Load {
    pairs: Vec<(WalletId, WalletId)>,
    model: HashMap<WalletId, i128>,
    next: u64,
}

#[derive(Debug, Default)]
struct Answers {
    ok: u64,
    disk_full: u64,
    shard_unavailable: u64,
    other: u64,
}

impl Load {
    fn new(wallets: &[WalletId], funds: u128) -> Load {
        let mut by_shard: HashMap<u16, Vec<WalletId>> = HashMap::new();
        for wallet in wallets {
            by_shard.entry(wallet.shard()).or_default().push(*wallet);
        }
        let mut pairs = Vec::new();
        for same in by_shard.values() {
            for (i, from) in same.iter().enumerate() {
                pairs.push((*from, same[(i + 1) % same.len()]));
            }
        }
        Load {
            pairs,
            model: wallets.iter().map(|w| (*w, funds as i128)).collect(),
            next: 0,
        }
    }

    async fn send(&mut self, client: &Client, count: usize) -> Answers {
        let batch: Vec<(WalletId, WalletId, Command)> = (0..count)
            .map(|_| {
                self.next += 1;
                let (from, to) = self.pairs[self.next as usize % self.pairs.len()];
                let op = Op::Transfer {
                    from,
                    to,
                    amount: 1,
                    currency: usd(),
                };
                (from, to, command(&format!("t-{}", self.next), op))
            })
            .collect();
        let commands = batch.iter().map(|(_, _, c)| c.clone()).collect();
        let results = client.submit_once(commands).await.expect("an answer");
        let mut answers = Answers::default();
        for ((from, to, _), result) in batch.iter().zip(results) {
            match result {
                CommandResult::Outcome(Outcome::Ok(_)) => {
                    *self.model.get_mut(from).expect("known") -= 1;
                    *self.model.get_mut(to).expect("known") += 1;
                    answers.ok += 1;
                }
                CommandResult::DiskFull => answers.disk_full += 1,
                CommandResult::ShardUnavailable => answers.shard_unavailable += 1,
                _ => answers.other += 1,
            }
        }
        answers
    }
}

async fn shut_down(node: Node) {
    node.role.stop_flushing();
    node.endpoint.close(0u32.into(), b"done");
    stop_sequencer(node.sequencer).await;
}

fn metrics(node: &Node) -> String {
    paycore::metrics::render(&node.sequencer, &node.role, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_the_node_read_only_before_any_write_fails_and_writes_resume_without_a_restart()
 {
    let Some(volume) = SmallVolume::mount("node-disk-full", 40) else {
        return;
    };
    let dir = volume.dir.join("data");
    let blocker = volume.dir.join("blocker");
    let node = start_node(&args(&dir, 2)).await.expect("node starts");
    let client = client(node.listen, &dir).await;
    let funds = 1_000_000u128;
    let wallets = open_wallets(&client, 40, funds).await;
    let mut load = Load::new(&wallets, funds);

    // Leave 3 MiB above the reserve, then write until the shards refuse.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shard0 = &status(&client).await["shards"][0];
    let free = shard0["disk_free_bytes"]
        .as_u64()
        .expect("free space reported");
    let reserve = shard0["disk_reserve_bytes"]
        .as_u64()
        .expect("reserve reported");
    assert_eq!(shard0["state"], "healthy");
    assert!(
        (4 << 20..5 << 20).contains(&reserve),
        "two 2 MiB segments and a small snapshot: {reserve}"
    );
    assert!(free > reserve + (3 << 20), "free {free}");
    std::fs::write(
        &blocker,
        vec![0x5Au8; (free - reserve - (3 << 20)) as usize],
    )
    .expect("blocker");
    let mut total = Answers::default();
    let started = Instant::now();
    while total.disk_full == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no disk_full after {total:?}"
        );
        let answers = load.send(&client, 500).await;
        total.ok += answers.ok;
        total.disk_full += answers.disk_full;
        total.shard_unavailable += answers.shard_unavailable;
        total.other += answers.other;
    }
    assert_eq!(total.shard_unavailable, 0, "no write failed: {total:?}");
    assert_eq!(total.other, 0, "{total:?}");
    assert!(total.ok > 10_000, "{total:?}");
    // Keep the disk full for a while (retention may free covered segments meanwhile: take them
    // too), so the read-only state can be looked at.
    for _ in 0..10 {
        fill(&blocker);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let refused = load.send(&client, 50).await;
    assert_eq!(refused.disk_full, 50, "{refused:?}");
    let status_now = status(&client).await;
    for shard in status_now["shards"].as_array().expect("shards") {
        assert_eq!(shard["state"], "read_only", "{status_now}");
        let reason = shard["state_reason"].as_str().expect("a reason");
        assert!(
            reason.contains("below the reserve") || reason.contains("cannot be prepared"),
            "{reason}"
        );
        assert!(shard["state_since_ms"].as_u64().expect("since") > 0);
        assert!(
            shard.get("standby_connected").is_none(),
            "no standby line: {shard}"
        );
    }
    for shard in 0..2 {
        assert!(
            !node
                .sequencer
                .stats(shard)
                .poisoned
                .load(std::sync::atomic::Ordering::Acquire)
        );
    }
    let text = metrics(&node);
    assert!(
        text.contains("paycore_shard_health{shard=\"0\"} 1"),
        "{text}"
    );
    assert!(text.contains("state=\"read_only\""), "{text}");
    // Reads go on, and show every acknowledged transfer.
    for wallet in &wallets {
        assert_eq!(balance(&client, *wallet).await, load.model[wallet]);
    }

    // Room again: writes resume by themselves, no restart.
    std::fs::remove_file(&blocker).expect("blocker removed");
    let resumed_at = Instant::now();
    loop {
        let answers = load.send(&client, 20).await;
        assert_eq!(answers.shard_unavailable, 0);
        if answers.ok == 20 {
            break;
        }
        assert!(
            resumed_at.elapsed() < Duration::from_secs(10),
            "writes did not resume: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "writes resumed {} ms after the space came back",
        resumed_at.elapsed().as_millis()
    );
    let after = status(&client).await;
    for shard in after["shards"].as_array().expect("shards") {
        assert_eq!(shard["state"], "healthy", "{after}");
    }
    assert!(
        std::fs::read_dir(dir.join("shard-000/journal"))
            .expect("journal")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .all(|name| !name.ends_with(".creating") || name == "next-segment.creating"),
        "no half-made segment left"
    );
    client.close();
    shut_down(node).await;

    // Restart on a full disk: read-only at once with the reason, or refused when asked.
    // (Start-up removes the prepared spare segments; take their room too.)
    for shard in ["shard-000", "shard-001"] {
        let _ = std::fs::remove_file(dir.join(shard).join("journal/next-segment.creating"));
    }
    fill(&blocker);
    let mut strict = args(&dir, 2);
    strict.require_writable = true;
    let refused = start_node(&strict)
        .await
        .expect_err("refused on a full disk");
    assert!(refused.contains("writability is required"), "{refused}");
    let node = start_node(&args(&dir, 2)).await.expect("starts read-only");
    let client = self::client(node.listen, &dir).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = status(&client).await;
    assert_eq!(restarted["shards"][0]["state"], "read_only", "{restarted}");
    assert_eq!(load.send(&client, 10).await.disk_full, 10);
    // Nothing acknowledged was lost.
    for wallet in &wallets {
        assert_eq!(balance(&client, *wallet).await, load.model[wallet]);
    }
    client.close();
    shut_down(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_mid_commit_poisons_the_shard_and_everyone_is_told_why() {
    let dir = std::env::temp_dir().join(format!("paycore-node-poison-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = start_node(&args(&dir, 2)).await.expect("node starts");
    let client = client(node.listen, &dir).await;
    let wallets = open_wallets(&client, 10, 1_000).await;
    let on_shard_1 = *wallets
        .iter()
        .find(|w| w.shard() == 1)
        .expect("a wallet on shard 1");
    let shard_1_journal = dir.join("shard-001/journal");
    paycore_journal::faults::fail_syncs_under(&shard_1_journal, EIO);
    let deposit = command(
        "poisoned-deposit",
        Op::Deposit {
            wallet: on_shard_1,
            amount: 5,
            currency: usd(),
        },
    );
    let answer = client.submit_once(vec![deposit]).await.expect("an answer");
    assert_eq!(answer, vec![CommandResult::ShardUnavailable]);
    paycore_journal::faults::clear_sync_faults(&shard_1_journal);

    let answer = status(&client).await;
    let shard = &answer["shards"][1];
    assert_eq!(shard["state"], "poisoned", "{answer}");
    let reason = shard["state_reason"].as_str().expect("reason");
    assert!(reason.contains("os error 5"), "{reason}");
    assert!(shard["state_since_ms"].as_u64().expect("since") > 0);
    assert_eq!(answer["shards"][0]["state"], "healthy");
    let text = metrics(&node);
    assert!(
        text.contains("paycore_shard_health{shard=\"1\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("paycore_shard_journal_poisoned{shard=\"1\"} 1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .starts_with("paycore_shard_health_info{shard=\"1\",state=\"poisoned\"")
            && l.contains("os error 5")),
        "{text}"
    );
    // Still unavailable after the disk recovered (only a restart decides what is on disk);
    // reads of the shard go on.
    let again = command(
        "poisoned-deposit-2",
        Op::Deposit {
            wallet: on_shard_1,
            amount: 5,
            currency: usd(),
        },
    );
    assert_eq!(
        client.submit_once(vec![again]).await.expect("answer"),
        vec![CommandResult::ShardUnavailable]
    );
    assert_eq!(balance(&client, on_shard_1).await, 1_000);
    client.close();
    shut_down(node).await;
    let _ = std::fs::remove_dir_all(&dir);
}
