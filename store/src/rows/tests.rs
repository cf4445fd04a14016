//! The postings the flusher writes reproduce the engine exactly: over random multi-shard
//! command streams (cross-shard legs, bounces and refunds, holds and expiry, captures,
//! withdrawals, exchanges, linked groups, retries), for every wallet of every shard
//! `sum(entries.delta) == engine balance`, every movement's postings on its shard sum to zero,
//! and the wallet rows equal the engine's wallets.

use std::collections::HashMap;

use paycore_engine::{Effects, Engine};

use super::*;
use crate::workload::{Record, Workload, WorkloadConfig};

/// Feeds `records` through shadow engines and `BatchRows` the way the flusher does, in batches
/// of `batch` records per shard; returns the shadows and every batch's rows.
fn flush_all(
    config: &WorkloadConfig,
    records: &[Record],
    batch: usize,
) -> (Vec<Engine>, Vec<BatchRows>) {
    let mut shadows: Vec<Engine> = (0..config.shards)
        .map(|s| Engine::new(Workload::engine_config(config, s)))
        .collect();
    let mut open: Vec<BatchRows> = (0..config.shards).map(BatchRows::new).collect();
    let mut done = Vec::new();
    let mut effects = Effects::default();
    for record in records {
        let s = usize::from(record.shard);
        effects.clear();
        let known = key_known(&shadows[s], &record.command);
        let outcome = shadows[s].apply(
            record.sequence,
            record.timestamp_ns,
            &record.command,
            &mut effects,
        );
        open[s].record(
            &shadows[s],
            record.sequence,
            &record.command,
            &outcome,
            &effects.events,
            known,
        );
        if open[s].records() as usize >= batch {
            open[s].finish(&shadows[s]);
            let full = std::mem::replace(&mut open[s], BatchRows::new(record.shard));
            done.push(full);
        }
    }
    for (s, mut rows) in open.into_iter().enumerate() {
        rows.finish(&shadows[s]);
        done.push(rows);
    }
    (shadows, done)
}

/// Returns the movement kinds and statuses seen, so a test can show its stream covers them.
fn check(seed: u64, shards: u16, count: usize, batch: usize) -> std::collections::BTreeSet<String> {
    let config = WorkloadConfig {
        shards,
        seed,
        users: 12,
        start_ns: 1_767_225_000_000_000_000,
        step_ns: 7_000_000,
        transfers_only: false,
        legs_in_flight_max: None,
    };
    let mut workload = Workload::new(config);
    let mut records = Vec::new();
    workload.generate(count, &mut records);
    if seed.is_multiple_of(2) {
        workload.drain_legs(&mut records);
    }
    let (shadows, batches) = flush_all(&config, &records, batch);

    // The shadows are the primaries (determinism).
    for (shadow, primary) in shadows.iter().zip(&workload.engines) {
        assert_eq!(shadow.state_hash(), primary.state_hash());
    }
    // Latest wallet row per id, summed entries per wallet, postings per movement.
    let mut stored: HashMap<u64, WalletRow> = HashMap::new();
    let mut sums: HashMap<u64, i128> = HashMap::new();
    let mut per_movement: HashMap<(u128, u16), (i128, i128)> = HashMap::new();
    let mut movements: HashMap<(u128, u16), u128> = HashMap::new();
    for rows in &batches {
        for wallet in &rows.wallets {
            // The writer appends opened wallets and updates the others: a wallet is `opened`
            // exactly in the first batch that has it.
            assert_eq!(
                wallet.opened,
                !stored.contains_key(&wallet.id),
                "wallet {} opened flag",
                wallet.id
            );
            stored.insert(wallet.id, wallet.clone());
        }
        for entry in &rows.entries {
            *sums.entry(entry.wallet).or_default() += entry.delta;
            let m = per_movement
                .entry((entry.transaction, entry.shard))
                .or_default();
            m.0 += entry.delta;
            m.1 += entry.delta.max(0);
        }
        for t in &rows.transactions {
            assert!(
                movements.insert((t.id, t.shard), t.amount).is_none(),
                "one row per movement"
            );
        }
    }
    let mut wallets = 0;
    for engine in &workload.engines {
        for (id, wallet) in engine.wallets() {
            wallets += 1;
            let row = stored
                .get(&id.0)
                .unwrap_or_else(|| panic!("wallet {id} never stored"));
            assert_eq!(row.available, wallet.available, "wallet {id}");
            assert_eq!(row.frozen, wallet.frozen, "wallet {id}");
            assert_eq!(row.version, wallet.version, "wallet {id}");
            assert_eq!(
                sums.get(&id.0).copied().unwrap_or(0),
                wallet.balance(),
                "entries of wallet {id} (kind {})",
                row.kind
            );
        }
    }
    assert_eq!(wallets, stored.len());
    for (key, (net, positive)) in &per_movement {
        assert_eq!(*net, 0, "postings of movement {key:?} sum to zero");
        assert_eq!(
            Some(&(*positive as u128)),
            movements.get(key),
            "movement {key:?}"
        );
    }
    assert_eq!(per_movement.len(), movements.len());
    batches
        .iter()
        .flat_map(|rows| {
            rows.transactions
                .iter()
                .map(|t| format!("{}/{}", t.kind, t.status))
        })
        .chain(
            batches
                .iter()
                .flat_map(|rows| rows.status_updates.iter().map(|u| u.status.to_string())),
        )
        .collect()
}

#[test]
fn entries_match_engine_single_shard() {
    check(1, 1, 3_000, 97);
}

#[test]
fn entries_match_engine_cross_shard() {
    let seen = check(2, 3, 6_000, 64);
    for kind in [
        "deposit/completed",
        "transfer/completed",
        "transfer/pending",
        "capture/completed",
        "withdrawal/completed",
        "exchange_out/completed",
        "exchange_in/completed",
        "refund/completed",
        "bounced",
    ] {
        assert!(seen.contains(kind), "the stream covers {kind}: {seen:?}");
    }
    check(3, 2, 4_000, 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn entries_match_engine(seed in proptest::num::u64::ANY, shards in 1u16..4, batch in 1usize..300) {
        check(seed, shards, 1_500, batch);
    }
}

#[test]
fn outcome_texts_are_stable() {
    use paycore_engine::{Applied, Outcome, Reject, TransferId};
    assert_eq!(outcome_text(&Outcome::Ok(Applied::Done)), "ok");
    assert_eq!(
        outcome_text(&Outcome::Rejected(Reject::InsufficientFunds)),
        "rejected:insufficient_funds"
    );
    let t = Outcome::Ok(Applied::Transferred {
        transfer: TransferId(5),
        pending: true,
    });
    assert_eq!(outcome_text(&t), "transferred_pending");
    assert_eq!(outcome_transaction(&t), Some(5));
}
