//! The load generator against a node whose shards stop taking writes mid-run (issue 25): one
//! shard's journal fails a sync (poisoned: `shard_unavailable`), then the disk fills up (the
//! other shard turns read-only: `disk_full`). The run ends with its summary and both outcomes
//! counted, instead of dying on a timeout.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use paycore::node::{NodeArgs, start_node, stop_sequencer};
use paycore_loadgen::{Config, Mode, run};

const EIO: i32 = 5;

/// A tmpfs mounted for the test, unmounted (and removed) when dropped.
struct SmallVolume {
    dir: PathBuf,
}

impl SmallVolume {
    fn mount(label: &str, size_mib: u64) -> Option<SmallVolume> {
        let dir = std::env::temp_dir().join(format!("paycore-{label}-{}", std::process::id()));
        let _ = Process::new("umount").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Process::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); this test needs root",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        Some(SmallVolume { dir })
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        // Lazy: a failed test may still hold files open (threads of a node); the mount must
        // not outlive the test.
        let _ = Process::new("umount").arg("-l").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fill(path: &Path) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("blocker");
    let chunk = vec![0xA5u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_disk_full_and_shard_unavailable_instead_of_dying() {
    let Some(volume) = SmallVolume::mount("loadgen-disk-full", 48) else {
        return;
    };
    let dir = volume.dir.join("data");
    let mut args = NodeArgs::local(&dir);
    args.shards = Some(2);
    args.journal_segment_mib = 2;
    args.store.no_flush = true;
    let node = start_node(&args).await.expect("node starts");
    let mut config = Config::new(node.listen, node.trust_path.clone());
    config.wallets = 100;
    config.deposit = 1_000_000;
    config.amount_max = 100;
    config.mode = Mode::Closed;
    config.concurrency = 4;
    config.batch = 32;
    config.connections = 1;
    config.no_progress = true;
    config.duration_secs = Some(3.0);
    config.settle_secs = 1;
    config.run_id = Some("disk-full".into());
    let shard_1_journal = dir.join("shard-001/journal");
    let blocker = volume.dir.join("blocker");
    let trouble = {
        let (journal, blocker) = (shard_1_journal.clone(), blocker.clone());
        tokio::spawn(async move {
            // Set-up (100 wallets) takes well under a second; then the trouble starts.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            paycore_journal::faults::fail_syncs_under(&journal, EIO);
            tokio::time::sleep(Duration::from_millis(300)).await;
            for _ in 0..20 {
                fill(&blocker);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let summary = run(config).await.expect("the run ends with a summary");
    trouble.await.expect("trouble maker");
    paycore_journal::faults::clear_sync_faults(&shard_1_journal);
    let report = summary.report();
    eprintln!("{report}");
    let o = &summary.outcomes;
    assert!(o.ok > 0, "{report}");
    assert!(o.shard_unavailable > 0, "{report}");
    assert!(o.disk_full > 0, "{report}");
    assert!(
        report.contains(&format!("disk_full={}", o.disk_full)),
        "{report}"
    );
    assert_eq!(summary.to_json()["outcomes"]["disk_full"], o.disk_full);
    node.role.stop_flushing();
    node.endpoint.close(0u32.into(), b"done");
    stop_sequencer(node.sequencer).await;
}
