//! The publisher tests' kit: a nats-server of the test's own, journals of a workload, names.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use paycore_engine::{Effects, Engine, EngineConfig};
use paycore_publish::event_json::{self, EventMeta, EventPosition};
use paycore_publish::sink::JetStreamConfig;
use paycore_store::workload::{Journals, Workload, WorkloadConfig};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Nats {
    pub fn start(label: &str) -> Option<Nats> {
        if !Path::new(NATS_SERVER).exists() {
            assert!(std::env::var_os("CI").is_none(), "{NATS_SERVER} missing");
            eprintln!("SKIP: {NATS_SERVER} missing");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("paycore-nats-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut nats = Nats {
            child: None,
            port: free_port(),
            dir,
        };
        nats.spawn();
        Some(nats)
    }

    pub fn spawn(&mut self) {
        let child = Command::new(NATS_SERVER)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn workload_config(shards: u16, users: u64) -> WorkloadConfig {
    WorkloadConfig {
        shards,
        seed: 3,
        users,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 10_000,
        transfers_only: false,
        legs_in_flight_max: Some(64),
    }
}

/// Writes the journals of a mixed workload into `data_dir`; returns every shard's events
/// as the publisher must send them (id, JSON), from engines of the test's own.
pub fn write_journal(
    data_dir: &Path,
    config: WorkloadConfig,
    commands: usize,
) -> Vec<Vec<(String, String)>> {
    let mut workload = Workload::new(config);
    let mut journals = Journals::open(data_dir, config.shards, 4096).expect("journals");
    let mut records = Vec::new();
    workload.generate(0, &mut records);
    workload.generate(commands, &mut records);
    workload.drain_legs(&mut records);
    journals.append(&records).expect("append");
    journals.commit().expect("commit");
    let mut engines: Vec<Engine> = (0..config.shards)
        .map(|s| Engine::new(Workload::engine_config(&config, s)))
        .collect();
    let mut expected = vec![Vec::new(); usize::from(config.shards)];
    let mut effects = Effects::default();
    let mut sorted: Vec<_> = records.iter().collect();
    sorted.sort_by_key(|r| (r.shard, r.sequence));
    for record in sorted {
        let engine = &mut engines[usize::from(record.shard)];
        effects.clear();
        engine.apply(
            record.sequence,
            record.timestamp_ns,
            &record.command,
            &mut effects,
        );
        for (index, event) in effects.events.iter().enumerate() {
            let position = EventPosition {
                shard: record.shard,
                sequence: record.sequence,
                index: index as u32,
            };
            let meta = EventMeta {
                position,
                epoch: 1,
                timestamp_ns: record.timestamp_ns,
            };
            let mut json = String::new();
            event_json::encode(event, &meta, &*engine, &mut json);
            expected[usize::from(record.shard)].push((position.id(), json));
        }
    }
    expected
}

pub fn test_config(url: &str, label: &str) -> JetStreamConfig {
    let mut config = JetStreamConfig::new(url);
    config.stream_prefix = format!("TEST_{label}_{}", std::process::id());
    config.subject_prefix = format!("test{}.{label}", std::process::id());
    config.ack_timeout = Duration::from_secs(2);
    config
}

pub fn data_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-publish-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn engine_config(config: &WorkloadConfig) -> EngineConfig {
    Workload::engine_config(config, 0)
}
