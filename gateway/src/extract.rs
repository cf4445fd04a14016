//! Extractors that answer problem+json: the authenticated user (bearer token, revocation,
//! per-tier rate limit), JSON bodies (400 for bad JSON, 422 for a wrong shape) and the
//! client's address.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::Shared;
use crate::auth::Claims;
use crate::error::ApiError;
use crate::ratelimit::Scope;
use crate::users::{Role, Session, parse_tier};

/// Longest time since an admin's session proved a TOTP code, in seconds: an admin action
/// needs a session logged in with a code within this (the default access token's life).
pub const ADMIN_TWO_FACTOR_AGE_SECS_MAX: i64 = 900;

/// The caller, from a valid, unrevoked access token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub claims: Claims,
    pub tier: paycore_engine::Tier,
    /// Read from the store for this request: the role and 2FA as they are now, not as when
    /// the token was issued.
    pub session: Session,
}

impl AuthUser {
    pub fn id(&self) -> &str {
        &self.claims.sub
    }

    /// The engine's user id (the UUID's 128-bit value).
    pub fn engine_user(&self) -> paycore_engine::UserId {
        paycore_engine::UserId(uuid::Uuid::parse_str(&self.claims.sub).map_or(0, |u| u.as_u128()))
    }

    pub fn is_admin(&self) -> bool {
        self.session.role == Role::Admin
    }

    /// Every admin action: the admin role in the store now, 2FA enabled, and a session that
    /// proved a TOTP code (`verify-2fa`) at most [`ADMIN_TWO_FACTOR_AGE_SECS_MAX`] ago.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if !self.is_admin() {
            return Err(ApiError::forbidden("admin role required"));
        }
        let proved = self.claims.otp_at.is_some_and(|at| {
            crate::time::now_secs().saturating_sub(at) <= ADMIN_TWO_FACTOR_AGE_SECS_MAX
        });
        if !self.session.totp_enabled || !proved {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "two_factor_required",
                "admin actions need a login with a 2FA code (verify-2fa) in the last 15 minutes",
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<Shared> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
        authenticate(state, token).await
    }
}

/// The caller of a bearer `token`: valid signature, audience and expiry, not revoked, and
/// within the per-tier rate limit.
pub async fn authenticate(state: &Shared, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.jwt.decode(token.trim(), crate::time::now_secs())?;
    let tier = parse_tier(&claims.tier)
        .ok_or_else(|| ApiError::unauthorized("access token has an unknown tier"))?;
    if uuid::Uuid::parse_str(&claims.sub).is_err() {
        return Err(ApiError::unauthorized("access token has a bad subject"));
    }
    let session = check_session(state, &claims).await?;
    state.limiter.check(Scope::Tier, &claims.sub, tier).await?;
    Ok(AuthUser {
        claims,
        tier,
        session,
    })
}

/// Whether the token still stands in the store: its user exists, its generation is the user's
/// current one (a logout, a stolen refresh token or a role taken away ends every token issued
/// before, on every gateway at once) and its own id is not revoked. One primary-key lookup,
/// on every request (no cache: a revocation holds from the next request on).
pub async fn check_session(state: &Shared, claims: &Claims) -> Result<Session, ApiError> {
    let revoked = || {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "token_revoked",
            "access token was revoked (logged out)",
        )
    };
    let session = state
        .store
        .session(&claims.sub, &claims.jti)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    if session.jti_revoked || claims.generation != session.token_generation {
        return Err(revoked());
    }
    Ok(session)
}

/// The client's address (for limits on unauthenticated routes).
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl FromRequestParts<Shared> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, ApiError> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<crate::listener::PeerAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.0.ip().to_string());
        Ok(ClientAddr(addr))
    }
}

/// Parses a JSON body: 400 `malformed_json` for bad JSON, 422 `invalid_body` for JSON of the
/// wrong shape (missing field, wrong type, unknown field, anything but an object: serde would
/// read a struct from an array of its fields, `["USD"]`, which no client means).
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        // Valid JSON of another kind is the wrong shape; anything else is not JSON at all.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ApiError::unprocessable("invalid_body", "the body must be a JSON object"),
                Err(e) => ApiError::bad_request("malformed_json", e.to_string()),
            },
        );
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::unprocessable("invalid_body", e.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("malformed_json", e.to_string())
            }
        }
    })
}

/// A store failure as an answer: 503 if the database is unreachable, 500 otherwise.
pub fn store_error(error: crate::users::StoreError) -> ApiError {
    match error {
        crate::users::StoreError::Unavailable(reason) => {
            tracing::warn!(%reason, "store unavailable");
            ApiError::unavailable("store_unavailable", "the store cannot be reached; retry")
        }
        other => ApiError::internal(other),
    }
}
