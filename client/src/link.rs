//! A link to a paycore cluster that keeps itself up: [`Link`].
//!
//! Given the addresses of a primary and its standbys, a background task connects to the node
//! that says it is the primary (the highest epoch wins when a fenced old primary still
//! answers), watches the connection, and when it is lost or the node stops being the primary
//! (a request answered `not_primary`, or writes answered `shard_unavailable`, reported with
//! [`Link::recheck`]) looks again: every address, with capped exponential backoff and jitter
//! between rounds. Requests never reconnect themselves: they wait (a bounded time) for the
//! link to be up.
//!
//! Each change of state is logged once, at INFO or WARN: the link lost (with the reason),
//! the link up again (with how long it was down), the primary moved. A failed attempt is
//! logged at DEBUG, except the first failure of each address in an outage (a wrong
//! certificate, nothing listening), which is logged once at WARN with its reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::{Client, ClientConfig, ClientError};

/// First pause between two rounds of connection attempts, in milliseconds.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// Longest pause between two rounds of connection attempts, in milliseconds.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 2_000;
/// Shortest time between two checks of which node is the primary asked by requests, in
/// milliseconds (a burst of `not_primary` answers makes one check, not one each).
const RECHECK_INTERVAL_MS_MIN: u64 = 100;
/// How long the other nodes may still answer once one said it is the primary, in
/// milliseconds.
const PRIMARY_GRACE_MS: u64 = 100;
/// How long the current connection has to answer a probe before a new one is tried, in
/// milliseconds (a live node answers its status in well under a millisecond on a LAN).
const REUSED_PROBE_TIMEOUT_MS: u64 = 250;

/// Where the link stands.
#[derive(Debug, Clone)]
pub enum LinkState {
    /// No node answers (since `since`); `reason` is the last attempt's failure.
    Down {
        since: Instant,
        reason: String,
        was_up: bool,
    },
    /// Connected to `client`'s node; `primary` whether it said it is the primary.
    Up { client: Arc<Client>, primary: bool },
}

#[derive(Debug)]
struct Shared {
    servers: Vec<SocketAddr>,
    template: ClientConfig,
    state: watch::Sender<LinkState>,
    recheck: Notify,
}

/// A self-healing connection to the primary of `servers` (see the module docs). Dropping it
/// stops its background task.
#[derive(Debug)]
pub struct Link {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
        if let LinkState::Up { client, .. } = &*self.shared.state.borrow() {
            client.close();
        }
    }
}

impl Link {
    /// Starts the link's background task (needs a tokio runtime). `template` gives every
    /// setting but the server address; `servers` lists the primary and its standbys, in any
    /// order. Fails only on settings that can never work.
    pub fn start(template: ClientConfig, servers: Vec<SocketAddr>) -> Result<Link, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Settings("no node address given".into()));
        }
        template.transport().map_err(ClientError::Settings)?;
        let (state, _) = watch::channel(LinkState::Down {
            since: Instant::now(),
            reason: "connecting".into(),
            was_up: false,
        });
        let shared = Arc::new(Shared {
            servers,
            template,
            state,
            recheck: Notify::new(),
        });
        let task = tokio::spawn(supervise(shared.clone()));
        Ok(Link { shared, task })
    }

    /// The addresses, comma-separated.
    pub fn servers(&self) -> String {
        servers_text(&self.shared.servers)
    }

    pub fn state(&self) -> LinkState {
        self.shared.state.borrow().clone()
    }

    /// The connected client, if any (primary or not), without waiting.
    pub fn current(&self) -> Option<Arc<Client>> {
        match &*self.shared.state.borrow() {
            LinkState::Up { client, .. } => Some(client.clone()),
            LinkState::Down { .. } => None,
        }
    }

    /// The client of the primary, waiting up to `wait` for the link to find one.
    pub async fn primary(&self, wait: Duration) -> Result<Arc<Client>, ClientError> {
        self.wait_for(wait, true).await
    }

    /// A connected client (the primary, or a standby while no primary answers), waiting up
    /// to `wait`. For reads.
    pub async fn any(&self, wait: Duration) -> Result<Arc<Client>, ClientError> {
        self.wait_for(wait, false).await
    }

    async fn wait_for(&self, wait: Duration, primary: bool) -> Result<Arc<Client>, ClientError> {
        let mut receiver = self.shared.state.subscribe();
        let found = tokio::time::timeout(
            wait,
            receiver.wait_for(|state| match state {
                LinkState::Up { primary: p, .. } => *p || !primary,
                LinkState::Down { .. } => false,
            }),
        )
        .await;
        if let Ok(Ok(state)) = found
            && let LinkState::Up { client, .. } = &*state
        {
            return Ok(client.clone());
        }
        let reason = match &*self.shared.state.borrow() {
            LinkState::Down { reason, .. } => reason.clone(),
            LinkState::Up { client, .. } => format!("{} is not the primary", client.server()),
        };
        Err(ClientError::NoPrimary {
            servers: self.servers(),
            waited_ms: wait.as_millis() as u64,
            reason,
        })
    }

    /// Resolves once the link no longer uses `client` (lost, or the primary moved): a request
    /// still waiting on it may be sent again on the new one (with the same keys).
    pub async fn moved_from(&self, client: &Arc<Client>) {
        let mut receiver = self.shared.state.subscribe();
        let _ = receiver
            .wait_for(|state| match state {
                LinkState::Up { client: now, .. } => !Arc::ptr_eq(now, client),
                LinkState::Down { .. } => true,
            })
            .await;
    }

    /// Asks the link to check which node is the primary (after `not_primary`, writes
    /// answered `shard_unavailable`, or a lost connection). Returns at once.
    pub fn recheck(&self) {
        self.shared.recheck.notify_one();
    }
}

fn servers_text(servers: &[SocketAddr]) -> String {
    servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `delay` scaled by a factor in [0.5, 1) drawn from the clock ("equal jitter"): gateways
/// that lost the same node do not all come back in step.
fn jittered(delay_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = u64::from(nanos.wrapping_mul(2_654_435_761) % 1000);
    Duration::from_millis(delay_ms * (500 + spread / 2) / 1000)
}

/// One node's answer to a probe.
struct Probe {
    client: Arc<Client>,
    primary: bool,
    epoch: u64,
}

/// A node's probe: what it said and whether its client was made for the probe, or why not.
type ProbeAnswer = Result<(Probe, bool), ClientError>;

async fn probe_one(
    config: ClientConfig,
    reuse: Option<Arc<Client>>,
) -> Result<(Probe, bool), ClientError> {
    let (client, fresh) = match reuse {
        Some(client) if client.connection().close_reason().is_none() => (client, false),
        _ => (Arc::new(Client::connect(config).await?), true),
    };
    match client.role().await {
        Ok((role, epoch)) => Ok((
            Probe {
                client,
                primary: role == "primary",
                epoch,
            },
            fresh,
        )),
        Err(error) => {
            if fresh {
                client.close();
            }
            Err(error)
        }
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Client>> {
        match &*self.state.borrow() {
            LinkState::Up { client, .. } => Some(client.clone()),
            LinkState::Down { .. } => None,
        }
    }

    /// Asks every address at once; the primary of the highest epoch, else the first node
    /// that answered, else the failures.
    async fn probe(&self, logged: &mut HashMap<SocketAddr, String>) -> Result<Probe, String> {
        let mut current = self.current();
        // The current connection first, briefly: a node killed and restarted at the same
        // address leaves it open (until the idle timeout) but silent. Then it counts as lost.
        if let Some(client) = current.clone() {
            let answer = tokio::time::timeout(
                Duration::from_millis(REUSED_PROBE_TIMEOUT_MS),
                client.role(),
            )
            .await;
            if !matches!(answer, Ok(Ok(_))) {
                let reason = match answer {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {REUSED_PROBE_TIMEOUT_MS} ms"),
                };
                self.down(reason);
                current = None;
            }
        }
        let mut tasks = Vec::new();
        for server in &self.servers {
            let mut config = self.template.clone();
            config.server = *server;
            config.request_timeout_ms = config.request_timeout_ms.min(config.connect_timeout_ms);
            let reuse = current.clone().filter(|c| c.server() == *server);
            tasks.push((*server, tokio::spawn(probe_one(config, reuse))));
        }
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        let mut pending: tokio::task::JoinSet<(SocketAddr, ProbeAnswer)> =
            tokio::task::JoinSet::new();
        for (server, task) in tasks {
            pending.spawn(async move {
                match task.await {
                    Ok(answer) => (server, answer),
                    Err(join) => (server, Err(ClientError::Connection(join.to_string()))),
                }
            });
        }
        // Once a primary answered, the others have a short grace to answer too (a newer
        // epoch); a dead node does not hold the choice up for its whole connect timeout.
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace {
                Some(until) => match tokio::time::timeout_at(until, pending.join_next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.join_next().await,
            };
            let Some(joined) = next else { break };
            let Ok((server, answer)) = joined else {
                continue;
            };
            match answer {
                Ok((probe, fresh)) => {
                    if logged.remove(&server).is_some() {
                        tracing::info!(node = %server, "core node answers again");
                    }
                    if probe.primary && grace.is_none() {
                        grace = Some(
                            tokio::time::Instant::now() + Duration::from_millis(PRIMARY_GRACE_MS),
                        );
                    }
                    answers.push((probe, fresh));
                }
                Err(error) => {
                    let reason = error.to_string();
                    if let std::collections::hash_map::Entry::Vacant(entry) = logged.entry(server) {
                        tracing::warn!(node = %server, %reason, "core node does not answer");
                        entry.insert(reason.clone());
                    } else {
                        tracing::debug!(node = %server, %reason, "core node still does not answer");
                    }
                    failures.push(format!("{server}: {reason}"));
                }
            }
        }
        // Probes still running when the grace ended finish on their own; their clients drop.
        pending.detach_all();
        let best = answers
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| p.primary)
            .max_by_key(|(_, (p, _))| p.epoch)
            .map(|(i, _)| i)
            .or(if answers.is_empty() { None } else { Some(0) });
        let Some(best) = best else {
            return Err(failures.join("; "));
        };
        let (chosen, _) = answers.swap_remove(best);
        for (other, fresh) in answers {
            if fresh {
                other.client.close();
            }
        }
        Ok(chosen)
    }

    /// Records the link as up on `probe`'s node, logging the change once.
    fn up(&self, probe: &Probe) {
        let server = probe.client.server();
        let role = if probe.primary {
            "primary"
        } else {
            "not primary"
        };
        let previous = self.state.borrow().clone();
        match &previous {
            LinkState::Down {
                since,
                was_up: true,
                ..
            } => tracing::info!(
                node = %server,
                role,
                down_secs = format!("{:.1}", since.elapsed().as_secs_f64()),
                "core link up again"
            ),
            LinkState::Down { .. } => tracing::info!(node = %server, role, "core link up"),
            LinkState::Up { client, primary } => {
                if client.server() != server {
                    tracing::info!(from = %client.server(), to = %server, role, epoch = probe.epoch, "core primary moved");
                    client.close();
                } else if *primary != probe.primary {
                    tracing::info!(node = %server, role, epoch = probe.epoch, "core node changed role");
                } else if Arc::ptr_eq(client, &probe.client) {
                    return;
                }
            }
        }
        self.state.send_replace(LinkState::Up {
            client: probe.client.clone(),
            primary: probe.primary,
        });
    }

    /// Records the link as down, logging the change once.
    fn down(&self, reason: String) {
        let previous = self.state.borrow().clone();
        let next = match previous {
            LinkState::Up { client, .. } => {
                tracing::warn!(node = %client.server(), %reason, "core link lost; reconnecting in the background");
                client.close();
                LinkState::Down {
                    since: Instant::now(),
                    reason,
                    was_up: true,
                }
            }
            LinkState::Down { since, was_up, .. } => LinkState::Down {
                since,
                reason,
                was_up,
            },
        };
        self.state.send_replace(next);
    }
}

async fn supervise(shared: Arc<Shared>) {
    let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
    let mut logged: HashMap<SocketAddr, String> = HashMap::new();
    let mut warned_down = false;
    loop {
        match shared.probe(&mut logged).await {
            Ok(probe) => {
                shared.up(&probe);
                warned_down = false;
                let connection = probe.client.connection().clone();
                if probe.primary {
                    backoff_ms = RECONNECT_BACKOFF_MS_MIN;
                    tokio::select! {
                        error = connection.closed() => {
                            shared.down(error.to_string());
                            continue;
                        }
                        () = shared.recheck.notified() => {}
                    }
                    tokio::time::sleep(Duration::from_millis(RECHECK_INTERVAL_MS_MIN)).await;
                } else {
                    // Reads go to this node meanwhile; look for a primary again soon.
                    tokio::select! {
                        error = connection.closed() => shared.down(error.to_string()),
                        () = tokio::time::sleep(jittered(backoff_ms)) => {}
                        () = shared.recheck.notified() => {}
                    }
                    backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
                }
            }
            Err(reason) => {
                if !warned_down
                    && matches!(
                        &*shared.state.borrow(),
                        LinkState::Down { was_up: false, .. }
                    )
                {
                    tracing::warn!(nodes = %servers_text(&shared.servers), %reason, "core not reachable yet; connecting in the background");
                    warned_down = true;
                }
                shared.down(reason);
                tokio::time::sleep(jittered(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
            }
        }
    }
}
