//! `paycore status` and `paycore promote`: operator commands sent to a running node over
//! QUIC (the node answers with JSON; without `--json` it is printed for humans).

use std::net::SocketAddr;
use std::path::PathBuf;

use paycore_protocol::AdminCommand;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct NodeAddress {
    /// The node's QUIC address.
    #[arg(long, env = "PAYCORE_SERVER", default_value = "127.0.0.1:7400")]
    pub server: SocketAddr,
    /// The node's certificate (DER) to trust.
    #[arg(
        long,
        env = "PAYCORE_TRUST",
        default_value = "./paycore-data/tls/cert.der"
    )]
    pub trust: PathBuf,
    /// Or the SHA-256 of the node's certificate, hex (as `paycore node` prints it).
    #[arg(long, env = "PAYCORE_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Print the node's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeAddress,
}

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// Promote even when the standby knows it is behind an async primary (the records it
    /// lacks may include acknowledged commands: they are lost).
    #[arg(long)]
    pub force: bool,
}

fn ask(node: &NodeAddress, command: AdminCommand) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut config = paycore_client::ClientConfig::new(node.server, node.trust.clone());
        if let Some(text) = &node.fingerprint {
            config.trust_sha256 = Some(
                paycore_client::parse_fingerprint(text)
                    .ok_or("--fingerprint takes 64 hex digits")?,
            );
        }
        config.request_timeout_ms = 60_000;
        let client = paycore_client::Client::connect(config)
            .await
            .map_err(|e| format!("{}: {e}", node.server))?;
        let answer = client.admin(command).await.map_err(|e| e.to_string());
        client.close();
        answer
    })
}

pub fn status(args: StatusArgs) -> Result<(), String> {
    let json = ask(&args.node, AdminCommand::Status)?;
    if args.node.json {
        println!("{json}");
        return Ok(());
    }
    let status: Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    println!(
        "{} of epoch {}{}; durability {}, replication {}",
        status["role"].as_str().unwrap_or("?"),
        status["epoch"],
        status["standby_of"]
            .as_str()
            .map_or(String::new(), |p| format!(", following {p}")),
        status["durability"].as_str().unwrap_or("?"),
        status["replication"].as_str().unwrap_or("?"),
    );
    for shard in status["shards"].as_array().into_iter().flatten() {
        println!("{}", shard_line(shard));
    }
    Ok(())
}

/// One shard of `paycore status`: its state first (what a paged operator needs), then its
/// sequences, its disk, and its standby or primary.
fn shard_line(shard: &Value) -> String {
    let state = match shard["state"].as_str() {
        Some("read_only") => format!(
            "READ-ONLY (disk full) since {}: {}",
            since(&shard["state_since_ms"]),
            shard["state_reason"].as_str().unwrap_or("?")
        ),
        Some("poisoned") => format!(
            "POISONED since {}: {} (writes answered shard_unavailable until a restart)",
            since(&shard["state_since_ms"]),
            shard["state_reason"].as_str().unwrap_or("?")
        ),
        Some(other) => other.to_string(),
        None => "state unknown".to_string(),
    };
    let mut line = format!(
        "  shard {}: {state}; last {} durable {} released {}",
        shard["shard"],
        shard["last_sequence"],
        shard["durable_sequence"],
        shard["released_sequence"]
    );
    if let Some(free) = shard["disk_free_bytes"].as_u64() {
        line += &format!(
            "; disk {} free of {} (reserve {}), journal {} + archive {}",
            mib(free),
            mib(shard["disk_total_bytes"].as_u64().unwrap_or(0)),
            mib(shard["disk_reserve_bytes"].as_u64().unwrap_or(0)),
            mib(shard["journal_bytes"].as_u64().unwrap_or(0)),
            mib(shard["journal_archive_bytes"].as_u64().unwrap_or(0)),
        );
    }
    if shard.get("published_sequence").is_some() {
        line += &format!(
            "; events published to NATS through {} (lag {} records, {} ms)",
            shard["published_sequence"], shard["publish_lag_records"], shard["publish_lag_ms"]
        );
    }
    if shard.get("standby_connected").is_some() {
        line += &format!(
            "; standby {} at {} (lag {} records, {} ms)",
            if shard["standby_connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            },
            shard["standby_durable_sequence"],
            shard["standby_lag_records"],
            shard["standby_lag_ms"]
        );
    } else if shard.get("primary_connected").is_some() {
        line += &format!(
            "; primary {} at {} (lag {} records, last record {} ms ago)",
            if shard["primary_connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            },
            shard["primary_durable_sequence"],
            shard["lag_records"],
            shard["ms_since_last_record"]
        );
    }
    line
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// "<seconds> s ago (unix ms <t>)" for a state's start.
fn since(value: &Value) -> String {
    let Some(at) = value.as_u64() else {
        return "?".to_string();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{} s ago (unix ms {at})", now.saturating_sub(at) / 1000)
}

pub fn promote(args: PromoteArgs) -> Result<(), String> {
    let json = ask(&args.node, AdminCommand::Promote { force: args.force })?;
    if args.node.json {
        println!("{json}");
        return Ok(());
    }
    let result: Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    println!(
        "promoted: primary of epoch {} from sequences {} (old primary was {}; when this node last heard from it, {} of its records had not been received; how many it wrote after that is unknown) in {} ms",
        result["epoch"],
        result["last_sequences"],
        result["old_primary_mode"].as_str().unwrap_or("?"),
        result["records_behind_old_primary_at_last_report"],
        result["took_ms"]
    );
    Ok(())
}
