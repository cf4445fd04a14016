//! `paycore`: the single binary of the payment core.
//!
//! `up` (a node with embedded defaults), `node` (a configured core node: shards, journal,
//! snapshots, QUIC listener), `snapshot` (offline), `demo` (an in-process engine session) and a
//! hidden `torture` child for crash tests. Each subcommand's `--help` explains its flags.

mod admin_command;
mod audit_command;
mod config_file;
mod flush_command;
mod gateway_command;
mod operator_command;
mod publish_command;
mod reconcile_command;
mod snapshot_command;

use paycore::{node, torture};

use clap::{Parser, Subcommand};
use paycore_engine::amount::{format_amount, parse_amount};
use paycore_engine::{
    Command, CurrencyCode, Effects, Engine, EngineConfig, IdempotencyKey, Op, Outcome, Rate,
    UserId, WalletId,
};

/// paycore: an in-memory, sharded, journaled payment core.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Start paycore with embedded defaults: a node with data in ./paycore-data, one shard per
    /// core, a self-signed TLS certificate, QUIC on 127.0.0.1:7400; prints where everything is.
    /// Stop it with Ctrl-C (in-flight group commits finish first).
    Up,
    /// Run a core node (shards, journal, snapshots, QUIC listener). Every flag also reads an
    /// environment variable (PAYCORE_…), and `--config FILE.toml` (or PAYCORE_CONFIG) may hold
    /// any of them, keyed by flag name with underscores (`data_dir = "/srv/paycore"`).
    /// Precedence: flags, then environment, then the file, then the defaults shown.
    Node(node::NodeArgs),
    /// Run one in-process engine shard through a short printed session of real commands (open,
    /// deposit, transfer, a rejected overdraft, hold and capture, exchange): no disk, no network.
    Demo,
    /// Take a snapshot of every shard in a data folder now (offline: the node must be stopped;
    /// the folder lock refuses otherwise). Recovers each shard (snapshot + journal), writes a new
    /// snapshot at its last sequence, prunes old ones and archives journal segments it covers.
    Snapshot(snapshot_command::SnapshotArgs),
    /// Run the HTTP gateway (REST API, auth, rate limits) in front of a core node. Every flag
    /// also reads an environment variable (PAYCORE_GATEWAY_…; DATABASE_URL for PostgreSQL).
    Gateway(gateway_command::GatewayArgs),
    /// Make or unmake a gateway admin in the gateway's store (the only way to get the role):
    /// `create` (password on stdin), `grant`, `revoke`. Admin actions also need 2FA.
    Admin(admin_command::AdminArgs),
    /// Show a running node's role, epoch, shards and replication (standby lag, or lag behind
    /// the primary).
    Status(operator_command::StatusArgs),
    /// Make a running hot standby the primary of a new epoch: it stops following, applies
    /// everything it received, and takes writes. Refused when it knows it is behind an async
    /// primary, unless --force.
    Promote(operator_command::PromoteArgs),
    /// Write every shard's journal into the store (PostgreSQL with --postgres-url or
    /// DATABASE_URL, else <data_dir>/store.sqlite) as its own process: resumes from the store's
    /// checkpoints; --once exits when done, else it follows the journals until stopped.
    Flush(flush_command::FlushArgs),
    /// Publish every shard's committed events to NATS JetStream as its own process (needs
    /// --nats-url): resumes from each shard's stream; --once exits when done.
    Publish(publish_command::PublishArgs),
    /// Append every published event to a hash-chained, append-only PostgreSQL table (a
    /// durable JetStream consumer; run several to share the work); `audit verify` walks the
    /// chain and names the first broken link.
    Audit(audit_command::AuditArgs),
    /// Check the store against the engine (read-only): balances sum to zero per currency, each
    /// balance equals its postings, balances equal the engine's at the flushed sequence,
    /// idempotency records and holds agree. Exit 0 only when everything matches; writes a
    /// JSON report.
    Reconcile(reconcile_command::ReconcileArgs),
    /// Writes a benchmark journal for the store figures (BENCHMARKS.md).
    #[command(hide = true)]
    FlushBenchJournal(flush_command::BenchJournalArgs),
    /// A shard under load for crash tests (prints ACK lines; meant to be killed).
    #[command(hide = true)]
    Torture(torture::TortureArgs),
}

fn main() -> std::process::ExitCode {
    let args = match config_file::with_config_file(std::env::args().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    match cli.command {
        Action::Up => report(up()),
        Action::Node(args) => report(node::run_node(args)),
        Action::Demo => demo(),
        Action::Gateway(args) => report(gateway_command::run(args)),
        Action::Admin(args) => report(admin_command::run(args)),
        Action::Snapshot(args) => report(snapshot_command::run(args)),
        Action::Status(args) => report(operator_command::status(args)),
        Action::Promote(args) => report(operator_command::promote(args)),
        Action::Flush(args) => report(flush_command::run(args)),
        Action::Publish(args) => report(publish_command::run(args)),
        Action::Audit(args) => audit_command::run(args),
        Action::Reconcile(args) => reconcile_command::run(args),
        Action::FlushBenchJournal(args) => report(flush_command::bench_journal(args)),
        Action::Torture(args) => report(torture::run(args)),
    }
}

/// `paycore up`: a node with every default.
fn up() -> Result<(), String> {
    use clap::Parser as _;
    #[derive(Debug, clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        node: node::NodeArgs,
    }
    let mut defaults = Defaults::try_parse_from(["paycore"]).map_err(|e| e.to_string())?;
    if defaults.node.metrics_listen.is_none() {
        defaults.node.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9400)));
    }
    println!("paycore up: embedded defaults (see `paycore node --help` to change them)");
    let gateway_args = paycore_gateway::GatewayArgs::defaults(
        defaults.node.listen,
        defaults
            .node
            .data_dir
            .join("tls/cert.der")
            .display()
            .to_string(),
        "127.0.0.1:8080"
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())?,
    );
    // The gateway starts once the node listens, and stops before it.
    node::run_node_then(defaults.node, || {
        let spawned = paycore_gateway::spawn_gateway(gateway_args)?;
        println!(
            "  gateway: http://{} (REST API; OpenAPI at /api/v1/openapi.json)",
            spawned.addr
        );
        println!(
            "  next: cargo run --release -p paycore-loadgen -- --server 127.0.0.1:7400 --trust ./paycore-data/tls/cert.der"
        );
        let stop: node::OnStop = Box::new(move || spawned.stop());
        Ok(Some(stop))
    })
}

fn report(result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Applies client commands with consecutive sequence numbers and a fixed clock.
struct Session {
    engine: Engine,
    effects: Effects,
    sequence: u64,
    timestamp_ns: u64,
}

impl Session {
    fn run(&mut self, label: &str, op: Op) -> Outcome {
        self.sequence += 1;
        self.timestamp_ns += 1_000_000;
        let key = IdempotencyKey::new(format!("up-{}", self.sequence).as_bytes())
            .expect("short ascii key is valid");
        self.effects.clear();
        let outcome = self.engine.apply(
            self.sequence,
            self.timestamp_ns,
            &Command::Client { key, op },
            &mut self.effects,
        );
        println!("  {label:<44} -> {}", describe(&outcome));
        outcome
    }

    fn balance(&self, wallet: WalletId, scale: u8) -> String {
        self.engine
            .wallet(wallet)
            .map(|w| format!("available {}", format_amount(w.available, scale)))
            .unwrap_or_else(|| "missing".into())
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(applied) => format!("ok {applied:?}"),
        Outcome::Rejected(reason) => format!("rejected: {reason}"),
        Outcome::LinkedRejected { index, reason } => {
            format!("linked group rejected at op {index}: {reason}")
        }
    }
}

fn opened(outcome: Outcome) -> Option<WalletId> {
    match outcome {
        Outcome::Ok(paycore_engine::Applied::WalletOpened(wallet)) => Some(wallet),
        _ => None,
    }
}

fn demo() -> std::process::ExitCode {
    println!(
        "paycore {} demo: one in-process engine shard, no disk, no network",
        env!("CARGO_PKG_VERSION")
    );
    println!("one in-process shard, embedded defaults:");
    let mut s = Session {
        engine: Engine::new(EngineConfig::default()),
        effects: Effects::default(),
        sequence: 0,
        timestamp_ns: 1_767_225_600_000_000_000, // 2026-01-01T00:00:00Z
    };
    let usd = CurrencyCode::parse("USD").expect("valid code");
    let eur = CurrencyCode::parse("EUR").expect("valid code");
    s.run(
        "register USD (scale 2)",
        Op::RegisterCurrency {
            code: usd,
            scale: 2,
        },
    );
    s.run(
        "register EUR (scale 2)",
        Op::RegisterCurrency {
            code: eur,
            scale: 2,
        },
    );
    let (alice, bob) = (UserId(0xa11ce), UserId(0xb0b));
    let alice_usd = opened(s.run(
        "open alice USD",
        Op::OpenWallet {
            user: alice,
            currency: usd,
        },
    ));
    let alice_eur = opened(s.run(
        "open alice EUR",
        Op::OpenWallet {
            user: alice,
            currency: eur,
        },
    ));
    let bob_usd = opened(s.run(
        "open bob USD",
        Op::OpenWallet {
            user: bob,
            currency: usd,
        },
    ));
    let (Some(alice_usd), Some(alice_eur), Some(bob_usd)) = (alice_usd, alice_eur, bob_usd) else {
        eprintln!("error: opening wallets failed");
        return std::process::ExitCode::FAILURE;
    };
    let amount = |text: &str| parse_amount(text, 2).expect("valid amount");
    s.run(
        "deposit 100.00 USD to alice",
        Op::Deposit {
            wallet: alice_usd,
            amount: amount("100.00"),
            currency: usd,
        },
    );
    s.run(
        "transfer 12.50 USD alice -> bob",
        Op::Transfer {
            from: alice_usd,
            to: bob_usd,
            amount: amount("12.50"),
            currency: usd,
        },
    );
    s.run(
        "transfer 500.00 USD alice -> bob",
        Op::Transfer {
            from: alice_usd,
            to: bob_usd,
            amount: amount("500.00"),
            currency: usd,
        },
    );
    let hold = s.run(
        "hold 20.00 USD on alice",
        Op::Hold {
            wallet: alice_usd,
            amount: amount("20.00"),
            currency: usd,
            expires_at_ns: None,
        },
    );
    if let Outcome::Ok(paycore_engine::Applied::HoldPlaced(hold)) = hold {
        s.run(
            "capture 15.00 of the hold to bob",
            Op::Capture {
                hold,
                amount: Some(amount("15.00")),
                to: Some(bob_usd),
            },
        );
    }
    let rate = Rate::new(9_215, 4).expect("valid rate");
    s.run(
        "exchange 10.00 USD -> EUR at 0.9215",
        Op::Exchange {
            from: alice_usd,
            to: alice_eur,
            amount: amount("10.00"),
            rate,
        },
    );
    println!("balances:");
    println!("  alice USD {}", s.balance(alice_usd, 2));
    println!("  alice EUR {}", s.balance(alice_eur, 2));
    println!("  bob   USD {}", s.balance(bob_usd, 2));
    let sums = s.engine.balance_sums();
    println!("sum of balances per currency (double entry, must be 0): {sums:?}");
    println!("state hash: {:032x}", s.engine.state_hash());
    if sums.iter().all(|sum| *sum == 0) {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("error: money is not conserved");
        std::process::ExitCode::FAILURE
    }
}
