//! `paycore publish`: the event publisher as its own process, over a node's data folder (a
//! stopped node, or a running one without `--nats-url`). Resumes from each shard's stream;
//! with `--once` it exits when every journal record's events are acknowledged, else it follows
//! the journals until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paycore::publish::NatsArgs;
use paycore_engine::EngineConfig;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The node's data folder (holds shard-000/, shard-001/, …).
    #[arg(long, env = "PAYCORE_DATA_DIR", default_value = "./paycore-data")]
    pub data_dir: PathBuf,
    /// Number of shards the node runs.
    #[arg(long, env = "PAYCORE_SHARDS", default_value_t = 1)]
    pub shards: u16,
    /// Exit once every journal record's events are acknowledged (else follow until stopped).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub nats: NatsArgs,
}

pub fn run(args: PublishArgs) -> Result<(), String> {
    if args.shards == 0 || args.shards > paycore_engine::SHARD_COUNT_MAX {
        return Err(format!(
            "--shards must be in 1..={}",
            paycore_engine::SHARD_COUNT_MAX
        ));
    }
    if args.nats.nats_url.is_none() {
        return Err("paycore publish needs --nats-url (or PAYCORE_NATS_URL)".into());
    }
    let started = std::time::Instant::now();
    let engine = EngineConfig {
        shard_count: args.shards,
        ..EngineConfig::default()
    };
    let Some(handles) = args.nats.start(
        &args.data_dir,
        &engine,
        vec![None; usize::from(args.shards)],
        args.once,
    )?
    else {
        return Err("publishing is off".into());
    };
    println!(
        "paycore publish: {} shard(s) -> {}",
        args.shards, handles.target
    );
    let events = |h: &paycore_publish::threads::PublishHandles| -> u64 {
        (0..args.shards)
            .filter_map(|s| h.shard_status(s))
            .map(|s| s.events_published.load(Ordering::Acquire))
            .sum()
    };
    if args.once {
        while !handles.all_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let published = events(&handles);
        for shard in 0..args.shards {
            let (through, _, _) = handles.lag(shard, 0);
            println!("shard {shard}: published through sequence {through}");
        }
        handles.join()?;
        let elapsed_s = started.elapsed().as_secs_f64();
        println!(
            "published {published} events in {elapsed_s:.1} s: {:.0} events/s",
            published as f64 / elapsed_s.max(1e-9)
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
        .filter(|_| handles.all_finished())
        .collect();
    handles.stop();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
