//! The gateway's link to the core: one QUIC connection (the client library multiplexes every
//! request over it), reconnected on demand after it is lost.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use paycore_client::{Client, ClientConfig, ClientError};
use paycore_engine::{Command, IdempotencyKey, Op, Outcome};
use paycore_protocol::{CommandResult, Query, QueryResult};

use crate::error::ApiError;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Core {
    config: ClientConfig,
    client: RwLock<Option<Arc<Client>>>,
    connecting: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

fn unavailable(error: &ClientError) -> ApiError {
    tracing::warn!(%error, "core request failed");
    ApiError::unavailable(
        "core_unavailable",
        "the payment core cannot be reached; retry",
    )
}

impl Core {
    pub fn new(config: ClientConfig, metrics: Arc<Metrics>) -> Core {
        Core {
            config,
            client: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    fn current(&self) -> Option<Arc<Client>> {
        self.client
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The connected client, connecting first if needed.
    pub async fn client(&self) -> Result<Arc<Client>, ApiError> {
        if let Some(client) = self.current() {
            return Ok(client);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(client) = self.current() {
            return Ok(client);
        }
        let client = Arc::new(
            Client::connect(self.config.clone())
                .await
                .map_err(|e| unavailable(&e))?,
        );
        *self
            .client
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(client.clone());
        Ok(client)
    }

    fn forget(&self, error: &ClientError) {
        if matches!(
            error,
            ClientError::Connection(_) | ClientError::Connect { .. } | ClientError::Protocol(_)
        ) {
            *self
                .client
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
    }

    fn timed(&self, started: Instant, what: &str) {
        self.metrics.observe(
            "paycore_gateway_core_round_trip_seconds",
            format!("kind=\"{what}\""),
            started.elapsed().as_secs_f64(),
        );
    }

    /// Submits one client command under `key`; its outcome.
    pub async fn submit(&self, key: &str, op: Op) -> Result<Outcome, ApiError> {
        let key = IdempotencyKey::new(key.as_bytes())
            .map_err(|_| ApiError::bad_request("idempotency_key_invalid", "key too long"))?;
        let client = self.client().await?;
        let started = Instant::now();
        let result = client.submit(vec![Command::Client { key, op }]).await;
        self.timed(started, "submit");
        let results = result.map_err(|e| {
            self.forget(&e);
            unavailable(&e)
        })?;
        match results.first() {
            Some(CommandResult::Outcome(outcome)) => Ok(*outcome),
            _ => Err(ApiError::unavailable(
                "core_busy",
                "the payment core is busy; retry with the same Idempotency-Key",
            )),
        }
    }

    pub async fn query(&self, query: Query) -> Result<QueryResult, ApiError> {
        let client = self.client().await?;
        let started = Instant::now();
        let result = client.query(query).await;
        self.timed(started, "query");
        result.map_err(|e| {
            self.forget(&e);
            unavailable(&e)
        })
    }

    /// Whether the core answers a status query within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.query(Query::Status)).await,
            Ok(Ok(QueryResult::Status(_)))
        )
    }
}
