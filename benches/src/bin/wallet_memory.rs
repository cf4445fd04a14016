//! Bytes per wallet, measured as resident set size (VmRSS of /proc/self/status).
//!
//! `cargo run --release -p paycore-benches --bin wallet_memory -- --wallets 10000000`
//!
//! Without `--mode`, runs itself twice, each time in a fresh child process (so one measurement
//! cannot inherit the other's heap):
//!
//! - `--mode retained`: the command clock advances 1 µs per command, so all 2 N idempotency
//!   entries (N `OpenWallet` + N `Deposit`) are still inside their 24 h window when RSS is
//!   read: figure (a). It then applies a `Tick` 24 h later and one client command (eviction runs
//!   at the start of each client command) and reads RSS again, to show how much of the
//!   idempotency table's memory goes back to the operating system once the entries age out.
//!   2 N entries do not fit the default `idempotency_entries_max` (16 Mi) from N = 8 Mi on (the
//!   engine would forget the oldest early), so this mode raises it to 2 N + 16 (a limit only:
//!   nothing is preallocated for it).
//! - `--mode windowed`: the command clock advances `24 h / window-keys` per command, so the
//!   window evicts as it goes and never holds more than ~`window-keys` (default 65 536) entries:
//!   figure (b), the wallets' own cost (plus those few live entries, stated).
//!
//! RSS is read after the engine is built and a currency registered, and again after the N
//! wallets are opened and funded; the difference divided by N is bytes per wallet. Commands are
//! built one at a time and dropped, so they add nothing to the figure.

use paycore_benches::{CURRENCY_SCALE, currency, peak_rss_bytes, rss_bytes, user_id};
use paycore_engine::{
    Applied, Command, DAY_NS, Effects, Engine, EngineConfig, IdempotencyKey, Op, Outcome, WalletId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Retained,
    Windowed,
}

struct Sequencer {
    engine: Engine,
    effects: Effects,
    sequence: u64,
    timestamp_ns: u64,
    step_ns: u64,
    keys: u64,
}

impl Sequencer {
    fn client(&mut self, op: Op) -> Outcome {
        self.keys += 1;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.keys.to_le_bytes());
        bytes[8..].copy_from_slice(b"pcmemory");
        let key = IdempotencyKey::new(&bytes).expect("16-byte key is valid");
        self.apply(&Command::Client { key, op })
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        self.sequence += 1;
        self.timestamp_ns += self.step_ns;
        let outcome =
            self.engine
                .apply(self.sequence, self.timestamp_ns, command, &mut self.effects);
        self.effects.clear();
        outcome
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// hashbrown's bucket count for `items` grown one insert at a time: the smallest power of two
/// (at least 4) whose capacity (7/8 of the buckets from 8 buckets on) holds them.
fn hashbrown_buckets(items: usize) -> usize {
    let mut buckets = 4usize;
    loop {
        let capacity = if buckets < 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        };
        if capacity >= items {
            return buckets;
        }
        buckets *= 2;
    }
}

fn measure(mode: Mode, wallets: usize, window_keys: u64) {
    let step_ns = match mode {
        Mode::Retained => 1_000,
        Mode::Windowed => DAY_NS / window_keys,
    };
    let config = match mode {
        // 2 N live entries exceed the default capacity (16 Mi) from N = 8 388 608 on, and a full
        // table forgets its oldest entries early: raise it. The capacity is a limit only;
        // nothing is allocated up front for it.
        Mode::Retained => EngineConfig {
            idempotency_entries_max: EngineConfig::default()
                .idempotency_entries_max
                .max(2 * wallets + 16),
            ..EngineConfig::default()
        },
        Mode::Windowed => EngineConfig::default(),
    };
    let mut seq = Sequencer {
        engine: Engine::new(config),
        effects: Effects::default(),
        sequence: 0,
        timestamp_ns: 1_700_000_000_000_000_000,
        step_ns,
        keys: 0,
    };
    let code = currency();
    let registered = seq.client(Op::RegisterCurrency {
        code,
        scale: CURRENCY_SCALE,
    });
    assert!(registered.is_ok(), "register: {registered:?}");
    let before = rss_bytes();
    let start = std::time::Instant::now();
    let mut first_slot = None;
    for i in 0..wallets {
        let outcome = seq.client(Op::OpenWallet {
            user: user_id(i as u64),
            currency: code,
        });
        let Outcome::Ok(Applied::WalletOpened(wallet)) = outcome else {
            panic!("open wallet {i}: {outcome:?}");
        };
        let first = *first_slot.get_or_insert(wallet.slot());
        assert_eq!(
            wallet.slot(),
            first + i as u64,
            "wallet slots are sequential"
        );
    }
    let first = first_slot.unwrap_or(0);
    for i in 0..wallets {
        let outcome = seq.client(Op::Deposit {
            wallet: WalletId::new(0, first + i as u64),
            amount: 1_000_000,
            currency: code,
        });
        assert!(outcome.is_ok(), "deposit {i}: {outcome:?}");
    }
    let after = rss_bytes();
    let entries = seq.engine.idempotency_entries();
    let per_wallet = (after - before) as f64 / wallets as f64;
    let elapsed = start.elapsed();
    match mode {
        Mode::Retained => {
            assert_eq!(seq.engine.idempotency_evicted_early(), 0);
            println!(
                "(a) retained: {wallets} wallets opened + funded (clock +1 us/command) in \
                 {elapsed:.1?}; {entries} idempotency entries live; RSS {:.1} -> {:.1} MiB: \
                 {per_wallet:.1} B/wallet (incl. 2 idempotency entries per wallet); peak RSS \
                 {:.1} MiB = {:.1} B/wallet",
                mib(before),
                mib(after),
                mib(peak_rss_bytes()),
                (peak_rss_bytes() - before) as f64 / wallets as f64,
            );
            seq.timestamp_ns += DAY_NS;
            let tick = seq.apply(&Command::Tick);
            assert!(tick.is_ok());
            let evictor = seq.client(Op::Deposit {
                wallet: WalletId::new(0, first),
                amount: 1,
                currency: code,
            });
            assert!(evictor.is_ok(), "deposit after tick: {evictor:?}");
            let evicted = rss_bytes();
            println!(
                "    after Tick +24 h and one client command: {} idempotency entries live; RSS \
                 {:.1} MiB: {:.1} B/wallet (the table keeps its allocated capacity: RSS does not \
                 shrink when entries age out)",
                seq.engine.idempotency_entries(),
                mib(evicted),
                (evicted - before) as f64 / wallets as f64,
            );
        }
        Mode::Windowed => {
            let items = seq.engine.wallet_count();
            let buckets = hashbrown_buckets(items);
            let index_bytes = buckets * 4 + buckets + 16;
            println!(
                "(b) windowed: {wallets} wallets opened + funded (clock +{step_ns} ns/command, \
                 ~{window_keys} idempotency keys in the 24 h window) in {elapsed:.1?}; {entries} \
                 idempotency entries live; RSS {:.1} -> {:.1} MiB: {per_wallet:.1} B/wallet; \
                 peak RSS {:.1} MiB",
                mib(before),
                mib(after),
                mib(peak_rss_bytes()),
            );
            println!(
                "    accounting: wallet storage {} B (64 B hot line + 8 B change time + 16 B \
                 cold part); (user, currency) index ~{:.1} B/wallet ({buckets} hashbrown \
                 buckets x 5 B for {items} wallets); the rest is the {entries} live \
                 idempotency entries, allocator overhead and page granularity",
                paycore_engine::WALLET_STORED_BYTES,
                index_bytes as f64 / wallets as f64,
            );
            println!(
                "    sizes: Outcome {} B (stored in every idempotency entry), Event {} B, \
                 Hold {} B",
                std::mem::size_of::<Outcome>(),
                std::mem::size_of::<paycore_engine::Event>(),
                std::mem::size_of::<paycore_engine::Hold>(),
            );
        }
    }
}

fn main() {
    let mut wallets = 10_000_000usize;
    let mut mode = None;
    let mut window_keys = 65_536u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"))
            .replace('_', "");
        match flag.as_str() {
            "--wallets" => wallets = value.parse().expect("--wallets N"),
            "--window-keys" => window_keys = value.parse().expect("--window-keys N"),
            "--mode" => {
                mode = Some(match value.as_str() {
                    "retained" => Mode::Retained,
                    "windowed" => Mode::Windowed,
                    other => panic!("--mode retained|windowed, not {other}"),
                })
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(wallets > 0 && window_keys > 0);
    match mode {
        Some(mode) => measure(mode, wallets, window_keys),
        None => {
            let exe = std::env::current_exe().expect("own executable path");
            for mode in ["retained", "windowed"] {
                let status = std::process::Command::new(&exe)
                    .args(["--wallets", &wallets.to_string()])
                    .args(["--window-keys", &window_keys.to_string()])
                    .args(["--mode", mode])
                    .status()
                    .expect("child measurement starts");
                assert!(status.success(), "{mode} measurement failed: {status}");
            }
        }
    }
}
