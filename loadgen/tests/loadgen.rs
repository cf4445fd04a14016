//! The load generator end to end against an in-process node on loopback (2 shards, fsync):
//! closed and open loop, conservation, outcome counts that add up, JSON and SVG written.

use std::path::{Path, PathBuf};

use paycore::node::{NodeArgs, start_node, stop_sequencer};
use paycore_loadgen::{Config, Mode, Summary, run};

fn args(dir: &Path) -> NodeArgs {
    let mut args = NodeArgs::local(dir);
    args.shards = Some(2);
    args.snapshot_every_records = 1_000_000;
    args.snapshot_every_secs = 3600;
    args
}

fn data_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-loadgen-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn check(summary: &Summary, json: &Path, svg: &Path) {
    let o = &summary.outcomes;
    assert!(summary.conservation.holds, "{}", summary.report());
    assert!(summary.conservation.settled, "{}", summary.report());
    assert_eq!(summary.conservation.expected, 200 * 1_000_000);
    assert!(summary.requests > 0);
    assert_eq!(summary.latency.count, summary.requests);
    assert!(o.ok > 0, "{}", summary.report());
    assert!(
        o.ok_pending > 0,
        "no cross-shard transfer: {}",
        summary.report()
    );
    assert!(summary.cross_shard > 0);
    assert!(o.ok_pending <= o.ok && o.ok_pending <= summary.cross_shard);
    assert_eq!(
        o.total(),
        o.ok + o.rejected.values().sum::<u64>()
            + o.busy
            + o.shard_unavailable
            + o.disk_full
            + o.timeouts
            + o.client_errors
    );
    assert!(o.total() <= summary.requests * summary.config.batch);
    assert!(o.total() > (summary.requests - 1) * summary.config.batch / 2);
    assert_eq!(o.timeouts + o.client_errors, 0, "{}", summary.report());
    assert!(summary.latency.p50_us <= summary.latency.p99_us);
    assert!(summary.latency.p99_us <= summary.latency.max_us);
    assert!(summary.transfers_per_sec > 0.0);

    let text = std::fs::read_to_string(json).expect("JSON summary written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    assert_eq!(value["outcomes"]["ok"], o.ok);
    assert_eq!(value["requests"], summary.requests);
    assert_eq!(value["conservation"]["holds"], true);
    assert!(value["latency_us"]["p99_9"].as_u64().is_some());
    let plot = std::fs::read_to_string(svg).expect("SVG written");
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert!(plot.contains("<polyline"));
}

async fn load(mode: Mode, label: &str) {
    let dir = data_dir(label);
    let node = start_node(&args(&dir)).await.expect("node starts");
    let mut config = Config::new(node.listen, node.trust_path.clone());
    config.wallets = 200;
    config.deposit = 1_000_000;
    config.amount_max = 100;
    config.mode = mode;
    config.connections = 2;
    config.no_progress = true;
    config.durability = "fsync".into();
    config.run_id = Some(format!("test-{label}"));
    config.json = Some(dir.join("summary.json"));
    config.svg = Some(dir.join("latency.svg"));
    match mode {
        Mode::Closed => {
            config.duration_secs = Some(1.5);
            config.concurrency = 8;
            config.batch = 16;
        }
        Mode::Open => {
            config.duration_secs = Some(1.0);
            config.rate = 2_000.0;
            config.batch = 8;
            config.concurrency = 32;
        }
    }
    let summary = run(config).await.expect("the run completes");
    check(
        &summary,
        &dir.join("summary.json"),
        &dir.join("latency.svg"),
    );
    if mode == Mode::Open {
        // 250 requests were due in the second; all were sent.
        assert!(
            (240..=260).contains(&summary.requests),
            "{}",
            summary.report()
        );
    }

    // A second run on the same node, counted: other keys and users, conservation again.
    let mut again = summary.config.clone();
    again.run_id = Some(format!("test-{label}-2"));
    again.duration_secs = None;
    again.count = Some(100);
    let second = run(again).await.expect("second run");
    assert_eq!(second.outcomes.total(), 100, "{}", second.report());
    assert!(second.conservation.holds);

    node.endpoint.close(0u32.into(), b"done");
    node.role.stop_flushing();
    stop_sequencer(node.sequencer).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_conserves_money_and_writes_reports() {
    load(Mode::Closed, "closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_conserves_money_and_writes_reports() {
    load(Mode::Open, "open").await;
}

#[test]
fn help_explains_every_flag() {
    let help = <Config as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    for flag in [
        "--server",
        "--trust",
        "--wallets",
        "--deposit",
        "--currency",
        "--duration-secs",
        "--count",
        "--mode",
        "--concurrency",
        "--batch",
        "--rate",
        "--connections",
        "--seed",
        "--run-id",
        "--json",
        "--svg",
        "--no-progress",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
