//! Hot standby: journal replication between nodes, promotion and fencing (`docs/design.md`
//! §16).
//!
//! - **Primary side** ([`serve_standby`]): a standby's `replica_hello` for a shard opens a
//!   stream. The primary checks epochs (fencing) and the standby's history (a returning old
//!   primary's tail may have diverged), answers `replica_welcome`, then sends the shard's
//!   durable journal records as the journal frames them, and reads `replica_ack`s into the
//!   shard's replication gate (which releases sync replies).
//! - **Standby side** ([`follow`]): one task per shard connects to the primary, says hello
//!   from its own last record, hands received records to its shard writer (journal, then
//!   apply: the standby is hot) and acknowledges its durable sequence. It reconnects with
//!   backoff when the link drops.
//! - **Before a standby starts** ([`rejoin`]): the same hello, once per shard; a
//!   `replica_diverged` answer cuts the local tail after the named sequence (backed up, and
//!   reported) — that is how an old primary rejoins.
//! - **Promotion** ([`promote`]): stop following, let every shard apply what it received,
//!   start a new epoch (persisted first), take writes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paycore_journal::format::{Parsed, parse_record, record_bytes, write_record};
use paycore_journal::{JournalReader, MmapStorage};
use paycore_protocol::{EpochStart, ErrorCode, Frame, REPLICA_RECORDS_BYTES_MAX};
use paycore_sequencer::{ReplicationMode, Sequencer};
use serde_json::json;

use crate::frames::{read_frame, send_frame};
use crate::node_state::{NodeState, Role};

/// Records per `replica_records` frame (fewer when they would pass the byte limit).
const RECORDS_PER_FRAME_MAX: usize = 8192;
/// Longest a sender waits for a commit before looking at the journal again.
const SENDER_IDLE_MS: u64 = 20;
/// Longest wait for a standby's shard writer to take and journal a frame of records.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames a standby has read and not yet journaled, per shard.
const FRAMES_WAITING_MAX: usize = 256;
/// Reconnection backoff of a standby, doubling from the first to the last.
const RECONNECT_BACKOFF_MS: (u64, u64) = (50, 2_000);

/// One shard as its standby follower sees it.
#[derive(Debug, Default)]
pub struct Follow {
    /// The primary's durable sequence, as last reported.
    pub primary_durable: AtomicU64,
    /// Epoch of the last record this node holds.
    pub last_epoch: AtomicU64,
    pub connected: AtomicBool,
    /// When a record was last received (ms since the Unix epoch; 0: never).
    pub last_received_ms: AtomicU64,
}

/// The node's replication role, shared by its connection tasks.
#[derive(Debug)]
pub struct NodeRole {
    pub data_dir: PathBuf,
    pub durability: String,
    pub state: Mutex<NodeState>,
    /// The primary's replication mode as its welcome said (0 off, 1 async, 2 sync).
    pub primary_mode: AtomicU8,
    pub standby_of: Option<SocketAddr>,
    /// Per shard, for a standby.
    pub follows: Vec<Follow>,
    /// Per shard: woken by the shard writer after each group commit (senders wait on it).
    pub commits: Vec<Arc<tokio::sync::Notify>>,
    /// Set by a promotion: followers stop taking records.
    pub stop_following: AtomicBool,
    /// Follower tasks (aborted by a promotion).
    pub followers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The store flushers, which run on the primary only (a promotion starts them).
    pub flushers: Mutex<Option<crate::flush::FlushHandles>>,
    /// Starts the flushers (set by the node; taken by whoever starts them first).
    pub start_flushers: Mutex<Option<FlushStarter>>,
    /// The cluster's replication token: checked from standbys, presented to a primary.
    pub token: crate::credentials::ReplicationToken,
}

/// Starts this node's store flushers.
pub struct FlushStarter(pub Box<dyn FnOnce() -> Result<crate::flush::FlushHandles, String> + Send>);

impl std::fmt::Debug for FlushStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushStarter")
    }
}

impl NodeRole {
    /// Starts the flushers if they are not running and the node may run them.
    pub fn start_flushing(&self, sequencer: &Sequencer) -> Result<(), String> {
        let starter = self
            .start_flushers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(starter) = starter else {
            return Ok(());
        };
        let handles = (starter.0)()?;
        for shard in 0..sequencer.shard_count() {
            if let Some(flushed) = handles.flushed_sequence(shard) {
                sequencer.add_retention_floor(shard, flushed);
            }
        }
        *self.flushers.lock().unwrap_or_else(|p| p.into_inner()) = Some(handles);
        Ok(())
    }

    /// Stops the flushers, if any run (the checkpoint says where the next start resumes).
    pub fn stop_flushing(&self) {
        let handles = self
            .flushers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handles) = handles {
            handles.stop();
        }
    }
}

impl NodeRole {
    pub fn new(
        data_dir: PathBuf,
        durability: String,
        state: NodeState,
        standby_of: Option<SocketAddr>,
        shards: u16,
        token: crate::credentials::ReplicationToken,
    ) -> NodeRole {
        NodeRole {
            data_dir,
            durability,
            state: Mutex::new(state),
            primary_mode: AtomicU8::new(0),
            standby_of,
            follows: (0..shards).map(|_| Follow::default()).collect(),
            commits: (0..shards)
                .map(|_| Arc::new(tokio::sync::Notify::new()))
                .collect(),
            stop_following: AtomicBool::new(false),
            followers: Mutex::new(Vec::new()),
            flushers: Mutex::new(None),
            start_flushers: Mutex::new(None),
            token,
        }
    }

    pub fn state(&self) -> NodeState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets each shard writer wake this node's replication senders after a commit.
    pub fn hook_commits(&self, sequencer: &Sequencer) {
        for (shard, notify) in self.commits.iter().enumerate() {
            let notify = notify.clone();
            sequencer
                .gate(shard as u16)
                .set_commit_hook(Arc::new(move || notify.notify_waiters()));
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mode_byte(mode: ReplicationMode) -> u8 {
    match mode {
        ReplicationMode::Off => 0,
        ReplicationMode::Async { .. } => 1,
        ReplicationMode::Sync => 2,
    }
}

/// What a primary answers a hello with, before streaming.
enum Verdict {
    Welcome(Vec<EpochStart>),
    Diverged { keep_through: u64 },
    Refuse(ErrorCode, String),
}

fn judge(
    role: &NodeRole,
    sequencer: &Sequencer,
    shard: u16,
    from_sequence: u64,
    last_epoch: u64,
    epoch: u64,
) -> Verdict {
    let state = role.state();
    if state.role != Role::Primary || !sequencer.is_primary() {
        return Verdict::Refuse(ErrorCode::NOT_PRIMARY, "this node is a standby".into());
    }
    if shard >= sequencer.shard_count() {
        return Verdict::Refuse(
            ErrorCode::SHARD_UNAVAILABLE,
            format!("no shard {shard} here"),
        );
    }
    if epoch > state.epoch || last_epoch > state.epoch {
        // Authenticated standbys only reach here (see `serve_standby`): a newer epoch is the
        // word of a node of this cluster. From now on this node neither writes nor reads.
        sequencer.fence();
        tracing::error!(
            shard,
            standby_epoch = epoch,
            own_epoch = state.epoch,
            "a standby knows a newer epoch: this primary has been replaced (fenced)"
        );
        return Verdict::Refuse(
            ErrorCode::STALE_EPOCH,
            format!(
                "this primary is at epoch {} but the standby knows epoch {}: a newer primary exists",
                state.epoch,
                epoch.max(last_epoch)
            ),
        );
    }
    let held = from_sequence.saturating_sub(1);
    let own_last = sequencer.durable_watermark(shard).load(Ordering::Acquire);
    if held > 0 && last_epoch > 0 {
        if let Some(end) = state.end_of_epoch(shard, last_epoch)
            && held > end
        {
            return Verdict::Diverged { keep_through: end };
        }
        if held > own_last {
            return Verdict::Refuse(
                ErrorCode::REFUSED,
                format!(
                    "shard {shard}: the standby holds records up to {held} of epoch {last_epoch}, this primary only up to {own_last}; refusing to guess which is right"
                ),
            );
        }
    }
    let first_available =
        first_journal_sequence(sequencer.journal_dir(shard)).unwrap_or(own_last + 1);
    if from_sequence < first_available {
        return Verdict::Refuse(
            ErrorCode::POSITION_UNAVAILABLE,
            format!(
                "shard {shard}: records from {from_sequence} are archived here (the journal starts at {first_available}); ask for the newest snapshot first"
            ),
        );
    }
    Verdict::Welcome(state.history[usize::from(shard)].clone())
}

/// First sequence of the oldest live journal segment (`None`: no segment yet).
fn first_journal_sequence(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            paycore_journal::format::parse_segment_name(&entry.file_name().to_string_lossy())
        })
        .min()
}

/// Bytes of a snapshot sent per `replica_snapshot_chunk`.
const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// Primary: sends the shard's newest snapshot file to a standby that needs it.
pub async fn serve_snapshot(
    mut send: quinn::SendStream,
    request_id: u64,
    shard: u16,
    sequencer: Arc<Sequencer>,
    role: Arc<NodeRole>,
) -> Option<ErrorCode> {
    let refuse = |code: ErrorCode, message: String| (code, message);
    let result: Result<(), (ErrorCode, String)> = async {
        if !sequencer.is_primary() || shard >= sequencer.shard_count() {
            return Err(refuse(
                ErrorCode::NOT_PRIMARY,
                "this node does not serve snapshots of that shard".into(),
            ));
        }
        let dir = paycore_snapshot::ShardPaths::new(&role.data_dir, shard).snapshots;
        let newest = || {
            paycore_snapshot::list_snapshots(&dir)
                .map_err(|e| refuse(ErrorCode::INTERNAL, e.to_string()))
                .map(|found| found.into_iter().max_by_key(|(sequence, _)| *sequence))
        };
        let mut newest = newest_snapshot_or_wait(newest, &sequencer, shard).await?;
        let Some((sequence, path)) = newest.take() else {
            return Err(refuse(
                ErrorCode::POSITION_UNAVAILABLE,
                format!("shard {shard} has no snapshot yet"),
            ));
        };
        // Opened once: a snapshot pruned meanwhile stays readable through this handle.
        let mut file = std::fs::File::open(&path)
            .map_err(|e| refuse(ErrorCode::INTERNAL, format!("{}: {e}", path.display())))?;
        let total_bytes = file
            .metadata()
            .map_err(|e| refuse(ErrorCode::INTERNAL, e.to_string()))?
            .len();
        tracing::info!(
            shard,
            sequence,
            total_bytes,
            "sending a snapshot to a standby"
        );
        let mut offset = 0u64;
        let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        while offset < total_bytes {
            let len = (total_bytes - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
            use std::io::Read;
            file.read_exact(&mut chunk[..len])
                .map_err(|e| refuse(ErrorCode::INTERNAL, format!("{}: {e}", path.display())))?;
            let frame = Frame::ReplicaSnapshotChunk {
                shard,
                sequence,
                total_bytes,
                offset,
                bytes: chunk[..len].to_vec(),
            };
            if !send_frame(&mut send, request_id, &frame).await {
                return Ok(());
            }
            offset += len as u64;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
            None
        }
        Err((code, message)) => {
            send_frame(&mut send, request_id, &Frame::error(code, message)).await;
            let _ = send.finish();
            Some(code)
        }
    }
}

/// Longest a snapshot request waits for a snapshot the primary takes for it.
const SNAPSHOT_ON_REQUEST_WAIT: Duration = Duration::from_secs(120);

/// The shard's newest snapshot; when it has none yet (a promoted standby, a young primary),
/// asks the snapshot replica for one and waits for it (bounded).
async fn newest_snapshot_or_wait<F>(
    newest: F,
    sequencer: &Sequencer,
    shard: u16,
) -> Result<Option<(u64, PathBuf)>, (ErrorCode, String)>
where
    F: Fn() -> Result<Option<(u64, PathBuf)>, (ErrorCode, String)>,
{
    let found = newest()?;
    if found.is_some() || !sequencer.request_snapshot(shard) {
        return Ok(found);
    }
    tracing::info!(
        shard,
        "a standby needs a snapshot and there is none: taking one"
    );
    let started = Instant::now();
    while started.elapsed() < SNAPSHOT_ON_REQUEST_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(found) = newest()? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Standby, before its shards open: fetches the primary's newest snapshot of `shard` into
/// the shard's snapshot folder (temporary name, fsync, rename, folder fsync) and archives the
/// local journal segments it supersedes. Returns the snapshot's sequence.
async fn seed_from_snapshot(
    client: &paycore_client::Client,
    paths: &paycore_snapshot::ShardPaths,
    shard: u16,
) -> Result<u64, String> {
    let (mut send, mut recv) = client
        .connection()
        .open_bi()
        .await
        .map_err(|e| e.to_string())?;
    if !send_frame(&mut send, 1, &Frame::ReplicaSnapshotRequest { shard }).await {
        return Err("the primary closed the stream".into());
    }
    let _ = send.finish();
    std::fs::create_dir_all(&paths.snapshots)
        .map_err(|e| format!("{}: {e}", paths.snapshots.display()))?;
    let temporary = paths.snapshots.join("seed.snap.tmp");
    let io = |e: std::io::Error| format!("{}: {e}", temporary.display());
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    let mut expected_offset = 0u64;
    let sequence = loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut recv))
            .await
            .map_err(|_| "the primary stopped sending the snapshot".to_string())??;
        match frame {
            Some((
                _,
                Frame::ReplicaSnapshotChunk {
                    sequence,
                    total_bytes,
                    offset,
                    bytes,
                    ..
                },
            )) => {
                if offset != expected_offset || offset + bytes.len() as u64 > total_bytes {
                    return Err(format!(
                        "snapshot chunk at {offset} (+{}) of {total_bytes}, {expected_offset} expected",
                        bytes.len()
                    ));
                }
                use std::io::Write;
                file.write_all(&bytes).map_err(io)?;
                expected_offset += bytes.len() as u64;
                if expected_offset == total_bytes {
                    break sequence;
                }
            }
            Some((_, Frame::Error { code, message })) => return Err(format!("{code}: {message}")),
            Some((_, other)) => {
                return Err(format!(
                    "unexpected frame for a snapshot: {:?}",
                    other.kind()
                ));
            }
            None => return Err("the primary ended the snapshot early".into()),
        }
    };
    file.sync_all().map_err(io)?;
    drop(file);
    // The local journal ends before the snapshot: its segments move to the archive folder so
    // that the journal continues at the snapshot's next sequence.
    let mut storage = MmapStorage::open_dir(&paths.journal)
        .map_err(|e| format!("{}: {e}", paths.journal.display()))?;
    use paycore_journal::Storage;
    for name in storage
        .list()
        .map_err(|e| format!("{}: {e}", paths.journal.display()))?
    {
        if paycore_journal::format::parse_segment_name(&name).is_some() {
            storage
                .archive(&name)
                .map_err(|e| format!("{}: {e}", storage.path(&name).display()))?;
        }
    }
    let target = paths.snapshots.join(format!("{sequence:020}.snap"));
    std::fs::rename(&temporary, &target).map_err(io)?;
    paycore_journal::sync_dir(&paths.snapshots).map_err(io)?;
    Ok(sequence)
}

/// Primary: serves one shard's replication stream until the standby goes away.
pub async fn serve_standby(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    request_id: u64,
    hello: (u16, u64, u64, u64),
    sequencer: Arc<Sequencer>,
    role: Arc<NodeRole>,
) -> Option<ErrorCode> {
    let (shard, from_sequence, last_epoch, epoch) = hello;
    let history = match judge(&role, &sequencer, shard, from_sequence, last_epoch, epoch) {
        Verdict::Welcome(history) => history,
        Verdict::Diverged { keep_through } => {
            let state = role.state();
            tracing::warn!(
                shard,
                keep_through,
                "a returning standby holds records the history does not: told to cut them"
            );
            let frame = Frame::ReplicaDiverged {
                shard,
                epoch: state.epoch,
                keep_through,
            };
            send_frame(&mut send, request_id, &frame).await;
            let _ = send.finish();
            return None;
        }
        Verdict::Refuse(code, message) => {
            send_frame(&mut send, request_id, &Frame::error(code, message)).await;
            let _ = send.finish();
            if code.closes_connection() {
                // The caller closes the connection: let the error reach the standby first.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            }
            return Some(code);
        }
    };
    let gate = sequencer.gate(shard).clone();
    let welcome = Frame::ReplicaWelcome {
        shard,
        epoch: role.state().epoch,
        mode: mode_byte(gate.mode()),
        history,
    };
    if !send_frame(&mut send, request_id, &welcome).await {
        return None;
    }
    let storage = match MmapStorage::open_dir(sequencer.journal_dir(shard)) {
        Ok(storage) => storage,
        Err(error) => {
            let frame = Frame::error(ErrorCode::INTERNAL, error.to_string());
            send_frame(&mut send, request_id, &frame).await;
            return Some(ErrorCode::INTERNAL);
        }
    };
    let watermark = sequencer.durable_watermark(shard).clone();
    let mut reader = JournalReader::new(storage, from_sequence, Some(watermark.clone()));
    // The gate follows the standby connected now: it holds what its hello says, no more.
    let held = from_sequence.saturating_sub(1);
    gate.standby_joined(held);
    gate.set_connected(true);
    tracing::info!(shard, from_sequence, "standby connected");
    // The last sequence sent on this stream: an acknowledgement never counts for more (a
    // standby cannot hold what it was not sent).
    let shipped = Arc::new(AtomicU64::new(held));
    let acks = {
        let (gate, shipped) = (gate.clone(), shipped.clone());
        tokio::spawn(async move {
            while let Ok(Some((_, frame))) = read_frame(&mut recv).await {
                if let Frame::ReplicaAck {
                    shard: acked_shard,
                    durable_sequence,
                } = frame
                {
                    let sent = shipped.load(Ordering::Acquire);
                    if acked_shard != shard || durable_sequence > sent {
                        tracing::warn!(
                            shard,
                            acked_shard,
                            durable_sequence,
                            sent,
                            "a standby acknowledged records it was not sent; counted up to what was sent"
                        );
                    }
                    if acked_shard == shard {
                        gate.acknowledge(durable_sequence.min(sent));
                    }
                }
            }
        })
    };
    let commits = role.commits[usize::from(shard)].clone();
    let mut bytes = Vec::new();
    let mut first = true;
    loop {
        if acks.is_finished() {
            break;
        }
        let notified = commits.notified();
        bytes.clear();
        let durable = watermark.load(Ordering::Acquire);
        let mut expected_first = None;
        let read = reader.read(RECORDS_PER_FRAME_MAX, |record| {
            expected_first.get_or_insert(record.sequence);
            let at = bytes.len();
            bytes.resize(at + record_bytes(record.payload.len()), 0);
            write_record(
                &mut bytes[at..],
                record.sequence,
                record.epoch,
                record.timestamp_ns,
                record.payload,
            );
        });
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                let frame = Frame::error(ErrorCode::INTERNAL, error.to_string());
                send_frame(&mut send, request_id, &frame).await;
                break;
            }
        };
        if first && read > 0 && expected_first != Some(from_sequence.max(1)) {
            // Older segments were archived: this standby needs a snapshot first.
            let frame = Frame::error(
                ErrorCode::POSITION_UNAVAILABLE,
                format!(
                    "shard {shard}: records from {from_sequence} are archived here (the journal starts at {}); seed the standby from a copy of the primary's data folder",
                    expected_first.unwrap_or(0)
                ),
            );
            send_frame(&mut send, request_id, &frame).await;
            break;
        }
        if read > 0 {
            first = false;
            debug_assert!(bytes.len() <= REPLICA_RECORDS_BYTES_MAX);
            let sent_through = reader.next_sequence() - 1;
            let frame = Frame::ReplicaRecords {
                shard,
                primary_durable: durable.max(sent_through),
                records: std::mem::take(&mut bytes),
            };
            if !send_frame(&mut send, request_id, &frame).await {
                break;
            }
            shipped.fetch_max(sent_through, Ordering::AcqRel);
            continue;
        }
        // Nothing new: wait for the next commit (bounded, so a lost wake-up costs little).
        let _ = tokio::time::timeout(Duration::from_millis(SENDER_IDLE_MS), notified).await;
    }
    acks.abort();
    gate.set_connected(false);
    tracing::warn!(shard, "standby disconnected");
    None
}

/// Trust for connecting to the primary.
#[derive(Debug, Clone)]
pub struct PrimaryLink {
    pub server: SocketAddr,
    pub trust_der_path: PathBuf,
    pub trust_sha256: Option<[u8; 32]>,
    /// Presented to the primary before any replication frame.
    pub token: crate::credentials::ReplicationToken,
}

async fn connect(link: &PrimaryLink) -> Result<paycore_client::Client, String> {
    let mut config = paycore_client::ClientConfig::new(link.server, link.trust_der_path.clone());
    config.trust_sha256 = link.trust_sha256;
    config.request_timeout_ms = 5_000;
    let client = paycore_client::Client::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    authenticate(&client, &link.token).await?;
    Ok(client)
}

/// Presents the replication token on `client`'s connection (the primary serves replication
/// frames only to connections that did).
async fn authenticate(
    client: &paycore_client::Client,
    token: &crate::credentials::ReplicationToken,
) -> Result<(), String> {
    let (mut send, mut recv) = client
        .connection()
        .open_bi()
        .await
        .map_err(|e| e.to_string())?;
    let frame = Frame::Authenticate {
        token: token.bytes().to_vec(),
    };
    if !send_frame(&mut send, 1, &frame).await {
        return Err("the primary closed the stream".into());
    }
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
        .await
        .map_err(|_| "the primary did not answer the authentication within 10 s".to_string())??
        .ok_or("the primary closed the stream")?;
    match answer.1 {
        Frame::Authenticated { .. } => Ok(()),
        Frame::Error { code, message } => Err(format!(
            "the primary refused this standby's replication token ({}): {code}: {message}",
            token.path.display()
        )),
        other => Err(format!(
            "unexpected answer to authenticate: {:?}",
            other.kind()
        )),
    }
}

/// Sends a hello for `shard` and reads the primary's first answer.
async fn hello(
    client: &paycore_client::Client,
    shard: u16,
    from_sequence: u64,
    last_epoch: u64,
    epoch: u64,
) -> Result<(quinn::SendStream, quinn::RecvStream, Frame), String> {
    let (mut send, mut recv) = client
        .connection()
        .open_bi()
        .await
        .map_err(|e| e.to_string())?;
    let frame = Frame::ReplicaHello {
        shard,
        from_sequence,
        last_epoch,
        epoch,
    };
    if !send_frame(&mut send, 1, &frame).await {
        return Err("the primary closed the stream".into());
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
        .await
        .map_err(|_| "the primary did not answer the hello within 10 s".to_string())??
        .ok_or("the primary closed the stream")?;
    Ok((send, recv, answer.1))
}

/// What [`rejoin`] cut on one shard.
#[derive(Debug, Clone)]
pub struct Cut {
    pub shard: u16,
    pub tail: paycore_journal::DivergentTail,
    pub snapshots_removed: Vec<PathBuf>,
    /// Archived segments moved back into the journal so the shard restarts from its snapshot
    /// at or before the cut (see `cut_repair.rs`).
    pub restored: Vec<String>,
    /// The archive lacked them: the shard was seeded from the primary's snapshot at this
    /// sequence instead.
    pub seeded_at: Option<u64>,
}

/// Before a standby's shards open: asks the primary whether each shard's journal is part of
/// its history, and cuts (backed up) what is not. Returns what was cut, or `None` when the
/// primary cannot be reached (the standby starts anyway — it may be about to be promoted —
/// and its followers ask again when they connect).
pub async fn rejoin(
    link: &PrimaryLink,
    data_dir: &std::path::Path,
    shards: u16,
    state: &mut NodeState,
) -> Result<Option<Vec<Cut>>, String> {
    let client = match connect(link).await {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(primary = %link.server, %error, "primary unreachable; starting as a standby without checking its history");
            return Ok(None);
        }
    };
    let mut cuts = Vec::new();
    for shard in 0..shards {
        let paths = paycore_snapshot::ShardPaths::new(data_dir, shard);
        // Hello, and what it takes: at most a cut and a snapshot before the primary welcomes.
        for attempt in 0..3 {
            let storage = MmapStorage::open_dir(&paths.journal)
                .map_err(|e| format!("{}: {e}", paths.journal.display()))?;
            let last = paycore_journal::last_record(&storage, shard).map_err(|e| e.to_string())?;
            let newest_snapshot = paycore_snapshot::list_snapshots(&paths.snapshots)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(sequence, _)| sequence)
                .max()
                .unwrap_or(0);
            let (last_sequence, last_epoch) = match last {
                Some(last) => last,
                // Seeded from a snapshot: the journal continues after it.
                None => (newest_snapshot, 0),
            };
            let (mut send, _recv, answer) =
                hello(&client, shard, last_sequence + 1, last_epoch, state.epoch).await?;
            let _ = send.finish();
            match answer {
                Frame::ReplicaWelcome { epoch, history, .. } => {
                    state.epoch = state.epoch.max(epoch);
                    state.history[usize::from(shard)] = history;
                    break;
                }
                Frame::ReplicaDiverged {
                    epoch,
                    keep_through,
                    ..
                } => {
                    state.epoch = state.epoch.max(epoch);
                    // The state restarts from the newest snapshot at or before the cut (or
                    // from nothing): the journal must hold every record after it, archived or
                    // not, for the node to start again.
                    let snapshots = paycore_snapshot::list_snapshots(&paths.snapshots)
                        .map_err(|e| e.to_string())?;
                    let kept = snapshots
                        .iter()
                        .map(|(sequence, _)| *sequence)
                        .filter(|sequence| *sequence <= keep_through)
                        .max()
                        .unwrap_or(0);
                    let mut snapshots_removed = Vec::new();
                    let mut remove_past_cut = || -> Result<(), String> {
                        for (sequence, path) in &snapshots {
                            if *sequence > keep_through {
                                std::fs::remove_file(path)
                                    .map_err(|e| format!("{}: {e}", path.display()))?;
                                snapshots_removed.push(path.clone());
                            }
                        }
                        Ok(())
                    };
                    match crate::cut_repair::restore_archived(&paths, kept + 1)? {
                        crate::cut_repair::Restore::Ready { restored } => {
                            if !restored.is_empty() {
                                tracing::warn!(
                                    shard,
                                    keep_through,
                                    snapshot = kept,
                                    ?restored,
                                    "rejoin: snapshots lie past the cut; archived segments moved back into the journal so the shard restarts from its snapshot at or before the cut"
                                );
                            }
                            let mut storage = storage;
                            let tail =
                                paycore_journal::truncate_after(&mut storage, shard, keep_through)
                                    .map_err(|e| e.to_string())?;
                            remove_past_cut()?;
                            if let Some(tail) = tail {
                                cuts.push(Cut {
                                    shard,
                                    tail,
                                    snapshots_removed,
                                    restored,
                                    seeded_at: None,
                                });
                            }
                        }
                        crate::cut_repair::Restore::Missing { reason } => {
                            // Nothing local can rebuild the state up to the cut: take the new
                            // primary's snapshot instead (the local journal is archived whole,
                            // divergent records included, so nothing is lost).
                            tracing::warn!(shard, keep_through, %reason, "rejoin: cannot restart from local files after the cut; seeding from the primary's snapshot");
                            remove_past_cut()?;
                            drop(storage);
                            let sequence = seed_from_snapshot(&client, &paths, shard).await?;
                            let last = last.map_or(keep_through, |(sequence, _)| sequence);
                            cuts.push(Cut {
                                shard,
                                tail: paycore_journal::DivergentTail {
                                    first_sequence: keep_through + 1,
                                    last_sequence: last,
                                    backups: vec![paths.journal.join("archive")],
                                },
                                snapshots_removed,
                                restored: Vec::new(),
                                seeded_at: Some(sequence),
                            });
                        }
                    }
                }
                Frame::Error { code, .. } if code == ErrorCode::POSITION_UNAVAILABLE => {
                    drop(storage);
                    let sequence = seed_from_snapshot(&client, &paths, shard).await?;
                    println!(
                        "paycore node: shard {shard} seeded from the primary's snapshot at sequence {sequence}"
                    );
                }
                Frame::Error { code, message } => {
                    return Err(format!(
                        "the primary refused shard {shard}: {code}: {message}"
                    ));
                }
                other => return Err(format!("unexpected answer to a hello: {:?}", other.kind())),
            }
            if attempt == 2 {
                return Err(format!(
                    "shard {shard}: the primary still refuses after a cut and a snapshot"
                ));
            }
        }
    }
    client.close();
    Ok(Some(cuts))
}

/// Standby: follows every shard of the primary until promoted (reconnecting with backoff).
pub fn follow(link: PrimaryLink, sequencer: Arc<Sequencer>, role: Arc<NodeRole>) {
    let mut handles = Vec::new();
    for shard in 0..sequencer.shard_count() {
        let (link, sequencer, role_for_task) = (link.clone(), sequencer.clone(), role.clone());
        handles.push(tokio::spawn(async move {
            let mut backoff_ms = RECONNECT_BACKOFF_MS.0;
            while !role_for_task.stop_following.load(Ordering::Acquire) {
                let started = Instant::now();
                match follow_shard(&link, &sequencer, &role_for_task, shard).await {
                    Ok(()) => {}
                    Err(error) => tracing::warn!(shard, %error, "replication link down"),
                }
                role_for_task.follows[usize::from(shard)]
                    .connected
                    .store(false, Ordering::Release);
                if started.elapsed() > Duration::from_secs(5) {
                    backoff_ms = RECONNECT_BACKOFF_MS.0;
                }
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS.1);
            }
        }));
    }
    role.followers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(handles);
}

async fn follow_shard(
    link: &PrimaryLink,
    sequencer: &Arc<Sequencer>,
    role: &Arc<NodeRole>,
    shard: u16,
) -> Result<(), String> {
    let client = connect(link).await?;
    let follow = &role.follows[usize::from(shard)];
    let from = sequencer.stats(shard).last_sequence.load(Ordering::Acquire) + 1;
    let epoch = role.state().epoch;
    let (mut send, mut recv, answer) = hello(
        &client,
        shard,
        from,
        follow.last_epoch.load(Ordering::Acquire),
        epoch,
    )
    .await?;
    match answer {
        Frame::ReplicaWelcome {
            epoch,
            mode,
            history,
            ..
        } => {
            role.primary_mode.store(mode, Ordering::Release);
            let mut state = role.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.epoch != epoch.max(state.epoch) || state.history[usize::from(shard)] != history
            {
                state.epoch = state.epoch.max(epoch);
                state.history[usize::from(shard)] = history;
                state.save(&role.data_dir)?;
            }
        }
        Frame::ReplicaDiverged { keep_through, .. } => {
            return Err(format!(
                "this standby's shard {shard} holds records after {keep_through} that its primary does not: restart the node to cut them (backed up) and rejoin"
            ));
        }
        Frame::Error { code, message } => return Err(format!("{code}: {message}")),
        other => return Err(format!("unexpected answer to a hello: {:?}", other.kind())),
    }
    follow.connected.store(true, Ordering::Release);
    tracing::info!(shard, from, "following the primary");
    // A reader task decodes frames as they arrive; the loop below takes every frame already
    // waiting and journals them together: one fsync (and one ack) for all of them, so a
    // standby that fell behind catches up in large group commits.
    let (frames, mut arrived) = tokio::sync::mpsc::channel::<Frame>(FRAMES_WAITING_MAX);
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut recv).await {
                Ok(Some((_, frame))) => {
                    if frames.send(frame).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Err("the primary ended the stream".to_string()),
                Err(error) => return Err(error),
            }
        }
    });
    let result = async {
        let mut records = Vec::new();
        loop {
            let Some(first) = arrived.recv().await else {
                return Err("the replication stream closed".to_string());
            };
            if role.stop_following.load(Ordering::Acquire) {
                return Ok(());
            }
            records.clear();
            let mut next = Some(first);
            while let Some(frame) = next.take() {
                match frame {
                    Frame::ReplicaRecords {
                        primary_durable,
                        records: more,
                        ..
                    } => {
                        follow
                            .primary_durable
                            .fetch_max(primary_durable, Ordering::AcqRel);
                        records.extend_from_slice(&more);
                    }
                    Frame::Error { code, message } => return Err(format!("{code}: {message}")),
                    other => {
                        return Err(format!(
                            "unexpected frame on replication: {:?}",
                            other.kind()
                        ));
                    }
                }
                if records.len() < REPLICA_RECORDS_BYTES_MAX {
                    next = arrived.try_recv().ok();
                }
            }
            let last_epoch = last_epoch_of(&records)?;
            let receiver =
                sequencer.replicate(shard, std::mem::take(&mut records), REPLICATE_TIMEOUT);
            let durable =
                tokio::task::spawn_blocking(move || receiver.recv_timeout(REPLICATE_TIMEOUT))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|_| format!("shard {shard} did not take the records in time"))??;
            if let Some(epoch) = last_epoch {
                follow.last_epoch.store(epoch, Ordering::Release);
            }
            follow.last_received_ms.store(now_ms(), Ordering::Release);
            let ack = Frame::ReplicaAck {
                shard,
                durable_sequence: durable,
            };
            if !send_frame(&mut send, 1, &ack).await {
                return Err("the primary stopped reading acks".to_string());
            }
        }
    }
    .await;
    reader.abort();
    result
}

/// The epoch of the last record in a received chunk (checksums are verified again by the
/// shard writer before anything is journaled).
fn last_epoch_of(records: &[u8]) -> Result<Option<u64>, String> {
    let mut offset = 0;
    let mut last = None;
    while offset < records.len() {
        match parse_record(&records[offset..]) {
            Parsed::Record(record) => {
                last = Some(record.epoch);
                offset += record.bytes;
            }
            _ => return Err(format!("received records invalid at offset {offset}")),
        }
    }
    Ok(last)
}

/// Operator: makes this standby the primary of a new epoch.
pub async fn promote(
    sequencer: &Arc<Sequencer>,
    role: &Arc<NodeRole>,
    force: bool,
) -> Result<String, String> {
    let started = Instant::now();
    if sequencer.is_primary() {
        return Err(format!(
            "this node is already the primary (epoch {})",
            role.state().epoch
        ));
    }
    let shards = sequencer.shard_count();
    let behind: Vec<(u16, u64, u64)> = (0..shards)
        .filter_map(|shard| {
            let have = sequencer.stats(shard).last_sequence.load(Ordering::Acquire);
            let primary = role.follows[usize::from(shard)]
                .primary_durable
                .load(Ordering::Acquire);
            (primary > have).then_some((shard, have, primary))
        })
        .collect();
    let primary_mode = role.primary_mode.load(Ordering::Acquire);
    if !behind.is_empty() && primary_mode != 2 && !force {
        let detail: Vec<String> = behind
            .iter()
            .map(|(s, have, primary)| format!("shard {s} has {have}, its primary had {primary}"))
            .collect();
        return Err(format!(
            "refusing to promote a standby that is behind an async primary ({}): the difference may include acknowledged commands. Wait for it to catch up, or pass --force to accept the loss",
            detail.join("; ")
        ));
    }
    // Stop taking records, then let every shard apply what it already received (a query
    // through each ring runs after the records queued before it).
    role.stop_following.store(true, Ordering::Release);
    for handle in role
        .followers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
    {
        handle.abort();
    }
    let mut last = Vec::with_capacity(usize::from(shards));
    for shard in 0..shards {
        let sequencer = sequencer.clone();
        let applied = tokio::task::spawn_blocking(move || {
            sequencer.query(shard, Duration::from_secs(30), |engine| {
                engine.last_sequence()
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .ok_or(format!("shard {shard} did not answer"))?;
        last.push(applied);
    }
    let epoch = {
        let mut state = role.state.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = state.epoch + 1;
        state.role = Role::Primary;
        state.epoch = epoch;
        for (shard, applied) in last.iter().enumerate() {
            state.history[shard].push(EpochStart {
                epoch,
                first_sequence: applied + 1,
            });
        }
        state.save(&role.data_dir)?;
        epoch
    };
    let promoting = sequencer.clone();
    tokio::task::spawn_blocking(move || promoting.promote(epoch, Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())??;
    if let Err(error) = role.start_flushing(sequencer) {
        tracing::error!(%error, "promoted, but the store flushers did not start");
    }
    // What the standby lacked of the primary when it last heard from it: a lower bound. The
    // primary may have written more since (a paused standby heard nothing for a while), so
    // how far behind the old primary this node really is cannot be known here.
    let behind_at_last_report: u64 = behind.iter().map(|(_, have, primary)| primary - have).sum();
    tracing::warn!(epoch, ?last, "promoted: this node is now the primary");
    Ok(json!({
        "promoted": true,
        "epoch": epoch,
        "last_sequences": last,
        "records_behind_old_primary": "unknown",
        "records_behind_old_primary_at_last_report": behind_at_last_report,
        "old_primary_mode": match primary_mode { 2 => "sync", 1 => "async", _ => "off" },
        "took_ms": started.elapsed().as_millis() as u64,
    })
    .to_string())
}

/// Operator: the node's role, epoch, shards and replication, as JSON.
pub fn status_json(sequencer: &Sequencer, role: &NodeRole) -> String {
    let state = role.state();
    let replication_off = sequencer.gate(0).mode() == ReplicationMode::Off;
    let shards: Vec<serde_json::Value> = (0..sequencer.shard_count())
        .map(|shard| {
            let stats = sequencer.stats(shard);
            let gate = sequencer.gate(shard);
            let last = stats.last_sequence.load(Ordering::Acquire);
            let follow = &role.follows[usize::from(shard)];
            let mut entry = json!({
                "shard": shard,
                "last_sequence": last,
                "durable_sequence": stats.durable_sequence.load(Ordering::Acquire),
                "released_sequence": gate.released(),
            });
            // Whether it takes writes, since when and why; its disk (issue 25).
            let health = stats.disk.health();
            let (journal_bytes, archive_bytes) =
                paycore_sequencer::journal_disk_use(sequencer.journal_dir(shard));
            entry["state"] = json!(health.name());
            entry["state_since_ms"] = json!(health.since_ms());
            entry["state_reason"] = json!(health.reason());
            entry["disk_free_bytes"] = json!(stats.disk.free_bytes.load(Ordering::Relaxed));
            entry["disk_total_bytes"] = json!(stats.disk.total_bytes.load(Ordering::Relaxed));
            entry["disk_reserve_bytes"] = json!(stats.disk.reserve_bytes.load(Ordering::Relaxed));
            entry["journal_bytes"] = json!(journal_bytes);
            entry["journal_archive_bytes"] = json!(archive_bytes);
            entry["disk_full_refused_commands"] =
                json!(stats.disk.refused_commands.load(Ordering::Relaxed));
            if let Some(flushers) = role
                .flushers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                let durable = stats.durable_sequence.load(Ordering::Acquire);
                let (flushed, lag_records, lag_ms) = flushers.lag(shard, durable);
                entry["flushed_sequence"] = json!(flushed);
                entry["flush_lag_records"] = json!(lag_records);
                entry["flush_lag_ms"] = json!(lag_ms);
            }
            // Events out (issue 19): this shard's publisher, when the node runs one.
            let durable = stats.durable_sequence.load(Ordering::Acquire);
            if let Some((_, published, lag_records, lag_ms, _)) =
                crate::publish::lag_in_nodes(|_| durable)
                    .into_iter()
                    .find(|p| p.0 == shard)
            {
                entry["published_sequence"] = json!(published);
                entry["publish_lag_records"] = json!(lag_records);
                entry["publish_lag_ms"] = json!(lag_ms);
            }
            if state.role == Role::Primary && replication_off {
                // No standby is configured: no standby fields (they read as a lagging one).
            } else if state.role == Role::Primary {
                entry["standby_connected"] = json!(gate.standby_connected());
                entry["standby_durable_sequence"] = json!(gate.standby_durable());
                entry["standby_lag_records"] = json!(last.saturating_sub(gate.standby_durable()));
                entry["standby_lag_ms"] = json!(gate.lag_ms());
            } else {
                let primary = follow.primary_durable.load(Ordering::Acquire);
                let received = follow.last_received_ms.load(Ordering::Acquire);
                entry["primary_connected"] = json!(follow.connected.load(Ordering::Acquire));
                entry["primary_durable_sequence"] = json!(primary);
                entry["lag_records"] = json!(primary.saturating_sub(last));
                entry["ms_since_last_record"] = json!(if received == 0 {
                    None
                } else {
                    Some(now_ms().saturating_sub(received))
                });
            }
            entry
        })
        .collect();
    let mode = sequencer.gate(0).mode();
    let mut status = json!({
        "role": state.role.name(),
        "epoch": state.epoch,
        "durability": role.durability,
        "replication": mode.name(),
        "shards": shards,
    });
    if let ReplicationMode::Async {
        max_lag_records,
        alone_after_ms,
    } = mode
    {
        status["replication_max_lag_records"] = json!(max_lag_records);
        status["replication_alone_after_ms"] = json!(alone_after_ms);
    }
    if let Some(primary) = role.standby_of {
        status["standby_of"] = json!(primary.to_string());
    }
    if let Some(flushers) = role
        .flushers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        status["store"] = json!(flushers.target);
    }
    status.to_string()
}
