//! Routing: which shard a client command belongs to.
//!
//! Every wallet and hold id carries its shard; a user's wallets all live on `UserId::shard`.
//! Registry commands (currencies, limits) change every shard's copy of the registry and are sent
//! to all shards. A linked group goes to the shard of its first operation; an operation of the
//! group that names another shard is rejected there (`wrong_shard`), so a group never spans
//! shards silently.

use paycore_engine::{Op, ShardId};

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    One(ShardId),
    /// Every shard, in shard order; the client sees shard 0's outcome.
    All,
}

/// The route of an operation in a deployment of `shard_count` shards. An id naming a shard past
/// the deployment's goes to shard 0, whose engine answers `wallet_not_found` / `hold_not_found`.
pub fn route(op: &Op, shard_count: u16) -> Route {
    let bounded = |shard: ShardId| if shard < shard_count { shard } else { 0 };
    match op {
        Op::RegisterCurrency { .. } | Op::SetVelocityLimit { .. } => Route::All,
        Op::SetTier { user, .. } | Op::OpenWallet { user, .. } => {
            Route::One(user.shard(shard_count))
        }
        Op::CloseWallet { wallet }
        | Op::Deposit { wallet, .. }
        | Op::Hold { wallet, .. }
        | Op::Withdraw { wallet, .. }
        | Op::FreezeWallet { wallet }
        | Op::UnfreezeWallet { wallet } => Route::One(bounded(wallet.shard())),
        Op::Transfer { from, .. } | Op::Exchange { from, .. } => Route::One(bounded(from.shard())),
        Op::Capture { hold, .. } | Op::Release { hold } => Route::One(bounded(hold.shard())),
        Op::Linked(ops) => match ops.first() {
            Some(first) => match route(first, shard_count) {
                Route::All => Route::One(0),
                one => one,
            },
            None => Route::One(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paycore_engine::{CurrencyCode, HoldId, UserId, WalletId};

    #[test]
    fn routes_follow_ids() {
        let usd = CurrencyCode::parse("USD").expect("code");
        let user = UserId(42);
        assert_eq!(
            route(
                &Op::OpenWallet {
                    user,
                    currency: usd
                },
                4
            ),
            Route::One(user.shard(4))
        );
        let transfer = Op::Transfer {
            from: WalletId::new(3, 9),
            to: WalletId::new(1, 2),
            amount: 1,
            currency: usd,
        };
        assert_eq!(route(&transfer, 4), Route::One(3));
        assert_eq!(
            route(
                &Op::Release {
                    hold: HoldId::new(2, 1)
                },
                4
            ),
            Route::One(2)
        );
        assert_eq!(
            route(
                &Op::Release {
                    hold: HoldId::new(9, 1)
                },
                4
            ),
            Route::One(0)
        );
        assert_eq!(
            route(
                &Op::RegisterCurrency {
                    code: usd,
                    scale: 2
                },
                4
            ),
            Route::All
        );
        assert_eq!(route(&Op::Linked(vec![transfer]), 4), Route::One(3));
    }
}
