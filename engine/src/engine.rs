//! The engine: one shard's ledger and the deterministic function that applies commands to it.
//!
//! `apply(sequence, timestamp, command)` is the only way state changes. Each operation runs in
//! phases: look up and validate everything (returning a [`Reject`] on the first failed check,
//! in a documented order), then apply, which cannot fail. A linked group applies its operations
//! one after another with an undo log, and rolls back if one is rejected.

use hashbrown::{HashMap, HashTable};

use crate::command::{
    Command, CreditLeg, IdempotencyKey, LINKED_OPS_MAX, Op, Rate, SettleLeg, Tier,
};
use crate::currency::{
    CURRENCIES_MAX, CURRENCY_SCALE_MAX, CurrencyCode, CurrencyId, minor_units_max,
};
use crate::digest::Digest;
use crate::event::{Effects, Event, ReleaseReason, ShardMessage, TransferKind, TransferStatus};
use crate::hashing::{FixedState, user_currency_hash};
use crate::hold::{Hold, Holds};
use crate::idempotency::IdempotencyTable;
use crate::ids::{HoldId, SHARD_COUNT_MAX, ShardId, TransferId, UserId, WalletId};
use crate::outcome::{Applied, Outcome, Reject};
use crate::velocity::{BUCKET_NS, VelocityWindow};
use crate::wallet::{Hot, NO_VELOCITY, SystemRole, Wallet, WalletKind, WalletStatus, Wallets};

/// Bound of a system wallet's balance, in minor units, either sign. System wallets accumulate a
/// shard's lifetime net flows (settlement: all deposits less withdrawals; in-transit: all
/// outgoing less incoming cross-shard transfers), so they get the room of i128 rather than the
/// user bound of DECIMAL(28, 18): 10^36 minor units is never reached in practice, and sums over
/// any number of shards still fit in i128.
pub const SYSTEM_BALANCE_MAX: i128 = 10i128.pow(36);

/// Nanoseconds in 24 hours: the default idempotency window.
pub const DAY_NS: u64 = 24 * 3_600 * 1_000_000_000;

/// Settings fixed for the life of a shard. A replay must use the same values (they decide
/// outcomes), so the node stores them beside the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub shard: ShardId,
    pub shard_count: u16,
    /// How long (in command time) an idempotency key is remembered.
    pub idempotency_window_ns: u64,
    pub idempotency_entries_max: usize,
    pub wallets_max: usize,
    pub holds_max: usize,
    pub transfers_in_flight_max: usize,
    /// Seed of the in-memory indexes. Changes no outcome; pick it at random per process.
    pub hash_seed: u64,
    /// Idempotency entries (and their index) allocated up front, so the table never grows —
    /// and never pauses the writer to copy and rehash — below this size. Changes no outcome;
    /// costs address space at once and memory as it fills. 0: grow on demand.
    pub idempotency_entries_reserve: usize,
    /// Wallet slots (and user-index entries) allocated up front; like the above.
    pub wallets_reserve: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shard: 0,
            shard_count: 1,
            idempotency_window_ns: DAY_NS,
            idempotency_entries_max: 16 << 20,
            wallets_max: 64 << 20,
            holds_max: 4 << 20,
            transfers_in_flight_max: 1 << 20,
            hash_seed: 0,
            idempotency_entries_reserve: 0,
            wallets_reserve: 0,
        }
    }
}

/// A registered currency and its per-shard system wallets and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyInfo {
    pub code: CurrencyCode,
    pub scale: u8,
    /// Largest balance or amount, in minor units.
    pub max: u128,
    /// Slots of the system wallets, indexed by `SystemRole as usize`.
    pub(crate) system: [u32; 4],
    /// Outgoing limit per wallet over 24 h, indexed by `Tier::index`.
    pub(crate) limits_24h: [Option<u128>; 3],
}

impl CurrencyInfo {
    pub fn limit_24h(&self, tier: Tier) -> Option<u128> {
        self.limits_24h[tier.index()]
    }
}

/// A cross-shard transfer debited here and not yet settled by its destination shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingLeg {
    pub(crate) from_slot: u32,
    pub(crate) amount: u128,
    /// The leg as sent, to send it again after a restart.
    pub(crate) leg: CreditLeg,
}

/// How to undo one change, for linked groups.
#[derive(Debug, Clone)]
enum Undo {
    Wallet {
        slot: u32,
        before: Wallet,
    },
    WalletPushed,
    IndexInserted {
        slot: u32,
    },
    IndexRemoved {
        slot: u32,
    },
    HoldOpened(HoldId),
    HoldClosed(Hold),
    VelocityPushed,
    VelocityAdded {
        index: u32,
        hour: u64,
        amount: u128,
    },
    PendingInserted(TransferId),
    Tier {
        user: UserId,
        before: Option<Tier>,
    },
    CurrencyPushed,
    Limit {
        currency: u16,
        tier: Tier,
        before: Option<u128>,
    },
}

/// One shard's ledger.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) currencies: Vec<CurrencyInfo>,
    pub(crate) wallets: Wallets,
    /// Open (not closed) user wallets by (user, currency); holds slots.
    pub(crate) user_index: HashTable<u32>,
    pub(crate) velocity: Vec<VelocityWindow>,
    /// Whether any currency has a velocity limit for any tier: without one, a payment skips
    /// the limit lookups (most shards configure none). Kept by [`Engine::refresh_limits_set`].
    pub(crate) limits_set: bool,
    /// Users whose tier is not the default.
    pub(crate) tiers: HashMap<u128, Tier, FixedState>,
    pub(crate) holds: Holds,
    pub(crate) pending: HashMap<u128, PendingLeg, FixedState>,
    /// Per origin shard, the transfer id of the last credit leg applied (ids sort in the
    /// origin's commit order, and one command may send several legs to one shard).
    pub(crate) credits_seen: Vec<u128>,
    /// Per destination shard, the sequence of the last settle message applied.
    pub(crate) settles_seen: Vec<u64>,
    /// Per destination shard, the highest transfer id whose settlement this shard applied
    /// (sent along with every credit leg so the destination can forget older decisions).
    pub(crate) settled_through: Vec<u128>,
    /// Credit decisions (refusal reason, or `None` for credited) of legs from other shards that
    /// their origin has not yet confirmed settling; answers a leg sent again after a restart.
    pub(crate) decisions: std::collections::BTreeMap<u128, Option<Reject>>,
    pub(crate) idempotency: IdempotencyTable,
    pub(crate) last_sequence: u64,
    pub(crate) last_timestamp_ns: u64,
    /// Movements made so far by the command being applied (the index of the next TransferId).
    movements: u16,
    /// `Some` while a linked group is being applied.
    undo: Option<Vec<Undo>>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        assert!(config.shard_count > 0 && config.shard_count <= SHARD_COUNT_MAX);
        assert!(config.shard < config.shard_count);
        assert!(
            config.wallets_max <= u32::MAX as usize,
            "wallet slots are u32"
        );
        let shards = usize::from(config.shard_count);
        let wallets_reserve = config.wallets_reserve.min(config.wallets_max);
        let wallets = Wallets::with_capacity(wallets_reserve, wallets_reserve > 0);
        Engine {
            currencies: Vec::new(),
            wallets,
            user_index: HashTable::with_capacity(wallets_reserve),
            velocity: Vec::new(),
            limits_set: false,
            tiers: HashMap::with_hasher(FixedState(config.hash_seed)),
            holds: Holds::new(config.hash_seed),
            pending: HashMap::with_hasher(FixedState(config.hash_seed)),
            credits_seen: vec![0u128; shards],
            settles_seen: vec![0; shards],
            settled_through: vec![0u128; shards],
            decisions: std::collections::BTreeMap::new(),
            idempotency: IdempotencyTable::new(
                config.idempotency_window_ns,
                config.idempotency_entries_max,
                config.hash_seed,
            )
            .with_reserve(config.idempotency_entries_reserve),
            last_sequence: 0,
            last_timestamp_ns: 0,
            movements: 0,
            undo: None,
            config,
        }
    }

    /// Allocates the room the config reserves (`idempotency_entries_reserve`,
    /// `wallets_reserve`) on an engine that may hold state already — a clone keeps only the
    /// room it uses, so a replica cloned from a reserved engine calls this to stay pause-free.
    /// Changes no state.
    pub fn reserve_as_configured(&mut self) {
        let wallets = self.config.wallets_reserve.min(self.config.wallets_max);
        self.wallets.reserve_exact(wallets);
        let users = wallets.saturating_sub(self.user_index.len());
        if users > 0 {
            let (wallets, seed) = (&self.wallets, self.config.hash_seed);
            self.user_index.reserve(users, |&s| {
                let w = &wallets[s as usize];
                user_currency_hash(seed, w.user.0, w.currency.0)
            });
        }
        self.idempotency
            .reserve(self.config.idempotency_entries_reserve);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Applies one command at `sequence` (strictly greater than the last) and `timestamp_ns`
    /// (a timestamp earlier than the last is taken as the last: time never goes back).
    ///
    /// Events and cross-shard messages are appended to `effects`.
    pub fn apply(
        &mut self,
        sequence: u64,
        timestamp_ns: u64,
        command: &Command,
        effects: &mut Effects,
    ) -> Outcome {
        assert!(
            sequence > self.last_sequence,
            "sequence numbers must increase"
        );
        assert!(self.undo.is_none());
        self.last_sequence = sequence;
        self.last_timestamp_ns = self.last_timestamp_ns.max(timestamp_ns);
        self.movements = 0;
        self.idempotency.evict(self.last_timestamp_ns);
        self.expire_holds(effects);
        match command {
            Command::Tick => Outcome::Ok(Applied::Done),
            Command::CreditLeg(leg) => self.apply_credit_leg(leg, effects),
            Command::SettleLeg(leg) => self.apply_settle_leg(leg, effects),
            Command::Client { key, op } => self.apply_client(key, op, effects),
        }
    }

    fn apply_client(&mut self, key: &IdempotencyKey, op: &Op, effects: &mut Effects) -> Outcome {
        let now = self.last_timestamp_ns;
        let mut digest = Digest::fingerprint();
        op.digest(&mut digest);
        let params = digest.finish_64();
        let key_hash = self.idempotency.hash(key.as_bytes());
        if let Some(entry) = self.idempotency.find_hashed(key, key_hash) {
            return if entry.params == params {
                entry.outcome
            } else {
                Outcome::Rejected(Reject::IdempotencyKeyReusedWithOtherParams)
            };
        }
        if self.idempotency.is_full() {
            // Bounded memory: the oldest record makes room (see docs/design.md §8).
            self.idempotency.evict_oldest();
        }
        let outcome = match op {
            Op::Linked(ops) => self.apply_linked(ops, effects),
            op => match self.apply_op(op, effects) {
                Ok(applied) => Outcome::Ok(applied),
                Err(reject) => Outcome::Rejected(reject),
            },
        };
        if !outcome.rejection().is_some_and(Reject::is_transient) {
            self.idempotency
                .insert_hashed(key, key_hash, params, now, outcome);
        }
        outcome
    }

    fn apply_linked(&mut self, ops: &[Op], effects: &mut Effects) -> Outcome {
        if ops.is_empty()
            || ops.len() > LINKED_OPS_MAX
            || ops.iter().any(|op| matches!(op, Op::Linked(_)))
        {
            return Outcome::Rejected(Reject::LinkedGroupInvalid);
        }
        let events_before = effects.events.len();
        let messages_before = effects.messages.len();
        let next_hold_before = self.holds.next_number;
        self.undo = Some(Vec::new());
        for (index, op) in ops.iter().enumerate() {
            if let Err(reason) = self.apply_op(op, effects) {
                self.roll_back();
                self.holds.next_number = next_hold_before;
                self.movements = 0;
                effects.events.truncate(events_before);
                effects.messages.truncate(messages_before);
                // index < LINKED_OPS_MAX (64) fits in u16.
                return Outcome::LinkedRejected {
                    index: index as u16,
                    reason,
                };
            }
        }
        self.undo = None;
        Outcome::Ok(Applied::Linked {
            ops: ops.len() as u16,
        })
    }

    fn apply_op(&mut self, op: &Op, effects: &mut Effects) -> Result<Applied, Reject> {
        match *op {
            Op::RegisterCurrency { code, scale } => self.register_currency(code, scale, effects),
            Op::SetVelocityLimit {
                tier,
                currency,
                limit_24h,
            } => self.set_velocity_limit(tier, currency, limit_24h),
            Op::SetTier { user, tier } => self.set_tier(user, tier, effects),
            Op::OpenWallet { user, currency } => self.open_wallet(user, currency, effects),
            Op::CloseWallet { wallet } => self.close_wallet(wallet, effects),
            Op::Deposit {
                wallet,
                amount,
                currency,
            } => self.deposit(wallet, amount, currency, effects),
            Op::Transfer {
                from,
                to,
                amount,
                currency,
            } => self.transfer(from, to, amount, currency, effects),
            Op::Hold {
                wallet,
                amount,
                currency,
                expires_at_ns,
            } => self.place_hold(wallet, amount, currency, expires_at_ns, false, effects),
            Op::Withdraw {
                wallet,
                amount,
                currency,
            } => self.place_hold(wallet, amount, currency, None, true, effects),
            Op::Capture { hold, amount, to } => self.capture(hold, amount, to, effects),
            Op::Release { hold } => self.release(hold, effects),
            Op::FreezeWallet { wallet } => self.set_frozen(wallet, true, effects),
            Op::UnfreezeWallet { wallet } => self.set_frozen(wallet, false, effects),
            Op::Exchange {
                from,
                to,
                amount,
                rate,
            } => self.exchange(from, to, amount, rate, effects),
            Op::Linked(_) => Err(Reject::LinkedGroupInvalid),
        }
    }

    // ---------------------------------------------------------------- operations

    fn register_currency(
        &mut self,
        code: CurrencyCode,
        scale: u8,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        if scale > CURRENCY_SCALE_MAX {
            return Err(Reject::ScaleInvalid);
        }
        if self.currency_id(code).is_some() {
            return Err(Reject::CurrencyExists);
        }
        if self.currencies.len() >= CURRENCIES_MAX {
            return Err(Reject::CurrencyCapacityExceeded);
        }
        if self.wallets.len() + SystemRole::ALL.len() > self.config.wallets_max {
            return Err(Reject::WalletCapacityExceeded);
        }
        // After this point, the registration must succeed.
        let currency = CurrencyId(self.currencies.len() as u16);
        let mut system = [0u32; 4];
        for role in SystemRole::ALL {
            system[role as usize] = self.push_wallet(
                UserId::SYSTEM,
                currency,
                WalletKind::System(role),
                Tier::default(),
            );
        }
        self.currencies.push(CurrencyInfo {
            code,
            scale,
            max: minor_units_max(scale),
            system,
            limits_24h: [None; 3],
        });
        self.record(Undo::CurrencyPushed);
        effects.event(Event::CurrencyRegistered { currency, scale });
        Ok(Applied::CurrencyRegistered(currency))
    }

    fn set_velocity_limit(
        &mut self,
        tier: Tier,
        currency: CurrencyCode,
        limit_24h: Option<u128>,
    ) -> Result<Applied, Reject> {
        let currency = self.currency_id(currency).ok_or(Reject::CurrencyUnknown)?;
        let info = &self.currencies[usize::from(currency.0)];
        if let Some(limit) = limit_24h
            && (limit == 0 || limit > info.max)
        {
            return Err(Reject::LimitInvalid);
        }
        let before = info.limits_24h[tier.index()];
        self.record(Undo::Limit {
            currency: currency.0,
            tier,
            before,
        });
        self.currencies[usize::from(currency.0)].limits_24h[tier.index()] = limit_24h;
        self.refresh_limits_set();
        Ok(Applied::Done)
    }

    fn set_tier(
        &mut self,
        user: UserId,
        tier: Tier,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        self.check_user(user)?;
        let before = self.tiers.get(&user.0).copied();
        self.record(Undo::Tier { user, before });
        if tier == Tier::default() {
            self.tiers.remove(&user.0);
        } else {
            self.tiers.insert(user.0, tier);
        }
        for currency in 0..self.currencies.len() {
            if let Some(slot) = self.find_user_wallet(user, CurrencyId(currency as u16)) {
                self.record_wallet(slot);
                self.wallets[slot as usize].tier = tier;
            }
        }
        effects.event(Event::TierChanged { user, tier });
        Ok(Applied::Done)
    }

    fn open_wallet(
        &mut self,
        user: UserId,
        currency: CurrencyCode,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        self.check_user(user)?;
        let currency = self.currency_id(currency).ok_or(Reject::CurrencyUnknown)?;
        if self.find_user_wallet(user, currency).is_some() {
            return Err(Reject::WalletExists);
        }
        if self.wallets.len() >= self.config.wallets_max {
            return Err(Reject::WalletCapacityExceeded);
        }
        // After this point, opening must succeed.
        let tier = self.tiers.get(&user.0).copied().unwrap_or_default();
        let slot = self.push_wallet(user, currency, WalletKind::User, tier);
        let wallet = self.wallet_id(slot);
        effects.event(Event::WalletOpened {
            wallet,
            user,
            currency,
        });
        Ok(Applied::WalletOpened(wallet))
    }

    fn close_wallet(&mut self, wallet: WalletId, effects: &mut Effects) -> Result<Applied, Reject> {
        let slot = self.user_wallet_slot(wallet)?;
        let w = &self.wallets[slot as usize];
        match w.status {
            WalletStatus::Closed => return Err(Reject::WalletClosed),
            WalletStatus::Frozen => return Err(Reject::WalletFrozen),
            WalletStatus::Active => {}
        }
        if w.balance() != 0 {
            return Err(Reject::BalanceNotZero);
        }
        if self.wallets.cold(slot).open_obligations > 0 {
            return Err(Reject::WalletHasOpenHolds);
        }
        // After this point, closing must succeed.
        let (user, currency) = (w.user, w.currency);
        self.index_remove(slot, user, currency);
        self.set_status(slot, WalletStatus::Closed, effects);
        Ok(Applied::Done)
    }

    fn set_frozen(
        &mut self,
        wallet: WalletId,
        frozen: bool,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        let slot = self.user_wallet_slot(wallet)?;
        let status = self.wallets[slot as usize].status;
        let target = match (status, frozen) {
            (WalletStatus::Closed, _) => return Err(Reject::WalletClosed),
            (WalletStatus::Active, true) => WalletStatus::Frozen,
            (WalletStatus::Frozen, false) => WalletStatus::Active,
            _ => return Err(Reject::WalletStatusUnchanged),
        };
        self.set_status(slot, target, effects);
        Ok(Applied::Done)
    }

    fn deposit(
        &mut self,
        wallet: WalletId,
        amount: u128,
        currency: CurrencyCode,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        let slot = self.user_wallet_slot(wallet)?;
        let cur = self.check_amount(slot, currency, amount)?;
        if self.wallets[slot as usize].status == WalletStatus::Closed {
            return Err(Reject::WalletClosed);
        }
        let settlement = self.system_slot(cur, SystemRole::Settlement);
        self.check_debit_system(settlement, amount)?;
        self.check_credit(slot, amount)?;
        // After this point, the deposit must succeed.
        self.move_available(settlement, slot, amount, effects);
        let transfer = self.post(TransferKind::Deposit, settlement, slot, amount, effects);
        Ok(Applied::Transferred {
            transfer,
            pending: false,
        })
    }

    fn transfer(
        &mut self,
        from: WalletId,
        to: WalletId,
        amount: u128,
        currency: CurrencyCode,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        let from_slot = self.user_wallet_slot(from)?;
        let cur = self.check_amount(from_slot, currency, amount)?;
        if from == to {
            return Err(Reject::SameWallet);
        }
        let destination = self.destination(to, cur)?;
        self.check_can_send(from_slot)?;
        if let Destination::Local(to_slot) = destination
            && self.wallets[to_slot as usize].status == WalletStatus::Closed
        {
            return Err(Reject::WalletClosed);
        }
        self.check_available(from_slot, amount)?;
        self.check_velocity(from_slot, amount)?;
        self.check_destination_credit(destination, cur, amount)?;
        // After this point, the transfer must succeed.
        self.add_velocity(from_slot, amount);
        let (transfer, pending) = self.pay(
            TransferKind::Transfer,
            from_slot,
            destination,
            amount,
            effects,
        );
        Ok(Applied::Transferred { transfer, pending })
    }

    fn place_hold(
        &mut self,
        wallet: WalletId,
        amount: u128,
        currency: CurrencyCode,
        expires_at_ns: Option<u64>,
        withdrawal: bool,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        let slot = self.user_wallet_slot(wallet)?;
        self.check_amount(slot, currency, amount)?;
        self.check_can_send(slot)?;
        if expires_at_ns.is_some_and(|at| at <= self.last_timestamp_ns) {
            return Err(Reject::ExpiryInvalid);
        }
        self.check_available(slot, amount)?;
        self.check_velocity(slot, amount)?;
        if self.holds.len() >= self.config.holds_max {
            return Err(Reject::HoldCapacityExceeded);
        }
        // After this point, the hold must succeed.
        self.add_velocity(slot, amount);
        let id = HoldId::new(self.config.shard, self.holds.next_number);
        self.holds.next_number += 1;
        let signed = amount as i128; // amount <= max < 2^94
        self.change_balance(slot, -signed, signed, effects);
        self.change_obligations(slot, 1);
        self.holds.insert(Hold {
            id,
            wallet,
            amount,
            expires_at_ns,
            withdrawal,
            created_at_ns: self.last_timestamp_ns,
        });
        self.record(Undo::HoldOpened(id));
        effects.event(Event::HoldPlaced {
            hold: id,
            wallet,
            amount,
            expires_at_ns,
            withdrawal,
        });
        Ok(Applied::HoldPlaced(id))
    }

    fn capture(
        &mut self,
        hold: HoldId,
        amount: Option<u128>,
        to: Option<WalletId>,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        let held = *self.open_hold(hold)?;
        let captured = amount.unwrap_or(held.amount);
        if captured == 0 || captured > held.amount {
            return Err(Reject::CaptureAmountInvalid);
        }
        let slot = held.wallet.slot() as u32;
        let cur = self.wallets[slot as usize].currency;
        let (destination, kind) = match (held.withdrawal, to) {
            (true, None) => (
                Destination::Local(self.system_slot(cur, SystemRole::Settlement)),
                TransferKind::Withdrawal,
            ),
            (false, Some(to)) if to == held.wallet => return Err(Reject::SameWallet),
            (false, Some(to)) => (self.destination(to, cur)?, TransferKind::Capture),
            _ => return Err(Reject::CaptureDestinationInvalid),
        };
        // No "can send" check: the hold was authorised while the wallet was active and its
        // money is already set aside, so a later freeze does not stop its capture (a provider
        // that has paid a withdrawal out must be able to settle it). The wallet cannot be
        // closed while the hold is open.
        debug_assert!(self.wallets[slot as usize].status != WalletStatus::Closed);
        if let Destination::Local(to_slot) = destination
            && self.wallets[to_slot as usize].status == WalletStatus::Closed
        {
            return Err(Reject::WalletClosed);
        }
        self.check_destination_credit(destination, cur, captured)?;
        // After this point, the capture must succeed.
        self.close_hold(hold);
        let released = held.amount - captured;
        // Unfreeze the whole hold, then pay the captured part out of available.
        self.change_balance(slot, held.amount as i128, -(held.amount as i128), effects);
        let (transfer, pending) = self.pay(kind, slot, destination, captured, effects);
        effects.event(Event::HoldCaptured {
            hold,
            wallet: held.wallet,
            captured,
            released,
        });
        Ok(Applied::Transferred { transfer, pending })
    }

    fn release(&mut self, hold: HoldId, effects: &mut Effects) -> Result<Applied, Reject> {
        self.open_hold(hold)?;
        // After this point, the release must succeed.
        self.release_hold(hold, ReleaseReason::Released, effects);
        Ok(Applied::Done)
    }

    fn exchange(
        &mut self,
        from: WalletId,
        to: WalletId,
        amount: u128,
        rate: Rate,
        effects: &mut Effects,
    ) -> Result<Applied, Reject> {
        let from_slot = self.user_wallet_slot(from)?;
        if from == to {
            return Err(Reject::SameWallet);
        }
        if to.shard() != self.config.shard {
            // Both wallets of one user live on the user's shard.
            return Err(Reject::ExchangeWalletsInvalid);
        }
        let to_slot = self.user_wallet_slot(to)?;
        let (source, target) = (
            self.wallets[from_slot as usize],
            self.wallets[to_slot as usize],
        );
        if source.user != target.user || source.currency == target.currency {
            return Err(Reject::ExchangeWalletsInvalid);
        }
        let source_info = &self.currencies[usize::from(source.currency.0)];
        let target_info = &self.currencies[usize::from(target.currency.0)];
        if amount == 0 || amount > source_info.max {
            return Err(Reject::AmountInvalid);
        }
        self.check_can_send(from_slot)?;
        if target.status == WalletStatus::Closed {
            return Err(Reject::WalletClosed);
        }
        let credited = convert(amount, rate, source_info.scale, target_info.scale);
        if credited == 0 {
            return Err(Reject::ExchangeAmountTooSmall);
        }
        if credited > target_info.max {
            return Err(Reject::AmountInvalid);
        }
        self.check_available(from_slot, amount)?;
        let fx_source = self.system_slot(source.currency, SystemRole::FxHouse);
        let fx_target = self.system_slot(target.currency, SystemRole::FxHouse);
        self.check_credit(fx_source, amount)?;
        self.check_debit_system(fx_target, credited)?;
        self.check_credit(to_slot, credited)?;
        // After this point, the exchange must succeed.
        self.move_available(from_slot, fx_source, amount, effects);
        let transfer = self.post(
            TransferKind::ExchangeOut,
            from_slot,
            fx_source,
            amount,
            effects,
        );
        self.move_available(fx_target, to_slot, credited, effects);
        self.post(
            TransferKind::ExchangeIn,
            fx_target,
            to_slot,
            credited,
            effects,
        );
        Ok(Applied::Exchanged { transfer, credited })
    }

    // ---------------------------------------------------------------- cross-shard legs

    fn apply_credit_leg(&mut self, leg: &CreditLeg, effects: &mut Effects) -> Outcome {
        let origin = leg.origin_shard();
        if origin >= self.config.shard_count || origin == self.config.shard {
            return Outcome::Rejected(Reject::LegUnknown);
        }
        // Forget the decisions the origin has confirmed settling.
        let origin_first = TransferId::new(origin, 0, 0).0;
        if leg.settled_through >= origin_first {
            let confirmed: Vec<u128> = self
                .decisions
                .range(origin_first..=leg.settled_through)
                .map(|(t, _)| *t)
                .collect();
            for transfer in confirmed {
                self.decisions.remove(&transfer);
            }
        }
        let sequence = self.last_sequence;
        let seen = &mut self.credits_seen[usize::from(origin)];
        if leg.transfer.0 <= *seen {
            // Sent again (the origin restarted): answer with the original decision, if the
            // origin has not confirmed it yet; nothing else changes.
            if let Some(refused) = self.decisions.get(&leg.transfer.0) {
                effects.messages.push(ShardMessage::Settle {
                    to_shard: origin,
                    leg: SettleLeg {
                        transfer: leg.transfer,
                        from_shard: self.config.shard,
                        from_sequence: sequence,
                        refused: *refused,
                    },
                });
            }
            return Outcome::Rejected(Reject::LegDuplicate);
        }
        *seen = leg.transfer.0;
        let refused = self.credit_leg_checks(leg).err();
        self.decisions.insert(leg.transfer.0, refused);
        effects.messages.push(ShardMessage::Settle {
            to_shard: origin,
            leg: SettleLeg {
                transfer: leg.transfer,
                from_shard: self.config.shard,
                from_sequence: sequence,
                refused,
            },
        });
        if let Some(reason) = refused {
            return Outcome::Rejected(reason);
        }
        // After this point, the credit must succeed.
        let to_slot = leg.to.slot() as u32;
        let cur = self.wallets[to_slot as usize].currency;
        let in_transit = self.system_slot(cur, SystemRole::InTransit);
        self.move_available(in_transit, to_slot, leg.amount, effects);
        effects.event(Event::Transfer {
            transfer: leg.transfer,
            kind: TransferKind::Transfer,
            from: leg.from,
            to: leg.to,
            amount: leg.amount,
            currency: cur,
            status: TransferStatus::Completed,
        });
        Outcome::Ok(Applied::Transferred {
            transfer: leg.transfer,
            pending: false,
        })
    }

    /// Whether this shard can take a credit leg; the order of checks is the transfer's.
    fn credit_leg_checks(&self, leg: &CreditLeg) -> Result<(), Reject> {
        if leg.to.shard() != self.config.shard {
            return Err(Reject::WrongShard);
        }
        let to_slot = self.slot(leg.to)?;
        let wallet = &self.wallets[to_slot as usize];
        let info = &self.currencies[usize::from(wallet.currency.0)];
        if info.code != leg.currency {
            return Err(Reject::CurrencyMismatch);
        }
        if leg.amount == 0 || leg.amount > info.max {
            return Err(Reject::AmountInvalid);
        }
        if wallet.kind != WalletKind::User && wallet.kind != WalletKind::System(SystemRole::Fees) {
            return Err(Reject::SystemWalletNotAllowed);
        }
        if wallet.status == WalletStatus::Closed {
            return Err(Reject::WalletClosed);
        }
        self.check_debit_system(
            self.system_slot(wallet.currency, SystemRole::InTransit),
            leg.amount,
        )?;
        self.check_credit(to_slot, leg.amount)
    }

    fn apply_settle_leg(&mut self, leg: &SettleLeg, effects: &mut Effects) -> Outcome {
        let from = leg.from_shard;
        if from >= self.config.shard_count || from == self.config.shard {
            return Outcome::Rejected(Reject::LegUnknown);
        }
        let seen = &mut self.settles_seen[usize::from(from)];
        if leg.from_sequence <= *seen {
            return Outcome::Rejected(Reject::LegDuplicate);
        }
        let Some(pending) = self.pending.remove(&leg.transfer.0) else {
            return Outcome::Rejected(Reject::LegUnknown);
        };
        *seen = leg.from_sequence;
        let through = &mut self.settled_through[usize::from(from)];
        *through = (*through).max(leg.transfer.0);
        // After this point, the settlement must succeed.
        self.change_obligations(pending.from_slot, -1);
        let status = match leg.refused {
            None => TransferStatus::Completed,
            Some(reason) => {
                // A refund is not checked against the balance maximum: it returns money that was
                // in this wallet moments ago, and i128 has room for any such excess.
                let cur = self.wallets[pending.from_slot as usize].currency;
                let in_transit = self.system_slot(cur, SystemRole::InTransit);
                self.move_available(in_transit, pending.from_slot, pending.amount, effects);
                self.post(
                    TransferKind::Refund,
                    in_transit,
                    pending.from_slot,
                    pending.amount,
                    effects,
                );
                TransferStatus::Bounced(reason)
            }
        };
        effects.event(Event::TransferSettled {
            transfer: leg.transfer,
            status,
        });
        Outcome::Ok(Applied::Done)
    }

    // ---------------------------------------------------------------- checks

    fn check_user(&self, user: UserId) -> Result<(), Reject> {
        if user == UserId::SYSTEM {
            return Err(Reject::UserInvalid);
        }
        if user.shard(self.config.shard_count) != self.config.shard {
            return Err(Reject::WrongShard);
        }
        Ok(())
    }

    /// The slot of a wallet of this shard. A wallet of another existing shard is `wrong_shard`
    /// (the command was routed to the wrong shard), of no shard `wallet_not_found`.
    fn slot(&self, wallet: WalletId) -> Result<u32, Reject> {
        if wallet.shard() != self.config.shard {
            return Err(if wallet.shard() < self.config.shard_count {
                Reject::WrongShard
            } else {
                Reject::WalletNotFound
            });
        }
        if wallet.slot() >= self.wallets.len() as u64 {
            return Err(Reject::WalletNotFound);
        }
        Ok(wallet.slot() as u32)
    }

    /// The slot of a local user wallet (system wallets are not addressed by clients).
    fn user_wallet_slot(&self, wallet: WalletId) -> Result<u32, Reject> {
        let slot = self.slot(wallet)?;
        if !self.wallets[slot as usize].is_user() {
            return Err(Reject::SystemWalletNotAllowed);
        }
        Ok(slot)
    }

    /// The command's currency must be the wallet's, and the amount within (0, max].
    fn check_amount(
        &self,
        slot: u32,
        currency: CurrencyCode,
        amount: u128,
    ) -> Result<CurrencyId, Reject> {
        let cur = self.wallets[slot as usize].currency;
        let info = &self.currencies[usize::from(cur.0)];
        if info.code != currency {
            return Err(Reject::CurrencyMismatch);
        }
        if amount == 0 || amount > info.max {
            return Err(Reject::AmountInvalid);
        }
        Ok(cur)
    }

    fn check_can_send(&self, slot: u32) -> Result<(), Reject> {
        match self.wallets[slot as usize].status {
            WalletStatus::Active => Ok(()),
            WalletStatus::Frozen => Err(Reject::WalletFrozen),
            WalletStatus::Closed => Err(Reject::WalletClosed),
        }
    }

    fn check_available(&self, slot: u32, amount: u128) -> Result<(), Reject> {
        let available = self.wallets[slot as usize].available;
        debug_assert!(available >= 0);
        if (available as u128) < amount {
            return Err(Reject::InsufficientFunds);
        }
        Ok(())
    }

    /// The largest balance a wallet may hold: the currency's maximum for a user wallet,
    /// [`SYSTEM_BALANCE_MAX`] for a system wallet.
    fn balance_max(&self, wallet: &Hot) -> i128 {
        match wallet.kind {
            WalletKind::User => self.currencies[usize::from(wallet.currency.0)].max as i128,
            WalletKind::System(_) => SYSTEM_BALANCE_MAX,
        }
    }

    /// Credit of `amount` keeps the balance within the wallet's maximum.
    fn check_credit(&self, slot: u32, amount: u128) -> Result<(), Reject> {
        let wallet = &self.wallets[slot as usize];
        if wallet.balance() + amount as i128 > self.balance_max(wallet) {
            return Err(Reject::BalanceOverflow);
        }
        Ok(())
    }

    /// Debit of a system wallet keeps its balance above minus the currency's maximum.
    fn check_debit_system(&self, slot: u32, amount: u128) -> Result<(), Reject> {
        let wallet = &self.wallets[slot as usize];
        debug_assert!(!wallet.is_user());
        if wallet.balance() - (amount as i128) < -SYSTEM_BALANCE_MAX {
            return Err(Reject::BalanceOverflow);
        }
        Ok(())
    }

    /// Recomputes [`Engine::limits_set`] after a limit changed (or state was loaded).
    pub(crate) fn refresh_limits_set(&mut self) {
        self.limits_set = self
            .currencies
            .iter()
            .any(|c| c.limits_24h.iter().any(Option::is_some));
    }

    /// The sender's velocity limit (none set anywhere: nothing to check, inline).
    #[inline(always)]
    fn check_velocity(&mut self, slot: u32, amount: u128) -> Result<(), Reject> {
        if !self.limits_set {
            return Ok(());
        }
        self.check_velocity_limit(slot, amount)
    }

    #[inline(never)]
    fn check_velocity_limit(&mut self, slot: u32, amount: u128) -> Result<(), Reject> {
        let wallet = &self.wallets[slot as usize];
        let Some(limit) = self.currencies[usize::from(wallet.currency.0)].limit_24h(wallet.tier)
        else {
            return Ok(());
        };
        let sent = match self.wallets.cold(slot).velocity {
            NO_VELOCITY => 0,
            index => self.velocity[index as usize].sent(self.last_timestamp_ns),
        };
        if sent.saturating_add(amount) > limit {
            return Err(Reject::LimitExceeded);
        }
        Ok(())
    }

    /// Where a payment to `to` in currency `cur` goes; checks that do not depend on the sender.
    fn destination(&self, to: WalletId, cur: CurrencyId) -> Result<Destination, Reject> {
        if to.shard() != self.config.shard {
            if to.shard() >= self.config.shard_count {
                return Err(Reject::WalletNotFound);
            }
            return Ok(Destination::Remote(to));
        }
        let slot = self.slot(to)?;
        let wallet = &self.wallets[slot as usize];
        if wallet.currency != cur {
            return Err(Reject::CurrencyMismatch);
        }
        if wallet.kind != WalletKind::User && wallet.kind != WalletKind::System(SystemRole::Fees) {
            return Err(Reject::SystemWalletNotAllowed);
        }
        Ok(Destination::Local(slot))
    }

    fn check_destination_credit(
        &self,
        destination: Destination,
        cur: CurrencyId,
        amount: u128,
    ) -> Result<(), Reject> {
        match destination {
            Destination::Local(slot) => self.check_credit(slot, amount),
            Destination::Remote(_) => {
                if self.pending.len() >= self.config.transfers_in_flight_max {
                    return Err(Reject::TransfersInFlightCapacityExceeded);
                }
                self.check_credit(self.system_slot(cur, SystemRole::InTransit), amount)
            }
        }
    }

    fn open_hold(&self, hold: HoldId) -> Result<&Hold, Reject> {
        if hold.shard() != self.config.shard {
            return Err(if hold.shard() < self.config.shard_count {
                Reject::WrongShard
            } else {
                Reject::HoldNotFound
            });
        }
        match self.holds.get(hold) {
            Some(open) => Ok(open),
            None if hold.number() > 0 && hold.number() < self.holds.next_number => {
                Err(Reject::HoldClosed)
            }
            None => Err(Reject::HoldNotFound),
        }
    }

    // ---------------------------------------------------------------- mutations

    fn record(&mut self, undo: Undo) {
        if let Some(log) = &mut self.undo {
            log.push(undo);
        }
    }

    /// Records a wallet as it is, to undo a linked group (only inside one: the check stays
    /// inline, the copy of the three parts does not).
    #[inline(always)]
    fn record_wallet(&mut self, slot: u32) {
        if self.undo.is_some() {
            self.record_whole_wallet(slot);
        }
    }

    #[inline(never)]
    fn record_whole_wallet(&mut self, slot: u32) {
        let before = self
            .wallets
            .get(slot as usize)
            .unwrap_or_else(|| unreachable!("undo record of a wallet that does not exist"));
        self.record(Undo::Wallet { slot, before });
    }

    fn push_wallet(
        &mut self,
        user: UserId,
        currency: CurrencyId,
        kind: WalletKind,
        tier: Tier,
    ) -> u32 {
        let slot = self.wallets.len() as u32;
        assert!((slot as usize) < self.config.wallets_max);
        let now = self.last_timestamp_ns;
        let wallet = Wallet {
            available: 0,
            frozen: 0,
            user,
            version: 1,
            created_at_ns: now,
            updated_at_ns: now,
            currency,
            status: WalletStatus::Active,
            kind,
            tier,
            open_obligations: 0,
            velocity: NO_VELOCITY,
        };
        self.wallets.push(wallet, self.config.wallets_max);
        self.record(Undo::WalletPushed);
        if kind == WalletKind::User {
            self.index_insert(slot);
        }
        slot
    }

    pub(crate) fn index_insert(&mut self, slot: u32) {
        let wallet = &self.wallets[slot as usize];
        let seed = self.config.hash_seed;
        let hash = user_currency_hash(seed, wallet.user.0, wallet.currency.0);
        let wallets = &self.wallets;
        self.user_index.insert_unique(hash, slot, |&s| {
            let w = &wallets[s as usize];
            user_currency_hash(seed, w.user.0, w.currency.0)
        });
        self.record(Undo::IndexInserted { slot });
    }

    fn index_remove(&mut self, slot: u32, user: UserId, currency: CurrencyId) {
        let hash = user_currency_hash(self.config.hash_seed, user.0, currency.0);
        let removed = self
            .user_index
            .find_entry(hash, |&s| s == slot)
            .map(|e| e.remove());
        assert!(removed.is_ok(), "wallet index lost slot {slot}");
        self.record(Undo::IndexRemoved { slot });
    }

    pub(crate) fn find_user_wallet(&self, user: UserId, currency: CurrencyId) -> Option<u32> {
        let hash = user_currency_hash(self.config.hash_seed, user.0, currency.0);
        self.user_index
            .find(hash, |&s| {
                let w = &self.wallets[s as usize];
                w.user == user && w.currency == currency
            })
            .copied()
    }

    /// Changes a wallet's balances by the given deltas, bumps its version, emits the event.
    #[inline(always)]
    fn change_balance(&mut self, slot: u32, available: i128, frozen: i128, effects: &mut Effects) {
        self.record_wallet(slot);
        let now = self.last_timestamp_ns;
        let wallet = &mut self.wallets[slot as usize];
        wallet.available += available;
        wallet.frozen += frozen;
        wallet.version += 1;
        assert!(wallet.frozen >= 0, "frozen balance went negative");
        assert!(
            !wallet.is_user() || wallet.available >= 0,
            "user available went negative"
        );
        effects.event(Event::BalanceChanged {
            wallet: WalletId::new(self.config.shard, u64::from(slot)),
            user: wallet.user,
            currency: wallet.currency,
            available: wallet.available,
            frozen: wallet.frozen,
            version: wallet.version,
        });
        self.wallets.touch(slot, now);
    }

    fn move_available(&mut self, from: u32, to: u32, amount: u128, effects: &mut Effects) {
        let amount = amount as i128; // amounts are below 10^28 < 2^127
        self.change_balance(from, -amount, 0, effects);
        self.change_balance(to, amount, 0, effects);
    }

    fn change_obligations(&mut self, slot: u32, delta: i32) {
        self.record_wallet(slot);
        let wallet = self.wallets.cold_mut(slot);
        wallet.open_obligations = wallet
            .open_obligations
            .checked_add_signed(delta)
            .unwrap_or_else(|| unreachable!("open obligations out of range"));
    }

    fn set_status(&mut self, slot: u32, status: WalletStatus, effects: &mut Effects) {
        self.record_wallet(slot);
        let now = self.last_timestamp_ns;
        let wallet = &mut self.wallets[slot as usize];
        wallet.status = status;
        wallet.version += 1;
        let user = wallet.user;
        self.wallets.touch(slot, now);
        let wallet_id = self.wallet_id(slot);
        effects.event(Event::WalletStatusChanged {
            wallet: wallet_id,
            user,
            status,
        });
    }

    /// Counts a payment against the sender's velocity window (none set anywhere: inline no-op).
    #[inline(always)]
    fn add_velocity(&mut self, slot: u32, amount: u128) {
        if self.limits_set {
            self.add_velocity_limited(slot, amount);
        }
    }

    #[inline(never)]
    fn add_velocity_limited(&mut self, slot: u32, amount: u128) {
        let wallet = &self.wallets[slot as usize];
        let (currency, tier) = (wallet.currency, wallet.tier);
        if self.currencies[usize::from(currency.0)]
            .limit_24h(tier)
            .is_none()
        {
            return;
        }
        let velocity = self.wallets.cold(slot).velocity;
        let index = if velocity == NO_VELOCITY {
            let index = self.velocity.len() as u32;
            self.velocity.push(VelocityWindow::default());
            self.record(Undo::VelocityPushed);
            self.record_wallet(slot);
            self.wallets.cold_mut(slot).velocity = index;
            index
        } else {
            velocity
        };
        let now = self.last_timestamp_ns;
        self.velocity[index as usize].add(now, amount);
        self.record(Undo::VelocityAdded {
            index,
            hour: now / BUCKET_NS,
            amount,
        });
    }

    /// Moves `amount` from a user wallet's available to a destination; returns the transfer id
    /// and whether it is pending on another shard.
    fn pay(
        &mut self,
        kind: TransferKind,
        from_slot: u32,
        destination: Destination,
        amount: u128,
        effects: &mut Effects,
    ) -> (TransferId, bool) {
        match destination {
            Destination::Local(to_slot) => {
                self.move_available(from_slot, to_slot, amount, effects);
                (self.post(kind, from_slot, to_slot, amount, effects), false)
            }
            Destination::Remote(to) => {
                let cur = self.wallets[from_slot as usize].currency;
                let in_transit = self.system_slot(cur, SystemRole::InTransit);
                self.move_available(from_slot, in_transit, amount, effects);
                let transfer = self.next_transfer_id();
                let from = self.wallet_id(from_slot);
                let leg = CreditLeg {
                    transfer,
                    from,
                    to,
                    amount,
                    currency: self.currencies[usize::from(cur.0)].code,
                    origin_sequence: self.last_sequence,
                    settled_through: self.settled_through[usize::from(to.shard())],
                };
                self.pending.insert(
                    transfer.0,
                    PendingLeg {
                        from_slot,
                        amount,
                        leg,
                    },
                );
                self.record(Undo::PendingInserted(transfer));
                self.change_obligations(from_slot, 1);
                effects.messages.push(ShardMessage::Credit {
                    to_shard: to.shard(),
                    leg,
                });
                effects.event(Event::Transfer {
                    transfer,
                    kind,
                    from,
                    to,
                    amount,
                    currency: cur,
                    status: TransferStatus::Pending,
                });
                (transfer, true)
            }
        }
    }

    /// Emits the event of a completed local movement and returns its id.
    fn post(
        &mut self,
        kind: TransferKind,
        from: u32,
        to: u32,
        amount: u128,
        effects: &mut Effects,
    ) -> TransferId {
        let transfer = self.next_transfer_id();
        effects.event(Event::Transfer {
            transfer,
            kind,
            from: self.wallet_id(from),
            to: self.wallet_id(to),
            amount,
            currency: self.wallets[from as usize].currency,
            status: TransferStatus::Completed,
        });
        transfer
    }

    fn next_transfer_id(&mut self) -> TransferId {
        let id = TransferId::new(self.config.shard, self.last_sequence, self.movements);
        self.movements += 1;
        id
    }

    fn close_hold(&mut self, hold: HoldId) {
        let closed = self.holds.remove(hold);
        self.change_obligations(closed.wallet.slot() as u32, -1);
        self.record(Undo::HoldClosed(closed));
    }

    fn release_hold(&mut self, hold: HoldId, reason: ReleaseReason, effects: &mut Effects) {
        let Some(&held) = self.holds.get(hold) else {
            unreachable!("releasing a closed hold")
        };
        self.close_hold(hold);
        let amount = held.amount as i128;
        self.change_balance(held.wallet.slot() as u32, amount, -amount, effects);
        effects.event(Event::HoldReleased {
            hold,
            wallet: held.wallet,
            amount: held.amount,
            reason,
        });
    }

    fn expire_holds(&mut self, effects: &mut Effects) {
        while let Some(hold) = self.holds.first_due(self.last_timestamp_ns) {
            self.release_hold(hold, ReleaseReason::Expired, effects);
        }
    }

    fn roll_back(&mut self) {
        let Some(log) = self.undo.take() else {
            unreachable!("roll back outside a linked group")
        };
        for undo in log.into_iter().rev() {
            match undo {
                Undo::Wallet { slot, before } => self.wallets.set(slot as usize, before),
                Undo::WalletPushed => {
                    self.wallets.pop();
                }
                Undo::IndexInserted { slot } => {
                    let w = self.wallets[slot as usize];
                    let hash = user_currency_hash(self.config.hash_seed, w.user.0, w.currency.0);
                    let removed = self
                        .user_index
                        .find_entry(hash, |&s| s == slot)
                        .map(|e| e.remove());
                    assert!(removed.is_ok());
                }
                Undo::IndexRemoved { slot } => {
                    let seed = self.config.hash_seed;
                    let w = self.wallets[slot as usize];
                    let wallets = &self.wallets;
                    self.user_index.insert_unique(
                        user_currency_hash(seed, w.user.0, w.currency.0),
                        slot,
                        |&s| {
                            let w = &wallets[s as usize];
                            user_currency_hash(seed, w.user.0, w.currency.0)
                        },
                    );
                }
                Undo::HoldOpened(id) => {
                    self.holds.remove(id);
                }
                Undo::HoldClosed(hold) => self.holds.insert(hold),
                Undo::VelocityPushed => {
                    self.velocity.pop();
                }
                Undo::VelocityAdded {
                    index,
                    hour,
                    amount,
                } => {
                    self.velocity[index as usize].subtract(hour, amount);
                }
                Undo::PendingInserted(transfer) => {
                    self.pending.remove(&transfer.0);
                }
                Undo::Tier { user, before } => match before {
                    Some(tier) => {
                        self.tiers.insert(user.0, tier);
                    }
                    None => {
                        self.tiers.remove(&user.0);
                    }
                },
                Undo::CurrencyPushed => {
                    self.currencies.pop();
                    self.refresh_limits_set();
                }
                Undo::Limit {
                    currency,
                    tier,
                    before,
                } => {
                    self.currencies[usize::from(currency)].limits_24h[tier.index()] = before;
                    self.refresh_limits_set();
                }
            }
        }
    }

    // ---------------------------------------------------------------- queries

    fn wallet_id(&self, slot: u32) -> WalletId {
        WalletId::new(self.config.shard, u64::from(slot))
    }

    fn system_slot(&self, currency: CurrencyId, role: SystemRole) -> u32 {
        self.currencies[usize::from(currency.0)].system[role as usize]
    }

    pub fn currency_id(&self, code: CurrencyCode) -> Option<CurrencyId> {
        // Registries are small (tens of currencies); a scan beats a hash here.
        self.currencies
            .iter()
            .position(|c| c.code == code)
            .map(|i| CurrencyId(i as u16))
    }

    pub fn currency(&self, currency: CurrencyId) -> Option<&CurrencyInfo> {
        self.currencies.get(usize::from(currency.0))
    }

    pub fn currencies(&self) -> &[CurrencyInfo] {
        &self.currencies
    }

    pub fn wallet(&self, wallet: WalletId) -> Option<Wallet> {
        let slot = self.slot(wallet).ok()?;
        self.wallets.get(slot as usize)
    }

    /// All wallets of this shard, in slot order (system wallets included).
    pub fn wallets(&self) -> impl Iterator<Item = (WalletId, Wallet)> + '_ {
        self.wallets
            .iter()
            .enumerate()
            .map(|(slot, w)| (self.wallet_id(slot as u32), w))
    }

    pub fn wallet_count(&self) -> usize {
        self.wallets.len()
    }

    /// The user's open wallet in a currency.
    pub fn user_wallet(&self, user: UserId, currency: CurrencyId) -> Option<WalletId> {
        self.find_user_wallet(user, currency)
            .map(|slot| self.wallet_id(slot))
    }

    /// The user's open wallets, in currency registration order.
    pub fn user_wallets(&self, user: UserId) -> Vec<WalletId> {
        (0..self.currencies.len())
            .filter_map(|c| self.user_wallet(user, CurrencyId(c as u16)))
            .collect()
    }

    pub fn system_wallet(&self, currency: CurrencyId, role: SystemRole) -> Option<WalletId> {
        let info = self.currencies.get(usize::from(currency.0))?;
        Some(self.wallet_id(info.system[role as usize]))
    }

    pub fn hold(&self, hold: HoldId) -> Option<&Hold> {
        self.holds.get(hold)
    }

    pub fn open_hold_count(&self) -> usize {
        self.holds.len()
    }

    pub fn tier(&self, user: UserId) -> Tier {
        self.tiers.get(&user.0).copied().unwrap_or_default()
    }

    /// The recorded outcome of a client key, while it is inside its window.
    pub fn outcome_of(&self, key: &IdempotencyKey) -> Option<Outcome> {
        let window = self.config.idempotency_window_ns;
        let now = self.last_timestamp_ns;
        self.idempotency
            .find(key)
            .filter(|e| e.timestamp_ns.saturating_add(window) > now)
            .map(|e| e.outcome)
    }

    /// [`outcome_of`](Self::outcome_of) with the time the outcome was recorded (a reader that
    /// must know whether the record is replicated compares it with the release point).
    pub fn outcome_at(&self, key: &IdempotencyKey) -> Option<(Outcome, u64)> {
        let window = self.config.idempotency_window_ns;
        let now = self.last_timestamp_ns;
        self.idempotency
            .find(key)
            .filter(|e| e.timestamp_ns.saturating_add(window) > now)
            .map(|e| (e.outcome, e.timestamp_ns))
    }

    /// Idempotency records held.
    pub fn idempotency_entries(&self) -> usize {
        self.idempotency.len()
    }

    /// Records forgotten before their window passed because the table was full: non-zero
    /// means `idempotency_entries_max` is too small for the load (a metric to alert on).
    pub fn idempotency_evicted_early(&self) -> u64 {
        self.idempotency.evicted_early()
    }

    /// Command time the idempotency records cover: the effective deduplication window.
    pub fn idempotency_span_ns(&self) -> u64 {
        self.idempotency.span_ns(self.last_timestamp_ns)
    }

    pub fn transfers_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Credit legs debited here and not yet settled, in transfer order, each with the current
    /// `settled_through` of its destination: what a restarted node sends again (a destination
    /// that already applied one answers with its original decision).
    pub fn pending_credit_legs(&self) -> Vec<CreditLeg> {
        let mut legs: Vec<CreditLeg> = self
            .pending
            .values()
            .map(|p| CreditLeg {
                settled_through: self.settled_through[usize::from(p.leg.to.shard())],
                ..p.leg
            })
            .collect();
        legs.sort_unstable_by_key(|leg| leg.transfer);
        legs
    }

    /// Credit decisions kept for origins that have not confirmed them.
    pub fn credit_decisions_kept(&self) -> usize {
        self.decisions.len()
    }

    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    pub fn last_timestamp_ns(&self) -> u64 {
        self.last_timestamp_ns
    }

    /// Sum of all balances per currency, in registry order. Zero for every currency, always:
    /// the check behind the double-entry invariant (O(wallets); for tests and audits).
    pub fn balance_sums(&self) -> Vec<i128> {
        let mut sums = vec![0i128; self.currencies.len()];
        for wallet in self.wallets.hot_parts() {
            sums[usize::from(wallet.currency.0)] += wallet.balance();
        }
        sums
    }

    /// A 128-bit digest of the whole state, equal for equal command sequences on any machine.
    ///
    /// Covers every field that can influence a future outcome or a query, walked in a defined
    /// order (slots, hold ids, idempotency FIFO order, user ids); never hash-table order.
    pub fn state_hash(&self) -> u128 {
        let mut d = Digest::new();
        d.u16(self.config.shard).u16(self.config.shard_count);
        d.u64(self.last_sequence).u64(self.last_timestamp_ns);
        d.u64(self.currencies.len() as u64);
        for c in &self.currencies {
            d.code(&c.code).u8(c.scale);
            for slot in c.system {
                d.u32(slot);
            }
            for limit in c.limits_24h {
                d.u128(limit.map_or(0, |l| l + 1));
            }
        }
        d.u64(self.wallets.len() as u64);
        for w in self.wallets.iter() {
            d.i128(w.available)
                .i128(w.frozen)
                .u128(w.user.0)
                .u64(w.version);
            d.u64(w.created_at_ns)
                .u64(w.updated_at_ns)
                .u16(w.currency.0);
            d.u8(w.status as u8)
                .u8(w.tier as u8)
                .u32(w.open_obligations);
            d.u8(match w.kind {
                WalletKind::User => 255,
                WalletKind::System(role) => role as u8,
            });
            if w.velocity != NO_VELOCITY {
                for &(hour, amount) in self.velocity[w.velocity as usize].buckets() {
                    d.u64(hour).u128(amount);
                }
            }
            d.u8(0xfe);
        }
        let mut tiers: Vec<(u128, Tier)> = self.tiers.iter().map(|(u, t)| (*u, *t)).collect();
        tiers.sort_unstable();
        d.u64(tiers.len() as u64);
        for (user, tier) in tiers {
            d.u128(user).u8(tier as u8);
        }
        d.u64(self.holds.next_number).u64(self.holds.len() as u64);
        for h in self.holds.sorted() {
            d.u64(h.id.0).u64(h.wallet.0).u128(h.amount);
            d.u64(h.expires_at_ns.map_or(0, |t| t.saturating_add(1)));
            d.u8(u8::from(h.withdrawal)).u64(h.created_at_ns);
        }
        let mut pending: Vec<(u128, PendingLeg)> =
            self.pending.iter().map(|(t, p)| (*t, *p)).collect();
        pending.sort_unstable_by_key(|(t, _)| *t);
        d.u64(pending.len() as u64);
        for (transfer, pending) in pending {
            d.u128(transfer).u32(pending.from_slot).u128(pending.amount);
            d.u64(pending.leg.to.0)
                .code(&pending.leg.currency)
                .u64(pending.leg.origin_sequence);
        }
        for seen in &self.credits_seen {
            d.u128(*seen);
        }
        for seen in &self.settles_seen {
            d.u64(*seen);
        }
        for through in &self.settled_through {
            d.u128(*through);
        }
        d.u64(self.decisions.len() as u64);
        for (transfer, refused) in &self.decisions {
            d.u128(*transfer).u8(refused.map_or(0, |r| r as u8));
        }
        d.u64(self.idempotency.len() as u64);
        for (key, entry) in self.idempotency.iter() {
            d.bytes(key).u64(entry.timestamp_ns).u64(entry.params);
            digest_outcome(&mut d, &entry.outcome);
        }
        d.finish_128()
    }
}

/// Where a payment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Local(u32),
    Remote(WalletId),
}

/// `floor(amount * rate)`, from minor units at `from_scale` to minor units at `to_scale`.
/// Rounding down never favours the user: they receive at most the exact value.
pub fn convert(amount: u128, rate: Rate, from_scale: u8, to_scale: u8) -> u128 {
    use ethnum::U256;
    // amount < 10^28, mantissa < 10^28, 10^18: the product is below 10^74 < 2^256.
    let numerator = U256::from(amount)
        * U256::from(rate.mantissa())
        * U256::from(10u128.pow(u32::from(to_scale)));
    let denominator = U256::from(10u128.pow(u32::from(rate.scale())))
        * U256::from(10u128.pow(u32::from(from_scale)));
    let quotient = numerator / denominator;
    // Saturate: a result past u128 is far past any currency's maximum and is rejected anyway.
    u128::try_from(quotient).unwrap_or(u128::MAX)
}

fn digest_outcome(d: &mut Digest, outcome: &Outcome) {
    match outcome {
        Outcome::Ok(applied) => {
            d.u8(0);
            match applied {
                Applied::Done => d.u8(0),
                Applied::WalletOpened(w) => d.u8(1).u64(w.0),
                Applied::CurrencyRegistered(c) => d.u8(2).u16(c.0),
                Applied::Transferred { transfer, pending } => {
                    d.u8(3).u128(transfer.0).u8(u8::from(*pending))
                }
                Applied::HoldPlaced(h) => d.u8(4).u64(h.0),
                Applied::Exchanged { transfer, credited } => {
                    d.u8(5).u128(transfer.0).u128(*credited)
                }
                Applied::Linked { ops } => d.u8(6).u16(*ops),
            };
        }
        Outcome::Rejected(reason) => {
            d.u8(1).u8(*reason as u8);
        }
        Outcome::LinkedRejected { index, reason } => {
            d.u8(2).u16(*index).u8(*reason as u8);
        }
    }
}
