//! `paycore audit`: the audit log consumer (a durable JetStream consumer; start several with
//! the same `--consumer` to share the work) appending every published event to a hash-chained,
//! append-only PostgreSQL table; `paycore audit verify` walks the chain. Design in
//! `publish/src/audit.rs`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use paycore_publish::audit::{self, AuditConfig};
use paycore_publish::sink::JetStreamConfig;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    /// NATS server(s) holding the event streams.
    #[arg(
        long,
        env = "PAYCORE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// The publisher's stream prefix (streams `<prefix>_<NNN>`).
    #[arg(
        long,
        env = "PAYCORE_NATS_STREAM_PREFIX",
        default_value = "PAYCORE_EVENTS"
    )]
    pub nats_stream_prefix: String,
    /// Number of shards (one stream each).
    #[arg(long, env = "PAYCORE_SHARDS", default_value_t = 1)]
    pub shards: u16,
    /// PostgreSQL holding the audit log.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Schema of the audit tables (created if missing).
    #[arg(
        long,
        global = true,
        env = "PAYCORE_AUDIT_SCHEMA",
        default_value = "audit"
    )]
    pub audit_schema: String,
    /// Durable consumer name: processes with the same name share the streams' messages.
    #[arg(long, default_value = "paycore-audit")]
    pub consumer: String,
    /// Messages appended per transaction, at most.
    #[arg(long, default_value_t = 1000)]
    pub batch_max: usize,
    /// Exit once the streams hold nothing new (else follow until SIGINT/SIGTERM).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditAction {
    /// Walk the chain: exit 0 when intact, 1 at the first broken link (row, expected,
    /// found), 2 when it cannot run.
    Verify,
}

pub fn run(args: AuditArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match args.action {
        Some(AuditAction::Verify) => runtime.block_on(verify(&args)),
        None => runtime.block_on(consume(&args)),
    }
}

async fn verify(args: &AuditArgs) -> ExitCode {
    let outcome = async {
        audit::validate_schema(&args.audit_schema)?;
        let client = audit::connect(&args.postgres_url).await?;
        audit::verify(&client, &args.audit_schema).await
    }
    .await;
    match outcome {
        Ok(verified) => match verified.broken {
            None => {
                println!("audit log intact: {} rows", verified.rows);
                ExitCode::SUCCESS
            }
            Some(link) => {
                println!(
                    "audit log BROKEN at row {}: {} (expected {}, found {}); {} rows before it are intact",
                    link.row_id, link.what, link.expected, link.found, verified.rows
                );
                ExitCode::from(1)
            }
        },
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn consume(args: &AuditArgs) -> ExitCode {
    let mut jetstream = JetStreamConfig::new(&args.nats_url);
    jetstream.stream_prefix = args.nats_stream_prefix.clone();
    let config = AuditConfig {
        jetstream,
        shards: args.shards,
        postgres_url: args.postgres_url.clone(),
        schema: args.audit_schema.clone(),
        consumer: args.consumer.clone(),
        batch_max: args.batch_max.clamp(1, 100_000),
        stop_when_idle: args.once,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        if let Ok(mut terminate) = terminate {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        signal_stop.store(true, Ordering::Release);
    });
    let started = std::time::Instant::now();
    println!(
        "paycore audit: {} shard stream(s) {}_NNN -> PostgreSQL schema {}",
        args.shards, args.nats_stream_prefix, args.audit_schema
    );
    match audit::run(&config, &stop).await {
        Ok(stats) => {
            let elapsed = started
                .elapsed()
                .max(Duration::from_millis(1))
                .as_secs_f64();
            println!(
                "appended {} events ({} duplicates skipped, {} foreign messages kept in audit_rejected) in {elapsed:.1} s: {:.0} rows/s",
                stats.appended,
                stats.duplicates,
                stats.rejected,
                stats.appended as f64 / elapsed
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
