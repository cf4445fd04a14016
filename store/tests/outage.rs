//! PostgreSQL unavailable during load, then catch-up. The flushers reach PostgreSQL through a
//! small TCP proxy in this test that can cut every open connection and refuse new ones
//! (simpler and faster than stopping a private cluster, and it needs no root-less initdb).
//! While it is down, the journal keeps growing (the node keeps accepting commands); the
//! flushers fail, back off and retry; once it is back they catch up, and the store equals the
//! engine.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paycore_engine::EngineConfig;
use paycore_store::flusher::{FlushStatus, FlusherConfig, run};
use paycore_store::reconcile::{ReconcileConfig, Silent, reconcile};
use paycore_store::store::StoreTarget;
use paycore_store::testing::PgSchema;
use paycore_store::workload::{Workload, WorkloadConfig, write_journals};

const SHARDS: u16 = 2;

/// A TCP proxy to PostgreSQL that can be switched off (open connections cut, new ones closed
/// at once) and on again.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = open2.lock().expect("lock");
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        list.push(clone);
                    }
                }
                drop(list);
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        Proxy { port, up, open }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        if !up {
            for stream in self.open.lock().expect("lock").drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn postgres_down_during_load_then_catch_up() {
    let Some(pg) = PgSchema::create("outage") else {
        return;
    };
    // Host and port of the real server, from the URL (postgres://user@host:port/db).
    let after_at = pg.url.rsplit('@').next().unwrap_or("127.0.0.1:5432/test");
    let host_port = after_at
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let proxy = Proxy::start(host_port.clone());
    let proxied_url = pg
        .url
        .replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
    let target = StoreTarget::Postgres {
        url: proxied_url,
        schema: pg.schema.clone(),
    };

    let dir = std::env::temp_dir().join(format!("paycore-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.join("data");
    let mut workload = Workload::new(WorkloadConfig {
        shards: SHARDS,
        seed: 5,
        users: 100,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 1_000_000,
        transfers_only: false,
        legs_in_flight_max: None,
    });
    let mut records = Vec::new();
    workload.generate(5_000, &mut records);
    write_journals(&data_dir, SHARDS, &records, 256).expect("journal");

    // Flushers following the journal (no watermark: they read what is durable on disk).
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Vec<Arc<FlushStatus>> = (0..SHARDS).map(|_| Arc::default()).collect();
    let threads: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let mut config = FlusherConfig::new(
                data_dir.clone(),
                EngineConfig {
                    shard,
                    shard_count: SHARDS,
                    ..EngineConfig::default()
                },
                target.clone(),
            );
            config.batch_records_max = 200;
            config.retry_backoff_ms_max = 400;
            let (status, stop) = (statuses[shard as usize].clone(), stop.clone());
            std::thread::spawn(move || run(&config, &status, &stop))
        })
        .collect();
    let flushed = |shard: usize| statuses[shard].flushed_sequence.load(Ordering::Acquire);
    let caught_up = |engines: &[paycore_engine::Engine]| {
        (0..usize::from(SHARDS)).all(|s| flushed(s) == engines[s].last_sequence())
    };
    assert!(
        wait_until(Duration::from_secs(60), || caught_up(&workload.engines)),
        "first catch-up"
    );

    // PostgreSQL goes away; load continues: the journal grows by several thousand records.
    proxy.set_up(false);
    // A batch whose commit answer arrived just before the cut may still be recording it.
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<u64> = (0..usize::from(SHARDS)).map(flushed).collect();
    let failures_before: u64 = statuses
        .iter()
        .map(|s| s.failures.load(Ordering::Relaxed))
        .sum();
    for _ in 0..4 {
        let mut more = Vec::new();
        workload.generate(1_500, &mut more);
        write_journals(&data_dir, SHARDS, &more, 128).expect("journal while the store is down");
        std::thread::sleep(Duration::from_millis(300));
    }
    let during: Vec<u64> = (0..usize::from(SHARDS)).map(flushed).collect();
    assert_eq!(
        before, during,
        "nothing can be flushed while PostgreSQL is unreachable"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            statuses
                .iter()
                .map(|s| s.failures.load(Ordering::Relaxed))
                .sum::<u64>()
                > failures_before
        }),
        "the flushers noticed and are retrying"
    );
    assert!(statuses.iter().any(|s| s.last_error().is_some()));
    let lag: u64 = (0..usize::from(SHARDS))
        .map(|s| statuses[s].lag_records(workload.engines[s].last_sequence()))
        .sum();
    assert!(lag >= 6_000, "lag {lag} records");

    // Back: they catch up by themselves.
    proxy.set_up(true);
    let mut tail = Vec::new();
    workload.drain_legs(&mut tail);
    write_journals(&data_dir, SHARDS, &tail, 128).expect("journal");
    assert!(
        wait_until(Duration::from_secs(90), || caught_up(&workload.engines)),
        "catch-up after the outage: {:?} of {:?}",
        (0..usize::from(SHARDS)).map(flushed).collect::<Vec<_>>(),
        workload
            .engines
            .iter()
            .map(|e| e.last_sequence())
            .collect::<Vec<_>>()
    );
    stop.store(true, Ordering::Release);
    for thread in threads {
        thread
            .join()
            .expect("thread")
            .expect("flusher ended cleanly");
    }
    let report = reconcile(
        &ReconcileConfig {
            data_dir: data_dir.clone(),
            shard_count: SHARDS,
            engine_config: EngineConfig::default(),
            target: pg.target.clone(),
        },
        &Silent,
    )
    .expect("reconcile");
    assert!(report.ok(), "{}", report.summary());
    let _ = std::fs::remove_dir_all(&dir);
}
