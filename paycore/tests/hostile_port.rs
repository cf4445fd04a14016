//! The node's QUIC port under a hostile client (issue 13, item 7): one connection opening as
//! many streams as it may, each with the length prefix of a huge frame and then as many bytes
//! as flow control lets through, never finishing. Before, each stream's unread bytes waited in
//! the QUIC stack (about 1.2 MB per stream, no connection-wide window): one connection pinned
//! over 1 GiB of the node. Now the connection's receive window bounds what waits unread, a
//! frame the request budgets cannot admit is answered `overloaded` and its stream stopped, and
//! the node's resident memory grows by a bounded amount; it still serves a well-behaved client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use paycore_client::{Client, ClientConfig};
use paycore_protocol::{Query, QueryResult};

/// What the node may grow by under this attack: the connection's receive window (1 MiB), two
/// admitted 32 MiB frames being read (their buffers are touched only as bytes arrive), and
/// the stream state of 1 024 streams, with generous room for allocator slack.
const GROWTH_BYTES_MAX: u64 = 160 << 20;
/// Streams the node lets one connection open (`STREAMS_PER_CONNECTION_MAX`).
const STREAMS: usize = 1024;

struct Node {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(dir: &Path) -> Node {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let mut child = Process::new(env!("CARGO_BIN_EXE_paycore"))
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-flush",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paycore node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("QUIC on ").nth(1) {
            let addr = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("address");
            // Keep draining so the node never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Node {
                child,
                addr,
                dir: dir.to_path_buf(),
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("node did not start");
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_connection_pins_a_bounded_amount_of_the_node() {
    let dir = std::env::temp_dir().join(format!("paycore-hostile-{}", std::process::id()));
    let node = start(&dir);
    let trust = dir.join("tls/cert.der");
    let good = Client::connect(ClientConfig::new(node.addr, trust.clone()))
        .await
        .expect("connect");
    assert!(good.query(Query::Status).await.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = resident_bytes(node.child.id());

    let hostile = Client::connect(ClientConfig::new(node.addr, trust.clone()))
        .await
        .expect("connect");
    let connection = hostile.connection().clone();
    // A frame prefix claiming a 32 MiB frame, then 2 MiB of its body, never the rest.
    let claimed = (paycore_protocol::FRAME_BYTES_MAX - 4) as u32;
    let body = vec![0xA5u8; 2 << 20];
    let mut tasks = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let connection = connection.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let Ok((mut send, recv)) = connection.open_bi().await else {
                return;
            };
            let writes = async {
                send.write_all(&claimed.to_le_bytes()).await?;
                send.write_all(&body).await
            };
            // Flow control stops the writes: bounded by time, then left open and unfinished.
            let _ = tokio::time::timeout(Duration::from_secs(4), writes).await;
            tokio::time::sleep(Duration::from_secs(6)).await;
            drop((send, recv));
        }));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = resident_bytes(node.child.id());
    let growth = during.saturating_sub(before);
    eprintln!(
        "node resident before {} MiB, under {STREAMS} hostile streams {} MiB (+{} MiB)",
        before >> 20,
        during >> 20,
        growth >> 20
    );
    // The node still answers a well-behaved client at once.
    let started = Instant::now();
    assert!(matches!(
        good.query(Query::Status).await,
        Ok(QueryResult::Status(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        growth <= GROWTH_BYTES_MAX,
        "one hostile connection grew the node by {} MiB (bound {} MiB)",
        growth >> 20,
        GROWTH_BYTES_MAX >> 20
    );
    for task in tasks {
        let _ = task.await;
    }
    hostile.close();
    good.close();
}
