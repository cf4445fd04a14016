//! `/metrics` of a core node, in the Prometheus text format (`--metrics-listen`): what an
//! operator watches — commands and group commits (rates give transfers/s and the group-commit
//! size), ring depth, journal commit (fsync) latency, role and epoch, standby lag, flush lag.
//!
//! Read from the counters the shard writers already publish (atomics): serving a scrape never
//! touches a writer thread.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use paycore_sequencer::{COMMIT_LATENCY_BOUNDS_US, Sequencer};

use crate::node_state::Role;
use crate::replication::NodeRole;

/// Extra per-shard figures another part of the node provides (the store flusher's lag).
pub type ShardGauges = Arc<dyn Fn(u16) -> Vec<(&'static str, &'static str, u64)> + Send + Sync>;

/// Label set and value of each sample of one metric.
type Rows = Vec<(String, u64)>;

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric of the node.
pub fn render(sequencer: &Sequencer, role: &NodeRole, extra: Option<&ShardGauges>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let state = role.state();
    let shards = sequencer.shard_count();
    let mut gauge = |name: &str, help: &str, kind: &str, rows: Rows| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "paycore_node_primary",
        "1 on a primary, 0 on a standby.",
        "gauge",
        vec![(String::new(), u64::from(state.role == Role::Primary))],
    );
    gauge(
        "paycore_node_epoch",
        "Epoch this node writes (primary) or follows (standby).",
        "gauge",
        vec![(String::new(), state.epoch)],
    );
    let per_shard = |f: &dyn Fn(u16) -> u64| -> Rows {
        (0..shards)
            .map(|shard| (format!("{{shard=\"{shard}\"}}"), f(shard)))
            .collect()
    };
    gauge(
        "paycore_shard_commands_total",
        "Commands journaled and applied (client commands, legs, ticks); its rate is the shard's throughput.",
        "counter",
        per_shard(&|s| sequencer.stats(s).commands.load(Ordering::Relaxed)),
    );
    gauge(
        "paycore_shard_group_commits_total",
        "Group commits; commands_total / group_commits_total is the mean group-commit size.",
        "counter",
        per_shard(&|s| sequencer.stats(s).batches.load(Ordering::Relaxed)),
    );
    gauge(
        "paycore_shard_group_commit_commands_max",
        "Commands in the largest group commit so far.",
        "gauge",
        per_shard(&|s| {
            sequencer
                .stats(s)
                .batch_commands_max_seen
                .load(Ordering::Relaxed)
        }),
    );
    gauge(
        "paycore_shard_last_sequence",
        "Sequence of the last command applied.",
        "gauge",
        per_shard(&|s| sequencer.stats(s).last_sequence.load(Ordering::Relaxed)),
    );
    gauge(
        "paycore_shard_snapshot_sequence",
        "Sequence of the newest snapshot (0: none yet); a restart replays the journal after it.",
        "gauge",
        per_shard(&|s| sequencer.stats(s).snapshot_sequence.load(Ordering::Relaxed)),
    );
    gauge(
        "paycore_shard_snapshot_replica_lag_records",
        "Records the snapshot replica (low priority, idle CPU) has not applied yet.",
        "gauge",
        per_shard(&|s| {
            let stats = sequencer.stats(s);
            let last = stats.last_sequence.load(Ordering::Relaxed);
            last.saturating_sub(stats.replica_sequence.load(Ordering::Relaxed))
        }),
    );
    gauge(
        "paycore_shard_ring_depth",
        "Client requests waiting in the shard's ring.",
        "gauge",
        per_shard(&|s| sequencer.ring_depth(s) as u64),
    );
    gauge(
        "paycore_shard_ring_capacity",
        "Client requests the ring holds before answering busy.",
        "gauge",
        per_shard(&|_| sequencer.ring_capacity() as u64),
    );
    gauge(
        "paycore_shard_journal_poisoned",
        "1 when the shard's journal refused a write (the shard answers shard_unavailable).",
        "gauge",
        per_shard(&|s| u64::from(sequencer.stats(s).poisoned.load(Ordering::Relaxed))),
    );
    gauge(
        "paycore_shard_health",
        "0 healthy, 1 read-only (disk below the reserve: writes answered disk_full), 2 poisoned (a journal write failed: shard_unavailable until a restart).",
        "gauge",
        per_shard(&|s| sequencer.stats(s).disk.health().code()),
    );
    gauge(
        "paycore_shard_health_since_ms",
        "Unix time (ms) the shard became read-only or poisoned; 0 while healthy.",
        "gauge",
        per_shard(&|s| sequencer.stats(s).disk.health().since_ms().unwrap_or(0)),
    );
    gauge(
        "paycore_shard_health_info",
        "1 per shard, labelled with its state and, when not healthy, why.",
        "gauge",
        (0..shards)
            .map(|shard| {
                let health = sequencer.stats(shard).disk.health();
                let labels = format!(
                    "{{shard=\"{shard}\",state=\"{}\",reason=\"{}\"}}",
                    health.name(),
                    label_value(health.reason().unwrap_or(""))
                );
                (labels, 1)
            })
            .collect(),
    );
    gauge(
        "paycore_shard_disk_free_bytes",
        "Free bytes on the shard's journal disk (as of the writer's last check, every 100 ms).",
        "gauge",
        per_shard(&|s| sequencer.stats(s).disk.free_bytes.load(Ordering::Relaxed)),
    );
    gauge(
        "paycore_shard_disk_total_bytes",
        "Size of the shard's journal disk.",
        "gauge",
        per_shard(&|s| sequencer.stats(s).disk.total_bytes.load(Ordering::Relaxed)),
    );
    gauge(
        "paycore_shard_disk_reserve_bytes",
        "Free bytes the shard keeps: below them it turns read-only (alert well above this).",
        "gauge",
        per_shard(&|s| {
            sequencer
                .stats(s)
                .disk
                .reserve_bytes
                .load(Ordering::Relaxed)
        }),
    );
    gauge(
        "paycore_shard_disk_full_refused_commands_total",
        "Client commands answered disk_full (not journaled; retried by clients).",
        "counter",
        per_shard(&|s| {
            sequencer
                .stats(s)
                .disk
                .refused_commands
                .load(Ordering::Relaxed)
        }),
    );
    let disk_use: Vec<(u64, u64)> = (0..shards)
        .map(|s| paycore_sequencer::journal_disk_use(sequencer.journal_dir(s)))
        .collect();
    gauge(
        "paycore_shard_journal_bytes",
        "Bytes of the shard's live journal segments (and the prepared spare segment).",
        "gauge",
        per_shard(&|s| disk_use[usize::from(s)].0),
    );
    gauge(
        "paycore_shard_journal_archive_bytes",
        "Bytes of the shard's archived journal segments (on the same disk unless moved).",
        "gauge",
        per_shard(&|s| disk_use[usize::from(s)].1),
    );
    gauge(
        "paycore_shard_replication_standby_connected",
        "1 while a standby follows this shard.",
        "gauge",
        per_shard(&|s| u64::from(sequencer.gate(s).standby_connected())),
    );
    gauge(
        "paycore_shard_replication_lag_records",
        "Primary: records the standby has not acknowledged. Standby: records behind its primary.",
        "gauge",
        per_shard(&|s| {
            let last = sequencer.stats(s).last_sequence.load(Ordering::Relaxed);
            if state.role == Role::Primary {
                last.saturating_sub(sequencer.gate(s).standby_durable())
            } else {
                role.follows[usize::from(s)]
                    .primary_durable
                    .load(Ordering::Relaxed)
                    .saturating_sub(last)
            }
        }),
    );
    gauge(
        "paycore_shard_replication_lag_ms",
        "Primary: how long the standby has lacked committed records (0 when it holds all).",
        "gauge",
        per_shard(&|s| sequencer.gate(s).lag_ms()),
    );
    if let Some(flushers) = role
        .flushers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        let lag = |shard: u16| {
            flushers.lag(
                shard,
                sequencer
                    .stats(shard)
                    .durable_sequence
                    .load(Ordering::Relaxed),
            )
        };
        gauge(
            "paycore_shard_flush_lag_records",
            "Records durable in the journal and not yet in the store.",
            "gauge",
            per_shard(&|s| lag(s).1),
        );
        gauge(
            "paycore_shard_flush_lag_ms",
            "Age of the oldest record not yet in the store (command time), ms.",
            "gauge",
            per_shard(&|s| lag(s).2),
        );
    }
    // Events out (issue 19): the publishers running in this process (`--nats-url`).
    let published = crate::publish::lag_in_nodes(|s| {
        sequencer.stats(s).durable_sequence.load(Ordering::Relaxed)
    });
    if !published.is_empty() {
        let rows = |pick: &dyn Fn(&crate::publish::PublishLag) -> u64| -> Rows {
            published
                .iter()
                .map(|p| (format!("{{shard=\"{}\"}}", p.0), pick(p)))
                .collect()
        };
        gauge(
            "paycore_shard_publish_lag_records",
            "Records durable in the journal whose events are not yet acknowledged by NATS.",
            "gauge",
            rows(&|p| p.2),
        );
        gauge(
            "paycore_shard_publish_lag_ms",
            "Age of the oldest event sent to NATS and not yet acknowledged (command time), ms.",
            "gauge",
            rows(&|p| p.3),
        );
        gauge(
            "paycore_shard_published_sequence",
            "Every record through this sequence has its events in NATS (a retention floor).",
            "gauge",
            rows(&|p| p.1),
        );
        gauge(
            "paycore_shard_events_published_total",
            "Events acknowledged by NATS since the publisher started.",
            "counter",
            rows(&|p| p.4),
        );
    }
    if let Some(extra) = extra {
        let mut named: std::collections::BTreeMap<&str, (&str, Rows)> =
            std::collections::BTreeMap::new();
        for shard in 0..shards {
            for (name, help, value) in extra(shard) {
                named
                    .entry(name)
                    .or_insert((help, Vec::new()))
                    .1
                    .push((format!("{{shard=\"{shard}\"}}"), value));
            }
        }
        for (name, (help, rows)) in named {
            gauge(name, help, "gauge", rows);
        }
    }
    let name = "paycore_shard_journal_commit_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Journal write + sync time of each group commit.\n# TYPE {name} histogram"
    );
    for shard in 0..shards {
        let histogram = &sequencer.stats(shard).commit_latency;
        let mut cumulative = 0u64;
        for (i, bound) in COMMIT_LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += histogram.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += histogram.buckets[COMMIT_LATENCY_BOUNDS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{shard}\"}} {}",
            histogram.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{name}_count{{shard=\"{shard}\"}} {}",
            histogram.count.load(Ordering::Relaxed)
        );
    }
    out
}

/// Serves `GET /metrics` on `listen` until the runtime stops. Holds only a weak reference to
/// the shards, so a shutdown is never kept waiting by the metrics server.
pub async fn serve(
    listen: SocketAddr,
    sequencer: std::sync::Weak<Sequencer>,
    role: Arc<NodeRole>,
    extra: Option<ShardGauges>,
) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("metrics on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (sequencer, role, extra) = (sequencer.clone(), role.clone(), extra.clone());
            async move {
                let body = match sequencer.upgrade() {
                    Some(sequencer) => render(&sequencer, &role, extra.as_ref()),
                    None => String::new(),
                };
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "metrics server stopped");
        }
    });
    Ok(bound)
}
