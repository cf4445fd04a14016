//! `/api/v1/users/…`: register, login, refresh, logout, profile, KYC.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::auth::{self, Claims};
use crate::error::ApiError;
use crate::extract::{AuthUser, ClientAddr, json, store_error};
use crate::ratelimit::Scope;
use crate::time::{now_ms, now_secs, rfc3339};
use crate::users::{RefreshUse, Role, User, tier_name};

const EMAIL_BYTES_MAX: usize = 254;
const PASSWORD_CHARS_MIN: usize = 8;
const PASSWORD_BYTES_MAX: usize = 128;
const NAME_CHARS_MAX: usize = 100;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Register {
    email: String,
    password: String,
    #[serde(default)]
    full_name: String,
}

pub(crate) fn valid_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_ascii_lowercase();
    let ok = email.len() <= EMAIL_BYTES_MAX
        && email.is_ascii()
        && !email
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                && !domain.ends_with('.') && !domain.contains('@'));
    if ok {
        Ok(email)
    } else {
        Err(ApiError::unprocessable(
            "email_invalid",
            "email is not a valid address",
        ))
    }
}

pub(crate) fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.chars().count() > NAME_CHARS_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "full_name_invalid",
            format!("full_name has at most {NAME_CHARS_MAX} characters and no control characters"),
        ));
    }
    Ok(name.to_owned())
}

pub(crate) fn valid_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < PASSWORD_CHARS_MIN || password.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::unprocessable(
            "password_invalid",
            format!("password has {PASSWORD_CHARS_MIN} to {PASSWORD_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn profile(user: &User) -> serde_json::Value {
    json!({
        "id": user.id,
        "email": user.email,
        "full_name": user.full_name,
        "role": user.role.as_str(),
        "tier": tier_name(user.tier),
        "two_factor_enabled": user.totp_enabled,
        "created_at": rfc3339(user.created_at_ms),
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/users/register",
    tag = "users",
    summary = "Create an account",
    request_body(content = Register, content_type = "application/json"),
    responses((status = 201, description = "the profile"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"))
)]
pub async fn register(
    State(state): State<Shared>,
    ClientAddr(addr): ClientAddr,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limiter
        .check(Scope::Address, &addr, paycore_engine::Tier::Unverified)
        .await?;
    let request: Register = json(&body)?;
    let email = valid_email(&request.email)?;
    let full_name = valid_name(&request.full_name)?;
    valid_password(&request.password)?;
    // Never an admin: admins are made by an operator (`paycore admin`), not by an e-mail.
    let role = Role::User;
    let now = now_ms();
    let user = User {
        id: auth::random_uuid().to_string(),
        email,
        password_hash: auth::hash_password(request.password).await?,
        full_name,
        role,
        tier: paycore_engine::Tier::Unverified,
        totp_secret: None,
        totp_enabled: false,
        created_at_ms: now,
        token_generation: 0,
    };
    match state.store.create_user(&user).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(profile(&user)))),
        Err(crate::users::StoreError::Duplicate) => Err(ApiError::conflict(
            "email_taken",
            "an account with this email exists",
        )),
        Err(e) => Err(store_error(e)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

/// An access token and a new refresh token in `family`; `otp_at` when the session just
/// proved a TOTP code.
async fn issue_tokens(
    state: &Shared,
    user: &User,
    family: &str,
    otp_at: Option<i64>,
) -> Result<serde_json::Value, ApiError> {
    let now = now_secs();
    let claims = Claims {
        sub: user.id.clone(),
        email: user.email.clone(),
        role: user.role.as_str().into(),
        tier: tier_name(user.tier).into(),
        iat: now,
        exp: now + state.args.access_token_secs,
        jti: auth::random_uuid().to_string(),
        aud: state.jwt.audience.clone(),
        generation: user.token_generation,
        otp_at,
    };
    let refresh = auth::random_token();
    state
        .store
        .insert_refresh(
            &auth::token_hash(&refresh),
            &user.id,
            family,
            (now + state.args.refresh_token_secs) * 1000,
            now * 1000,
        )
        .await
        .map_err(store_error)?;
    Ok(json!({
        "access_token": state.jwt.encode(&claims),
        "token_type": "Bearer",
        "expires_in": state.args.access_token_secs,
        "refresh_token": refresh,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/login",
    tag = "users",
    summary = "Log in: tokens, or a 2FA challenge",
    request_body(content = Login, content_type = "application/json"),
    responses((status = 200, description = "access and refresh tokens, or {two_factor_required, challenge_token}"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"))
)]
pub async fn login(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: Login = json(&body)?;
    let email = request.email.trim().to_ascii_lowercase();
    if email.len() > EMAIL_BYTES_MAX || request.password.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::unauthorized("wrong email or password"));
    }
    state
        .limiter
        .check(Scope::Login, &email, paycore_engine::Tier::Unverified)
        .await?;
    let user = state
        .store
        .user_by_email(&email)
        .await
        .map_err(store_error)?;
    let hash = user
        .as_ref()
        .map_or_else(|| state.dummy_hash.clone(), |u| u.password_hash.clone());
    let matches = auth::verify_password(request.password, hash).await?;
    let Some(user) = user.filter(|_| matches) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "credentials_invalid",
            "wrong email or password",
        ));
    };
    if user.totp_enabled {
        // Password right; the access token waits for the code (POST /users/verify-2fa).
        let now = now_secs();
        let challenge = Claims {
            sub: user.id.clone(),
            email: user.email.clone(),
            role: user.role.as_str().into(),
            tier: tier_name(user.tier).into(),
            iat: now,
            exp: now + CHALLENGE_SECS,
            jti: auth::random_uuid().to_string(),
            aud: state.challenge_jwt.audience.clone(),
            generation: user.token_generation,
            otp_at: None,
        };
        return Ok(Json(json!({
            "two_factor_required": true,
            "challenge_token": state.challenge_jwt.encode(&challenge),
            "expires_in": CHALLENGE_SECS,
        })));
    }
    let family = auth::random_uuid().to_string();
    Ok(Json(issue_tokens(&state, &user, &family, None).await?))
}

/// Lifetime of a login's 2FA challenge, in seconds.
const CHALLENGE_SECS: i64 = 300;

fn sealer(state: &Shared) -> Result<&crate::totp::SecretBox, ApiError> {
    state.totp.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "two_factor_unconfigured",
            "2FA needs a configured --totp-key",
        )
    })
}

/// Whether `code` is the user's current TOTP code, not used before (a code works once);
/// false without a secret.
pub async fn check_code(state: &Shared, user: &User, code: &str) -> Result<bool, ApiError> {
    let Some(sealed) = user.totp_secret.as_deref() else {
        return Ok(false);
    };
    let secret = sealer(state)?
        .open(sealed)
        .ok_or_else(|| ApiError::internal("a TOTP secret does not open with the configured key"))?;
    let Some(step) = crate::totp::matching_step(&secret, code, now_secs()) else {
        return Ok(false);
    };
    state
        .store
        .use_totp_step(&user.id, step)
        .await
        .map_err(store_error)
}

fn code_invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "two_factor_code_invalid",
        "wrong or expired 2FA code",
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyTwoFactor {
    challenge_token: String,
    code: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/users/verify-2fa",
    tag = "users",
    summary = "Redeem a 2FA login challenge with a TOTP code",
    request_body(content = VerifyTwoFactor, content_type = "application/json"),
    responses((status = 200, description = "access and refresh tokens"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"))
)]
pub async fn verify_two_factor(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: VerifyTwoFactor = json(&body)?;
    let claims = state
        .challenge_jwt
        .decode(&request.challenge_token, now_secs())?;
    // Guessing codes counts against the login limit of the account.
    state
        .limiter
        .check(
            Scope::Login,
            &claims.email,
            paycore_engine::Tier::Unverified,
        )
        .await?;
    let user = state
        .store
        .user_by_id(&claims.sub)
        .await
        .map_err(store_error)?
        .filter(|u| u.totp_enabled)
        .ok_or_else(|| ApiError::unauthorized("no 2FA login pending for this account"))?;
    if !check_code(&state, &user, &request.code).await? {
        return Err(code_invalid());
    }
    let family = auth::random_uuid().to_string();
    Ok(Json(
        issue_tokens(&state, &user, &family, Some(now_secs())).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/2fa/enroll",
    tag = "users",
    summary = "Start TOTP enrolment",
    responses((status = 200, description = "secret (base32) and otpauth URL"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn enroll_two_factor(
    State(state): State<Shared>,
    user: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let sealer = sealer(&state)?;
    let account = current(&state, &user).await?;
    if account.totp_enabled {
        return Err(ApiError::conflict(
            "two_factor_enabled",
            "2FA is enabled already",
        ));
    }
    let secret = auth::random_bytes::<{ crate::totp::SECRET_BYTES }>();
    state
        .store
        .set_totp(user.id(), Some(&sealer.seal(&secret)), false, now_ms())
        .await
        .map_err(store_error)?;
    let encoded = crate::totp::base32(&secret);
    Ok(Json(json!({
        "secret": encoded,
        "otpauth_url": format!(
            "otpauth://totp/paycore:{}?secret={encoded}&issuer=paycore&algorithm=SHA1&digits=6&period=30",
            account.email
        ),
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Code {
    code: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/users/2fa/confirm",
    tag = "users",
    summary = "Confirm TOTP enrolment with a code",
    request_body(content = Code, content_type = "application/json"),
    responses((status = 200, description = "2FA enabled"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn confirm_two_factor(
    State(state): State<Shared>,
    user: AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: Code = json(&body)?;
    sealer(&state)?;
    let account = current(&state, &user).await?;
    if account.totp_enabled {
        return Err(ApiError::conflict(
            "two_factor_enabled",
            "2FA is enabled already",
        ));
    }
    if account.totp_secret.is_none() {
        return Err(ApiError::conflict(
            "two_factor_not_enrolled",
            "enroll first",
        ));
    }
    if !check_code(&state, &account, &request.code).await? {
        return Err(code_invalid());
    }
    state
        .store
        .set_totp(user.id(), account.totp_secret.as_deref(), true, now_ms())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "two_factor_enabled": true })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/users/refresh",
    tag = "users",
    summary = "Rotate a refresh token",
    request_body(content = Refresh, content_type = "application/json"),
    responses((status = 200, description = "new access and refresh tokens"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"))
)]
pub async fn refresh(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: Refresh = json(&body)?;
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "refresh_token_invalid",
            "refresh token is unknown, expired, revoked or already used",
        )
    };
    if request.refresh_token.len() > 256 {
        return Err(invalid());
    }
    let used = state
        .store
        .use_refresh(&auth::token_hash(&request.refresh_token), now_ms())
        .await
        .map_err(store_error)?;
    let RefreshUse::Rotated { user_id, family } = used else {
        return Err(invalid());
    };
    let user = state
        .store
        .user_by_id(&user_id)
        .await
        .map_err(store_error)?
        .ok_or_else(invalid)?;
    // A refreshed token proves no code: it never carries `otp_at`.
    Ok(Json(issue_tokens(&state, &user, &family, None).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/logout",
    tag = "users",
    summary = "Log out everywhere: every access and refresh token of the caller ends",
    responses((status = 204, description = "logged out"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn logout(
    State(state): State<Shared>,
    user: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    state
        .store
        .revoke_jti(&user.claims.jti, user.claims.exp * 1000)
        .await
        .map_err(store_error)?;
    state
        .store
        .revoke_user_refresh_tokens(user.id())
        .await
        .map_err(store_error)?;
    // Every access token of the user ends, on every gateway (they all read the generation).
    let generation = state
        .store
        .bump_token_generation(user.id())
        .await
        .map_err(store_error)?;
    // Streams this gateway holds open for the user end now; other gateways' streams at their
    // next check (see `stream`).
    state.events.publish(crate::events::Notification {
        user: user.engine_user(),
        kind: crate::routes::stream::SESSION_REVOKED,
        wallet: None,
        data: json!({ "jti": user.claims.jti, "generation": generation }),
        position: None,
    });
    Ok(StatusCode::NO_CONTENT)
}

pub async fn current(state: &Shared, user: &AuthUser) -> Result<User, ApiError> {
    state
        .store
        .user_by_id(user.id())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))
}

#[utoipa::path(
    get,
    path = "/api/v1/users/profile",
    tag = "users",
    summary = "The caller's profile",
    responses((status = 200, description = "the profile"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_profile(
    State(state): State<Shared>,
    user: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(profile(&current(&state, &user).await?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ProfileUpdate {
    full_name: String,
}

#[utoipa::path(
    put,
    path = "/api/v1/users/profile",
    tag = "users",
    summary = "Change the caller's name",
    request_body(content = ProfileUpdate, content_type = "application/json"),
    responses((status = 200, description = "the profile"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn put_profile(
    State(state): State<Shared>,
    user: AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: ProfileUpdate = json(&body)?;
    let name = valid_name(&request.full_name)?;
    state
        .store
        .update_full_name(user.id(), &name, now_ms())
        .await
        .map_err(store_error)?;
    Ok(Json(profile(&current(&state, &user).await?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KycSubmit {
    document_type: String,
    document_number: String,
}

const DOCUMENT_TYPES: [&str; 3] = ["passport", "id_card", "driver_license"];

#[utoipa::path(
    post,
    path = "/api/v1/users/kyc",
    tag = "users",
    summary = "Submit KYC",
    request_body(content = KycSubmit, content_type = "application/json"),
    responses((status = 202, description = "pending"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn kyc_submit(
    State(state): State<Shared>,
    user: AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: KycSubmit = json(&body)?;
    if !DOCUMENT_TYPES.contains(&request.document_type.as_str()) {
        return Err(ApiError::unprocessable(
            "document_type_invalid",
            format!("document_type is one of {DOCUMENT_TYPES:?}"),
        ));
    }
    let number = request.document_number.trim();
    if !(4..=32).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::unprocessable(
            "document_number_invalid",
            "document_number has 4 to 32 letters or digits",
        ));
    }
    // Only the last four characters are kept: the document itself goes to the KYC provider.
    let last4 = &number[number.len() - 4..];
    let submitted = state
        .store
        .kyc_submit(user.id(), &request.document_type, last4, now_ms())
        .await
        .map_err(store_error)?;
    if !submitted {
        return Err(ApiError::conflict(
            "kyc_already_approved",
            "KYC is approved already",
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "pending" }))))
}

#[utoipa::path(
    get,
    path = "/api/v1/users/kyc",
    tag = "users",
    summary = "KYC status",
    responses((status = 200, description = "status"), (status = "4XX", description = "problem+json", body = crate::error::Problem, content_type = "application/problem+json"), (status = "5XX", description = "core or store unreachable (503, Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn kyc_status(
    State(state): State<Shared>,
    user: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let kyc = state.store.kyc(user.id()).await.map_err(store_error)?;
    Ok(Json(match kyc {
        None => json!({ "status": "not_submitted" }),
        Some(kyc) => json!({
            "status": kyc.status,
            "document_type": kyc.document_type,
            "document_last4": kyc.document_last4,
            "submitted_at": rfc3339(kyc.submitted_at_ms),
            "reviewed_at": kyc.reviewed_at_ms.map(rfc3339),
            "reason": kyc.reason,
        }),
    }))
}
