//! From applied commands to SQL rows: the pure half of the flusher.
//!
//! [`BatchRows::record`] is called once per journal record, right after the flusher's shadow
//! engine applied it, with that command's events. It turns the events into rows and remembers
//! which wallets changed; [`BatchRows::finish`] then reads those wallets' final values from the
//! engine. Nothing here does I/O, so the money rules are tested without a database
//! (`tests` below: summed postings equal the engine's balances over random command streams).
//!
//! Double entry: every `Transfer` event moves `amount` from one wallet to another. The event
//! names the *remote* wallet of a cross-shard movement (the sender on the credit side, the
//! receiver on the debit side), but the money on this shard moved through the currency's
//! `in_transit` system wallet, so that is the wallet the posting names. Holds move money between
//! `available` and `frozen` of one wallet: the balance does not change and no posting is made.

use std::collections::HashMap;

use paycore_engine::{
    Applied, Command, CurrencyCode, Engine, Event, Outcome, ReleaseReason, SystemRole,
    TransferKind, TransferStatus, WalletId, WalletKind, WalletStatus,
};

/// A wallet's values after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRow {
    pub id: u64,
    pub shard: u16,
    pub user: u128,
    pub currency: CurrencyCode,
    pub scale: u8,
    pub kind: &'static str,
    pub available: i128,
    pub frozen: i128,
    pub version: u64,
    pub status: &'static str,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
    /// Opened in this batch, so no earlier batch wrote it: the writer may append it instead
    /// of updating it (set by [`BatchRows::finish`]; `false` from [`wallet_row`]).
    pub opened: bool,
}

impl WalletRow {
    pub fn balance(&self) -> i128 {
        self.available + self.frozen
    }
}

/// One movement, as the shard that recorded it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRow {
    pub id: u128,
    pub shard: u16,
    pub kind: &'static str,
    pub from: u64,
    pub to: u64,
    pub amount: u128,
    pub currency: CurrencyCode,
    pub scale: u8,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub key: Option<Vec<u8>>,
    pub sequence: u64,
    pub created_at_ns: u64,
}

/// A pending movement recorded in an earlier batch has settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub id: u128,
    pub shard: u16,
    pub status: &'static str,
    pub reason: Option<&'static str>,
}

/// One side of a movement: `delta` minor units on `wallet` (double entry: a movement's
/// postings on one shard sum to zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    pub wallet: u64,
    pub transaction: u128,
    pub shard: u16,
    pub sequence: u64,
    pub delta: i128,
    pub currency: CurrencyCode,
    pub scale: u8,
}

/// A client key the engine now remembers, with the outcome a retry gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    pub shard: u16,
    pub key: Vec<u8>,
    pub transaction: Option<u128>,
    pub outcome: String,
    pub sequence: u64,
    pub created_at_ns: u64,
    /// The engine held no record of this key before this command, so the store has none
    /// either — unless the engine forgot the key earlier and this re-made it (rare). Fresh rows
    /// are appended, the others upserted (see `postgres.rs`).
    pub fresh: bool,
}

/// Whether the engine holds a record of `command`'s client key (call before applying it: a
/// retry of a held key changes no record).
pub fn key_known(engine: &Engine, command: &Command) -> bool {
    match command {
        Command::Client { key, .. } => engine.outcome_of(key).is_some(),
        _ => false,
    }
}

/// A hold placed in this batch (possibly already closed in it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub id: u64,
    pub shard: u16,
    pub wallet: u64,
    pub amount: u128,
    pub currency: CurrencyCode,
    pub scale: u8,
    pub withdrawal: bool,
    pub status: &'static str,
    pub captured: Option<u128>,
    pub expires_at_ns: Option<u64>,
    pub created_at_ns: u64,
    pub closed_at_ns: Option<u64>,
    pub sequence: u64,
}

/// A hold placed in an earlier batch was captured, released or expired in this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldClose {
    pub id: u64,
    pub status: &'static str,
    pub captured: Option<u128>,
    pub scale: u8,
    pub closed_at_ns: u64,
    pub sequence: u64,
}

/// A currency registered on a shard (its scale reads the stored decimals back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyRow {
    pub shard: u16,
    pub code: CurrencyCode,
    pub scale: u8,
}

/// Every row one batch of journal records produces, written in one SQL transaction together
/// with the checkpoint `last_sequence`.
#[derive(Debug, Default)]
pub struct BatchRows {
    pub shard: u16,
    /// First and last journal sequence of the batch (0, 0 when empty).
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Epoch of the primary that journaled the last record (set by the flusher): a store whose
    /// checkpoint names another epoch than the journal at that sequence holds another history.
    pub last_epoch: u64,
    pub last_timestamp_ns: u64,
    pub currencies: Vec<CurrencyRow>,
    pub wallets: Vec<WalletRow>,
    pub transactions: Vec<TransactionRow>,
    pub status_updates: Vec<StatusUpdate>,
    pub entries: Vec<EntryRow>,
    pub idempotency: Vec<IdempotencyRow>,
    pub holds: Vec<HoldRow>,
    pub hold_closes: Vec<HoldClose>,
    touched: Vec<WalletId>,
    /// Wallets in `touched`, and whether each was opened in this batch.
    touched_index: HashMap<u64, bool>,
    transaction_index: HashMap<u128, usize>,
    idempotency_index: HashMap<Vec<u8>, usize>,
    hold_index: HashMap<u64, usize>,
}

/// Canonical text of an outcome, as stored in `transaction_idempotency.outcome` (and compared by
/// reconciliation): `ok`, `wallet_opened:<id>`, `rejected:<code>`, ...
pub fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(Applied::Done) => "ok".into(),
        Outcome::Ok(Applied::WalletOpened(wallet)) => format!("wallet_opened:{}", wallet.0),
        Outcome::Ok(Applied::CurrencyRegistered(currency)) => {
            format!("currency_registered:{}", currency.0)
        }
        Outcome::Ok(Applied::Transferred { pending, .. }) => {
            if *pending {
                "transferred_pending".into()
            } else {
                "transferred".into()
            }
        }
        Outcome::Ok(Applied::HoldPlaced(hold)) => format!("hold_placed:{}", hold.0),
        Outcome::Ok(Applied::Exchanged { credited, .. }) => format!("exchanged:{credited}"),
        Outcome::Ok(Applied::Linked { ops }) => format!("linked:{ops}"),
        Outcome::Rejected(reason) => format!("rejected:{}", reason.code()),
        Outcome::LinkedRejected { index, reason } => {
            format!("linked_rejected:{index}:{}", reason.code())
        }
    }
}

/// The movement an outcome names, if any.
pub fn outcome_transaction(outcome: &Outcome) -> Option<u128> {
    match outcome {
        Outcome::Ok(Applied::Transferred { transfer, .. })
        | Outcome::Ok(Applied::Exchanged { transfer, .. }) => Some(transfer.0),
        _ => None,
    }
}

pub fn kind_text(kind: TransferKind) -> &'static str {
    match kind {
        TransferKind::Deposit => "deposit",
        TransferKind::Transfer => "transfer",
        TransferKind::Capture => "capture",
        TransferKind::Withdrawal => "withdrawal",
        TransferKind::ExchangeOut => "exchange_out",
        TransferKind::ExchangeIn => "exchange_in",
        TransferKind::Refund => "refund",
    }
}

pub fn status_text(status: TransferStatus) -> (&'static str, Option<&'static str>) {
    match status {
        TransferStatus::Completed => ("completed", None),
        TransferStatus::Pending => ("pending", None),
        TransferStatus::Bounced(reason) => ("bounced", Some(reason.code())),
    }
}

pub fn wallet_status_text(status: WalletStatus) -> &'static str {
    match status {
        WalletStatus::Active => "active",
        WalletStatus::Frozen => "frozen",
        WalletStatus::Closed => "closed",
    }
}

pub fn wallet_kind_text(kind: WalletKind) -> &'static str {
    match kind {
        WalletKind::User => "user",
        WalletKind::System(SystemRole::Settlement) => "settlement",
        WalletKind::System(SystemRole::FxHouse) => "fx_house",
        WalletKind::System(SystemRole::Fees) => "fees",
        WalletKind::System(SystemRole::InTransit) => "in_transit",
    }
}

/// The stored row of one engine wallet.
pub fn wallet_row(engine: &Engine, id: WalletId) -> Option<WalletRow> {
    let wallet = engine.wallet(id)?;
    let info = engine.currency(wallet.currency)?;
    Some(WalletRow {
        id: id.0,
        shard: id.shard(),
        user: wallet.user.0,
        currency: info.code,
        scale: info.scale,
        kind: wallet_kind_text(wallet.kind),
        available: wallet.available,
        frozen: wallet.frozen,
        version: wallet.version,
        status: wallet_status_text(wallet.status),
        created_at_ns: wallet.created_at_ns,
        updated_at_ns: wallet.updated_at_ns,
        opened: false,
    })
}

impl BatchRows {
    pub fn new(shard: u16) -> BatchRows {
        BatchRows {
            shard,
            ..BatchRows::default()
        }
    }

    /// Journal records in the batch.
    pub fn records(&self) -> u64 {
        if self.last_sequence == 0 {
            0
        } else {
            self.last_sequence - self.first_sequence + 1
        }
    }

    /// Rows of all kinds (for batch limits and figures).
    pub fn row_count(&self) -> usize {
        self.currencies.len()
            + self.touched.len()
            + self.transactions.len()
            + self.status_updates.len()
            + self.entries.len()
            + self.idempotency.len()
            + self.holds.len()
            + self.hold_closes.len()
    }

    pub fn clear(&mut self) {
        let shard = self.shard;
        self.first_sequence = 0;
        self.last_sequence = 0;
        self.last_epoch = 0;
        self.last_timestamp_ns = 0;
        self.currencies.clear();
        self.wallets.clear();
        self.transactions.clear();
        self.status_updates.clear();
        self.entries.clear();
        self.idempotency.clear();
        self.holds.clear();
        self.hold_closes.clear();
        self.touched.clear();
        self.touched_index.clear();
        self.transaction_index.clear();
        self.idempotency_index.clear();
        self.hold_index.clear();
        self.shard = shard;
    }

    fn touch(&mut self, wallet: WalletId) {
        self.mark(wallet, false);
    }

    fn opened(&mut self, wallet: WalletId) {
        self.mark(wallet, true);
    }

    /// Adds `wallet` to the touched ones (once), remembering whether the batch opened it.
    fn mark(&mut self, wallet: WalletId, opened: bool) {
        let touched = &mut self.touched;
        let was_opened = self.touched_index.entry(wallet.0).or_insert_with(|| {
            touched.push(wallet);
            false
        });
        *was_opened |= opened;
    }

    /// The wallet a posting names on this shard: a remote wallet stands for the currency's
    /// `in_transit` wallet here (that is where the money moved).
    fn local_side(
        &self,
        engine: &Engine,
        wallet: WalletId,
        currency: paycore_engine::CurrencyId,
    ) -> WalletId {
        if wallet.shard() == self.shard {
            return wallet;
        }
        // A movement to or from another shard exists only in a registered currency, which has
        // its four system wallets.
        engine
            .system_wallet(currency, SystemRole::InTransit)
            .unwrap_or_else(|| unreachable!("registered currency without in_transit wallet"))
    }

    /// Rows of one record, applied to `engine` just before (its `events`, its `outcome`).
    /// `key_known_before`: [`key_known`] of the command, before it was applied.
    pub fn record(
        &mut self,
        engine: &Engine,
        sequence: u64,
        command: &Command,
        outcome: &Outcome,
        events: &[Event],
        key_known_before: bool,
    ) {
        assert!(sequence > self.last_sequence, "records come in order");
        if self.first_sequence == 0 {
            self.first_sequence = sequence;
        }
        self.last_sequence = sequence;
        // The engine takes an earlier timestamp as the last: read the one it used.
        let now = engine.last_timestamp_ns();
        self.last_timestamp_ns = now;
        let key = match command {
            Command::Client { key, .. } => Some(key),
            _ => None,
        };
        for event in events {
            match *event {
                Event::CurrencyRegistered { currency, scale } => {
                    if let Some(info) = engine.currency(currency) {
                        self.currencies.push(CurrencyRow {
                            shard: self.shard,
                            code: info.code,
                            scale,
                        });
                    }
                    for role in [
                        SystemRole::Settlement,
                        SystemRole::FxHouse,
                        SystemRole::Fees,
                        SystemRole::InTransit,
                    ] {
                        // Made with the currency: opened here.
                        if let Some(wallet) = engine.system_wallet(currency, role) {
                            self.opened(wallet);
                        }
                    }
                }
                Event::WalletOpened { wallet, .. } => self.opened(wallet),
                Event::WalletStatusChanged { wallet, .. }
                | Event::BalanceChanged { wallet, .. } => self.touch(wallet),
                Event::TierChanged { .. } => {}
                Event::Transfer {
                    transfer,
                    kind,
                    from,
                    to,
                    amount,
                    currency,
                    status,
                } => {
                    let Some(info) = engine.currency(currency) else {
                        unreachable!("a movement in an unregistered currency")
                    };
                    let (code, scale) = (info.code, info.scale);
                    let (status, reason) = status_text(status);
                    self.transaction_index
                        .insert(transfer.0, self.transactions.len());
                    self.transactions.push(TransactionRow {
                        id: transfer.0,
                        shard: self.shard,
                        kind: kind_text(kind),
                        from: from.0,
                        to: to.0,
                        amount,
                        currency: code,
                        scale,
                        status,
                        reason,
                        key: key.map(|k| k.as_bytes().to_vec()),
                        sequence,
                        created_at_ns: now,
                    });
                    let debit = self.local_side(engine, from, currency);
                    let credit = self.local_side(engine, to, currency);
                    // amount <= SYSTEM_BALANCE_MAX (10^36) < 2^127: fits i128.
                    let signed = amount as i128;
                    for (wallet, delta) in [(debit, -signed), (credit, signed)] {
                        self.touch(wallet);
                        self.entries.push(EntryRow {
                            wallet: wallet.0,
                            transaction: transfer.0,
                            shard: self.shard,
                            sequence,
                            delta,
                            currency: code,
                            scale,
                        });
                    }
                }
                Event::TransferSettled { transfer, status } => {
                    let (status, reason) = status_text(status);
                    match self.transaction_index.get(&transfer.0) {
                        Some(&index) => {
                            self.transactions[index].status = status;
                            self.transactions[index].reason = reason;
                        }
                        None => self.status_updates.push(StatusUpdate {
                            id: transfer.0,
                            shard: self.shard,
                            status,
                            reason,
                        }),
                    }
                }
                Event::HoldPlaced {
                    hold,
                    wallet,
                    amount,
                    expires_at_ns,
                    withdrawal,
                } => {
                    let (code, scale) = self.currency_of(engine, wallet);
                    self.hold_index.insert(hold.0, self.holds.len());
                    self.holds.push(HoldRow {
                        id: hold.0,
                        shard: self.shard,
                        wallet: wallet.0,
                        amount,
                        currency: code,
                        scale,
                        withdrawal,
                        status: "open",
                        captured: None,
                        expires_at_ns,
                        created_at_ns: now,
                        closed_at_ns: None,
                        sequence,
                    });
                }
                Event::HoldCaptured {
                    hold,
                    wallet,
                    captured,
                    ..
                } => self.close_hold(
                    engine,
                    hold.0,
                    wallet,
                    "captured",
                    Some(captured),
                    now,
                    sequence,
                ),
                Event::HoldReleased {
                    hold,
                    wallet,
                    reason,
                    ..
                } => {
                    let status = match reason {
                        ReleaseReason::Released => "released",
                        ReleaseReason::Expired => "expired",
                    };
                    self.close_hold(engine, hold.0, wallet, status, None, now, sequence);
                }
            }
        }
        if let Some(key) = key {
            // A new record (or one re-made after the key was forgotten): the engine now answers
            // this key with exactly this outcome. A retry returns the recorded outcome and
            // changes nothing; writing it again is harmless (same key, same outcome) and is
            // skipped by the upsert's condition.
            if engine.outcome_of(key).as_ref() == Some(outcome) {
                let row = IdempotencyRow {
                    shard: self.shard,
                    key: key.as_bytes().to_vec(),
                    transaction: outcome_transaction(outcome),
                    outcome: outcome_text(outcome),
                    sequence,
                    created_at_ns: now,
                    fresh: !key_known_before,
                };
                match self.idempotency_index.get(key.as_bytes()) {
                    Some(&index) => {
                        let kept = &self.idempotency[index];
                        if kept.outcome != row.outcome || kept.transaction != row.transaction {
                            self.idempotency[index] = row;
                        }
                    }
                    None => {
                        self.idempotency_index
                            .insert(row.key.clone(), self.idempotency.len());
                        self.idempotency.push(row);
                    }
                }
            }
        }
    }

    fn currency_of(&self, engine: &Engine, wallet: WalletId) -> (CurrencyCode, u8) {
        let Some(info) = engine
            .wallet(wallet)
            .and_then(|w| engine.currency(w.currency))
        else {
            unreachable!("a hold on a wallet the engine does not have")
        };
        (info.code, info.scale)
    }

    #[allow(clippy::too_many_arguments)]
    fn close_hold(
        &mut self,
        engine: &Engine,
        hold: u64,
        wallet: WalletId,
        status: &'static str,
        captured: Option<u128>,
        now: u64,
        sequence: u64,
    ) {
        match self.hold_index.get(&hold) {
            Some(&index) => {
                let row = &mut self.holds[index];
                row.status = status;
                row.captured = captured;
                row.closed_at_ns = Some(now);
                row.sequence = sequence;
            }
            None => {
                let (_, scale) = self.currency_of(engine, wallet);
                self.hold_closes.push(HoldClose {
                    id: hold,
                    status,
                    captured,
                    scale,
                    closed_at_ns: now,
                    sequence,
                });
            }
        }
    }

    /// Reads the final values of every wallet the batch touched (call once, after the last
    /// record of the batch was applied).
    pub fn finish(&mut self, engine: &Engine) {
        self.wallets.clear();
        self.touched.sort_unstable_by_key(|w| w.0);
        for &wallet in &self.touched {
            if let Some(mut row) = wallet_row(engine, wallet) {
                row.opened = self.touched_index.get(&wallet.0) == Some(&true);
                self.wallets.push(row);
            }
        }
    }
}

#[cfg(test)]
mod tests;
