//! `paycore flush`: the store flusher as its own process, over a node's data folder (stopped,
//! or running with `--no-flush`). Resumes from the store's checkpoints; with `--once` it exits
//! when everything in the journals is written, else it follows them until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paycore::flush::{FlushHandles, StoreArgs, start_flushers};
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
    let started = std::time::Instant::now();
    let before: Vec<u64> = (0..args.shards).map(|s| flushed(&args, s)).collect();
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
        report_progress(&handles, args.shards, &before);
        handles.join()?;
        let mut records = 0;
        for shard in 0..args.shards {
            let through = flushed(&args, shard);
            records += through.saturating_sub(before[usize::from(shard)]);
            println!("shard {shard}: flushed through sequence {through}");
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        println!(
            "flushed {records} records in {elapsed_s:.1} s: {:.0} records/s",
            records as f64 / elapsed_s.max(1e-9)
        );
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

/// Prints, every `PROGRESS_INTERVAL_MS` until every flusher has finished, how many records are
/// committed in the store and how fast they went in since the last line.
fn report_progress(handles: &FlushHandles, shards: u16, before: &[u64]) {
    const PROGRESS_INTERVAL_MS: u64 = 5_000;
    const POLL_MS: u64 = 100;
    let committed = || -> u64 {
        (0..shards)
            .filter_map(|s| {
                let status = handles.shard_status(s)?;
                let done = status.committed_sequence.load(Ordering::Acquire);
                Some(done.saturating_sub(before[usize::from(s)]))
            })
            .sum()
    };
    let mut last = (std::time::Instant::now(), committed());
    while !handles.all_finished() {
        std::thread::sleep(Duration::from_millis(POLL_MS));
        let elapsed = last.0.elapsed();
        if elapsed >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
            let now = committed();
            println!(
                "progress: {now} records committed ({:.0} records/s over the last {:.1} s)",
                now.saturating_sub(last.1) as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64()
            );
            last = (std::time::Instant::now(), now);
        }
    }
}

fn flushed(args: &FlushArgs, shard: u16) -> u64 {
    let target = args.store.target(&args.data_dir);
    paycore_store::store::Store::connect(&target)
        .and_then(|mut s| s.checkpoint(shard))
        .unwrap_or(0)
}

/// `paycore flush-bench-journal` (hidden): writes a deterministic multi-shard journal of user
/// wallets (opened and funded) and transfers into a data folder, for the store benchmarks in
/// BENCHMARKS.md. The node is not involved; the journal is what a node would have written.
#[derive(Debug, clap::Args)]
pub struct BenchJournalArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub shards: u16,
    /// Users; each gets two wallets (USD, EUR), both funded.
    #[arg(long, default_value_t = 500_000)]
    pub users: u64,
    /// Transfer commands after the set-up.
    #[arg(long, default_value_t = 10_000_000)]
    pub transfers: u64,
    /// Every operation kind instead of transfers only.
    #[arg(long)]
    pub mixed: bool,
    /// Cross-shard legs a shard may have waiting before the next is delivered, as a node
    /// delivers them (right after their group commit). 0 = no bound: legs are delivered on a
    /// quarter of the steps only, so they pile up and settle far behind their debit (the
    /// journal of the first store benchmarks).
    #[arg(long, default_value_t = 1024)]
    pub legs_in_flight_max: usize,
}

pub fn bench_journal(args: BenchJournalArgs) -> Result<(), String> {
    use paycore_store::workload::{Journals, Workload, WorkloadConfig};
    let started = std::time::Instant::now();
    let mut workload = Workload::new(WorkloadConfig {
        shards: args.shards,
        seed: 1,
        users: args.users,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 10_000,
        transfers_only: !args.mixed,
        legs_in_flight_max: (args.legs_in_flight_max > 0).then_some(args.legs_in_flight_max),
    });
    let mut journals = Journals::open(&args.data_dir, args.shards, 8192)?;
    let mut records = Vec::with_capacity(1 << 17);
    workload.generate(0, &mut records); // the set-up
    let setup = records.len() as u64;
    journals.append(&records)?;
    let mut written = 0u64;
    while written < args.transfers {
        records.clear();
        let chunk = (args.transfers - written).min(1 << 16) as usize;
        workload.generate(chunk, &mut records);
        written += records.len() as u64;
        journals.append(&records)?;
    }
    records.clear();
    workload.drain_legs(&mut records);
    journals.append(&records)?;
    journals.commit()?;
    let wallets: usize = workload.engines.iter().map(|e| e.wallet_count()).sum();
    println!(
        "wrote {setup} set-up and {written} transfer records ({wallets} wallets) into {} in {:.1} s",
        args.data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
