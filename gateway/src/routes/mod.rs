//! The routes. Paths are the seed's (`/api/v1/users/…`, `/api/v1/wallets/…`,
//! `/api/v1/transactions/…`) plus operations at the root.

pub mod admin;
pub mod stream;
pub mod users;
pub mod wallets;
pub mod webhooks;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/users/register", post(users::register))
        .route("/api/v1/users/login", post(users::login))
        .route("/api/v1/users/refresh", post(users::refresh))
        .route("/api/v1/users/logout", post(users::logout))
        .route("/api/v1/users/verify-2fa", post(users::verify_two_factor))
        .route("/api/v1/users/2fa/enroll", post(users::enroll_two_factor))
        .route("/api/v1/users/2fa/confirm", post(users::confirm_two_factor))
        .route(
            "/api/v1/users/profile",
            get(users::get_profile).put(users::put_profile),
        )
        .route(
            "/api/v1/users/kyc",
            get(users::kyc_status).post(users::kyc_submit),
        )
        .route(
            "/api/v1/wallets",
            get(wallets::list_wallets).post(wallets::create_wallet),
        )
        .route("/api/v1/wallets/{id}", get(wallets::get_wallet))
        .route("/api/v1/transactions", get(wallets::history))
        .route("/api/v1/transactions/send", post(wallets::send))
        .route("/api/v1/transactions/{id}", get(wallets::get_transaction))
        .route("/api/v1/withdrawals", post(wallets::withdraw))
        .route("/api/v1/webhooks/provider", post(webhooks::provider))
        .route("/api/v1/ws", get(stream::websocket))
        .route("/api/v1/stream/notifications", get(stream::sse))
        .route("/api/v1/admin/wallets/{id}/freeze", post(admin::freeze))
        .route("/api/v1/admin/wallets/{id}/unfreeze", post(admin::unfreeze))
        .route(
            "/api/v1/admin/kyc/{user_id}/approve",
            post(admin::kyc_approve),
        )
        .route(
            "/api/v1/admin/kyc/{user_id}/reject",
            post(admin::kyc_reject),
        )
}

/// Liveness: the process serves HTTP.
async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Readiness: the core answers a status query and the store a `SELECT 1`, within 2 s each.
async fn ready(State(state): State<Shared>) -> Response {
    let timeout = Duration::from_secs(2);
    let core = state.core.ready(timeout).await;
    let store = matches!(
        tokio::time::timeout(timeout, state.store.ping()).await,
        Ok(Ok(()))
    );
    let status = if core && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if core && store { "ready" } else { "not_ready" },
        "core": core,
        "store": store,
    });
    // A JSON body rather than a problem: load balancers read the status, people the fields.
    let mut response = (status, axum::Json(body)).into_response();
    if status != StatusCode::OK {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
    }
    response
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
