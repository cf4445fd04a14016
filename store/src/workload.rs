//! A deterministic multi-shard command stream, for tests and benchmarks: wallets in two
//! currencies, deposits, local and cross-shard transfers, holds (with expiry), captures (local
//! and cross-shard), releases, withdrawals, exchanges, freezes, linked groups, retries and idle
//! ticks. Cross-shard legs are routed to the other shard's stream like the sequencer does (in
//! order per pair of shards, some delayed). Command `n` depends only on the seed.
//!
//! The primary engines live here, so a test can compare what the store holds with them.

use std::collections::VecDeque;

use paycore_engine::{
    Applied, Command, CurrencyCode, Effects, Engine, EngineConfig, HoldId, IdempotencyKey, Op,
    Outcome, Rate, ShardMessage, UserId, WalletId,
};

/// One journaled command of one shard.
#[derive(Debug, Clone)]
pub struct Record {
    pub shard: u16,
    pub sequence: u64,
    pub timestamp_ns: u64,
    pub command: Command,
}

#[derive(Debug, Clone, Copy)]
pub struct WorkloadConfig {
    pub shards: u16,
    pub seed: u64,
    /// Users; each gets a USD and an EUR wallet on its shard.
    pub users: u64,
    /// First command timestamp, and the clock step per command.
    pub start_ns: u64,
    pub step_ns: u64,
    /// Only open, fund and transfer (the benchmark's mix) instead of every operation.
    pub transfers_only: bool,
    /// Cross-shard legs a shard may have waiting before the next one is delivered. A node sends
    /// legs right after their group commit and the receiver takes them first, so a leg waits
    /// a batch or two: `Some(small)` models that (the benchmark journal). `None` delivers one
    /// now and then only (a quarter of the steps), so many legs wait long and settle in a
    /// later flush batch than their debit (the tests: that path must be covered).
    pub legs_in_flight_max: Option<usize>,
}

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Workload {
    pub config: WorkloadConfig,
    pub engines: Vec<Engine>,
    effects: Effects,
    legs: Vec<VecDeque<Command>>,
    /// (USD wallet, EUR wallet) of each user, once opened.
    pub wallets: Vec<(WalletId, WalletId)>,
    holds: Vec<Vec<HoldId>>,
    history: Vec<Vec<(IdempotencyKey, Op)>>,
    clock_ns: u64,
    counter: u64,
    setup_done: bool,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("config", &self.config)
            .finish()
    }
}

pub fn usd() -> CurrencyCode {
    CurrencyCode::parse("USD").unwrap_or_else(|_| unreachable!("valid code"))
}

pub fn eur() -> CurrencyCode {
    CurrencyCode::parse("EUR").unwrap_or_else(|_| unreachable!("valid code"))
}

impl Workload {
    pub fn new(config: WorkloadConfig) -> Workload {
        let engines = (0..config.shards)
            .map(|shard| Engine::new(Self::engine_config(&config, shard)))
            .collect();
        Workload {
            engines,
            effects: Effects::default(),
            legs: vec![VecDeque::new(); usize::from(config.shards)],
            wallets: Vec::new(),
            holds: vec![Vec::new(); usize::from(config.shards)],
            history: vec![Vec::new(); usize::from(config.shards)],
            clock_ns: config.start_ns,
            counter: 0,
            setup_done: false,
            config,
        }
    }

    pub fn engine_config(config: &WorkloadConfig, shard: u16) -> EngineConfig {
        EngineConfig {
            shard,
            shard_count: config.shards,
            ..EngineConfig::default()
        }
    }

    fn random(&mut self) -> u64 {
        self.counter += 1;
        mix(self.config.seed ^ mix(self.counter))
    }

    fn key(&mut self, shard: u16) -> IdempotencyKey {
        self.counter += 1;
        let text = format!("wl-{shard}-{}", self.counter);
        IdempotencyKey::new(text.as_bytes()).unwrap_or_else(|_| unreachable!("short key"))
    }

    /// Applies `command` on `shard` as its primary would and returns the record.
    fn apply(&mut self, shard: u16, command: Command) -> (Record, Outcome) {
        self.clock_ns += self.config.step_ns;
        let engine = &mut self.engines[usize::from(shard)];
        let sequence = engine.last_sequence() + 1;
        self.effects.clear();
        let outcome = engine.apply(sequence, self.clock_ns, &command, &mut self.effects);
        for message in self.effects.messages.drain(..) {
            match message {
                ShardMessage::Credit { to_shard, leg } => {
                    self.legs[usize::from(to_shard)].push_back(Command::CreditLeg(leg));
                }
                ShardMessage::Settle { to_shard, leg } => {
                    self.legs[usize::from(to_shard)].push_back(Command::SettleLeg(leg));
                }
            }
        }
        if let Outcome::Ok(Applied::HoldPlaced(hold)) = outcome {
            self.holds[usize::from(shard)].push(hold);
        }
        let record = Record {
            shard,
            sequence,
            timestamp_ns: self.clock_ns,
            command,
        };
        (record, outcome)
    }

    fn client(&mut self, shard: u16, op: Op, out: &mut Vec<Record>) -> Outcome {
        let key = self.key(shard);
        if self.history[usize::from(shard)].len() < 4096 {
            self.history[usize::from(shard)].push((key.clone(), op.clone()));
        }
        let (record, outcome) = self.apply(shard, Command::Client { key, op });
        out.push(record);
        outcome
    }

    /// Registers currencies, opens and funds every user's wallets.
    fn setup(&mut self, out: &mut Vec<Record>) {
        for shard in 0..self.config.shards {
            for (code, scale) in [(usd(), 2), (eur(), 6)] {
                self.client(shard, Op::RegisterCurrency { code, scale }, out);
            }
        }
        for user in 1..=self.config.users {
            let user = UserId(u128::from(user) * 0x9E37_79B9);
            let shard = user.shard(self.config.shards);
            let mut ids = [WalletId(0); 2];
            for (i, currency) in [usd(), eur()].into_iter().enumerate() {
                let outcome = self.client(shard, Op::OpenWallet { user, currency }, out);
                let Outcome::Ok(Applied::WalletOpened(wallet)) = outcome else {
                    unreachable!("opening a fresh wallet: {outcome:?}")
                };
                ids[i] = wallet;
                let amount = if i == 0 { 1_000_000 } else { 50_000_000_000 };
                self.client(
                    shard,
                    Op::Deposit {
                        wallet,
                        amount,
                        currency,
                    },
                    out,
                );
            }
            self.wallets.push((ids[0], ids[1]));
        }
        self.setup_done = true;
    }

    /// Appends at least `count` records (setup first), in the order shards would journal them.
    pub fn generate(&mut self, count: usize, out: &mut Vec<Record>) {
        let target = out.len() + count;
        if !self.setup_done {
            self.setup(out);
        }
        while out.len() < target {
            self.step(out);
        }
    }

    /// Delivers every leg still queued (until none is produced), so all shards settle.
    pub fn drain_legs(&mut self, out: &mut Vec<Record>) {
        for _ in 0..64 {
            let mut any = false;
            for shard in 0..self.config.shards {
                while let Some(leg) = self.legs[usize::from(shard)].pop_front() {
                    any = true;
                    let (record, _) = self.apply(shard, leg);
                    out.push(record);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn step(&mut self, out: &mut Vec<Record>) {
        let r = self.random();
        if let Some(max) = self.config.legs_in_flight_max
            && let Some(shard) =
                (0..self.config.shards).find(|&s| self.legs[usize::from(s)].len() > max)
            && let Some(leg) = self.legs[usize::from(shard)].pop_front()
        {
            let (record, _) = self.apply(shard, leg);
            out.push(record);
            return;
        }
        // Deliver a leg now and then (in order per destination), so some stay in flight.
        let shard_pick = (r >> 56) as u16 % self.config.shards;
        if r.is_multiple_of(4)
            && let Some(leg) = self.legs[usize::from(shard_pick)].pop_front()
        {
            let (record, _) = self.apply(shard_pick, leg);
            out.push(record);
            return;
        }
        let users = self.wallets.len() as u64;
        let (a_usd, a_eur) = self.wallets[((r >> 8) % users) as usize];
        let (b_usd, b_eur) = self.wallets[((r >> 24) % users) as usize];
        let shard = a_usd.shard();
        let amount = u128::from(1 + (r >> 40) % 5_000);
        let transfer = |from, to, amount| Op::Transfer {
            from,
            to,
            amount,
            currency: usd(),
        };
        let choice = if self.config.transfers_only {
            50
        } else {
            r % 100
        };
        let op = match choice {
            0..=3 => {
                // A retry: same key and operation as an earlier command of this shard.
                let history = &self.history[usize::from(shard)];
                if let Some((key, op)) = history.get(((r >> 16) as usize) % history.len().max(1)) {
                    let command = Command::Client {
                        key: key.clone(),
                        op: op.clone(),
                    };
                    let (record, _) = self.apply(shard, command);
                    out.push(record);
                    return;
                }
                transfer(a_usd, b_usd, amount)
            }
            4..=5 => {
                let (record, _) = self.apply(shard, Command::Tick);
                out.push(record);
                return;
            }
            6..=15 => Op::Hold {
                wallet: a_usd,
                amount,
                currency: usd(),
                expires_at_ns: (r >> 20)
                    .is_multiple_of(3)
                    .then_some(self.clock_ns + self.config.step_ns * (1 + (r >> 33) % 50)),
            },
            16..=27 => {
                let holds = &self.holds[usize::from(shard)];
                let Some(&hold) = holds.get(((r >> 12) as usize) % holds.len().max(1)) else {
                    return;
                };
                if choice >= 24 {
                    Op::Release { hold }
                } else {
                    Op::Capture {
                        hold,
                        amount: (r >> 50).is_multiple_of(2).then_some(amount / 2 + 1),
                        to: Some(b_usd),
                    }
                }
            }
            28..=31 => Op::Withdraw {
                wallet: a_usd,
                amount,
                currency: usd(),
            },
            32..=34 => {
                // Capture a withdrawal hold to settlement (the provider paid out).
                let holds = &self.holds[usize::from(shard)];
                let Some(&hold) = holds.get(((r >> 12) as usize) % holds.len().max(1)) else {
                    return;
                };
                Op::Capture {
                    hold,
                    amount: None,
                    to: None,
                }
            }
            35..=39 => Op::Exchange {
                from: if (r >> 7).is_multiple_of(2) {
                    a_usd
                } else {
                    a_eur
                },
                to: if (r >> 7).is_multiple_of(2) {
                    a_eur
                } else {
                    a_usd
                },
                amount: amount * 3,
                rate: Rate::new(9_215, 4).unwrap_or_else(|| unreachable!("valid rate")),
            },
            40 => Op::FreezeWallet { wallet: a_usd },
            41..=42 => Op::UnfreezeWallet { wallet: a_usd },
            43..=46 => Op::Linked(vec![
                transfer(a_usd, b_usd, amount),
                transfer(
                    a_usd,
                    self.wallets[((r >> 44) % users) as usize].0,
                    amount / 3 + 1,
                ),
            ]),
            47 => Op::Deposit {
                wallet: a_eur,
                amount: amount * 1000,
                currency: eur(),
            },
            48 => Op::Transfer {
                from: a_eur,
                to: b_eur,
                amount: amount * 100,
                currency: eur(),
            },
            49 => {
                // To a wallet that does not exist on another shard: the leg bounces and the
                // sender is refunded.
                let other = (shard + 1) % self.config.shards;
                transfer(a_usd, WalletId::new(other, 1 << 40), amount)
            }
            _ => transfer(a_usd, b_usd, amount),
        };
        self.client(shard, op, out);
    }
}

/// The journals of a data folder opened for appending, as a node's shards would be (each
/// recovered first). For tests and benchmarks that write journals in pieces.
pub struct Journals {
    shards: Vec<paycore_snapshot::DurableShard>,
    pending: Vec<usize>,
    batch: usize,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Journals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journals")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Journals {
    /// Commits every `batch` records per shard (one fsync each).
    pub fn open(data_dir: &std::path::Path, shards: u16, batch: usize) -> Result<Journals, String> {
        Self::open_with_epoch(
            data_dir,
            shards,
            batch,
            paycore_journal::JournalConfig::default().epoch,
        )
    }

    /// As [`Journals::open`], journaling as the primary of `epoch`.
    pub fn open_with_epoch(
        data_dir: &std::path::Path,
        shards: u16,
        batch: usize,
        epoch: u64,
    ) -> Result<Journals, String> {
        use paycore_journal::{JournalConfig, RecoveryOptions};
        let mut opened = Vec::new();
        for shard in 0..shards {
            let engine_config = EngineConfig {
                shard,
                shard_count: shards,
                ..EngineConfig::default()
            };
            // `Durability::None` would leave the batch in the writer (the default write path
            // writes at the sync), so the records would not be on disk for a reader.
            let journal_config = JournalConfig {
                shard,
                epoch,
                ..JournalConfig::default()
            };
            let shard = paycore_snapshot::open_shard(
                data_dir,
                engine_config,
                journal_config,
                RecoveryOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            opened.push(shard);
        }
        Ok(Journals {
            pending: vec![0; opened.len()],
            shards: opened,
            batch: batch.max(1),
            payload: Vec::with_capacity(512),
        })
    }

    pub fn append(&mut self, records: &[Record]) -> Result<(), String> {
        for record in records {
            let shard = &mut self.shards[usize::from(record.shard)];
            self.payload.clear();
            paycore_engine::codec::encode_command(&record.command, &mut self.payload);
            shard
                .journal
                .append(record.sequence, record.timestamp_ns, &self.payload)
                .map_err(|e| e.to_string())?;
            let count = &mut self.pending[usize::from(record.shard)];
            *count += 1;
            if *count >= self.batch {
                shard.journal.commit().map_err(|e| e.to_string())?;
                *count = 0;
            }
        }
        Ok(())
    }

    pub fn commit(&mut self) -> Result<(), String> {
        for (shard, pending) in self.shards.iter_mut().zip(&mut self.pending) {
            shard.journal.commit().map_err(|e| e.to_string())?;
            *pending = 0;
        }
        Ok(())
    }
}

/// Writes `records` into the journals of `data_dir` (one per shard, as a node would: each shard
/// recovered first, then appended and committed in batches of `batch` records).
pub fn write_journals(
    data_dir: &std::path::Path,
    shards: u16,
    records: &[Record],
    batch: usize,
) -> Result<(), String> {
    let mut journals = Journals::open(data_dir, shards, batch)?;
    journals.append(records)?;
    journals.commit()
}
