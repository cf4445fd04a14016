//! `/api/v1/admin/…`: freeze and unfreeze wallets, review KYC. Admins only (role claim).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use paycore_engine::{Op, Tier};
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::auth;
use crate::error::ApiError;
use crate::extract::{AuthUser, json, store_error};
use crate::routes::wallets::{applied, engine_user, parse_wallet_id, wallet_json, wallet_view};
use crate::time::now_ms;
use crate::users::{parse_tier, tier_name};

/// Tells the user's open streams on this gateway about a rejection (an approval changes the
/// tier in the core, whose event every gateway relays).
fn publish_kyc(state: &Shared, user_id: &str, data: serde_json::Value) {
    state.events.publish(crate::events::Notification {
        user: engine_user(user_id),
        kind: "kyc.status",
        wallet: None,
        data,
        position: None,
    });
}

async fn set_frozen(
    state: Shared,
    admin: AuthUser,
    id: String,
    freeze: bool,
) -> Result<impl IntoResponse, ApiError> {
    admin.require_admin()?;
    let wallet = parse_wallet_id(&id)?;
    let op = if freeze {
        Op::FreezeWallet { wallet }
    } else {
        Op::UnfreezeWallet { wallet }
    };
    applied(
        state
            .core
            .submit(&format!("gw:admin:{}", auth::random_uuid()), op)
            .await?,
    )?;
    tracing::info!(admin = admin.id(), wallet = %wallet, freeze, "wallet status changed");
    let view = wallet_view(&state, wallet)
        .await?
        .ok_or_else(|| ApiError::not_found("wallet_not_found", "no such wallet"))?;
    Ok(Json(wallet_json(&view)))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/wallets/{id}/freeze",
    tag = "admin",
    summary = "Freeze a wallet (it can still receive)",
    params(("id" = String, Path, description = "wallet id")),
    responses((status = 200, description = "the wallet"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn freeze(
    State(state): State<Shared>,
    admin: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_frozen(state, admin, id, true).await
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/wallets/{id}/unfreeze",
    tag = "admin",
    summary = "Unfreeze a wallet",
    params(("id" = String, Path, description = "wallet id")),
    responses((status = 200, description = "the wallet"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn unfreeze(
    State(state): State<Shared>,
    admin: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_frozen(state, admin, id, false).await
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Review {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn review_body(body: &[u8]) -> Result<Review, ApiError> {
    if body.is_empty() {
        Ok(Review::default())
    } else {
        json(body)
    }
}

fn valid_user(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("user_not_found", "no such user"))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/kyc/{user_id}/approve",
    tag = "admin",
    summary = "Approve a pending KYC (sets the tier)",
    request_body(content = Review, content_type = "application/json"),
    params(("user_id" = String, Path, description = "user id (UUID)")),
    responses((status = 200, description = "approved"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn kyc_approve(
    State(state): State<Shared>,
    admin: AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    admin.require_admin()?;
    let review = review_body(&body)?;
    let user_id = valid_user(&user_id)?;
    let tier = match review.tier.as_deref() {
        None => Tier::Verified,
        Some(text) => parse_tier(text)
            .filter(|t| *t != Tier::Unverified)
            .ok_or_else(|| {
                ApiError::unprocessable("tier_invalid", "tier is verified or premium")
            })?,
    };
    let reviewed = state
        .store
        .kyc_review(&user_id, true, admin.id(), None, now_ms())
        .await
        .map_err(store_error)?;
    if !reviewed {
        return Err(ApiError::conflict(
            "kyc_not_pending",
            "no pending KYC submission for this user",
        ));
    }
    // The core's velocity limits follow the tier; the store's copy feeds the next token.
    let op = Op::SetTier {
        user: engine_user(&user_id),
        tier,
    };
    applied(
        state
            .core
            .submit(&format!("gw:admin:{}", auth::random_uuid()), op)
            .await?,
    )?;
    state
        .store
        .set_tier(&user_id, tier, now_ms())
        .await
        .map_err(store_error)?;
    // kyc.status reaches the user's streams from the core's tier_changed event.
    Ok(Json(
        json!({ "user_id": user_id, "status": "approved", "tier": tier_name(tier) }),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/kyc/{user_id}/reject",
    tag = "admin",
    summary = "Reject a pending KYC",
    request_body(content = Review, content_type = "application/json"),
    params(("user_id" = String, Path, description = "user id (UUID)")),
    responses((status = 200, description = "rejected"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn kyc_reject(
    State(state): State<Shared>,
    admin: AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    admin.require_admin()?;
    let review = review_body(&body)?;
    let user_id = valid_user(&user_id)?;
    let reason = review.reason.unwrap_or_default();
    if reason.len() > 500 {
        return Err(ApiError::unprocessable(
            "reason_invalid",
            "reason has at most 500 bytes",
        ));
    }
    let reviewed = state
        .store
        .kyc_review(&user_id, false, admin.id(), Some(&reason), now_ms())
        .await
        .map_err(store_error)?;
    if !reviewed {
        return Err(ApiError::conflict(
            "kyc_not_pending",
            "no pending KYC submission for this user",
        ));
    }
    publish_kyc(
        &state,
        &user_id,
        json!({"status": "rejected", "reason": reason}),
    );
    Ok(Json(
        json!({ "user_id": user_id, "status": "rejected", "reason": reason }),
    ))
}

async fn settle(
    state: Shared,
    admin: AuthUser,
    id: String,
    paid: bool,
) -> Result<impl IntoResponse, ApiError> {
    admin.require_admin()?;
    // One decision per withdrawal and kind: an operator's retry applies once.
    let key = format!(
        "gw:admin:withdrawal:{id}:{}",
        if paid { "settle" } else { "cancel" }
    );
    if id.len() > 64 {
        return Err(ApiError::not_found(
            "withdrawal_not_found",
            "no such withdrawal",
        ));
    }
    let status = crate::routes::webhooks::settle_withdrawal(&state, &id, paid, &key).await?;
    tracing::info!(admin = admin.id(), withdrawal = %id, status, "withdrawal settled by an operator");
    Ok(Json(json!({ "transaction_id": id, "status": status })))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/withdrawals/{id}/settle",
    tag = "admin",
    summary = "Settle a held withdrawal: the provider paid it out",
    params(("id" = String, Path, description = "withdrawal (transaction) id")),
    responses((status = 200, description = "completed"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn settle_withdrawal(
    State(state): State<Shared>,
    admin: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    settle(state, admin, id, true).await
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/withdrawals/{id}/cancel",
    tag = "admin",
    summary = "Cancel a held withdrawal: the money returns to the wallet",
    params(("id" = String, Path, description = "withdrawal (transaction) id")),
    responses((status = 200, description = "cancelled"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn cancel_withdrawal(
    State(state): State<Shared>,
    admin: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    settle(state, admin, id, false).await
}
