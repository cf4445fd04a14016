//! Provider webhooks: `POST /api/v1/webhooks/provider`, signed like the big payment providers
//! sign theirs — header `Paycore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`, refused outside a tolerance window (replays of old captures).
//!
//! Events: `deposit.succeeded` (money arrived for a wallet), `withdrawal.paid` (the provider
//! paid a withdrawal out: the hold is captured to settlement), `withdrawal.failed` (released).
//! Each event id names one event for the life of the system: before anything is applied the
//! id and a hash of the event's contents (`type` and `data`) are recorded in the gateway's
//! store (`provider_events`, shared by every gateway, never swept). The same event again gets
//! the first answer without reaching the core; the same id with other contents is refused (409
//! `event_id_reused`), logged at ERROR (target `paycore_gateway::alert`) and counted
//! (`paycore_gateway_webhook_event_conflicts_total`). The core's idempotency key
//! (`gw:webhook:<id>`) is only a second line: it is per shard, so by itself it could not tell
//! an id used on one shard from the same id on another.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paycore_engine::amount::{format_amount, parse_amount};
use paycore_engine::{Applied, HoldId, Op, Outcome, Reject, UserId};
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::error::ApiError;
use crate::extract::{json, store_error};
use crate::routes::wallets::{
    applied, parse_currency, parse_wallet_id, wallet_id_text, wallet_view,
};
use crate::time::{now_ms, now_secs};
use crate::users::{EventBegin, TransactionRecord};

/// Longest provider event id, in bytes.
const EVENT_ID_BYTES_MAX: usize = 100;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Deposit {
    wallet_id: String,
    amount: String,
    currency: String,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WithdrawalUpdate {
    withdrawal_id: String,
}

fn bad_signature(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "signature_invalid",
        detail.to_owned(),
    )
}

/// Checks `Paycore-Signature` over `body` at `now`.
pub fn verify_signature(
    key: &ring::hmac::Key,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), ApiError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => signatures.push(s),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| bad_signature("signature has no timestamp"))?;
    if (now - timestamp).abs() > tolerance_secs {
        return Err(bad_signature(
            "signature timestamp outside the tolerance window",
        ));
    }
    let mut signed = timestamp.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    for signature in signatures {
        let Some(tag) = unhex(signature) else {
            continue;
        };
        if ring::hmac::verify(key, &signed, &tag).is_ok() {
            return Ok(());
        }
    }
    Err(bad_signature("no valid v1 signature"))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The header value a provider sends for `body` at `timestamp` (tests and tools use it).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = timestamp.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    format!("t={timestamp},v1={}", crate::auth::hex(tag.as_ref()))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/provider",
    tag = "webhooks",
    summary = "Provider event, signed with Paycore-Signature",
    request_body(content = Event, content_type = "application/json"),
    params(("Paycore-Signature" = String, Header, description = "t=<unix s>,v1=<hex HMAC-SHA256 of t.body>")),
    responses((status = 200, description = "received"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"))
)]
pub async fn provider(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = state.webhook_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks_disabled",
            "no webhook secret configured",
        )
    })?;
    let header = headers
        .get("paycore-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad_signature("missing Paycore-Signature header"))?;
    verify_signature(
        key,
        header,
        &body,
        now_secs(),
        state.args.webhook_tolerance_secs,
    )?;
    let event: Event = json(&body)?;
    if event.id.is_empty()
        || event.id.len() > EVENT_ID_BYTES_MAX
        || !event.id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::unprocessable(
            "event_id_invalid",
            "event id has 1 to 100 visible ASCII characters",
        ));
    }
    let hash = content_hash(&event);
    let begin = state
        .store
        .provider_event_begin(&event.id, &hash, &event.kind, now_ms())
        .await
        .map_err(store_error)?;
    match begin {
        EventBegin::New | EventBegin::Unfinished => {}
        EventBegin::Answered { status, body } => return Ok(replay(status, body)),
        EventBegin::OtherContents { kind } => {
            tracing::error!(
                target: "paycore_gateway::alert",
                event_id = %event.id,
                first_type = %kind,
                resent_type = %event.kind,
                "provider event id re-sent with other contents: refused"
            );
            state.metrics.count(
                "paycore_gateway_webhook_event_conflicts_total",
                String::new(),
            );
            return Err(ApiError::conflict(
                "event_id_reused",
                "this event id was received before with other contents",
            ));
        }
    }
    let id = event.id.clone();
    match apply(&state, event).await {
        Ok(answer) => {
            answered(&state, &id, StatusCode::OK, &answer.to_string()).await;
            Ok(Json(answer).into_response())
        }
        // Nothing was decided (core or store unreachable): the provider's retry runs again.
        Err(error) if error.status.is_server_error() => Err(error),
        Err(error) => {
            answered(&state, &id, error.status, &error.body().to_string()).await;
            Err(error)
        }
    }
}

/// SHA-256 of the event's type and its data in canonical JSON (keys sorted at every level),
/// so a provider re-sending an event with its keys in another order sends the same contents.
fn content_hash(event: &Event) -> String {
    let mut text = event.kind.clone();
    text.push('\0');
    canonical(&event.data, &mut text);
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Keeps a decided event's answer (a failure to keep it only costs a second application
/// through the core's idempotency key).
async fn answered(state: &Shared, event_id: &str, status: StatusCode, body: &str) {
    if let Err(error) = state
        .store
        .provider_event_answered(event_id, status.as_u16(), body)
        .await
    {
        tracing::warn!(%error, event_id, "provider event answer not kept");
    }
}

/// The first answer to an event, again.
fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// Applies a recorded event: its answer, or why it was refused.
async fn apply(state: &Shared, event: Event) -> Result<serde_json::Value, ApiError> {
    let engine_key = format!("gw:webhook:{}", event.id);
    match event.kind.as_str() {
        "deposit.succeeded" => {
            let deposit: Deposit = serde_json::from_value(event.data)
                .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?;
            let currency = parse_currency(&deposit.currency)?;
            let wallet = parse_wallet_id(&deposit.wallet_id)?;
            let view = wallet_view(state, wallet)
                .await?
                .filter(|v| v.user != UserId::SYSTEM)
                .ok_or_else(|| ApiError::not_found("wallet_not_found", "no such wallet"))?;
            if view.currency != currency {
                return Err(ApiError::unprocessable(
                    "currency_mismatch",
                    "currency is not the wallet's",
                ));
            }
            let amount = parse_amount(&deposit.amount, view.scale)
                .map_err(|e| ApiError::unprocessable("amount_invalid", e.to_string()))?;
            let op = Op::Deposit {
                wallet,
                amount,
                currency,
            };
            let Applied::Transferred { transfer, pending } =
                applied(state.core.submit(&engine_key, op).await?)?
            else {
                return Err(ApiError::internal("deposit applied without a transfer"));
            };
            let record = TransactionRecord {
                id: transfer.to_string(),
                kind: "deposit".into(),
                from_wallet: None,
                to_wallet: Some(wallet_id_text(wallet)),
                from_user: None,
                to_user: Some(uuid::Uuid::from_u128(view.user.0).to_string()),
                amount: format_amount(amount as i128, view.scale),
                currency: currency.as_str().to_owned(),
                status: if pending { "pending" } else { "completed" }.into(),
                reference: deposit.reference,
                created_at_ms: now_ms(),
            };
            state
                .store
                .insert_transaction(&record)
                .await
                .map_err(store_error)?;
            Ok(json!({ "received": true, "transaction_id": record.id }))
        }
        "withdrawal.paid" | "withdrawal.failed" => {
            let update: WithdrawalUpdate = serde_json::from_value(event.data)
                .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?;
            let paid = event.kind == "withdrawal.paid";
            let status = settle_withdrawal(state, &update.withdrawal_id, paid, &engine_key).await?;
            Ok(json!({
                "received": true,
                "transaction_id": update.withdrawal_id,
                "status": status,
            }))
        }
        other => Err(ApiError::unprocessable(
            "event_type_unknown",
            format!("event type {other:?} is not handled"),
        )),
    }
}

/// Settles a held withdrawal: `paid` captures the hold to settlement (the money left), else
/// releases it to the wallet. The provider (webhook) or an operator (admin route) decides;
/// `engine_key` makes a repeated decision apply once. The withdrawal's new status.
pub async fn settle_withdrawal(
    state: &Shared,
    withdrawal_id: &str,
    paid: bool,
    engine_key: &str,
) -> Result<&'static str, ApiError> {
    let missing = || ApiError::not_found("withdrawal_not_found", "no such withdrawal");
    let id = uuid::Uuid::parse_str(withdrawal_id)
        .map_err(|_| missing())?
        .to_string();
    let (record, _) = state
        .store
        .transaction(&id)
        .await
        .map_err(store_error)?
        .filter(|(r, _)| r.kind == "withdrawal")
        .ok_or_else(missing)?;
    let hold = record
        .reference
        .as_deref()
        .and_then(|r| r.parse::<u64>().ok())
        .map(HoldId)
        .ok_or_else(|| ApiError::internal("withdrawal without a hold"))?;
    let op = if paid {
        Op::Capture {
            hold,
            amount: None,
            to: None,
        }
    } else {
        Op::Release { hold }
    };
    let status = if paid { "completed" } else { "cancelled" };
    match state.core.submit(engine_key, op).await? {
        Outcome::Ok(_) => {}
        // Settled before (by another event or an operator): fine if it ended the same way.
        Outcome::Rejected(Reject::HoldClosed) if record.status == status => {}
        Outcome::Rejected(Reject::HoldClosed) => {
            return Err(ApiError::conflict(
                "withdrawal_settled",
                format!("the withdrawal is {} already", record.status),
            ));
        }
        other => {
            return Err(applied(other)
                .err()
                .unwrap_or_else(|| ApiError::internal("?")));
        }
    }
    state
        .store
        .set_transaction_status(&id, status)
        .await
        .map_err(store_error)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_hash_ignores_key_order_only() {
        let event = |kind: &str, data: serde_json::Value| Event {
            id: "e".into(),
            kind: kind.into(),
            data,
        };
        let a = content_hash(&event(
            "deposit.succeeded",
            json!({"a": 1, "b": {"y": [1, "x"], "x": null}}),
        ));
        let b = content_hash(&event(
            "deposit.succeeded",
            json!({"b": {"x": null, "y": [1, "x"]}, "a": 1}),
        ));
        assert_eq!(a, b);
        let other_type = content_hash(&event(
            "withdrawal.paid",
            json!({"a": 1, "b": {"y": [1, "x"], "x": null}}),
        ));
        assert_ne!(a, other_type);
        let other_value = content_hash(&event(
            "deposit.succeeded",
            json!({"a": 2, "b": {"y": [1, "x"], "x": null}}),
        ));
        assert_ne!(a, other_value);
        let other_order = content_hash(&event(
            "deposit.succeeded",
            json!({"a": 1, "b": {"y": ["x", 1], "x": null}}),
        ));
        assert_ne!(a, other_order);
    }

    #[test]
    fn signatures_verify_within_the_window_only() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"whsec");
        let header = sign(b"whsec", 1000, b"{}");
        assert!(verify_signature(&key, &header, b"{}", 1000, 300).is_ok());
        assert!(verify_signature(&key, &header, b"{}", 1301, 300).is_err());
        assert!(verify_signature(&key, &header, b"{ }", 1000, 300).is_err());
        assert!(verify_signature(&key, &sign(b"other", 1000, b"{}"), b"{}", 1000, 300).is_err());
        assert!(verify_signature(&key, "t=1000", b"{}", 1000, 300).is_err());
        assert!(verify_signature(&key, "garbage", b"{}", 1000, 300).is_err());
    }
}
