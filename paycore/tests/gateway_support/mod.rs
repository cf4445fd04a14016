//! Shared harness of the gateway tests: a real node (QUIC on loopback, journal on disk), a
//! real gateway (HTTP on loopback, SQLite file or a PostgreSQL schema of its own), and a small
//! HTTP/1.1 client over a plain TCP socket (so every byte the tests send is what they wrote).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use paycore_gateway::{Gateway, GatewayArgs};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
pub const JWT_SECRET: &str = "a-test-jwt-secret-of-at-least-32-bytes";
pub const ADMIN_EMAIL: &str = "admin@paycore.test";
/// The TOTP sealing key every test gateway gets (admins need 2FA).
pub const TOTP_KEY: &str = "abababababababababababababababababababababababababababababababab";
pub const PASSWORD: &str = "correct horse battery";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn unique(label: &str) -> String {
    format!(
        "{label}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which store the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A node and a gateway in front of it.
pub struct World {
    pub node: Option<NodeProcess>,
    pub gateway: Option<Gateway>,
    pub dir: PathBuf,
    pub schema: Option<String>,
    pub addr: SocketAddr,
}

/// A `paycore node` child process (the binary under test), killed when dropped.
pub struct NodeProcess {
    child: std::process::Child,
    pub listen: SocketAddr,
    pub trust: PathBuf,
}

impl NodeProcess {
    pub fn start(dir: &Path, shards: u16) -> NodeProcess {
        // A free UDP port: bind, read it, let go (the node binds it right after).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        std::fs::create_dir_all(dir).expect("node folder");
        // The node's log, for a failing test to show.
        let log = std::fs::File::create(dir.with_extension("node.log")).expect("node log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_paycore"))
            .args(["node", "--listen", &listen.to_string(), "--data-dir"])
            .arg(dir)
            // The gateway tests need no SQL mirror of the ledger (and must not write into a
            // DATABASE_URL the environment may name).
            .args(["--shards", &shards.to_string(), "--no-flush"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("paycore node");
        NodeProcess {
            child,
            listen,
            trust: dir.join("tls/cert.der"),
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether PostgreSQL answers; with `CI` set an unreachable one is a failure, not a skip.
pub async fn postgres_available() -> bool {
    let url = database_url();
    let schema = unique("gw_probe");
    let reachable = paycore_gateway::users::Store::postgres(&url, Some(&schema))
        .await
        .is_ok();
    if reachable {
        let _ = paycore_gateway::users::postgres::drop_schema(&url, &schema).await;
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set and PostgreSQL at {url} is unreachable"
    );
    eprintln!("PostgreSQL at {url} unreachable: skipping (set CI to make this a failure)");
    false
}

impl World {
    /// Starts a node and a gateway; `configure` may change the gateway's settings.
    pub async fn start(store: StoreKind, configure: impl FnOnce(&mut GatewayArgs)) -> World {
        World::start_sharded(store, 1, configure).await
    }

    /// Like [`World::start`], with a node of `shards` shards.
    pub async fn start_sharded(
        store: StoreKind,
        shards: u16,
        configure: impl FnOnce(&mut GatewayArgs),
    ) -> World {
        let dir = std::env::temp_dir().join(unique("paycore-gw"));
        let _ = std::fs::remove_dir_all(&dir);
        let node = NodeProcess::start(&dir, shards);
        let mut args = GatewayArgs::defaults(
            node.listen,
            node.trust.display().to_string(),
            "127.0.0.1:0".parse().expect("addr"),
        );
        args.sqlite = dir.join("gateway.sqlite");
        args.jwt_secret = Some(JWT_SECRET.into());
        args.webhook_secret = Some(WEBHOOK_SECRET.into());
        args.totp_key = Some(TOTP_KEY.into());
        args.rate_limits = "off".into();
        args.postgres_url = None;
        let mut schema = None;
        if store == StoreKind::Postgres {
            let name = unique("gw_test");
            args.postgres_url = Some(database_url());
            args.postgres_schema = Some(name.clone());
            schema = Some(name);
        }
        configure(&mut args);
        let gateway = paycore_gateway::start(args).await.expect("gateway");
        let addr = gateway.addr;
        let world = World {
            node: Some(node),
            gateway: Some(gateway),
            dir,
            schema,
            addr,
        };
        world.wait_ready().await;
        world
    }

    /// Waits until `/ready` says the core and store answer, and the currencies are registered.
    async fn wait_ready(&self) {
        let mut last = String::new();
        // Up to 120 s: a debug node preallocating its journal on a loaded machine is slow.
        for _ in 0..2400 {
            let response = self.call("GET", "/ready", None, &[], None).await;
            last = response.text();
            // Ready includes the configured currencies being registered in the core.
            if response.status == 200 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.with_extension("node.log")).unwrap_or_default();
        panic!("gateway never became ready: {last}\nnode log:\n{log}");
    }

    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        if let Some(schema) = &self.schema {
            paycore_gateway::users::postgres::drop_schema(&database_url(), schema)
                .await
                .expect("drop schema");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("node.log"));
    }

    /// One HTTP request; `token` becomes a bearer token, `body` is sent as given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        call_at(self.addr, method, path, token, headers, body).await
    }

    /// Another gateway on the same node and store, with the same settings.
    pub async fn second_gateway(&self) -> Gateway {
        let mut args = self.gateway.as_ref().expect("gateway").state.args.clone();
        args.listen = "127.0.0.1:0".parse().expect("addr");
        paycore_gateway::start(args).await.expect("second gateway")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.call("GET", path, token, &[], None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let body = body.to_string();
        self.call("POST", path, token, &[], Some(body.as_bytes()))
            .await
    }

    /// Registers and logs in; the access token and the user's id.
    pub async fn user(&self, email: &str) -> (String, String) {
        let registered = self
            .post(
                "/api/v1/users/register",
                None,
                &serde_json::json!({"email": email, "password": "correct horse battery", "full_name": "Test User"}),
            )
            .await;
        assert_eq!(registered.status, 201, "{}", registered.text());
        let id = registered.json()["id"].as_str().expect("id").to_owned();
        let token = self.login(email).await;
        (token, id)
    }

    pub async fn login(&self, email: &str) -> String {
        let login = self
            .post(
                "/api/v1/users/login",
                None,
                &serde_json::json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text());
        login.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// Opens a wallet; its id.
    pub async fn wallet(&self, token: &str, currency: &str) -> String {
        let opened = self
            .post(
                "/api/v1/wallets",
                Some(token),
                &serde_json::json!({ "currency": currency }),
            )
            .await;
        assert_eq!(opened.status, 201, "{}", opened.text());
        opened.json()["id"].as_str().expect("id").to_owned()
    }

    /// A signed provider webhook.
    pub async fn webhook(&self, event: &Value) -> Response {
        let body = event.to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let signature =
            paycore_gateway::sign_webhook(WEBHOOK_SECRET.as_bytes(), now, body.as_bytes());
        self.call(
            "POST",
            "/api/v1/webhooks/provider",
            None,
            &[("paycore-signature", &signature)],
            Some(body.as_bytes()),
        )
        .await
    }

    pub async fn deposit(&self, wallet: &str, amount: &str, currency: &str) -> Response {
        let event = serde_json::json!({
            "id": unique("evt"),
            "type": "deposit.succeeded",
            "data": {"wallet_id": wallet, "amount": amount, "currency": currency, "reference": "bank-123"},
        });
        self.webhook(&event).await
    }

    /// A P2P send with an Idempotency-Key.
    pub async fn send(&self, token: &str, key: &str, body: &Value) -> Response {
        let body = body.to_string();
        self.call(
            "POST",
            "/api/v1/transactions/send",
            Some(token),
            &[("idempotency-key", key)],
            Some(body.as_bytes()),
        )
        .await
    }

    /// Users (e-mails `<prefix>-<n>@example.com`) until one has a `currency` wallet on shard 0
    /// and one on shard 1 (the node needs 2 shards): their (token, wallet), shard 0 first.
    pub async fn users_on_two_shards(&self, prefix: &str, currency: &str) -> [(String, String); 2] {
        let mut found: [Option<(String, String)>; 2] = [None, None];
        // A user lands on either shard with probability 1/2: 40 tries miss with odds 2^-39.
        for i in 0..40 {
            let (token, _) = self.user(&format!("{prefix}-{i}@example.com")).await;
            let wallet = self.wallet(&token, currency).await;
            let shard = wallet.parse::<u64>().expect("wallet id") >> 48;
            let slot = usize::try_from(shard).expect("shard");
            if found[slot].is_none() {
                found[slot] = Some((token, wallet));
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        found.map(|f| f.expect("a wallet on each shard"))
    }

    /// Creates an admin the only way there is (`paycore admin create`, into this gateway's
    /// store), enrolls its 2FA and logs it in with a code.
    pub async fn admin(&self, email: &str) -> Admin {
        let args = &self.gateway.as_ref().expect("gateway").state.args;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_paycore"));
        command.args(["admin", "create", "--email", email, "--password-stdin"]);
        match (&args.postgres_url, &args.postgres_schema) {
            (Some(url), schema) => {
                command.args(["--postgres-url", url]);
                if let Some(schema) = schema {
                    command.args(["--postgres-schema", schema]);
                }
            }
            (None, _) => {
                command.arg("--sqlite").arg(&args.sqlite);
                command.env_remove("DATABASE_URL");
            }
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("paycore admin create");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            writeln!(stdin, "{PASSWORD}").expect("password");
        }
        let output = child.wait_with_output().expect("paycore admin create");
        assert!(
            output.status.success(),
            "paycore admin create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let password_token = self.login(email).await;
        let (secret, token, _) = self.enable_two_factor(email, &password_token).await;
        Admin {
            password_token,
            token,
            secret,
        }
    }

    /// Enrolls and confirms 2FA with the account's token, then logs in with a code: the TOTP
    /// secret, the new access token and the step `s` whose codes `s` and `s + 1` it used.
    pub async fn enable_two_factor(&self, email: &str, token: &str) -> (Vec<u8>, String, i64) {
        let enrolled = self
            .call("POST", "/api/v1/users/2fa/enroll", Some(token), &[], None)
            .await;
        assert_eq!(enrolled.status, 200, "{}", enrolled.text());
        let secret = paycore_gateway::totp::base32_decode(
            enrolled.json()["secret"].as_str().expect("secret"),
        )
        .expect("base32");
        let step = now_secs() / 30;
        let confirmed = self
            .post(
                "/api/v1/users/2fa/confirm",
                Some(token),
                &serde_json::json!({"code": paycore_gateway::totp::code_at(&secret, step)}),
            )
            .await;
        assert_eq!(confirmed.status, 200, "{}", confirmed.text());
        let login = self
            .post(
                "/api/v1/users/login",
                None,
                &serde_json::json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text());
        let challenge = login.json()["challenge_token"]
            .as_str()
            .expect("challenge")
            .to_owned();
        let verified = self
            .post(
                "/api/v1/users/verify-2fa",
                None,
                &serde_json::json!({"challenge_token": challenge,
                    "code": paycore_gateway::totp::code_at(&secret, step + 1)}),
            )
            .await;
        assert_eq!(verified.status, 200, "{}", verified.text());
        let token = verified.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        (secret, token, step)
    }

    /// A code of `secret` the server accepts now and that `enable_two_factor` (which used
    /// steps `used` and `used + 1`) did not use.
    pub fn unused_code(secret: &[u8], used: i64) -> String {
        let step = if now_secs() / 30 == used {
            used - 1
        } else {
            used + 2
        };
        paycore_gateway::totp::code_at(secret, step)
    }

    pub async fn balance(&self, token: &str, wallet: &str) -> String {
        let response = self
            .get(&format!("/api/v1/wallets/{wallet}"), Some(token))
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["balance"]
            .as_str()
            .expect("balance")
            .to_owned()
    }
}

/// An admin made by `paycore admin create`, with 2FA enabled.
pub struct Admin {
    /// From a login before 2FA was enabled: not enough for admin routes.
    pub password_token: String,
    /// From a login with a 2FA code.
    pub token: String,
    pub secret: Vec<u8>,
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One HTTP request to `addr` (see [`World::call`]).
pub async fn call_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    let typed = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    if (!body.is_empty() || method != "GET") && !typed {
        request.push_str("content-type: application/json\r\n");
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw_at(addr, &bytes).await
}

/// Sends `bytes` as they are (a request the tests wrote by hand) and reads the answer.
pub async fn raw_at(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A server may answer (413) and close before reading a huge body: ignore write errors.
    let _ = stream.write_all(bytes).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    Response::parse(&raw)
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw.get(split + 4..).unwrap_or_default().to_vec();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem's `code`, checking that the answer is a problem document.
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "not a problem: {}",
            self.text()
        );
        self.json()["code"].as_str().unwrap_or("").to_owned()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
}
