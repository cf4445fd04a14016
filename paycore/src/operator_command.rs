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
        let mut line = format!(
            "  shard {}: last {} durable {} released {}",
            shard["shard"],
            shard["last_sequence"],
            shard["durable_sequence"],
            shard["released_sequence"]
        );
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
        } else {
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
        println!("{line}");
    }
    Ok(())
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
