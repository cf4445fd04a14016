//! The node end to end over real QUIC sockets on loopback, with the client library: batches,
//! idempotent retries, busy backpressure, malformed frames, cross-shard transfers conserving
//! money, and a restart that loses nothing acknowledged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paycore::node::{NodeArgs, start_node, stop_sequencer};
use paycore_client::{Client, ClientConfig};
use paycore_engine::{
    Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, UserId, WalletId,
};
use paycore_protocol::{CommandResult, Query, QueryResult};

fn args(dir: &Path, shards: u16) -> NodeArgs {
    let mut args = NodeArgs::local(dir);
    args.shards = Some(shards);
    args.snapshot_every_records = 1_000_000;
    args.snapshot_every_secs = 3600;
    args
}

/// Closes the node's endpoint, stops its shards and removes its folder.
async fn shut_down(node: paycore::node::Node, dir: &Path) {
    node.role.stop_flushing();
    node.endpoint.close(0u32.into(), b"done");
    stop_sequencer(node.sequencer).await;
    let _ = std::fs::remove_dir_all(dir);
}

fn data_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-node-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn client(server: SocketAddr, dir: &Path) -> Client {
    Client::connect(ClientConfig::new(server, dir.join("tls/cert.der")))
        .await
        .expect("connect")
}

fn usd() -> CurrencyCode {
    CurrencyCode::parse("USD").expect("code")
}

fn command(key: &str, op: Op) -> Command {
    Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    }
}

fn outcome(result: &CommandResult) -> Outcome {
    match result {
        CommandResult::Outcome(outcome) => *outcome,
        other => panic!("not applied: {other:?}"),
    }
}

async fn open_wallets(client: &Client, users: u128, funds: u128) -> Vec<WalletId> {
    let register = client
        .submit(vec![command(
            "usd",
            Op::RegisterCurrency {
                code: usd(),
                scale: 2,
            },
        )])
        .await;
    assert!(outcome(&register.expect("register")[0]).is_ok());
    let opens = (1..=users).map(|u| {
        command(
            &format!("open-{u}"),
            Op::OpenWallet {
                user: UserId(u),
                currency: usd(),
            },
        )
    });
    let wallets: Vec<WalletId> = client
        .submit(opens.collect())
        .await
        .expect("opens")
        .iter()
        .map(|r| match outcome(r) {
            Outcome::Ok(Applied::WalletOpened(wallet)) => wallet,
            other => panic!("{other:?}"),
        })
        .collect();
    let deposits = wallets.iter().enumerate().map(|(i, w)| {
        command(
            &format!("fund-{i}"),
            Op::Deposit {
                wallet: *w,
                amount: funds,
                currency: usd(),
            },
        )
    });
    for result in client.submit(deposits.collect()).await.expect("deposits") {
        assert!(outcome(&result).is_ok());
    }
    wallets
}

async fn balance(client: &Client, wallet: WalletId) -> i128 {
    match client
        .query(Query::WalletById(wallet))
        .await
        .expect("query")
    {
        QueryResult::Wallet(Some(view)) => view.available + view.frozen,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_retries_cross_shard_and_restart_over_quic() {
    let dir = data_dir("e2e");
    let node = start_node(&args(&dir, 2)).await.expect("node starts");
    let client = client(node.listen, &dir).await;
    let wallets = open_wallets(&client, 20, 10_000).await;

    // A batch of transfers, many between the two shards.
    let transfers: Vec<Command> = (0..200)
        .map(|i| {
            let op = Op::Transfer {
                from: wallets[i % 20],
                to: wallets[(i * 3 + 1) % 20],
                amount: 10,
                currency: usd(),
            };
            command(&format!("t-{i}"), op)
        })
        .collect();
    let first = client.submit(transfers.clone()).await.expect("transfers");
    assert_eq!(first.len(), 200);
    assert!(
        first
            .iter()
            .all(|r| matches!(r, CommandResult::Outcome(o) if o.is_ok())),
        "{first:?}"
    );
    // The same batch again: same keys, same first outcomes, nothing applied twice.
    let again = client.submit(transfers.clone()).await.expect("retry");
    assert_eq!(again, first);

    // Legs settle; then every user balance adds up to what was deposited.
    let mut total = 0;
    for _ in 0..200 {
        let QueryResult::Status(status) = client.query(Query::Status).await.expect("status") else {
            panic!()
        };
        if status.shards.iter().all(|s| s.transfers_in_flight == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut before = Vec::new();
    for wallet in &wallets {
        let b = balance(&client, *wallet).await;
        before.push(b);
        total += b;
    }
    assert_eq!(total, 20 * 10_000, "money conserved across shards");

    // Restart the node on the same folder: everything acknowledged is there.
    client.close();
    node.endpoint.close(0u32.into(), b"restart");
    node.endpoint.wait_idle().await;
    stop_sequencer(node.sequencer).await;
    let node = start_node(&args(&dir, 2)).await.expect("node restarts");
    let client = self::client(node.listen, &dir).await;
    for (wallet, expected) in wallets.iter().zip(&before) {
        assert_eq!(balance(&client, *wallet).await, *expected);
    }
    let replayed = client.submit(transfers).await.expect("retry after restart");
    assert_eq!(replayed, first, "idempotency survives the restart");
    client.close();
    shut_down(node, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_backpressure_and_retries() {
    let dir = data_dir("busy");
    let mut node_args = args(&dir, 1);
    node_args.ring_requests_max = 1;
    let node = start_node(&node_args).await.expect("node starts");
    let client = std::sync::Arc::new(client(node.listen, &dir).await);
    let wallets = open_wallets(&client, 2, 1_000_000).await;
    // Many single-command requests at once, without retries: some find the ring full.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let client = client.clone();
        let op = Op::Transfer {
            from: wallets[i % 2],
            to: wallets[(i + 1) % 2],
            amount: 1,
            currency: usd(),
        };
        tasks.push(tokio::spawn(async move {
            client
                .submit_once(vec![command(&format!("b-{i}"), op)])
                .await
        }));
    }
    let mut busy_keys = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task").expect("answered")[0] {
            CommandResult::Busy => busy_keys.push(i),
            CommandResult::Outcome(outcome) => assert!(outcome.is_ok()),
            other => panic!("{other:?}"),
        }
    }
    assert!(!busy_keys.is_empty(), "the 1-slot ring never filled");
    // Resubmitting the busy ones with the same keys (with retries) applies each exactly once.
    let retry: Vec<Command> = busy_keys
        .iter()
        .map(|i| {
            let op = Op::Transfer {
                from: wallets[i % 2],
                to: wallets[(i + 1) % 2],
                amount: 1,
                currency: usd(),
            };
            command(&format!("b-{i}"), op)
        })
        .collect();
    for chunk in retry.chunks(50) {
        for result in client.submit(chunk.to_vec()).await.expect("retried") {
            assert!(outcome(&result).is_ok());
        }
    }
    let total = balance(&client, wallets[0]).await + balance(&client, wallets[1]).await;
    assert_eq!(total, 2_000_000);
    client.close();
    shut_down(node, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_frame_and_the_connection_closes() {
    let dir = data_dir("malformed");
    let node = start_node(&args(&dir, 1)).await.expect("node starts");
    let certificate = std::fs::read(dir.join("tls/cert.der")).expect("cert");
    let config = paycore_client::quic_client_config(certificate.into()).expect("tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(node.listen, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    // A frame header claiming version 1, kind 1, then garbage.
    let mut garbage = vec![0u8; 4];
    garbage.extend_from_slice(&[1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
    let len = (garbage.len() - 4) as u32;
    garbage[..4].copy_from_slice(&len.to_le_bytes());
    send.write_all(&garbage).await.expect("write");
    send.finish().expect("finish");
    let answer = recv.read_to_end(1 << 20).await.expect("answer");
    let (_, frame) = paycore_protocol::decode(&answer).expect("an error frame decodes");
    assert!(
        matches!(frame, paycore_protocol::Frame::Error { .. }),
        "{frame:?}"
    );
    // The node closes the connection after a malformed frame.
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
    assert!(closed.is_ok(), "connection still open");
    // A length prefix past the limit is refused from its 4 bytes, before anything is buffered.
    let connection = endpoint
        .connect(node.listen, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    send.write_all(&(1u32 << 30).to_le_bytes())
        .await
        .expect("write");
    let answer = recv.read_to_end(1 << 20).await.expect("answer");
    let (_, frame) = paycore_protocol::decode(&answer).expect("an error frame decodes");
    assert!(
        matches!(frame, paycore_protocol::Frame::Error { code, .. } if code == paycore_protocol::ErrorCode::FRAME_TOO_LARGE),
        "{frame:?}"
    );
    // And it keeps serving others.
    let client = client(node.listen, &dir).await;
    assert!(matches!(
        client.query(Query::Status).await,
        Ok(QueryResult::Status(_))
    ));
    client.close();
    shut_down(node, &dir).await;
}

/// Reads frames until every shard has been delivered up to `last[shard]`; returns
/// (shard, sequence, events) of every `events` frame with events, in arrival order.
async fn collect(
    subscription: &mut paycore_client::Subscription,
    last: &[u64],
) -> Vec<(u16, u64, Vec<paycore_engine::Event>)> {
    let mut reached = vec![0u64; last.len()];
    let mut frames = Vec::new();
    while reached.iter().zip(last).any(|(r, l)| r < l) {
        let frame = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("events keep coming")
            .expect("stream readable")
            .expect("stream open");
        let paycore_protocol::Frame::Events {
            shard,
            sequence,
            events,
            ..
        } = frame
        else {
            panic!("unexpected frame {frame:?}");
        };
        let shard_reached = &mut reached[usize::from(shard)];
        assert!(
            sequence >= *shard_reached,
            "shard {shard}: {sequence} after {shard_reached}"
        );
        *shard_reached = sequence;
        if !events.is_empty() {
            frames.push((shard, sequence, events));
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscription_in_order_and_resumable() {
    let dir = data_dir("events");
    let node = start_node(&args(&dir, 2)).await.expect("node starts");
    let client = client(node.listen, &dir).await;
    let mut subscription = client.subscribe(Vec::new()).await.expect("subscribe");
    let wallets = open_wallets(&client, 10, 1_000).await;
    let transfers: Vec<Command> = (0..50)
        .map(|i| {
            let op = Op::Transfer {
                from: wallets[i % 10],
                to: wallets[(i + 3) % 10],
                amount: 1,
                currency: usd(),
            };
            command(&format!("e-{i}"), op)
        })
        .collect();
    client.submit(transfers).await.expect("transfers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let QueryResult::Status(status) = client.query(Query::Status).await.expect("status") else {
        panic!()
    };
    let last: Vec<u64> = status.shards.iter().map(|s| s.last_sequence).collect();
    let frames = collect(&mut subscription, &last).await;
    let opened = frames
        .iter()
        .flat_map(|(_, _, events)| events)
        .filter(|e| matches!(e, paycore_engine::Event::WalletOpened { .. }))
        .count();
    assert_eq!(opened, 10, "every wallet opening was delivered once");

    // Resume shard 0 from the middle: exactly the same frames from there on, no gap.
    let shard0: Vec<_> = frames.iter().filter(|(s, _, _)| *s == 0).cloned().collect();
    let middle = shard0[shard0.len() / 2].1;
    let mut resumed = client
        .subscribe(vec![(0, middle), (1, last[1] + 1)])
        .await
        .expect("resume");
    // Shard 1 resumes past its end: nothing to wait for there.
    let again = collect(&mut resumed, &[last[0], 0]).await;
    let expected: Vec<_> = shard0
        .into_iter()
        .filter(|(_, s, _)| *s >= middle)
        .collect();
    let got: Vec<_> = again.into_iter().filter(|(s, _, _)| *s == 0).collect();
    assert_eq!(got, expected);
    client.close();
    shut_down(node, &dir).await;
}

/// An idle subscription whose client goes away ends at once: it holds the shards no longer (a
/// node stopping waited 5 s for such a one, then left its shards to the process exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_ends_when_its_client_goes_away() {
    let dir = data_dir("gone");
    let node = start_node(&args(&dir, 1)).await.expect("node starts");
    // Holders of the sequencer with no client connected.
    let before = std::sync::Arc::strong_count(&node.sequencer);
    let client = client(node.listen, &dir).await;
    let _subscription = client.subscribe(Vec::new()).await.expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::sync::Arc::strong_count(&node.sequencer) < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection and its subscription never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.close();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::sync::Arc::strong_count(&node.sequencer) > before {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription of a closed client still runs ({} holders, {before} before)",
            std::sync::Arc::strong_count(&node.sequencer)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shut_down(node, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_pin_the_certificate_fingerprint() {
    let dir = data_dir("pin");
    let node = start_node(&args(&dir, 1)).await.expect("node starts");
    let pinned =
        paycore_client::parse_fingerprint(&node.fingerprint).expect("node prints a fingerprint");
    let mut config = ClientConfig::new(node.listen, dir.join("no-such-file.der"));
    config.trust_sha256 = Some(pinned);
    let client = Client::connect(config.clone())
        .await
        .expect("the pinned certificate is trusted");
    assert!(matches!(
        client.query(Query::Status).await,
        Ok(QueryResult::Status(_))
    ));
    client.close();
    let mut wrong = pinned;
    wrong[0] ^= 1;
    config.trust_sha256 = Some(wrong);
    let refused = Client::connect(config).await;
    assert!(refused.is_err(), "another fingerprint must not be trusted");
    shut_down(node, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_only_clients_with_its_certificates_get_in() {
    let dir = data_dir("mtls");
    std::fs::create_dir_all(&dir).expect("dir");
    // A CA, and a client certificate it signs.
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client_cert = rcgen::CertificateParams::new(vec!["gateway-1".to_string()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    std::fs::write(dir.join("ca.der"), ca_cert.der()).expect("write");
    std::fs::write(dir.join("client.der"), client_cert.der()).expect("write");
    std::fs::write(dir.join("client.key"), client_key.serialize_der()).expect("write");

    let mut node_args = args(&dir, 1);
    node_args.ca = Some(dir.join("ca.der"));
    let node = start_node(&node_args).await.expect("node starts");
    // Without a client certificate: no service.
    let anonymous =
        match Client::connect(ClientConfig::new(node.listen, dir.join("tls/cert.der"))).await {
            Ok(client) => client.query(Query::Status).await.is_ok(),
            Err(_) => false,
        };
    assert!(!anonymous, "a client without a certificate was served");
    // With one the CA signed: served.
    let mut config = ClientConfig::new(node.listen, dir.join("tls/cert.der"));
    config.identity_der_paths = Some((dir.join("client.der"), dir.join("client.key")));
    let client = Client::connect(config)
        .await
        .expect("connect with a certificate");
    assert!(matches!(
        client.query(Query::Status).await,
        Ok(QueryResult::Status(_))
    ));
    client.close();
    shut_down(node, &dir).await;
}

/// Writes a client certificate the CA signs, naming `names`; returns (cert, key) paths.
fn client_identity(
    dir: &Path,
    label: &str,
    names: Vec<String>,
    issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("client key");
    let cert = rcgen::CertificateParams::new(names)
        .expect("client params")
        .signed_by(&key, issuer)
        .expect("client cert");
    let (cert_path, key_path) = (
        dir.join(format!("{label}.der")),
        dir.join(format!("{label}.key")),
    );
    std::fs::write(&cert_path, cert.der()).expect("write");
    std::fs::write(&key_path, key.serialize_der()).expect("write");
    (cert_path, key_path)
}

/// Issue 13: with `--ca` every client certificate could do everything. Now a certificate
/// names its role (`<role>.role.paycore`): a gateway's cannot promote nor set velocity limits,
/// a load generator's cannot freeze, one naming no role only reads; each refusal is a typed
/// `unauthorized` error and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_carry_roles_and_frames_outside_them_are_refused() {
    use paycore_protocol::{AdminCommand, ErrorCode};
    let dir = data_dir("roles");
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    std::fs::write(dir.join("ca.der"), ca_cert.der()).expect("write");
    let mut node_args = args(&dir, 1);
    node_args.ca = Some(dir.join("ca.der"));
    let node = start_node(&node_args).await.expect("node starts");
    let connect = |label: &str, names: Vec<String>| {
        let identity = client_identity(&dir, label, names, &issuer);
        let mut config = ClientConfig::new(node.listen, dir.join("tls/cert.der"));
        config.identity_der_paths = Some(identity);
        Client::connect(config)
    };
    let unauthorized = |result: Result<Vec<CommandResult>, paycore_client::ClientError>| {
        matches!(
            result,
            Err(paycore_client::ClientError::Node { code, .. }) if ErrorCode(code) == ErrorCode::UNAUTHORIZED
        )
    };
    let operator = connect("operator", vec!["operator.role.paycore".into()])
        .await
        .expect("operator");
    let gateway = connect("gateway", vec!["gateway.role.paycore".into()])
        .await
        .expect("gateway");
    let loadgen = connect("loadgen", vec!["loadgen.role.paycore".into()])
        .await
        .expect("loadgen");
    let reader = connect("plain", vec!["client-7".into()])
        .await
        .expect("no role");

    // The gateway registers currencies and opens wallets.
    let register = command(
        "usd",
        Op::RegisterCurrency {
            code: usd(),
            scale: 2,
        },
    );
    assert!(matches!(
        gateway
            .submit(vec![register])
            .await
            .expect("gateway registers")[0],
        CommandResult::Outcome(Outcome::Ok(_))
    ));
    let opened = gateway
        .submit(vec![command(
            "open-1",
            Op::OpenWallet {
                user: UserId(1),
                currency: usd(),
            },
        )])
        .await
        .expect("gateway opens");
    let CommandResult::Outcome(Outcome::Ok(Applied::WalletOpened(wallet))) = opened[0] else {
        panic!("{opened:?}")
    };
    let limit = command(
        "limit",
        Op::SetVelocityLimit {
            currency: usd(),
            tier: paycore_engine::Tier::Unverified,
            limit_24h: Some(1_000),
        },
    );
    // Velocity limits and promotion are the operator's.
    assert!(unauthorized(gateway.submit(vec![limit.clone()]).await));
    let promote = gateway.admin(AdminCommand::Promote { force: false }).await;
    assert!(
        matches!(promote, Err(paycore_client::ClientError::Node { code, .. }) if ErrorCode(code) == ErrorCode::UNAUTHORIZED),
        "{promote:?}"
    );
    assert!(operator.submit(vec![limit]).await.is_ok());
    let promote = operator.admin(AdminCommand::Promote { force: false }).await;
    assert!(
        matches!(promote, Err(paycore_client::ClientError::Node { code, .. }) if ErrorCode(code) == ErrorCode::REFUSED),
        "an operator's promote reaches the node (refused there: it is a primary): {promote:?}"
    );
    // The load generator moves money but does not freeze.
    let deposit = command(
        "dep",
        Op::Deposit {
            wallet,
            amount: 500,
            currency: usd(),
        },
    );
    assert!(loadgen.submit(vec![deposit.clone()]).await.is_ok());
    let freeze = command("freeze", Op::FreezeWallet { wallet });
    assert!(unauthorized(loadgen.submit(vec![freeze.clone()]).await));
    // A batch with one refused command is refused whole: nothing of it applies.
    let mixed = vec![
        command(
            "dep-2",
            Op::Deposit {
                wallet,
                amount: 1,
                currency: usd(),
            },
        ),
        freeze,
    ];
    assert!(unauthorized(loadgen.submit(mixed).await));
    // No role named: reads only, and the connection stays after a refusal.
    assert!(unauthorized(reader.submit(vec![deposit]).await));
    match reader.query(Query::WalletById(wallet)).await {
        Ok(QueryResult::Wallet(Some(view))) => assert_eq!(view.available, 500),
        other => panic!("{other:?}"),
    }
    for client in [operator, gateway, loadgen, reader] {
        client.close();
    }
    shut_down(node, &dir).await;
}

/// Without `--ca` the node refuses a non-loopback listener (any process reaching it could
/// move money) unless the operator says `--allow-unauthenticated-clients`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_port_without_client_authentication_is_refused() {
    let dir = data_dir("open-port");
    let mut node_args = args(&dir, 1);
    node_args.listen = "0.0.0.0:0".parse().expect("addr");
    let refused = start_node(&node_args).await.err().unwrap_or_default();
    assert!(
        refused.contains("without client authentication") && refused.contains("--ca"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/metrics` answers in the Prometheus text format with the shards' counters and the
/// journal commit latency histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_throughput_and_commit_latency() {
    let dir = data_dir("metrics");
    let mut node_args = args(&dir, 2);
    node_args.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let node = start_node(&node_args).await.expect("node starts");
    let metrics = node.metrics.expect("metrics served");
    let client = client(node.listen, &dir).await;
    open_wallets(&client, 10, 1_000).await;
    let response = scrape(metrics).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/plain; version=0.0.4"));
    let value = |line_start: &str| -> u64 {
        response
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in {response}"))
    };
    let commands: u64 = (0..2)
        .map(|s| value(&format!("paycore_shard_commands_total{{shard=\"{s}\"}}")))
        .sum();
    assert!(
        commands >= 21,
        "register (on both shards), 10 opens, 10 deposits: {commands}"
    );
    let commits: u64 = (0..2)
        .map(|s| {
            value(&format!(
                "paycore_shard_journal_commit_seconds_count{{shard=\"{s}\"}}"
            ))
        })
        .sum();
    assert!(commits > 0);
    assert_eq!(value("paycore_node_primary"), 1);
    assert_eq!(value("paycore_node_epoch"), 1);
    for s in 0..2 {
        // No snapshot yet (every 1 M records).
        assert_eq!(
            value(&format!("paycore_shard_snapshot_sequence{{shard=\"{s}\"}}")),
            0
        );
    }
    // The replica follows in the background (low priority, idle CPU): idle, it catches up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = scrape(metrics).await;
        let lags: Vec<u64> = (0..2)
            .map(|s| {
                let name = format!("paycore_shard_snapshot_replica_lag_records{{shard=\"{s}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {text}"))
            })
            .collect();
        if lags == [0, 0] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never caught up: lag {lags:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.close();
    shut_down(node, &dir).await;
}

async fn scrape(metrics: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

/// The node's embedded store (SQLite in the data folder) follows the journal; status shows
/// the flushed sequence and the flush lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_follows_the_journal() {
    let dir = data_dir("store");
    let node = start_node(&args(&dir, 2)).await.expect("node starts");
    let client = client(node.listen, &dir).await;
    open_wallets(&client, 10, 1_000).await;
    assert!(
        dir.join("store.sqlite").exists(),
        "the embedded store is in the data folder"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let json = client
            .admin(paycore_protocol::AdminCommand::Status)
            .await
            .expect("status");
        let status: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert!(
            status["store"]
                .as_str()
                .is_some_and(|s| s.contains("sqlite")),
            "{status}"
        );
        let shards = status["shards"].as_array().expect("shards");
        if shards
            .iter()
            .all(|s| s["flush_lag_records"] == 0 && s["flushed_sequence"] == s["durable_sequence"])
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store never caught up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.close();
    shut_down(node, &dir).await;
}
