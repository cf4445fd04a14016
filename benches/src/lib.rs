//! Shared fixtures of the engine benchmarks (`benches/engine.rs`) and measurement binaries
//! (`src/bin/engine_throughput.rs`, `src/bin/wallet_memory.rs`).
//!
//! A [`Fixture`] is one shard's [`Engine`] with a currency registered and `N` user wallets
//! opened and funded, plus the state of a sequencer feeding it: the next sequence number, the
//! command clock and a reused [`Effects`] buffer. Workloads are generated as plain
//! `Vec<Command>` chunks *before* they are timed, so a timing covers `Engine::apply` alone
//! (plus the loop around it and the effects clears a sequencer would do).
//!
//! The command clock advances by a fixed step per command, chosen so that the 24 h idempotency
//! window holds about `live_keys` entries: once warm, every command inserts one idempotency
//! entry and evicts one, which is the engine's steady state and keeps the table far from its
//! capacity however long criterion runs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use paycore_engine::{
    Command, CurrencyCode, DAY_NS, Effects, Engine, EngineConfig, HoldId, IdempotencyKey, Op,
    Outcome, Reject, UserId, WalletId,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The benchmark currency. Scale 6 leaves room (10^16 minor units per currency and shard) for
/// 1 M wallets funded with 10^9 each and for billions of benchmark deposits.
pub const CURRENCY: &str = "USDC";
pub const CURRENCY_SCALE: u8 = 6;
/// Opening balance of every user wallet: 1,000 USDC.
pub const OPENING_BALANCE: u128 = 1_000_000_000;
/// Largest amount of a benchmark transfer, deposit or hold (0.01 USDC): five orders of
/// magnitude below the opening balance, so that even the hottest Zipf wallet, a party to ~7 %
/// of all transfers, random-walks nowhere near zero within a benchmark run.
pub const AMOUNT_MAX: u128 = 10_000;
/// Commands between two `Effects::clear` calls, as a sequencer clearing per batch would.
pub const EFFECTS_BATCH: usize = 1_000;
/// Commands generated, then timed, at a time: 4 Ki commands (~0.5 MB) stay in L2 between their
/// generation and their application, as a sequencer's freshly decoded batch would.
pub const CHUNK: usize = 1 << 12;

/// How many commands ahead [`Fixture::run`] prefetches wallets (`PAYCORE_PREFETCH`, default 4;
/// 0 turns prefetching off, for the side-by-side figure).
pub fn prefetch_distance() -> usize {
    std::env::var("PAYCORE_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

pub fn currency() -> CurrencyCode {
    CurrencyCode::parse(CURRENCY).expect("CURRENCY is a valid code")
}

/// The user of wallet `i`: a random-looking 128-bit id, like the UUIDv4 a gateway would send
/// (the bits are a fixed function of `i`, so runs are reproducible). Small sequential ids are
/// avoided on purpose: the engine's (user, currency) index hash degenerates on them (see
/// BENCHMARKS.md).
pub fn user_id(i: u64) -> UserId {
    let high = splitmix64(i.wrapping_mul(2));
    let low = splitmix64(i.wrapping_mul(2).wrapping_add(1));
    // UUID version 4 and variant bits.
    let id = (u128::from(high) << 64 | u128::from(low)) & !(0xf << 76) & !(0x3 << 62);
    UserId(id | (0x4 << 76) | (0x2 << 62))
}

/// SplitMix64's output function: a bijective mixer.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which wallets a workload picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every wallet equally likely.
    Uniform,
    /// Zipf(s = 1.0) over wallet ranks; ranks are mapped to wallets through a fixed random
    /// permutation so that hot wallets are spread over memory, not packed in the first slots.
    Zipf,
}

impl Mix {
    pub fn name(self) -> &'static str {
        match self {
            Mix::Uniform => "uniform",
            Mix::Zipf => "zipf_1.0",
        }
    }
}

/// Draws wallet indexes (into [`Fixture::wallets`]) under a [`Mix`].
#[derive(Debug)]
pub struct Picker {
    rng: SmallRng,
    zipf: Zipf<f64>,
    /// Zipf rank - 1 -> wallet index.
    permutation: Vec<u32>,
}

impl Picker {
    pub fn new(wallets: usize, seed: u64) -> Picker {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut permutation: Vec<u32> = (0..wallets)
            .map(|i| u32::try_from(i).expect("wallet count fits u32"))
            .collect();
        // Fisher-Yates.
        for i in (1..permutation.len()).rev() {
            let j = rng.random_range(0..=i);
            permutation.swap(i, j);
        }
        let zipf = Zipf::new(wallets as f64, 1.0).expect("Zipf(n >= 1, s = 1.0) is valid");
        Picker {
            rng,
            zipf,
            permutation,
        }
    }

    pub fn pick(&mut self, mix: Mix) -> usize {
        match mix {
            Mix::Uniform => self.rng.random_range(0..self.permutation.len()),
            Mix::Zipf => {
                // The sample is an integer-valued float in [1, n].
                let rank = self.zipf.sample(&mut self.rng) as usize;
                let rank = rank.clamp(1, self.permutation.len());
                self.permutation[rank - 1] as usize
            }
        }
    }

    /// Two different wallets.
    pub fn pair(&mut self, mix: Mix) -> (usize, usize) {
        let from = self.pick(mix);
        loop {
            let to = self.pick(mix);
            if to != from {
                return (from, to);
            }
        }
    }

    pub fn amount(&mut self) -> u128 {
        self.rng.random_range(1..=AMOUNT_MAX)
    }
}

/// One engine and the sequencer state that feeds it.
#[derive(Debug)]
pub struct Fixture {
    pub engine: Engine,
    pub effects: Effects,
    /// User wallets, in the order they were opened.
    pub wallets: Vec<WalletId>,
    pub currency: CurrencyCode,
    sequence: u64,
    timestamp_ns: u64,
    /// Command clock step: `DAY_NS / live_keys`.
    step_ns: u64,
    since_clear: usize,
    key_counter: u64,
    /// Number of the next hold the engine will place (hold ids are sequential per shard).
    next_hold_number: u64,
    /// Holds placed by [`Fixture::hold_capture_chunk`] and not yet captured, oldest first.
    open_holds: VecDeque<(HoldId, usize)>,
    /// Commands applied by [`Fixture::run`] that were rejected, by reason.
    pub rejections: Vec<(Reject, u64)>,
    pub applied: u64,
}

impl Fixture {
    /// An engine (`EngineConfig::default()`: shard 0 of 1) with the currency registered and
    /// `wallets` user wallets opened and funded with [`OPENING_BALANCE`]; the command clock
    /// steps so that about `live_keys` idempotency entries stay inside the 24 h window.
    pub fn new(wallets: usize, live_keys: u64) -> Fixture {
        assert!(live_keys > 0);
        let mut fixture = Fixture {
            engine: Engine::new(EngineConfig::default()),
            effects: Effects::default(),
            wallets: Vec::with_capacity(wallets),
            currency: currency(),
            sequence: 0,
            timestamp_ns: 1_700_000_000_000_000_000,
            step_ns: (DAY_NS / live_keys).max(1),
            since_clear: 0,
            key_counter: 0,
            next_hold_number: 1,
            open_holds: VecDeque::new(),
            rejections: Vec::new(),
            applied: 0,
        };
        let register = fixture.client(Op::RegisterCurrency {
            code: fixture.currency,
            scale: CURRENCY_SCALE,
        });
        let outcome = fixture.apply_one(&register);
        assert!(outcome.is_ok(), "register currency: {outcome:?}");
        for i in 0..wallets {
            let open = fixture.client(Op::OpenWallet {
                user: user_id(i as u64),
                currency: fixture.currency,
            });
            match fixture.apply_one(&open) {
                Outcome::Ok(paycore_engine::Applied::WalletOpened(wallet)) => {
                    fixture.wallets.push(wallet);
                }
                other => panic!("open wallet {i}: {other:?}"),
            }
        }
        for i in 0..wallets {
            let deposit = fixture.client(Op::Deposit {
                wallet: fixture.wallets[i],
                amount: OPENING_BALANCE,
                currency: fixture.currency,
            });
            let outcome = fixture.apply_one(&deposit);
            assert!(outcome.is_ok(), "deposit {i}: {outcome:?}");
        }
        fixture
    }

    /// Applies untimed uniform transfers until the idempotency table holds about `live_keys`
    /// entries (its steady state), so that timings do not start on a half-empty table.
    pub fn warm_up_idempotency(&mut self, picker: &mut Picker) {
        let live = usize::try_from(DAY_NS / self.step_ns).unwrap_or(usize::MAX);
        while self.engine.idempotency_entries() + 1 < live {
            let n = (live - self.engine.idempotency_entries()).min(CHUNK);
            let chunk = self.transfer_chunk(picker, Mix::Uniform, n);
            self.run(&chunk);
        }
    }

    /// A client command under a fresh 16-byte idempotency key.
    pub fn client(&mut self, op: Op) -> Command {
        self.key_counter += 1;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.key_counter.to_le_bytes());
        bytes[8..].copy_from_slice(b"pcbench!");
        let key = IdempotencyKey::new(&bytes).expect("16-byte key is valid");
        Command::Client { key, op }
    }

    fn apply_one(&mut self, command: &Command) -> Outcome {
        self.sequence += 1;
        self.timestamp_ns += self.step_ns;
        let outcome =
            self.engine
                .apply(self.sequence, self.timestamp_ns, command, &mut self.effects);
        self.effects.clear();
        outcome
    }

    /// Applies `commands` in order, as the sequencer would (increasing sequence numbers, the
    /// clock advancing one step per command, effects cleared every [`EFFECTS_BATCH`]), and
    /// returns the time it took. Rejections are counted by reason into
    /// [`Fixture::rejections`]: a benchmark must measure applied commands, so any is a defect.
    #[inline(never)]
    pub fn run(&mut self, commands: &[Command]) -> Duration {
        let mut rejected = [0u64; 64];
        let distance = prefetch_distance();
        let start = Instant::now();
        for (i, command) in commands.iter().enumerate() {
            // As the sequencer does: hint the wallets of a command a few places ahead.
            if distance > 0
                && let Some(ahead) = commands.get(i + distance)
            {
                self.engine.prefetch(ahead);
            }
            self.sequence += 1;
            self.timestamp_ns += self.step_ns;
            let outcome =
                self.engine
                    .apply(self.sequence, self.timestamp_ns, command, &mut self.effects);
            if let Some(reason) = outcome.rejection() {
                rejected[usize::from(reason as u8) & 63] += 1;
            }
            self.since_clear += 1;
            if self.since_clear == EFFECTS_BATCH {
                self.effects.clear();
                self.since_clear = 0;
            }
        }
        let elapsed = start.elapsed();
        std::hint::black_box(&self.effects);
        self.applied += commands.len() as u64;
        for reason in Reject::ALL {
            let count = rejected[usize::from(reason as u8) & 63];
            if count == 0 {
                continue;
            }
            match self.rejections.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += count,
                None => self.rejections.push((reason, count)),
            }
        }
        elapsed
    }

    pub fn rejected(&self) -> u64 {
        self.rejections.iter().map(|(_, n)| n).sum()
    }

    pub fn transfer_chunk(&mut self, picker: &mut Picker, mix: Mix, n: usize) -> Vec<Command> {
        (0..n)
            .map(|_| {
                let (from, to) = picker.pair(mix);
                let op = Op::Transfer {
                    from: self.wallets[from],
                    to: self.wallets[to],
                    amount: picker.amount(),
                    currency: self.currency,
                };
                self.client(op)
            })
            .collect()
    }

    pub fn deposit_chunk(&mut self, picker: &mut Picker, n: usize) -> Vec<Command> {
        (0..n)
            .map(|_| {
                let op = Op::Deposit {
                    wallet: self.wallets[picker.pick(Mix::Uniform)],
                    amount: picker.amount(),
                    currency: self.currency,
                };
                self.client(op)
            })
            .collect()
    }

    fn hold_op(&mut self, picker: &mut Picker) -> Op {
        let wallet = picker.pick(Mix::Uniform);
        let id = HoldId::new(0, self.next_hold_number);
        self.next_hold_number += 1;
        self.open_holds.push_back((id, wallet));
        Op::Hold {
            wallet: self.wallets[wallet],
            amount: picker.amount(),
            currency: self.currency,
            // An authorisation that expires in 7 days: exercises the expiry index too.
            expires_at_ns: Some(self.timestamp_ns + 7 * DAY_NS),
        }
    }

    /// Places `open` holds (untimed) so that hold + capture pairs run against a hold table of
    /// that size, each capture taking the oldest open hold.
    pub fn open_holds(&mut self, picker: &mut Picker, open: usize) {
        while self.open_holds.len() < open {
            let n = (open - self.open_holds.len()).min(CHUNK);
            let chunk: Vec<Command> = (0..n)
                .map(|_| {
                    let op = self.hold_op(picker);
                    self.client(op)
                })
                .collect();
            self.run(&chunk);
        }
        let (newest, _) = self.open_holds.back().copied().expect("holds placed");
        assert!(
            self.engine.hold(newest).is_some(),
            "hold ids predicted wrongly"
        );
    }

    /// Forgets the holds the engine no longer has open (expired at their 7-day expiry in
    /// command time: a long run of other workloads before this one gets there), then places
    /// new ones until `open` are open again. Without it the hold + capture benchmark measured
    /// captures rejected as `hold_closed` once the machine was fast enough to run ~56 M
    /// commands before it.
    pub fn refresh_holds(&mut self, picker: &mut Picker, open: usize) {
        let engine = &self.engine;
        self.open_holds.retain(|(id, _)| engine.hold(*id).is_some());
        self.open_holds(picker, open);
    }

    /// `pairs` pairs of commands: capture the oldest open hold (in full, to another random
    /// wallet), then place a new hold on a random wallet.
    pub fn hold_capture_chunk(&mut self, picker: &mut Picker, pairs: usize) -> Vec<Command> {
        let mut commands = Vec::with_capacity(2 * pairs);
        for _ in 0..pairs {
            let (hold, holder) = self
                .open_holds
                .pop_front()
                .expect("open_holds called first");
            let to = loop {
                let to = picker.pick(Mix::Uniform);
                if to != holder {
                    break to;
                }
            };
            let capture = Op::Capture {
                hold,
                amount: None,
                to: Some(self.wallets[to]),
            };
            commands.push(self.client(capture));
            let op = self.hold_op(picker);
            commands.push(self.client(op));
        }
        commands
    }
}

/// Applies `iterations` items of a workload in chunks of at most [`CHUNK`] commands, generating
/// each chunk untimed, and returns the summed time of applying them. `per_item` is the number
/// of commands in one item (2 for a hold + capture pair).
pub fn timed(
    fixture: &mut Fixture,
    iterations: u64,
    per_item: usize,
    mut generate: impl FnMut(&mut Fixture, usize) -> Vec<Command>,
) -> Duration {
    let mut left = iterations;
    let mut total = Duration::ZERO;
    let items_per_chunk = (CHUNK / per_item) as u64;
    while left > 0 {
        let n = left.min(items_per_chunk);
        let chunk = generate(fixture, n as usize);
        total += fixture.run(&chunk);
        left -= n;
    }
    total
}

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

/// Peak resident set size of this process, in bytes (`VmHWM` of /proc/self/status).
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

fn proc_status_kib(field: &str) -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}
