//! RFC 9457 problem details: every error the gateway answers is `application/problem+json`
//! with a stable snake_case `code` (the engine's rejection codes for rejected commands).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paycore_engine::Reject;

tokio::task_local! {
    /// The id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

/// An error answer: HTTP status, stable code, human detail, and an optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    /// Extra headers (rate-limit headers on a 429).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, detail)
    }

    /// A dependency (core or store) is unreachable: the client may retry.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        error.retry_after_secs = Some(1);
        error
    }

    /// A bug or an I/O failure on our side; the detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// A command the engine rejected: the engine's code, with a status that says whose fault.
    pub fn rejected(reason: Reject) -> ApiError {
        let status = match reason {
            Reject::WalletNotFound | Reject::HoldNotFound => StatusCode::NOT_FOUND,
            Reject::IdempotencyKeyReusedWithOtherParams
            | Reject::WalletExists
            | Reject::WalletStatusUnchanged
            | Reject::HoldClosed => StatusCode::CONFLICT,
            Reject::TransfersInFlightCapacityExceeded | Reject::IdempotencyCapacityExceeded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, reason.code(), reason.to_string().replace('_', " "))
    }

    /// The problem document (without the request id).
    pub fn body(&self) -> serde_json::Value {
        let request_id = REQUEST_ID.try_with(|id| id.clone()).ok();
        serde_json::json!({
            "type": format!("urn:paycore:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
            "request_id": request_id,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// The stable code of a bare status that axum produced itself (unknown route, wrong method…).
pub fn code_of_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        _ if status.is_server_error() => "internal",
        _ => "error",
    }
}

/// The problem document, for the OpenAPI description (answers are built by [`ApiError::body`]).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:paycore:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable snake_case code, e.g. `insufficient_funds`, `rate_limited`, `token_expired`.
    pub code: String,
    pub detail: String,
    pub request_id: Option<String>,
}
