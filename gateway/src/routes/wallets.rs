//! Wallets, transactions, withdrawals: everything that moves money goes to the core.

use std::future::Future;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paycore_engine::amount::{format_amount, parse_amount};
use paycore_engine::{Applied, CurrencyCode, Op, Outcome, Reject, UserId, WalletId, WalletStatus};
use paycore_protocol::{Query, QueryResult, WalletView};
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::auth;
use crate::error::ApiError;
use crate::extract::{AuthUser, json, store_error};
use crate::ratelimit::Scope;
use crate::time::{now_ms, rfc3339};
use crate::users::{IdempotencyBegin, TransactionRecord};

/// Longest `Idempotency-Key`, in bytes (the engine key adds the user id and a prefix).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Most transactions in one history page.
pub const PAGE_LIMIT_MAX: u32 = 100;

pub fn wallet_id_text(id: WalletId) -> String {
    id.0.to_string()
}

/// A wallet id from a path or body: any text that is not one is simply not found.
pub fn parse_wallet_id(text: &str) -> Result<WalletId, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|_| text.len() <= 20 && !text.starts_with('+'))
        .map(WalletId)
        .ok_or_else(|| ApiError::not_found("wallet_not_found", "no such wallet"))
}

pub fn engine_user(id: &str) -> UserId {
    UserId(uuid::Uuid::parse_str(id).map_or(0, |u| u.as_u128()))
}

fn ns_to_ms(ns: u64) -> i64 {
    i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX)
}

pub fn status_name(status: WalletStatus) -> &'static str {
    match status {
        WalletStatus::Active => "active",
        WalletStatus::Frozen => "frozen",
        WalletStatus::Closed => "closed",
    }
}

pub fn wallet_json(view: &WalletView) -> serde_json::Value {
    json!({
        "id": wallet_id_text(view.id),
        "currency": view.currency.as_str(),
        "balance": format_amount(view.available + view.frozen, view.scale),
        "available": format_amount(view.available, view.scale),
        "frozen": format_amount(view.frozen, view.scale),
        "status": status_name(view.status),
        "version": view.version,
        "created_at": rfc3339(ns_to_ms(view.created_at_ns)),
        "updated_at": rfc3339(ns_to_ms(view.updated_at_ns)),
    })
}

pub async fn wallet_view(state: &Shared, id: WalletId) -> Result<Option<WalletView>, ApiError> {
    match state.core.query(Query::WalletById(id)).await? {
        QueryResult::Wallet(view) => Ok(view),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// The wallet if it exists and belongs to `user`; 404 otherwise (someone else's wallet is
/// answered exactly like a missing one).
pub async fn owned_wallet(
    state: &Shared,
    user: &AuthUser,
    id: WalletId,
) -> Result<WalletView, ApiError> {
    match wallet_view(state, id).await? {
        Some(view) if view.user == user.engine_user() => Ok(view),
        _ => Err(ApiError::not_found("wallet_not_found", "no such wallet")),
    }
}

pub fn parse_currency(text: &str) -> Result<CurrencyCode, ApiError> {
    CurrencyCode::parse(text)
        .map_err(|e| ApiError::unprocessable("currency_invalid", e.to_string()))
}

/// The engine's outcome as an error unless it applied.
pub fn applied(outcome: Outcome) -> Result<Applied, ApiError> {
    match outcome {
        Outcome::Ok(applied) => Ok(applied),
        Outcome::Rejected(reason) | Outcome::LinkedRejected { reason, .. } => {
            Err(ApiError::rejected(reason))
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWallet {
    currency: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/wallets",
    tag = "wallets",
    summary = "Open a wallet in a currency",
    request_body(content = CreateWallet, content_type = "application/json"),
    responses((status = 201, description = "the wallet"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn create_wallet(
    State(state): State<Shared>,
    user: AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: CreateWallet = json(&body)?;
    let currency = parse_currency(&request.currency)?;
    // A fresh key per request: opening a second wallet in a currency is `wallet_exists`.
    let key = format!("gw:open:{}", auth::random_uuid());
    let op = Op::OpenWallet {
        user: user.engine_user(),
        currency,
    };
    let Applied::WalletOpened(id) = applied(state.core.submit(&key, op).await?)? else {
        return Err(ApiError::internal("open wallet applied without a wallet"));
    };
    let view = owned_wallet(&state, &user, id).await?;
    Ok((StatusCode::CREATED, Json(wallet_json(&view))))
}

#[utoipa::path(
    get,
    path = "/api/v1/wallets",
    tag = "wallets",
    summary = "The caller's wallets",
    responses((status = 200, description = "{data: [wallet]}"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn list_wallets(
    State(state): State<Shared>,
    user: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limiter
        .check(Scope::Balance, user.id(), user.tier)
        .await?;
    match state
        .core
        .query(Query::WalletsOfUser(user.engine_user()))
        .await?
    {
        QueryResult::Wallets(views) => Ok(Json(json!({
            "data": views.iter().map(wallet_json).collect::<Vec<_>>(),
        }))),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/wallets/{id}",
    tag = "wallets",
    summary = "One of the caller's wallets",
    params(("id" = String, Path, description = "wallet id")),
    responses((status = 200, description = "the wallet: balance, available, frozen"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_wallet(
    State(state): State<Shared>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limiter
        .check(Scope::Balance, user.id(), user.tier)
        .await?;
    let view = owned_wallet(&state, &user, parse_wallet_id(&id)?).await?;
    Ok(Json(wallet_json(&view)))
}

pub fn transaction_json(t: &TransactionRecord, viewer: Option<&str>) -> serde_json::Value {
    let direction = match viewer {
        Some(v) if t.from_user.as_deref() == Some(v) => Some("sent"),
        Some(v) if t.to_user.as_deref() == Some(v) => Some("received"),
        _ => None,
    };
    json!({
        "id": t.id,
        "type": t.kind,
        "from_wallet_id": t.from_wallet,
        "to_wallet_id": t.to_wallet,
        "amount": t.amount,
        "currency": t.currency,
        "status": t.status,
        "reference": t.reference,
        "direction": direction,
        "created_at": rfc3339(t.created_at_ms),
    })
}

/// Runs `work` at most once per (`user`, `Idempotency-Key`): same key and same body replay the
/// stored answer, another body is 422, a key still running is 409. Failures that decided
/// nothing (core or store unreachable) forget the key so the client can retry.
pub async fn idempotent<F, Fut>(
    state: &Shared,
    user_id: &str,
    headers: &HeaderMap,
    scope: &str,
    body: &[u8],
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_required",
                "an Idempotency-Key header is required",
            )
        })?
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_invalid",
                format!(
                    "Idempotency-Key has 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
                ),
            )
        })?
        .to_owned();
    let mut hashed = scope.as_bytes().to_vec();
    hashed.push(0);
    hashed.extend_from_slice(body);
    let request_hash = auth::hex(ring::digest::digest(&ring::digest::SHA256, &hashed).as_ref());
    let begin = state
        .store
        .idempotency_begin(user_id, &key, &request_hash, now_ms())
        .await
        .map_err(store_error)?;
    match begin {
        IdempotencyBegin::Started => {}
        IdempotencyBegin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
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
            return Ok(response);
        }
        IdempotencyBegin::Running => {
            return Err(ApiError::conflict(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running; retry later",
            ));
        }
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request body",
            ));
        }
    }
    // The engine's key: per user, so one user's keys never meet another's.
    let engine_key = format!("gw:{scope}:{user_id}:{key}");
    let (status, body) = match work(engine_key).await {
        Ok((status, value)) => (status, value.to_string()),
        // Nothing was decided: the core or the store was unreachable, or the step-up wants
        // a code. The same key runs again.
        Err(error) if error.status.is_server_error() || STEP_UP_CODES.contains(&error.code) => {
            if let Err(e) = state.store.idempotency_abort(user_id, &key).await {
                tracing::warn!(error = %e, "idempotency key not released");
            }
            return Err(error);
        }
        Err(error) => {
            let body = error.body().to_string();
            if let Err(e) = state
                .store
                .idempotency_finish(user_id, &key, error.status.as_u16(), &body)
                .await
            {
                tracing::warn!(error = %e, "idempotency record not finished");
            }
            return Err(error);
        }
    };
    if let Err(e) = state
        .store
        .idempotency_finish(user_id, &key, status.as_u16(), &body)
        .await
    {
        tracing::warn!(error = %e, "idempotency record not finished");
    }
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    from_wallet_id: String,
    #[serde(default)]
    to_wallet_id: Option<String>,
    #[serde(default)]
    to_email: Option<String>,
    amount: String,
    currency: String,
}

/// The recipient's wallet in `currency`.
async fn recipient(
    state: &Shared,
    request: &SendRequest,
    currency: CurrencyCode,
) -> Result<WalletView, ApiError> {
    let missing = || ApiError::not_found("recipient_not_found", "no such recipient wallet");
    match (&request.to_wallet_id, &request.to_email) {
        (Some(id), None) => {
            let id = parse_wallet_id(id).map_err(|_| missing())?;
            let view = wallet_view(state, id).await?.ok_or_else(missing)?;
            if view.user == UserId::SYSTEM {
                return Err(missing());
            }
            Ok(view)
        }
        (None, Some(email)) => {
            let email = email.trim().to_ascii_lowercase();
            let user = state
                .store
                .user_by_email(&email)
                .await
                .map_err(store_error)?
                .ok_or_else(missing)?;
            match state
                .core
                .query(Query::WalletsOfUser(engine_user(&user.id)))
                .await?
            {
                QueryResult::Wallets(views) => views
                    .into_iter()
                    .find(|v| v.currency == currency && v.status != WalletStatus::Closed)
                    .ok_or_else(missing),
                other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
            }
        }
        _ => Err(ApiError::unprocessable(
            "recipient_invalid",
            "give exactly one of to_wallet_id and to_email",
        )),
    }
}

/// Codes of the step-up refusals: they decide nothing, so an `Idempotency-Key` they met is
/// released and the same request with a code runs (see [`idempotent`]).
pub const STEP_UP_CODES: [&str; 3] = [
    "two_factor_required",
    "two_factor_code_required",
    "two_factor_code_invalid",
];

/// The step-up rule, the same for every route that takes money out of a user's wallet (send,
/// withdraw; `docs/security.md` has the table): above `--two-factor-above` in the currency,
/// the caller's current TOTP code in `X-2FA-Code` (a caller without 2FA cannot move that
/// much). Off without a TOTP key. Called after every other check of the request, right before
/// the core, so that a code is not spent on a request refused for another reason.
pub async fn step_up(
    state: &Shared,
    user: &AuthUser,
    headers: &HeaderMap,
    currency: CurrencyCode,
    amount: u128,
    scale: u8,
) -> Result<(), ApiError> {
    if state.totp.is_none() || !state.two_factor_above.exceeded(currency, amount, scale) {
        return Ok(());
    }
    let account = crate::routes::users::current(state, user).await?;
    if !account.totp_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "two_factor_required",
            format!(
                "transfers above the 2FA amount ({}) need 2FA: enroll it first",
                state.args.two_factor_above
            ),
        ));
    }
    let code = headers
        .get("x-2fa-code")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "two_factor_code_required",
                "this amount needs the X-2FA-Code header",
            )
        })?;
    if !crate::routes::users::check_code(state, &account, code).await? {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "two_factor_code_invalid",
            "wrong or expired 2FA code",
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/api/v1/transactions/send",
    tag = "transactions",
    summary = "Send money to a wallet or an e-mail",
    request_body(content = SendRequest, content_type = "application/json"),
    params(("Idempotency-Key" = String, Header, description = "1 to 128 visible ASCII characters; same key + same body replays"), ("X-2FA-Code" = Option<String>, Header, description = "TOTP code, above the 2FA amount")),
    responses((status = 201, description = "the transaction"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn send(
    State(state): State<Shared>,
    user: AuthUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state
        .limiter
        .check(Scope::Send, user.id(), user.tier)
        .await?;
    let request: SendRequest = json(&body)?;
    let currency = parse_currency(&request.currency)?;
    let from = parse_wallet_id(&request.from_wallet_id)?;
    let owner = user.id().to_owned();
    let code_headers = headers.clone();
    let (shared, caller) = (state.clone(), owner.clone());
    idempotent(
        &shared,
        &caller,
        &headers,
        "send",
        &body,
        |key| async move {
            let source = owned_wallet(&state, &user, from).await?;
            if source.currency != currency {
                return Err(ApiError::unprocessable(
                    "currency_mismatch",
                    "currency is not the source wallet's currency",
                ));
            }
            let amount = parse_amount(&request.amount, source.scale)
                .map_err(|e| ApiError::unprocessable("amount_invalid", e.to_string()))?;
            let target = recipient(&state, &request, currency).await?;
            // The engine refuses this itself only when both wallets are on one shard; across
            // shards the debit would apply and the credit leg fail later. Same answer for both.
            if target.currency != currency {
                return Err(ApiError::rejected(Reject::CurrencyMismatch));
            }
            step_up(&state, &user, &code_headers, currency, amount, source.scale).await?;
            let op = Op::Transfer {
                from,
                to: target.id,
                amount,
                currency,
            };
            let Applied::Transferred { transfer, pending } =
                applied(state.core.submit(&key, op).await?)?
            else {
                return Err(ApiError::internal("transfer applied without a transfer id"));
            };
            let record = TransactionRecord {
                id: transfer.to_string(),
                kind: "transfer".into(),
                from_wallet: Some(wallet_id_text(from)),
                to_wallet: Some(wallet_id_text(target.id)),
                from_user: Some(owner.clone()),
                to_user: Some(uuid::Uuid::from_u128(target.user.0).to_string()),
                amount: format_amount(amount as i128, source.scale),
                currency: currency.as_str().to_owned(),
                status: if pending { "pending" } else { "completed" }.into(),
                reference: None,
                created_at_ms: now_ms(),
            };
            state
                .store
                .insert_transaction(&record)
                .await
                .map_err(store_error)?;
            Ok((StatusCode::CREATED, transaction_json(&record, Some(&owner))))
        },
    )
    .await
}

#[utoipa::path(
    get,
    path = "/api/v1/transactions/{id}",
    tag = "transactions",
    summary = "One transaction of the caller",
    params(("id" = String, Path, description = "transaction id (UUID)")),
    responses((status = 200, description = "the transaction"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_transaction(
    State(state): State<Shared>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let missing = || ApiError::not_found("transaction_not_found", "no such transaction");
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| missing())?
        .to_string();
    let (record, _) = state
        .store
        .transaction(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    let mine = record.from_user.as_deref() == Some(user.id())
        || record.to_user.as_deref() == Some(user.id());
    if !mine {
        return Err(missing());
    }
    Ok(Json(transaction_json(&record, Some(user.id()))))
}

#[utoipa::path(
    get,
    path = "/api/v1/transactions",
    tag = "transactions",
    summary = "The caller's history, newest first",
    params(("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("starting_after" = Option<String>, Query, description = "id of the last transaction of the previous page")),
    responses((status = 200, description = "{data: [transaction], has_more}"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<Shared>,
    user: AuthUser,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut limit = 20;
    let mut starting_after = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=PAGE_LIMIT_MAX).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "limit_invalid",
                            format!("limit is 1 to {PAGE_LIMIT_MAX}"),
                        )
                    })?;
            }
            "starting_after" => starting_after = Some(value.to_owned()),
            _ => {
                return Err(ApiError::bad_request(
                    "query_invalid",
                    format!("unknown query parameter {name:?}"),
                ));
            }
        }
    }
    let before = match starting_after {
        None => None,
        Some(cursor) => {
            let invalid = || {
                ApiError::bad_request(
                    "cursor_invalid",
                    "starting_after is not a transaction of yours",
                )
            };
            let id = uuid::Uuid::parse_str(&cursor)
                .map_err(|_| invalid())?
                .to_string();
            let (record, seq) = state
                .store
                .transaction(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(invalid)?;
            if record.from_user.as_deref() != Some(user.id())
                && record.to_user.as_deref() != Some(user.id())
            {
                return Err(invalid());
            }
            Some(seq)
        }
    };
    let mut rows = state
        .store
        .history(user.id(), before, limit)
        .await
        .map_err(store_error)?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(Json(json!({
        "data": rows.iter().map(|t| transaction_json(t, Some(user.id()))).collect::<Vec<_>>(),
        "has_more": has_more,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Withdraw {
    wallet_id: String,
    amount: String,
    currency: String,
    /// Where the provider pays out (an IBAN, an address…): kept as the reference.
    destination: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/withdrawals",
    tag = "transactions",
    summary = "Withdraw: place a hold the provider settles",
    request_body(content = Withdraw, content_type = "application/json"),
    params(("Idempotency-Key" = String, Header, description = "1 to 128 visible ASCII characters; same key + same body replays"), ("X-2FA-Code" = Option<String>, Header, description = "TOTP code, above the 2FA amount")),
    responses((status = 201, description = "the withdrawal (held)"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn withdraw(
    State(state): State<Shared>,
    user: AuthUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state
        .limiter
        .check(Scope::Send, user.id(), user.tier)
        .await?;
    let request: Withdraw = json(&body)?;
    let currency = parse_currency(&request.currency)?;
    let wallet = parse_wallet_id(&request.wallet_id)?;
    if request.destination.is_empty() || request.destination.len() > 128 {
        return Err(ApiError::unprocessable(
            "destination_invalid",
            "destination has 1 to 128 bytes",
        ));
    }
    let owner = user.id().to_owned();
    let code_headers = headers.clone();
    let (shared, caller) = (state.clone(), owner.clone());
    idempotent(&shared, &caller, &headers, "withdraw", &body, |key| async move {
        let source = owned_wallet(&state, &user, wallet).await?;
        if source.currency != currency {
            return Err(ApiError::unprocessable(
                "currency_mismatch",
                "currency is not the wallet's currency",
            ));
        }
        let amount = parse_amount(&request.amount, source.scale)
            .map_err(|e| ApiError::unprocessable("amount_invalid", e.to_string()))?;
        step_up(&state, &user, &code_headers, currency, amount, source.scale).await?;
        let op = Op::Withdraw {
            wallet,
            amount,
            currency,
        };
        let Applied::HoldPlaced(hold) = applied(state.core.submit(&key, op).await?)? else {
            return Err(ApiError::internal("withdrawal applied without a hold"));
        };
        let record = TransactionRecord {
            id: auth::random_uuid().to_string(),
            kind: "withdrawal".into(),
            from_wallet: Some(wallet_id_text(wallet)),
            to_wallet: None,
            from_user: Some(owner.clone()),
            to_user: None,
            amount: format_amount(amount as i128, source.scale),
            currency: currency.as_str().to_owned(),
            status: "held".into(),
            // The hold id, for the provider's settlement; the destination is in the log only.
            reference: Some(hold.0.to_string()),
            created_at_ms: now_ms(),
        };
        tracing::info!(withdrawal = %record.id, destination = %request.destination, "withdrawal held");
        state
            .store
            .insert_transaction(&record)
            .await
            .map_err(store_error)?;
        Ok((StatusCode::CREATED, transaction_json(&record, Some(&owner))))
    })
    .await
}
