//! `paycore reconcile`: proves the store and the engine agree (read-only). Prints a human
//! summary, writes a JSON report, and exits 0 only when every check matches.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use paycore_engine::EngineConfig;
use paycore_store::reconcile::{Progress, ReconcileConfig, reconcile};
use paycore_store::store::StoreTarget;

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The node's data folder: the engine side is rebuilt from its snapshots and journals.
    #[arg(long, env = "PAYCORE_DATA_DIR", default_value = "./paycore-data")]
    pub data_dir: PathBuf,
    /// Number of shards the node runs.
    #[arg(long, env = "PAYCORE_SHARDS", default_value_t = 1)]
    pub shards: u16,
    /// PostgreSQL holding the store (default: the embedded `<data_dir>/store.sqlite`).
    #[arg(long, env = "DATABASE_URL")]
    pub postgres_url: Option<String>,
    #[arg(long, env = "PAYCORE_POSTGRES_SCHEMA", default_value = "public")]
    pub postgres_schema: String,
    /// Where to write the JSON report.
    #[arg(long, default_value = "reconcile-report.json")]
    pub report: PathBuf,
    /// No progress bar (logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

struct Bar {
    bar: ProgressBar,
}

impl Progress for Bar {
    fn stage(&self, shard: u16, name: &str, total: Option<u64>) {
        self.bar.set_position(0);
        match total {
            Some(total) => self.bar.set_length(total),
            None => self.bar.unset_length(),
        }
        self.bar.set_message(format!("shard {shard}: {name}"));
    }

    fn advance(&self, rows: u64) {
        self.bar.inc(rows);
    }
}

/// Exit codes: 0 everything matches, 1 discrepancies found, 2 the job could not run.
pub fn run(args: ReconcileArgs) -> std::process::ExitCode {
    if args.shards == 0 || args.shards > paycore_engine::SHARD_COUNT_MAX {
        eprintln!(
            "error: --shards must be in 1..={}",
            paycore_engine::SHARD_COUNT_MAX
        );
        return std::process::ExitCode::from(2);
    }
    if let Err(error) = paycore::flush::check_shard_count(&args.data_dir, args.shards) {
        eprintln!("error: {error}");
        return std::process::ExitCode::from(2);
    }
    let config = ReconcileConfig {
        data_dir: args.data_dir.clone(),
        shard_count: args.shards,
        engine_config: EngineConfig::default(),
        target: StoreTarget::from_options(
            args.postgres_url.as_deref(),
            &args.postgres_schema,
            &args.data_dir,
        ),
    };
    if let StoreTarget::Sqlite(path) = &config.target
        && !path.exists()
    {
        eprintln!(
            "error: no store at {} (nothing was flushed there)",
            path.display()
        );
        return std::process::ExitCode::from(2);
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    };
    let progress = Bar { bar };
    let result = reconcile(&config, &progress);
    progress.bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: reconciliation could not run: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    print!("{}", report.summary());
    let json = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
    if let Err(error) = std::fs::write(&args.report, json + "\n") {
        eprintln!("error: writing {}: {error}", args.report.display());
        return std::process::ExitCode::from(2);
    }
    println!("report: {}", args.report.display());
    if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
