//! Wallets: the balances of one user in one currency, or of one system role in one currency.
//!
//! Kept in one `Vec` indexed by slot (the low bits of the [`crate::WalletId`]); a wallet is
//! never removed, a closed wallet keeps its slot. The struct is kept at 96 bytes so that 10 M
//! wallets fit in under 1 GiB with their index.

use crate::command::Tier;
use crate::currency::CurrencyId;
use crate::ids::UserId;

/// Marker for "no velocity window allocated".
pub(crate) const NO_VELOCITY: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WalletStatus {
    Active = 0,
    /// Frozen by an admin: cannot send, hold, withdraw or exchange; **can** receive (a deposit
    /// or a payment to a frozen account is kept, not bounced, and stays frozen with it).
    Frozen = 1,
    /// Closed by its owner at zero balance: cannot send or receive, never reopens.
    Closed = 2,
}

/// What a system wallet is for. Each currency has one of each per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SystemRole {
    /// Counterpart of deposits and withdrawals: money entering and leaving the ledger.
    Settlement = 0,
    /// Counterpart of both sides of exchanges.
    FxHouse = 1,
    /// Receives fees (a transfer to it, usually in a linked group with the payment).
    Fees = 2,
    /// Holds money between the debit and credit legs of a cross-shard transfer.
    InTransit = 3,
}

impl SystemRole {
    pub const ALL: [SystemRole; 4] = [
        SystemRole::Settlement,
        SystemRole::FxHouse,
        SystemRole::Fees,
        SystemRole::InTransit,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalletKind {
    User,
    System(SystemRole),
}

/// One wallet. Invariants: `frozen >= 0`; for a user wallet also `available >= 0`, and its
/// balance stays within its currency's maximum except for a cross-shard refund (which returns
/// money the wallet held moments before); a system wallet's `frozen` is 0 and its `available`
/// may be negative, within `±SYSTEM_BALANCE_MAX`; `version` grows by one with each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wallet {
    pub available: i128,
    pub frozen: i128,
    pub user: UserId,
    pub version: u64,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
    pub currency: CurrencyId,
    pub status: WalletStatus,
    pub kind: WalletKind,
    /// The owner's tier, cached here so a transfer needs no user lookup.
    pub tier: Tier,
    /// Open holds plus cross-shard transfers in flight from this wallet: it cannot close
    /// while any is open.
    pub open_obligations: u32,
    /// Index of this wallet's velocity window, or [`NO_VELOCITY`].
    pub(crate) velocity: u32,
}

const _: () = assert!(std::mem::size_of::<Wallet>() == 96);

impl Wallet {
    /// available + frozen.
    pub fn balance(&self) -> i128 {
        self.available + self.frozen
    }

    pub fn is_user(&self) -> bool {
        self.kind == WalletKind::User
    }
}
