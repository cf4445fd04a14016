//! A full disk under cross-shard load, in one process (issue 25): shards turn read-only
//! (`disk_full`) before any journal write fails, the legs of transfers already debited wait
//! (they are never dropped), and once the disk has room every shard takes writes again by
//! itself and every acknowledged transfer settles, to the unit. On a tmpfs made by the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use paycore_engine::{
    Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, UserId, WalletId,
};
use paycore_sequencer::{CommandResult, Sequencer, SequencerConfig};

const WAIT: Duration = Duration::from_secs(30);

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
}

/// Grows `blocker` until the volume has about `free` bytes left.
fn shrink_free_space_to(blocker: &Path, volume: &Path, free: u64) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(blocker)
        .expect("blocker");
    let chunk = vec![0x5Au8; 64 * 1024];
    while paycore_journal::disk_space(volume)
        .expect("statvfs")
        .free_bytes
        > free
    {
        file.write_all(&chunk).expect("room above the target");
    }
}

fn usd() -> CurrencyCode {
    CurrencyCode::parse("USD").expect("code")
}

fn client(key: &str, op: Op) -> Command {
    Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    }
}

fn applied(sequencer: &Sequencer, commands: Vec<Command>) -> Vec<Outcome> {
    sequencer
        .submit_wait(commands, WAIT)
        .expect("answered")
        .into_iter()
        .map(|r| match r {
            CommandResult::Outcome(outcome) => outcome,
            other => panic!("not applied: {other:?}"),
        })
        .collect()
}

fn balance(sequencer: &Sequencer, wallet: WalletId) -> i128 {
    sequencer
        .query(wallet.shard(), WAIT, move |engine| {
            engine
                .wallet(wallet)
                .map(|w| w.available + w.frozen)
                .expect("wallet")
        })
        .expect("a read works")
}

fn in_flight(sequencer: &Sequencer) -> usize {
    (0..sequencer.shard_count())
        .map(|s| {
            sequencer
                .query(s, WAIT, |e| e.transfers_in_flight())
                .expect("query")
        })
        .sum()
}

#[test]
fn cross_shard_legs_wait_out_a_full_disk_and_every_acknowledged_transfer_settles() {
    let Some(volume) = SmallVolume::mount("seq-disk-full", 24) else {
        return;
    };
    let mut config = SequencerConfig::new(volume.dir.join("data"), 2);
    config.journal.segment_bytes = 1 << 20;
    config.journal.batch_bytes_max = 256 << 10;
    config.snapshots = None;
    config.disk.reserve_bytes = Some(2 << 20);
    config.disk.check_interval_ms = 20;
    let sequencer = Sequencer::start(config).expect("start");
    let funds = 1_000_000u128;
    assert!(
        applied(
            &sequencer,
            vec![client(
                "usd",
                Op::RegisterCurrency {
                    code: usd(),
                    scale: 2
                }
            )]
        )[0]
        .is_ok()
    );
    let opens = (1..=20u128)
        .map(|u| {
            client(
                &format!("open-{u}"),
                Op::OpenWallet {
                    user: UserId(u),
                    currency: usd(),
                },
            )
        })
        .collect();
    let wallets: Vec<WalletId> = applied(&sequencer, opens)
        .into_iter()
        .map(|o| match o {
            Outcome::Ok(Applied::WalletOpened(w)) => w,
            other => panic!("{other:?}"),
        })
        .collect();
    let deposits = wallets
        .iter()
        .enumerate()
        .map(|(i, w)| {
            client(
                &format!("fund-{i}"),
                Op::Deposit {
                    wallet: *w,
                    amount: funds,
                    currency: usd(),
                },
            )
        })
        .collect();
    assert!(applied(&sequencer, deposits).iter().all(Outcome::is_ok));
    let (left, right): (Vec<WalletId>, Vec<WalletId>) =
        wallets.iter().partition(|w| w.shard() == 0);
    assert!(!left.is_empty() && !right.is_empty());
    let mut model: HashMap<WalletId, i128> = wallets.iter().map(|w| (*w, funds as i128)).collect();

    // Leave about 4 MiB free (the spare segments may still be being prepared: measure as the
    // blocker grows).
    let blocker = volume.dir.join("blocker");
    std::thread::sleep(Duration::from_millis(200));
    shrink_free_space_to(&blocker, &volume.dir, 4 << 20);

    let mut next = 0u64;
    let mut round = |sequencer: &Sequencer, model: &mut HashMap<WalletId, i128>| {
        let batch: Vec<(WalletId, WalletId)> = (0..400)
            .map(|i| {
                next += 1;
                let (a, b) = (left[i % left.len()], right[(i / 2) % right.len()]);
                if next.is_multiple_of(2) {
                    (a, b)
                } else {
                    (b, a)
                }
            })
            .collect();
        let commands = batch
            .iter()
            .enumerate()
            .map(|(i, (from, to))| {
                client(
                    &format!("t-{next}-{i}"),
                    Op::Transfer {
                        from: *from,
                        to: *to,
                        amount: 1,
                        currency: usd(),
                    },
                )
            })
            .collect();
        let results = sequencer.submit_wait(commands, WAIT).expect("answered");
        let (mut ok, mut full) = (0u64, 0u64);
        for ((from, to), result) in batch.iter().zip(results) {
            match result {
                CommandResult::Outcome(Outcome::Ok(_)) => {
                    *model.get_mut(from).expect("known") -= 1;
                    *model.get_mut(to).expect("known") += 1;
                    ok += 1;
                }
                CommandResult::DiskFull => full += 1,
                other => panic!("a write failed instead of being refused: {other:?}"),
            }
        }
        (ok, full)
    };
    let started = Instant::now();
    let mut total_ok = 0;
    loop {
        let (ok, full) = round(&sequencer, &mut model);
        total_ok += ok;
        if full > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never full");
    }
    assert!(total_ok > 1_000, "{total_ok}");
    // The disk stays full a while: both shards read-only, legs of debited transfers waiting.
    fill(&blocker);
    let deadline = Instant::now() + Duration::from_secs(5);
    while (0..2).any(|s| !sequencer.stats(s).disk.full.load(Ordering::Acquire)) {
        assert!(Instant::now() < deadline, "not read-only");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(round(&sequencer, &mut model), (0, 400));
    for shard in 0..2 {
        let stats = sequencer.stats(shard);
        assert!(!stats.poisoned.load(Ordering::Acquire));
        assert_eq!(stats.disk.health().name(), "read_only");
    }
    // Room again: writes resume without a restart, and every leg settles.
    std::fs::remove_file(&blocker).expect("blocker removed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while (0..2).any(|s| sequencer.stats(s).disk.full.load(Ordering::Acquire)) {
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, full) = round(&sequencer, &mut model);
    assert_eq!((ok, full), (400, 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight(&sequencer) > 0 {
        assert!(Instant::now() < deadline, "legs did not settle");
        std::thread::sleep(Duration::from_millis(20));
    }
    for wallet in &wallets {
        assert_eq!(balance(&sequencer, *wallet), model[wallet], "{wallet:?}");
    }
    sequencer.shutdown();
}
