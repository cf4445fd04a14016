//! `paycore flush`: the store flusher as its own process, over a node's data folder (stopped,
//! or running with `--no-flush`). Resumes from the store's checkpoints; with `--once` it exits
//! when everything in the journals is written, else it follows them until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use paycore::flush::{StoreArgs, start_flushers};
use paycore_engine::EngineConfig;

#[derive(Debug, clap::Args)]
pub struct FlushArgs {
    /// The node's data folder (holds shard-000/, shard-001/, …).
    #[arg(long, env = "PAYCORE_DATA_DIR", default_value = "./paycore-data")]
    pub data_dir: PathBuf,
    /// Number of shards the node runs.
    #[arg(long, env = "PAYCORE_SHARDS", default_value_t = 1)]
    pub shards: u16,
    /// Exit once every journal record is in the store (else follow until stopped).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: FlushArgs) -> Result<(), String> {
    if args.shards == 0 || args.shards > paycore_engine::SHARD_COUNT_MAX {
        return Err(format!(
            "--shards must be in 1..={}",
            paycore_engine::SHARD_COUNT_MAX
        ));
    }
    let handles = start_flushers(
        &args.data_dir,
        &EngineConfig::default(),
        vec![None; usize::from(args.shards)],
        &args.store,
        args.once,
    )?;
    println!(
        "paycore flush: {} shard(s) -> {}",
        args.shards, handles.target
    );
    if args.once {
        handles.join()?;
        for shard in 0..args.shards {
            println!(
                "shard {shard}: flushed through sequence {}",
                flushed(&args, shard)
            );
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if handles.all_finished() {
                        break;
                    }
                }
            }
        }
        Ok::<(), String>(())
    })?;
    let failed: Vec<String> = (0..args.shards)
        .filter_map(|s| handles.shard_status(s).and_then(|st| st.last_error()))
        .collect();
    handles.stop();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn flushed(args: &FlushArgs, shard: u16) -> u64 {
    let target = args.store.target(&args.data_dir);
    paycore_store::store::Store::connect(&target)
        .and_then(|mut s| s.checkpoint(shard))
        .unwrap_or(0)
}
