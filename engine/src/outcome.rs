//! Outcomes: what became of a command. Rejections are values, never panics or I/O errors.
//!
//! Every variant reads as a sentence about the command ("insufficient funds"), has a stable
//! snake_case code (`Reject::code`) that the wire protocol and problem+json responses carry, and a
//! stable number (`Reject as u8`) that the journal and the wire encode. Numbers are never reused.

use crate::ids::{HoldId, TransferId, WalletId};

/// Why a command was rejected. A rejected command changed nothing but the idempotency record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Reject {
    /// The debited wallet's available balance is below the amount.
    InsufficientFunds = 1,
    /// No wallet with that id on this shard (or a shard number past the deployment's).
    WalletNotFound = 2,
    /// The wallet is frozen by an admin and cannot send.
    WalletFrozen = 3,
    /// The wallet is closed: it can neither send nor receive.
    WalletClosed = 4,
    /// The wallets (or the command's currency and a wallet's) are of different currencies.
    CurrencyMismatch = 5,
    /// Source and destination are the same wallet.
    SameWallet = 6,
    /// Zero, or larger than the currency's largest balance.
    AmountInvalid = 7,
    /// The amount would take the wallet past its tier's 24 h outgoing limit.
    LimitExceeded = 8,
    /// The key was used before with other parameters.
    IdempotencyKeyReusedWithOtherParams = 9,
    /// The key is empty or longer than 255 bytes.
    IdempotencyKeyInvalid = 10,
    /// Reserved (never produced since v0.1: a full idempotency table forgets its oldest record
    /// instead, counted by `Engine::idempotency_evicted_early`). Kept so numbers never shift.
    IdempotencyCapacityExceeded = 11,
    /// The currency is not registered on this shard.
    CurrencyUnknown = 12,
    /// The currency is registered already.
    CurrencyExists = 13,
    /// The scale is above 18.
    ScaleInvalid = 14,
    /// The registry holds the most currencies it may.
    CurrencyCapacityExceeded = 15,
    /// The user has a wallet in this currency already.
    WalletExists = 16,
    /// The user id is the nil UUID, reserved for system wallets.
    UserInvalid = 17,
    /// The shard holds the most wallets it may.
    WalletCapacityExceeded = 18,
    /// A wallet can be closed only at zero balance.
    BalanceNotZero = 19,
    /// A wallet can be closed only with no open hold and no transfer in flight.
    WalletHasOpenHolds = 20,
    /// The credit would take a balance past the currency's largest value.
    BalanceOverflow = 21,
    /// The operation is for user wallets and names a system wallet (or the reverse).
    SystemWalletNotAllowed = 22,
    /// No hold with that id was ever placed on this shard.
    HoldNotFound = 23,
    /// The hold was captured, released or expired already.
    HoldClosed = 24,
    /// The capture amount is zero or larger than the hold.
    CaptureAmountInvalid = 25,
    /// A withdrawal hold is captured to settlement only; an authorisation needs a destination.
    CaptureDestinationInvalid = 26,
    /// The expiry is not after the command's timestamp.
    ExpiryInvalid = 27,
    /// The shard holds the most open holds it may.
    HoldCapacityExceeded = 28,
    /// The wallet is frozen already (freeze) or not frozen (unfreeze).
    WalletStatusUnchanged = 29,
    /// Exchange wallets must belong to the same user and be of different currencies.
    ExchangeWalletsInvalid = 30,
    /// The converted amount rounds down to zero.
    ExchangeAmountTooSmall = 31,
    /// A linked group is empty, too long, or nests another group.
    LinkedGroupInvalid = 32,
    /// Reserved: a failed linked group is reported as `Outcome::LinkedRejected` with the
    /// failing operation's index and its own reason.
    LinkedOpFailed = 33,
    /// The shard holds the most cross-shard transfers in flight it may; retry later.
    TransfersInFlightCapacityExceeded = 34,
    /// A cross-shard message this shard applied already (a redelivery); nothing changed.
    LegDuplicate = 35,
    /// A settle message for a transfer this shard is not waiting for.
    LegUnknown = 36,
    /// The velocity limit is invalid (zero or past the currency's largest value).
    LimitInvalid = 37,
    /// The user, wallet or hold belongs to another shard: the command was routed wrongly.
    WrongShard = 38,
}

impl Reject {
    /// Every rejection, for documentation and tests.
    pub const ALL: [Reject; 38] = [
        Reject::InsufficientFunds,
        Reject::WalletNotFound,
        Reject::WalletFrozen,
        Reject::WalletClosed,
        Reject::CurrencyMismatch,
        Reject::SameWallet,
        Reject::AmountInvalid,
        Reject::LimitExceeded,
        Reject::IdempotencyKeyReusedWithOtherParams,
        Reject::IdempotencyKeyInvalid,
        Reject::IdempotencyCapacityExceeded,
        Reject::CurrencyUnknown,
        Reject::CurrencyExists,
        Reject::ScaleInvalid,
        Reject::CurrencyCapacityExceeded,
        Reject::WalletExists,
        Reject::UserInvalid,
        Reject::WalletCapacityExceeded,
        Reject::BalanceNotZero,
        Reject::WalletHasOpenHolds,
        Reject::BalanceOverflow,
        Reject::SystemWalletNotAllowed,
        Reject::HoldNotFound,
        Reject::HoldClosed,
        Reject::CaptureAmountInvalid,
        Reject::CaptureDestinationInvalid,
        Reject::ExpiryInvalid,
        Reject::HoldCapacityExceeded,
        Reject::WalletStatusUnchanged,
        Reject::ExchangeWalletsInvalid,
        Reject::ExchangeAmountTooSmall,
        Reject::LinkedGroupInvalid,
        Reject::LinkedOpFailed,
        Reject::TransfersInFlightCapacityExceeded,
        Reject::LegDuplicate,
        Reject::LegUnknown,
        Reject::LimitInvalid,
        Reject::WrongShard,
    ];

    /// The stable snake_case code carried on the wire and in problem+json `code` fields.
    pub fn code(self) -> &'static str {
        match self {
            Reject::InsufficientFunds => "insufficient_funds",
            Reject::WalletNotFound => "wallet_not_found",
            Reject::WalletFrozen => "wallet_frozen",
            Reject::WalletClosed => "wallet_closed",
            Reject::CurrencyMismatch => "currency_mismatch",
            Reject::SameWallet => "same_wallet",
            Reject::AmountInvalid => "amount_invalid",
            Reject::LimitExceeded => "limit_exceeded",
            Reject::IdempotencyKeyReusedWithOtherParams => {
                "idempotency_key_reused_with_other_params"
            }
            Reject::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Reject::IdempotencyCapacityExceeded => "idempotency_capacity_exceeded",
            Reject::CurrencyUnknown => "currency_unknown",
            Reject::CurrencyExists => "currency_exists",
            Reject::ScaleInvalid => "scale_invalid",
            Reject::CurrencyCapacityExceeded => "currency_capacity_exceeded",
            Reject::WalletExists => "wallet_exists",
            Reject::UserInvalid => "user_invalid",
            Reject::WalletCapacityExceeded => "wallet_capacity_exceeded",
            Reject::BalanceNotZero => "balance_not_zero",
            Reject::WalletHasOpenHolds => "wallet_has_open_holds",
            Reject::BalanceOverflow => "balance_overflow",
            Reject::SystemWalletNotAllowed => "system_wallet_not_allowed",
            Reject::HoldNotFound => "hold_not_found",
            Reject::HoldClosed => "hold_closed",
            Reject::CaptureAmountInvalid => "capture_amount_invalid",
            Reject::CaptureDestinationInvalid => "capture_destination_invalid",
            Reject::ExpiryInvalid => "expiry_invalid",
            Reject::HoldCapacityExceeded => "hold_capacity_exceeded",
            Reject::WalletStatusUnchanged => "wallet_status_unchanged",
            Reject::ExchangeWalletsInvalid => "exchange_wallets_invalid",
            Reject::ExchangeAmountTooSmall => "exchange_amount_too_small",
            Reject::LinkedGroupInvalid => "linked_group_invalid",
            Reject::LinkedOpFailed => "linked_op_failed",
            Reject::TransfersInFlightCapacityExceeded => "transfers_in_flight_capacity_exceeded",
            Reject::LegDuplicate => "leg_duplicate",
            Reject::LegUnknown => "leg_unknown",
            Reject::LimitInvalid => "limit_invalid",
            Reject::WrongShard => "wrong_shard",
        }
    }

    /// From the stable number; `None` for a number no rejection has.
    pub fn from_u8(value: u8) -> Option<Reject> {
        Reject::ALL.iter().copied().find(|r| *r as u8 == value)
    }

    /// A retry of the same command later may succeed without anything else changing first
    /// (capacity limits). Idempotency does not record these.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Reject::IdempotencyCapacityExceeded | Reject::TransfersInFlightCapacityExceeded
        )
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// What an applied operation produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Done; nothing to name (freeze, close, set tier, release, …).
    Done,
    WalletOpened(WalletId),
    CurrencyRegistered(crate::currency::CurrencyId),
    /// A deposit, transfer or capture. `pending` when the credit waits on another shard.
    Transferred {
        transfer: TransferId,
        pending: bool,
    },
    /// A hold or a withdrawal hold was placed.
    HoldPlaced(HoldId),
    /// An exchange: the amount credited to the target wallet, in its minor units.
    Exchanged {
        transfer: TransferId,
        credited: u128,
    },
    /// Every operation of a linked group applied.
    Linked {
        ops: u16,
    },
}

/// The outcome of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok(Applied),
    Rejected(Reject),
    /// Operation `index` of a linked group was rejected with `reason`; nothing of the group
    /// applied.
    LinkedRejected {
        index: u16,
        reason: Reject,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// The rejection, if any (`LinkedRejected` gives its reason).
    pub fn rejection(&self) -> Option<Reject> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Rejected(reason) | Outcome::LinkedRejected { reason, .. } => Some(*reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_codes_are_unique_and_round_trip() {
        let mut codes = std::collections::BTreeSet::new();
        for (i, reject) in Reject::ALL.iter().enumerate() {
            assert_eq!(
                *reject as u8 as usize,
                i + 1,
                "numbers are dense and in order"
            );
            assert_eq!(Reject::from_u8(*reject as u8), Some(*reject));
            assert!(
                codes.insert(reject.code()),
                "duplicate code {}",
                reject.code()
            );
        }
        assert_eq!(Reject::from_u8(0), None);
        assert_eq!(Reject::from_u8(200), None);
    }
}
