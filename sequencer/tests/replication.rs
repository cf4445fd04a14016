//! Replication through the sequencer in one process: a standby sequencer fed with the
//! primary's journal records (as the node's replication stream does over QUIC), the sync
//! gate holding replies until the standby acknowledges, and a promotion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use paycore_engine::{Command, CurrencyCode, IdempotencyKey, Op, Outcome, UserId, WalletId};
use paycore_journal::format::{record_bytes, write_record};
use paycore_journal::{JournalReader, MmapStorage};
use paycore_sequencer::{CommandResult, ReplicationMode, Sequencer, SequencerConfig};

const WAIT: Duration = Duration::from_secs(30);

fn data_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-repl-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path, mode: ReplicationMode, standby: bool) -> SequencerConfig {
    let mut config = SequencerConfig::new(dir.to_path_buf(), 2);
    config.journal.segment_bytes = 4 << 20;
    config.journal.batch_bytes_max = 1 << 20;
    config.snapshots = None;
    config.replication = mode;
    config.standby = standby;
    config
}

fn client(key: &str, op: Op) -> Command {
    Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    }
}

fn usd() -> CurrencyCode {
    CurrencyCode::parse("USD").expect("code")
}

/// Copies each shard's durable records from `primary` to `standby` and acknowledges them,
/// until `stop`; `paused` holds the copying (a cut link).
fn pump(
    primary: Arc<Sequencer>,
    standby: Arc<Sequencer>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut readers: Vec<_> = (0..primary.shard_count())
            .map(|shard| {
                let storage = MmapStorage::open_dir(primary.journal_dir(shard)).expect("dir");
                let from = standby.stats(shard).last_sequence.load(Ordering::Acquire) + 1;
                primary.gate(shard).set_connected(true);
                JournalReader::new(
                    storage,
                    from,
                    Some(primary.durable_watermark(shard).clone()),
                )
            })
            .collect();
        while !stop.load(Ordering::Acquire) {
            if paused.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for (shard, reader) in readers.iter_mut().enumerate() {
                let shard = shard as u16;
                let mut bytes = Vec::new();
                reader
                    .read(1000, |r| {
                        let at = bytes.len();
                        bytes.resize(at + record_bytes(r.payload.len()), 0);
                        write_record(
                            &mut bytes[at..],
                            r.sequence,
                            r.epoch,
                            r.timestamp_ns,
                            r.payload,
                        );
                    })
                    .expect("read");
                if bytes.is_empty() {
                    continue;
                }
                let durable = standby
                    .replicate(shard, bytes, WAIT)
                    .recv_timeout(WAIT)
                    .expect("answered")
                    .expect("replicated");
                primary.gate(shard).acknowledge(durable);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

fn hashes(sequencer: &Sequencer) -> Vec<(u64, u128)> {
    (0..sequencer.shard_count())
        .map(|s| {
            sequencer
                .query(s, WAIT, |e| (e.last_sequence(), e.state_hash()))
                .expect("hash")
        })
        .collect()
}

#[test]
fn sync_replies_wait_for_the_standby_and_a_promoted_standby_takes_over() {
    let (primary_dir, standby_dir) = (data_dir("primary"), data_dir("standby"));
    let primary = Arc::new(
        Sequencer::start(config(&primary_dir, ReplicationMode::Sync, false)).expect("primary"),
    );
    let standby = Arc::new(
        Sequencer::start(config(
            &standby_dir,
            ReplicationMode::Async {
                max_lag_records: 1000,
                alone_after_ms: 100,
            },
            true,
        ))
        .expect("standby"),
    );
    assert!(!standby.is_primary());
    // A standby refuses client writes.
    let refused = standby
        .submit_wait(
            vec![client(
                "x",
                Op::RegisterCurrency {
                    code: usd(),
                    scale: 2,
                },
            )],
            WAIT,
        )
        .expect("answered");
    assert_eq!(refused, vec![CommandResult::ShardUnavailable]);

    // No standby connected: a sync primary does not answer.
    let waiting = primary.submit(vec![client(
        "register",
        Op::RegisterCurrency {
            code: usd(),
            scale: 2,
        },
    )]);
    assert!(
        waiting.recv_timeout(Duration::from_millis(300)).is_err(),
        "replied without a standby"
    );

    let (stop, paused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let pumping = pump(
        primary.clone(),
        standby.clone(),
        stop.clone(),
        paused.clone(),
    );
    let registered = waiting
        .recv_timeout(WAIT)
        .expect("replied once the standby has it");
    assert!(matches!(
        registered[0],
        CommandResult::Outcome(Outcome::Ok(_))
    ));

    let mut wallets = Vec::new();
    for user in 1..=20u128 {
        let results = primary
            .submit_wait(
                vec![client(
                    &format!("open-{user}"),
                    Op::OpenWallet {
                        user: UserId(user),
                        currency: usd(),
                    },
                )],
                WAIT,
            )
            .expect("open answered");
        let CommandResult::Outcome(Outcome::Ok(paycore_engine::Applied::WalletOpened(wallet))) =
            results[0]
        else {
            panic!("open: {results:?}")
        };
        wallets.push(wallet);
    }
    let deposits: Vec<Command> = wallets
        .iter()
        .enumerate()
        .map(|(i, w)| {
            client(
                &format!("dep-{i}"),
                Op::Deposit {
                    wallet: *w,
                    amount: 10_000,
                    currency: usd(),
                },
            )
        })
        .collect();
    primary.submit_wait(deposits, WAIT).expect("deposits");
    // Cross-shard transfers: legs travel only once the standby holds the debit.
    let transfers = |from: usize, label: &str| -> Vec<Command> {
        (0..40)
            .map(|i| {
                let (a, b): (WalletId, WalletId) =
                    (wallets[(from + i) % 20], wallets[(from + i * 7 + 3) % 20]);
                client(
                    &format!("{label}-{i}"),
                    Op::Transfer {
                        from: a,
                        to: b,
                        amount: 10 + i as u128,
                        currency: usd(),
                    },
                )
            })
            .collect()
    };
    primary
        .submit_wait(transfers(0, "t1"), WAIT)
        .expect("transfers");

    // A cut link: replies wait, then flow when it is back.
    paused.store(true, Ordering::Release);
    let held = primary.submit(transfers(5, "t2"));
    assert!(
        held.recv_timeout(Duration::from_millis(300)).is_err(),
        "replied while the link was cut"
    );
    for shard in 0..2 {
        let gate = primary.gate(shard);
        let last = primary.stats(shard).last_sequence.load(Ordering::Acquire);
        let flushable = gate.flushable().load(Ordering::Acquire);
        assert!(
            flushable <= gate.standby_durable() && flushable <= gate.released(),
            "the store may only get what the standby holds"
        );
        assert!(flushable < last, "the held batch is not flushable");
    }
    paused.store(false, Ordering::Release);
    held.recv_timeout(WAIT)
        .expect("replied after the link came back");

    // Settle in-flight legs, then compare the two copies.
    std::thread::sleep(Duration::from_millis(300));
    let primary_state = hashes(&primary);
    let deadline = std::time::Instant::now() + WAIT;
    while hashes(&standby) != primary_state {
        assert!(
            std::time::Instant::now() < deadline,
            "standby never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    pumping.join().expect("pump");
    for (shard, (last, _)) in primary_state.iter().enumerate() {
        let flushable = primary
            .gate(shard as u16)
            .flushable()
            .load(Ordering::Acquire);
        assert_eq!(
            flushable, *last,
            "everything held by the standby is flushable"
        );
    }

    // Promote: writes are taken, with the new epoch, and money is conserved.
    let last = standby.promote(2, WAIT).expect("promoted");
    assert_eq!(
        last,
        primary_state.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    assert!(standby.is_primary());
    let after = standby
        .submit_wait(transfers(9, "t3"), WAIT)
        .expect("writes after promotion");
    assert!(after.iter().all(|r| matches!(r, CommandResult::Outcome(_))));
    // Retried keys from before the failover are answered from the idempotency table.
    let retried = standby
        .submit_wait(transfers(0, "t1"), WAIT)
        .expect("retries");
    assert!(
        retried
            .iter()
            .all(|r| matches!(r, CommandResult::Outcome(_)))
    );
    std::thread::sleep(Duration::from_millis(300));
    let sums: i128 = (0..2)
        .map(|s| {
            standby
                .query(s, WAIT, |e| e.balance_sums().iter().sum::<i128>())
                .expect("sums")
        })
        .sum();
    assert_eq!(sums, 0, "money conserved across shards");
    let storage = MmapStorage::open_dir(standby.journal_dir(0)).expect("dir");
    let last_epoch = paycore_journal::last_record(&storage, 0)
        .expect("scan")
        .map(|(_, e)| e);
    assert_eq!(
        last_epoch,
        Some(2),
        "records after promotion carry the new epoch"
    );

    for sequencer in [primary, standby] {
        Arc::try_unwrap(sequencer).expect("sole owner").shutdown();
    }
    let _ = std::fs::remove_dir_all(primary_dir);
    let _ = std::fs::remove_dir_all(standby_dir);
}

/// Acknowledges, on every shard, everything the primary has made durable (a standby that
/// holds it all), until `receiver` yields.
fn release_until<T>(primary: &Sequencer, receiver: &crossbeam_channel::Receiver<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for shard in 0..primary.shard_count() {
            let durable = primary.durable_watermark(shard).load(Ordering::Acquire);
            primary.gate(shard).acknowledge(durable);
        }
        if let Ok(value) = receiver.recv_timeout(Duration::from_millis(5)) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "never released");
    }
}

/// A wallet's available balance as a client reads it (`read_with`): `None` when no answer
/// came within `wait`.
fn read_balance(primary: &Sequencer, wallet: WalletId, wait: Duration) -> Option<i128> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    primary
        .read_with(
            wallet.shard(),
            move |view| {
                let found = view.engine().wallet(wallet).expect("wallet");
                view.saw(found.updated_at_ns);
                found.available
            },
            move |available| {
                let _ = sender.send(available);
            },
        )
        .expect("read taken");
    receiver.recv_timeout(wait).ok()
}

/// A sync primary whose standby is away (issue 14, items 2 and 3): writes wait, reads keep
/// flowing. A query once queued a release in the writer like a group commit; ~4,096 of them
/// filled the release queue behind the unacknowledged write and every later query hung. Now
/// queries never queue a release, a full release queue refuses writes as busy instead of
/// blocking the writer, a client's read of a wallet the waiting write changed waits for its
/// release (a client never reads money a failover can erase), and a read of any other wallet
/// is answered at once.
#[test]
fn reads_flow_and_show_only_released_state_while_writes_wait_for_the_standby() {
    let dir = data_dir("reads-flow");
    let mut config = config(&dir, ReplicationMode::Sync, false);
    // Thousands of group commits below: the page cache is enough for this test.
    config.journal.durability = paycore_journal::Durability::None;
    let primary = Sequencer::start(config).expect("primary");
    let register = primary.submit(vec![client(
        "register",
        Op::RegisterCurrency {
            code: usd(),
            scale: 2,
        },
    )]);
    release_until(&primary, &register);
    // Wallets on shard 0 only.
    let mut wallets = Vec::new();
    for user in 1..=40u128 {
        let opened = primary.submit(vec![client(
            &format!("open-{user}"),
            Op::OpenWallet {
                user: UserId(user),
                currency: usd(),
            },
        )]);
        let results = release_until(&primary, &opened);
        let CommandResult::Outcome(Outcome::Ok(paycore_engine::Applied::WalletOpened(wallet))) =
            results[0]
        else {
            panic!("open: {results:?}")
        };
        if wallet.shard() == 0 {
            wallets.push(wallet);
        }
    }
    let (a, b, c) = (wallets[0], wallets[1], wallets[2]);
    let funded = primary.submit(vec![client(
        "fund",
        Op::Deposit {
            wallet: a,
            amount: 1_000,
            currency: usd(),
        },
    )]);
    release_until(&primary, &funded);
    assert_eq!(read_balance(&primary, a, WAIT), Some(1_000));

    // The standby is away from here on: one write waits for it.
    let waiting = primary.submit(vec![client(
        "t-1",
        Op::Transfer {
            from: a,
            to: b,
            amount: 300,
            currency: usd(),
        },
    )]);
    assert!(waiting.recv_timeout(Duration::from_millis(200)).is_err());

    // Far more queries than the release queue holds: every one is answered.
    for n in 0..10_000u32 {
        let last = primary.query(0, Duration::from_secs(5), |engine| engine.last_sequence());
        assert!(last.is_some(), "query {n} hung behind the waiting write");
    }
    // A client's read of a wallet the waiting write touched waits for its release; a read
    // of an untouched wallet is answered at once.
    assert_eq!(read_balance(&primary, c, WAIT), Some(0));
    let (sender, parked) = crossbeam_channel::bounded(1);
    primary
        .read_with(
            a.shard(),
            move |view| {
                let found = view.engine().wallet(a).expect("wallet");
                view.saw(found.updated_at_ns);
                found.available
            },
            move |available| {
                let _ = sender.send(available);
            },
        )
        .expect("read taken");
    assert!(
        parked.recv_timeout(Duration::from_millis(300)).is_err(),
        "a read showed a transfer the standby does not hold"
    );
    assert_eq!(primary.gate(0).parked_reads(), 1);

    // Writes beyond the release queue's room are refused as busy, at once; reads go on.
    let mut n = 0u32;
    while !primary.stats(0).writes_held.load(Ordering::Acquire) {
        assert!(n < 20_000, "the release queue never filled");
        let _ = primary.submit_wait(
            vec![client(
                &format!("more-{n}"),
                Op::Deposit {
                    wallet: c,
                    amount: 1,
                    currency: usd(),
                },
            )],
            Duration::from_millis(1),
        );
        n += 1;
    }
    let refused = primary
        .submit_wait(
            vec![client(
                "over",
                Op::Deposit {
                    wallet: c,
                    amount: 1,
                    currency: usd(),
                },
            )],
            WAIT,
        )
        .expect("answered at once, not held");
    assert_eq!(refused, vec![CommandResult::Busy]);
    assert!(
        primary
            .query(0, Duration::from_secs(5), |e| e.last_sequence())
            .is_some()
    );
    let untouched = wallets[3];
    assert_eq!(
        read_balance(&primary, untouched, Duration::from_secs(5)),
        Some(0),
        "a wallet no waiting write touched is read at once"
    );

    // The standby returns: the write and the waiting read are released together.
    let results = release_until(&primary, &waiting);
    assert!(matches!(results[0], CommandResult::Outcome(Outcome::Ok(_))));
    assert_eq!(parked.recv_timeout(WAIT).ok(), Some(700));
    assert_eq!(read_balance(&primary, a, WAIT), Some(700));

    // Fenced (a newer primary exists): no reads, no writes.
    primary.fence();
    assert!(primary.is_fenced());
    assert_eq!(
        primary.read_with(0, |_| (), |_| ()),
        Err(CommandResult::ShardUnavailable)
    );
    let refused = primary
        .submit_wait(
            vec![client(
                "late",
                Op::Deposit {
                    wallet: c,
                    amount: 1,
                    currency: usd(),
                },
            )],
            WAIT,
        )
        .expect("answered");
    assert_eq!(refused, vec![CommandResult::ShardUnavailable]);
    primary.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
