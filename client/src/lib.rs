//! # paycore-client: talk to a paycore node over QUIC
//!
//! The async client library the gateway, the load generator and operator tools use. One QUIC
//! connection per client, TLS always on (the node's certificate is trusted by file: the node
//! writes `<data_dir>/tls/cert.der` on first start), one bidirectional stream per request, so
//! any number of requests can be in flight at once.
//!
//! [`Client::submit`] sends a batch of up to `BATCH_COMMANDS_MAX` commands and returns one
//! result per command, in order. Commands answered `busy` or `shard_unavailable` are sent
//! again, **with the same idempotency keys**, after a backoff, at most `retries_max` times;
//! every attempt has a timeout. A command that timed out may or may not have been applied:
//! resubmitting it with the same key is always safe (the engine returns the first outcome).

#![forbid(unsafe_code)]

pub mod link;
pub mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paycore_engine::Command;
use paycore_protocol::{
    BATCH_COMMANDS_MAX, CommandResult, FRAME_BYTES_MAX, Frame, FrameReader, Query, QueryResult,
    decode, encode,
};
use rustls::pki_types::CertificateDer;

/// Longest certificate file read, in bytes.
const CERTIFICATE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub server: SocketAddr,
    /// Name in the node's certificate (`localhost` for the embedded self-signed one).
    pub server_name: String,
    /// DER certificate to trust (the node's self-signed one, or the CA of a real deployment).
    pub trust_der_path: PathBuf,
    /// Instead of the file: trust exactly the certificate with this SHA-256 fingerprint (the
    /// node prints it at start). Takes precedence over `trust_der_path` when set.
    pub trust_sha256: Option<[u8; 32]>,
    /// More certificates to trust beside `trust_der_path` (the other nodes of a cluster whose
    /// nodes have certificates of their own), by file.
    pub also_trust_der_paths: Vec<PathBuf>,
    /// More fingerprints to accept beside `trust_sha256`.
    pub also_trust_sha256: Vec<[u8; 32]>,
    /// Client certificate and PKCS#8 key files (DER), for a node that requires them (`--ca`).
    pub identity_der_paths: Option<(PathBuf, PathBuf)>,
    /// Timeout of one attempt of one request.
    pub request_timeout_ms: u64,
    /// Extra attempts for commands answered busy / shard unavailable.
    pub retries_max: u32,
    /// Backoff before the first retry; doubles each time.
    pub retry_backoff_ms: u64,
    /// Time allowed for the QUIC handshake with one node, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How often an idle connection sends a QUIC PING so that neither side drops it, in
    /// milliseconds. Must be well inside `idle_timeout_ms` (and the node's
    /// `--quic-idle-timeout-ms`): a third of it at most.
    pub keep_alive_ms: u64,
    /// A connection that hears nothing from the node for this long is lost, in milliseconds.
    /// QUIC uses the smaller of this and the node's idle timeout.
    pub idle_timeout_ms: u64,
}

/// Default of [`ClientConfig::keep_alive_ms`]: a sixth of the default idle timeout.
pub const KEEP_ALIVE_MS_DEFAULT: u64 = 5_000;
/// Default of [`ClientConfig::idle_timeout_ms`] (quinn's own default).
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 30_000;

impl ClientConfig {
    pub fn new(server: SocketAddr, trust_der_path: PathBuf) -> ClientConfig {
        ClientConfig {
            server,
            server_name: "localhost".into(),
            trust_der_path,
            trust_sha256: None,
            also_trust_der_paths: Vec::new(),
            also_trust_sha256: Vec::new(),
            identity_der_paths: None,
            request_timeout_ms: 10_000,
            retries_max: 5,
            retry_backoff_ms: 2,
            connect_timeout_ms: 5_000,
            keep_alive_ms: KEEP_ALIVE_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
        }
    }

    /// The QUIC transport settings: keep-alive inside the idle timeout.
    pub fn transport(&self) -> Result<quinn::TransportConfig, String> {
        if self.keep_alive_ms == 0 || self.keep_alive_ms.saturating_mul(3) > self.idle_timeout_ms {
            return Err(format!(
                "keep-alive every {} ms is not well inside the idle timeout of {} ms (at most a third)",
                self.keep_alive_ms, self.idle_timeout_ms
            ));
        }
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|e| format!("idle timeout {} ms: {e}", self.idle_timeout_ms))?;
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(idle));
        transport.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)));
        Ok(transport)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the trusted certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    Connection(String),
    #[error(
        "request timed out after {0} ms (its commands may or may not be applied; resubmit with the same keys)"
    )]
    Timeout(u64),
    #[error("the node answered with an error frame: {code:?} {message}")]
    Node { code: u16, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("a batch holds 1 to {BATCH_COMMANDS_MAX} commands, not {0}")]
    BatchSize(usize),
    #[error("invalid client settings: {0}")]
    Settings(String),
    #[error("no primary among {servers} within {waited_ms} ms: {reason}")]
    NoPrimary {
        servers: String,
        waited_ms: u64,
        reason: String,
    },
}

impl ClientError {
    /// Whether the connection this came from is gone or unusable (another node, or the same
    /// one reconnected, may answer).
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            ClientError::Connection(_)
                | ClientError::Connect { .. }
                | ClientError::Protocol(_)
                | ClientError::Timeout(_)
        )
    }

    /// Whether the node said it is not the primary (a standby, or a fenced old primary).
    pub fn is_not_primary(&self) -> bool {
        matches!(self, ClientError::Node { code, .. } if *code == paycore_protocol::ErrorCode::NOT_PRIMARY.0)
    }
}

/// A connection to one node.
#[derive(Debug)]
pub struct Client {
    connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
    next_request: AtomicU64,
    config: ClientConfig,
}

/// The QUIC client configuration that trusts `certificate`.
pub fn quic_client_config(
    certificate: CertificateDer<'static>,
) -> Result<quinn::ClientConfig, String> {
    quic_client_config_with(certificate, None)
}

/// A client certificate and its PKCS#8 key (DER), for a node started with `--ca` (mutual TLS).
pub type Identity = (
    CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// The QUIC client configuration that trusts `certificate` and, if given, authenticates with
/// `identity`.
pub fn quic_client_config_with(
    certificate: CertificateDer<'static>,
    identity: Option<Identity>,
) -> Result<quinn::ClientConfig, String> {
    quic_client_config_trusting(vec![certificate], identity)
}

/// The QUIC client configuration that trusts each of `certificates` and, if given,
/// authenticates with `identity`.
pub fn quic_client_config_trusting(
    certificates: Vec<CertificateDer<'static>>,
    identity: Option<Identity>,
) -> Result<quinn::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let tls = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// SHA-256 of a certificate's DER bytes: its fingerprint.
pub fn fingerprint(certificate: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Parses a fingerprint written as 64 hex digits (colons allowed between bytes).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Trusts exactly one certificate, by fingerprint; handshake signatures are still checked.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: Vec<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.sha256.contains(&fingerprint(end_entity.as_ref())) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node's certificate fingerprint does not match".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The QUIC client configuration that trusts exactly the certificate with `sha256`.
pub fn quic_client_config_pinned(sha256: [u8; 32]) -> Result<quinn::ClientConfig, String> {
    quic_client_config_pinned_any(vec![sha256])
}

/// The QUIC client configuration that trusts exactly the certificates with these
/// fingerprints.
pub fn quic_client_config_pinned_any(sha256: Vec<[u8; 32]>) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate { sha256, provider }))
        .with_no_client_auth();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

impl Client {
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let identity = match &config.identity_der_paths {
            Some((cert, key)) => {
                let key =
                    rustls::pki_types::PrivateKeyDer::Pkcs8(read_certificate(key)?.to_vec().into());
                Some((read_certificate(cert)?, key))
            }
            None => None,
        };
        let quic = match config.trust_sha256 {
            Some(sha256) => {
                let mut pins = vec![sha256];
                pins.extend(config.also_trust_sha256.iter().copied());
                quic_client_config_pinned_any(pins)
            }
            None => {
                let mut trusted = vec![read_certificate(&config.trust_der_path)?];
                for path in &config.also_trust_der_paths {
                    trusted.push(read_certificate(path)?);
                }
                quic_client_config_trusting(trusted, identity)
            }
        }
        .map_err(|reason| ClientError::Certificate {
            path: config.trust_der_path.clone(),
            reason,
        })?;
        let mut quic = quic;
        quic.transport_config(Arc::new(config.transport().map_err(ClientError::Settings)?));
        let bind: SocketAddr = if config.server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|e: std::net::AddrParseError| ClientError::Connect {
            server: config.server,
            reason: e.to_string(),
        })?;
        let mut endpoint = udp::endpoint(bind, None).map_err(|e| ClientError::Connect {
            server: config.server,
            reason: e.to_string(),
        })?;
        endpoint.set_default_client_config(quic);
        let connecting = endpoint
            .connect(config.server, &config.server_name)
            .map_err(|e| ClientError::Connect {
                server: config.server,
                reason: e.to_string(),
            })?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ClientError::Connect {
                server: config.server,
                reason: format!(
                    "no QUIC handshake within {} ms (nothing listens there, or it is not a paycore node)",
                    config.connect_timeout_ms
                ),
            })?
            .map_err(|e| ClientError::Connect {
                server: config.server,
                reason: e.to_string(),
            })?;
        Ok(Client {
            connection,
            _endpoint: endpoint,
            next_request: AtomicU64::new(1),
            config,
        })
    }

    /// One request, one response, on its own stream, within the request timeout.
    async fn round_trip(&self, frame: &Frame) -> Result<Frame, ClientError> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::new();
        encode(frame, request_id, &mut bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let exchange = async {
            let (mut send, mut recv) = self
                .connection
                .open_bi()
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            send.write_all(&bytes)
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            send.finish()
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            recv.read_to_end(FRAME_BYTES_MAX)
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))
        };
        let response = tokio::time::timeout(
            Duration::from_millis(self.config.request_timeout_ms),
            exchange,
        )
        .await
        .map_err(|_| ClientError::Timeout(self.config.request_timeout_ms))??;
        let (id, frame) = decode(&response).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Frame::Error { code, message } = frame {
            return Err(ClientError::Node {
                code: code.0,
                message,
            });
        }
        if id != request_id {
            return Err(ClientError::Protocol(format!(
                "answer to request {id}, expected {request_id}"
            )));
        }
        Ok(frame)
    }

    /// The QUIC connection, for protocols beside request/response (a standby's replication
    /// streams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// An operator command (`status`, `promote`): the node's JSON answer.
    pub async fn admin(
        &self,
        command: paycore_protocol::AdminCommand,
    ) -> Result<String, ClientError> {
        match self.round_trip(&Frame::Admin(command)).await? {
            Frame::AdminResult { json } => Ok(json),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to an operator command: {:?}",
                other.kind()
            ))),
        }
    }

    /// Submits a batch and returns one result per command, in order, retrying busy and
    /// unavailable commands with the same keys (see the crate docs).
    pub async fn submit(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, ClientError> {
        if commands.is_empty() || commands.len() > BATCH_COMMANDS_MAX {
            return Err(ClientError::BatchSize(commands.len()));
        }
        let mut results = vec![CommandResult::Busy; commands.len()];
        let mut pending: Vec<usize> = (0..commands.len()).collect();
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        for attempt in 0..=self.config.retries_max {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            let batch: Vec<Command> = pending.iter().map(|i| commands[*i].clone()).collect();
            let answer = self
                .round_trip(&Frame::SubmitBatch { commands: batch })
                .await?;
            let Frame::BatchResult { results: answered } = answer else {
                return Err(ClientError::Protocol("expected a batch result".into()));
            };
            if answered.len() != pending.len() {
                return Err(ClientError::Protocol(format!(
                    "{} results for {} commands",
                    answered.len(),
                    pending.len()
                )));
            }
            let mut still = Vec::new();
            for (index, result) in pending.iter().zip(answered) {
                results[*index] = result;
                if !matches!(result, CommandResult::Outcome(_)) {
                    still.push(*index);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
        }
        Ok(results)
    }

    /// Submits a batch once, without retries (the load generator counts busy answers itself).
    pub async fn submit_once(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandResult>, ClientError> {
        if commands.is_empty() || commands.len() > BATCH_COMMANDS_MAX {
            return Err(ClientError::BatchSize(commands.len()));
        }
        match self.round_trip(&Frame::SubmitBatch { commands }).await? {
            Frame::BatchResult { results } => Ok(results),
            _ => Err(ClientError::Protocol("expected a batch result".into())),
        }
    }

    pub async fn query(&self, query: Query) -> Result<QueryResult, ClientError> {
        match self.round_trip(&Frame::Query(query)).await? {
            Frame::QueryResult(result) => Ok(result),
            _ => Err(ClientError::Protocol("expected a query result".into())),
        }
    }

    /// Subscribes to the committed events of every shard from `from` (shard, sequence) on; a
    /// shard not listed starts from the oldest event the node keeps. Resume after a disconnect
    /// with the position after the last frame received per shard: nothing is skipped.
    pub async fn subscribe(&self, from: Vec<(u16, u64)>) -> Result<Subscription, ClientError> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::new();
        encode(&Frame::Subscribe { from }, request_id, &mut bytes)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (mut send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        send.write_all(&bytes)
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        send.finish()
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        Ok(Subscription {
            recv,
            reader: FrameReader::new(),
            chunk: vec![0u8; 64 * 1024],
        })
    }

    /// The node this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.config.server
    }

    /// The node's role (`primary`, `standby`, …) and epoch, from its status.
    pub async fn role(&self) -> Result<(String, u64), ClientError> {
        let json = self.admin(paycore_protocol::AdminCommand::Status).await?;
        let status: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let role = status["role"].as_str().unwrap_or("unknown").to_owned();
        Ok((role, status["epoch"].as_u64().unwrap_or(0)))
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.connection.close(0u32.into(), b"bye");
    }
}

/// A stream of `events` frames (see [`Client::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    recv: quinn::RecvStream,
    reader: FrameReader,
    chunk: Vec<u8>,
}

impl Subscription {
    /// The next frame: `Frame::Events`, or `Frame::Error` if the node ended the subscription
    /// (for instance `position_unavailable`). `Ok(None)` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some((_, frame)) = self
                .reader
                .next_frame()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(Some(frame));
            }
            match self
                .recv
                .read(&mut self.chunk)
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?
            {
                Some(read) => self.reader.extend(&self.chunk[..read]),
                None => return Ok(None),
            }
        }
    }
}

/// The first sequence a node can still give, from the message of its `position_unavailable`
/// refusal (`… first_available=<n>`).
pub fn first_available(message: &str) -> Option<u64> {
    message
        .rsplit("first_available=")
        .next()
        .filter(|_| message.contains("first_available="))?
        .trim()
        .parse()
        .ok()
}

fn read_certificate(path: &std::path::Path) -> Result<CertificateDer<'static>, ClientError> {
    let error = |reason: String| ClientError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let length = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if length > CERTIFICATE_BYTES_MAX {
        return Err(error(format!("{length} bytes is not a certificate")));
    }
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    Ok(CertificateDer::from(bytes))
}
