//! The publisher against a real NATS JetStream (a `nats-server -js` of the test's own, on a
//! free loopback port, in a temporary folder): exactly once, gapless and in order per shard
//! across publisher stops mid-flight and a SIGKILLed and restarted NATS; bad input refused
//! with clear errors.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

mod support;
use paycore_engine::EngineConfig;
use paycore_publish::event_json;
use paycore_publish::sink::JetStreamConfig;
use paycore_publish::threads::start_publishers;
use support::*;

/// Every message of the shard's stream, in stream order: (Nats-Msg-Id, payload).
async fn read_stream(
    url: &str,
    jetstream: &JetStreamConfig,
    shard: u16,
    count: usize,
) -> Vec<(String, String)> {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    let stream = context
        .get_stream(jetstream.stream_name(shard))
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < count && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(3), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((id, String::from_utf8_lossy(&message.payload).into_owned()));
    }
    // Nothing more than expected either.
    let extra = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
    assert!(
        !matches!(extra, Ok(Some(Ok(_)))),
        "shard {shard}: more messages than events"
    );
    out
}

fn check_stream(expected: &[Vec<(String, String)>], url: &str, jetstream: &JetStreamConfig) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (shard, events) in expected.iter().enumerate() {
        let got = runtime.block_on(read_stream(url, jetstream, shard as u16, events.len()));
        assert_eq!(got.len(), events.len(), "shard {shard}: event count");
        for (i, (want, found)) in events.iter().zip(&got).enumerate() {
            assert_eq!(
                want,
                found,
                "shard {shard}: message {i} (stream sequence {})",
                i + 1
            );
        }
    }
}

#[test]
fn exactly_once_in_order_across_publisher_stops_and_a_nats_kill() {
    let Some(mut nats) = Nats::start("crash") else {
        return;
    };
    let dir = data_dir("crash");
    let config = workload_config(2, 500);
    let expected = write_journal(&dir, config, 20_000);
    let total: usize = expected.iter().map(Vec::len).sum();
    let jetstream = test_config(&nats.url(), "crash");
    let watermarks = || vec![None::<Arc<AtomicU64>>; usize::from(config.shards)];
    // Publishers stopped mid-flight three times (in-flight messages abandoned), and NATS
    // SIGKILLed and restarted under a running publisher.
    for round in 0..4 {
        let handles = start_publishers(
            &dir,
            &engine_config(&config),
            watermarks(),
            &jetstream,
            4096,
            false,
        )
        .expect("start");
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        if round == 2 {
            nats.kill();
            std::thread::sleep(Duration::from_millis(300));
            nats.spawn();
            std::thread::sleep(Duration::from_millis(500));
        }
        handles.stop();
    }
    let handles = start_publishers(
        &dir,
        &engine_config(&config),
        watermarks(),
        &jetstream,
        4096,
        true,
    )
    .expect("start");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !handles.all_finished() {
        assert!(Instant::now() < deadline, "publishers did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    handles.join().expect("publishers");
    eprintln!("{total} events published; checking the streams");
    check_stream(&expected, &nats.url(), &jetstream);
    // A second run finds everything in the streams and sends nothing again.
    let handles = start_publishers(
        &dir,
        &engine_config(&config),
        watermarks(),
        &jetstream,
        4096,
        true,
    )
    .expect("start");
    handles.join().expect("publishers");
    check_stream(&expected, &nats.url(), &jetstream);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_refused_with_clear_errors() {
    // A malformed URL: refused before anything starts.
    let config = JetStreamConfig::new("nats://127.0.0.1:notaport");
    let error = start_publishers(
        Path::new("/nonexistent"),
        &EngineConfig::default(),
        vec![None],
        &config,
        16,
        true,
    )
    .expect_err("malformed url");
    assert!(error.contains("--nats-url"), "{error}");
    let Some(nats) = Nats::start("bad") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = data_dir("bad");
    let workload = workload_config(1, 20);
    let _ = write_journal(&dir, workload, 100);
    // A stream that exists with other settings: named, never changed.
    let jetstream = test_config(&nats.url(), "other");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let context = async_nats::jetstream::new(client);
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: jetstream.stream_name(0),
                subjects: vec![format!("{}.>", jetstream.subject_prefix)],
                ..Default::default()
            })
            .await
            .expect("create");
    });
    let handles = start_publishers(
        &dir,
        &engine_config(&workload),
        vec![None],
        &jetstream,
        16,
        true,
    )
    .expect("start");
    let error = handles.join().expect_err("other settings");
    assert!(error.contains("exists with other settings"), "{error}");
    // A foreign message at the end of our stream: the publisher will not guess.
    let jetstream = test_config(&nats.url(), "foreign");
    let handles = start_publishers(
        &dir,
        &engine_config(&workload),
        vec![None],
        &jetstream,
        16,
        true,
    )
    .expect("start");
    handles.join().expect("first run");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let context = async_nats::jetstream::new(client);
        context
            .publish(
                jetstream.subject(event_json::Topic::User, 0),
                "hello".into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    });
    let handles = start_publishers(
        &dir,
        &engine_config(&workload),
        vec![None],
        &jetstream,
        16,
        true,
    )
    .expect("start");
    let error = handles.join().expect_err("foreign message");
    assert!(error.contains("is not a paycore event"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Events/s into JetStream (file storage) from a journal of transfers, beside a naive loop
/// that awaits each publish's acknowledgement before the next.
/// `cargo nextest run --release -p paycore-publish --test jetstream measure --run-ignored only --no-capture`
#[test]
#[ignore = "measurement"]
fn measure_publish_rate() {
    let Some(nats) = Nats::start("measure") else {
        return;
    };
    let dir = data_dir("measure");
    let mut config = workload_config(1, 10_000);
    config.transfers_only = true;
    let expected = write_journal(&dir, config, 200_000);
    let total: usize = expected.iter().map(Vec::len).sum();
    let jetstream = test_config(&nats.url(), "measure");
    let started = Instant::now();
    let handles = start_publishers(
        &dir,
        &engine_config(&config),
        vec![None],
        &jetstream,
        8192,
        true,
    )
    .expect("start");
    handles.join().expect("publishers");
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "MEASURE pipelined publisher: {total} events in {elapsed:.2} s = {:.0} events/s (journal replay, JSON, chained publish, ack)",
        total as f64 / elapsed
    );
    // The naive loop: the same payloads, one publish per await.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let naive = 20_000.min(total);
    let elapsed = runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let context = async_nats::jetstream::new(client);
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: format!("NAIVE_{}", std::process::id()),
                subjects: vec![format!("naive{}", std::process::id())],
                ..Default::default()
            })
            .await
            .expect("stream");
        let started = Instant::now();
        for (id, json) in expected[0].iter().take(naive) {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(json.clone().into())
                .message_id(id);
            context
                .send_publish(format!("naive{}", std::process::id()), publish)
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
        started.elapsed().as_secs_f64()
    });
    eprintln!(
        "MEASURE naive one-publish-per-await: {naive} events in {elapsed:.2} s = {:.0} events/s",
        naive as f64 / elapsed
    );
    let _ = std::fs::remove_dir_all(&dir);
}
