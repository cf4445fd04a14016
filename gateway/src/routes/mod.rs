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
use axum::routing::get;
use serde_json::json;

use crate::Shared;

/// The OpenAPI description's frame; the paths come from the routes themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "paycore gateway",
        description = "Public REST API of paycore. Amounts are decimal strings; errors are RFC 9457 problem+json with a stable `code`."
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "users", description = "accounts, tokens, 2FA, profile, KYC"),
        (name = "wallets", description = "one wallet per currency"),
        (name = "transactions", description = "sends, withdrawals, history"),
        (name = "webhooks", description = "signed provider events"),
        (name = "admin", description = "admin role only"),
    )
)]
struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API routes and the OpenAPI description built from the same `#[utoipa::path]`
/// attributes: a route cannot exist without its description, nor the other way round.
pub fn api() -> (Router<Shared>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::register))
        .routes(routes!(users::login))
        .routes(routes!(users::refresh))
        .routes(routes!(users::logout))
        .routes(routes!(users::verify_two_factor))
        .routes(routes!(users::enroll_two_factor))
        .routes(routes!(users::confirm_two_factor))
        .routes(routes!(users::get_profile, users::put_profile))
        .routes(routes!(users::kyc_status, users::kyc_submit))
        .routes(routes!(wallets::list_wallets, wallets::create_wallet))
        .routes(routes!(wallets::get_wallet))
        .routes(routes!(wallets::history))
        .routes(routes!(wallets::send))
        .routes(routes!(wallets::get_transaction))
        .routes(routes!(wallets::withdraw))
        .routes(routes!(webhooks::provider))
        .routes(routes!(admin::freeze))
        .routes(routes!(admin::unfreeze))
        .routes(routes!(admin::kyc_approve))
        .routes(routes!(admin::kyc_reject))
        .routes(routes!(admin::settle_withdrawal))
        .routes(routes!(admin::cancel_withdrawal))
        .split_for_parts()
}

pub fn routes() -> Router<Shared> {
    let (api, description) = api();
    let document = std::sync::Arc::new(description.to_json().unwrap_or_default());
    api.route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/api/v1/ws", get(stream::websocket))
        .route("/api/v1/stream/notifications", get(stream::sse))
}

/// Liveness: the process serves HTTP.
async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Readiness: the core answers a status query and the store a `SELECT 1`, within 2 s each,
/// and the configured currencies are registered in the core.
async fn ready(State(state): State<Shared>) -> Response {
    let timeout = Duration::from_secs(2);
    let core = state.core.ready(timeout).await;
    let store = matches!(
        tokio::time::timeout(timeout, state.store.ping()).await,
        Ok(Ok(()))
    );
    let currencies = state
        .currencies_registered
        .load(std::sync::atomic::Ordering::Acquire);
    let ready = core && store && currencies;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "core": core,
        "store": store,
        "currencies": currencies,
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
