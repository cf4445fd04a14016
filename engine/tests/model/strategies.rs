//! Abstract operations for proptest, and their resolution into concrete commands.
//!
//! Generated values name wallets, holds and amounts by small indices and kinds ("a user
//! wallet", "a fraction of its available balance", "the next hold id"), resolved against the
//! reference models just before the command is applied. Sequences therefore stay meaningful
//! (they name wallets that exist) and shrink well.

use proptest::prelude::*;

use paycore_engine::{CurrencyCode, HoldId, Op, Rate, ShardId, SystemRole, Tier, UserId, WalletId};

use crate::reference::{HOUR_NS, Model, max_of};

pub const CODES: [&str; 4] = ["JPY", "USD", "ETH", "EUR"];
pub const SCALES: [u8; 4] = [0, 2, 18, 6];
pub const DAY: u64 = 24 * HOUR_NS;

pub fn code(index: u8) -> CurrencyCode {
    CurrencyCode::parse(CODES[usize::from(index) % CODES.len()]).expect("valid code")
}

// -------------------------------------------------------------------------- picks

#[derive(Debug, Clone)]
pub enum WPick {
    /// A user wallet (any status, any shard).
    User(u8),
    /// Any wallet, system wallets included.
    Any(u8),
    /// The Fees wallet of a currency on the home shard.
    Fees(u8),
    /// A system wallet other than Fees (never addressable).
    System(u8, u8),
    /// A slot past the end of the home shard (`Missing(0)` is the next wallet to be opened).
    Missing(u8),
    /// A slot past the end of some shard.
    MissingOn(u8, u8),
    /// A shard past the deployment's, or `WalletId(u64::MAX)`.
    Foreign(u8),
}

#[derive(Debug, Clone)]
pub enum ToPick {
    /// A wallet of the same user (exchanges).
    Sibling(u8),
    /// A user wallet of the same currency as the source.
    SameCurrency(u8),
    Other(WPick),
}

#[derive(Debug, Clone)]
pub enum HPick {
    Open(u8),
    Issued(u8),
    /// The next hold numbers of the home shard (`Next(0)` is the next hold to be placed).
    Next(u8),
    Zero,
    Foreign,
}

#[derive(Debug, Clone)]
pub enum Amt {
    Zero,
    One,
    Small(u16),
    /// A percentage (1..=100) of the reference (available balance or hold amount).
    Frac(u8),
    Max,
    MaxPlus1,
    Huge,
    Raw(u64),
}

#[derive(Debug, Clone)]
pub enum CPick {
    Own,
    Code(u8),
}

#[derive(Debug, Clone)]
pub enum Exp {
    /// Whole seconds after the command: timestamps move in whole seconds too, so that commands
    /// often land exactly on an expiry.
    Ticks(u8),
    Past(u16),
    Now,
    Nanos(u16),
    Secs(u16),
    Hours(u8),
    Never,
}

#[derive(Debug, Clone)]
pub enum CapTo {
    /// What the hold needs: none for a withdrawal, a wallet for an authorisation.
    Auto(WPick),
    Nobody,
    To(WPick),
}

#[derive(Debug, Clone)]
pub enum AOp {
    Register {
        code: u8,
        scale: u8,
    },
    Limit {
        tier: u8,
        code: u8,
        limit: Option<Amt>,
    },
    SetTier {
        user: u8,
        tier: u8,
    },
    Open {
        user: u8,
        code: u8,
    },
    Close(WPick),
    Freeze(WPick),
    Unfreeze(WPick),
    Deposit {
        w: WPick,
        amount: Amt,
        cur: CPick,
    },
    Transfer {
        from: WPick,
        to: ToPick,
        amount: Amt,
        cur: CPick,
    },
    Hold {
        w: WPick,
        amount: Amt,
        cur: CPick,
        exp: Option<Exp>,
    },
    Withdraw {
        w: WPick,
        amount: Amt,
        cur: CPick,
    },
    Capture {
        hold: HPick,
        amount: Option<Amt>,
        to: CapTo,
    },
    Release(HPick),
    Exchange {
        from: WPick,
        to: ToPick,
        amount: Amt,
        rate: (u64, u8),
    },
    Linked(Vec<AOp>),
}

#[derive(Debug, Clone)]
pub enum Dt {
    Zero,
    /// Whole seconds (see `Exp::Ticks`).
    Ticks(u8),
    Nanos(u16),
    Secs(u16),
    Mins(u8),
    Hours(u8),
    Days(u8),
    Back(u32),
}

impl Dt {
    /// The next timestamp offered to the engine (it may be earlier than `now`).
    pub fn apply(&self, now: u64) -> u64 {
        match *self {
            Dt::Zero => now,
            Dt::Ticks(k) => now + u64::from(k) * 1_000_000_000,
            Dt::Nanos(n) => now + u64::from(n),
            Dt::Secs(s) => now + u64::from(s) * 1_000_000_000,
            Dt::Mins(m) => now + u64::from(m) * 60_000_000_000,
            Dt::Hours(h) => now + u64::from(h) * HOUR_NS + 17,
            Dt::Days(d) => now + u64::from(d) * DAY,
            Dt::Back(b) => now.saturating_sub(u64::from(b)),
        }
    }
}

#[derive(Debug, Clone)]
pub enum KeyPick {
    Fresh,
    Pool(u8),
}

// -------------------------------------------------------------------------- strategies

pub fn dt() -> impl Strategy<Value = Dt> {
    prop_oneof![
        3 => Just(Dt::Zero),
        6 => (1..=4u8).prop_map(Dt::Ticks),
        1 => any::<u16>().prop_map(Dt::Nanos),
        1 => (1..3600u16).prop_map(Dt::Secs),
        2 => (1..60u8).prop_map(Dt::Mins),
        2 => prop_oneof![1..30u8, Just(23), Just(24), Just(25)].prop_map(Dt::Hours),
        1 => (1..3u8).prop_map(Dt::Days),
        1 => any::<u32>().prop_map(Dt::Back),
    ]
}

pub fn key() -> impl Strategy<Value = KeyPick> {
    prop_oneof![3 => Just(KeyPick::Fresh), 1 => (0..6u8).prop_map(KeyPick::Pool)]
}

fn wpick() -> impl Strategy<Value = WPick> {
    prop_oneof![
        12 => any::<u8>().prop_map(WPick::User),
        1 => any::<u8>().prop_map(WPick::Any),
        1 => any::<u8>().prop_map(WPick::Fees),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(c, r)| WPick::System(c, r)),
        1 => (0..3u8).prop_map(WPick::Missing),
        1 => (any::<u8>(), 0..3u8).prop_map(|(s, k)| WPick::MissingOn(s, k)),
        1 => any::<u8>().prop_map(WPick::Foreign),
    ]
}

/// A wallet that sends: nearly always a user wallet.
fn source() -> impl Strategy<Value = WPick> {
    prop_oneof![12 => any::<u8>().prop_map(WPick::User), 1 => wpick()]
}

fn topick() -> impl Strategy<Value = ToPick> {
    prop_oneof![
        2 => any::<u8>().prop_map(ToPick::Sibling),
        6 => any::<u8>().prop_map(ToPick::SameCurrency),
        2 => wpick().prop_map(ToPick::Other),
    ]
}

fn exchange_to() -> impl Strategy<Value = ToPick> {
    prop_oneof![
        8 => any::<u8>().prop_map(ToPick::Sibling),
        1 => any::<u8>().prop_map(ToPick::SameCurrency),
        1 => wpick().prop_map(ToPick::Other),
    ]
}

fn hpick() -> impl Strategy<Value = HPick> {
    prop_oneof![
        12 => any::<u8>().prop_map(HPick::Open),
        2 => any::<u8>().prop_map(HPick::Issued),
        1 => (0..2u8).prop_map(HPick::Next),
        1 => Just(HPick::Zero),
        1 => Just(HPick::Foreign),
    ]
}

fn amt() -> impl Strategy<Value = Amt> {
    prop_oneof![
        1 => Just(Amt::Zero),
        2 => Just(Amt::One),
        6 => (1..2000u16).prop_map(Amt::Small),
        6 => (1..=100u8).prop_map(Amt::Frac),
        1 => Just(Amt::Max),
        1 => Just(Amt::MaxPlus1),
        1 => Just(Amt::Huge),
        1 => any::<u64>().prop_map(Amt::Raw),
    ]
}

fn deposit_amt() -> impl Strategy<Value = Amt> {
    prop_oneof![
        1 => Just(Amt::Zero),
        6 => (1..5000u16).prop_map(Amt::Small),
        2 => any::<u64>().prop_map(Amt::Raw),
        1 => Just(Amt::Max),
        1 => Just(Amt::MaxPlus1),
    ]
}

fn cpick() -> impl Strategy<Value = CPick> {
    prop_oneof![12 => Just(CPick::Own), 1 => (0..4u8).prop_map(CPick::Code)]
}

fn exp() -> impl Strategy<Value = Option<Exp>> {
    prop_oneof![
        3 => Just(None),
        4 => (1..=6u8).prop_map(|k| Some(Exp::Ticks(k))),
        1 => (0..1000u16).prop_map(|p| Some(Exp::Past(p))),
        1 => Just(Some(Exp::Now)),
        2 => any::<u16>().prop_map(|n| Some(Exp::Nanos(n))),
        2 => any::<u16>().prop_map(|s| Some(Exp::Secs(s))),
        2 => (0..30u8).prop_map(|h| Some(Exp::Hours(h))),
        1 => Just(Some(Exp::Never)),
    ]
}

fn rate() -> impl Strategy<Value = (u64, u8)> {
    prop_oneof![
        2 => (1..=20u64, 0..=1u8),
        2 => (1..10_000_000u64, 0..=6u8),
        1 => (any::<u64>(), 0..=19u8),
        1 => (0..3u64, 0..=18u8),
    ]
}

/// One operation that is not a linked group.
pub fn simple_op() -> impl Strategy<Value = AOp> {
    prop_oneof![
        1 => (0..4u8, 0..5u8).prop_map(|(code, scale)| AOp::Register { code, scale }),
        3 => (prop_oneof![3 => Just(0u8), 1 => 0..3u8], 0..4u8, prop::option::weighted(0.8, prop_oneof![
                6 => (1..5000u16).prop_map(Amt::Small),
                1 => Just(Amt::Zero),
                1 => Just(Amt::Max),
                1 => Just(Amt::MaxPlus1),
            ]))
            .prop_map(|(tier, code, limit)| AOp::Limit { tier, code, limit }),
        2 => (any::<u8>(), 0..3u8).prop_map(|(user, tier)| AOp::SetTier { user, tier }),
        2 => (any::<u8>(), 0..4u8).prop_map(|(user, code)| AOp::Open { user, code }),
        2 => wpick().prop_map(AOp::Close),
        2 => wpick().prop_map(AOp::Freeze),
        2 => wpick().prop_map(AOp::Unfreeze),
        6 => (source(), deposit_amt(), cpick())
            .prop_map(|(w, amount, cur)| AOp::Deposit { w, amount, cur }),
        12 => (source(), topick(), amt(), cpick())
            .prop_map(|(from, to, amount, cur)| AOp::Transfer { from, to, amount, cur }),
        8 => (source(), amt(), cpick(), exp())
            .prop_map(|(w, amount, cur, exp)| AOp::Hold { w, amount, cur, exp }),
        3 => (source(), amt(), cpick())
            .prop_map(|(w, amount, cur)| AOp::Withdraw { w, amount, cur }),
        8 => (hpick(), prop::option::weighted(0.4, amt()), prop_oneof![
                8 => wpick().prop_map(CapTo::Auto),
                1 => Just(CapTo::Nobody),
                1 => wpick().prop_map(CapTo::To),
            ])
            .prop_map(|(hold, amount, to)| AOp::Capture { hold, amount, to }),
        3 => hpick().prop_map(AOp::Release),
        5 => (source(), exchange_to(), amt(), rate())
            .prop_map(|(from, to, amount, rate)| AOp::Exchange { from, to, amount, rate }),
    ]
}

pub fn op() -> impl Strategy<Value = AOp> {
    prop_oneof![
        16 => simple_op(),
        4 => prop::collection::vec(simple_op(), 1..5).prop_map(AOp::Linked),
        1 => prop::collection::vec(
            prop_oneof![8 => simple_op(), 1 => Just(AOp::Linked(Vec::new()))], 0..3)
            .prop_map(AOp::Linked),
    ]
}

// -------------------------------------------------------------------------- resolution

/// What the resolver knows: every shard's reference model.
#[derive(Debug)]
pub struct View<'a> {
    pub models: &'a [Model],
    /// The shard the command is meant for.
    pub home: ShardId,
    /// The timestamp the command will run at (expiries are relative to it).
    pub now: u64,
    user_wallets: Vec<WalletId>,
    all_wallets: Vec<WalletId>,
    open_holds: Vec<(HoldId, bool)>,
    issued_holds: Vec<HoldId>,
    users: u8,
}

#[derive(Debug, Clone, Copy)]
struct Info {
    code: CurrencyCode,
    max: u128,
    available: i128,
    user: u128,
}

impl<'a> View<'a> {
    pub fn new(models: &'a [Model], home: ShardId, now: u64, users: u8) -> View<'a> {
        let mut view = View {
            models,
            home,
            now: models.iter().map(|m| m.now).max().unwrap_or(0).max(now),
            user_wallets: Vec::new(),
            all_wallets: Vec::new(),
            open_holds: Vec::new(),
            issued_holds: Vec::new(),
            users,
        };
        for m in models {
            for (slot, w) in &m.wallets {
                let id = m.wid(*slot);
                view.all_wallets.push(id);
                if w.role.is_none() {
                    view.user_wallets.push(id);
                }
            }
            for (number, hold) in &m.holds {
                view.open_holds.push((m.hid(*number), hold.withdrawal));
            }
            for number in 1..=m.holds_issued {
                view.issued_holds.push(m.hid(number));
            }
        }
        view
    }

    fn home_model(&self) -> &Model {
        &self.models[usize::from(self.home)]
    }

    fn info(&self, id: WalletId) -> Option<Info> {
        let model = self.models.get(usize::from(id.shard()))?;
        let w = model.wallet(id)?;
        let c = &model.currencies[w.currency];
        Some(Info {
            code: c.code,
            max: c.max,
            available: w.available,
            user: w.user,
        })
    }

    pub fn user(&self, pick: u8) -> UserId {
        if pick % 16 == 15 {
            UserId::SYSTEM
        } else {
            UserId(1 + u128::from(pick % self.users))
        }
    }

    fn wallet(&self, pick: &WPick) -> WalletId {
        let home = self.home_model();
        let pick_of =
            |list: &[WalletId], i: u8| list.get(usize::from(i) % list.len().max(1)).copied();
        let missing = |m: &Model, k: u8| m.wid(m.wallets.len() as u64 + u64::from(k));
        match pick {
            WPick::User(i) => pick_of(&self.user_wallets, *i).unwrap_or_else(|| missing(home, 0)),
            WPick::Any(i) => pick_of(&self.all_wallets, *i).unwrap_or_else(|| missing(home, 0)),
            WPick::Fees(c) | WPick::System(c, _) if home.currencies.is_empty() => {
                let _ = c;
                missing(home, 0)
            }
            WPick::Fees(c) => {
                let c = &home.currencies[usize::from(*c) % home.currencies.len()];
                home.wid(c.system[SystemRole::Fees as usize])
            }
            WPick::System(c, r) => {
                let c = &home.currencies[usize::from(*c) % home.currencies.len()];
                let role = [0, 1, 3][usize::from(*r) % 3];
                home.wid(c.system[role])
            }
            WPick::Missing(k) => missing(home, *k),
            WPick::MissingOn(s, k) => {
                let m = &self.models[usize::from(*s) % self.models.len()];
                missing(m, *k)
            }
            WPick::Foreign(i) => {
                if i % 4 == 3 {
                    WalletId(u64::MAX)
                } else {
                    let shard = self.models.len() as u16 + u16::from(i % 4);
                    WalletId::new(shard, u64::from(i / 4))
                }
            }
        }
    }

    fn to_wallet(&self, from: WalletId, pick: &ToPick) -> WalletId {
        let from_info = self.info(from);
        let filtered = |keep: &dyn Fn(&Info) -> bool, i: u8| -> Option<WalletId> {
            let list: Vec<WalletId> = self
                .user_wallets
                .iter()
                .copied()
                .filter(|w| self.info(*w).is_some_and(|info| keep(&info)))
                .collect();
            list.get(usize::from(i) % list.len().max(1)).copied()
        };
        match (pick, from_info) {
            (ToPick::Sibling(i), Some(f)) => filtered(
                &|info: &Info| info.user == f.user && info.code != f.code,
                *i,
            )
            .unwrap_or(from),
            (ToPick::SameCurrency(i), Some(f)) => {
                filtered(&|info: &Info| info.code == f.code, *i).unwrap_or(from)
            }
            (ToPick::Other(w), _) => self.wallet(w),
            (ToPick::Sibling(i) | ToPick::SameCurrency(i), None) => self.wallet(&WPick::User(*i)),
        }
    }

    fn hold(&self, pick: &HPick) -> HoldId {
        let home = self.home_model();
        match pick {
            HPick::Open(i) if !self.open_holds.is_empty() => {
                self.open_holds[usize::from(*i) % self.open_holds.len()].0
            }
            HPick::Open(i) | HPick::Issued(i) if !self.issued_holds.is_empty() => {
                self.issued_holds[usize::from(*i) % self.issued_holds.len()]
            }
            HPick::Open(_) | HPick::Issued(_) => home.hid(1),
            HPick::Next(k) => home.hid(home.holds_issued + 1 + u64::from(*k)),
            HPick::Zero => home.hid(0),
            HPick::Foreign => HoldId::new(home.cfg.shards + 1, 1),
        }
    }

    fn amount(&self, pick: &Amt, reference: i128, max: u128) -> u128 {
        match *pick {
            Amt::Zero => 0,
            Amt::One => 1,
            Amt::Small(n) => u128::from(n),
            Amt::Frac(p) => {
                let base = u128::try_from(reference.max(0)).unwrap_or(0);
                (base * u128::from(p.min(100)) / 100).max(1)
            }
            Amt::Max => max,
            Amt::MaxPlus1 => max + 1,
            Amt::Huge => u128::MAX,
            Amt::Raw(n) => u128::from(n),
        }
    }

    fn wallet_amount(&self, w: WalletId, pick: &Amt) -> u128 {
        match self.info(w) {
            Some(info) => self.amount(pick, info.available, info.max),
            None => self.amount(pick, 100, max_of(2)),
        }
    }

    fn cur(&self, w: WalletId, pick: &CPick) -> CurrencyCode {
        match (pick, self.info(w)) {
            (CPick::Own, Some(info)) => info.code,
            (CPick::Own, None) => code(1),
            (CPick::Code(c), _) => code(*c),
        }
    }

    fn expiry(&self, pick: &Exp) -> u64 {
        let now = self.now;
        match *pick {
            Exp::Ticks(k) => now + u64::from(k) * 1_000_000_000,
            Exp::Past(p) => now.saturating_sub(u64::from(p)),
            Exp::Now => now,
            Exp::Nanos(n) => now + 1 + u64::from(n),
            Exp::Secs(s) => now + u64::from(s) * 1_000_000_000,
            Exp::Hours(h) => now + u64::from(h) * HOUR_NS + 1,
            Exp::Never => u64::MAX,
        }
    }

    fn hold_info(&self, id: HoldId) -> Option<(u128, bool)> {
        let model = self.models.get(usize::from(id.shard()))?;
        model
            .holds
            .get(&id.number())
            .map(|h| (h.amount, h.withdrawal))
    }

    pub fn resolve(&self, op: &AOp) -> Op {
        match op {
            AOp::Register { code: c, scale } => Op::RegisterCurrency {
                code: code(*c),
                scale: [0, 2, 18, 6, 19][usize::from(*scale) % 5],
            },
            AOp::Limit {
                tier,
                code: c,
                limit,
            } => {
                let scale = SCALES[usize::from(*c) % SCALES.len()];
                Op::SetVelocityLimit {
                    tier: Tier::ALL[usize::from(*tier) % 3],
                    currency: code(*c),
                    limit_24h: limit.as_ref().map(|l| self.amount(l, 0, max_of(scale))),
                }
            }
            AOp::SetTier { user, tier } => Op::SetTier {
                user: self.user(*user),
                tier: Tier::ALL[usize::from(*tier) % 3],
            },
            AOp::Open { user, code: c } => Op::OpenWallet {
                user: self.user(*user),
                currency: code(*c),
            },
            AOp::Close(w) => Op::CloseWallet {
                wallet: self.wallet(w),
            },
            AOp::Freeze(w) => Op::FreezeWallet {
                wallet: self.wallet(w),
            },
            AOp::Unfreeze(w) => Op::UnfreezeWallet {
                wallet: self.wallet(w),
            },
            AOp::Deposit { w, amount, cur } => {
                let wallet = self.wallet(w);
                // A deposit's fraction is of the currency's maximum headroom, not of available.
                let amount = match (amount, self.info(wallet)) {
                    (Amt::Frac(p), Some(info)) => info.max / 100 * u128::from(*p),
                    _ => self.wallet_amount(wallet, amount),
                };
                Op::Deposit {
                    wallet,
                    amount,
                    currency: self.cur(wallet, cur),
                }
            }
            AOp::Transfer {
                from,
                to,
                amount,
                cur,
            } => {
                let from = self.wallet(from);
                Op::Transfer {
                    from,
                    to: self.to_wallet(from, to),
                    amount: self.wallet_amount(from, amount),
                    currency: self.cur(from, cur),
                }
            }
            AOp::Hold {
                w,
                amount,
                cur,
                exp,
            } => {
                let wallet = self.wallet(w);
                Op::Hold {
                    wallet,
                    amount: self.wallet_amount(wallet, amount),
                    currency: self.cur(wallet, cur),
                    expires_at_ns: exp.as_ref().map(|e| self.expiry(e)),
                }
            }
            AOp::Withdraw { w, amount, cur } => {
                let wallet = self.wallet(w);
                Op::Withdraw {
                    wallet,
                    amount: self.wallet_amount(wallet, amount),
                    currency: self.cur(wallet, cur),
                }
            }
            AOp::Capture { hold, amount, to } => {
                let hold = self.hold(hold);
                let (held, withdrawal) = self.hold_info(hold).unwrap_or((100, false));
                let held_i = i128::try_from(held).unwrap_or(i128::MAX);
                Op::Capture {
                    hold,
                    amount: amount.as_ref().map(|a| self.amount(a, held_i, held)),
                    to: match to {
                        CapTo::Auto(_) if withdrawal => None,
                        CapTo::Auto(w) | CapTo::To(w) => Some(self.wallet(w)),
                        CapTo::Nobody => None,
                    },
                }
            }
            AOp::Release(hold) => Op::Release {
                hold: self.hold(hold),
            },
            AOp::Exchange {
                from,
                to,
                amount,
                rate: (mantissa, scale),
            } => {
                let from = self.wallet(from);
                let rate = Rate::new(u128::from(*mantissa), *scale)
                    .or_else(|| Rate::new(u128::from(*mantissa % 1000 + 1), 2))
                    .expect("valid rate");
                Op::Exchange {
                    from,
                    to: self.to_wallet(from, to),
                    amount: self.wallet_amount(from, amount),
                    rate,
                }
            }
            AOp::Linked(ops) => Op::Linked(ops.iter().map(|op| self.resolve(op)).collect()),
        }
    }

    /// The shard that owns the operation's first wallet, hold or user.
    pub fn owner(&self, op: &Op) -> Option<ShardId> {
        let shards = self.home_model().cfg.shards;
        let shard = match op {
            Op::RegisterCurrency { .. } | Op::SetVelocityLimit { .. } => return None,
            Op::SetTier { user, .. } | Op::OpenWallet { user, .. } => {
                if *user == UserId::SYSTEM {
                    return None;
                }
                user.shard(shards)
            }
            Op::CloseWallet { wallet }
            | Op::FreezeWallet { wallet }
            | Op::UnfreezeWallet { wallet }
            | Op::Deposit { wallet, .. }
            | Op::Hold { wallet, .. }
            | Op::Withdraw { wallet, .. } => wallet.shard(),
            Op::Transfer { from, .. } | Op::Exchange { from, .. } => from.shard(),
            Op::Capture { hold, .. } | Op::Release { hold } => hold.shard(),
            Op::Linked(ops) => return ops.iter().find_map(|op| self.owner(op)),
        };
        (shard < shards).then_some(shard)
    }
}
