//! The operator commands, as an operator runs them: `paycore snapshot` on a stopped node's data
//! folder, and its refusal while another process owns the folder.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn paycore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_paycore"))
}

#[test]
fn snapshot_command_snapshots_a_stopped_node_and_refuses_a_running_one() {
    let dir = std::env::temp_dir().join(format!("paycore-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Some journaled history, from the load process.
    let mut load = paycore()
        .args([
            "torture",
            "--wallets",
            "20",
            "--batch",
            "16",
            "--snapshot-every",
            "1000000",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start load");
    let journal = dir.join("shard-000/journal");
    let started = Instant::now();
    while std::fs::read_dir(&journal).map_or(0, |d| d.count()) == 0
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));

    // While it runs, the folder is locked.
    let refused = paycore()
        .arg("snapshot")
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");

    load.kill().expect("kill");
    load.wait().expect("reap");
    let done = paycore()
        .arg("snapshot")
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(stdout.contains("shard 0: snapshot at sequence"), "{stdout}");
    let snapshots: Vec<_> = std::fs::read_dir(dir.join("shard-000/snapshots"))
        .expect("snapshots folder")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .collect();
    assert_eq!(snapshots.len(), 1);

    let help = paycore().arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("snapshot") && !help.contains("torture"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
