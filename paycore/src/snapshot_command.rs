//! `paycore snapshot`: take a snapshot of every shard of a stopped node's data folder.

use std::path::PathBuf;

use paycore_engine::EngineConfig;
use paycore_journal::{JournalConfig, RecoveryOptions};
use paycore_snapshot::{open_shard, prune_snapshots, write_snapshot};

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The node's data folder (holds shard-000/, shard-001/, …).
    #[arg(long, env = "PAYCORE_DATA_DIR", default_value = "./paycore-data")]
    pub data_dir: PathBuf,
    /// Number of shards the node runs.
    #[arg(long, env = "PAYCORE_SHARDS", default_value_t = 1)]
    pub shards: u16,
    /// Snapshots kept per shard (the newest).
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Cut a corrupt journal at the damage instead of refusing (back the folder up first).
    #[arg(long)]
    pub truncate_corruption: bool,
}

pub fn run(args: SnapshotArgs) -> Result<(), String> {
    for shard in 0..args.shards {
        let engine_config = EngineConfig {
            shard,
            shard_count: args.shards,
            ..EngineConfig::default()
        };
        let journal_config = JournalConfig {
            shard,
            ..JournalConfig::default()
        };
        let options = RecoveryOptions {
            truncate_corruption: args.truncate_corruption,
        };
        let mut opened = open_shard(&args.data_dir, engine_config, journal_config, options)
            .map_err(|e| format!("shard {shard}: {e}"))?;
        let (path, bytes) = write_snapshot(&opened.paths.snapshots, &opened.engine)
            .map_err(|e| format!("shard {shard}: {e}"))?;
        prune_snapshots(&opened.paths.snapshots, args.keep).map_err(|e| e.to_string())?;
        let retired = opened
            .journal
            .retire_through(opened.engine.last_sequence(), true)
            .map_err(|e| e.to_string())?;
        println!(
            "shard {shard}: snapshot at sequence {} ({} wallets, {bytes} bytes) -> {}; {} journal segment(s) archived",
            opened.engine.last_sequence(),
            opened.engine.wallet_count(),
            path.display(),
            retired.len()
        );
    }
    Ok(())
}
