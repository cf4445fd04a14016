//! Queries, their results, and the per-command results of a batch.

use paycore_engine::codec::{decode_outcome, encode_outcome};
use paycore_engine::currency::CURRENCY_SCALE_MAX;
use paycore_engine::{
    CurrencyCode, CurrencyInfo, Hold, HoldId, IdempotencyKey, Outcome, ShardId, SystemRole, UserId,
    Wallet, WalletId, WalletKind, WalletStatus,
};

use crate::error::{EncodeError, ProtocolErrorKind};
use crate::event::read_wallet_status;
use crate::wire::{
    Reader, Result, put_code, put_count, put_i128, put_option, put_u16, put_u64, put_u128,
};
use crate::{QUERY_RESULT_WALLETS_MAX, STATUS_SHARDS_MAX};

/// What became of one command of a batch, in the batch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandResult {
    /// The shard applied the command (and its journal record is durable).
    Outcome(Outcome),
    /// The shard's input ring was full; the command was not journaled. Retry with the same key.
    Busy,
    /// The shard is not served by this node right now (failing over, or another node's); the
    /// command was not journaled. Retry with the same key, possibly elsewhere.
    ShardUnavailable,
    /// The shard is read-only because its disk is (nearly) full: the command was not journaled.
    /// Reads still work; retry with the same key once the operator has made room (the shard
    /// resumes by itself). Added after version 1's tags; older peers never send it.
    DiskFull,
}

/// Bytes of the shortest result encoding.
pub(crate) const COMMAND_RESULT_BYTES_MIN: usize = 1;

/// `0 outcome | 1 busy | 2 shard_unavailable | 3 disk_full`, the outcome in the engine codec's encoding.
pub(crate) fn put_command_result(out: &mut Vec<u8>, result: &CommandResult) {
    match result {
        CommandResult::Outcome(outcome) => {
            out.push(0);
            encode_outcome(outcome, out);
        }
        CommandResult::Busy => out.push(1),
        CommandResult::ShardUnavailable => out.push(2),
        CommandResult::DiskFull => out.push(3),
    }
}

pub(crate) fn read_command_result(r: &mut Reader<'_>) -> Result<CommandResult> {
    let at = r.offset;
    match r.u8()? {
        0 => Ok(CommandResult::Outcome(read_outcome(r)?)),
        1 => Ok(CommandResult::Busy),
        2 => Ok(CommandResult::ShardUnavailable),
        3 => Ok(CommandResult::DiskFull),
        tag => r.fail(
            at,
            ProtocolErrorKind::Tag {
                field: "command_result",
                tag,
            },
        ),
    }
}

fn read_outcome(r: &mut Reader<'_>) -> Result<Outcome> {
    let start = r.offset;
    match decode_outcome(r.rest()) {
        Ok((outcome, used)) => {
            r.skip(used)?;
            Ok(outcome)
        }
        Err(e) => r.fail(start + e.offset, ProtocolErrorKind::Outcome(e.kind)),
    }
}

/// A question to a node. Queries read the shard's live engine state (what has been applied;
/// possibly a moment ahead of what is durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Answered by [`QueryResult::Wallet`]; system wallets included.
    WalletById(WalletId),
    /// The user's open wallets, in currency registration order: [`QueryResult::Wallets`].
    WalletsOfUser(UserId),
    /// An open hold: [`QueryResult::Hold`] (`None` once captured, released or expired).
    HoldById(HoldId),
    /// The recorded outcome of a client key on a shard, while it is inside the idempotency
    /// window: [`QueryResult::Outcome`].
    OutcomeByKey { shard: ShardId, key: IdempotencyKey },
    /// The node's shards and their positions: [`QueryResult::Status`].
    Status,
}

/// `1 wallet id:u64 | 2 wallets_of_user user:u128 | 3 hold id:u64 |
/// 4 outcome shard:u16 key_len:u8 key | 5 status`
pub(crate) fn put_query(out: &mut Vec<u8>, query: &Query) -> std::result::Result<(), EncodeError> {
    match query {
        Query::WalletById(wallet) => {
            out.push(1);
            put_u64(out, wallet.0);
        }
        Query::WalletsOfUser(user) => {
            out.push(2);
            put_u128(out, user.0);
        }
        Query::HoldById(hold) => {
            out.push(3);
            put_u64(out, hold.0);
        }
        Query::OutcomeByKey { shard, key } => {
            check_shard(*shard)?;
            out.push(4);
            put_u16(out, *shard);
            let bytes = key.as_bytes();
            // A key is 1 to 255 bytes.
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
        Query::Status => out.push(5),
    }
    Ok(())
}

pub(crate) fn read_query(r: &mut Reader<'_>) -> Result<Query> {
    let at = r.offset;
    let query = match r.u8()? {
        1 => Query::WalletById(WalletId(r.u64()?)),
        2 => Query::WalletsOfUser(UserId(r.u128()?)),
        3 => Query::HoldById(HoldId(r.u64()?)),
        4 => {
            let shard = r.shard()?;
            let key_at = r.offset;
            let len = usize::from(r.u8()?);
            let key = IdempotencyKey::new(r.slice(len)?);
            match key {
                Ok(key) => Query::OutcomeByKey { shard, key },
                Err(_) => return r.fail(key_at, ProtocolErrorKind::IdempotencyKey),
            }
        }
        5 => Query::Status,
        tag => {
            return r.fail(
                at,
                ProtocolErrorKind::Tag {
                    field: "query",
                    tag,
                },
            );
        }
    };
    Ok(query)
}

/// The answer to a [`Query`], of the matching variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    Wallet(Option<WalletView>),
    /// At most [`QUERY_RESULT_WALLETS_MAX`] wallets (a user has at most one open wallet per
    /// currency, and a shard at most that many currencies).
    Wallets(Vec<WalletView>),
    Hold(Option<HoldView>),
    Outcome(Option<Outcome>),
    Status(StatusView),
}

/// `1 wallet option<wallet_view> | 2 wallets count:u16 wallet_view{count} |
/// 3 hold option<hold_view> | 4 outcome option<outcome> | 5 status status_view`
pub(crate) fn put_query_result(
    out: &mut Vec<u8>,
    result: &QueryResult,
) -> std::result::Result<(), EncodeError> {
    match result {
        QueryResult::Wallet(wallet) => {
            out.push(1);
            match wallet {
                None => out.push(0),
                Some(wallet) => {
                    out.push(1);
                    wallet.put(out)?;
                }
            }
        }
        QueryResult::Wallets(wallets) => {
            check_count("wallets", wallets.len(), QUERY_RESULT_WALLETS_MAX)?;
            out.push(2);
            put_count(out, wallets.len());
            for wallet in wallets {
                wallet.put(out)?;
            }
        }
        QueryResult::Hold(hold) => {
            out.push(3);
            put_option(out, hold.as_ref(), |out, hold| hold.put(out));
        }
        QueryResult::Outcome(outcome) => {
            out.push(4);
            put_option(out, outcome.as_ref(), |out, outcome| {
                encode_outcome(outcome, out)
            });
        }
        QueryResult::Status(status) => {
            out.push(5);
            status.put(out)?;
        }
    }
    Ok(())
}

pub(crate) fn read_query_result(r: &mut Reader<'_>) -> Result<QueryResult> {
    let at = r.offset;
    let result = match r.u8()? {
        1 => QueryResult::Wallet(r.option(WalletView::read)?),
        2 => {
            let count = r.count("wallets", QUERY_RESULT_WALLETS_MAX)?;
            let mut wallets = Vec::with_capacity(r.capacity(count, WalletView::BYTES_MIN));
            for _ in 0..count {
                wallets.push(WalletView::read(r)?);
            }
            QueryResult::Wallets(wallets)
        }
        3 => QueryResult::Hold(r.option(HoldView::read)?),
        4 => QueryResult::Outcome(r.option(read_outcome)?),
        5 => QueryResult::Status(StatusView::read(r)?),
        tag => {
            return r.fail(
                at,
                ProtocolErrorKind::Tag {
                    field: "query_result",
                    tag,
                },
            );
        }
    };
    Ok(result)
}

/// A wallet as a client sees it: the engine's [`Wallet`] with its currency's code and scale in
/// place of the shard-local currency id, and without engine bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletView {
    pub id: WalletId,
    /// `UserId(0)` for a system wallet.
    pub user: UserId,
    pub kind: WalletKind,
    pub currency: CurrencyCode,
    /// Decimal places of the currency, at most 18: amounts are in `10^-scale` units.
    pub scale: u8,
    pub available: i128,
    pub frozen: i128,
    pub version: u64,
    pub status: WalletStatus,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
}

impl WalletView {
    /// Bytes of the shortest encoding (a one-letter code).
    pub(crate) const BYTES_MIN: usize = 85;
    /// Bytes of the longest encoding (a ten-letter code).
    pub const BYTES_MAX: usize = 94;

    /// The view of the engine's wallet `id`, of currency `currency` (`engine.currency(wallet.currency)`).
    pub fn new(id: WalletId, wallet: &Wallet, currency: &CurrencyInfo) -> WalletView {
        WalletView {
            id,
            user: wallet.user,
            kind: wallet.kind,
            currency: currency.code,
            scale: currency.scale,
            available: wallet.available,
            frozen: wallet.frozen,
            version: wallet.version,
            status: wallet.status,
            created_at_ns: wallet.created_at_ns,
            updated_at_ns: wallet.updated_at_ns,
        }
    }

    /// `id:u64 user:u128 kind:u8 currency:code scale:u8 available:i128 frozen:i128 version:u64
    /// status:u8 created_at_ns:u64 updated_at_ns:u64`; kind 0 user, 1 settlement, 2 fx_house,
    /// 3 fees, 4 in_transit.
    fn put(&self, out: &mut Vec<u8>) -> std::result::Result<(), EncodeError> {
        if self.scale > CURRENCY_SCALE_MAX {
            return Err(EncodeError::Scale(self.scale));
        }
        put_u64(out, self.id.0);
        put_u128(out, self.user.0);
        out.push(match self.kind {
            WalletKind::User => 0,
            WalletKind::System(role) => 1 + role as u8,
        });
        put_code(out, &self.currency);
        out.push(self.scale);
        put_i128(out, self.available);
        put_i128(out, self.frozen);
        put_u64(out, self.version);
        out.push(self.status as u8);
        put_u64(out, self.created_at_ns);
        put_u64(out, self.updated_at_ns);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<WalletView> {
        let id = WalletId(r.u64()?);
        let user = UserId(r.u128()?);
        let kind_at = r.offset;
        let kind = match r.u8()? {
            0 => WalletKind::User,
            1 => WalletKind::System(SystemRole::Settlement),
            2 => WalletKind::System(SystemRole::FxHouse),
            3 => WalletKind::System(SystemRole::Fees),
            4 => WalletKind::System(SystemRole::InTransit),
            tag => {
                return r.fail(
                    kind_at,
                    ProtocolErrorKind::Tag {
                        field: "wallet_kind",
                        tag,
                    },
                );
            }
        };
        let currency = r.code()?;
        let scale_at = r.offset;
        let scale = r.u8()?;
        if scale > CURRENCY_SCALE_MAX {
            return r.fail(scale_at, ProtocolErrorKind::Scale(scale));
        }
        Ok(WalletView {
            id,
            user,
            kind,
            currency,
            scale,
            available: r.i128()?,
            frozen: r.i128()?,
            version: r.u64()?,
            status: read_wallet_status(r)?,
            created_at_ns: r.u64()?,
            updated_at_ns: r.u64()?,
        })
    }
}

/// An open hold, as the engine keeps it ([`Hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldView {
    pub id: HoldId,
    pub wallet: WalletId,
    pub amount: u128,
    pub expires_at_ns: Option<u64>,
    /// A withdrawal hold: captured to settlement only.
    pub withdrawal: bool,
    pub created_at_ns: u64,
}

impl From<&Hold> for HoldView {
    fn from(hold: &Hold) -> HoldView {
        HoldView {
            id: hold.id,
            wallet: hold.wallet,
            amount: hold.amount,
            expires_at_ns: hold.expires_at_ns,
            withdrawal: hold.withdrawal,
            created_at_ns: hold.created_at_ns,
        }
    }
}

impl HoldView {
    /// `id:u64 wallet:u64 amount:u128 expires_at_ns:option<u64> withdrawal:u8 created_at_ns:u64`
    fn put(&self, out: &mut Vec<u8>) {
        put_u64(out, self.id.0);
        put_u64(out, self.wallet.0);
        put_u128(out, self.amount);
        put_option(out, self.expires_at_ns, put_u64);
        out.push(u8::from(self.withdrawal));
        put_u64(out, self.created_at_ns);
    }

    fn read(r: &mut Reader<'_>) -> Result<HoldView> {
        Ok(HoldView {
            id: HoldId(r.u64()?),
            wallet: WalletId(r.u64()?),
            amount: r.u128()?,
            expires_at_ns: r.option(Reader::u64)?,
            withdrawal: r.flag()?,
            created_at_ns: r.u64()?,
        })
    }
}

/// A node's status: one entry per shard it serves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusView {
    /// At most [`STATUS_SHARDS_MAX`].
    pub shards: Vec<ShardStatus>,
}

/// One shard's position and load. On the wire, `shard:u16 fields:u8 value:u64{fields}`: the
/// values of the named fields in this order, then `extra`. A later version appends fields (and
/// older readers keep them in `extra`); it never removes or reorders one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardStatus {
    pub shard: ShardId,
    /// Sequence of the last command applied.
    pub last_sequence: u64,
    /// Sequence up to which the journal is durable (replies are released up to here).
    pub durable_sequence: u64,
    /// Timestamp of the last command applied, ns since the Unix epoch.
    pub last_timestamp_ns: u64,
    /// Commands waiting in the shard's input ring, and the ring's size.
    pub ring_depth: u64,
    pub ring_capacity: u64,
    pub wallets: u64,
    pub open_holds: u64,
    pub transfers_in_flight: u64,
    pub idempotency_entries: u64,
    /// Idempotency records forgotten before their window passed (alert when it grows).
    pub idempotency_evicted_early: u64,
    /// Fields of a newer version that this one does not name, in order; empty when built here.
    pub extra: Vec<u64>,
}

impl ShardStatus {
    /// Named fields of protocol version 1: a shard status carries at least these.
    pub const FIELDS_V1: u8 = 10;
    /// Bytes of the shortest encoding.
    const BYTES_MIN: usize = 3 + 8 * Self::FIELDS_V1 as usize;

    fn put(&self, out: &mut Vec<u8>) -> std::result::Result<(), EncodeError> {
        check_shard(self.shard)?;
        let extra_max = usize::from(u8::MAX - Self::FIELDS_V1);
        check_count("shard status fields", self.extra.len(), extra_max)?;
        put_u16(out, self.shard);
        // At most 255 in total, checked above.
        out.push(Self::FIELDS_V1 + self.extra.len() as u8);
        for value in [
            self.last_sequence,
            self.durable_sequence,
            self.last_timestamp_ns,
            self.ring_depth,
            self.ring_capacity,
            self.wallets,
            self.open_holds,
            self.transfers_in_flight,
            self.idempotency_entries,
            self.idempotency_evicted_early,
        ] {
            put_u64(out, value);
        }
        for value in &self.extra {
            put_u64(out, *value);
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<ShardStatus> {
        let shard = r.shard()?;
        let fields_at = r.offset;
        let fields = r.u8()?;
        if fields < Self::FIELDS_V1 {
            return r.fail(fields_at, ProtocolErrorKind::StatusFields(fields));
        }
        let mut status = ShardStatus {
            shard,
            last_sequence: r.u64()?,
            durable_sequence: r.u64()?,
            last_timestamp_ns: r.u64()?,
            ring_depth: r.u64()?,
            ring_capacity: r.u64()?,
            wallets: r.u64()?,
            open_holds: r.u64()?,
            transfers_in_flight: r.u64()?,
            idempotency_entries: r.u64()?,
            idempotency_evicted_early: r.u64()?,
            extra: Vec::new(),
        };
        let extra = usize::from(fields - Self::FIELDS_V1);
        status.extra.reserve_exact(r.capacity(extra, 8));
        for _ in 0..extra {
            status.extra.push(r.u64()?);
        }
        Ok(status)
    }
}

impl StatusView {
    /// `count:u16 shard_status{count}`
    fn put(&self, out: &mut Vec<u8>) -> std::result::Result<(), EncodeError> {
        check_count("status shards", self.shards.len(), STATUS_SHARDS_MAX)?;
        put_count(out, self.shards.len());
        for shard in &self.shards {
            shard.put(out)?;
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<StatusView> {
        let count = r.count("status shards", STATUS_SHARDS_MAX)?;
        let mut shards = Vec::with_capacity(r.capacity(count, ShardStatus::BYTES_MIN));
        for _ in 0..count {
            shards.push(ShardStatus::read(r)?);
        }
        Ok(StatusView { shards })
    }
}

pub(crate) fn check_shard(shard: ShardId) -> std::result::Result<(), EncodeError> {
    if shard >= paycore_engine::SHARD_COUNT_MAX {
        return Err(EncodeError::Shard(shard));
    }
    Ok(())
}

pub(crate) fn check_count(
    field: &'static str,
    count: usize,
    max: usize,
) -> std::result::Result<(), EncodeError> {
    if count > max {
        return Err(EncodeError::TooMany { field, count, max });
    }
    Ok(())
}
