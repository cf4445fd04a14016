//! The event publisher's settings (`paycore node --nats-url …` and `paycore publish`), and
//! starting it over a data folder; the publisher itself is the `paycore-publish` crate
//! (docs/design.md, "Event stream out").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use paycore_engine::EngineConfig;
use paycore_publish::publisher::IN_FLIGHT_DEFAULT;
use paycore_publish::sink::JetStreamConfig;
use paycore_publish::threads::{PublishHandles, start_publishers};

/// Where and how events are published. Flattened into `paycore node` and `paycore publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server(s) to publish every committed event to (`nats://127.0.0.1:4222`; several
    /// comma-separated). Off by default: without it no event leaves the node this way.
    #[arg(long, env = "PAYCORE_NATS_URL")]
    pub nats_url: Option<String>,
    /// Stream of shard N: `<prefix>_<NNN>` (created if missing; one with other settings is
    /// refused, never changed).
    #[arg(
        long,
        env = "PAYCORE_NATS_STREAM_PREFIX",
        default_value = "PAYCORE_EVENTS"
    )]
    pub nats_stream_prefix: String,
    /// Subjects: `<prefix>.<topic>.<shard>`, topic one of transaction, wallet, hold, user,
    /// currency.
    #[arg(long, env = "PAYCORE_NATS_SUBJECT_PREFIX", default_value = "paycore")]
    pub nats_subject_prefix: String,
    /// How long the streams keep events, in hours (default 7 days).
    #[arg(long, env = "PAYCORE_NATS_MAX_AGE_HOURS", default_value_t = 168)]
    pub nats_max_age_hours: u64,
    /// Replicas of each stream (1 on a single NATS server; 3 on a cluster).
    #[arg(long, env = "PAYCORE_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Events sent and not yet acknowledged per shard, at most.
    #[arg(long, env = "PAYCORE_PUBLISH_IN_FLIGHT_MAX", default_value_t = IN_FLIGHT_DEFAULT)]
    pub publish_in_flight_max: usize,
}

impl NatsArgs {
    /// The sink's settings, or `None` when publishing is off.
    pub fn jetstream(&self) -> Result<Option<JetStreamConfig>, String> {
        let Some(url) = &self.nats_url else {
            return Ok(None);
        };
        let mut config = JetStreamConfig::new(url);
        config.stream_prefix = self.nats_stream_prefix.clone();
        config.subject_prefix = self.nats_subject_prefix.clone();
        config.max_age = Duration::from_secs(self.nats_max_age_hours.max(1) * 3600);
        config.replicas = self.nats_replicas;
        config.validate()?;
        if !(1..=1 << 20).contains(&self.publish_in_flight_max) {
            return Err(format!(
                "--publish-in-flight-max must be in 1..=1048576, not {}",
                self.publish_in_flight_max
            ));
        }
        Ok(Some(config))
    }

    /// Starts one publisher per shard (see `paycore_publish::threads`); `None` when off.
    pub fn start(
        &self,
        data_dir: &Path,
        engine_config: &EngineConfig,
        watermarks: Vec<Option<Arc<AtomicU64>>>,
        stop_at_end: bool,
    ) -> Result<Option<PublishHandles>, String> {
        let Some(config) = self.jetstream()? else {
            return Ok(None);
        };
        crate::flush::check_shard_count(data_dir, watermarks.len() as u16)?;
        start_publishers(
            data_dir,
            engine_config,
            watermarks,
            &config,
            self.publish_in_flight_max,
            stop_at_end,
        )
        .map(Some)
    }
}

/// Publishers running inside nodes of this process, by data folder (tests run several nodes
/// in one process); read by `/metrics` and the status.
static IN_NODES: std::sync::Mutex<Vec<(std::path::PathBuf, PublishHandles)>> =
    std::sync::Mutex::new(Vec::new());

/// Starts a node's publishers; journal retention then keeps every record not yet published.
pub fn start_in_node(
    args: &NatsArgs,
    data_dir: &Path,
    watermarks: Vec<Option<Arc<AtomicU64>>>,
    sequencer: &paycore_sequencer::Sequencer,
) -> Result<(), String> {
    let shards = watermarks.len() as u16;
    let engine = EngineConfig {
        shard_count: shards,
        ..EngineConfig::default()
    };
    let Some(handles) = args.start(data_dir, &engine, watermarks, false)? else {
        return Ok(());
    };
    for shard in 0..shards {
        if let Some(floor) = handles.published_sequence(shard) {
            sequencer.add_retention_floor(shard, floor);
        }
    }
    println!("paycore node: publishing events to {}", handles.target);
    IN_NODES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((data_dir.to_path_buf(), handles));
    Ok(())
}

/// Stops the publishers of the node on `data_dir` (what is in flight is sent again by the
/// next run, or found in the stream).
pub fn stop_in_node(data_dir: &Path) {
    let handles = {
        let mut running = IN_NODES.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .position(|(dir, _)| dir == data_dir)
            .map(|at| running.remove(at).1)
    };
    if let Some(handles) = handles {
        handles.stop();
    }
}

/// One shard's publisher as `/metrics` shows it: (shard, published sequence, lag in records
/// behind the durable sequence, lag in ms, events published).
pub type PublishLag = (u16, u64, u64, u64, u64);

/// Per shard of every publishing node of this process, for `/metrics` and status.
pub fn lag_in_nodes(durable: impl Fn(u16) -> u64) -> Vec<PublishLag> {
    let running = IN_NODES.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (_, handles) in running.iter() {
        for shard in 0.. {
            let Some(status) = handles.shard_status(shard) else {
                break;
            };
            let (published, records, ms) = handles.lag(shard, durable(shard));
            out.push((
                shard,
                published,
                records,
                ms,
                status
                    .events_published
                    .load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
    }
    out
}
