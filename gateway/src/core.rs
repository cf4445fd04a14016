//! The gateway's link to the core: a [`paycore_client::link::Link`] to the primary among
//! `--core A,B,…` (one QUIC connection, kept alive, reconnected and moved to a new primary in
//! the background), and the request policy on top of it.
//!
//! A request waits for a primary at most `--core-wait-ms` in all: a command whose connection
//! was lost, or that a standby or fenced node refused, is sent again **with the same
//! idempotency key** (the engine answers a key it has seen with its first outcome, so a resend
//! never applies twice) until it has an outcome or the time is up; then the answer is 503
//! `core_unavailable` with `Retry-After`, never a 500.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paycore_client::link::Link;
use paycore_client::{Client, ClientConfig, ClientError};
use paycore_engine::{Command, IdempotencyKey, Op, Outcome};
use paycore_protocol::{CommandResult, Query, QueryResult};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Pause before a command or query is sent again after a lost connection or a refusal by a
/// node that is not the primary, in milliseconds (the link looks for the primary meanwhile).
const RESEND_PAUSE_MS: u64 = 25;
/// An attempt still unanswered after this long makes the link check which node is the
/// primary, in milliseconds.
const SLOW_ATTEMPT_MS: u64 = 300;

#[derive(Debug)]
pub struct Core {
    link: Link,
    /// How long one request waits for a primary in all.
    wait: Duration,
    metrics: Arc<Metrics>,
}

fn unavailable(error: &ClientError) -> ApiError {
    // The link logs its outages once; a request that gave up is not news.
    tracing::debug!(%error, "core request failed");
    ApiError::unavailable(
        "core_unavailable",
        "the payment core cannot be reached; retry",
    )
}

impl Core {
    /// Starts the link to `servers` (needs a tokio runtime). Fails only on settings that can
    /// never work (no address, keep-alive not inside the idle timeout).
    pub fn new(
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Core, String> {
        let link = Link::start(config, servers).map_err(|e| format!("--core: {e}"))?;
        Ok(Core {
            link,
            wait,
            metrics,
        })
    }

    /// The core's addresses, comma-separated.
    pub fn servers(&self) -> String {
        self.link.servers()
    }

    /// A connected client (for subscriptions), waiting up to the request wait.
    pub async fn client(&self) -> Result<Arc<Client>, ApiError> {
        self.link.any(self.wait).await.map_err(|e| unavailable(&e))
    }

    /// The link, for callers that wait on their own terms (the event follower).
    pub fn link(&self) -> &Link {
        &self.link
    }

    fn timed(&self, started: Instant, what: &str) {
        self.metrics.observe(
            "paycore_gateway_core_round_trip_seconds",
            format!("kind=\"{what}\""),
            started.elapsed().as_secs_f64(),
        );
    }

    /// One attempt on `client`, within `left`. An attempt slower than [`SLOW_ATTEMPT_MS`]
    /// makes the link look for the primary (a node killed keeps its connection until the
    /// idle timeout); if the link moves to another node meanwhile, the attempt is abandoned
    /// (the caller sends it again there, with the same key).
    async fn attempt<T>(
        &self,
        client: &Arc<Client>,
        left: Duration,
        request: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let request = tokio::time::timeout(left, request);
        tokio::pin!(request);
        let slow = tokio::time::sleep(Duration::from_millis(SLOW_ATTEMPT_MS));
        tokio::pin!(slow);
        let mut rechecked = false;
        loop {
            tokio::select! {
                result = &mut request => {
                    return result.unwrap_or(Err(ClientError::Timeout(left.as_millis() as u64)));
                }
                () = &mut slow, if !rechecked => {
                    rechecked = true;
                    self.link.recheck();
                }
                () = self.link.moved_from(client), if rechecked => {
                    return Err(ClientError::Connection("the core link moved to another node".into()));
                }
            }
        }
    }

    /// Submits one client command under `key`; its outcome. Resent with the same key after a
    /// lost connection or a failover, within the request wait (see the module docs).
    pub async fn submit(&self, key: &str, op: Op) -> Result<Outcome, ApiError> {
        let key = IdempotencyKey::new(key.as_bytes())
            .map_err(|_| ApiError::bad_request("idempotency_key_invalid", "key too long"))?;
        let command = Command::Client { key, op };
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let client = self.link.primary(left).await.map_err(|e| unavailable(&e))?;
            let started = Instant::now();
            // Bounded by the request's wait in all: a node that stopped answering (killed,
            // its connection not yet timed out) costs the rest of it, not the client timeout.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(RESEND_PAUSE_MS));
            let result = self
                .attempt(&client, left, client.submit(vec![command.clone()]))
                .await;
            self.timed(started, "submit");
            let retry = match result {
                Ok(results) => match results.first() {
                    Some(CommandResult::Outcome(outcome)) => return Ok(*outcome),
                    // A standby, or a primary that lost its standby's acknowledgements or
                    // was fenced: maybe another node is the primary now.
                    Some(CommandResult::ShardUnavailable) => ClientError::Node {
                        code: paycore_protocol::ErrorCode::SHARD_UNAVAILABLE.0,
                        message: "shard unavailable".into(),
                    },
                    _ => {
                        return Err(ApiError::unavailable(
                            "core_busy",
                            "the payment core is busy; retry with the same Idempotency-Key",
                        ));
                    }
                },
                Err(error) if error.is_link_failure() || error.is_not_primary() => error,
                Err(error) => return Err(unavailable(&error)),
            };
            self.link.recheck();
            if Instant::now() + Duration::from_millis(RESEND_PAUSE_MS) >= deadline {
                return Err(unavailable(&retry));
            }
            tokio::time::sleep(Duration::from_millis(RESEND_PAUSE_MS)).await;
        }
    }

    /// A query, sent again after a lost connection or `not_primary` within the request wait.
    pub async fn query(&self, query: Query) -> Result<QueryResult, ApiError> {
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let client = self.link.any(left).await.map_err(|e| unavailable(&e))?;
            let started = Instant::now();
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(RESEND_PAUSE_MS));
            let result = self
                .attempt(&client, left, client.query(query.clone()))
                .await;
            self.timed(started, "query");
            match result {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_link_failure() || error.is_not_primary() => {
                    self.link.recheck();
                    if Instant::now() + Duration::from_millis(RESEND_PAUSE_MS) >= deadline {
                        return Err(unavailable(&error));
                    }
                    tokio::time::sleep(Duration::from_millis(RESEND_PAUSE_MS)).await;
                }
                Err(error) => return Err(unavailable(&error)),
            }
        }
    }

    /// Whether the core answers a status query within `timeout` now: false only while no
    /// node is connected or the connected one does not answer (no reconnection is waited for).
    pub async fn ready(&self, timeout: Duration) -> bool {
        let Some(client) = self.link.current() else {
            return false;
        };
        matches!(
            tokio::time::timeout(timeout, client.query(Query::Status)).await,
            Ok(Ok(QueryResult::Status(_)))
        )
    }
}
