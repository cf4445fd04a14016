//! Authentication: argon2id password hashes, HS256 access tokens with the seed's claims,
//! opaque rotating refresh tokens, random ids.
//!
//! Tokens are signed and checked by `jsonwebtoken` (the well-kept implementation, with the
//! pure-Rust backend): the accepted algorithm list is exactly `[HS256]`, so `alg: none` or an
//! RSA/HMAC confusion is refused by the library before the claims are read; the audience is
//! required and checked. Expiry is checked here against the caller's clock (`now`), which
//! keeps it testable and identical on every gateway.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Longest access token accepted, in bytes (ours are about 400).
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Clock skew tolerated on `exp` and `iat`, in seconds.
const LEEWAY_SECS: i64 = 30;

/// The seed's claims, plus the audience.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user's id (a UUID).
    pub sub: String,
    pub email: String,
    pub role: String,
    pub tier: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub aud: String,
    /// The user's token generation when issued: a token of an older generation is refused
    /// (logout, a stolen refresh token and a role taken away bump it; see `extract`). A token
    /// from before generations counts as generation 0.
    #[serde(rename = "gen", default)]
    pub generation: i64,
    /// When the session proved a TOTP code (unix s): set only by `verify-2fa`, never by a
    /// refresh. Admin routes need it (see `extract::AdminUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_at: Option<i64>,
}

/// Signs and checks tokens with one HMAC key.
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub audience: String,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Jwt")
            .field("audience", &self.audience)
            .finish()
    }
}

impl Jwt {
    pub fn new(secret: &[u8], audience: &str) -> Result<Jwt, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        // Expiry and issue time are checked in `decode` against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Ok(Jwt {
            encoding: EncodingKey::from_secret(secret)
                .map_err(|e| format!("JWT signing key: {e}"))?,
            decoding: DecodingKey::from_secret(secret)
                .map_err(|e| format!("JWT verification key: {e}"))?,
            validation,
            audience: audience.to_owned(),
        })
    }

    pub fn encode(&self, claims: &Claims) -> String {
        // HS256 over a struct of strings and integers does not fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The claims of a valid token at `now` (unix seconds); `unauthorized` otherwise.
    pub fn decode(&self, token: &str, now: i64) -> Result<Claims, ApiError> {
        let invalid = |why: &str| {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_invalid",
                format!("access token {why}"),
            )
        };
        if token.len() > TOKEN_BYTES_MAX {
            return Err(invalid("is too long"));
        }
        let claims = match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => data.claims,
            Err(error) => {
                return Err(invalid(match error.kind() {
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "uses an algorithm other than HS256"
                    }
                    ErrorKind::InvalidSignature => "has a bad signature",
                    ErrorKind::InvalidAudience => "is for another audience",
                    ErrorKind::MissingRequiredClaim(_) => "lacks a required claim",
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                        "is not a readable JWS compact token"
                    }
                    _ => "is invalid",
                }));
            }
        };
        if claims.aud != self.audience {
            return Err(invalid("is for another audience"));
        }
        if claims.exp + LEEWAY_SECS <= now {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_expired",
                "access token expired",
            ));
        }
        if claims.iat > now + LEEWAY_SECS {
            return Err(invalid("is issued in the future"));
        }
        Ok(claims)
    }
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system RNG fails only if the OS cannot provide randomness; nothing safe is left then.
    #[expect(clippy::expect_used, reason = "no randomness means no security: stop")]
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("system random number generator");
    out
}

/// A random version-4 UUID.
pub fn random_uuid() -> uuid::Uuid {
    let mut bytes = random_bytes::<16>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes)
}

/// A random opaque token (256 bits, base64url).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// SHA-256 of a token, hex: what the store keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Argon2id (the crate's defaults: 19 MiB, 2 passes) on the blocking pool.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = random_bytes::<16>();
        argon2::Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Whether `password` matches the stored hash (on the blocking pool).
pub async fn verify_password(password: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "u".into(),
            email: "a@b.c".into(),
            role: "user".into(),
            tier: "unverified".into(),
            iat: 1000,
            exp,
            jti: "j".into(),
            aud: "paycore".into(),
            generation: 0,
            otp_at: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let jwt = Jwt::new(b"secret", "paycore").expect("key");
        let token = jwt.encode(&claims(2000));
        assert_eq!(jwt.decode(&token, 1500).ok(), Some(claims(2000)));
        assert_eq!(
            jwt.decode(&token, 5000).err().map(|e| e.code),
            Some("token_expired")
        );
        let other = Jwt::new(b"other", "paycore").expect("key");
        assert!(other.decode(&token, 1500).is_err());
        let wrong_audience = Jwt::new(b"secret", "elsewhere").expect("key");
        assert!(wrong_audience.decode(&token, 1500).is_err());
        // alg: none with the signature stripped.
        let payload = token.split('.').nth(1).unwrap_or_default();
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#)
        );
        assert!(jwt.decode(&none, 1500).is_err());
        assert!(jwt.decode("a.b", 1500).is_err());
        assert!(jwt.decode("", 1500).is_err());
    }
}
