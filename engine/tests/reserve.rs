//! Reserving room up front (`idempotency_entries_reserve`, `wallets_reserve`) changes no
//! outcome and no state hash: the same commands give the same results with and without it,
//! across growth, eviction and a full table.

use paycore_engine::{
    Command, CurrencyCode, Effects, Engine, EngineConfig, IdempotencyKey, Op, UserId, WalletId,
};

fn run(config: EngineConfig) -> (Vec<String>, u128) {
    let mut engine = Engine::new(config);
    let mut effects = Effects::default();
    let usd = CurrencyCode::parse("USD").expect("code");
    let mut outcomes = Vec::new();
    let mut sequence = 0u64;
    let mut apply = |engine: &mut Engine, key: String, op: Op| {
        sequence += 1;
        let command = Command::Client {
            key: IdempotencyKey::new(key.as_bytes()).expect("key"),
            op,
        };
        let outcome = engine.apply(sequence, sequence * 1_000, &command, &mut effects);
        effects.clear();
        format!("{outcome:?}")
    };
    outcomes.push(apply(
        &mut engine,
        "usd".into(),
        Op::RegisterCurrency {
            code: usd,
            scale: 2,
        },
    ));
    let mut wallets = Vec::new();
    for user in 0..300u128 {
        let text = apply(
            &mut engine,
            format!("open-{user}"),
            Op::OpenWallet {
                user: UserId(user + 1),
                currency: usd,
            },
        );
        outcomes.push(text);
        wallets.push(WalletId::new(0, 4 + user as u64));
    }
    for (i, wallet) in wallets.iter().enumerate() {
        outcomes.push(apply(
            &mut engine,
            format!("fund-{i}"),
            Op::Deposit {
                wallet: *wallet,
                amount: 10_000,
                currency: usd,
            },
        ));
    }
    for n in 0..5_000u64 {
        let (a, b) = (
            wallets[(n * 7 % 300) as usize],
            wallets[((n * 13 + 1) % 300) as usize],
        );
        // Every fifth command retries an earlier key: replayed from the table, or forgotten.
        let key = if n % 5 == 4 {
            format!("t-{}", n / 2)
        } else {
            format!("t-{n}")
        };
        outcomes.push(apply(
            &mut engine,
            key,
            Op::Transfer {
                from: a,
                to: b,
                amount: u128::from(1 + n % 50),
                currency: usd,
            },
        ));
    }
    (outcomes, engine.state_hash())
}

#[test]
fn reserving_room_changes_nothing_observable() {
    let base = EngineConfig {
        idempotency_entries_max: 2_000,
        ..EngineConfig::default()
    };
    let plain = run(base.clone());
    for (entries, wallets) in [(1, 1), (100, 10), (2_000, 1_000), (1 << 20, 1 << 16)] {
        let reserved = run(EngineConfig {
            idempotency_entries_reserve: entries,
            wallets_reserve: wallets,
            ..base.clone()
        });
        assert_eq!(
            reserved.0, plain.0,
            "outcomes with reserve {entries}/{wallets}"
        );
        assert_eq!(
            reserved.1, plain.1,
            "state hash with reserve {entries}/{wallets}"
        );
    }
}

/// A clone given its reserve afterwards (the snapshot replica's case) stays equal.
#[test]
fn reserving_on_a_clone_changes_nothing_observable() {
    let config = EngineConfig {
        idempotency_entries_max: 2_000,
        idempotency_entries_reserve: 1 << 16,
        wallets_reserve: 1 << 12,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let mut effects = Effects::default();
    let usd = CurrencyCode::parse("USD").expect("code");
    let command = |key: &str, op: Op| Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    };
    engine.apply(
        1,
        1,
        &command(
            "usd",
            Op::RegisterCurrency {
                code: usd,
                scale: 2,
            },
        ),
        &mut effects,
    );
    for user in 0..50u64 {
        let open = command(
            &format!("open-{user}"),
            Op::OpenWallet {
                user: UserId(u128::from(user) + 1),
                currency: usd,
            },
        );
        engine.apply(2 + user, 2 + user, &open, &mut effects);
    }
    let mut clone = engine.clone();
    clone.reserve_as_configured();
    assert_eq!(clone.state_hash(), engine.state_hash());
    for (sequence, key) in [(100u64, "open-7"), (101, "again")] {
        let open = command(
            key,
            Op::OpenWallet {
                user: UserId(9_999),
                currency: usd,
            },
        );
        let a = engine.apply(sequence, sequence, &open, &mut effects);
        let b = clone.apply(sequence, sequence, &open, &mut effects);
        assert_eq!(a, b);
    }
    assert_eq!(clone.state_hash(), engine.state_hash());
}
