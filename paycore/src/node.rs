//! `paycore node`: the core node — shards (sequencer + journal + snapshots) behind a QUIC
//! listener speaking the binary protocol (`paycore-protocol`).
//!
//! Each request arrives on its own bidirectional QUIC stream: one frame in, one frame out. A
//! frame that does not decode gets an error frame, and the connection is closed when the error
//! code says so; nothing a client sends can panic the node. TLS is always on: without `--cert`
//! and `--key`, the node creates a self-signed certificate for `localhost` in
//! `<data_dir>/tls/` on first start and reuses it; clients trust `<data_dir>/tls/cert.der`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use paycore_engine::EngineConfig;
use paycore_journal::MmapStorage;
use paycore_journal::{Durability, RecoveryOptions};
use paycore_protocol::{
    AdminCommand, CommandResult, ErrorCode, FRAME_BYTES_MAX, Frame, HoldView, Query, QueryResult,
    ShardStatus, StatusView, WalletView, decode, encode,
};
use paycore_sequencer::{ReadView, ReplicationMode, Sequencer, SequencerConfig};

use crate::client_role::ClientRole;
use crate::credentials::ReplicationToken;
use crate::frames::write_frame;
use crate::node_state::{NodeState, Role};
use crate::replication::{NodeRole, PrimaryLink};
use paycore_snapshot::SnapshotPolicy;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Longest wait for a shard to answer a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one connection may have open at once.
const STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// Request bytes one connection may hold at once (frames being read and answered, design
/// §15). A frame that does not fit is answered `overloaded` and its stream stopped, which
/// drops its buffered bytes: waiting for room instead let unadmitted bytes pile up in the QUIC
/// stack (issue 13: one connection pinned 1.1 GiB).
const CONNECTION_REQUEST_BYTES_MAX: usize = 64 << 20;
/// Request bytes all connections together may hold at once.
const NODE_REQUEST_BYTES_MAX: usize = 256 << 20;
/// Bytes the QUIC stack buffers for one connection before the application reads them (its
/// flow-control window, all streams together), and for one stream. Bounded so that what a
/// client has sent and the node has not admitted stays small: the node's request memory is at
/// most `connections_max x CONNECTION_RECEIVE_WINDOW_BYTES + NODE_REQUEST_BYTES_MAX`
/// (1.25 GiB with the default 1 024 connections), whatever clients send.
const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 1 << 20;
const STREAM_RECEIVE_WINDOW_BYTES: u32 = 1 << 20;
/// Bytes of answers the node buffers per connection for a peer that does not read them.
const CONNECTION_SEND_WINDOW_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    // `--config FILE` (or PAYCORE_CONFIG) is read before parsing: see `config_file.rs`.
    /// Data folder: shard journals and snapshots, and the embedded TLS certificate.
    #[arg(long, env = "PAYCORE_DATA_DIR", default_value = "./paycore-data")]
    pub data_dir: PathBuf,
    /// UDP address of the QUIC listener.
    #[arg(long, env = "PAYCORE_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Number of shards (fixed for the life of a data folder). Default: the number of cores.
    #[arg(long, env = "PAYCORE_SHARDS")]
    pub shards: Option<u16>,
    /// `fsync`: a reply waits until its command is durable (default). `none`: page cache only,
    /// for benchmarks; a power cut loses acknowledged commands.
    #[arg(long, env = "PAYCORE_DURABILITY", default_value = "fsync", value_parser = ["fsync", "none"])]
    pub durability: String,
    /// Client batch parts waiting per shard before the node answers `busy`.
    #[arg(long, env = "PAYCORE_RING_REQUESTS_MAX", default_value_t = 1024)]
    pub ring_requests_max: usize,
    /// Most commands per group commit.
    #[arg(long, env = "PAYCORE_BATCH_COMMANDS_MAX", default_value_t = 8192)]
    pub batch_commands_max: usize,
    /// Snapshot each shard after this many commands... (a snapshot of a large shard costs
    /// seconds of a core and of disk beside the writers: fewer snapshots mean a shorter
    /// latency tail, more journal to replay at restart — about 1.5 M records/s)
    #[arg(
        long,
        env = "PAYCORE_SNAPSHOT_EVERY_RECORDS",
        default_value_t = 20_000_000
    )]
    pub snapshot_every_records: u64,
    /// ...or after this many seconds with new commands.
    #[arg(long, env = "PAYCORE_SNAPSHOT_EVERY_SECS", default_value_t = 300)]
    pub snapshot_every_secs: u64,
    /// Nice value (0-19) of the snapshot replica threads, which apply every command a second
    /// time: at a low priority they use the CPU the writers leave idle instead of delaying
    /// their batches; more than a snapshot's worth of records behind they ask for normal
    /// priority back (needs CAP_SYS_NICE, else they stay low). 0: normal priority
    #[arg(long, env = "PAYCORE_SNAPSHOT_NICE", default_value_t = 10)]
    pub snapshot_nice: i32,
    /// TLS certificate (DER) for real deployments; with `--key`.
    #[arg(long, env = "PAYCORE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PKCS#8 DER); with `--cert`.
    #[arg(long, env = "PAYCORE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// CA certificate (DER): require every client to present a certificate it signed (mutual
    /// TLS). Without it, any process that can reach the port may connect and do anything (a
    /// client checking the node's certificate proves the node, not the client): the node then
    /// listens on loopback addresses only, unless --allow-unauthenticated-clients.
    #[arg(long, env = "PAYCORE_CA")]
    pub ca: Option<PathBuf>,
    /// Listen on a non-loopback address without --ca: every process that reaches the port may
    /// then register currencies, freeze wallets, promote. Only behind a private network that
    /// nothing else can reach; the node warns at every start.
    #[arg(long, env = "PAYCORE_ALLOW_UNAUTHENTICATED_CLIENTS")]
    pub allow_unauthenticated_clients: bool,
    /// QUIC connections served at once; more are refused at the handshake. Each may hold up to
    /// 1 MiB unread in the QUIC stack (see docs/security.md for the memory bound).
    #[arg(long, env = "PAYCORE_CONNECTIONS_MAX", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub connections_max: u32,
    /// A QUIC connection with no packet from its peer for this long is closed.
    #[arg(long, env = "PAYCORE_QUIC_IDLE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub quic_idle_timeout_ms: u64,
    /// Keep-alive sent on an otherwise silent connection, so that an idle client stays
    /// connected: must be well inside --quic-idle-timeout-ms (a third of it or less).
    #[arg(long, env = "PAYCORE_QUIC_KEEP_ALIVE_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=1_200_000))]
    pub quic_keep_alive_ms: u64,
    /// Events kept in memory per shard for subscribers; further behind, they are read from
    /// the shard's event archive on disk (`<shard>/events/`).
    #[arg(long, env = "PAYCORE_EVENTS_KEPT_MAX", default_value_t = 1 << 20)]
    pub events_kept_max: u64,
    /// Cut a corrupt journal at the damage instead of refusing to start (back up first).
    #[arg(long)]
    pub truncate_corruption: bool,
    /// Size of each journal segment file, MiB (segments a snapshot covers are archived whole).
    #[arg(long, env = "PAYCORE_JOURNAL_SEGMENT_MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=4096))]
    pub journal_segment_mib: u64,
    /// Free space, MiB, kept on each shard's journal disk: below it the shard turns read-only
    /// (writes answered disk_full, reads go on), asks for a snapshot so retention can free
    /// covered segments, and takes writes again by itself once there is room. Default: two
    /// segments plus the newest snapshot's size.
    #[arg(long, env = "PAYCORE_JOURNAL_RESERVE_MIB")]
    pub journal_reserve_mib: Option<u64>,
    /// Refuse to start when a shard's disk is already below the reserve (by default the shard
    /// starts read-only and says why).
    #[arg(long, env = "PAYCORE_REQUIRE_WRITABLE")]
    pub require_writable: bool,
    /// Also snapshot a shard once this many MiB of journal were written since its last
    /// snapshot (capped at a quarter of the disk's free space at start; 0: by count and time
    /// only).
    #[arg(
        long,
        env = "PAYCORE_SNAPSHOT_EVERY_JOURNAL_MIB",
        default_value_t = 1024
    )]
    pub snapshot_every_journal_mib: u64,
    /// Idempotency entries per shard allocated at start (up to 16 Mi, the table's maximum),
    /// so the table never stops the shard writer to grow (a copy and rehash of millions of
    /// entries: a latency spike of 0.1-1 s). The entries and their index (about 64 B per
    /// entry: 1 GiB per shard at 16 Mi) are faulted in at start, so no first write into them
    /// takes a page fault in a writer's batch; that makes the start slower (measured ~1.8-3.3
    /// s per shard at 16 Mi on this VM). Keys take memory as they come (~16-32 B each).
    /// 0: grow on demand (small deployments).
    #[arg(long, env = "PAYCORE_RESERVE_IDEMPOTENCY_ENTRIES", default_value_t = 0)]
    pub reserve_idempotency_entries: usize,
    /// Wallet slots per shard allocated (and faulted in) at start, about 100 B each, for the
    /// same reason.
    #[arg(long, env = "PAYCORE_RESERVE_WALLETS", default_value_t = 0)]
    pub reserve_wallets: usize,
    /// Serve Prometheus metrics (`GET /metrics`: throughput, group commits, ring depth, fsync
    /// latency, replication lag) over HTTP on this address. Off by default.
    #[arg(long, env = "PAYCORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub replication: ReplicationArgs,
    #[command(flatten)]
    pub store: crate::flush::StoreArgs,
    /// Events out to NATS JetStream (issue 19): off unless --nats-url.
    #[command(flatten)]
    pub nats: crate::publish::NatsArgs,
}

impl NodeArgs {
    /// Every default, for `data_dir`, listening on a free loopback port, with the embedded
    /// store (whatever `DATABASE_URL` says): what tests and embedders start from.
    pub fn local(data_dir: &Path) -> NodeArgs {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            node: NodeArgs,
        }
        let mut args = Defaults::parse_from(["paycore"]).node;
        args.data_dir = data_dir.to_path_buf();
        args.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        args.store.postgres_url = None;
        args
    }
}

/// Hot standby: which node this one follows, and how a primary waits for its standby.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplicationArgs {
    /// Run as a hot standby of the primary at this QUIC address: receive its journal, apply it
    /// (ready to serve at once), refuse client writes until `paycore promote`. Also how an old
    /// primary rejoins: its records the new primary's history lacks are cut (backed up) and
    /// reported at start.
    #[arg(long, env = "PAYCORE_STANDBY_OF")]
    pub standby_of: Option<SocketAddr>,
    /// The primary's certificate (DER) a standby trusts (e.g. the primary's
    /// `<data_dir>/tls/cert.der`); or `--primary-fingerprint`.
    #[arg(long, env = "PAYCORE_PRIMARY_TRUST")]
    pub primary_trust: Option<PathBuf>,
    /// SHA-256 of the primary's certificate, hex (as `paycore node` prints it).
    #[arg(long, env = "PAYCORE_PRIMARY_FINGERPRINT")]
    pub primary_fingerprint: Option<String>,
    /// As a primary, how replies wait for a standby: `off` (no standby), `async` (the standby
    /// may lag by up to --replication-max-lag-records; alone after --replication-alone-after-ms
    /// without it), `sync` (a reply waits until its record is durable on the standby too; with
    /// no standby, writes wait). Default: off.
    #[arg(long, env = "PAYCORE_REPLICATION", value_parser = ["off", "async", "sync"])]
    pub replication: Option<String>,
    /// Async: most records the standby may lag before replies wait for it.
    #[arg(
        long,
        env = "PAYCORE_REPLICATION_MAX_LAG_RECORDS",
        default_value_t = 100_000
    )]
    pub replication_max_lag_records: u64,
    /// Async: after the standby has been gone this long, carry on alone.
    #[arg(
        long,
        env = "PAYCORE_REPLICATION_ALONE_AFTER_MS",
        default_value_t = 1_000
    )]
    pub replication_alone_after_ms: u64,
    /// The cluster's replication token (see `credentials.rs`): a primary serves replication
    /// only to connections that present it, and a standby presents it. Default
    /// `<data_dir>/replication.token`, made by a primary at its first start; a standby must be
    /// given a copy of its primary's.
    #[arg(long, env = "PAYCORE_REPLICATION_TOKEN_FILE")]
    pub replication_token_file: Option<PathBuf>,
}

impl ReplicationArgs {
    fn mode(&self) -> ReplicationMode {
        match self.replication.as_deref() {
            Some("sync") => ReplicationMode::Sync,
            Some("async") => ReplicationMode::Async {
                max_lag_records: self.replication_max_lag_records,
                alone_after_ms: self.replication_alone_after_ms,
            },
            _ => ReplicationMode::Off,
        }
    }

    fn link(&self, data_dir: &Path, token: &ReplicationToken) -> Option<PrimaryLink> {
        let server = self.standby_of?;
        let trust_sha256 = self
            .primary_fingerprint
            .as_deref()
            .and_then(paycore_client::parse_fingerprint);
        Some(PrimaryLink {
            server,
            trust_der_path: self
                .primary_trust
                .clone()
                .unwrap_or_else(|| data_dir.join("tls").join("primary-cert.der")),
            trust_sha256,
            token: token.clone(),
        })
    }
}

/// The certificate and key to serve: given, or the embedded self-signed pair (created once).
fn tls_identity(
    args: &NodeArgs,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>, PathBuf), String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read(key)?));
        return Ok((CertificateDer::from(read(cert)?), key, cert.clone()));
    }
    let dir = args.data_dir.join("tls");
    let (cert_path, key_path) = (dir.join("cert.der"), dir.join("key.der"));
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| format!("cannot create a self-signed certificate: {e}"))?;
        std::fs::write(&key_path, generated.signing_key.serialize_der())
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        std::fs::write(&cert_path, generated.cert.der())
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read(&key_path)?));
    Ok((CertificateDer::from(read(&cert_path)?), key, cert_path))
}

fn shard_count(args: &NodeArgs) -> u16 {
    args.shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u16))
        .max(1)
}

fn sequencer_config(args: &NodeArgs) -> SequencerConfig {
    let mut config = SequencerConfig::new(args.data_dir.clone(), shard_count(args));
    config.replication = args.replication.mode();
    config.engine.idempotency_entries_reserve = args.reserve_idempotency_entries;
    config.engine.wallets_reserve = args.reserve_wallets;
    config.ring_requests_max = args.ring_requests_max.max(1);
    config.batch_commands_max = args.batch_commands_max.max(1);
    config.events_kept_max = args.events_kept_max.max(1);
    config.journal.durability = if args.durability == "none" {
        Durability::None
    } else {
        Durability::Fsync
    };
    config.snapshots = Some(SnapshotPolicy {
        every_records: args.snapshot_every_records.max(1),
        every_ms: args.snapshot_every_secs.saturating_mul(1000).max(1),
        keep: 2,
        nice: args.snapshot_nice.clamp(0, 19),
    });
    config.journal.segment_bytes = args.journal_segment_mib << 20;
    config.disk.reserve_bytes = args.journal_reserve_mib.map(|mib| mib << 20);
    config.disk.require_writable = args.require_writable;
    config.disk.snapshot_every_journal_bytes = args.snapshot_every_journal_mib << 20;
    config.recovery = RecoveryOptions {
        truncate_corruption: args.truncate_corruption,
    };
    config
}

/// TLS 1.3 for QUIC: the node's identity and, with `ca`, client certificates required.
fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ca: Option<&Path>,
) -> Result<quinn::ServerConfig, String> {
    let Some(ca) = ca else {
        return quinn::ServerConfig::with_single_cert(vec![cert], key).map_err(|e| e.to_string());
    };
    let ca_der = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der))
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("{}: {e}", ca.display()))?;
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// A running node: its QUIC endpoint and shards. `run_node` drives one until a signal.
#[derive(Debug)]
pub struct Node {
    pub endpoint: quinn::Endpoint,
    pub sequencer: Arc<Sequencer>,
    pub trust_path: PathBuf,
    /// SHA-256 of the served certificate, hex: what a client may pin instead of the file.
    pub fingerprint: String,
    pub listen: SocketAddr,
    pub role: Arc<NodeRole>,
    /// Where `/metrics` is served, if it is.
    pub metrics: Option<SocketAddr>,
}

/// Settles the node's role before its shards open: a standby (`--standby-of`) asks its
/// primary which of its records are history and cuts the rest (reported); a folder that
/// belongs to a standby is never started as a primary by accident.
async fn settle_role(args: &NodeArgs, token: &ReplicationToken) -> Result<NodeState, String> {
    let shards = shard_count(args);
    let mut state = NodeState::load_or_new(&args.data_dir, shards)?;
    match args.replication.link(&args.data_dir, token) {
        None if state.role == Role::Standby => Err(format!(
            "{} belongs to a standby (epoch {}): start it with --standby-of <primary>, and promote it with `paycore promote` while it runs",
            args.data_dir.display(),
            state.epoch
        )),
        None => {
            state.save(&args.data_dir)?;
            Ok(state)
        }
        Some(link) => {
            let cuts = crate::replication::rejoin(&link, &args.data_dir, shards, &mut state)
                .await
                .map_err(|e| format!("cannot join the primary at {}: {e}", link.server))?;
            if cuts.is_none() {
                println!(
                    "paycore node: primary {} unreachable; starting as its standby anyway (promote this node with `paycore promote` if the primary is gone)",
                    link.server
                );
            }
            for cut in cuts.iter().flatten() {
                println!(
                    "paycore node: shard {} rejoins: cut records {}..={} that the primary's history does not hold (none was acknowledged if the old primary ran in sync mode; in async mode some may have been); backups: {}; snapshots removed: {}",
                    cut.shard,
                    cut.tail.first_sequence,
                    cut.tail.last_sequence,
                    cut.tail
                        .backups
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    cut.snapshots_removed.len()
                );
                if !cut.restored.is_empty() {
                    println!(
                        "paycore node: shard {} restarts from its snapshot at or before the cut: {} archived segment(s) moved back into the journal",
                        cut.shard,
                        cut.restored.len()
                    );
                }
                if let Some(sequence) = cut.seeded_at {
                    println!(
                        "paycore node: shard {} could not restart from its own files after the cut (archive incomplete): seeded from the primary's snapshot at sequence {sequence}",
                        cut.shard
                    );
                }
            }
            state.role = Role::Standby;
            state.save(&args.data_dir)?;
            Ok(state)
        }
    }
}

/// Starts the shards and the QUIC listener (inside a tokio runtime).
pub async fn start_node(args: &NodeArgs) -> Result<Node, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.ca.is_none() && !args.listen.ip().is_loopback() {
        if !args.allow_unauthenticated_clients {
            return Err(format!(
                "refusing to listen on {} without client authentication: any process that reaches it could move money and promote. Give --ca <CA certificate> (clients then present certificates naming their role), listen on a loopback address, or, on a private network nothing else reaches, pass --allow-unauthenticated-clients",
                args.listen
            ));
        }
        tracing::warn!(listen = %args.listen, "UNAUTHENTICATED: listening beyond loopback without --ca; every client that reaches this port is an operator (--allow-unauthenticated-clients)");
        println!(
            "paycore node: WARNING: {} is open to every client that reaches it, without authentication (--allow-unauthenticated-clients)",
            args.listen
        );
    }
    let (cert, key, trust_path) = tls_identity(args)?;
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = ReplicationToken::load(
        &args.data_dir,
        args.replication.replication_token_file.as_deref(),
        args.replication.standby_of.is_none(),
    )
    .map_err(|e| e.to_string())?;
    let state = settle_role(args, &token).await?;
    let mut config = sequencer_config(args);
    config.journal.epoch = state.epoch;
    config.standby = state.role == Role::Standby;
    let standby = config.standby;
    let shards = config.shard_count;
    let last_epochs: Vec<u64> = (0..shards)
        .map(|shard| {
            let journal = paycore_snapshot::ShardPaths::new(&args.data_dir, shard).journal;
            MmapStorage::open_dir(&journal)
                .ok()
                .and_then(|storage| paycore_journal::last_record(&storage, shard).ok().flatten())
                .map_or(0, |(_, epoch)| epoch)
        })
        .collect();
    let sequencer = Arc::new(Sequencer::start(config).map_err(|e| e.to_string())?);
    let role = Arc::new(NodeRole::new(
        args.data_dir.clone(),
        args.durability.clone(),
        state,
        args.replication.standby_of,
        shards,
        token.clone(),
    ));
    for (follow, epoch) in role.follows.iter().zip(last_epochs) {
        follow
            .last_epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
    }
    role.hook_commits(&sequencer);
    if !args.store.no_flush {
        let (data_dir, store) = (args.data_dir.clone(), args.store.clone());
        let engine = EngineConfig {
            shard_count: shards,
            ..EngineConfig::default()
        };
        // With a standby, the store only receives what the standby holds too (or what an
        // async primary released alone): a failover never leaves the store ahead.
        let watermarks: Vec<_> = (0..shards)
            .map(|shard| {
                Some(match args.replication.mode() {
                    ReplicationMode::Off => sequencer.durable_watermark(shard).clone(),
                    _ => sequencer.gate(shard).flushable(),
                })
            })
            .collect();
        *role
            .start_flushers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some(crate::replication::FlushStarter(Box::new(move || {
                crate::flush::start_flushers(&data_dir, &engine, watermarks, &store, false)
            })));
        // The embedded SQLite store belongs to this node's folder: a standby keeps its own
        // current too (ready when promoted, and its retention waits for it). A shared
        // PostgreSQL store is written by the primary only.
        if !standby || args.store.postgres_url.is_none() {
            role.start_flushing(&sequencer)?;
        }
    }
    // Events out (issue 19): by the primary, only what the standby holds too (as the store).
    if !standby && args.nats.nats_url.is_some() {
        let watermarks: Vec<_> = (0..shards)
            .map(|shard| {
                Some(match args.replication.mode() {
                    ReplicationMode::Off => sequencer.durable_watermark(shard).clone(),
                    _ => sequencer.gate(shard).flushable(),
                })
            })
            .collect();
        crate::publish::start_in_node(&args.nats, &args.data_dir, watermarks, &sequencer)?;
    }
    let metrics = match args.metrics_listen {
        Some(listen) => Some(
            crate::metrics::serve(listen, Arc::downgrade(&sequencer), role.clone(), None).await?,
        ),
        None => None,
    };
    if standby && let Some(link) = args.replication.link(&args.data_dir, &token) {
        crate::replication::follow(link, sequencer.clone(), role.clone());
    }
    let mut server = server_config(cert, key, args.ca.as_deref())?;
    server.transport_config(Arc::new(server_transport(args)?));
    let authenticated_clients = args.ca.is_some();
    let endpoint = paycore_client::udp::endpoint(args.listen, Some(server))
        .map_err(|e| format!("{}: {e}", args.listen))?;
    let listen = endpoint.local_addr().map_err(|e| e.to_string())?;
    let accept = endpoint.clone();
    let serving = sequencer.clone();
    let serving_role = role.clone();
    let connections_max = args.connections_max as usize;
    let connections = Arc::new(tokio::sync::Semaphore::new(connections_max));
    let node_budget = Arc::new(tokio::sync::Semaphore::new(NODE_REQUEST_BYTES_MAX));
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let Ok(slot) = connections.clone().try_acquire_owned() else {
                tracing::warn!("{connections_max} connections open; refusing another");
                incoming.refuse();
                continue;
            };
            let sequencer = serving.clone();
            let role = serving_role.clone();
            let node_budget = node_budget.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        let client = client_role(&connection, authenticated_clients);
                        serve_connection(connection, sequencer, role, client, node_budget).await
                    }
                    Err(error) => tracing::debug!(%error, "handshake failed"),
                }
                drop(slot);
            });
        }
    });
    Ok(Node {
        endpoint,
        sequencer,
        trust_path,
        fingerprint,
        listen,
        role,
        metrics,
    })
}

/// `paycore node`: serve until SIGINT or SIGTERM, then finish in-flight group commits and exit.
pub fn run_node(args: NodeArgs) -> Result<(), String> {
    run_node_then(args, || Ok(None))
}

/// What [`run_node_then`] runs when the signal to stop arrives, before the node stops.
pub type OnStop = Box<dyn FnOnce() + Send>;

/// [`run_node`], calling `serving` once the node listens (and its certificate exists), before it
/// waits for a signal, and what `serving` returned when the signal arrives, before the node
/// stops: `paycore up` starts its gateway there (its first requests find the node instead of
/// logging that it is not reachable yet) and stops it first.
pub fn run_node_then(
    args: NodeArgs,
    serving: impl FnOnce() -> Result<Option<OnStop>, String>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paycore-net")
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let node = start_node(&args).await?;
        let state = node.role.state();
        println!(
            "paycore node: {} shard(s), data in {}, QUIC on {} (trust {} or sha256 {}), durability {}, {} of epoch {}{}, replication {}",
            node.sequencer.shard_count(),
            args.data_dir.display(),
            node.listen,
            node.trust_path.display(),
            node.fingerprint,
            args.durability,
            state.role.name(),
            state.epoch,
            args.replication
                .standby_of
                .map_or(String::new(), |p| format!(" (following {p})")),
            args.replication.mode().name(),
        );
        if let Some(flushers) = node.role.flushers.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            println!("paycore node: flushing committed state to {}", flushers.target);
        }
        if let Some(metrics) = node.metrics {
            println!("paycore node: metrics on http://{metrics}/metrics");
        }
        let on_stop = serving()?;
        wait_for_signal().await;
        if let Some(on_stop) = on_stop {
            on_stop();
        }
        println!("paycore node: shutting down (finishing in-flight commits)");
        node.endpoint.close(0u32.into(), b"shutting down");
        node.endpoint.wait_idle().await;
        stop_sequencer(node.sequencer).await;
        node.role.stop_flushing();
        crate::publish::stop_in_node(&args.data_dir);
        Ok(())
    })
}

/// Waits (bounded) for the request tasks to let go of the sequencer, then stops the shards:
/// each writer finishes the batch it is committing and exits.
pub async fn stop_sequencer(mut sequencer: Arc<Sequencer>) {
    for _ in 0..250 {
        match Arc::try_unwrap(sequencer) {
            Ok(owned) => {
                owned.shutdown();
                return;
            }
            Err(shared) => {
                sequencer = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::warn!("requests still running after 5 s; leaving the shards to the process exit");
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The QUIC transport every node connection gets: bounded stream and connection windows (what
/// a client may have sent that the node has not read), a bounded send window, at most
/// [`STREAMS_PER_CONNECTION_MAX`] streams, and the idle and keep-alive policy.
fn server_transport(args: &NodeArgs) -> Result<quinn::TransportConfig, String> {
    if args.quic_keep_alive_ms.saturating_mul(3) > args.quic_idle_timeout_ms {
        return Err(format!(
            "--quic-keep-alive-ms {} must be at most a third of --quic-idle-timeout-ms {}",
            args.quic_keep_alive_ms, args.quic_idle_timeout_ms
        ));
    }
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(args.quic_idle_timeout_ms))
        .map_err(|e| format!("--quic-idle-timeout-ms: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into());
    transport.send_window(CONNECTION_SEND_WINDOW_BYTES);
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(Duration::from_millis(args.quic_keep_alive_ms)));
    Ok(transport)
}

/// A connection's role: from its certificate when clients must present one, else `operator`
/// (a loopback listener: see `client_role.rs`).
fn client_role(connection: &quinn::Connection, authenticated_clients: bool) -> ClientRole {
    if !authenticated_clients {
        return ClientRole::Operator;
    }
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(ClientRole::of_certificate))
        .unwrap_or(ClientRole::ReadOnly)
}

async fn serve_connection(
    connection: quinn::Connection,
    sequencer: Arc<Sequencer>,
    role: Arc<NodeRole>,
    client: ClientRole,
    node_budget: Arc<tokio::sync::Semaphore>,
) {
    let budget = Arc::new(tokio::sync::Semaphore::new(CONNECTION_REQUEST_BYTES_MAX));
    // Set once the connection presented the replication token (`authenticate`).
    let replica = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let sequencer = sequencer.clone();
                let connection = connection.clone();
                let budget = budget.clone();
                let role = role.clone();
                let replica = replica.clone();
                let node_budget = node_budget.clone();
                tokio::spawn(async move {
                    let peer = Peer {
                        budget,
                        node_budget,
                        replica,
                        role: client,
                    };
                    if let Some(code) = serve_stream(send, recv, sequencer, role, peer).await
                        && code.closes_connection()
                    {
                        connection.close(u32::from(code.0).into(), code.name().as_bytes());
                    }
                });
            }
            Err(_) => return,
        }
    }
}

/// What a request knows of the connection it came on.
struct Peer {
    /// The connection's share of request memory.
    budget: Arc<tokio::sync::Semaphore>,
    /// Every connection's together.
    node_budget: Arc<tokio::sync::Semaphore>,
    /// What the connection may send.
    role: ClientRole,
    /// The connection presented the replication token: it may act as a standby.
    replica: Arc<std::sync::atomic::AtomicBool>,
}

impl Peer {
    fn is_replica(&self) -> bool {
        self.replica.load(std::sync::atomic::Ordering::Acquire)
    }

    /// May this connection's role send `frame` (replication is checked by the token)?
    fn allows(&self, frame: &Frame) -> bool {
        match frame {
            Frame::SubmitBatch { commands } => commands.iter().all(|command| match command {
                paycore_engine::Command::Client { op, .. } => self.role.allows_op(op),
                _ => false,
            }),
            Frame::Admin(command) => self.role.allows_admin(command),
            _ => true,
        }
    }
}

/// The answer to a replication frame from a connection without the replication token.
fn replication_unauthorized() -> Frame {
    Frame::error(
        ErrorCode::UNAUTHORIZED,
        "replication needs the cluster's replication token: start the standby with --replication-token-file (a copy of the primary's <data_dir>/replication.token)",
    )
}

/// Answers one request; returns the error code it answered with, if any.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    sequencer: Arc<Sequencer>,
    role: Arc<NodeRole>,
    peer: Peer,
) -> Option<ErrorCode> {
    // The length prefix first: it says how much memory the frame needs, before any is taken.
    let mut prefix = [0u8; 4];
    if recv.read_exact(&mut prefix).await.is_err() {
        return None;
    }
    let frame_bytes = 4 + u32::from_le_bytes(prefix) as usize;
    let (request_id, answer) = if frame_bytes > FRAME_BYTES_MAX {
        let message = format!("frames are at most {FRAME_BYTES_MAX} bytes, not {frame_bytes}");
        (0, Frame::error(ErrorCode::FRAME_TOO_LARGE, message))
    } else {
        // Admitted only when both this connection's and the node's request budgets have
        // room; else answered `overloaded` at once and the stream stopped (its buffered bytes
        // are dropped, so what waits unread in the QUIC stack stays within its window).
        let permits = peer
            .budget
            .clone()
            .try_acquire_many_owned(frame_bytes as u32)
            .and_then(|own| {
                let node = peer
                    .node_budget
                    .clone()
                    .try_acquire_many_owned(frame_bytes as u32)?;
                Ok((own, node))
            });
        let Ok(permit) = permits else {
            let _ = recv.stop(u32::from(ErrorCode::OVERLOADED.0).into());
            let frame = Frame::error(
                ErrorCode::OVERLOADED,
                format!(
                    "this connection's requests hold {CONNECTION_REQUEST_BYTES_MAX} bytes (or the node's {NODE_REQUEST_BYTES_MAX}); retry when answers have come back"
                ),
            );
            let mut bytes = Vec::new();
            let _ = encode(&frame, 0, &mut bytes);
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
            return Some(ErrorCode::OVERLOADED);
        };
        let mut bytes = vec![0u8; frame_bytes];
        bytes[..4].copy_from_slice(&prefix);
        if recv.read_exact(&mut bytes[4..]).await.is_err() {
            return None;
        }
        match decode(&bytes) {
            Err(error) => (error.request_id.unwrap_or(0), error.to_frame()),
            Ok((id, Frame::Subscribe { from })) => {
                drop((bytes, permit));
                return subscribe(send, id, from, &sequencer).await;
            }
            Ok((id, Frame::Authenticate { token })) => {
                if role.token.matches(&token) {
                    peer.replica
                        .store(true, std::sync::atomic::Ordering::Release);
                    (
                        id,
                        Frame::Authenticated {
                            role: "replica".into(),
                        },
                    )
                } else {
                    tracing::warn!("a connection presented an unknown replication token");
                    (
                        id,
                        Frame::error(ErrorCode::UNAUTHORIZED, "unknown replication token"),
                    )
                }
            }
            Ok((id, Frame::ReplicaHello { .. } | Frame::ReplicaSnapshotRequest { .. }))
                if !peer.is_replica() =>
            {
                (id, replication_unauthorized())
            }
            Ok((id, frame)) if !peer.allows(&frame) => (
                id,
                Frame::error(
                    ErrorCode::UNAUTHORIZED,
                    format!(
                        "a {} client may not send this (see docs/security.md, node client roles)",
                        peer.role.name()
                    ),
                ),
            ),
            Ok((
                id,
                Frame::ReplicaHello {
                    shard,
                    from_sequence,
                    last_epoch,
                    epoch,
                },
            )) => {
                drop((bytes, permit));
                let hello = (shard, from_sequence, last_epoch, epoch);
                return crate::replication::serve_standby(send, recv, id, hello, sequencer, role)
                    .await;
            }
            Ok((id, Frame::ReplicaSnapshotRequest { shard })) => {
                drop((bytes, permit));
                return crate::replication::serve_snapshot(send, id, shard, sequencer, role).await;
            }
            Ok((id, Frame::Admin(command))) => (id, admin(command, &sequencer, &role).await),
            Ok((id, frame)) => (id, answer(frame, &sequencer).await),
        }
    };
    let code = match &answer {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    };
    let mut bytes = Vec::new();
    if encode(&answer, request_id, &mut bytes).is_err() {
        bytes.clear();
        let internal = Frame::error(ErrorCode::INTERNAL, "answer did not encode");
        let _ = encode(&internal, request_id, &mut bytes);
    }
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    if code.is_some_and(ErrorCode::closes_connection) {
        // Let the error frame reach the peer before the connection is closed (bounded wait).
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
    code
}

/// Operator commands: status and promotion.
async fn admin(command: AdminCommand, sequencer: &Arc<Sequencer>, role: &Arc<NodeRole>) -> Frame {
    match command {
        AdminCommand::Status => Frame::AdminResult {
            json: crate::replication::status_json(sequencer, role),
        },
        AdminCommand::Promote { force } => {
            match crate::replication::promote(sequencer, role, force).await {
                Ok(json) => Frame::AdminResult { json },
                Err(message) => Frame::error(ErrorCode::REFUSED, message),
            }
        }
    }
}

async fn answer(frame: Frame, sequencer: &Arc<Sequencer>) -> Frame {
    match frame {
        Frame::SubmitBatch { commands } => {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            sequencer.submit_with(
                commands,
                Box::new(move |results| {
                    let _ = sender.send(results);
                }),
            );
            match receiver.await {
                Ok(results) => Frame::BatchResult {
                    results: results.into_iter().map(wire_result).collect(),
                },
                Err(_) => Frame::error(ErrorCode::SHUTTING_DOWN, "the node is shutting down"),
            }
        }
        Frame::Query(query) => match run_query(query, sequencer).await {
            Ok(result) => Frame::QueryResult(result),
            Err(failed) => failed.frame(),
        },
        _ => Frame::error(
            ErrorCode::UNEXPECTED_FRAME,
            "clients send submit_batch, query or subscribe",
        ),
    }
}

/// Batches read per shard per turn of a subscription.
const SUBSCRIPTION_BATCHES_PER_TURN: usize = 64;
/// How long an idle subscription waits before looking for new events again.
const SUBSCRIPTION_IDLE_MS: u64 = 2;

/// Streams the committed events of every shard from the requested positions until the client
/// goes away: per shard in sequence order, one `events` frame per command with events, and a
/// progress mark after commands without events. Returns the error code it ended with, if any.
async fn subscribe(
    mut send: quinn::SendStream,
    request_id: u64,
    from: Vec<(u16, u64)>,
    sequencer: &Arc<Sequencer>,
) -> Option<ErrorCode> {
    let shards = sequencer.shard_count();
    let mut bytes = Vec::new();
    if let Some((shard, _)) = from.iter().find(|(shard, _)| *shard >= shards) {
        let frame = Frame::error(
            ErrorCode::SHARD_UNAVAILABLE,
            format!("this node serves shards 0..{shards}, not {shard}"),
        );
        write_frame(&mut send, request_id, &frame, &mut bytes).await;
        let _ = send.finish();
        return Some(ErrorCode::SHARD_UNAVAILABLE);
    }
    let mut positions: Vec<u64> = (0..shards)
        .map(|shard| match from.iter().find(|(s, _)| *s == shard) {
            Some((_, sequence)) => (*sequence).max(1),
            None => sequencer.events(shard).first_kept(),
        })
        .collect();
    // Per shard, the archive reader of a subscriber behind the memory window.
    let mut archived: Vec<Option<paycore_sequencer::event_archive::ArchiveReader>> =
        (0..shards).map(|_| None).collect();
    // Resolves when the subscriber stops reading or its connection is lost.
    let mut gone = std::pin::pin!(send.stopped());
    loop {
        let mut sent = false;
        for shard in 0..shards {
            let position = positions[usize::from(shard)];
            let batches = match sequencer
                .events(shard)
                .read(position, SUBSCRIPTION_BATCHES_PER_TURN)
            {
                paycore_sequencer::Read::Batches(batches) => {
                    archived[usize::from(shard)] = None;
                    batches
                }
                paycore_sequencer::Read::Unavailable { oldest_kept } => {
                    let reader = archived[usize::from(shard)].take();
                    match from_archive(sequencer, shard, position, oldest_kept, reader).await {
                        Ok((batches, reader)) => {
                            archived[usize::from(shard)] = Some(reader);
                            batches
                        }
                        Err(first_available) => {
                            let frame = Frame::error(
                                ErrorCode::POSITION_UNAVAILABLE,
                                position_unavailable(shard, position, first_available),
                            );
                            write_frame(&mut send, request_id, &frame, &mut bytes).await;
                            let _ = send.finish();
                            return Some(ErrorCode::POSITION_UNAVAILABLE);
                        }
                    }
                }
            };
            for batch in batches {
                let mut index = 0;
                while index < batch.events.len() {
                    let sequence = batch.events[index].0;
                    let end = batch.events[index..]
                        .iter()
                        .position(|(s, _)| *s != sequence)
                        .map_or(batch.events.len(), |n| index + n);
                    if sequence >= position {
                        let events: Vec<paycore_engine::Event> =
                            batch.events[index..end].iter().map(|(_, e)| *e).collect();
                        let total = events.len() as u32;
                        for (part, chunk) in events
                            .chunks(paycore_protocol::EVENTS_PER_FRAME_MAX)
                            .enumerate()
                        {
                            let frame = Frame::Events {
                                shard,
                                sequence,
                                timestamp_ns: batch.timestamp_ns,
                                first_index: (part * paycore_protocol::EVENTS_PER_FRAME_MAX) as u32,
                                events_total: total,
                                events: chunk.to_vec(),
                            };
                            if !write_frame(&mut send, request_id, &frame, &mut bytes).await {
                                return None;
                            }
                        }
                    }
                    index = end;
                }
                let last_with_events = batch.events.last().map_or(0, |(s, _)| *s);
                if last_with_events < batch.last_sequence {
                    let mark = Frame::Events {
                        shard,
                        sequence: batch.last_sequence,
                        timestamp_ns: batch.timestamp_ns,
                        first_index: 0,
                        events_total: 0,
                        events: Vec::new(),
                    };
                    if !write_frame(&mut send, request_id, &mark, &mut bytes).await {
                        return None;
                    }
                }
                positions[usize::from(shard)] = batch.last_sequence + 1;
                sent = true;
            }
        }
        if !sent {
            // Idle: wait for new events, or end at once when the subscriber is gone (a vanished
            // client would otherwise hold the shards until the next event it cannot receive,
            // and a node stopping would wait for it).
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(SUBSCRIPTION_IDLE_MS)) => {}
                _ = &mut gone => return None,
            }
        }
    }
}

/// The message of a `position_unavailable` refusal; it ends with `first_available=<n>`, the
/// first sequence the node can still give (read by [`paycore_client::first_available`]).
fn position_unavailable(shard: u16, position: u64, first_available: u64) -> String {
    format!(
        "shard {shard}: events from sequence {position} are older than the journal's retention; first_available={first_available}"
    )
}

/// Batches of `shard` from `position` read from the event archive (off the async threads),
/// for a subscriber behind the memory window; or the first sequence still available.
async fn from_archive(
    sequencer: &Arc<Sequencer>,
    shard: u16,
    position: u64,
    oldest_kept: u64,
    reader: Option<paycore_sequencer::event_archive::ArchiveReader>,
) -> Result<
    (
        Vec<Arc<paycore_sequencer::EventBatch>>,
        paycore_sequencer::event_archive::ArchiveReader,
    ),
    u64,
> {
    use paycore_sequencer::event_archive::ArchiveRead;
    let mut reader = match reader {
        Some(reader) if reader.position() == position => reader,
        _ => sequencer
            .events(shard)
            .archive_reader(position)
            .map_err(|first| if first == 0 { oldest_kept } else { first })?,
    };
    let (reader, read) = tokio::task::spawn_blocking(move || {
        let read = reader.read(SUBSCRIPTION_BATCHES_PER_TURN);
        (reader, read)
    })
    .await
    .map_err(|_| oldest_kept)?;
    match read {
        ArchiveRead::Batches(batches) if !batches.is_empty() => {
            Ok((batches.into_iter().map(Arc::new).collect(), reader))
        }
        // The archive ends before the memory window begins (it stopped after a write
        // failure): what lies between is gone.
        ArchiveRead::Batches(_) => Err(oldest_kept),
        ArchiveRead::Unavailable { first_available } => Err(first_available.min(oldest_kept)),
    }
}

fn wire_result(result: paycore_sequencer::CommandResult) -> CommandResult {
    match result {
        paycore_sequencer::CommandResult::Outcome(outcome) => CommandResult::Outcome(outcome),
        paycore_sequencer::CommandResult::Busy => CommandResult::Busy,
        paycore_sequencer::CommandResult::ShardUnavailable => CommandResult::ShardUnavailable,
        paycore_sequencer::CommandResult::DiskFull => CommandResult::DiskFull,
    }
}

/// Why a client's read got no answer.
enum ReadFailed {
    /// The shard's ring is full: retry.
    Busy,
    /// The shard is gone, or what the read would show was not released in time (a standby
    /// that does not acknowledge): retry later.
    NotReleased,
    /// This primary has been replaced: ask the new one.
    Fenced,
}

impl ReadFailed {
    fn frame(self) -> Frame {
        match self {
            ReadFailed::Busy => {
                Frame::error(ErrorCode::SHARD_UNAVAILABLE, "the shard is busy; retry")
            }
            ReadFailed::NotReleased => Frame::error(
                ErrorCode::SHARD_UNAVAILABLE,
                "the shard did not answer in time, or the state this read would show is not yet replicated to the standby; retry",
            ),
            ReadFailed::Fenced => Frame::error(
                ErrorCode::NOT_PRIMARY,
                "this primary has been replaced by a newer one: it answers no reads",
            ),
        }
    }
}

/// A client's read on `shard`'s writer thread: answered once everything it shows is
/// released (see `Sequencer::read_with`), within [`QUERY_TIMEOUT`].
async fn on_shard<R: Send + 'static>(
    sequencer: &Arc<Sequencer>,
    shard: u16,
    read: impl FnOnce(&ReadView<'_>) -> R + Send + 'static,
) -> Result<R, ReadFailed> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    if sequencer.is_fenced() {
        return Err(ReadFailed::Fenced);
    }
    sequencer
        .read_with(shard, read, move |answer| {
            let _ = sender.send(answer);
        })
        .map_err(|refused| match refused {
            paycore_sequencer::CommandResult::Busy => ReadFailed::Busy,
            _ if sequencer.is_fenced() => ReadFailed::Fenced,
            _ => ReadFailed::NotReleased,
        })?;
    match tokio::time::timeout(QUERY_TIMEOUT, receiver).await {
        Ok(Ok(answer)) => Ok(answer),
        _ if sequencer.is_fenced() => Err(ReadFailed::Fenced),
        _ => Err(ReadFailed::NotReleased),
    }
}

/// A wallet as a client sees it, noting its change time for the release check.
fn wallet_view(view: &ReadView<'_>, id: paycore_engine::WalletId) -> Option<WalletView> {
    let engine = view.engine();
    let wallet = engine.wallet(id)?;
    view.saw(wallet.updated_at_ns);
    Some(WalletView::new(
        id,
        &wallet,
        engine.currency(wallet.currency)?,
    ))
}

async fn run_query(query: Query, sequencer: &Arc<Sequencer>) -> Result<QueryResult, ReadFailed> {
    let shards = sequencer.shard_count();
    let owner = |shard: u16| if shard < shards { shard } else { 0 };
    Ok(match query {
        Query::WalletById(id) => QueryResult::Wallet(
            on_shard(sequencer, owner(id.shard()), move |view| {
                wallet_view(view, id)
            })
            .await?,
        ),
        Query::WalletsOfUser(user) => QueryResult::Wallets(
            on_shard(sequencer, user.shard(shards), move |view| {
                view.engine()
                    .user_wallets(user)
                    .into_iter()
                    .filter_map(|id| wallet_view(view, id))
                    .collect()
            })
            .await?,
        ),
        Query::HoldById(hold) => QueryResult::Hold(
            on_shard(sequencer, owner(hold.shard()), move |view| {
                // A hold that is gone may have been captured or voided by a batch not yet
                // released: its absence waits like any unreleased change.
                let found = view.engine().hold(hold).map(HoldView::from);
                match &found {
                    Some(found) => view.saw(found.created_at_ns),
                    None => view.saw_unknown(),
                }
                found
            })
            .await?,
        ),
        Query::OutcomeByKey { shard, key } => QueryResult::Outcome(
            on_shard(sequencer, owner(shard), move |view| {
                let (outcome, recorded_at_ns) = view.engine().outcome_at(&key)?;
                view.saw(recorded_at_ns);
                Some(outcome)
            })
            .await?,
        ),
        // From the counters each writer publishes: never waits for a writer thread, so it
        // answers exactly when a shard is stuck (which is when operators ask).
        Query::Status => {
            let mut status = StatusView::default();
            for shard in 0..shards {
                let stats = sequencer.stats(shard);
                let load = |counter: &std::sync::atomic::AtomicU64| {
                    counter.load(std::sync::atomic::Ordering::Acquire)
                };
                status.shards.push(ShardStatus {
                    shard,
                    last_sequence: load(&stats.last_sequence),
                    last_timestamp_ns: load(&stats.engine.last_timestamp_ns),
                    wallets: load(&stats.engine.wallets),
                    open_holds: load(&stats.engine.open_holds),
                    transfers_in_flight: load(&stats.engine.transfers_in_flight),
                    idempotency_entries: load(&stats.engine.idempotency_entries),
                    idempotency_evicted_early: load(&stats.engine.idempotency_evicted_early),
                    durable_sequence: load(&stats.durable_sequence),
                    ring_depth: sequencer.ring_depth(shard) as u64,
                    ring_capacity: sequencer.ring_capacity() as u64,
                    extra: Vec::new(),
                });
            }
            QueryResult::Status(status)
        }
    })
}
