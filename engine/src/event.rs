//! Events: what downstream consumers (gateways, the Postgres flusher, notifications) learn of
//! each applied command, and the messages a shard sends to other shards.
//!
//! The engine appends to a caller-owned [`Effects`] buffer (cleared by the caller between
//! commands or batches), so applying a command allocates nothing for its events.

use crate::command::{CreditLeg, SettleLeg, Tier};
use crate::currency::CurrencyId;
use crate::ids::{HoldId, ShardId, TransferId, UserId, WalletId};
use crate::outcome::Reject;
use crate::wallet::WalletStatus;

/// Why money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransferKind {
    Deposit = 1,
    Transfer = 2,
    /// Capture of an authorisation hold to a destination wallet.
    Capture = 3,
    /// Capture of a withdrawal hold to settlement: money leaving the system.
    Withdrawal = 4,
    /// The source side of an exchange (user -> FX house, source currency).
    ExchangeOut = 5,
    /// The target side of an exchange (FX house -> user, target currency).
    ExchangeIn = 6,
    /// A cross-shard credit the destination refused, returned to the sender.
    Refund = 7,
}

/// The state of a movement when its event was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferStatus {
    Completed,
    /// Debited here; the credit waits on another shard.
    Pending,
    /// The other shard refused the credit with this reason; the sender was refunded.
    Bounced(Reject),
}

/// Why a hold left the frozen balance without being captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    Released,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    CurrencyRegistered {
        currency: CurrencyId,
        scale: u8,
    },
    WalletOpened {
        wallet: WalletId,
        user: UserId,
        currency: CurrencyId,
    },
    WalletStatusChanged {
        wallet: WalletId,
        user: UserId,
        status: WalletStatus,
    },
    TierChanged {
        user: UserId,
        tier: Tier,
    },
    /// A wallet's balances after a change; `version` is the wallet's new version.
    BalanceChanged {
        wallet: WalletId,
        user: UserId,
        currency: CurrencyId,
        available: i128,
        frozen: i128,
        version: u64,
    },
    /// One movement of money, from one wallet to another.
    Transfer {
        transfer: TransferId,
        kind: TransferKind,
        from: WalletId,
        to: WalletId,
        amount: u128,
        currency: CurrencyId,
        status: TransferStatus,
    },
    /// A cross-shard transfer this shard debited has been credited, or bounced and refunded.
    TransferSettled {
        transfer: TransferId,
        status: TransferStatus,
    },
    HoldPlaced {
        hold: HoldId,
        wallet: WalletId,
        amount: u128,
        expires_at_ns: Option<u64>,
        withdrawal: bool,
    },
    HoldCaptured {
        hold: HoldId,
        wallet: WalletId,
        captured: u128,
        released: u128,
    },
    HoldReleased {
        hold: HoldId,
        wallet: WalletId,
        amount: u128,
        reason: ReleaseReason,
    },
}

/// A message to another shard, to be journaled and applied there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMessage {
    Credit { to_shard: ShardId, leg: CreditLeg },
    Settle { to_shard: ShardId, leg: SettleLeg },
}

/// What applying commands produced, beside their outcomes. Owned and cleared by the caller.
#[derive(Debug)]
pub struct Effects {
    pub events: Vec<Event>,
    pub messages: Vec<ShardMessage>,
    /// False for [`Effects::without_events`].
    keep_events: bool,
}

impl Default for Effects {
    fn default() -> Self {
        Effects {
            events: Vec::new(),
            messages: Vec::new(),
            keep_events: true,
        }
    }
}

impl Effects {
    /// Effects that drop every event and keep only the cross-shard messages: for replay and
    /// the snapshot replica, which throw the events away anyway. Building and copying ~3
    /// events (~300 B) per transfer was a tenth of the apply path's instructions, and their
    /// buffer cycled megabytes through the cache. Events never feed back into state, so an
    /// engine applies the same commands to the same state either way.
    pub fn without_events() -> Effects {
        Effects {
            keep_events: false,
            ..Effects::default()
        }
    }

    /// Records an event (unless these effects drop them).
    #[inline]
    pub(crate) fn event(&mut self, event: Event) {
        if self.keep_events {
            self.events.push(event);
        }
    }

    pub fn clear(&mut self) {
        self.events.clear();
        self.messages.clear();
    }
}
