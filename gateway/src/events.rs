//! Real-time events: one subscription per gateway to the core's committed events (from the
//! shards' positions at start, resumed from the last complete command after a disconnect),
//! turned into per-user notifications and fanned out to WebSocket and SSE connections.
//!
//! Server events (the seed's names): `balance.updated` (a wallet's balances after a change),
//! `transaction.sent` / `transaction.received` (a movement, to each side's owner),
//! `notification` (wallet frozen / unfrozen, a cross-shard transfer settled or bounced),
//! `kyc.status` (a tier change, i.e. an approved KYC, from the core; a rejection only from the
//! gateway that reviewed it). A user only ever receives events about their own wallets.
//! Delivery is best effort: a connection that falls behind by more than the channel holds
//! misses events (it is told with a `notification` of type `events.lagged`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paycore_engine::amount::format_amount;
use paycore_engine::{Event, TransferKind, TransferStatus, UserId, WalletId, WalletStatus};
use paycore_protocol::{Frame, Query, QueryResult};
use serde_json::json;
use tokio::sync::broadcast;

use crate::Shared;
use crate::routes::wallets::{status_name, wallet_id_text, wallet_view};

/// Notifications buffered per connection before it counts as lagging.
pub const CHANNEL_CAPACITY: usize = 4096;

/// One event for one user.
#[derive(Debug, Clone)]
pub struct Notification {
    pub user: UserId,
    /// `balance.updated`, `transaction.sent`, …
    pub kind: &'static str,
    /// The wallet it is about, if any (WebSocket `subscribe.wallet` filters on it).
    pub wallet: Option<WalletId>,
    pub data: serde_json::Value,
}

/// The fan-out point.
#[derive(Debug)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Notification>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notification>> {
        self.sender.subscribe()
    }

    pub fn publish(&self, notification: Notification) {
        // No receiver is not an error: nobody is listening.
        let _ = self.sender.send(Arc::new(notification));
    }
}

/// What the hub knows of a wallet: its owner, currency and scale.
#[derive(Debug, Clone, Copy)]
struct WalletInfo {
    user: UserId,
    currency: paycore_engine::CurrencyCode,
    scale: u8,
}

/// Pause before the event subscription is resumed after it ended, in milliseconds.
const RESUBSCRIBE_PAUSE_MS: u64 = 50;

/// Follows the core's events until the process ends.
pub async fn follow(state: Shared) {
    let mut positions: HashMap<u16, u64> = HashMap::new();
    let mut wallets: HashMap<WalletId, WalletInfo> = HashMap::new();
    loop {
        if let Err(error) = follow_once(&state, &mut positions, &mut wallets).await {
            // The core link logs its outages once; this follows from one.
            tracing::debug!(%error, "event subscription ended; resuming where it stopped");
        }
        tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_PAUSE_MS)).await;
    }
}

async fn follow_once(
    state: &Shared,
    positions: &mut HashMap<u16, u64>,
    wallets: &mut HashMap<WalletId, WalletInfo>,
) -> Result<(), String> {
    if positions.is_empty() {
        // From now on: what happened before the gateway started is history, not news.
        match state
            .core
            .query(Query::Status)
            .await
            .map_err(|e| e.to_string())?
        {
            QueryResult::Status(status) => {
                for shard in status.shards {
                    positions.insert(shard.shard, shard.last_sequence + 1);
                }
            }
            other => return Err(format!("unexpected status answer {other:?}")),
        }
    }
    let client = state.core.client().await.map_err(|e| e.to_string())?;
    let from: Vec<(u16, u64)> = positions.iter().map(|(s, p)| (*s, *p)).collect();
    let mut subscription = client.subscribe(from).await.map_err(|e| e.to_string())?;
    loop {
        let frame = subscription.next().await.map_err(|e| e.to_string())?;
        match frame {
            None => return Err("the core ended the subscription".into()),
            Some(Frame::Events {
                shard,
                sequence,
                first_index,
                events_total,
                events,
                ..
            }) => {
                for event in &events {
                    handle(state, wallets, event).await;
                }
                let complete =
                    u64::from(first_index) + events.len() as u64 >= u64::from(events_total);
                if complete {
                    positions.insert(shard, sequence + 1);
                }
            }
            Some(Frame::Error { code, message }) => {
                if code == paycore_protocol::ErrorCode::POSITION_UNAVAILABLE {
                    positions.clear();
                }
                return Err(format!("core error {code:?}: {message}"));
            }
            Some(other) => return Err(format!("unexpected frame {:?}", other.kind())),
        }
    }
}

async fn info(
    state: &Shared,
    wallets: &mut HashMap<WalletId, WalletInfo>,
    id: WalletId,
) -> Option<WalletInfo> {
    if let Some(info) = wallets.get(&id) {
        return Some(*info);
    }
    let view = wallet_view(state, id).await.ok().flatten()?;
    let info = WalletInfo {
        user: view.user,
        currency: view.currency,
        scale: view.scale,
    };
    // Owner, currency and scale of a wallet never change: caching is safe.
    wallets.insert(id, info);
    Some(info)
}

fn transfer_status(status: TransferStatus) -> String {
    match status {
        TransferStatus::Completed => "completed".into(),
        TransferStatus::Pending => "pending".into(),
        TransferStatus::Bounced(reason) => format!("bounced: {}", reason.code()),
    }
}

fn kind_name(kind: TransferKind) -> &'static str {
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

async fn handle(state: &Shared, wallets: &mut HashMap<WalletId, WalletInfo>, event: &Event) {
    match *event {
        Event::BalanceChanged {
            wallet,
            user,
            available,
            frozen,
            version,
            ..
        } if user != UserId::SYSTEM => {
            let Some(info) = info(state, wallets, wallet).await else {
                return;
            };
            state.events.publish(Notification {
                user,
                kind: "balance.updated",
                wallet: Some(wallet),
                data: json!({
                    "wallet_id": wallet_id_text(wallet),
                    "currency": info.currency.as_str(),
                    "balance": format_amount(available + frozen, info.scale),
                    "available": format_amount(available, info.scale),
                    "frozen": format_amount(frozen, info.scale),
                    "version": version,
                }),
            });
        }
        Event::Transfer {
            transfer,
            kind,
            from,
            to,
            amount,
            status,
            ..
        } => {
            let from_info = info(state, wallets, from).await;
            let to_info = info(state, wallets, to).await;
            let Some(scale) = from_info.or(to_info).map(|i| i.scale) else {
                return;
            };
            let currency = from_info
                .or(to_info)
                .map(|i| i.currency.as_str().to_owned());
            let data = json!({
                "id": transfer.to_string(),
                "type": kind_name(kind),
                "from_wallet_id": wallet_id_text(from),
                "to_wallet_id": wallet_id_text(to),
                "amount": format_amount(amount as i128, scale),
                "currency": currency,
                "status": transfer_status(status),
            });
            for (info, kind, wallet) in [
                (from_info, "transaction.sent", from),
                (to_info, "transaction.received", to),
            ] {
                if let Some(info) = info.filter(|i| i.user != UserId::SYSTEM) {
                    state.events.publish(Notification {
                        user: info.user,
                        kind,
                        wallet: Some(wallet),
                        data: data.clone(),
                    });
                }
            }
        }
        Event::TransferSettled { transfer, status } => {
            // A cross-shard send recorded as pending is now completed or bounced.
            let id = transfer.to_string();
            let text = transfer_status(status);
            if let Err(error) = state.store.set_transaction_status(&id, &text).await {
                tracing::warn!(%error, transaction = %id, "status not recorded");
            }
            if let Ok(Some((record, _))) = state.store.transaction(&id).await
                && let Some(user) = record.from_user.as_deref()
            {
                state.events.publish(Notification {
                    user: crate::routes::wallets::engine_user(user),
                    kind: "notification",
                    wallet: None,
                    data: json!({"type": "transaction.settled", "id": id, "status": text}),
                });
            }
        }
        Event::TierChanged { user, tier } if user != UserId::SYSTEM => {
            // Every gateway sees this one (a KYC approval sets the tier), so every stream of
            // the user hears of it.
            state.events.publish(Notification {
                user,
                kind: "kyc.status",
                wallet: None,
                data: json!({"status": "approved", "tier": crate::users::tier_name(tier)}),
            });
        }
        Event::WalletStatusChanged {
            wallet,
            user,
            status,
        } if user != UserId::SYSTEM => {
            state.events.publish(Notification {
                user,
                kind: "notification",
                wallet: Some(wallet),
                data: json!({
                    "type": "wallet.status",
                    "wallet_id": wallet_id_text(wallet),
                    "status": status_name(status),
                    "frozen": status == WalletStatus::Frozen,
                }),
            });
        }
        _ => {}
    }
}
