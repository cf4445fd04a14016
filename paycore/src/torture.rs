//! `paycore torture`: a shard under load for crash tests (hidden from `--help`).
//!
//! Recovers the shard in `--data-dir` (snapshot + journal), then journals and applies a
//! deterministic stream of commands in batches, with a snapshotter thread and journal retention
//! running, until it is killed. Command `n` depends only on `--seed` and `n`, so a test can
//! regenerate exactly what was acknowledged. After each group commit it prints
//! `ACK <last sequence> <state hash>`; at start `RECOVERED <last sequence> <state hash>`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use paycore_engine::codec::encode_command;
use paycore_engine::{
    Command, CurrencyCode, Effects, EngineConfig, HoldId, IdempotencyKey, Op, UserId, WalletId,
};
use paycore_journal::{JournalConfig, MmapStorage, RecoveryOptions};
use paycore_snapshot::{Replica, SnapshotPolicy, Snapshotter, open_shard};

#[derive(Debug, clap::Args)]
pub struct TortureArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// User wallets the stream opens and funds before the transfer mix.
    #[arg(long, default_value_t = 200)]
    pub wallets: u64,
    /// Commands per group commit.
    #[arg(long, default_value_t = 64)]
    pub batch: u64,
    /// Snapshot after this many records.
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_every: u64,
    /// Stop after this sequence number (the test kills it long before).
    #[arg(long, default_value_t = 10_000_000)]
    pub until: u64,
    /// Segment size in KiB (small, so that segments roll and retire often).
    #[arg(long, default_value_t = 1024)]
    pub segment_kib: u64,
}

/// splitmix64: a tiny, fixed pseudo-random function of (seed, n).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Slot of the first user wallet: one currency registers four system wallets first.
const FIRST_USER_SLOT: u64 = 4;

/// The command with sequence `n` of the stream (`seed`, `wallets`).
pub fn command_for(seed: u64, wallets: u64, n: u64) -> Command {
    let usd = CurrencyCode::parse("USD").expect("valid code");
    let key = |n: u64| IdempotencyKey::new(format!("torture-{n}").as_bytes()).expect("short key");
    let wallet = |i: u64| WalletId::new(0, FIRST_USER_SLOT + i % wallets);
    if n == 1 {
        return Command::Client {
            key: key(1),
            op: Op::RegisterCurrency {
                code: usd,
                scale: 2,
            },
        };
    }
    if n <= 1 + wallets {
        let op = Op::OpenWallet {
            user: UserId(u128::from(n)),
            currency: usd,
        };
        return Command::Client { key: key(n), op };
    }
    if n <= 1 + 2 * wallets {
        let op = Op::Deposit {
            wallet: wallet(n - 2 - wallets),
            amount: 1_000_000,
            currency: usd,
        };
        return Command::Client { key: key(n), op };
    }
    let r = mix(seed, n);
    let (a, b) = (wallet(r >> 8), wallet(r >> 24));
    let amount = u128::from(1 + (r >> 40) % 5_000);
    let op = match r % 100 {
        // A retry of an earlier command: same key, same operation.
        0..=4 if n > 3 + 2 * wallets => return command_for(seed, wallets, n - 3),
        5..=14 => Op::Hold {
            wallet: a,
            amount,
            currency: usd,
            expires_at_ns: None,
        },
        15..=19 => Op::Capture {
            hold: HoldId::new(0, 1 + (r >> 12) % n.max(1)),
            amount: None,
            to: Some(b),
        },
        20..=24 => Op::Release {
            hold: HoldId::new(0, 1 + (r >> 12) % n.max(1)),
        },
        25..=29 => Op::Linked(vec![
            Op::Transfer {
                from: a,
                to: b,
                amount,
                currency: usd,
            },
            Op::Transfer {
                from: a,
                to: wallet(r >> 48),
                amount: amount / 10 + 1,
                currency: usd,
            },
        ]),
        _ => Op::Transfer {
            from: a,
            to: b,
            amount,
            currency: usd,
        },
    };
    Command::Client { key: key(n), op }
}

/// Timestamp of command `n` in the torture stream: the wall clock, never going back.
fn clock(previous: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now.max(previous + 1)
}

pub fn run(args: TortureArgs) -> Result<(), String> {
    let engine_config = EngineConfig::default();
    let journal_config = JournalConfig {
        segment_bytes: args.segment_kib * 1024,
        batch_bytes_max: 256 * 1024,
        ..JournalConfig::default()
    };
    let mut shard = open_shard(
        &args.data_dir,
        engine_config,
        journal_config,
        RecoveryOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock<'_>, text: String| {
        // The test reads these lines; a closed pipe just means nobody listens any more.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    line(
        &mut stdout,
        format!(
            "RECOVERED {} {:032x}",
            shard.engine.last_sequence(),
            shard.engine.state_hash()
        ),
    );

    let storage = MmapStorage::open_dir(&shard.paths.journal).map_err(|e| e.to_string())?;
    let replica = Replica::new(
        shard.engine.clone(),
        storage,
        shard.journal.watermark(),
        shard.paths.snapshots.clone(),
    );
    let policy = SnapshotPolicy {
        every_records: args.snapshot_every,
        every_ms: 500,
        keep: 2,
        nice: SnapshotPolicy::default().nice,
    };
    let snapshotter = Snapshotter::spawn(replica, policy);

    let mut effects = Effects::default();
    let mut payload = Vec::with_capacity(1024);
    let mut batch = Vec::with_capacity(args.batch as usize);
    let mut timestamp = shard.engine.last_timestamp_ns();
    let mut next = shard.engine.last_sequence() + 1;
    while next <= args.until {
        batch.clear();
        for sequence in next..next + args.batch {
            let command = command_for(args.seed, args.wallets, sequence);
            timestamp = clock(timestamp);
            payload.clear();
            encode_command(&command, &mut payload);
            shard
                .journal
                .append(sequence, timestamp, &payload)
                .map_err(|e| e.to_string())?;
            batch.push((sequence, timestamp, command));
        }
        shard.journal.commit().map_err(|e| e.to_string())?;
        for (sequence, timestamp, command) in &batch {
            shard
                .engine
                .apply(*sequence, *timestamp, command, &mut effects);
        }
        effects.clear();
        next += args.batch;
        line(
            &mut stdout,
            format!("ACK {} {:032x}", next - 1, shard.engine.state_hash()),
        );
        let snapshot = snapshotter
            .latest
            .load(std::sync::atomic::Ordering::Acquire);
        if snapshot > 0 {
            shard
                .journal
                .retire_through(snapshot, true)
                .map_err(|e| e.to_string())?;
        }
    }
    snapshotter.stop().map_err(|e| e.to_string())
}
