//! Real-time events: one subscription per gateway to the core's committed events (from the
//! shards' positions at start, resumed from the last complete command after a disconnect),
//! turned into per-user notifications and fanned out to WebSocket and SSE connections.
//!
//! Server events (the seed's names): `balance.updated` (a wallet's balances after a change),
//! `transaction.sent` / `transaction.received` (a movement, to each side's owner),
//! `notification` (wallet frozen / unfrozen, a cross-shard transfer settled or bounced),
//! `kyc.status` (a tier change, i.e. an approved KYC, from the core; a rejection only from the
//! gateway that reviewed it). A user only ever receives events about their own wallets.
//!
//! **Delivery: at least once, in order per wallet (per shard), with ids to dedupe.** Each
//! notification from the core has a stable `event_id` (`<shard>-<sequence>-<order>`: the
//! command's sequence and the event's place in it; the same on every gateway and every
//! replay) and a resume [`Cursor`] (per shard, the next position wanted). A stream resumed
//! with a cursor (`from` on the WebSocket, `Last-Event-ID` on SSE) first replays what it
//! missed from the core (a subscription of its own, served from the node's memory or its
//! event archive on disk), then continues live. A stream that falls behind the live fan-out
//! (more than [`CHANNEL_CAPACITY`] notifications) catches up the same way instead of losing
//! events. Only events older than the node's journal retention are gone; the stream is then
//! told with a `notification` of type `events.unavailable` naming the first it can have.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paycore_engine::amount::format_amount;
use paycore_engine::{Event, TransferKind, TransferStatus, UserId, WalletId, WalletStatus};
use paycore_protocol::{Frame, Query, QueryResult};
use serde_json::json;
use tokio::sync::broadcast;

use crate::Shared;
use crate::routes::wallets::{status_name, wallet_id_text, wallet_view};

/// Notifications buffered per connection before it falls back to a replay from the core.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Where a notification comes from: shard, command sequence, and its order among the
/// notifications of that command (event index × 4 + part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub shard: u16,
    pub sequence: u64,
    pub order: u32,
}

impl Position {
    /// The stable id of the notification: `<shard>-<sequence>-<order>`.
    pub fn id(&self) -> String {
        format!("{}-{}-{}", self.shard, self.sequence, self.order)
    }
}

/// One event for one user.
#[derive(Debug, Clone)]
pub struct Notification {
    pub user: UserId,
    /// `balance.updated`, `transaction.sent`, …
    pub kind: &'static str,
    /// The wallet it is about, if any (WebSocket `subscribe.wallet` filters on it).
    pub wallet: Option<WalletId>,
    pub data: serde_json::Value,
    /// Where it comes from in the core; `None` for what the gateway says itself (a logout, a
    /// KYC rejection), which is live only.
    pub position: Option<Position>,
}

/// A resume point: per shard, the next (sequence, order) a stream wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub next: BTreeMap<u16, (u64, u32)>,
}

impl Cursor {
    /// `<shard>-<sequence>-<order>` per shard, joined by `.`.
    pub fn encode(&self) -> String {
        self.next
            .iter()
            .map(|(shard, (sequence, order))| format!("{shard}-{sequence}-{order}"))
            .collect::<Vec<_>>()
            .join(".")
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let mut next = BTreeMap::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let mut fields = part.split('-');
            let shard = fields.next()?.parse().ok()?;
            let sequence = fields.next()?.parse().ok()?;
            let order = fields.next()?.parse().ok()?;
            if fields.next().is_some() {
                return None;
            }
            next.insert(shard, (sequence, order));
        }
        (!next.is_empty()).then_some(Cursor { next })
    }

    /// Whether `position` is at or after the cursor (wanted); a shard the cursor does not
    /// know is wanted from its start.
    pub fn wants(&self, position: &Position) -> bool {
        self.next
            .get(&position.shard)
            .is_none_or(|next| (position.sequence, position.order) >= *next)
    }

    /// Moves past `position`.
    pub fn advance(&mut self, position: &Position) {
        let next = (position.sequence, position.order + 1);
        let entry = self.next.entry(position.shard).or_insert(next);
        if next > *entry {
            *entry = next;
        }
    }

    /// Moves to at least the start of `sequence` on `shard`.
    pub fn reach(&mut self, shard: u16, sequence: u64) {
        let entry = self.next.entry(shard).or_insert((sequence, 0));
        if (sequence, 0) > *entry {
            *entry = (sequence, 0);
        }
    }
}

/// The fan-out point.
#[derive(Debug)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Notification>>,
    /// Per shard, the next sequence the follower has not published yet.
    positions: Mutex<BTreeMap<u16, u64>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            positions: Mutex::new(BTreeMap::new()),
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

    /// Where the live fan-out stands: everything before is published.
    pub fn cursor(&self) -> Cursor {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        Cursor {
            next: positions.iter().map(|(s, p)| (*s, (*p, 0))).collect(),
        }
    }

    fn reached(&self, shard: u16, next: u64) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.insert(shard, next);
    }

    /// Publishes a whole command's notifications and moves the shard's position past it,
    /// as one step for [`Hub::resubscribe`].
    fn publish_command(&self, shard: u16, next: u64, notifications: Vec<Notification>) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        for notification in notifications {
            let _ = self.sender.send(Arc::new(notification));
        }
        positions.insert(shard, next);
    }

    /// A new receiver and the position it starts at: every command before the cursor was
    /// published before the receiver existed, every one after reaches it whole.
    pub fn resubscribe(&self) -> (broadcast::Receiver<Arc<Notification>>, Cursor) {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = self.sender.subscribe();
        let cursor = Cursor {
            next: positions.iter().map(|(s, p)| (*s, (*p, 0))).collect(),
        };
        (receiver, cursor)
    }
}

/// What the hub knows of a wallet: its owner, currency and scale.
#[derive(Debug, Clone, Copy)]
pub struct WalletInfo {
    user: UserId,
    currency: paycore_engine::CurrencyCode,
    scale: u8,
}

/// Pause before the event subscription is resumed after it ended, in milliseconds.
const RESUBSCRIBE_PAUSE_MS: u64 = 50;

/// Owner, currency and scale of the wallets seen (they never change: caching is safe).
pub type WalletCache = HashMap<WalletId, WalletInfo>;

/// Follows the core's events until the process ends.
pub async fn follow(state: Shared) {
    let mut positions: HashMap<u16, u64> = HashMap::new();
    let mut wallets = WalletCache::new();
    let mut started = false;
    loop {
        if let Err(error) = follow_once(&state, &mut started, &mut positions, &mut wallets).await {
            // The core link logs its outages once; this follows from one.
            tracing::debug!(%error, "event subscription ended; resuming where it stopped");
        }
        tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_PAUSE_MS)).await;
    }
}

async fn follow_once(
    state: &Shared,
    started: &mut bool,
    positions: &mut HashMap<u16, u64>,
    wallets: &mut WalletCache,
) -> Result<(), String> {
    if !*started {
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
                    state.events.reached(shard.shard, shard.last_sequence + 1);
                }
            }
            other => return Err(format!("unexpected status answer {other:?}")),
        }
        *started = true;
    }
    let client = state.core.client().await.map_err(|e| e.to_string())?;
    let from: Vec<(u16, u64)> = positions.iter().map(|(s, p)| (*s, *p)).collect();
    let mut subscription = client.subscribe(from).await.map_err(|e| e.to_string())?;
    // The notifications of a command sent in several frames, published once it is whole.
    let mut command: Vec<Notification> = Vec::new();
    loop {
        // A node killed and restarted keeps the old connection open but silent until its idle
        // timeout: follow the link when it moves.
        let frame = tokio::select! {
            frame = subscription.next() => frame.map_err(|e| e.to_string())?,
            () = state.core.link().moved_from(&client) => {
                return Err("the core link moved to another connection".into());
            }
        };
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
                if first_index == 0 {
                    command.clear();
                }
                for (offset, event) in events.iter().enumerate() {
                    let at = (shard, sequence, first_index + offset as u32);
                    command.extend(notifications(state, wallets, event, at, true).await);
                }
                let complete =
                    u64::from(first_index) + events.len() as u64 >= u64::from(events_total);
                if complete {
                    positions.insert(shard, sequence + 1);
                    let whole = std::mem::take(&mut command);
                    state.events.publish_command(shard, sequence + 1, whole);
                }
            }
            Some(Frame::Error { code, message }) => {
                if code == paycore_protocol::ErrorCode::POSITION_UNAVAILABLE {
                    // Older than the node's journal retention: gone for good. Say so once,
                    // and go on from what the node still has.
                    tracing::error!(%message, "core events lost: older than the node's retention");
                    let first = paycore_client::first_available(&message);
                    let shard = message
                        .strip_prefix("shard ")
                        .and_then(|rest| rest.split(':').next())
                        .and_then(|n| n.parse::<u16>().ok());
                    match (shard, first) {
                        (Some(shard), Some(first)) => {
                            positions.insert(shard, first);
                        }
                        _ => positions.clear(),
                    }
                }
                return Err(format!("core error {code:?}: {message}"));
            }
            Some(other) => return Err(format!("unexpected frame {:?}", other.kind())),
        }
    }
}

/// A subscription of one stream to the core from a cursor, until it reaches `target` (the
/// live fan-out's position when the replay began): what the stream missed.
#[derive(Debug)]
pub struct Replay {
    client: Arc<paycore_client::Client>,
    subscription: paycore_client::Subscription,
    /// Per shard, the next sequence the replay has not read completely.
    reached: BTreeMap<u16, u64>,
    target: Cursor,
    pending: std::collections::VecDeque<Notification>,
}

/// What a replay gives next.
#[derive(Debug)]
pub enum Replayed {
    Notification(Notification),
    /// The replay reached its target: go live.
    Done,
    /// Events the node no longer has (older than its retention); the first it can give.
    Unavailable {
        shard: u16,
        first_available: u64,
    },
}

impl Replay {
    /// Starts replaying from `cursor` up to `target`.
    pub async fn start(state: &Shared, cursor: &Cursor, target: Cursor) -> Result<Replay, String> {
        let client = state.core.client().await.map_err(|e| e.to_string())?;
        let from: Vec<(u16, u64)> = cursor.next.iter().map(|(s, (q, _))| (*s, *q)).collect();
        let reached = cursor.next.iter().map(|(s, (q, _))| (*s, *q)).collect();
        let subscription = client.subscribe(from).await.map_err(|e| e.to_string())?;
        Ok(Replay {
            client,
            subscription,
            reached,
            target,
            pending: std::collections::VecDeque::new(),
        })
    }

    /// Where the replay ends: the live fan-out takes over from here.
    pub fn target(&self) -> &Cursor {
        &self.target
    }

    fn done(&self) -> bool {
        self.target.next.iter().all(|(shard, (next, _))| {
            self.reached
                .get(shard)
                .is_some_and(|reached| reached >= next)
        })
    }

    /// The next notification (any user's; the caller filters), or the end.
    pub async fn next(
        &mut self,
        state: &Shared,
        wallets: &mut WalletCache,
    ) -> Result<Replayed, String> {
        loop {
            if let Some(n) = self.pending.pop_front() {
                return Ok(Replayed::Notification(n));
            }
            if self.done() {
                return Ok(Replayed::Done);
            }
            let frame = tokio::select! {
                frame = self.subscription.next() => frame.map_err(|e| e.to_string())?,
                () = state.core.link().moved_from(&self.client) => {
                    return Err("the core link moved to another connection".into());
                }
            };
            match frame {
                None => return Err("the core ended the replay".into()),
                Some(Frame::Events {
                    shard,
                    sequence,
                    first_index,
                    events_total,
                    events,
                    ..
                }) => {
                    let target = self.target.next.get(&shard).map_or(u64::MAX, |t| t.0);
                    if sequence < target {
                        for (offset, event) in events.iter().enumerate() {
                            let at = (shard, sequence, first_index + offset as u32);
                            self.pending
                                .extend(notifications(state, wallets, event, at, false).await);
                        }
                    }
                    if u64::from(first_index) + events.len() as u64 >= u64::from(events_total) {
                        self.reached.insert(shard, sequence + 1);
                    }
                }
                Some(Frame::Error { code, message })
                    if code == paycore_protocol::ErrorCode::POSITION_UNAVAILABLE =>
                {
                    let shard = message
                        .strip_prefix("shard ")
                        .and_then(|rest| rest.split(':').next())
                        .and_then(|n| n.parse::<u16>().ok())
                        .unwrap_or(0);
                    let first_available = paycore_client::first_available(&message).unwrap_or(0);
                    return Ok(Replayed::Unavailable {
                        shard,
                        first_available,
                    });
                }
                Some(Frame::Error { code, message }) => {
                    return Err(format!("core error {code:?}: {message}"));
                }
                Some(other) => return Err(format!("unexpected frame {:?}", other.kind())),
            }
        }
    }
}

/// What a stream's [`Feed`] gives.
#[derive(Debug)]
pub enum Fed {
    /// A notification for the stream's user, and the cursor just after it.
    Event(Arc<Notification>, String),
    /// The node no longer has events of `shard` before `first_available` (older than its
    /// retention): those the stream missed there are gone.
    Unavailable { shard: u16, first_available: u64 },
}

/// Capacity of the channel between a stream's feed task and the stream.
const FEED_CHANNEL_CAPACITY: usize = 256;
/// Pause before a replay is tried again after the core link failed, in milliseconds.
const REPLAY_RETRY_MS: u64 = 200;

/// One stream's events for `user`: live from the hub, after a replay from the core when
/// resumed from `from` or fallen behind the hub (see the module docs). Runs as a task of its
/// own (so the stream's `select!` never cancels it halfway through a frame) and ends when the
/// receiver is dropped or the hub closes.
pub fn feed(state: Shared, user: UserId, from: Option<Cursor>) -> tokio::sync::mpsc::Receiver<Fed> {
    let (sender, receiver) = tokio::sync::mpsc::channel(FEED_CHANNEL_CAPACITY);
    let (live, now) = state.events.resubscribe();
    tokio::spawn(async move {
        let mut live = live;
        let mut behind = from.is_some();
        let mut cursor = from.unwrap_or(now);
        let mut replay: Option<Replay> = None;
        let mut wallets = WalletCache::new();
        loop {
            if behind && replay.is_none() {
                let (receiver, target) = state.events.resubscribe();
                live = receiver;
                match Replay::start(&state, &cursor, target).await {
                    Ok(started) => replay = Some(started),
                    Err(error) => {
                        tracing::debug!(%error, "stream replay not started; retrying");
                        if sender.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(REPLAY_RETRY_MS)).await;
                        continue;
                    }
                }
            }
            let next = if let Some(running) = replay.as_mut() {
                match running.next(&state, &mut wallets).await {
                    Ok(Replayed::Notification(n)) => Some(Arc::new(n)),
                    Ok(Replayed::Done) => {
                        for (shard, (sequence, _)) in running.target().next.clone() {
                            cursor.reach(shard, sequence);
                        }
                        replay = None;
                        behind = false;
                        None
                    }
                    Ok(Replayed::Unavailable {
                        shard,
                        first_available,
                    }) => {
                        cursor.reach(shard, first_available);
                        replay = None;
                        let gone = Fed::Unavailable {
                            shard,
                            first_available,
                        };
                        if sender.send(gone).await.is_err() {
                            return;
                        }
                        None
                    }
                    Err(error) => {
                        tracing::debug!(%error, "stream replay interrupted; resuming");
                        replay = None;
                        tokio::time::sleep(Duration::from_millis(REPLAY_RETRY_MS)).await;
                        None
                    }
                }
            } else {
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(n) => Some(n),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            behind = true;
                            None
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = sender.closed() => return,
                }
            };
            let Some(n) = next else { continue };
            if let Some(position) = n.position {
                if !cursor.wants(&position) {
                    continue;
                }
                cursor.advance(&position);
            }
            if n.user == user && sender.send(Fed::Event(n, cursor.encode())).await.is_err() {
                return;
            }
        }
    });
    receiver
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

/// The notifications of one event (`at`: shard, command sequence, event index), each with
/// its [`Position`]. `side_effects`: also record a settled transfer's status in the store
/// (the live follower does; a replay only reads).
async fn notifications(
    state: &Shared,
    wallets: &mut WalletCache,
    event: &Event,
    at: (u16, u64, u32),
    side_effects: bool,
) -> Vec<Notification> {
    let (shard, sequence, index) = at;
    let position = |part: u32| {
        Some(Position {
            shard,
            sequence,
            order: index * 4 + part,
        })
    };
    let mut out = Vec::new();
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
                return out;
            };
            out.push(Notification {
                position: position(0),
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
                return out;
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
            for (part, (info, kind, wallet)) in [
                (from_info, "transaction.sent", from),
                (to_info, "transaction.received", to),
            ]
            .into_iter()
            .enumerate()
            {
                if let Some(info) = info.filter(|i| i.user != UserId::SYSTEM) {
                    out.push(Notification {
                        position: position(part as u32),
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
            if side_effects && let Err(error) = state.store.set_transaction_status(&id, &text).await
            {
                tracing::warn!(%error, transaction = %id, "status not recorded");
            }
            if let Ok(Some((record, _))) = state.store.transaction(&id).await
                && let Some(user) = record.from_user.as_deref()
            {
                out.push(Notification {
                    position: position(0),
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
            out.push(Notification {
                position: position(0),
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
            out.push(Notification {
                position: position(0),
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
    out
}
