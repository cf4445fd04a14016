//! Publisher threads, one per shard (inside a node with `--nats-url`, or `paycore publish`),
//! each with its own small runtime and broker connection: a shard's broker trouble never
//! touches another's, and nothing here runs on the node's threads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use paycore_engine::EngineConfig;

use crate::publisher::{PublishStatus, PublisherConfig};
use crate::sink::{JetStreamConfig, JetStreamSink};

/// Publisher threads of every shard.
#[derive(Debug)]
pub struct PublishHandles {
    stop: Arc<AtomicBool>,
    shards: Vec<(Arc<PublishStatus>, Option<JoinHandle<()>>)>,
    /// Where events go, for status lines.
    pub target: String,
}

impl PublishHandles {
    /// Every record of `shard` through this sequence is acknowledged by the broker: a journal
    /// retention floor (`Sequencer::add_retention_floor`).
    pub fn published_sequence(&self, shard: u16) -> Option<Arc<AtomicU64>> {
        self.shard_status(shard)
            .map(|status| status.published_sequence.clone())
    }

    pub fn shard_status(&self, shard: u16) -> Option<&PublishStatus> {
        self.shards.get(usize::from(shard)).map(|(s, _)| &**s)
    }

    /// (published sequence, lag in records behind `durable_sequence`, lag in milliseconds).
    pub fn lag(&self, shard: u16, durable_sequence: u64) -> (u64, u64, u64) {
        match self.shard_status(shard) {
            Some(status) => (
                status.published_sequence.load(Ordering::Acquire),
                status.lag_records(durable_sequence),
                status.lag_ms(),
            ),
            None => (0, 0, 0),
        }
    }

    pub fn all_finished(&self) -> bool {
        self.shards
            .iter()
            .all(|(_, t)| t.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Stops every publisher and waits for them (what is in flight is either acknowledged
    /// or sent again by the next run: the stream says which).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for (_, thread) in &mut self.shards {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Waits for every publisher to return on its own (`stop_at_end`); the first fatal error.
    pub fn join(mut self) -> Result<(), String> {
        for (_, thread) in &mut self.shards {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
        match self
            .shards
            .iter()
            .find(|(s, _)| !s.finished.load(Ordering::Acquire))
        {
            Some((status, _)) => Err(status
                .last_error()
                .unwrap_or_else(|| "a publisher stopped early".into())),
            None => Ok(()),
        }
    }
}

/// Starts one publisher thread per shard. `watermarks[shard]`: what the publisher may read up
/// to (the durable sequence, or with a standby what it holds); `None` for a stopped node's
/// folder. Returns at once; connecting happens on the threads, with retries.
pub fn start_publishers(
    data_dir: &Path,
    engine_config: &EngineConfig,
    watermarks: Vec<Option<Arc<AtomicU64>>>,
    jetstream: &JetStreamConfig,
    in_flight_max: usize,
    stop_at_end: bool,
) -> Result<PublishHandles, String> {
    jetstream.validate()?;
    let stop = Arc::new(AtomicBool::new(false));
    let shard_count = watermarks.len() as u16;
    let mut shards = Vec::with_capacity(watermarks.len());
    for (shard, watermark) in watermarks.into_iter().enumerate() {
        let shard = shard as u16;
        let config = PublisherConfig {
            data_dir: data_dir.to_path_buf(),
            engine_config: EngineConfig {
                shard,
                shard_count,
                ..engine_config.clone()
            },
            watermark,
            stop_at_end,
            in_flight_max,
            checkpoint_name: format!("publish-{}.checkpoint", jetstream.stream_name(shard)),
        };
        let status = Arc::new(PublishStatus::default());
        let (thread_status, thread_stop, jetstream) =
            (status.clone(), stop.clone(), jetstream.clone());
        let thread = std::thread::Builder::new()
            .name(format!("publish-{shard:03}"))
            .spawn(move || {
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|runtime| {
                        runtime.block_on(async {
                            let sink = JetStreamSink::connect(jetstream)
                                .await
                                .map_err(|e| e.to_string())?;
                            crate::publisher::run(&config, sink, &thread_status, &thread_stop)
                                .await
                                .map_err(|e| e.to_string())
                        })
                    });
                if let Err(error) = outcome {
                    tracing::error!(shard, %error, "publisher stopped: this shard's events are no longer published");
                    if let Ok(mut slot) = thread_status.last_error_slot() {
                        *slot = Some(format!("shard {shard}: {error}"));
                    }
                }
            })
            .map_err(|e| format!("starting the publisher thread of shard {shard}: {e}"))?;
        shards.push((status, Some(thread)));
    }
    let target = format!(
        "{} (streams {}_NNN, subjects {}.<topic>.<shard>)",
        jetstream.url, jetstream.stream_prefix, jetstream.subject_prefix
    );
    tracing::info!(target = %target, shards = shard_count, "event publishers started");
    Ok(PublishHandles {
        stop,
        shards,
        target,
    })
}
