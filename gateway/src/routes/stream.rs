//! WebSocket `/api/v1/ws` and SSE `/api/v1/stream/notifications`.
//!
//! Both authenticate with the access token in `Authorization: Bearer …` or, because browsers
//! cannot set headers on these, in the `access_token` query parameter.
//!
//! WebSocket: the client sends `{"type": "subscribe.wallet", "wallet_id": "…"}` (one of its
//! own wallets: `balance.updated` and its transactions) or `{"type":
//! "subscribe.transactions"}` (every `transaction.sent` / `transaction.received`); the server
//! answers `{"type": "subscribed", …}` or `{"type": "error", "code": …}` and sends events as
//! `{"type": "<event>", "data": {…}}`. `notification` and `kyc.status` need no subscription.
//! SSE: every event of the user, `event: <type>` and `data: <json>`.
//!
//! Every event from the core carries a stable `event_id` (WebSocket: beside `type`; SSE: in
//! `data`) and a resume cursor (WebSocket: `cursor`; SSE: the `id:` line). A client that
//! reconnects with `?from=<cursor>` (WebSocket) or `Last-Event-ID: <cursor>` (SSE, as browsers
//! do by themselves) first gets what it missed, then the live events: at least once, in order
//! per wallet; dedupe by `event_id` (see `crate::events`).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use paycore_engine::WalletId;
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::error::ApiError;
use crate::events::{Cursor, Fed, Notification, feed};
use crate::extract::{AuthUser, authenticate};
use crate::metrics::Metrics;
use crate::routes::wallets::{owned_wallet, parse_wallet_id};

/// Internal notification of a logout: the streams opened with that token end (not sent to
/// clients).
pub const SESSION_REVOKED: &str = "session.revoked";

/// How often an open stream checks its token in the store again (a logout or a stolen
/// refresh token through another gateway ends the stream within this), in seconds.
pub const SESSION_CHECK_SECS: u64 = 10;

/// Whether a `session.revoked` notification ends a stream opened with `user`'s token: its own
/// logout, or a newer token generation (every token of the user ended).
fn revokes(n: &Notification, user: &AuthUser) -> bool {
    n.data["jti"] == user.claims.jti.as_str()
        || n.data["generation"]
            .as_i64()
            .is_some_and(|g| g > user.claims.generation)
}

/// Whether the stream's token still stands in the store (an unreachable store keeps it open).
async fn still_valid(state: &Shared, user: &AuthUser) -> bool {
    match crate::extract::check_session(state, &user.claims).await {
        Ok(_) => true,
        Err(e) => e.status != axum::http::StatusCode::UNAUTHORIZED,
    }
}

/// Longest client message on a WebSocket, in bytes: a longer one closes the socket with 1009
/// (message too big).
const CLIENT_MESSAGE_BYTES_MAX: usize = 4096;
/// Longest frame or message the WebSocket reader takes in at all, in bytes. Between this and
/// [`CLIENT_MESSAGE_BYTES_MAX`] the message is read and the socket closed cleanly with 1009;
/// above it the reader stops at the frame's header and the 1009 close is sent as the
/// connection ends (a client still sending may miss it).
const PROTOCOL_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// WebSocket close code: the message is too big (RFC 6455 §7.4.1).
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Most wallets one WebSocket subscribes to.
const SUBSCRIBED_WALLETS_MAX: usize = 64;

/// The caller, from the header or the `access_token` query parameter.
async fn caller(
    state: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<AuthUser, ApiError> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    let token = from_header
        .or(from_query)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token or access_token parameter"))?;
    authenticate(state, &token).await
}

/// The resume cursor: the `from` query parameter, else the `Last-Event-ID` header.
fn resume_from(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("from="))
            .map(str::to_owned)
    });
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match from_query.or(from_header).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => Cursor::parse(&text).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "cursor_invalid",
                "from / Last-Event-ID must be a cursor this gateway sent",
            )
        }),
    }
}

/// The text of an event for a WebSocket.
fn websocket_text(n: &Notification, cursor: &str) -> String {
    match n.position {
        Some(position) => {
            json!({"type": n.kind, "event_id": position.id(), "cursor": cursor, "data": n.data})
        }
        None => json!({"type": n.kind, "data": n.data}),
    }
    .to_string()
}

/// The notification that events before `first_available` on `shard` are gone.
fn unavailable_data(shard: u16, first_available: u64) -> serde_json::Value {
    json!({"type": "events.unavailable", "shard": shard, "first_available": first_available,
        "detail": "events this stream missed are older than the core's retention"})
}

/// Counts an open stream while alive.
struct Open {
    metrics: Arc<Metrics>,
    websocket: bool,
}

impl Open {
    fn new(metrics: Arc<Metrics>, websocket: bool) -> Open {
        let gauge = if websocket {
            &metrics.websockets_open
        } else {
            &metrics.sse_open
        };
        gauge.fetch_add(1, Ordering::Relaxed);
        Open { metrics, websocket }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let gauge = if self.websocket {
            &self.metrics.websockets_open
        } else {
            &self.metrics.sse_open
        };
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn websocket(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Who first: an anonymous caller learns nothing, not even what the route expects.
    let user = caller(&state, &headers, query.as_deref()).await?;
    let from = resume_from(&headers, query.as_deref())?;
    let initial = initial_subscriptions(query.as_deref());
    let upgrade =
        upgrade.map_err(|e| ApiError::bad_request("websocket_upgrade_required", e.body_text()))?;
    Ok(upgrade
        .max_message_size(PROTOCOL_MESSAGE_BYTES_MAX)
        .max_frame_size(PROTOCOL_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| session(state, user, from, initial, socket))
        .into_response())
}

#[derive(Debug, Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    wallet_id: Option<String>,
}

fn error_message(code: &str, detail: &str) -> Message {
    Message::Text(
        json!({"type": "error", "code": code, "detail": detail})
            .to_string()
            .into(),
    )
}

/// Subscriptions asked in the URL (`subscribe=transactions`, `wallet_id=<id>`, repeatable), as
/// the client messages they stand for: a resumed stream (`from`) has them before its first
/// replayed event, where a message would race the replay.
fn initial_subscriptions(query: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        if pair == "subscribe=transactions" {
            out.push(json!({"type": "subscribe.transactions"}).to_string());
        } else if let Some(id) = pair.strip_prefix("wallet_id=") {
            out.push(json!({"type": "subscribe.wallet", "wallet_id": id}).to_string());
        }
    }
    out.truncate(SUBSCRIBED_WALLETS_MAX + 1);
    out
}

async fn session(
    state: Shared,
    user: AuthUser,
    from: Option<Cursor>,
    initial: Vec<String>,
    mut socket: WebSocket,
) {
    let _open = Open::new(state.metrics.clone(), true);
    let me = user.engine_user();
    let mut wallets: HashSet<WalletId> = HashSet::new();
    let mut transactions = false;
    for message in initial {
        if let Some(reply) =
            client_message(&state, &user, &message, &mut wallets, &mut transactions).await
            && socket.send(reply).await.is_err()
        {
            return;
        }
    }
    let mut events = feed(state.clone(), me, from);
    let expiry = token_expiry(&user);
    let mut check = tokio::time::interval(Duration::from_secs(SESSION_CHECK_SECS));
    check.tick().await;
    loop {
        tokio::select! {
            _ = check.tick() => {
                if !still_valid(&state, &user).await {
                    let _ = socket
                        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: 4001,
                            reason: "access token revoked".into(),
                        })))
                        .await;
                    break;
                }
            }
            () = tokio::time::sleep_until(expiry) => {
                // The token this stream was opened with is no longer valid: close, the client
                // reconnects with a fresh one.
                let _ = socket
                    .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 4001,
                        reason: "access token expired".into(),
                    })))
                    .await;
                break;
            }
            message = socket.recv() => {
                let reply = match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Err(error)) => {
                        // tungstenite's capacity error ("Space limit exceeded: …"), over
                        // PROTOCOL_MESSAGE_BYTES_MAX; anything else just ends the socket.
                        if error.to_string().contains("Space limit exceeded") {
                            close_too_big(&mut socket).await;
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) if text.len() > CLIENT_MESSAGE_BYTES_MAX => {
                        close_too_big(&mut socket).await;
                        break;
                    }
                    Some(Ok(Message::Binary(bytes))) if bytes.len() > CLIENT_MESSAGE_BYTES_MAX => {
                        close_too_big(&mut socket).await;
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        client_message(&state, &user, text.as_str(), &mut wallets, &mut transactions).await
                    }
                    Some(Ok(Message::Binary(_))) => Some(error_message("message_invalid", "send JSON text")),
                    Some(Ok(_)) => None,
                };
                if let Some(reply) = reply
                    && socket.send(reply).await.is_err()
                {
                    break;
                }
            }
            event = events.recv() => {
                let message = match event {
                    Some(Fed::Event(n, _)) if n.kind == SESSION_REVOKED => {
                        if revokes(&n, &user) {
                            let _ = socket
                                .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                                    code: 4001,
                                    reason: "logged out".into(),
                                })))
                                .await;
                            break;
                        }
                        continue;
                    }
                    Some(Fed::Event(n, cursor)) if wanted(&n, &wallets, transactions) => {
                        websocket_text(&n, &cursor)
                    }
                    Some(Fed::Event(..)) => continue,
                    Some(Fed::Unavailable { shard, first_available }) => json!({"type": "notification",
                        "data": unavailable_data(shard, first_available)}).to_string(),
                    None => break,
                };
                if socket.send(Message::Text(message.into())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Closes with 1009 (message too big).
async fn close_too_big(socket: &mut WebSocket) {
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: CLOSE_MESSAGE_TOO_BIG,
            reason: format!("messages have at most {CLIENT_MESSAGE_BYTES_MAX} bytes").into(),
        })))
        .await;
}

/// When the stream's access token expires, as a tokio instant.
fn token_expiry(user: &AuthUser) -> tokio::time::Instant {
    let left = user
        .claims
        .exp
        .saturating_sub(crate::time::now_secs())
        .max(0);
    tokio::time::Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

fn wanted(n: &Notification, wallets: &HashSet<WalletId>, transactions: bool) -> bool {
    let on_wallet = n.wallet.is_some_and(|w| wallets.contains(&w));
    match n.kind {
        "balance.updated" => on_wallet,
        "transaction.sent" | "transaction.received" => transactions || on_wallet,
        _ => true,
    }
}

async fn client_message(
    state: &Shared,
    user: &AuthUser,
    text: &str,
    wallets: &mut HashSet<WalletId>,
    transactions: &mut bool,
) -> Option<Message> {
    let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
        return Some(error_message("message_invalid", "expected {\"type\": …}"));
    };
    match message.kind.as_str() {
        "subscribe.wallet" => {
            let Some(id) = message.wallet_id.as_deref() else {
                return Some(error_message(
                    "wallet_id_required",
                    "subscribe.wallet needs wallet_id",
                ));
            };
            if wallets.len() >= SUBSCRIBED_WALLETS_MAX {
                return Some(error_message(
                    "too_many_subscriptions",
                    "at most 64 wallets",
                ));
            }
            let owned = match parse_wallet_id(id) {
                Ok(wallet) => owned_wallet(state, user, wallet).await,
                Err(e) => Err(e),
            };
            Some(match owned {
                Ok(view) => {
                    wallets.insert(view.id);
                    Message::Text(
                        json!({"type": "subscribed", "channel": "wallet", "wallet_id": id})
                            .to_string()
                            .into(),
                    )
                }
                Err(e) => error_message(e.code, &e.detail),
            })
        }
        "subscribe.transactions" => {
            *transactions = true;
            Some(Message::Text(
                json!({"type": "subscribed", "channel": "transactions"})
                    .to_string()
                    .into(),
            ))
        }
        other => Some(error_message(
            "message_type_unknown",
            &format!("unknown message type {other:?}"),
        )),
    }
}

pub async fn sse(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let user = caller(&state, &headers, query.as_deref()).await?;
    let from = resume_from(&headers, query.as_deref())?;
    let me = user.engine_user();
    let open = Open::new(state.metrics.clone(), false);
    let receiver = feed(state.clone(), me, from);
    let expiry = token_expiry(&user);
    let mut check = tokio::time::interval(Duration::from_secs(SESSION_CHECK_SECS));
    check.tick().await;
    let stream = futures_util::stream::unfold(
        (receiver, open, user, check),
        move |(mut receiver, open, user, mut check)| {
            let state = state.clone();
            async move {
                loop {
                    // The stream ends when its access token expires or is revoked; the client
                    // reconnects.
                    let received = tokio::select! {
                        () = tokio::time::sleep_until(expiry) => return None,
                        _ = check.tick() => {
                            if still_valid(&state, &user).await {
                                continue;
                            }
                            return None;
                        }
                        received = receiver.recv() => received,
                    };
                    let event = match received {
                        Some(Fed::Event(n, _)) if n.kind == SESSION_REVOKED => {
                            if revokes(&n, &user) {
                                return None;
                            }
                            continue;
                        }
                        Some(Fed::Event(n, cursor)) => match n.position {
                            Some(position) => {
                                let mut data = n.data.clone();
                                data["event_id"] = json!(position.id());
                                SseEvent::default()
                                    .event(n.kind)
                                    .id(cursor)
                                    .data(data.to_string())
                            }
                            None => SseEvent::default().event(n.kind).data(n.data.to_string()),
                        },
                        Some(Fed::Unavailable {
                            shard,
                            first_available,
                        }) => SseEvent::default()
                            .event("notification")
                            .data(unavailable_data(shard, first_available).to_string()),
                        None => return None,
                    };
                    return Some((Ok::<_, Infallible>(event), (receiver, open, user, check)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
