//! The gateway keeps its link to the core (issue 15), with real processes and sockets: a
//! `paycore node` (or a primary and its standby) and a `paycore gateway`, each a child
//! process with its log in a file, driven over HTTP and WebSocket on loopback.
//!
//! - `an_idle_link_outlives_the_idle_timeout`: keep-alive holds the connection through an idle
//!   period three times the idle timeout; the next journey sees no 503 and the log no warning.
//! - `the_gateway_rides_out_a_node_restart`: SIGKILL and restart of the node under a running
//!   gateway: 503 with Retry-After only while it is down; a WebSocket held through the outage
//!   gets every event of its wallets once, in order.
//! - `the_gateway_follows_a_promoted_standby`: `--core P,S`, SIGKILL of P and `paycore promote`
//!   of S under HTTP load: every acknowledged send is applied, none twice.
//! - `a_burst_past_the_event_window_loses_no_event`: the node's in-memory event window is far
//!   smaller than a burst; the WebSocket still gets every event of its user.
//! - `bad_core_addresses_give_clear_errors`: an unreachable address beside a good one, an
//!   address that is not a paycore node, a certificate that does not match.

mod gateway_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gateway_support::{JWT_SECRET, PASSWORD, Response, WEBHOOK_SECRET, call_at};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(90);

fn root(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paycore-link-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("root");
    dir
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// A child process killed when dropped, its stderr in `log`.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[String], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let child = Process::new(env!("CARGO_BIN_EXE_paycore"))
            .args(args)
            .env_remove("DATABASE_URL")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("paycore");
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node on a fixed port (so a restart comes back at the same address).
struct Node {
    proc: Proc,
    dir: PathBuf,
    addr: SocketAddr,
    args: Vec<String>,
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Node {
        std::fs::create_dir_all(dir).expect("node dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
            .parse()
            .expect("addr");
        let mut args: Vec<String> = vec![
            "node".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--shards".into(),
            "1".into(),
            "--no-flush".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut node = Node {
            proc: Proc::spawn(&args, &dir.with_extension("log")),
            dir: dir.to_path_buf(),
            addr,
            args,
        };
        node.wait_listening();
        node
    }

    /// Waits for the node's start line in its log (bounded).
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.dir.join("tls/cert.der").exists() && self.proc.log().contains("QUIC on") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node did not start: {}", self.proc.log());
    }

    fn restart(&mut self) {
        self.proc.kill();
        let log = self.dir.with_extension("log2");
        self.proc = Proc::spawn(&self.args, &log);
    }

    fn trust(&self) -> PathBuf {
        self.dir.join("tls/cert.der")
    }
}

/// A `paycore gateway` child process.
struct Gateway {
    proc: Proc,
    addr: SocketAddr,
}

impl Gateway {
    fn start(dir: &Path, core: &str, trust: &str, extra: &[&str]) -> Gateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let mut args: Vec<String> = [
            "gateway",
            "--core",
            core,
            "--trust",
            trust,
            "--listen",
            &addr.to_string(),
            "--jwt-secret",
            JWT_SECRET,
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--rate-limits",
            "off",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push("--sqlite".into());
        args.push(dir.join("gateway.sqlite").display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Gateway {
            proc: Proc::spawn(&args, &dir.join("gateway.log")),
            addr,
        }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> Response {
        let body = body.to_string();
        let body = (method != "GET").then_some(body.as_bytes());
        call_at(self.addr, method, path, token, &[], body).await
    }

    /// Waits until `/ready` answers 200 (bounded).
    async fn ready(&self) {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                let response = call_at(self.addr, "GET", "/ready", None, &[], None).await;
                if response.status == 200 {
                    return;
                }
                last = response.text();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway never ready: {last}\n{}", self.proc.log());
    }

    async fn user(&self, email: &str) -> String {
        let registered = self
            .call(
                "POST",
                "/api/v1/users/register",
                None,
                &json!({"email": email, "password": PASSWORD, "full_name": "Link Test"}),
            )
            .await;
        assert_eq!(registered.status, 201, "{}", registered.text());
        let login = self
            .call(
                "POST",
                "/api/v1/users/login",
                None,
                &json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text());
        login.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    async fn wallet(&self, token: &str) -> String {
        let opened = self
            .call(
                "POST",
                "/api/v1/wallets",
                Some(token),
                &json!({"currency": "USD"}),
            )
            .await;
        assert_eq!(opened.status, 201, "{}", opened.text());
        opened.json()["id"].as_str().expect("id").to_owned()
    }

    async fn deposit(&self, wallet: &str, amount: &str, id: &str) -> Response {
        let body = json!({
            "id": id,
            "type": "deposit.succeeded",
            "data": {"wallet_id": wallet, "amount": amount, "currency": "USD", "reference": "bank"},
        })
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let signature =
            paycore_gateway::sign_webhook(WEBHOOK_SECRET.as_bytes(), now, body.as_bytes());
        call_at(
            self.addr,
            "POST",
            "/api/v1/webhooks/provider",
            None,
            &[("paycore-signature", &signature)],
            Some(body.as_bytes()),
        )
        .await
    }

    async fn send(&self, token: &str, key: &str, route: (&str, &str), amount: &str) -> Response {
        let (from, to) = route;
        let body = json!({"from_wallet_id": from, "to_wallet_id": to, "amount": amount, "currency": "USD"})
            .to_string();
        call_at(
            self.addr,
            "POST",
            "/api/v1/transactions/send",
            Some(token),
            &[("idempotency-key", key)],
            Some(body.as_bytes()),
        )
        .await
    }

    async fn balance(&self, token: &str, wallet: &str) -> String {
        let response = self
            .call(
                "GET",
                &format!("/api/v1/wallets/{wallet}"),
                Some(token),
                &Value::Null,
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["balance"]
            .as_str()
            .expect("balance")
            .to_owned()
    }

    /// Sends `key` until it is acknowledged (201), bounded; the answers before.
    async fn send_until_done(
        &self,
        token: &str,
        key: &str,
        route: (&str, &str),
        amount: &str,
    ) -> Vec<u16> {
        let mut answers = Vec::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let response = self.send(token, key, route, amount).await;
            answers.push(response.status);
            if response.status == 201 {
                return answers;
            }
            assert_eq!(response.status, 503, "{}", response.text());
            assert!(
                response.header("retry-after").is_some(),
                "503 without Retry-After"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{key} never acknowledged: {answers:?}\n{}", self.proc.log());
    }

    /// WARN and ERROR lines of the gateway's log after `skip` bytes.
    fn warnings_after(&self, skip: usize) -> Vec<String> {
        let log = self.proc.log();
        log.get(skip..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"") || l.contains(" WARN "))
            .map(str::to_owned)
            .collect()
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn websocket(gateway: &Gateway, token: &str, query: &str) -> Socket {
    let url = format!(
        "ws://{}/api/v1/ws?access_token={token}{query}",
        gateway.addr
    );
    let mut socket = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0;
    socket
        .send(Message::Text(
            json!({"type": "subscribe.transactions"}).to_string().into(),
        ))
        .await
        .expect("subscribe");
    socket
}

/// Every message until `enough` says stop or `quiet` passes without one (bounded by WAIT).
async fn collect(
    socket: &mut Socket,
    quiet: Duration,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !enough(&out) {
        match tokio::time::timeout(quiet, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(value) = serde_json::from_str::<Value>(text.as_str()) {
                    out.push(value);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    out
}

/// The `transaction.sent` events among `messages`: no id twice, and their count.
fn sent_events(messages: &[Value]) -> usize {
    let sent: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "transaction.sent")
        .collect();
    let mut ids: Vec<&str> = sent
        .iter()
        .map(|m| {
            m["event_id"]
                .as_str()
                .unwrap_or_else(|| panic!("an event without an event_id: {m}"))
        })
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "an event arrived twice");
    assert!(
        messages.iter().all(|m| m["type"] != "notification"
            || (m["data"]["type"] != "events.lagged" && m["data"]["type"] != "events.unavailable")),
        "the stream lost events"
    );
    total
}

/// Balance versions of one wallet's `balance.updated` events are strictly increasing.
fn in_order(messages: &[Value]) {
    let versions: Vec<u64> = messages
        .iter()
        .filter(|m| m["type"] == "balance.updated")
        .filter_map(|m| m["data"]["version"].as_u64())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "balance events out of order: {versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_outlives_the_idle_timeout() {
    let root = root("idle");
    let node = Node::start(
        &root.join("node"),
        &[
            "--quic-idle-timeout-ms",
            "1500",
            "--quic-keep-alive-ms",
            "500",
        ],
    );
    let gateway = Gateway::start(
        &root,
        &node.addr.to_string(),
        &node.trust().display().to_string(),
        &[
            "--core-idle-timeout-ms",
            "1500",
            "--core-keep-alive-ms",
            "400",
        ],
    );
    gateway.ready().await;
    let alice = gateway.user("idle-alice@example.com").await;
    let bob = gateway.user("idle-bob@example.com").await;
    let from = gateway.wallet(&alice).await;
    let to = gateway.wallet(&bob).await;
    let started_log = gateway.proc.log().len();

    // Idle for three idle timeouts: the node would close a silent connection after 1.5 s.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let ready = call_at(gateway.addr, "GET", "/ready", None, &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let deposit = gateway.deposit(&from, "100.00", "idle-dep-1").await;
    assert_eq!(deposit.status, 200, "{}", deposit.text());
    let sent = gateway
        .send(&alice, "idle-send-1", (&from, &to), "10.00")
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    assert_eq!(gateway.balance(&bob, &to).await, "10.00");
    let warnings = gateway.warnings_after(started_log);
    assert!(warnings.is_empty(), "warnings while idle: {warnings:#?}");
    drop(gateway);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_rides_out_a_node_restart() {
    let root = root("restart");
    let mut node = Node::start(&root.join("node"), &[]);
    let gateway = Gateway::start(
        &root,
        &node.addr.to_string(),
        &node.trust().display().to_string(),
        &["--core-wait-ms", "1000"],
    );
    gateway.ready().await;
    let alice = gateway.user("restart-alice@example.com").await;
    let bob = gateway.user("restart-bob@example.com").await;
    let from = gateway.wallet(&alice).await;
    let to = gateway.wallet(&bob).await;
    let deposit = gateway.deposit(&from, "1000.00", "restart-dep-1").await;
    assert_eq!(deposit.status, 200, "{}", deposit.text());
    let mut socket = websocket(&gateway, &alice, "").await;

    const SENDS: usize = 30;
    let mut refused = 0;
    for i in 0..SENDS {
        if i == 10 {
            // SIGKILL: nothing is flushed, nothing said goodbye.
            node.proc.kill();
            let down = gateway
                .send(&alice, "restart-during", (&from, &to), "1.00")
                .await;
            assert_eq!(down.status, 503, "{}", down.text());
            assert_eq!(down.code(), "core_unavailable");
            assert!(down.header("retry-after").is_some());
            refused += 1;
            node.restart();
        }
        let answers = gateway
            .send_until_done(&alice, &format!("restart-{i}"), (&from, &to), "1.00")
            .await;
        refused += answers.len() - 1;
    }
    // The request refused while down is sent again with its key, once the node is back.
    gateway
        .send_until_done(&alice, "restart-during", (&from, &to), "1.00")
        .await;
    assert_eq!(
        gateway.balance(&bob, &to).await,
        format!("{}.00", SENDS + 1)
    );
    let messages = collect(&mut socket, Duration::from_secs(5), |m| {
        m.iter().filter(|m| m["type"] == "transaction.sent").count() > SENDS
    })
    .await;
    assert_eq!(sent_events(&messages), SENDS + 1, "{messages:#?}");
    in_order(&messages);
    eprintln!("node restart: {refused} requests answered 503 while the node was down");
    drop(gateway);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_core_addresses_give_clear_errors() {
    let root = root("bad");
    let node = Node::start(&root.join("node"), &[]);
    let other = Node::start(&root.join("other"), &[]);
    let trust = node.trust().display().to_string();
    // Nothing listens on this UDP port.
    let nowhere = format!("127.0.0.1:{}", free_udp_port());
    // A TCP (HTTP) server: not a paycore node.
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let not_paycore = http.local_addr().expect("addr").to_string();

    // An unreachable address before a good one: the good one serves.
    let dir = root.join("g1");
    std::fs::create_dir_all(&dir).expect("dir");
    let mixed = Gateway::start(&dir, &format!("{nowhere},{}", node.addr), &trust, &[]);
    let started = Instant::now();
    mixed.ready().await;
    assert!(started.elapsed() < Duration::from_secs(30));
    let token = mixed.user("bad-mixed@example.com").await;
    mixed.wallet(&token).await;

    // Only bad addresses: 503 within the wait, never a hang or a 500, and the log says why.
    for (label, core, trust) in [
        ("nothing", nowhere.clone(), trust.clone()),
        ("not-paycore", not_paycore.clone(), trust.clone()),
        // `other` is a paycore node, but its certificate is not the trusted one.
        ("certificate", other.addr.to_string(), trust.clone()),
    ] {
        let dir = root.join(label);
        std::fs::create_dir_all(&dir).expect("dir");
        let gateway = Gateway::start(&dir, &core, &trust, &["--core-wait-ms", "1500"]);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(gateway.addr).await.is_err() {
            assert!(Instant::now() < deadline, "{}", gateway.proc.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let asked = Instant::now();
        let ready = call_at(gateway.addr, "GET", "/ready", None, &[], None).await;
        assert_eq!(ready.status, 503, "{label}: {}", ready.text());
        let register = gateway
            .call(
                "POST",
                "/api/v1/users/register",
                None,
                &json!({"email": format!("bad-{label}@example.com"), "password": PASSWORD, "full_name": "X"}),
            )
            .await;
        assert!(
            register.status == 503 || register.status == 201,
            "{label}: {}",
            register.text()
        );
        let login = gateway
            .call(
                "POST",
                "/api/v1/users/login",
                None,
                &json!({"email": format!("bad-{label}@example.com"), "password": PASSWORD}),
            )
            .await;
        if let Some(token) = login.json()["access_token"].as_str() {
            let opened = gateway
                .call(
                    "POST",
                    "/api/v1/wallets",
                    Some(token),
                    &json!({"currency": "USD"}),
                )
                .await;
            assert_eq!(opened.status, 503, "{label}: {}", opened.text());
            assert_eq!(opened.code(), "core_unavailable");
            assert!(opened.header("retry-after").is_some());
        }
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "{label}: too slow"
        );
        let expected = match label {
            "certificate" => "certificate",
            _ => "no QUIC handshake",
        };
        // The first round of attempts ends within the connect timeout (2 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = gateway.proc.log();
        while !(log.contains(expected) && log.contains(&core)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            log = gateway.proc.log();
        }
        assert!(
            log.contains(expected) && log.contains(&core),
            "{label}: the log does not say why: {log}"
        );
        // Several rounds of attempts later, still one warning per cause.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let log = gateway.proc.log();
        let warnings = log.lines().filter(|l| l.contains("WARN")).count();
        assert!(warnings <= 4, "{label}: a warning per retry: {log}");
    }
    drop(http);
    drop(mixed);
    drop((node, other));
    let _ = std::fs::remove_dir_all(&root);
}

/// One send straight to a gateway address (for tasks that do not hold the gateway).
async fn send_at(addr: SocketAddr, token: &str, key: &str, route: (&str, &str)) -> u16 {
    let (from, to) = route;
    let body =
        json!({"from_wallet_id": from, "to_wallet_id": to, "amount": "1.00", "currency": "USD"})
            .to_string();
    call_at(
        addr,
        "POST",
        "/api/v1/transactions/send",
        Some(token),
        &[("idempotency-key", key)],
        Some(body.as_bytes()),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_follows_a_promoted_standby() {
    let root = root("promote");
    let mut primary = Node::start(&root.join("a"), &["--replication", "sync"]);
    let token = root.join("a").join("replication.token");
    let standby = Node::start(
        &root.join("b"),
        &[
            "--standby-of",
            &primary.addr.to_string(),
            "--primary-trust",
            &primary.trust().display().to_string(),
            "--replication-token-file",
            &token.display().to_string(),
            "--replication",
            "async",
            "--replication-alone-after-ms",
            "200",
        ],
    );
    let gateway = Gateway::start(
        &root,
        &format!("{},{}", primary.addr, standby.addr),
        &format!(
            "{},{}",
            primary.trust().display(),
            standby.trust().display()
        ),
        &["--core-wait-ms", "3000"],
    );
    gateway.ready().await;
    let alice = gateway.user("promote-alice@example.com").await;
    let bob = gateway.user("promote-bob@example.com").await;
    let from = gateway.wallet(&alice).await;
    let to = gateway.wallet(&bob).await;
    let deposit = gateway.deposit(&from, "1000.00", "promote-dep-1").await;
    assert_eq!(deposit.status, 200, "{}", deposit.text());

    // Four senders, 40 sends each, one at a time: what each answer was, and when.
    const TASKS: usize = 4;
    const SENDS: usize = 40;
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (addr, alice, from, to) = (gateway.addr, alice.clone(), from.clone(), to.clone());
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..SENDS {
                let key = format!("promote-{t}-{i}");
                let status = send_at(addr, &alice, &key, (&from, &to)).await;
                assert!(status == 201 || status == 503, "{key}: {status}");
                if status == 201 {
                    acknowledged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                answers.push((key, status, Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }));
    }
    let deadline = Instant::now() + WAIT;
    while acknowledged.load(std::sync::atomic::Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    primary.proc.kill();
    let promoted_at = Instant::now();
    let output = Process::new(env!("CARGO_BIN_EXE_paycore"))
        .args(["promote", "--json", "--server", &standby.addr.to_string()])
        .arg("--trust")
        .arg(standby.trust())
        .output()
        .expect("paycore promote");
    assert!(
        output.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("sender"));
    }
    let first_after = answers
        .iter()
        .filter(|(_, status, at)| *status == 201 && *at > promoted_at)
        .map(|(_, _, at)| at.duration_since(promoted_at))
        .min()
        .expect("an acknowledged send after the promotion");
    // What was refused during the failover is sent again with its key: applied once.
    let refused: Vec<&String> = answers
        .iter()
        .filter(|(_, status, _)| *status == 503)
        .map(|(key, _, _)| key)
        .collect();
    for key in &refused {
        gateway
            .send_until_done(&alice, key, (&from, &to), "1.00")
            .await;
    }
    let total = TASKS * SENDS;
    assert_eq!(gateway.balance(&bob, &to).await, format!("{total}.00"));
    assert_eq!(
        gateway.balance(&alice, &from).await,
        format!("{}.00", 1000 - total)
    );
    eprintln!(
        "failover: promote -> first acknowledged HTTP send {} ms; {} sends answered 503 during it",
        first_after.as_millis(),
        refused.len()
    );
    drop(gateway);
    drop((primary, standby));
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_the_event_window_loses_no_event() {
    use paycore_client::{Client, ClientConfig};
    use paycore_engine::{
        Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, UserId, WalletId,
    };
    use paycore_protocol::CommandResult;

    let root = root("burst");
    // A window of 500 events: the burst below makes ~60,000.
    let node = Node::start(&root.join("node"), &["--events-kept-max", "500"]);
    let gateway = Gateway::start(
        &root,
        &node.addr.to_string(),
        &node.trust().display().to_string(),
        &[],
    );
    gateway.ready().await;
    let alice = gateway.user("burst-alice@example.com").await;
    let bob = gateway.user("burst-bob@example.com").await;
    let from = gateway.wallet(&alice).await;
    let to = gateway.wallet(&bob).await;
    let deposit = gateway.deposit(&from, "1000.00", "burst-dep-1").await;
    assert_eq!(deposit.status, 200, "{}", deposit.text());
    let mut socket = websocket(&gateway, &alice, "").await;
    // The subscription is acknowledged before the burst starts.
    let subscribed = collect(&mut socket, Duration::from_secs(5), |m| !m.is_empty()).await;
    assert_eq!(subscribed[0]["type"], "subscribed", "{subscribed:?}");
    // A second client hears of one send, and goes away with its cursor.
    let mut leaving = websocket(&gateway, &alice, "").await;
    let _ = collect(&mut leaving, Duration::from_secs(5), |m| !m.is_empty()).await;
    assert_eq!(
        send_at(gateway.addr, &alice, "burst-before", (&from, &to)).await,
        201
    );
    let before = collect(&mut leaving, Duration::from_secs(10), |m| {
        m.iter().any(|m| m["type"] == "transaction.sent")
    })
    .await;
    let cursor = before
        .iter()
        .find(|m| m["type"] == "transaction.sent")
        .and_then(|m| m["cursor"].as_str())
        .expect("a cursor")
        .to_owned();
    drop(leaving);

    let client = Client::connect(ClientConfig::new(node.addr, node.trust()))
        .await
        .expect("client");
    let usd = CurrencyCode::parse("USD").expect("usd");
    let command = |key: String, op: Op| Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    };
    // A thousand wallets the gateway has not seen: its follower asks the node about each
    // (a query per wallet), so it falls far behind the burst.
    const WALLETS: u64 = 1000;
    let opened = client
        .submit(
            (0..WALLETS as u128)
                .map(|u| {
                    command(
                        format!("burst-open-{u}"),
                        Op::OpenWallet {
                            user: UserId(900 + u),
                            currency: usd,
                        },
                    )
                })
                .collect(),
        )
        .await
        .expect("open");
    let wallets: Vec<WalletId> = opened
        .into_iter()
        .map(|r| match r {
            CommandResult::Outcome(Outcome::Ok(Applied::WalletOpened(w))) => w,
            other => panic!("open: {other:?}"),
        })
        .collect();
    client
        .submit(vec![command(
            "burst-fund".into(),
            Op::Deposit {
                wallet: wallets[0],
                amount: 1 << 40,
                currency: usd,
            },
        )])
        .await
        .expect("fund");
    // Half the burst, Alice's sends through the gateway, the other half: her events end up
    // ~30,000 events behind the end of the burst.
    const SENDS: usize = 10;
    const BATCHES: u64 = 20;
    const BATCH: u64 = 1000;
    let started = Instant::now();
    for b in 0..BATCHES {
        if b == BATCHES / 2 {
            for i in 0..SENDS {
                let key = format!("burst-send-{i}");
                assert_eq!(send_at(gateway.addr, &alice, &key, (&from, &to)).await, 201);
            }
        }
        let batch = (0..BATCH)
            .map(|i| {
                command(
                    format!("burst-{b}-{i}"),
                    Op::Transfer {
                        from: wallets[0],
                        to: wallets[(1 + (b * BATCH + i) % (WALLETS - 1)) as usize],
                        amount: 1,
                        currency: usd,
                    },
                )
            })
            .collect();
        client.submit(batch).await.expect("burst batch");
    }
    eprintln!(
        "burst: {} transfers in {} ms",
        BATCHES * BATCH,
        started.elapsed().as_millis()
    );
    let messages = collect(&mut socket, Duration::from_secs(15), |m| {
        m.iter().filter(|m| m["type"] == "transaction.sent").count() > SENDS
    })
    .await;
    assert_eq!(sent_events(&messages), SENDS + 1, "{messages:#?}");
    in_order(&messages);
    // The client that left comes back with its cursor: it gets what it missed, from the
    // node's event archive (the memory window holds 500 events, the burst made ~60,000).
    let mut back = websocket(
        &gateway,
        &alice,
        &format!("&from={cursor}&subscribe=transactions"),
    )
    .await;
    let missed = collect(&mut back, Duration::from_secs(15), |m| {
        m.iter().filter(|m| m["type"] == "transaction.sent").count() >= SENDS
    })
    .await;
    assert_eq!(sent_events(&missed), SENDS, "{missed:#?}");
    drop(gateway);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

/// The figures of BENCHMARKS.md "Core link" (run in release, by hand):
/// `cargo nextest run --release -p paycore --test core_link --run-ignored only --no-capture`.
/// Reconnect time after a node restart (the node's start line -> the first 200 through the
/// gateway), failover time (promote -> first acknowledged HTTP send), and the event feed's
/// catch-up rate from the journal's event archive (node -> raw subscriber, and node ->
/// gateway -> a resumed WebSocket).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: run in release by hand"]
async fn measure_reconnect_failover_and_catch_up() {
    use paycore_client::{Client, ClientConfig};
    use paycore_engine::{
        Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, UserId, WalletId,
    };
    use paycore_protocol::{CommandResult, Frame};

    const ROUNDS: usize = 5;
    const SENDERS: u64 = 200;
    let root = root("measure");

    // 1. Reconnect after a restart.
    let mut node = Node::start(&root.join("node"), &["--events-kept-max", "1000"]);
    let gateway = Gateway::start(
        &root,
        &node.addr.to_string(),
        &node.trust().display().to_string(),
        &[],
    );
    gateway.ready().await;
    let alice = gateway.user("measure-alice@example.com").await;
    let wallet = gateway.wallet(&alice).await;
    let mut reconnect_ms = Vec::new();
    for round in 0..ROUNDS {
        node.proc.kill();
        node.restart();
        // The start line is the node's "ready".
        let log = node.dir.with_extension("log2");
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("QUIC on")
        {
            assert!(Instant::now() < deadline, "node did not restart");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ready = Instant::now();
        loop {
            let response = gateway
                .call(
                    "GET",
                    &format!("/api/v1/wallets/{wallet}"),
                    Some(&alice),
                    &Value::Null,
                )
                .await;
            if response.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {}",
                response.text()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        reconnect_ms.push(ready.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!("MEASURE reconnect after restart (node ready -> first 200), ms: {reconnect_ms:.1?}");

    // 3. Catch-up: 200,000 transfers (600,000 events) with a memory window of 1,000 events.
    let client = Client::connect(ClientConfig::new(node.addr, node.trust()))
        .await
        .expect("client");
    let usd = CurrencyCode::parse("USD").expect("usd");
    let command = |key: String, op: Op| Command::Client {
        key: IdempotencyKey::new(key.as_bytes()).expect("key"),
        op,
    };
    let opened = client
        .submit(
            (0..=SENDERS as u128)
                .map(|u| {
                    command(
                        format!("m-open-{u}"),
                        Op::OpenWallet {
                            user: UserId(5000 + u),
                            currency: usd,
                        },
                    )
                })
                .collect(),
        )
        .await
        .expect("open");
    let wallets: Vec<WalletId> = opened
        .into_iter()
        .map(|r| match r {
            CommandResult::Outcome(Outcome::Ok(Applied::WalletOpened(w))) => w,
            other => panic!("open: {other:?}"),
        })
        .collect();
    // Many senders: each stays inside its tier's daily velocity limit.
    client
        .submit(
            (0..SENDERS)
                .map(|w| {
                    command(
                        format!("m-fund-{w}"),
                        Op::Deposit {
                            wallet: wallets[w as usize],
                            amount: 1 << 30,
                            currency: usd,
                        },
                    )
                })
                .collect(),
        )
        .await
        .expect("fund");
    let mut socket = websocket(&gateway, &alice, "").await;
    let _ = collect(&mut socket, Duration::from_secs(5), |m| !m.is_empty()).await;
    let bob = gateway.user("measure-bob@example.com").await;
    let to = gateway.wallet(&bob).await;
    assert_eq!(
        gateway
            .deposit(&wallet, "100.00", "measure-dep")
            .await
            .status,
        200
    );
    let before = collect(&mut socket, Duration::from_secs(5), |m| {
        m.iter().any(|m| m["cursor"].is_string())
    })
    .await;
    let cursor = before
        .iter()
        .rev()
        .find_map(|m| m["cursor"].as_str())
        .unwrap_or_else(|| panic!("no cursor in {before:?}\n{}", gateway.proc.log()))
        .to_owned();
    drop(socket);
    let status = client.query(paycore_protocol::Query::Status).await;
    let first = match status {
        Ok(paycore_protocol::QueryResult::Status(s)) => s.shards[0].last_sequence + 1,
        other => panic!("status: {other:?}"),
    };
    const BATCHES: u64 = 200;
    const BATCH: u64 = 1000;
    for b in 0..BATCHES {
        let batch = (0..BATCH)
            .map(|i| {
                command(
                    format!("m-{b}-{i}"),
                    Op::Transfer {
                        from: wallets[((b * BATCH + i) % SENDERS) as usize],
                        to: wallets[SENDERS as usize],
                        amount: 1,
                        currency: usd,
                    },
                )
            })
            .collect();
        let results = client.submit(batch).await.expect("batch");
        let applied = results
            .iter()
            .filter(|r| matches!(r, CommandResult::Outcome(Outcome::Ok(_))))
            .count();
        assert_eq!(applied, BATCH as usize, "{:?}", results.last());
    }
    assert_eq!(
        send_at(gateway.addr, &alice, "measure-send", (&wallet, &to)).await,
        201
    );
    let last = first + BATCHES * BATCH;
    // Raw: a subscriber from before the burst, through the archive, to its end.
    let started = Instant::now();
    let mut subscription = client.subscribe(vec![(0, first)]).await.expect("subscribe");
    let mut events = 0u64;
    loop {
        match subscription.next().await.expect("frame") {
            Some(Frame::Events {
                sequence,
                events: e,
                ..
            }) => {
                events += e.len() as u64;
                if sequence >= last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let raw = started.elapsed().as_secs_f64();
    eprintln!(
        "MEASURE catch-up node -> subscriber from the archive: {events} events in {raw:.3} s = {:.0} events/s",
        events as f64 / raw
    );
    // Through the gateway: a WebSocket resumed from before the burst gets Alice's send.
    let started = Instant::now();
    let mut back = websocket(
        &gateway,
        &alice,
        &format!("&from={cursor}&subscribe=transactions"),
    )
    .await;
    let got = collect(&mut back, Duration::from_secs(60), |m| {
        m.iter().any(|m| m["type"] == "transaction.sent")
    })
    .await;
    let through = started.elapsed().as_secs_f64();
    assert!(
        got.iter().any(|m| m["type"] == "transaction.sent"),
        "{got:?}"
    );
    eprintln!(
        "MEASURE catch-up through the gateway (resumed WebSocket, {events} events replayed): {through:.3} s = {:.0} events/s",
        events as f64 / through
    );
    drop(back);
    drop(gateway);
    drop(node);

    // 2. Failover: promote -> first acknowledged HTTP send.
    let mut failover_ms = Vec::new();
    for round in 0..3 {
        let dir = root.join(format!("fo{round}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut primary = Node::start(&dir.join("a"), &["--replication", "sync"]);
        let token = dir.join("a").join("replication.token");
        let standby = Node::start(
            &dir.join("b"),
            &[
                "--standby-of",
                &primary.addr.to_string(),
                "--primary-trust",
                &primary.trust().display().to_string(),
                "--replication-token-file",
                &token.display().to_string(),
                "--replication",
                "async",
                "--replication-alone-after-ms",
                "200",
            ],
        );
        let gateway = Gateway::start(
            &dir,
            &format!("{},{}", primary.addr, standby.addr),
            &format!(
                "{},{}",
                primary.trust().display(),
                standby.trust().display()
            ),
            &[],
        );
        gateway.ready().await;
        let alice = gateway.user(&format!("fo{round}-a@example.com")).await;
        let bob = gateway.user(&format!("fo{round}-b@example.com")).await;
        let from = gateway.wallet(&alice).await;
        let to = gateway.wallet(&bob).await;
        assert_eq!(
            gateway
                .deposit(&from, "100.00", &format!("fo{round}"))
                .await
                .status,
            200
        );
        assert_eq!(
            send_at(gateway.addr, &alice, &format!("fo{round}-0"), (&from, &to)).await,
            201
        );
        primary.proc.kill();
        let promote = Instant::now();
        let output = Process::new(env!("CARGO_BIN_EXE_paycore"))
            .args(["promote", "--json", "--server", &standby.addr.to_string()])
            .arg("--trust")
            .arg(standby.trust())
            .output()
            .expect("promote");
        assert!(output.status.success());
        let promoted = promote.elapsed();
        let mut i = 1;
        loop {
            let status = send_at(
                gateway.addr,
                &alice,
                &format!("fo{round}-{i}"),
                (&from, &to),
            )
            .await;
            if status == 201 {
                break;
            }
            i += 1;
            assert!(promote.elapsed() < WAIT);
        }
        failover_ms.push((
            promote.elapsed().as_secs_f64() * 1000.0,
            promoted.as_secs_f64() * 1000.0,
        ));
        drop(gateway);
        drop((primary, standby));
    }
    eprintln!(
        "MEASURE failover (promote start -> first acknowledged HTTP send, of which the promote command), ms: {failover_ms:.1?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
