//! The store flusher inside a node (or in `paycore flush`): one thread per shard writing the
//! shard's committed journal into PostgreSQL, or by default into `<data_dir>/store.sqlite`
//! (`paycore-store`; design in docs/design.md, "Store: flusher and reconciliation").
//!
//! The node starts them with [`start_flushers`] after its shards are open, shows
//! [`FlushHandles::shard_status`] in its status, keeps every journal segment after
//! [`FlushHandles::retention_floor`], and calls [`FlushHandles::stop`] at shutdown. PostgreSQL
//! being down never stops the node: the flushers retry with capped backoff and catch up.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use paycore_engine::EngineConfig;
use paycore_store::durability::DURABLE_INTERVAL_MS_MAX_DEFAULT;
use paycore_store::flusher::{
    BATCH_RECORDS_DEFAULT, BATCH_RECORDS_LIMIT, FlushStatus, FlusherConfig,
};
use paycore_store::store::StoreTarget;

/// Where and how the flusher writes. Flattened into `paycore node` and `paycore flush`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// PostgreSQL to flush into (`postgres://user@host:5432/db`). Without it, the flusher writes
    /// to the embedded SQLite file `<data_dir>/store.sqlite`.
    #[arg(long, env = "DATABASE_URL")]
    pub postgres_url: Option<String>,
    /// PostgreSQL schema of the store's tables (created if missing).
    #[arg(long, env = "PAYCORE_POSTGRES_SCHEMA", default_value = "public")]
    pub postgres_schema: String,
    /// Most journal records per SQL transaction (1 ..= 1048576). Only a flusher with a backlog
    /// fills one; its rows are held in memory while it is written (about 0.7 KB per record and
    /// shard at 1 M wallets: ~90 MB per shard at the default).
    #[arg(long, env = "PAYCORE_FLUSH_BATCH_RECORDS_MAX", default_value_t = BATCH_RECORDS_DEFAULT)]
    pub flush_batch_records_max: usize,
    /// Longest time between durable commits while the flusher has a backlog, in milliseconds
    /// (other commits do not wait for the store's log flush; journal retention only trusts
    /// durable ones). 0: every commit durable.
    #[arg(
        long,
        env = "PAYCORE_FLUSH_DURABLE_INTERVAL_MS_MAX",
        default_value_t = DURABLE_INTERVAL_MS_MAX_DEFAULT
    )]
    pub flush_durable_interval_ms_max: u64,
    /// Longest wait between retries while the store is unreachable, in milliseconds.
    #[arg(
        long,
        env = "PAYCORE_FLUSH_RETRY_BACKOFF_MS_MAX",
        default_value_t = 5_000
    )]
    pub flush_retry_backoff_ms_max: u64,
    /// Run no flusher in this node (another process, e.g. `paycore flush`, writes the store).
    #[arg(long, env = "PAYCORE_NO_FLUSH")]
    pub no_flush: bool,
}

impl StoreArgs {
    pub fn target(&self, data_dir: &Path) -> StoreTarget {
        StoreTarget::from_options(
            self.postgres_url.as_deref(),
            &self.postgres_schema,
            data_dir,
        )
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=BATCH_RECORDS_LIMIT).contains(&self.flush_batch_records_max) {
            return Err(format!(
                "--flush-batch-records-max must be in 1..={BATCH_RECORDS_LIMIT}, not {}",
                self.flush_batch_records_max
            ));
        }
        if self.postgres_url.is_some() {
            paycore_store::postgres::validate_schema(&self.postgres_schema)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Refuses a shard count that does not match the data folder (`shard-NNN/` folders): the
/// shadow engines would route commands differently from the node's and write wrong rows.
pub fn check_shard_count(data_dir: &Path, shard_count: u16) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Ok(()); // nothing there yet: a new node creates its folders
    };
    let found = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("shard-"))
                .is_some_and(|d| d.len() == 3 && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    if found == 0 || found == usize::from(shard_count) {
        Ok(())
    } else {
        Err(format!(
            "{} holds {found} shard folder(s) but {shard_count} shard(s) were given: use the \
             node's --shards",
            data_dir.display()
        ))
    }
}

/// Flusher threads of every shard.
#[derive(Debug)]
pub struct FlushHandles {
    stop: Arc<AtomicBool>,
    shards: Vec<(Arc<FlushStatus>, Option<JoinHandle<()>>)>,
    pub target: String,
}

impl FlushHandles {
    /// Last sequence of `shard` durably committed in the store (a store crash cannot take it
    /// back): journal retention keeps every segment holding a later record.
    pub fn flushed_sequence(&self, shard: u16) -> Option<Arc<AtomicU64>> {
        self.shards
            .get(usize::from(shard))
            .map(|(status, _)| status.flushed_sequence.clone())
    }

    /// What retention may archive up to for `shard`: `min(snapshot, flushed)`.
    pub fn retention_floor(&self, shard: u16, snapshot_sequence: u64) -> u64 {
        self.flushed_sequence(shard).map_or(snapshot_sequence, |f| {
            snapshot_sequence.min(f.load(Ordering::Acquire))
        })
    }

    pub fn shard_status(&self, shard: u16) -> Option<&FlushStatus> {
        self.shards.get(usize::from(shard)).map(|(s, _)| &**s)
    }

    /// (flushed sequence, lag in records behind `durable_sequence`, lag in milliseconds).
    pub fn lag(&self, shard: u16, durable_sequence: u64) -> (u64, u64, u64) {
        match self.shard_status(shard) {
            Some(status) => (
                status.flushed_sequence.load(Ordering::Acquire),
                status.lag_records(durable_sequence),
                status.lag_ms(),
            ),
            None => (0, 0, 0),
        }
    }

    /// Whether every flusher has returned (`--once` finished, or a fatal error).
    pub fn all_finished(&self) -> bool {
        self.shards
            .iter()
            .all(|(_, t)| t.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Stops every flusher (the batch being written completes or is rolled back; either way
    /// the checkpoint says where to resume) and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for (_, thread) in &mut self.shards {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Waits for every flusher to return on its own (`stop_at_end`); returns the first fatal
    /// error any of them logged.
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
                .unwrap_or_else(|| "a flusher stopped early".into())),
            None => Ok(()),
        }
    }
}

/// Starts one flusher thread per shard. `watermarks[shard]`: the journal writer's durable
/// sequence when the shard is live in this process (`None`: read to the end of the valid
/// journal, for a stopped node's folder). Returns at once: connecting happens on the threads,
/// with retries, so a PostgreSQL that is down delays nothing.
pub fn start_flushers(
    data_dir: &Path,
    engine_config: &EngineConfig,
    watermarks: Vec<Option<Arc<AtomicU64>>>,
    args: &StoreArgs,
    stop_at_end: bool,
) -> Result<FlushHandles, String> {
    args.validate()?;
    check_shard_count(data_dir, watermarks.len() as u16)?;
    let target = args.target(data_dir);
    let stop = Arc::new(AtomicBool::new(false));
    let shard_count = watermarks.len() as u16;
    let mut shards = Vec::with_capacity(watermarks.len());
    for (shard, watermark) in watermarks.into_iter().enumerate() {
        let shard = shard as u16;
        let mut config = FlusherConfig::new(
            data_dir.to_path_buf(),
            EngineConfig {
                shard,
                shard_count,
                ..engine_config.clone()
            },
            target.clone(),
        );
        config.batch_records_max = args.flush_batch_records_max;
        config.retry_backoff_ms_max = args.flush_retry_backoff_ms_max;
        config.durable_interval_ms_max = args.flush_durable_interval_ms_max;
        config.watermark = watermark;
        config.stop_at_end = stop_at_end;
        let status = Arc::new(FlushStatus::default());
        let thread_status = status.clone();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("flush-{shard:03}"))
            .spawn(move || {
                match paycore_store::flusher::run(&config, &thread_status, &thread_stop) {
                    Ok(()) => {
                        if config.stop_at_end {
                            thread_status.finished.store(true, Ordering::Release);
                        }
                    }
                    Err(error) => {
                        tracing::error!(shard, %error, "flusher stopped: this shard is no longer written to the store");
                        if let Ok(mut slot) = thread_status.last_error.lock() {
                            *slot = Some(format!("shard {shard}: {error}"));
                        }
                    }
                }
            })
            .map_err(|e| format!("starting the flusher thread of shard {shard}: {e}"))?;
        shards.push((status, Some(thread)));
    }
    tracing::info!(store = %target.describe(), shards = shard_count, "flushers started");
    Ok(FlushHandles {
        stop,
        shards,
        target: target.describe(),
    })
}
