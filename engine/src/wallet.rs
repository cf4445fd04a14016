//! Wallets: the balances of one user in one currency, or of one system role in one currency.
//!
//! Stored by slot (the low bits of the [`crate::WalletId`]); a wallet is never removed, a closed
//! wallet keeps its slot. [`Wallet`] is the whole wallet as the engine's queries give it out;
//! inside, [`Wallets`] keeps it in three parallel vectors so that a payment touches one cache
//! line per wallet (issue 2's speed target is set over 1 M wallets, far more than any cache):
//!
//! - [`Hot`], 64 bytes, line-aligned: everything a transfer reads or writes except the time of
//!   the change (balances, owner, version, currency, status, kind, tier);
//! - `updated_at_ns`, 8 bytes: written by every change, read by no check, so a payment only
//!   stores to it, and 1 M of them (8 MB) mostly stay in the last-level cache;
//! - [`Cold`], 16 bytes: creation time, open obligations, velocity window, read by holds,
//!   closes and configured limits only.
//!
//! 88 bytes per wallet in all (the single 96-byte struct spanned two lines, both read by a
//! transfer).

use crate::chunked::{ChunkedVec, shift_for};
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

impl Wallet {
    /// available + frozen.
    pub fn balance(&self) -> i128 {
        self.available + self.frozen
    }

    pub fn is_user(&self) -> bool {
        self.kind == WalletKind::User
    }
}

/// The part of a wallet that payments read and write, in one cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Hot {
    pub(crate) available: i128,
    pub(crate) frozen: i128,
    /// Carried by every balance event.
    pub(crate) user: UserId,
    pub(crate) version: u64,
    pub(crate) currency: CurrencyId,
    pub(crate) status: WalletStatus,
    pub(crate) kind: WalletKind,
    pub(crate) tier: Tier,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 64);
const _: () = assert!(std::mem::align_of::<Hot>() == 64);

impl Hot {
    /// available + frozen.
    pub(crate) fn balance(&self) -> i128 {
        self.available + self.frozen
    }

    pub(crate) fn is_user(&self) -> bool {
        self.kind == WalletKind::User
    }
}

/// The part of a wallet that payments between open wallets never touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cold {
    pub(crate) created_at_ns: u64,
    pub(crate) open_obligations: u32,
    /// Index of the wallet's velocity window, or [`NO_VELOCITY`].
    pub(crate) velocity: u32,
}

const _: () = assert!(std::mem::size_of::<Cold>() == 16);

/// Bytes the engine stores per wallet: the hot line, the change time and the cold part.
pub const WALLET_STORED_BYTES: usize =
    std::mem::size_of::<Hot>() + std::mem::size_of::<u64>() + std::mem::size_of::<Cold>();

/// Each part of the wallets in 32 MiB chunks that never move (`chunked.rs`): opening the
/// millionth wallet costs what opening the first did, where a doubling vector once copied
/// every wallet inside a batch.
const HOT_SHIFT: u32 = shift_for::<Hot>();
const UPDATED_SHIFT: u32 = shift_for::<u64>();
const COLD_SHIFT: u32 = shift_for::<Cold>();

/// All wallets of a shard, by slot, split by access (see the module docs). The three arrays
/// always have the same length. Indexing (`wallets[slot]`) gives the hot part.
#[derive(Debug, Clone)]
pub(crate) struct Wallets {
    hot: ChunkedVec<Hot, HOT_SHIFT>,
    updated_at_ns: ChunkedVec<u64, UPDATED_SHIFT>,
    cold: ChunkedVec<Cold, COLD_SHIFT>,
}

impl Default for Wallets {
    fn default() -> Self {
        Wallets::with_capacity(0, false)
    }
}

/// A whole wallet as its hot part, change time and cold part.
fn split(wallet: &Wallet) -> (Hot, u64, Cold) {
    let hot = Hot {
        available: wallet.available,
        frozen: wallet.frozen,
        user: wallet.user,
        version: wallet.version,
        currency: wallet.currency,
        status: wallet.status,
        kind: wallet.kind,
        tier: wallet.tier,
    };
    let cold = Cold {
        created_at_ns: wallet.created_at_ns,
        open_obligations: wallet.open_obligations,
        velocity: wallet.velocity,
    };
    (hot, wallet.updated_at_ns, cold)
}

impl Wallets {
    pub(crate) fn len(&self) -> usize {
        self.hot.len()
    }

    /// Room for `capacity` wallets, on huge pages and, with `populate`, faulted in.
    pub(crate) fn with_capacity(capacity: usize, populate: bool) -> Wallets {
        let mut wallets = Wallets {
            hot: ChunkedVec::new(),
            updated_at_ns: ChunkedVec::new(),
            cold: ChunkedVec::new(),
        };
        wallets.reserve(capacity, populate);
        wallets
    }

    fn reserve(&mut self, capacity: usize, populate: bool) {
        self.hot.reserve(capacity, populate);
        self.updated_at_ns.reserve(capacity, populate);
        self.cold.reserve(capacity, populate);
    }

    /// Room for at least `capacity` wallets (allocated, not faulted in).
    pub(crate) fn reserve_exact(&mut self, capacity: usize) {
        self.reserve(capacity, false);
    }

    /// Appends a wallet (the caller keeps the count within `max`).
    pub(crate) fn push(&mut self, wallet: Wallet, max: usize) {
        assert!(self.len() < max, "wallets past their maximum");
        let (hot, updated_at_ns, cold) = split(&wallet);
        self.hot.push(hot);
        self.updated_at_ns.push(updated_at_ns);
        self.cold.push(cold);
    }

    pub(crate) fn pop(&mut self) {
        self.hot.pop();
        self.updated_at_ns.pop();
        self.cold.pop();
    }

    /// The whole wallet at `slot`.
    pub(crate) fn get(&self, slot: usize) -> Option<Wallet> {
        let hot = self.hot.get(slot)?;
        let cold = &self.cold[slot];
        Some(Wallet {
            available: hot.available,
            frozen: hot.frozen,
            user: hot.user,
            version: hot.version,
            created_at_ns: cold.created_at_ns,
            updated_at_ns: self.updated_at_ns[slot],
            currency: hot.currency,
            status: hot.status,
            kind: hot.kind,
            tier: hot.tier,
            open_obligations: cold.open_obligations,
            velocity: cold.velocity,
        })
    }

    /// Puts a whole wallet back at `slot` (the undo of a linked group).
    pub(crate) fn set(&mut self, slot: usize, wallet: Wallet) {
        (self.hot[slot], self.updated_at_ns[slot], self.cold[slot]) = split(&wallet);
    }

    /// Whole wallets in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Wallet> + '_ {
        (0..self.len()).map(|slot| {
            self.get(slot)
                .unwrap_or_else(|| unreachable!("slot below the length"))
        })
    }

    /// The hot part of every wallet, in slot order.
    pub(crate) fn hot_parts(&self) -> impl Iterator<Item = &Hot> + '_ {
        self.hot.iter()
    }

    pub(crate) fn cold(&self, slot: u32) -> &Cold {
        &self.cold[slot as usize]
    }

    pub(crate) fn cold_mut(&mut self, slot: u32) -> &mut Cold {
        &mut self.cold[slot as usize]
    }

    /// Records the time of a change.
    pub(crate) fn touch(&mut self, slot: u32, now_ns: u64) {
        self.updated_at_ns[slot as usize] = now_ns;
    }

    /// Address of the cold part of the wallet at `slot`, if there is one (for prefetch hints).
    pub(crate) fn cold_line(&self, slot: usize) -> Option<*const u8> {
        self.cold.get(slot).map(|cold| (cold as *const Cold).cast())
    }

    /// Addresses of the lines a payment touches in the wallet at `slot`, if there is one (for
    /// prefetch hints).
    pub(crate) fn lines(&self, slot: usize) -> Option<(*const u8, *const u8)> {
        let hot = self.hot.get(slot)?;
        let updated = &self.updated_at_ns[slot];
        Some(((hot as *const Hot).cast(), (updated as *const u64).cast()))
    }
}

impl std::ops::Index<usize> for Wallets {
    type Output = Hot;

    fn index(&self, slot: usize) -> &Hot {
        &self.hot[slot]
    }
}

impl std::ops::IndexMut<usize> for Wallets {
    fn index_mut(&mut self, slot: usize) -> &mut Hot {
        &mut self.hot[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wallet(i: u64) -> Wallet {
        Wallet {
            available: i128::from(i) * 3,
            frozen: i128::from(i),
            user: UserId(u128::from(i) << 64 | 7),
            version: i + 1,
            created_at_ns: i * 10,
            updated_at_ns: i * 10 + 5,
            currency: CurrencyId(i as u16 % 3),
            status: WalletStatus::Frozen,
            kind: if i.is_multiple_of(2) {
                WalletKind::User
            } else {
                WalletKind::System(SystemRole::Fees)
            },
            tier: Tier::Premium,
            open_obligations: i as u32 + 2,
            velocity: if i.is_multiple_of(3) {
                NO_VELOCITY
            } else {
                i as u32
            },
        }
    }

    /// A wallet comes back whole from its three parts, after growth and after `set`.
    #[test]
    fn wallets_round_trip_through_their_parts() {
        let mut wallets = Wallets::with_capacity(0, false);
        for i in 0..1000 {
            wallets.push(wallet(i), 1 << 20);
        }
        assert_eq!(wallets.len(), 1000);
        assert!(wallets.iter().eq((0..1000).map(wallet)));
        wallets.set(10, wallet(999));
        assert_eq!(wallets.get(10), Some(wallet(999)));
        assert_eq!(wallets[10].available, wallet(999).available);
        wallets.pop();
        assert_eq!(wallets.len(), 999);
        assert_eq!(wallets.get(999), None);
        let line = wallets.lines(5).map(|(hot, _)| hot as usize % 64);
        assert_eq!(line, Some(0), "hot parts are line-aligned");
    }
}
