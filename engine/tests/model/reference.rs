//! A naive reference model of one shard, written from the documented semantics and kept as
//! simple as possible: `BTreeMap`s, clones for linked groups, linear scans, and a decimal-digit
//! big number for exchanges. It shares nothing with the engine but the public id types.
//!
//! Two deliberate differences of mechanism (not of meaning) from the engine:
//! - idempotency compares the operations themselves (`Op: PartialEq`), not a fingerprint;
//! - cross-shard legs are deduplicated by transfer id, not by per-shard sequence numbers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use paycore_engine::{
    Applied, Command, CreditLeg, CurrencyCode, CurrencyId, HoldId, IdempotencyKey, Op, Outcome,
    Rate, Reject, SettleLeg, ShardId, ShardMessage, SystemRole, Tier, TransferId, UserId, WalletId,
    WalletStatus,
};

pub const HOUR_NS: u64 = 3_600_000_000_000;

/// Largest balance of a currency: ten integer digits plus `scale` decimals.
pub fn max_of(scale: u8) -> u128 {
    let mut max = 0u128;
    for _ in 0..(10 + u32::from(scale)) {
        max = max * 10 + 9;
    }
    max
}

#[derive(Debug, Clone)]
pub struct MCurrency {
    pub code: CurrencyCode,
    pub scale: u8,
    pub max: u128,
    /// Slots of Settlement, FxHouse, Fees, InTransit.
    pub system: [u64; 4],
    pub limits: [Option<u128>; 3],
}

#[derive(Debug, Clone)]
pub struct MWallet {
    pub user: u128,
    pub currency: usize,
    /// `None` for a user wallet.
    pub role: Option<SystemRole>,
    pub available: i128,
    pub frozen: i128,
    pub version: u64,
    pub status: WalletStatus,
    pub tier: Tier,
    pub obligations: u32,
    pub created: u64,
    pub updated: u64,
    /// Every counted outgoing amount: (hour, amount).
    pub sent: Vec<(u64, u128)>,
}

impl MWallet {
    pub fn balance(&self) -> i128 {
        self.available + self.frozen
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MHold {
    pub slot: u64,
    pub amount: u128,
    pub expires: Option<u64>,
    pub withdrawal: bool,
    pub created: u64,
}

#[derive(Debug, Clone, Copy)]
enum Dest {
    Local(u64),
    Remote(WalletId),
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub shard: ShardId,
    pub shards: u16,
    pub window: u64,
    pub keys_max: usize,
    pub wallets_max: usize,
    pub holds_max: usize,
    pub in_flight_max: usize,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: ModelConfig,
    pub currencies: Vec<MCurrency>,
    /// By slot.
    pub wallets: BTreeMap<u64, MWallet>,
    pub tiers: BTreeMap<u128, Tier>,
    /// Open holds by number.
    pub holds: BTreeMap<u64, MHold>,
    /// Hold numbers `1..=holds_issued` have been used.
    pub holds_issued: u64,
    /// Cross-shard transfers debited here and not settled: transfer -> (slot, amount).
    pub pending: BTreeMap<u128, (u64, u128)>,
    pub credited: BTreeSet<u128>,
    pub settled: BTreeSet<u128>,
    /// Credit decisions not yet confirmed by their origin (see `CreditLeg::settled_through`).
    pub decisions: BTreeMap<u128, Option<Reject>>,
    /// Per destination shard, the highest transfer id settled here.
    pub settled_through: BTreeMap<u16, u128>,
    /// key -> (timestamp, first op, first outcome).
    pub keys: BTreeMap<Vec<u8>, (u64, Op, Outcome)>,
    /// Keys in the order they were recorded (oldest first), for eviction.
    pub key_order: VecDeque<Vec<u8>>,
    pub seq: u64,
    pub now: u64,
    moves: u16,
    /// Messages of the last command.
    pub messages: Vec<ShardMessage>,
}

fn transient(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Rejected(
            Reject::IdempotencyCapacityExceeded | Reject::TransfersInFlightCapacityExceeded
        ) | Outcome::LinkedRejected {
            reason: Reject::IdempotencyCapacityExceeded | Reject::TransfersInFlightCapacityExceeded,
            ..
        }
    )
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Model {
        Model {
            cfg,
            currencies: Vec::new(),
            wallets: BTreeMap::new(),
            tiers: BTreeMap::new(),
            holds: BTreeMap::new(),
            holds_issued: 0,
            pending: BTreeMap::new(),
            credited: BTreeSet::new(),
            settled: BTreeSet::new(),
            decisions: BTreeMap::new(),
            settled_through: BTreeMap::new(),
            keys: BTreeMap::new(),
            key_order: VecDeque::new(),
            seq: 0,
            now: 0,
            moves: 0,
            messages: Vec::new(),
        }
    }

    pub fn wid(&self, slot: u64) -> WalletId {
        WalletId::new(self.cfg.shard, slot)
    }

    pub fn hid(&self, number: u64) -> HoldId {
        HoldId::new(self.cfg.shard, number)
    }

    pub fn wallet(&self, id: WalletId) -> Option<&MWallet> {
        if id.shard() != self.cfg.shard {
            return None;
        }
        self.wallets.get(&id.slot())
    }

    pub fn in_transit(&self, currency: usize) -> u64 {
        self.currencies[currency].system[SystemRole::InTransit as usize]
    }

    // ------------------------------------------------------------------ commands

    pub fn apply(&mut self, seq: u64, ts: u64, command: &Command) -> Outcome {
        assert!(seq > self.seq);
        self.seq = seq;
        self.now = self.now.max(ts);
        self.moves = 0;
        self.messages.clear();
        // Keys past their window are forgotten before any command runs.
        while let Some(oldest) = self.key_order.front() {
            if self.keys[oldest].0.saturating_add(self.cfg.window) > self.now {
                break;
            }
            let oldest = self.key_order.pop_front().expect("front exists");
            self.keys.remove(&oldest);
        }
        self.expire();
        match command {
            Command::Tick => Outcome::Ok(Applied::Done),
            Command::CreditLeg(leg) => self.credit_leg(leg),
            Command::SettleLeg(leg) => self.settle_leg(leg),
            Command::Client { key, op } => self.client(key, op),
        }
    }

    fn expire(&mut self) {
        let due: Vec<u64> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires.is_some_and(|at| at <= self.now))
            .map(|(n, _)| *n)
            .collect();
        for number in due {
            self.close_hold_back(number);
        }
    }

    fn client(&mut self, key: &IdempotencyKey, op: &Op) -> Outcome {
        let now = self.now;
        if let Some((_, first, outcome)) = self.keys.get(key.as_bytes()) {
            return if first == op {
                *outcome
            } else {
                Outcome::Rejected(Reject::IdempotencyKeyReusedWithOtherParams)
            };
        }
        if self.keys.len() >= self.cfg.keys_max {
            // Full: the oldest record makes room.
            let oldest = self
                .key_order
                .pop_front()
                .expect("a full table has an oldest key");
            self.keys.remove(&oldest);
        }
        let outcome = match op {
            Op::Linked(ops) => self.linked(ops),
            op => match self.op(op) {
                Ok(applied) => Outcome::Ok(applied),
                Err(reason) => Outcome::Rejected(reason),
            },
        };
        if !transient(&outcome) {
            self.keys
                .insert(key.as_bytes().to_vec(), (now, op.clone(), outcome));
            self.key_order.push_back(key.as_bytes().to_vec());
        }
        outcome
    }

    fn linked(&mut self, ops: &[Op]) -> Outcome {
        if ops.is_empty() || ops.len() > 64 || ops.iter().any(|op| matches!(op, Op::Linked(_))) {
            return Outcome::Rejected(Reject::LinkedGroupInvalid);
        }
        let saved = self.clone();
        for (index, op) in ops.iter().enumerate() {
            if let Err(reason) = self.op(op) {
                *self = saved;
                return Outcome::LinkedRejected {
                    index: u16::try_from(index).expect("small"),
                    reason,
                };
            }
        }
        Outcome::Ok(Applied::Linked {
            ops: u16::try_from(ops.len()).expect("small"),
        })
    }

    fn op(&mut self, op: &Op) -> Result<Applied, Reject> {
        match op {
            Op::RegisterCurrency { code, scale } => self.register(*code, *scale),
            Op::SetVelocityLimit {
                tier,
                currency,
                limit_24h,
            } => self.set_limit(*tier, *currency, *limit_24h),
            Op::SetTier { user, tier } => self.set_tier(*user, *tier),
            Op::OpenWallet { user, currency } => self.open(*user, *currency),
            Op::CloseWallet { wallet } => self.close(*wallet),
            Op::Deposit {
                wallet,
                amount,
                currency,
            } => self.deposit(*wallet, *amount, *currency),
            Op::Transfer {
                from,
                to,
                amount,
                currency,
            } => self.transfer(*from, *to, *amount, *currency),
            Op::Hold {
                wallet,
                amount,
                currency,
                expires_at_ns,
            } => self.hold(*wallet, *amount, *currency, *expires_at_ns, false),
            Op::Withdraw {
                wallet,
                amount,
                currency,
            } => self.hold(*wallet, *amount, *currency, None, true),
            Op::Capture { hold, amount, to } => self.capture(*hold, *amount, *to),
            Op::Release { hold } => {
                let number = self.open_hold(*hold)?;
                self.close_hold_back(number);
                Ok(Applied::Done)
            }
            Op::FreezeWallet { wallet } => self.freeze(*wallet, true),
            Op::UnfreezeWallet { wallet } => self.freeze(*wallet, false),
            Op::Exchange {
                from,
                to,
                amount,
                rate,
            } => self.exchange(*from, *to, *amount, *rate),
            Op::Linked(_) => Err(Reject::LinkedGroupInvalid),
        }
    }

    // ------------------------------------------------------------------ helpers

    fn currency_of_code(&self, code: CurrencyCode) -> Option<usize> {
        self.currencies.iter().position(|c| c.code == code)
    }

    fn check_user(&self, user: UserId) -> Result<(), Reject> {
        if user.0 == 0 {
            return Err(Reject::UserInvalid);
        }
        if user.shard(self.cfg.shards) != self.cfg.shard {
            return Err(Reject::WrongShard);
        }
        Ok(())
    }

    /// A wallet of another existing shard was routed wrongly; of no shard, it does not exist.
    fn local(&self, id: WalletId) -> Result<u64, Reject> {
        if id.shard() != self.cfg.shard {
            return Err(if id.shard() < self.cfg.shards {
                Reject::WrongShard
            } else {
                Reject::WalletNotFound
            });
        }
        if !self.wallets.contains_key(&id.slot()) {
            return Err(Reject::WalletNotFound);
        }
        Ok(id.slot())
    }

    fn user_slot(&self, id: WalletId) -> Result<u64, Reject> {
        let slot = self.local(id)?;
        if self.wallets[&slot].role.is_some() {
            return Err(Reject::SystemWalletNotAllowed);
        }
        Ok(slot)
    }

    fn w(&self, slot: u64) -> &MWallet {
        &self.wallets[&slot]
    }

    fn wm(&mut self, slot: u64) -> &mut MWallet {
        self.wallets.get_mut(&slot).expect("wallet")
    }

    /// A user wallet's bound is its currency's; a system wallet's is `SYSTEM_BALANCE_MAX`.
    fn max_of_slot(&self, slot: u64) -> u128 {
        match self.w(slot).role {
            None => self.currencies[self.w(slot).currency].max,
            Some(_) => paycore_engine::SYSTEM_BALANCE_MAX as u128,
        }
    }

    fn check_amount(&self, slot: u64, code: CurrencyCode, amount: u128) -> Result<usize, Reject> {
        let currency = self.w(slot).currency;
        if self.currencies[currency].code != code {
            return Err(Reject::CurrencyMismatch);
        }
        if amount == 0 || amount > self.currencies[currency].max {
            return Err(Reject::AmountInvalid);
        }
        Ok(currency)
    }

    fn can_send(&self, slot: u64) -> Result<(), Reject> {
        match self.w(slot).status {
            WalletStatus::Active => Ok(()),
            WalletStatus::Frozen => Err(Reject::WalletFrozen),
            WalletStatus::Closed => Err(Reject::WalletClosed),
        }
    }

    fn has_available(&self, slot: u64, amount: u128) -> Result<(), Reject> {
        if self.w(slot).available < 0 || (self.w(slot).available as u128) < amount {
            return Err(Reject::InsufficientFunds);
        }
        Ok(())
    }

    fn fits_credit(&self, slot: u64, amount: u128) -> Result<(), Reject> {
        let max = self.max_of_slot(slot) as i128;
        if self.w(slot).balance() + amount as i128 > max {
            return Err(Reject::BalanceOverflow);
        }
        Ok(())
    }

    fn fits_system_debit(&self, slot: u64, amount: u128) -> Result<(), Reject> {
        let max = self.max_of_slot(slot) as i128;
        if self.w(slot).balance() - (amount as i128) < -max {
            return Err(Reject::BalanceOverflow);
        }
        Ok(())
    }

    fn limit(&self, slot: u64) -> Option<u128> {
        let w = self.w(slot);
        self.currencies[w.currency].limits[w.tier as usize]
    }

    fn velocity_ok(&self, slot: u64, amount: u128) -> Result<(), Reject> {
        let Some(limit) = self.limit(slot) else {
            return Ok(());
        };
        let hour = self.now / HOUR_NS;
        let sent: u128 = self
            .w(slot)
            .sent
            .iter()
            .filter(|(h, _)| hour - h <= 24)
            .map(|(_, a)| a)
            .sum();
        if sent + amount > limit {
            return Err(Reject::LimitExceeded);
        }
        Ok(())
    }

    fn velocity_add(&mut self, slot: u64, amount: u128) {
        if self.limit(slot).is_some() {
            let hour = self.now / HOUR_NS;
            self.wm(slot).sent.push((hour, amount));
        }
    }

    fn bump(&mut self, slot: u64, available: i128, frozen: i128) {
        let now = self.now;
        let w = self.wm(slot);
        w.available += available;
        w.frozen += frozen;
        w.version += 1;
        w.updated = now;
    }

    fn shift(&mut self, from: u64, to: u64, amount: u128) {
        self.bump(from, -(amount as i128), 0);
        self.bump(to, amount as i128, 0);
    }

    fn set_status(&mut self, slot: u64, status: WalletStatus) {
        let now = self.now;
        let w = self.wm(slot);
        w.status = status;
        w.version += 1;
        w.updated = now;
    }

    fn next_transfer(&mut self) -> TransferId {
        let id = TransferId::new(self.cfg.shard, self.seq, self.moves);
        self.moves += 1;
        id
    }

    fn push_wallet(&mut self, user: u128, currency: usize, role: Option<SystemRole>, tier: Tier) {
        let slot = self.wallets.len() as u64;
        let now = self.now;
        self.wallets.insert(
            slot,
            MWallet {
                user,
                currency,
                role,
                available: 0,
                frozen: 0,
                version: 1,
                status: WalletStatus::Active,
                tier,
                obligations: 0,
                created: now,
                updated: now,
                sent: Vec::new(),
            },
        );
    }

    fn open_wallet_of(&self, user: u128, currency: usize) -> Option<u64> {
        self.wallets
            .iter()
            .find(|(_, w)| {
                w.role.is_none()
                    && w.user == user
                    && w.currency == currency
                    && w.status != WalletStatus::Closed
            })
            .map(|(slot, _)| *slot)
    }

    fn destination(&self, to: WalletId, currency: usize) -> Result<Dest, Reject> {
        if to.shard() != self.cfg.shard {
            if to.shard() >= self.cfg.shards {
                return Err(Reject::WalletNotFound);
            }
            return Ok(Dest::Remote(to));
        }
        let slot = self.local(to)?;
        let w = self.w(slot);
        if w.currency != currency {
            return Err(Reject::CurrencyMismatch);
        }
        if !matches!(w.role, None | Some(SystemRole::Fees)) {
            return Err(Reject::SystemWalletNotAllowed);
        }
        Ok(Dest::Local(slot))
    }

    fn dest_not_closed(&self, dest: Dest) -> Result<(), Reject> {
        if let Dest::Local(slot) = dest
            && self.w(slot).status == WalletStatus::Closed
        {
            return Err(Reject::WalletClosed);
        }
        Ok(())
    }

    fn dest_fits(&self, dest: Dest, currency: usize, amount: u128) -> Result<(), Reject> {
        match dest {
            Dest::Local(slot) => self.fits_credit(slot, amount),
            Dest::Remote(_) => {
                if self.pending.len() >= self.cfg.in_flight_max {
                    return Err(Reject::TransfersInFlightCapacityExceeded);
                }
                self.fits_credit(self.in_transit(currency), amount)
            }
        }
    }

    fn pay(&mut self, from: u64, dest: Dest, amount: u128) -> (TransferId, bool) {
        match dest {
            Dest::Local(to) => {
                self.shift(from, to, amount);
                (self.next_transfer(), false)
            }
            Dest::Remote(to) => {
                let currency = self.w(from).currency;
                let in_transit = self.in_transit(currency);
                self.shift(from, in_transit, amount);
                let transfer = self.next_transfer();
                self.pending.insert(transfer.0, (from, amount));
                self.wm(from).obligations += 1;
                let leg = CreditLeg {
                    transfer,
                    from: self.wid(from),
                    to,
                    amount,
                    currency: self.currencies[currency].code,
                    origin_sequence: self.seq,
                    settled_through: self.settled_through.get(&to.shard()).copied().unwrap_or(0),
                };
                self.messages.push(ShardMessage::Credit {
                    to_shard: to.shard(),
                    leg,
                });
                (transfer, true)
            }
        }
    }

    /// A hold of another existing shard was routed wrongly (see `local`).
    fn open_hold(&self, hold: HoldId) -> Result<u64, Reject> {
        if hold.shard() != self.cfg.shard {
            return Err(if hold.shard() < self.cfg.shards {
                Reject::WrongShard
            } else {
                Reject::HoldNotFound
            });
        }
        let number = hold.number();
        if self.holds.contains_key(&number) {
            Ok(number)
        } else if number >= 1 && number <= self.holds_issued {
            Err(Reject::HoldClosed)
        } else {
            Err(Reject::HoldNotFound)
        }
    }

    /// Closes a hold and returns its whole amount to available.
    fn close_hold_back(&mut self, number: u64) {
        let hold = self.holds.remove(&number).expect("open hold");
        self.wm(hold.slot).obligations -= 1;
        self.bump(hold.slot, hold.amount as i128, -(hold.amount as i128));
    }

    // ------------------------------------------------------------------ operations

    fn register(&mut self, code: CurrencyCode, scale: u8) -> Result<Applied, Reject> {
        if scale > 18 {
            return Err(Reject::ScaleInvalid);
        }
        if self.currency_of_code(code).is_some() {
            return Err(Reject::CurrencyExists);
        }
        if self.currencies.len() >= 1024 {
            return Err(Reject::CurrencyCapacityExceeded);
        }
        if self.wallets.len() + 4 > self.cfg.wallets_max {
            return Err(Reject::WalletCapacityExceeded);
        }
        let currency = self.currencies.len();
        let first = self.wallets.len() as u64;
        for role in [
            SystemRole::Settlement,
            SystemRole::FxHouse,
            SystemRole::Fees,
            SystemRole::InTransit,
        ] {
            self.push_wallet(0, currency, Some(role), Tier::Unverified);
        }
        self.currencies.push(MCurrency {
            code,
            scale,
            max: max_of(scale),
            system: [first, first + 1, first + 2, first + 3],
            limits: [None; 3],
        });
        Ok(Applied::CurrencyRegistered(CurrencyId(
            u16::try_from(currency).expect("few currencies"),
        )))
    }

    fn set_limit(
        &mut self,
        tier: Tier,
        code: CurrencyCode,
        limit: Option<u128>,
    ) -> Result<Applied, Reject> {
        let currency = self.currency_of_code(code).ok_or(Reject::CurrencyUnknown)?;
        if let Some(limit) = limit
            && (limit == 0 || limit > self.currencies[currency].max)
        {
            return Err(Reject::LimitInvalid);
        }
        self.currencies[currency].limits[tier as usize] = limit;
        Ok(Applied::Done)
    }

    fn set_tier(&mut self, user: UserId, tier: Tier) -> Result<Applied, Reject> {
        self.check_user(user)?;
        self.tiers.insert(user.0, tier);
        for w in self.wallets.values_mut() {
            if w.role.is_none() && w.user == user.0 && w.status != WalletStatus::Closed {
                w.tier = tier;
            }
        }
        Ok(Applied::Done)
    }

    pub fn tier(&self, user: u128) -> Tier {
        self.tiers.get(&user).copied().unwrap_or(Tier::Unverified)
    }

    fn open(&mut self, user: UserId, code: CurrencyCode) -> Result<Applied, Reject> {
        self.check_user(user)?;
        let currency = self.currency_of_code(code).ok_or(Reject::CurrencyUnknown)?;
        if self.open_wallet_of(user.0, currency).is_some() {
            return Err(Reject::WalletExists);
        }
        if self.wallets.len() >= self.cfg.wallets_max {
            return Err(Reject::WalletCapacityExceeded);
        }
        let slot = self.wallets.len() as u64;
        self.push_wallet(user.0, currency, None, self.tier(user.0));
        Ok(Applied::WalletOpened(self.wid(slot)))
    }

    fn close(&mut self, wallet: WalletId) -> Result<Applied, Reject> {
        let slot = self.user_slot(wallet)?;
        match self.w(slot).status {
            WalletStatus::Closed => return Err(Reject::WalletClosed),
            WalletStatus::Frozen => return Err(Reject::WalletFrozen),
            WalletStatus::Active => {}
        }
        if self.w(slot).balance() != 0 {
            return Err(Reject::BalanceNotZero);
        }
        if self.w(slot).obligations > 0 {
            return Err(Reject::WalletHasOpenHolds);
        }
        self.set_status(slot, WalletStatus::Closed);
        Ok(Applied::Done)
    }

    fn freeze(&mut self, wallet: WalletId, freeze: bool) -> Result<Applied, Reject> {
        let slot = self.user_slot(wallet)?;
        let target = match (self.w(slot).status, freeze) {
            (WalletStatus::Closed, _) => return Err(Reject::WalletClosed),
            (WalletStatus::Active, true) => WalletStatus::Frozen,
            (WalletStatus::Frozen, false) => WalletStatus::Active,
            _ => return Err(Reject::WalletStatusUnchanged),
        };
        self.set_status(slot, target);
        Ok(Applied::Done)
    }

    fn deposit(
        &mut self,
        wallet: WalletId,
        amount: u128,
        code: CurrencyCode,
    ) -> Result<Applied, Reject> {
        let slot = self.user_slot(wallet)?;
        let currency = self.check_amount(slot, code, amount)?;
        if self.w(slot).status == WalletStatus::Closed {
            return Err(Reject::WalletClosed);
        }
        let settlement = self.currencies[currency].system[SystemRole::Settlement as usize];
        self.fits_system_debit(settlement, amount)?;
        self.fits_credit(slot, amount)?;
        self.shift(settlement, slot, amount);
        Ok(Applied::Transferred {
            transfer: self.next_transfer(),
            pending: false,
        })
    }

    fn transfer(
        &mut self,
        from: WalletId,
        to: WalletId,
        amount: u128,
        code: CurrencyCode,
    ) -> Result<Applied, Reject> {
        let slot = self.user_slot(from)?;
        let currency = self.check_amount(slot, code, amount)?;
        if from == to {
            return Err(Reject::SameWallet);
        }
        let dest = self.destination(to, currency)?;
        self.can_send(slot)?;
        self.dest_not_closed(dest)?;
        self.has_available(slot, amount)?;
        self.velocity_ok(slot, amount)?;
        self.dest_fits(dest, currency, amount)?;
        self.velocity_add(slot, amount);
        let (transfer, pending) = self.pay(slot, dest, amount);
        Ok(Applied::Transferred { transfer, pending })
    }

    fn hold(
        &mut self,
        wallet: WalletId,
        amount: u128,
        code: CurrencyCode,
        expires: Option<u64>,
        withdrawal: bool,
    ) -> Result<Applied, Reject> {
        let slot = self.user_slot(wallet)?;
        self.check_amount(slot, code, amount)?;
        self.can_send(slot)?;
        if expires.is_some_and(|at| at <= self.now) {
            return Err(Reject::ExpiryInvalid);
        }
        self.has_available(slot, amount)?;
        self.velocity_ok(slot, amount)?;
        if self.holds.len() >= self.cfg.holds_max {
            return Err(Reject::HoldCapacityExceeded);
        }
        self.velocity_add(slot, amount);
        self.holds_issued += 1;
        let number = self.holds_issued;
        self.bump(slot, -(amount as i128), amount as i128);
        self.wm(slot).obligations += 1;
        self.holds.insert(
            number,
            MHold {
                slot,
                amount,
                expires,
                withdrawal,
                created: self.now,
            },
        );
        Ok(Applied::HoldPlaced(self.hid(number)))
    }

    fn capture(
        &mut self,
        hold: HoldId,
        amount: Option<u128>,
        to: Option<WalletId>,
    ) -> Result<Applied, Reject> {
        let number = self.open_hold(hold)?;
        let held = self.holds[&number].clone();
        let captured = amount.unwrap_or(held.amount);
        if captured == 0 || captured > held.amount {
            return Err(Reject::CaptureAmountInvalid);
        }
        let currency = self.w(held.slot).currency;
        let dest = match (held.withdrawal, to) {
            (true, None) => {
                Dest::Local(self.currencies[currency].system[SystemRole::Settlement as usize])
            }
            (false, Some(to)) if to == self.wid(held.slot) => return Err(Reject::SameWallet),
            (false, Some(to)) => self.destination(to, currency)?,
            _ => return Err(Reject::CaptureDestinationInvalid),
        };
        // A frozen wallet's holds can still be captured.
        self.dest_not_closed(dest)?;
        self.dest_fits(dest, currency, captured)?;
        self.close_hold_back(number);
        let (transfer, pending) = self.pay(held.slot, dest, captured);
        Ok(Applied::Transferred { transfer, pending })
    }

    fn exchange(
        &mut self,
        from: WalletId,
        to: WalletId,
        amount: u128,
        rate: Rate,
    ) -> Result<Applied, Reject> {
        let source = self.user_slot(from)?;
        if from == to {
            return Err(Reject::SameWallet);
        }
        if to.shard() != self.cfg.shard {
            return Err(Reject::ExchangeWalletsInvalid);
        }
        let target = self.user_slot(to)?;
        let (s, t) = (self.w(source).clone(), self.w(target).clone());
        if s.user != t.user || s.currency == t.currency {
            return Err(Reject::ExchangeWalletsInvalid);
        }
        let (sc, tc) = (
            self.currencies[s.currency].clone(),
            self.currencies[t.currency].clone(),
        );
        if amount == 0 || amount > sc.max {
            return Err(Reject::AmountInvalid);
        }
        self.can_send(source)?;
        if t.status == WalletStatus::Closed {
            return Err(Reject::WalletClosed);
        }
        let credited = convert_exact(amount, rate.mantissa(), rate.scale(), sc.scale, tc.scale);
        if credited == 0 {
            return Err(Reject::ExchangeAmountTooSmall);
        }
        if credited > tc.max {
            return Err(Reject::AmountInvalid);
        }
        self.has_available(source, amount)?;
        let fx_source = sc.system[SystemRole::FxHouse as usize];
        let fx_target = tc.system[SystemRole::FxHouse as usize];
        self.fits_credit(fx_source, amount)?;
        self.fits_system_debit(fx_target, credited)?;
        self.fits_credit(target, credited)?;
        self.shift(source, fx_source, amount);
        let transfer = self.next_transfer();
        self.shift(fx_target, target, credited);
        self.next_transfer();
        Ok(Applied::Exchanged { transfer, credited })
    }

    // ------------------------------------------------------------------ legs

    fn credit_leg(&mut self, leg: &CreditLeg) -> Outcome {
        let origin = leg.transfer.shard();
        if origin >= self.cfg.shards || origin == self.cfg.shard {
            return Outcome::Rejected(Reject::LegUnknown);
        }
        // The origin confirmed settling everything of its own up to `settled_through`.
        let origin_first = TransferId::new(origin, 0, 0).0;
        self.decisions
            .retain(|t, _| !(*t >= origin_first && *t <= leg.settled_through));
        if !self.credited.insert(leg.transfer.0) {
            if let Some(refused) = self.decisions.get(&leg.transfer.0) {
                self.messages.push(ShardMessage::Settle {
                    to_shard: origin,
                    leg: SettleLeg {
                        transfer: leg.transfer,
                        from_shard: self.cfg.shard,
                        from_sequence: self.seq,
                        refused: *refused,
                    },
                });
            }
            return Outcome::Rejected(Reject::LegDuplicate);
        }
        let refused = self.credit_checks(leg).err();
        self.decisions.insert(leg.transfer.0, refused);
        self.messages.push(ShardMessage::Settle {
            to_shard: origin,
            leg: SettleLeg {
                transfer: leg.transfer,
                from_shard: self.cfg.shard,
                from_sequence: self.seq,
                refused,
            },
        });
        if let Some(reason) = refused {
            return Outcome::Rejected(reason);
        }
        let to = leg.to.slot();
        let in_transit = self.in_transit(self.w(to).currency);
        self.shift(in_transit, to, leg.amount);
        Outcome::Ok(Applied::Transferred {
            transfer: leg.transfer,
            pending: false,
        })
    }

    fn credit_checks(&self, leg: &CreditLeg) -> Result<(), Reject> {
        if leg.to.shard() != self.cfg.shard {
            return Err(Reject::WrongShard);
        }
        let slot = self.local(leg.to)?;
        let w = self.w(slot);
        let currency = &self.currencies[w.currency];
        if currency.code != leg.currency {
            return Err(Reject::CurrencyMismatch);
        }
        if leg.amount == 0 || leg.amount > currency.max {
            return Err(Reject::AmountInvalid);
        }
        if !matches!(w.role, None | Some(SystemRole::Fees)) {
            return Err(Reject::SystemWalletNotAllowed);
        }
        if w.status == WalletStatus::Closed {
            return Err(Reject::WalletClosed);
        }
        self.fits_system_debit(self.in_transit(w.currency), leg.amount)?;
        self.fits_credit(slot, leg.amount)
    }

    fn settle_leg(&mut self, leg: &SettleLeg) -> Outcome {
        let from = leg.from_shard;
        if from >= self.cfg.shards || from == self.cfg.shard {
            return Outcome::Rejected(Reject::LegUnknown);
        }
        if self.settled.contains(&leg.transfer.0) {
            return Outcome::Rejected(Reject::LegDuplicate);
        }
        let Some((slot, amount)) = self.pending.remove(&leg.transfer.0) else {
            return Outcome::Rejected(Reject::LegUnknown);
        };
        self.settled.insert(leg.transfer.0);
        let through = self.settled_through.entry(from).or_insert(0);
        *through = (*through).max(leg.transfer.0);
        self.wm(slot).obligations -= 1;
        if leg.refused.is_some() {
            let in_transit = self.in_transit(self.w(slot).currency);
            self.shift(in_transit, slot, amount);
            self.next_transfer();
        }
        Outcome::Ok(Applied::Done)
    }
}

// ---------------------------------------------------------------------- exact conversion

/// Little-endian decimal digits of `value`.
fn digits(mut value: u128) -> Vec<u32> {
    let mut out = Vec::new();
    while value > 0 {
        out.push((value % 10) as u32);
        value /= 10;
    }
    out
}

/// `floor(amount * mantissa / 10^rate_scale * 10^to_scale / 10^from_scale)`, computed on
/// decimal digit strings (so shifting by powers of ten is adding or dropping digits), saturating
/// at `u128::MAX`.
pub fn convert_exact(
    amount: u128,
    mantissa: u128,
    rate_scale: u8,
    from_scale: u8,
    to_scale: u8,
) -> u128 {
    let (a, m) = (digits(amount), digits(mantissa));
    let mut product = vec![0u32; a.len() + m.len() + 1];
    for (i, x) in a.iter().enumerate() {
        let mut carry = 0;
        for (j, y) in m.iter().enumerate() {
            let cell = product[i + j] + x * y + carry;
            product[i + j] = cell % 10;
            carry = cell / 10;
        }
        let mut k = i + m.len();
        while carry > 0 {
            let cell = product[k] + carry;
            product[k] = cell % 10;
            carry = cell / 10;
            k += 1;
        }
    }
    let mut shifted = vec![0u32; usize::from(to_scale)];
    shifted.extend(product);
    let drop = usize::from(rate_scale) + usize::from(from_scale);
    let kept = if drop >= shifted.len() {
        &[][..]
    } else {
        &shifted[drop..]
    };
    let mut value: u128 = 0;
    for d in kept.iter().rev() {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(*d)))
        {
            Some(v) => value = v,
            None => return u128::MAX,
        }
    }
    value
}
