//! # paycore-gateway: the public REST API in front of the core
//!
//! A stateless axum service: HTTP/1.1 JSON in front, the core's QUIC protocol behind (only
//! through `paycore-client`), its own SQL store (SQLite file by default, PostgreSQL with
//! `--postgres-url`) for users, tokens, KYC, transaction history and HTTP idempotency records.
//! Several gateways may run side by side on one store and one core.
//!
//! What is built (issue 7), under `/api/v1`:
//! - operations: `/health`, `/ready` (core and store reachable), `/metrics` (Prometheus text),
//!   JSON access logs with request ids (`x-request-id`), a body-size cap, RFC 9457
//!   problem+json errors with stable codes for every failure (no input produces a 500);
//! - users: register (argon2id), login (HS256 access token with the seed's claims + `aud`,
//!   rotating refresh tokens with reuse detection), refresh, logout (ends every access and
//!   refresh token of the user: tokens carry the user's token generation, checked in the store
//!   on every request), profile GET/PUT, KYC submit and status;
//! - wallets: open one per currency, list mine, get one (balance, available, frozen);
//! - transactions: P2P send with a required `Idempotency-Key` (same key + same body replays,
//!   another body 422, still running 409), get by id, history with cursor pagination;
//! - deposits and withdrawals: provider webhooks signed with HMAC-SHA256 over
//!   `timestamp.body` with a tolerance window (`deposit.succeeded`, `withdrawal.paid`,
//!   `withdrawal.failed`), withdrawal requests that place a hold;
//! - admin: freeze / unfreeze a wallet, approve / reject KYC (sets the user's tier in the core),
//!   settle / cancel a held withdrawal (as the provider's webhook would); admins are made only
//!   by `paycore admin` ([`admin_cli`]) and act only from a session logged in with a 2FA code;
//! - rate limits (per tier per second, per endpoint per minute), 429 with `Retry-After` and
//!   `RateLimit-*` headers; in process, or shared by all gateways through Redis
//!   (`--redis-url`);
//! - 2FA (RFC 6238 TOTP, secrets sealed with AES-256-GCM under `--totp-key`, each code usable
//!   once): enroll, confirm, then required at login (`verify-2fa` with the challenge token)
//!   and, one step-up rule, for sends and withdrawals above `--two-factor-above` (per
//!   currency);
//! - real time: WebSocket `/api/v1/ws` (`subscribe.wallet`, `subscribe.transactions`) and
//!   SSE `/api/v1/stream/notifications`, fed by the core's event subscription (see
//!   [`events`]); a user only receives events about their own wallets; delivery is at least
//!   once, in order per wallet, with a stable `event_id` and a resume cursor (`?from=` /
//!   `Last-Event-ID`) that replays what a stream missed;
//! - the link to the core ([`core`]): `--core A,B` (a primary and its standbys), kept alive,
//!   reconnected and moved to a new primary in the background; a request waits a bounded time
//!   (`--core-wait-ms`) and resends with its idempotency key, else 503 with `Retry-After`;
//! - an OpenAPI 3.1 document at `/api/v1/openapi.json`, generated (utoipa) from the same
//!   attributes that register the REST routes, so the two cannot drift (the WebSocket and SSE
//!   routes are described in `docs/design.md` §18, not in it).
//!
//! What it is **not**: a second ledger. Balances and movements live in the core; the
//! gateway's `transactions` table is a per-user index for history and lookups by id, written
//! after the core applied the command. Known limits are listed at the end of `docs/design.md`
//! §18 (the event fan-out checks every open stream per event); the threat model, the step-up
//! table and the security choices are in `docs/security.md`.
//!
//! A user can only ever touch wallets whose owner in the core is their own user id: every
//! wallet route asks the core for the wallet and compares its owner (a wallet of someone else
//! answers 404, like a missing one).

#![forbid(unsafe_code)]

pub mod admin_cli;
pub mod auth;
pub mod core;
pub mod error;
pub mod events;
mod extract;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod redis;
mod routes;
pub mod time;
pub mod totp;
pub mod users;

pub use routes::webhooks::sign as sign_webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paycore_client::ClientConfig;
use paycore_engine::{CurrencyCode, Op, Outcome, Reject};

use crate::error::{ApiError, REQUEST_ID};
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Limits};
use crate::users::Store;

/// Settings of `paycore gateway` (each also read from a `PAYCORE_GATEWAY_…` variable).
#[derive(Clone, clap::Args)]
pub struct GatewayArgs {
    /// The core's QUIC addresses: the primary and its standbys, comma-separated (the gateway
    /// follows whichever says it is the primary, e.g. after `paycore promote`).
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_CORE",
        default_value = "127.0.0.1:7400",
        value_delimiter = ',',
        num_args = 1..
    )]
    pub core: Vec<SocketAddr>,
    /// How often the idle QUIC connection to the core is kept alive (PING), in milliseconds;
    /// at most a third of --core-idle-timeout-ms.
    #[arg(long, env = "PAYCORE_GATEWAY_CORE_KEEP_ALIVE_MS", default_value_t = paycore_client::KEEP_ALIVE_MS_DEFAULT)]
    pub core_keep_alive_ms: u64,
    /// The connection to the core counts as lost after this long without hearing from it, in
    /// milliseconds (QUIC takes the smaller of this and the node's --quic-idle-timeout-ms).
    #[arg(long, env = "PAYCORE_GATEWAY_CORE_IDLE_TIMEOUT_MS", default_value_t = paycore_client::IDLE_TIMEOUT_MS_DEFAULT)]
    pub core_idle_timeout_ms: u64,
    /// How long a request waits for a primary (reconnecting, or after a failover) before it
    /// is answered 503 `core_unavailable` with Retry-After, in milliseconds.
    #[arg(long, env = "PAYCORE_GATEWAY_CORE_WAIT_MS", default_value_t = 5_000)]
    pub core_wait_ms: u64,
    /// Trust for the core's certificate: a DER file, or its SHA-256 fingerprint (64 hex digits);
    /// comma-separated, one per node, when the nodes of --core have certificates of their own.
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_TRUST",
        default_value = "./paycore-data/tls/cert.der"
    )]
    pub trust: String,
    /// HTTP listen address.
    #[arg(long, env = "PAYCORE_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// SQLite file of the gateway's store (used unless --postgres-url is given).
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_SQLITE",
        default_value = "./paycore-data/gateway.sqlite"
    )]
    pub sqlite: PathBuf,
    /// PostgreSQL URL of the gateway's store, e.g. postgres://postgres@127.0.0.1:5432/test.
    #[arg(long, env = "DATABASE_URL")]
    pub postgres_url: Option<String>,
    /// PostgreSQL schema to create and use (default: the connection's search path).
    #[arg(long, env = "PAYCORE_GATEWAY_POSTGRES_SCHEMA")]
    pub postgres_schema: Option<String>,
    /// HMAC key of access tokens; every gateway of a deployment needs the same one. Without
    /// it a random key is drawn at start (tokens die with the process).
    #[arg(long, env = "PAYCORE_GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Audience (`aud`) put in and required of access tokens.
    #[arg(long, env = "PAYCORE_GATEWAY_JWT_AUDIENCE", default_value = "paycore")]
    pub jwt_audience: String,
    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "PAYCORE_GATEWAY_ACCESS_TOKEN_SECS", default_value_t = 900)]
    pub access_token_secs: i64,
    /// Lifetime of a refresh token, in seconds.
    #[arg(long, env = "PAYCORE_GATEWAY_REFRESH_TOKEN_SECS", default_value_t = 30 * 86_400)]
    pub refresh_token_secs: i64,
    /// HMAC-SHA256 key of provider webhooks. Without it webhooks are refused.
    #[arg(long, env = "PAYCORE_GATEWAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// How far a webhook's timestamp may be from now, in seconds.
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_WEBHOOK_TOLERANCE_SECS",
        default_value_t = 300
    )]
    pub webhook_tolerance_secs: i64,
    /// Largest request body, in bytes.
    #[arg(long, env = "PAYCORE_GATEWAY_BODY_BYTES_MAX", default_value_t = 64 * 1024)]
    pub body_bytes_max: usize,
    /// Currencies registered in the core at start, CODE:SCALE, comma-separated.
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_CURRENCIES",
        default_value = "USD:2,EUR:2,GBP:2,JPY:0,BTC:8,ETH:18"
    )]
    pub currencies: String,
    /// Removed: it made whoever registered first with one of these e-mails an admin. Admins
    /// are created with `paycore admin create`; a gateway given this refuses to start.
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_ADMIN_EMAILS",
        default_value = "",
        hide = true
    )]
    pub admin_emails: String,
    /// Redis shared by every gateway for rate limits, e.g. redis://127.0.0.1:6379 (without
    /// it each gateway counts on its own).
    #[arg(long, env = "PAYCORE_GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the rate-limit keys in Redis.
    #[arg(
        long,
        env = "PAYCORE_GATEWAY_REDIS_PREFIX",
        default_value = "paycore:rl:"
    )]
    pub redis_prefix: String,
    /// AES-256-GCM key sealing TOTP secrets at rest, 64 hex digits. Without it 2FA cannot
    /// be enrolled (its routes answer 503 `two_factor_unconfigured`).
    #[arg(long, env = "PAYCORE_GATEWAY_TOTP_KEY", hide_env_values = true)]
    pub totp_key: Option<String>,
    /// Sends and withdrawals (every route that takes money out of a wallet) above these
    /// amounts need a 2FA code (header `X-2FA-Code`); users without 2FA cannot make them. `CODE:AMOUNT` per currency and/or a bare amount for the others, e.g.
    /// `USD:1000,BTC:0.05,1000`. Applies when --totp-key is set.
    #[arg(long, env = "PAYCORE_GATEWAY_TWO_FACTOR_ABOVE", default_value = "1000")]
    pub two_factor_above: String,
    /// `seed` (the seed's limits) or `off` (benchmarks).
    #[arg(long, env = "PAYCORE_GATEWAY_RATE_LIMITS", default_value = "seed")]
    pub rate_limits: String,
}

/// Secrets shown as set or not, never their value (the state, and so these, may be logged).
impl std::fmt::Debug for GatewayArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |value: &Option<String>| if value.is_some() { "<set>" } else { "<unset>" };
        let url = |value: &Option<String>| {
            // postgres://user:password@host/db: keep what follows the credentials.
            value.as_deref().map(|u| {
                u.rsplit_once('@')
                    .map_or(u.to_owned(), |(_, host)| format!("…@{host}"))
            })
        };
        f.debug_struct("GatewayArgs")
            .field("core", &self.core)
            .field("core_keep_alive_ms", &self.core_keep_alive_ms)
            .field("core_idle_timeout_ms", &self.core_idle_timeout_ms)
            .field("core_wait_ms", &self.core_wait_ms)
            .field("trust", &self.trust)
            .field("listen", &self.listen)
            .field("sqlite", &self.sqlite)
            .field("postgres_url", &url(&self.postgres_url))
            .field("postgres_schema", &self.postgres_schema)
            .field("jwt_secret", &secret(&self.jwt_secret))
            .field("jwt_audience", &self.jwt_audience)
            .field("access_token_secs", &self.access_token_secs)
            .field("refresh_token_secs", &self.refresh_token_secs)
            .field("webhook_secret", &secret(&self.webhook_secret))
            .field("webhook_tolerance_secs", &self.webhook_tolerance_secs)
            .field("body_bytes_max", &self.body_bytes_max)
            .field("currencies", &self.currencies)
            .field("admin_emails", &self.admin_emails)
            .field("rate_limits", &self.rate_limits)
            .field("redis_url", &url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("totp_key", &secret(&self.totp_key))
            .field("two_factor_above", &self.two_factor_above)
            .finish()
    }
}

impl GatewayArgs {
    /// Every default, talking to `core` trusting `trust`, listening on `listen`.
    pub fn defaults(core: SocketAddr, trust: String, listen: SocketAddr) -> GatewayArgs {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: GatewayArgs,
        }
        // The defaults above all parse; only an environment variable can be invalid.
        let mut args = Wrapper::try_parse_from(["gateway"])
            .map(|w| w.args)
            .unwrap_or_else(|_| GatewayArgs {
                core: vec![core],
                core_keep_alive_ms: paycore_client::KEEP_ALIVE_MS_DEFAULT,
                core_idle_timeout_ms: paycore_client::IDLE_TIMEOUT_MS_DEFAULT,
                core_wait_ms: 5_000,
                trust: trust.clone(),
                listen,
                sqlite: "./paycore-data/gateway.sqlite".into(),
                postgres_url: None,
                postgres_schema: None,
                jwt_secret: None,
                jwt_audience: "paycore".into(),
                access_token_secs: 900,
                refresh_token_secs: 30 * 86_400,
                webhook_secret: None,
                webhook_tolerance_secs: 300,
                body_bytes_max: 64 * 1024,
                currencies: "USD:2,EUR:2,GBP:2,JPY:0,BTC:8,ETH:18".into(),
                admin_emails: String::new(),
                rate_limits: "seed".into(),
                totp_key: None,
                redis_url: None,
                redis_prefix: "paycore:rl:".into(),
                two_factor_above: "1000".into(),
            });
        args.core = vec![core];
        args.trust = trust;
        args.listen = listen;
        args
    }
}

/// Everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    pub args: GatewayArgs,
    pub store: Store,
    pub core: core::Core,
    pub jwt: auth::Jwt,
    /// Signs the short-lived challenge of a login that still needs its 2FA code.
    pub challenge_jwt: auth::Jwt,
    pub totp: Option<totp::SecretBox>,
    pub two_factor_above: totp::Thresholds,
    /// Set once the configured currencies are registered in the core (`/ready` waits for it).
    pub currencies_registered: std::sync::atomic::AtomicBool,
    /// Real-time notifications for WebSocket and SSE connections.
    pub events: events::Hub,
    pub metrics: Arc<Metrics>,
    pub limiter: Limiter,
    pub webhook_key: Option<ring::hmac::Key>,
    /// Currencies the gateway registered: code -> scale.
    pub currencies: BTreeMap<CurrencyCode, u8>,
    /// A valid argon2id hash of nothing in particular: login verifies against it when the
    /// e-mail is unknown, so that unknown and known e-mails take the same time.
    pub dummy_hash: String,
}

pub type Shared = Arc<AppState>;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Shared,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Stops accepting, lets requests in flight finish, and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

fn parse_currencies(text: &str) -> Result<BTreeMap<CurrencyCode, u8>, String> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (code, scale) = item
            .split_once(':')
            .ok_or_else(|| format!("currency {item:?} is not CODE:SCALE"))?;
        let code = CurrencyCode::parse(code).map_err(|e| format!("currency {code:?}: {e}"))?;
        let scale: u8 = scale
            .parse()
            .ok()
            .filter(|s| *s <= paycore_engine::currency::CURRENCY_SCALE_MAX)
            .ok_or_else(|| format!("currency {item:?}: scale must be 0..=18"))?;
        out.insert(code, scale);
    }
    Ok(out)
}

fn client_config(args: &GatewayArgs) -> ClientConfig {
    let first = args
        .core
        .first()
        .copied()
        .unwrap_or(([127, 0, 0, 1], 7400).into());
    // `--trust` lists one certificate per node when the nodes have their own: all files, or
    // all fingerprints.
    let items: Vec<&str> = args
        .trust
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut config = ClientConfig::new(first, PathBuf::from(items.first().unwrap_or(&"")));
    config.trust_sha256 = items
        .first()
        .and_then(|t| paycore_client::parse_fingerprint(t));
    for item in items.iter().skip(1) {
        match paycore_client::parse_fingerprint(item) {
            Some(sha256) => config.also_trust_sha256.push(sha256),
            None => config.also_trust_der_paths.push(PathBuf::from(item)),
        }
    }
    config.request_timeout_ms = 5_000;
    config.connect_timeout_ms = 2_000;
    config.keep_alive_ms = args.core_keep_alive_ms;
    config.idle_timeout_ms = args.core_idle_timeout_ms;
    config
}

/// Builds the state (store opened, schema created) without serving.
pub async fn state(args: GatewayArgs) -> Result<Shared, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !args.admin_emails.trim().is_empty() {
        return Err(
            "--admin-emails (PAYCORE_GATEWAY_ADMIN_EMAILS) is no longer supported: \
                    admins are created with `paycore admin create` (docs/security.md)"
                .into(),
        );
    }
    let store = match &args.postgres_url {
        Some(url) => Store::postgres(url, args.postgres_schema.as_deref()).await,
        None => Store::sqlite(&args.sqlite).await,
    }
    .map_err(|e| format!("gateway store: {e}"))?;
    let limits = match args.rate_limits.as_str() {
        "seed" => Some(Limits::SEED),
        "off" => None,
        other => return Err(format!("--rate-limits {other:?}: expected seed or off")),
    };
    let secret = match &args.jwt_secret {
        Some(secret) if secret.len() >= 32 => secret.as_bytes().to_vec(),
        Some(_) => return Err("--jwt-secret must be at least 32 bytes".into()),
        None => {
            tracing::warn!("no --jwt-secret: a random key is used; tokens die with this process");
            auth::random_bytes::<32>().to_vec()
        }
    };
    let metrics = Arc::new(Metrics::default());
    let currencies = parse_currencies(&args.currencies)?;
    let two_factor_above = totp::Thresholds::parse(&args.two_factor_above)?;
    let dummy_hash = auth::hash_password("not a password".into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(AppState {
        store,
        core: core::Core::new(
            client_config(&args),
            args.core.clone(),
            Duration::from_millis(args.core_wait_ms),
            metrics.clone(),
        )?,
        jwt: auth::Jwt::new(&secret, &args.jwt_audience)?,
        challenge_jwt: auth::Jwt::new(&secret, &format!("{}:2fa", args.jwt_audience))?,
        totp: args
            .totp_key
            .as_deref()
            .map(totp::SecretBox::from_hex)
            .transpose()?,
        metrics,
        limiter: Limiter::with_redis(
            limits,
            args.redis_url
                .as_deref()
                .map(|url| redis::Redis::new(url, &args.redis_prefix))
                .transpose()?,
        ),
        webhook_key: args
            .webhook_secret
            .as_ref()
            .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())),
        currencies,
        dummy_hash,
        events: events::Hub::default(),
        two_factor_above,
        currencies_registered: std::sync::atomic::AtomicBool::new(false),
        args,
    }))
}

/// Registers the configured currencies in the core (an existing one is fine); retried in the
/// background until the core answers.
async fn register_currencies(state: Shared) {
    for (code, scale) in state.currencies.clone() {
        let key = format!("gw:currency:{}:{scale}", code.as_str());
        loop {
            match state
                .core
                .submit(&key, Op::RegisterCurrency { code, scale })
                .await
            {
                Ok(Outcome::Ok(_)) | Ok(Outcome::Rejected(Reject::CurrencyExists)) => break,
                Ok(other) => {
                    tracing::error!(currency = code.as_str(), ?other, "currency not registered");
                    break;
                }
                Err(error) => {
                    // The core link logs the outage once.
                    tracing::debug!(%error, "core not reachable yet; registering currencies later");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    state
        .currencies_registered
        .store(true, std::sync::atomic::Ordering::Release);
}

/// Every 10 minutes, deletes store rows that no longer matter (see `Store::sweep`).
async fn sweep(state: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(600)).await;
        match state.store.sweep(time::now_ms()).await {
            Ok(deleted) => tracing::debug!(deleted, "store swept"),
            Err(error) => tracing::warn!(%error, "store sweep failed"),
        }
    }
}

/// The whole HTTP application.
pub fn router(state: Shared) -> Router {
    routes::routes()
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(DefaultBodyLimit::max(state.args.body_bytes_max))
        .layer(axum::middleware::from_fn(json_content_type))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves `state` on its listen address until `stop`.
pub async fn start_with(state: Shared) -> Result<Gateway, String> {
    let listener = tokio::net::TcpListener::bind(state.args.listen)
        .await
        .map_err(|e| format!("{}: {e}", state.args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let listener = listener::ProblemListener {
        tcp: listener,
        metrics: state.metrics.clone(),
    };
    tokio::spawn(register_currencies(state.clone()));
    tokio::spawn(events::follow(state.clone()));
    tokio::spawn(sweep(state.clone()));
    let app = router(state.clone()).into_make_service_with_connect_info::<listener::PeerAddr>();
    let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        if let Err(error) = serving.await {
            tracing::error!(%error, "gateway server failed");
        }
    });
    tracing::info!(%addr, store = state.store.engine_name(), "gateway listening");
    Ok(Gateway {
        addr,
        state,
        shutdown,
        task,
    })
}

/// Opens the store and serves (inside a tokio runtime).
pub async fn start(args: GatewayArgs) -> Result<Gateway, String> {
    start_with(state(args).await?).await
}

/// The JSON log subscriber of `paycore gateway`.
fn json_logs() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .finish()
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let dispatch = tracing::Dispatch::new(json_logs());
    let for_threads = dispatch.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paycore-gateway")
        .on_thread_start(move || {
            // The process may have a global subscriber already (the paycore binary's plain
            // one): the gateway's threads log JSON regardless. The guard lives as long as the
            // thread.
            std::mem::forget(tracing::dispatcher::set_default(&for_threads));
        })
        .build()
        .map_err(|e| e.to_string())
}

/// `paycore gateway`: serve until SIGINT or SIGTERM.
pub fn run(args: GatewayArgs) -> Result<(), String> {
    let runtime = runtime()?;
    let _logs = tracing::dispatcher::set_default(&tracing::Dispatch::new(json_logs()));
    runtime.block_on(async {
        let gateway = start(args).await?;
        println!(
            "paycore gateway: http://{} (core {}, store {})",
            gateway.addr,
            gateway.state.core.servers(),
            gateway.state.store.engine_name()
        );
        wait_for_signal().await;
        gateway.stop().await;
        Ok(())
    })
}

/// A gateway serving on its own thread (see [`spawn_gateway`]).
#[derive(Debug)]
pub struct SpawnedGateway {
    pub addr: SocketAddr,
    pub thread: std::thread::JoinHandle<()>,
    /// Dropping or sending on it stops the gateway (its runtime ends with its thread).
    stop: tokio::sync::oneshot::Sender<()>,
}

impl SpawnedGateway {
    /// Stops the gateway and waits for its thread: `paycore up` does this before its node
    /// stops, so the gateway does not spend the node's shutdown reconnecting to it. Requests
    /// still in flight are cut off (the local embedded set-up; a deployed gateway is its own
    /// process, `paycore gateway`).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Starts a gateway on its own thread and runtime (for `paycore up`, whose node owns the main
/// thread's runtime); returns once it listens, or the reason it could not. It serves until
/// [`SpawnedGateway::stop`] (or until the process exits).
pub fn spawn_gateway(args: GatewayArgs) -> Result<SpawnedGateway, String> {
    let (ready, listening) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("paycore-gateway".into())
        .spawn(move || {
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                match start(args).await {
                    Ok(gateway) => {
                        let _ = ready.send(Ok(gateway.addr));
                        // Until `stop` (or its sender is dropped); then the runtime ends.
                        let _ = stopped.await;
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let addr = listening
        .recv()
        .map_err(|_| "gateway thread ended".to_string())??;
    Ok(SpawnedGateway { addr, thread, stop })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A request with a body must say it is JSON (`Content-Type: application/json`, parameters
/// such as `charset` allowed): else 415 `unsupported_media_type`, before any handler reads it.
/// Requests without a body (GET, logout, admin actions) need no content type.
async fn json_content_type(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !is_json {
        return ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a request body must be JSON: Content-Type: application/json",
        )
        .into_response();
    }
    next.run(request).await
}

/// Longest request id accepted from a client.
const REQUEST_ID_BYTES_MAX: usize = 64;

/// Request id, access log, metrics, and problem+json for the errors axum answers itself.
async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= REQUEST_ID_BYTES_MAX
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| auth::hex(&auth::random_bytes::<8>()), str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let handled = std::panic::AssertUnwindSafe(REQUEST_ID.scope(id.clone(), next.run(request)));
    let mut response = match futures_util::FutureExt::catch_unwind(handled).await {
        Ok(response) => response,
        // A bug: answer 500 with a problem (and log it) instead of dropping the connection.
        Err(_) => {
            REQUEST_ID
                .scope(id.clone(), async {
                    ApiError::internal(format!("handler panicked on {method} {route}"))
                        .into_response()
                })
                .await
        }
    };
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if (status.is_client_error() || status.is_server_error()) && !is_problem {
        // A rejection axum produced (wrong method, body too large…): same shape as ours.
        let detail = status.canonical_reason().unwrap_or("error");
        response = REQUEST_ID
            .scope(id.clone(), async {
                ApiError::new(status, error::code_of_status(status), detail).into_response()
            })
            .await;
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let seconds = started.elapsed().as_secs_f64();
    state
        .metrics
        .request(method.as_str(), &route, status.as_u16(), seconds);
    if status == axum::http::StatusCode::TOO_MANY_REQUESTS {
        state.metrics.count(
            "paycore_gateway_rate_limited_total",
            format!("route=\"{route}\""),
        );
    }
    tracing::info!(
        target: "paycore_gateway::access",
        request_id = %id,
        method = %method,
        route = %route,
        status = status.as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let mut args = GatewayArgs::defaults(
            "127.0.0.1:7400".parse().expect("addr"),
            "cert.der".into(),
            "127.0.0.1:8080".parse().expect("addr"),
        );
        args.jwt_secret = Some("jwt-secret-value".into());
        args.webhook_secret = Some("webhook-secret-value".into());
        args.totp_key = Some("ab".repeat(32));
        args.postgres_url = Some("postgres://user:pw-value@db:5432/x".into());
        let text = format!("{args:?}");
        for secret in [
            "jwt-secret-value",
            "webhook-secret-value",
            &"ab".repeat(32),
            "pw-value",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("db:5432/x"), "{text}");
    }
}
