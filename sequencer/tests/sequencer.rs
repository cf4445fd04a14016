//! The sequencer end to end in one process: batches split over shards come back in order,
//! cross-shard transfers settle and conserve money over all shards, a full ring answers busy,
//! and a restart recovers everything that was acknowledged.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use paycore_engine::{
    Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, Reject, UserId, WalletId,
};
use paycore_sequencer::{CommandResult, Sequencer, SequencerConfig};

const WAIT: Duration = Duration::from_secs(30);

fn data_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-seq-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path, shards: u16) -> SequencerConfig {
    let mut config = SequencerConfig::new(dir.to_path_buf(), shards);
    config.journal.segment_bytes = 4 << 20;
    config.journal.batch_bytes_max = 1 << 20;
    config.snapshots = None;
    config
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

fn outcome(result: CommandResult) -> Outcome {
    match result {
        CommandResult::Outcome(outcome) => outcome,
        other => panic!("not applied: {other:?}"),
    }
}

/// Registers USD and opens + funds a wallet for each user; returns the wallets.
fn set_up(sequencer: &Sequencer, users: u128, funds: u128) -> Vec<WalletId> {
    let results = sequencer
        .submit_wait(
            vec![client(
                "register",
                Op::RegisterCurrency {
                    code: usd(),
                    scale: 2,
                },
            )],
            WAIT,
        )
        .expect("register answered");
    assert!(outcome(results[0]).is_ok());
    let opens: Vec<Command> = (1..=users)
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
    let wallets: Vec<WalletId> = sequencer
        .submit_wait(opens, WAIT)
        .expect("opens answered")
        .into_iter()
        .map(|r| match outcome(r) {
            Outcome::Ok(Applied::WalletOpened(wallet)) => wallet,
            other => panic!("open: {other:?}"),
        })
        .collect();
    let deposits: Vec<Command> = wallets
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
    for result in sequencer
        .submit_wait(deposits, WAIT)
        .expect("deposits answered")
    {
        assert!(outcome(result).is_ok());
    }
    wallets
}

/// Per-currency balance sums over all shards, and money still in flight.
fn totals(sequencer: &Sequencer) -> (i128, usize) {
    let mut sum = 0i128;
    let mut in_flight = 0;
    for shard in 0..sequencer.shard_count() {
        let (s, f) = sequencer
            .query(shard, WAIT, |engine| {
                (
                    engine.balance_sums().iter().sum::<i128>(),
                    engine.transfers_in_flight(),
                )
            })
            .expect("query answered");
        sum += s;
        in_flight += f;
    }
    (sum, in_flight)
}

#[test]
fn cross_shard_transfers_settle_and_conserve() {
    let dir = data_dir("cross");
    let sequencer = Sequencer::start(config(&dir, 3)).expect("start");
    let wallets = set_up(&sequencer, 30, 10_000);
    assert!(
        wallets
            .iter()
            .map(|w| w.shard())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    );
    // Transfers in one batch, most of them between shards, plus one to a missing wallet on
    // another shard (it bounces and is refunded).
    let mut batch: Vec<Command> = (0..300)
        .map(|i| {
            let (from, to) = (wallets[i % 30], wallets[(i * 7 + 1) % 30]);
            client(
                &format!("t-{i}"),
                Op::Transfer {
                    from,
                    to,
                    amount: 1 + (i as u128 % 50),
                    currency: usd(),
                },
            )
        })
        .collect();
    let other_shard = (wallets[0].shard() + 1) % 3;
    batch.push(client(
        "bounce",
        Op::Transfer {
            from: wallets[0],
            to: WalletId::new(other_shard, 9_999),
            amount: 5,
            currency: usd(),
        },
    ));
    let results = sequencer.submit_wait(batch, WAIT).expect("answered");
    assert_eq!(results.len(), 301);
    for (i, result) in results.iter().enumerate() {
        let outcome = outcome(*result);
        assert!(
            outcome.is_ok() || outcome == Outcome::Rejected(Reject::SameWallet),
            "{i}: {outcome:?}"
        );
    }
    // Legs settle asynchronously; wait (bounded) until nothing is in flight.
    let deadline = Instant::now() + WAIT;
    loop {
        let (sum, in_flight) = totals(&sequencer);
        assert_eq!(sum, 0, "money is conserved over all shards at every point");
        if in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "legs did not settle");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The bounced transfer was refunded: user wallets hold exactly what was deposited.
    let mut user_total = 0i128;
    for wallet in &wallets {
        let w = *wallet;
        user_total += sequencer
            .query(w.shard(), WAIT, move |engine| {
                engine.wallet(w).map_or(0, |w| w.balance())
            })
            .expect("query");
    }
    assert_eq!(user_total, 30 * 10_000);
    // A retry of the whole batch with the same keys changes nothing.
    let retry = vec![client(
        "t-0",
        Op::Transfer {
            from: wallets[0],
            to: wallets[1],
            amount: 1,
            currency: usd(),
        },
    )];
    assert_eq!(
        sequencer.submit_wait(retry, WAIT).expect("answered").len(),
        1
    );
    sequencer.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_ring_answers_busy_and_nothing_is_lost() {
    let dir = data_dir("busy");
    let mut config = config(&dir, 1);
    config.ring_requests_max = 2;
    let sequencer = Sequencer::start(config).expect("start");
    let wallets = set_up(&sequencer, 2, 1_000_000);
    // Many single-command requests at once: some must find the ring full.
    let receivers: Vec<_> = (0..2_000)
        .map(|i| {
            let op = Op::Transfer {
                from: wallets[i % 2],
                to: wallets[(i + 1) % 2],
                amount: 1,
                currency: usd(),
            };
            sequencer.submit(vec![client(&format!("b-{i}"), op)])
        })
        .collect();
    let (mut applied, mut busy) = (0, 0);
    for receiver in receivers {
        match receiver
            .recv_timeout(WAIT)
            .expect("every request is answered")[0]
        {
            CommandResult::Outcome(outcome) => {
                assert!(outcome.is_ok());
                applied += 1;
            }
            CommandResult::Busy => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(busy > 0, "the ring never filled");
    assert!(applied > 0);
    let journaled = sequencer
        .stats(0)
        .commands
        .load(std::sync::atomic::Ordering::Acquire);
    // register + 2 opens + 2 deposits + the applied transfers; busy ones were never journaled.
    assert_eq!(journaled, 5 + applied);
    sequencer.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_restart_keeps_everything_acknowledged() {
    let dir = data_dir("restart");
    let sequencer = Sequencer::start(config(&dir, 2)).expect("start");
    let wallets = set_up(&sequencer, 10, 5_000);
    let batch: Vec<Command> = (0..100)
        .map(|i| {
            let (from, to) = (wallets[i % 10], wallets[(i + 3) % 10]);
            client(
                &format!("r-{i}"),
                Op::Transfer {
                    from,
                    to,
                    amount: 7,
                    currency: usd(),
                },
            )
        })
        .collect();
    let first = sequencer
        .submit_wait(batch.clone(), WAIT)
        .expect("answered");
    // Let cross-shard legs settle before stopping (legs in flight across a restart are not
    // redelivered yet: see the crate docs).
    let deadline = Instant::now() + WAIT;
    while totals(&sequencer).1 > 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let hashes: Vec<u128> = (0..2)
        .map(|s| sequencer.query(s, WAIT, |e| e.state_hash()).expect("hash"))
        .collect();
    sequencer.shutdown();

    let sequencer = Sequencer::start(config(&dir, 2)).expect("restart");
    let again: Vec<u128> = (0..2)
        .map(|s| sequencer.query(s, WAIT, |e| e.state_hash()).expect("hash"))
        .collect();
    assert_eq!(
        again, hashes,
        "recovered state equals the state before the restart"
    );
    // The same batch again: every key is remembered, every outcome is the first one.
    let replayed = sequencer.submit_wait(batch, WAIT).expect("answered");
    assert_eq!(replayed, first);
    sequencer.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn legs_in_flight_at_a_stop_settle_after_the_restart() {
    let dir = data_dir("legs");
    let sequencer = Sequencer::start(config(&dir, 2)).expect("start");
    let wallets = set_up(&sequencer, 20, 100_000);
    // Stop right after a burst of cross-shard transfers: legs are still queued for the other
    // shard (the stop does not wait for them).
    let batch: Vec<Command> = (0..2_000)
        .map(|i| {
            let (from, to) = (wallets[i % 20], wallets[(i * 7 + 3) % 20]);
            client(
                &format!("l-{i}"),
                Op::Transfer {
                    from,
                    to,
                    amount: 1,
                    currency: usd(),
                },
            )
        })
        .collect();
    sequencer.submit_wait(batch, WAIT).expect("answered");
    sequencer.shutdown();
    // Count what the stop left in flight, offline.
    let mut stranded = 0;
    for shard in 0..2u16 {
        let engine = paycore_engine::EngineConfig {
            shard,
            shard_count: 2,
            ..Default::default()
        };
        let journal = paycore_journal::JournalConfig {
            shard,
            segment_bytes: 4 << 20,
            batch_bytes_max: 1 << 20,
            ..Default::default()
        };
        let opened =
            paycore_snapshot::open_shard(&dir, engine, journal, Default::default()).expect("open");
        stranded += opened.engine.transfers_in_flight();
    }
    // Whatever was stranded, a restart settles it: nothing in flight, money where it belongs.
    let sequencer = Sequencer::start(config(&dir, 2)).expect("restart");
    let deadline = Instant::now() + WAIT;
    loop {
        let (sum, in_flight) = totals(&sequencer);
        assert_eq!(sum, 0);
        if in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{in_flight} legs never settled after the restart"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("legs stranded by the stop and settled after the restart: {stranded}");
    sequencer.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_linked_group_the_journal_cannot_encode_is_refused_not_fatal() {
    let dir = data_dir("nested");
    let sequencer = Sequencer::start(config(&dir, 1)).expect("start");
    let wallets = set_up(&sequencer, 2, 100);
    let transfer = Op::Transfer {
        from: wallets[0],
        to: wallets[1],
        amount: 1,
        currency: usd(),
    };
    let nested = client(
        "nested",
        Op::Linked(vec![Op::Linked(vec![transfer.clone()])]),
    );
    let long = client("long", Op::Linked(vec![transfer.clone(); 65]));
    let fine = client("fine", Op::Linked(vec![transfer]));
    let results = sequencer
        .submit_wait(vec![nested, long, fine], WAIT)
        .expect("answered");
    let invalid = CommandResult::Outcome(Outcome::Rejected(Reject::LinkedGroupInvalid));
    assert_eq!(results[0], invalid);
    assert_eq!(results[1], invalid);
    assert!(
        outcome(results[2]).is_ok(),
        "the shard is still writing: {:?}",
        results[2]
    );
    sequencer.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// Shards recover in parallel (three shards on this 2-core machine: two groups), each into its
/// own place; a damaged journal in one of them refuses the start and names that shard's file.
#[test]
fn shards_recover_in_parallel_in_order_and_a_damaged_one_is_named() {
    let dir = data_dir("parallel-recovery");
    let sequencer = Sequencer::start(config(&dir, 3)).expect("start");
    set_up(&sequencer, 30, 1_000);
    let hashes: Vec<u128> = (0..3)
        .map(|s| sequencer.query(s, WAIT, |e| e.state_hash()).expect("hash"))
        .collect();
    sequencer.shutdown();

    let sequencer = Sequencer::start(config(&dir, 3)).expect("restart");
    let again: Vec<u128> = (0..3)
        .map(|s| sequencer.query(s, WAIT, |e| e.state_hash()).expect("hash"))
        .collect();
    assert_eq!(again, hashes, "every shard recovered into its own place");
    sequencer.shutdown();

    // Flip one bit inside the first record of shard 2's journal (not its tail): corruption.
    let journal = dir.join("shard-002").join("journal");
    let segment = std::fs::read_dir(&journal)
        .expect("journal folder")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "wal"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes[64 + 8] ^= 1;
    std::fs::write(&segment, bytes).expect("damaged");
    let error = match Sequencer::start(config(&dir, 3)) {
        Ok(_) => panic!("a damaged journal must refuse the start"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("shard-002"),
        "names the shard's file: {error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
