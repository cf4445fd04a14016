//! Commands: what clients, other shards and the sequencer ask a shard to do.
//!
//! A command carries no sequence number and no timestamp: the sequencer supplies both when it
//! applies the command (`Engine::apply`), so the journal, not the client, decides order and time.

use crate::currency::{CURRENCY_SCALE_MAX, CurrencyCode};
use crate::digest::{Digest, Sink};
use crate::ids::{HoldId, ShardId, TransferId, UserId, WalletId};
use crate::outcome::Reject;

/// Longest idempotency key, in bytes (the seed's VARCHAR(255)).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Most operations in one linked group.
pub const LINKED_OPS_MAX: usize = 64;

/// A client's idempotency key: 1 to 255 bytes, compared byte for byte.
///
/// Keys are global within a shard; gateways namespace them (for example with the user id) so that
/// one client cannot collide with another's keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<[u8]>);

impl IdempotencyKey {
    pub fn new(bytes: &[u8]) -> Result<Self, Reject> {
        if bytes.is_empty() || bytes.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(Reject::IdempotencyKeyInvalid);
        }
        Ok(IdempotencyKey(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A user's verification tier, which selects their velocity limits (the seed's tiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Tier {
    #[default]
    Unverified = 0,
    Verified = 1,
    Premium = 2,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Unverified, Tier::Verified, Tier::Premium];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An exchange rate: units of the target currency per unit of the source currency, as the
/// decimal `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    mantissa: u128,
    scale: u8,
}

impl Rate {
    /// `None` for a zero rate, a scale above 18, or a rate of 10^10 or more.
    pub fn new(mantissa: u128, scale: u8) -> Option<Rate> {
        let in_range = scale <= CURRENCY_SCALE_MAX
            && mantissa > 0
            && mantissa < 10u128.pow(10 + u32::from(scale));
        in_range.then_some(Rate { mantissa, scale })
    }

    pub fn mantissa(self) -> u128 {
        self.mantissa
    }

    pub fn scale(self) -> u8 {
        self.scale
    }
}

/// What a shard receives, in journal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A client's request, under its idempotency key.
    Client { key: IdempotencyKey, op: Op },
    /// The credit side of a transfer whose debit side another shard applied.
    CreditLeg(CreditLeg),
    /// The answer of a destination shard to a credit leg this shard sent.
    SettleLeg(SettleLeg),
    /// Time passes: expire the holds that are due. The sequencer sends it when a shard is idle.
    Tick,
}

/// A client operation. Amounts are minor units of the named currency; the currency is repeated
/// so that an edge that parsed an amount with the wrong scale is caught (`currency_mismatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Admin: add a currency (and its four system wallets) to this shard's registry.
    RegisterCurrency {
        code: CurrencyCode,
        scale: u8,
    },
    /// Admin: the outgoing limit of a tier in a currency over a rolling 24 h; `None` lifts it.
    SetVelocityLimit {
        tier: Tier,
        currency: CurrencyCode,
        limit_24h: Option<u128>,
    },
    /// Admin (e.g. on KYC approval): a user's tier.
    SetTier {
        user: UserId,
        tier: Tier,
    },
    OpenWallet {
        user: UserId,
        currency: CurrencyCode,
    },
    /// Only at zero balance with no open hold and no transfer in flight.
    CloseWallet {
        wallet: WalletId,
    },
    /// Settlement -> wallet: money entering the system.
    Deposit {
        wallet: WalletId,
        amount: u128,
        currency: CurrencyCode,
    },
    /// Available funds of `from` -> `to`, same currency, possibly on another shard.
    Transfer {
        from: WalletId,
        to: WalletId,
        amount: u128,
        currency: CurrencyCode,
    },
    /// Available -> frozen under a new hold; it expires at `expires_at_ns` if given.
    Hold {
        wallet: WalletId,
        amount: u128,
        currency: CurrencyCode,
        expires_at_ns: Option<u64>,
    },
    /// `amount` (all when `None`) of a hold leaves to `to` (settlement for a withdrawal); the
    /// rest is released.
    Capture {
        hold: HoldId,
        amount: Option<u128>,
        to: Option<WalletId>,
    },
    /// The whole hold returns to available.
    Release {
        hold: HoldId,
    },
    /// A withdrawal hold: captured to settlement when the provider pays out, or released to
    /// cancel.
    Withdraw {
        wallet: WalletId,
        amount: u128,
        currency: CurrencyCode,
    },
    FreezeWallet {
        wallet: WalletId,
    },
    UnfreezeWallet {
        wallet: WalletId,
    },
    /// `amount` of `from` becomes `floor(amount * rate)` (in `to`'s minor units) in `to`; both
    /// wallets belong to one user.
    Exchange {
        from: WalletId,
        to: WalletId,
        amount: u128,
        rate: Rate,
    },
    /// All of these apply, in order, or none does. Groups do not nest.
    Linked(Vec<Op>),
}

/// Credit side of a cross-shard transfer, produced by the sender's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditLeg {
    pub transfer: TransferId,
    pub from: WalletId,
    pub to: WalletId,
    pub amount: u128,
    pub currency: CurrencyCode,
    /// Sequence number of the debit on the origin shard; legs from one shard arrive in order.
    pub origin_sequence: u64,
    /// The highest transfer id to this destination whose settlement the origin has applied:
    /// the destination may forget its credit decisions up to it (it keeps the others, to
    /// answer a leg the origin sends again after a restart).
    pub settled_through: u128,
}

impl CreditLeg {
    pub fn origin_shard(&self) -> ShardId {
        self.transfer.shard()
    }
}

/// Result of a credit leg, sent back to the origin shard: completed, or bounced (refunded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleLeg {
    pub transfer: TransferId,
    /// Shard that applied (or refused) the credit.
    pub from_shard: ShardId,
    /// Sequence number of that decision on `from_shard`.
    pub from_sequence: u64,
    /// `None`: credited. `Some`: refused, the debit is refunded.
    pub refused: Option<Reject>,
}

impl Op {
    /// Feeds the operation's parameters, in a fixed little-endian encoding, to `digest`. Two
    /// operations with equal parameters digest equally on every machine and in every version.
    pub(crate) fn digest<S: Sink>(&self, digest: &mut Digest<S>) {
        match self {
            Op::RegisterCurrency { code, scale } => {
                digest.u8(1).code(code).u8(*scale);
            }
            Op::SetVelocityLimit {
                tier,
                currency,
                limit_24h,
            } => {
                digest.u8(2).u8(*tier as u8).code(currency);
                match limit_24h {
                    Some(limit) => digest.u8(1).u128(*limit),
                    None => digest.u8(0),
                };
            }
            Op::SetTier { user, tier } => {
                digest.u8(3).u128(user.0).u8(*tier as u8);
            }
            Op::OpenWallet { user, currency } => {
                digest.u8(4).u128(user.0).code(currency);
            }
            Op::CloseWallet { wallet } => {
                digest.u8(5).u64(wallet.0);
            }
            Op::Deposit {
                wallet,
                amount,
                currency,
            } => {
                digest.u8(6).u64(wallet.0).u128(*amount).code(currency);
            }
            Op::Transfer {
                from,
                to,
                amount,
                currency,
            } => {
                digest
                    .u8(7)
                    .u64(from.0)
                    .u64(to.0)
                    .u128(*amount)
                    .code(currency);
            }
            Op::Hold {
                wallet,
                amount,
                currency,
                expires_at_ns,
            } => {
                digest.u8(8).u64(wallet.0).u128(*amount).code(currency);
                match expires_at_ns {
                    Some(at) => digest.u8(1).u64(*at),
                    None => digest.u8(0),
                };
            }
            Op::Capture { hold, amount, to } => {
                digest.u8(9).u64(hold.0);
                match amount {
                    Some(amount) => digest.u8(1).u128(*amount),
                    None => digest.u8(0),
                };
                match to {
                    Some(to) => digest.u8(1).u64(to.0),
                    None => digest.u8(0),
                };
            }
            Op::Release { hold } => {
                digest.u8(10).u64(hold.0);
            }
            Op::Withdraw {
                wallet,
                amount,
                currency,
            } => {
                digest.u8(11).u64(wallet.0).u128(*amount).code(currency);
            }
            Op::FreezeWallet { wallet } => {
                digest.u8(12).u64(wallet.0);
            }
            Op::UnfreezeWallet { wallet } => {
                digest.u8(13).u64(wallet.0);
            }
            Op::Exchange {
                from,
                to,
                amount,
                rate,
            } => {
                digest.u8(14).u64(from.0).u64(to.0).u128(*amount);
                digest.u128(rate.mantissa).u8(rate.scale);
            }
            Op::Linked(ops) => {
                digest.u8(15).u64(ops.len() as u64);
                for op in ops {
                    op.digest(digest);
                }
            }
        }
    }
}
