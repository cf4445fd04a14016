//! Cache prefetch hints: the sequencer applies commands in batches and knows the next ones, so
//! it can ask for their wallets' cache lines while the current command runs. Over a million
//! wallets nearly every wallet access misses the cache (~100 ns each); issuing the misses of
//! command i + k during command i overlaps them instead of paying them in turn.
//!
//! A hint changes nothing observable: no state, no outcome, no determinism concern.

use crate::command::{Command, Op};
use crate::engine::Engine;
use crate::ids::{HoldId, WalletId};

/// Evictions between now and the command [`Engine::prefetch`] is called for: its callers (the
/// writer, replay, the benches) prefetch the command 4 places ahead, and in steady state each
/// client command evicts one idempotency record (then command i + 4 evicts the fifth oldest).
/// Only a hint: another rate wastes a prefetch, nothing else.
const EVICTIONS_AHEAD: usize = 4;

/// Hints the CPU to load the cache line holding `address`.
#[inline(always)]
pub(crate) fn hint(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` is only a hint: it never faults, reads nothing into the program and
    // writes nothing, whatever the address. SSE is part of the x86_64 baseline, so the
    // instruction exists on every x86_64 CPU this code can run on.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

impl Engine {
    fn prefetch_wallet(&self, wallet: WalletId) {
        if wallet.shard() == self.config.shard
            && let Some((hot, updated_at)) = self.wallets.lines(wallet.slot() as usize)
        {
            // The wallet's hot line, and the line of its change time (written, never read).
            hint(hot);
            hint(updated_at);
        }
    }

    /// Also the cold line: holds and captures change the wallet's open obligations.
    fn prefetch_wallet_with_cold(&self, wallet: WalletId) {
        self.prefetch_wallet(wallet);
        if wallet.shard() == self.config.shard
            && let Some(cold) = self.wallets.cold_line(wallet.slot() as usize)
        {
            hint(cold);
        }
    }

    /// A capture's held wallet and destination. The hold's own entry is read here (one lookup,
    /// usually cached: open holds are few beside the wallets) to reach the wallet it holds money
    /// in. Out of line: it keeps the transfer's and deposit's path through `prefetch` as small as
    /// it was (inlined, this lookup made both measurably slower with the same instructions).
    #[inline(never)]
    fn prefetch_capture(&self, hold: HoldId, to: Option<WalletId>) {
        if let Some(held) = self.holds.get(hold) {
            self.prefetch_wallet_with_cold(held.wallet);
        }
        if let Some(to) = to {
            self.prefetch_wallet(to);
        }
    }

    /// Hints the cache lines `command` will touch. Call it for a command a few places ahead of
    /// the one being applied; it has no effect on state.
    pub fn prefetch(&self, command: &Command) {
        let Command::Client { key, op } = command else {
            return;
        };
        // The idempotency probe of the key: the slot line its lookup and insert will touch.
        self.idempotency.prefetch_key(key);
        // And the line of the key its eviction will remove. Issued from here rather than from
        // the eviction itself: measured on a 1 M-wallet, 8 M-key run, the eviction's share of
        // the time fell from ~18 % to ~7 % of samples when its line was hinted here instead of
        // eight evictions ahead inside `pop_front`.
        self.idempotency.prefetch_eviction(EVICTIONS_AHEAD);
        match op {
            Op::Transfer { from, to, .. } | Op::Exchange { from, to, .. } => {
                self.prefetch_wallet(*from);
                self.prefetch_wallet(*to);
            }
            Op::Deposit { wallet, .. }
            | Op::CloseWallet { wallet }
            | Op::FreezeWallet { wallet }
            | Op::UnfreezeWallet { wallet } => self.prefetch_wallet(*wallet),
            Op::Hold { wallet, .. } | Op::Withdraw { wallet, .. } => {
                self.prefetch_wallet_with_cold(*wallet)
            }
            Op::Capture { hold, to, .. } => self.prefetch_capture(*hold, *to),
            _ => {}
        }
    }
}
