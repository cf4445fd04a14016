//! Gateway: the stateless public REST API (axum) in front of the core's QUIC protocol:
//! accounts and auth, rate limits, idempotency at the HTTP edge, WebSocket and SSE streams.
//!
//! **Not built yet** (issue 7).

#![forbid(unsafe_code)]
