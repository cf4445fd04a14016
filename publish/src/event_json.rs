//! The wire form of an event: one JSON object per event, with a versioned schema per type
//! (`schemas/events/<type>.v<version>.json`, JSON Schema 2020-12).
//!
//! Why JSON + JSON Schema rather than Avro or Protobuf: every consumer the seed names
//! (notification, analytics, audit, fraud) reads JSON without generated code, the audit log
//! stores the exact bytes it received and hashes them, and the schema files are checked by a
//! test in this crate. Amounts are exact decimal strings in the currency's major unit (never
//! floats); 64- and 128-bit ids are strings (JSON numbers lose precision past 2^53).
//!
//! Envelope (every type):
//!
//! ```text
//! { "event_id": "<shard>-<sequence>-<index>", "type": "<type>", "version": <n>,
//!   "shard": <u16>, "sequence": <u64>, "index": <u32>, "epoch": <u64>,
//!   "timestamp": "<RFC 3339, ns>", "timestamp_ns": "<u64 as text>", "data": { … } }
//! ```
//!
//! `event_id` is also the JetStream message id (`Nats-Msg-Id`): a function of the journal
//! position alone, so a publisher that starts again from any point sends the same id for the
//! same event.

use paycore_engine::{CurrencyId, Engine, Event, ReleaseReason, Tier, WalletId};
use paycore_store::rows::{kind_text, status_text, wallet_status_text};

/// Where an event sits in a shard's history: the `index`-th event of journal record
/// `sequence`. Orders events within a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub shard: u16,
    pub sequence: u64,
    pub index: u32,
}

impl EventPosition {
    /// `<shard>-<sequence>-<index>`: the event id and JetStream message id.
    pub fn id(&self) -> String {
        format!("{}-{}-{}", self.shard, self.sequence, self.index)
    }

    /// Reads [`EventPosition::id`] back (`None` for anything else).
    pub fn parse(id: &str) -> Option<EventPosition> {
        let mut parts = id.split('-');
        let shard = parts.next()?.parse().ok()?;
        let sequence = parts.next()?.parse().ok()?;
        let index = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(EventPosition {
            shard,
            sequence,
            index,
        })
    }
}

/// What a consumer subscribes to: the subject is `<prefix>.<topic>.<shard>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Transaction,
    Wallet,
    Hold,
    User,
    Currency,
}

impl Topic {
    pub const ALL: [Topic; 5] = [
        Topic::Transaction,
        Topic::Wallet,
        Topic::Hold,
        Topic::User,
        Topic::Currency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Transaction => "transaction",
            Topic::Wallet => "wallet",
            Topic::Hold => "hold",
            Topic::User => "user",
            Topic::Currency => "currency",
        }
    }
}

/// Every event type with its current schema version and topic. Changing what a type
/// carries means a new version here and a new schema file (the schema test enforces it).
pub const EVENT_TYPES: [(&str, u32, Topic); 10] = [
    ("currency_registered", 1, Topic::Currency),
    ("wallet_opened", 1, Topic::Wallet),
    ("wallet_status_changed", 1, Topic::Wallet),
    ("tier_changed", 1, Topic::User),
    ("balance_changed", 1, Topic::Wallet),
    ("transfer", 1, Topic::Transaction),
    ("transfer_settled", 1, Topic::Transaction),
    ("hold_placed", 1, Topic::Hold),
    ("hold_captured", 1, Topic::Hold),
    ("hold_released", 1, Topic::Hold),
];

/// The type name of `event` (a key of [`EVENT_TYPES`]).
pub fn type_name(event: &Event) -> &'static str {
    match event {
        Event::CurrencyRegistered { .. } => "currency_registered",
        Event::WalletOpened { .. } => "wallet_opened",
        Event::WalletStatusChanged { .. } => "wallet_status_changed",
        Event::TierChanged { .. } => "tier_changed",
        Event::BalanceChanged { .. } => "balance_changed",
        Event::Transfer { .. } => "transfer",
        Event::TransferSettled { .. } => "transfer_settled",
        Event::HoldPlaced { .. } => "hold_placed",
        Event::HoldCaptured { .. } => "hold_captured",
        Event::HoldReleased { .. } => "hold_released",
    }
}

fn type_entry(event: &Event) -> (&'static str, u32, Topic) {
    let name = type_name(event);
    // Every variant is listed in EVENT_TYPES (checked by `every_type_is_listed_once`).
    EVENT_TYPES
        .iter()
        .copied()
        .find(|(n, _, _)| *n == name)
        .unwrap_or((name, 1, Topic::Transaction))
}

pub fn topic(event: &Event) -> Topic {
    type_entry(event).2
}

/// What the encoder needs to know of the shard's state: currency codes and scales, and the
/// currency of a local wallet (hold amounts). Implemented by the engine the events came from.
pub trait Currencies {
    /// (code, scale) of a currency; `None` if unknown.
    fn currency(&self, currency: CurrencyId) -> Option<(String, u8)>;
    fn wallet_currency(&self, wallet: WalletId) -> Option<CurrencyId>;
}

impl Currencies for Engine {
    fn currency(&self, currency: CurrencyId) -> Option<(String, u8)> {
        Engine::currency(self, currency).map(|info| (info.code.as_str().to_string(), info.scale))
    }

    fn wallet_currency(&self, wallet: WalletId) -> Option<CurrencyId> {
        self.wallet(wallet).map(|w| w.currency)
    }
}

/// Context of one event beside the event itself.
#[derive(Debug, Clone, Copy)]
pub struct EventMeta {
    pub position: EventPosition,
    pub epoch: u64,
    pub timestamp_ns: u64,
}

/// A JSON object written by hand: field order is fixed (the audit log hashes the bytes) and
/// no intermediate `Value` is built (the publisher encodes ~100 k events/s per core).
struct Writer<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Writer<'a> {
    fn open(out: &'a mut String) -> Writer<'a> {
        out.push('{');
        Writer { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_string(self.out, value);
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.str(key, value),
            None => self.raw(key, "null"),
        }
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.key(key);
        let _ = write!(self.out, "{value}");
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push_str(value);
    }

    fn close(self) {
        self.out.push('}');
    }
}

fn write_string(out: &mut String, value: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn tier_text(tier: Tier) -> &'static str {
    match tier {
        Tier::Unverified => "unverified",
        Tier::Verified => "verified",
        Tier::Premium => "premium",
    }
}

fn release_text(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::Released => "released",
        ReleaseReason::Expired => "expired",
    }
}

/// A u128 id as UUID text (the store's form of the same ids).
fn uuid(value: u128) -> String {
    paycore_store::schema::uuid_text(value)
}

/// An amount in minor units as exact decimal text in the currency's major unit; an unknown
/// currency (never for events of the engine that knows it) is written in minor units.
fn decimal(value: i128, scale: Option<u8>) -> String {
    paycore_store::decimal::format_minor(value, scale.unwrap_or(0))
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(ns: u64) -> String {
    let micros_text = paycore_store::time::timestamp_text(ns); // YYYY-MM-DD HH:MM:SS.ffffff
    let (date_time, _) = micros_text.split_once('.').unwrap_or((&micros_text, ""));
    format!(
        "{}.{:09}Z",
        date_time.replacen(' ', "T", 1),
        ns % 1_000_000_000
    )
}

/// Appends the JSON of `event` to `out`.
pub fn encode(event: &Event, meta: &EventMeta, currencies: &impl Currencies, out: &mut String) {
    let (name, version, _) = type_entry(event);
    let mut w = Writer::open(out);
    w.str("event_id", &meta.position.id());
    w.str("type", name);
    w.num("version", version);
    w.num("shard", meta.position.shard);
    w.num("sequence", meta.position.sequence);
    w.num("index", meta.position.index);
    w.num("epoch", meta.epoch);
    w.str("timestamp", &rfc3339(meta.timestamp_ns));
    w.str("timestamp_ns", &meta.timestamp_ns.to_string());
    w.key("data");
    encode_data(event, currencies, w.out);
    w.close();
}

fn encode_data(event: &Event, currencies: &impl Currencies, out: &mut String) {
    let scale_of = |c: CurrencyId| currencies.currency(c).map(|(_, s)| s);
    let code_of = |c: CurrencyId| {
        currencies
            .currency(c)
            .map_or_else(|| format!("#{}", c.0), |(code, _)| code)
    };
    let wallet_scale = |w: WalletId| currencies.wallet_currency(w).and_then(scale_of);
    let mut d = Writer::open(out);
    match *event {
        Event::CurrencyRegistered { currency, scale } => {
            d.str("currency", &code_of(currency));
            d.num("scale", scale);
        }
        Event::WalletOpened {
            wallet,
            user,
            currency,
        } => {
            d.str("wallet_id", &wallet.0.to_string());
            d.str("user_id", &uuid(user.0));
            d.str("currency", &code_of(currency));
        }
        Event::WalletStatusChanged {
            wallet,
            user,
            status,
        } => {
            d.str("wallet_id", &wallet.0.to_string());
            d.str("user_id", &uuid(user.0));
            d.str("status", wallet_status_text(status));
        }
        Event::TierChanged { user, tier } => {
            d.str("user_id", &uuid(user.0));
            d.str("tier", tier_text(tier));
        }
        Event::BalanceChanged {
            wallet,
            user,
            currency,
            available,
            frozen,
            version,
        } => {
            let scale = scale_of(currency);
            d.str("wallet_id", &wallet.0.to_string());
            d.str("user_id", &uuid(user.0));
            d.str("currency", &code_of(currency));
            d.str("available", &decimal(available, scale));
            d.str("frozen", &decimal(frozen, scale));
            d.str("balance", &decimal(available.saturating_add(frozen), scale));
            d.num("version", version);
        }
        Event::Transfer {
            transfer,
            kind,
            from,
            to,
            amount,
            currency,
            status,
        } => {
            let (status, reason) = status_text(status);
            d.str("transfer_id", &uuid(transfer.0));
            d.str("kind", kind_text(kind));
            d.str("from_wallet_id", &from.0.to_string());
            d.str("to_wallet_id", &to.0.to_string());
            d.str("amount", &decimal(amount as i128, scale_of(currency)));
            d.str("currency", &code_of(currency));
            d.str("status", status);
            d.opt_str("reason", reason);
        }
        Event::TransferSettled { transfer, status } => {
            let (status, reason) = status_text(status);
            d.str("transfer_id", &uuid(transfer.0));
            d.str("status", status);
            d.opt_str("reason", reason);
        }
        Event::HoldPlaced {
            hold,
            wallet,
            amount,
            expires_at_ns,
            withdrawal,
        } => {
            d.str("hold_id", &hold.0.to_string());
            d.str("wallet_id", &wallet.0.to_string());
            d.str("amount", &decimal(amount as i128, wallet_scale(wallet)));
            d.opt_str("expires_at", expires_at_ns.map(rfc3339).as_deref());
            d.raw("withdrawal", if withdrawal { "true" } else { "false" });
        }
        Event::HoldCaptured {
            hold,
            wallet,
            captured,
            released,
        } => {
            let scale = wallet_scale(wallet);
            d.str("hold_id", &hold.0.to_string());
            d.str("wallet_id", &wallet.0.to_string());
            d.str("captured", &decimal(captured as i128, scale));
            d.str("released", &decimal(released as i128, scale));
        }
        Event::HoldReleased {
            hold,
            wallet,
            amount,
            reason,
        } => {
            d.str("hold_id", &hold.0.to_string());
            d.str("wallet_id", &wallet.0.to_string());
            d.str("amount", &decimal(amount as i128, wallet_scale(wallet)));
            d.str("reason", release_text(reason));
        }
    }
    d.close();
}

#[cfg(test)]
mod tests;
