//! # paycore-loadgen: drive a paycore node over QUIC and measure it
//!
//! [`run`] does what the `paycore-loadgen` binary does, so that tests can call it:
//!
//! 1. **Set-up.** Registers the currency (every shard; `currency_exists` is fine), opens
//!    `--wallets` wallets for users whose ids are derived from the run id and the index
//!    (xxh3-128: random-looking, so they spread over the node's shards), and deposits
//!    `--deposit` minor units in each. Batches of [`SETUP_BATCH`] commands with
//!    [`Client::submit`] (busy answers retried with the same keys, bounded).
//! 2. **Measured phase.** Transfers between uniformly random distinct wallets (so on `n`
//!    shards about `1 - 1/n` of them cross shards), small amounts (`1..=--amount-max`) so
//!    `insufficient_funds` is rare. Sent with [`Client::submit_once`] (no retries) unless
//!    `--retry-busy`, so busy answers are counted, not hidden.
//!    - *closed loop*: `--concurrency` requests of `--batch` transfers in flight, each sent as
//!      soon as the previous one of its slot is answered; latency from send to answer.
//!    - *open loop*: requests of `--batch` transfers at fixed intended send times
//!      (`--rate / --batch` per second); latency is measured **from the intended send time**,
//!      so a request sent late (the node or the generator stalled, or `--concurrency` requests
//!      were already in flight) counts its lateness: no coordinated omission.
//! 3. **Report.** Throughput, a count of every outcome kind, HdrHistogram latency per request
//!    (µs; p50, p95, p99, p99.9, max), a JSON summary and an SVG latency-percentile plot.
//! 4. **Conservation.** Waits (bounded) until the node has no cross-shard transfer in flight,
//!    then sums the balances of every wallet of the run: they must add up to
//!    `wallets × deposit` (transfers only move money between the run's own wallets).
//!
//! Everything is bounded: requests in flight (`--concurrency`), the run time (`--duration-secs`
//! or `--count`), each request (`--timeout-ms`), set-up retries, and the wait for settlement.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use paycore_client::{Client, ClientConfig, ClientError};
use paycore_engine::{
    Applied, Command, CurrencyCode, IdempotencyKey, Op, Outcome, Reject, UserId, WalletId,
};
use paycore_protocol::{BATCH_COMMANDS_MAX, CommandResult, Query, QueryResult, StatusView};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// Commands per set-up request (opens and deposits).
pub const SETUP_BATCH: usize = 4096;
/// Set-up requests in flight at once.
const SETUP_IN_FLIGHT: usize = 8;
/// Balance queries in flight at once during the conservation check.
const QUERIES_IN_FLIGHT: usize = 64;
/// Longest run id: keys are `<run id>-t<number>`, at most 255 bytes.
const RUN_ID_BYTES_MAX: usize = 64;
/// Highest latency the histogram records (one hour, in µs); longer ones are clamped.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// How requests are paced in the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Fixed number of requests in flight; each slot sends its next request when answered.
    Closed,
    /// Requests at fixed intended send times (`--rate`); latency from the intended time.
    Open,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
        }
    }
}

/// The load generator's settings (also its command line).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "paycore-loadgen",
    version,
    about = "Drives a paycore node over QUIC: creates wallets with deposits, runs a transfer mix \
             closed- or open-loop, reports throughput, outcome counts and HdrHistogram latency, \
             writes a JSON summary and an SVG percentile plot, and checks that money is conserved.",
    after_help = "Exit status: 0 when the run finished and the balances of every wallet it made \
                  add up to what it deposited; 1 when they do not; 2 on an error."
)]
pub struct Config {
    /// UDP address of the node's QUIC listener.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub server: SocketAddr,
    /// DER certificate to trust: the node writes its self-signed one to `<data_dir>/tls/cert.der`.
    #[arg(long, default_value = "./paycore-data/tls/cert.der")]
    pub trust: PathBuf,
    /// Name in the node's certificate (`localhost` for the node's self-signed one).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Wallets to create (one per user) before the measured phase.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    pub wallets: u64,
    /// Deposit into each wallet, in minor units of the currency.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub deposit: u128,
    /// Currency of the wallets (1-10 upper-case letters); registered on every shard if missing
    /// (an existing one is used as it is).
    #[arg(long, default_value = "USD")]
    pub currency: String,
    /// Decimal places of the currency when the run registers it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=18))]
    pub scale: u8,
    /// Largest transfer amount in minor units; each transfer moves a uniform `1..=amount-max`.
    #[arg(long, default_value_t = 1_000)]
    pub amount_max: u128,
    /// Length of the measured phase in seconds (the default when `--count` is not given).
    #[arg(long, conflicts_with = "count")]
    pub duration_secs: Option<f64>,
    /// Transfers to send in the measured phase, instead of a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// `closed`: `--concurrency` requests always in flight. `open`: requests at a fixed rate
    /// (`--rate`), latency measured from the intended send time.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Requests in flight: exactly this many in the closed loop; at most this many in the open
    /// loop (a request due while all are busy waits, and its wait counts in its latency).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub concurrency: u64,
    /// Transfers per request (1 to 8189, the protocol's batch maximum).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=BATCH_COMMANDS_MAX as u64))]
    pub batch: u64,
    /// Open loop: target transfers per second (requests per second = rate / batch).
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
    /// QUIC connections to open; requests are spread over them round-robin.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub connections: u64,
    /// Seed of the transfer mix (wallet pairs and amounts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of every idempotency key and the seed of every user id, so repeated runs against
    /// one node do not collide (default: derived from the clock). Reusing a run id re-opens the
    /// same wallets idempotently.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Timeout of one request, in milliseconds (a timed-out request is counted and not retried).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Retry busy / shard_unavailable answers in the measured phase (with the same keys, up to 5
    /// times, with backoff) instead of counting them.
    #[arg(long)]
    pub retry_busy: bool,
    /// Longest wait, in seconds, for cross-shard transfers to settle before the conservation
    /// check.
    #[arg(long, default_value_t = 60)]
    pub settle_secs: u64,
    /// The node's durability setting, recorded in the summary as given (the node does not report
    /// it over the wire).
    #[arg(long, default_value = "unknown", value_parser = ["fsync", "none", "unknown"])]
    pub durability: String,
    /// Write a JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of latency by percentile here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write every measured request here as CSV (`start_us,latency_us`: when it was sent, or
    /// due in the open loop, in µs since the measured phase began, and its latency), to see
    /// *when* the slow requests happened. At most the first 10,000,000 requests.
    #[arg(long)]
    pub latency_log: Option<PathBuf>,
    /// No progress bar (there is none either when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

impl Config {
    /// The defaults of the command line, against `server`, trusting `trust`.
    pub fn new(server: SocketAddr, trust: PathBuf) -> Config {
        let mut config = <Config as clap::Parser>::parse_from(["paycore-loadgen"]);
        config.server = server;
        config.trust = trust;
        config
    }

    fn duration(&self) -> Option<Duration> {
        match (self.count, self.duration_secs) {
            (Some(_), _) => None,
            (None, Some(secs)) => Some(Duration::from_secs_f64(secs.clamp(0.001, 86_400.0))),
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// A run that could not be carried out (the conservation result is in [`Summary`]).
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<ClientError> for Error {
    fn from(error: ClientError) -> Error {
        Error(error.to_string())
    }
}

/// What became of every command of the measured phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Applied transfers.
    pub ok: u64,
    /// Of `ok`: cross-shard transfers answered pending (debited; credited later).
    pub ok_pending: u64,
    /// Rejections by their code (`insufficient_funds`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Answered busy (the shard's ring was full; not journaled).
    pub busy: u64,
    /// Answered shard_unavailable (not journaled): the shard is down (its journal refused a
    /// write; `paycore status` says why) or not served here.
    pub shard_unavailable: u64,
    /// Answered disk_full (not journaled): the shard is read-only until its disk has room.
    pub disk_full: u64,
    /// Commands of requests that timed out (each may or may not have been applied).
    pub timeouts: u64,
    /// Commands of requests that failed otherwise (connection lost, error frame, ...).
    pub client_errors: u64,
}

impl Outcomes {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Commands the node applied (an outcome, `ok` or a rejection, both journaled).
    pub fn applied(&self) -> u64 {
        self.ok + self.rejected_total()
    }

    /// Every command counted, whatever became of it.
    pub fn total(&self) -> u64 {
        self.applied()
            + self.busy
            + self.shard_unavailable
            + self.disk_full
            + self.timeouts
            + self.client_errors
    }

    fn merge(&mut self, other: &Outcomes) {
        self.ok += other.ok;
        self.ok_pending += other.ok_pending;
        for (code, n) in &other.rejected {
            *self.rejected.entry(code.clone()).or_default() += n;
        }
        self.busy += other.busy;
        self.shard_unavailable += other.shard_unavailable;
        self.disk_full += other.disk_full;
        self.timeouts += other.timeouts;
        self.client_errors += other.client_errors;
    }
}

/// Latency of requests, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Requests recorded (every request of the measured phase, failed ones included).
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The result of the conservation check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conservation {
    /// `wallets × deposit`.
    pub expected: i128,
    /// Sum of available + frozen over the run's wallets.
    pub actual: i128,
    /// The node reported no transfer in flight before the sum was taken.
    pub settled: bool,
    /// `actual == expected` and every wallet was found.
    pub holds: bool,
    /// Wallets the node did not find (should be 0).
    pub missing_wallets: u64,
    /// Why the check could not be completed (the node stopped answering): the summary is
    /// still printed, with `holds` false.
    pub error: Option<String>,
}

/// Everything a run measured; [`Summary::to_json`] is the JSON summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub config: Config,
    pub run_id: String,
    /// Shards of the node (from its status).
    pub shards: usize,
    pub setup_secs: f64,
    /// Length of the measured phase (first send to last answer).
    pub elapsed_secs: f64,
    pub requests: u64,
    /// Transfers between wallets on different shards.
    pub cross_shard: u64,
    pub outcomes: Outcomes,
    /// Applied transfers (`ok`) per second.
    pub transfers_per_sec: f64,
    /// Applied commands (ok + rejected) per second.
    pub applied_per_sec: f64,
    pub latency: Latency,
    /// `(percentile, latency µs)` points of the percentile curve, as plotted.
    pub curve: Vec<(f64, u64)>,
    pub conservation: Conservation,
    /// The node's status after the run.
    pub status: StatusView,
}

impl Summary {
    /// The JSON summary: configuration, throughput, outcome counts, percentiles, conservation
    /// and the node's final status.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.config;
        let o = &self.outcomes;
        let shards: Vec<serde_json::Value> = self
            .status
            .shards
            .iter()
            .map(|s| {
                json!({
                    "shard": s.shard,
                    "last_sequence": s.last_sequence,
                    "durable_sequence": s.durable_sequence,
                    "wallets": s.wallets,
                    "transfers_in_flight": s.transfers_in_flight,
                    "idempotency_entries": s.idempotency_entries,
                    "idempotency_evicted_early": s.idempotency_evicted_early,
                })
            })
            .collect();
        json!({
            "config": {
                "server": c.server.to_string(),
                "wallets": c.wallets,
                "deposit": c.deposit.to_string(),
                "currency": c.currency,
                "amount_max": c.amount_max.to_string(),
                "mode": c.mode.name(),
                "duration_secs": c.duration().map(|d| d.as_secs_f64()),
                "count": c.count,
                "concurrency": c.concurrency,
                "batch": c.batch,
                "rate": if c.mode == Mode::Open { Some(c.rate) } else { None },
                "connections": c.connections,
                "seed": c.seed,
                "run_id": self.run_id,
                "timeout_ms": c.timeout_ms,
                "measured_with": if c.retry_busy { "submit (busy retried)" } else { "submit_once (busy counted)" },
                "latency_from": match c.mode {
                    Mode::Closed => "send time",
                    Mode::Open => "intended send time",
                },
                "durability": c.durability,
            },
            "shards": self.shards,
            "setup_secs": self.setup_secs,
            "elapsed_secs": self.elapsed_secs,
            "requests": self.requests,
            "commands": o.total(),
            "cross_shard": self.cross_shard,
            "transfers_per_sec": self.transfers_per_sec,
            "applied_per_sec": self.applied_per_sec,
            "outcomes": {
                "ok": o.ok,
                "ok_pending": o.ok_pending,
                "rejected": o.rejected,
                "busy": o.busy,
                "shard_unavailable": o.shard_unavailable,
                "disk_full": o.disk_full,
                "timeouts": o.timeouts,
                "client_errors": o.client_errors,
            },
            "latency_us": {
                "count": self.latency.count,
                "mean": self.latency.mean_us,
                "p50": self.latency.p50_us,
                "p95": self.latency.p95_us,
                "p99": self.latency.p99_us,
                "p99_9": self.latency.p999_us,
                "max": self.latency.max_us,
            },
            "conservation": {
                "expected": self.conservation.expected.to_string(),
                "actual": self.conservation.actual.to_string(),
                "settled": self.conservation.settled,
                "missing_wallets": self.conservation.missing_wallets,
                "holds": self.conservation.holds,
                "error": self.conservation.error,
            },
            "node_status": shards,
        })
    }

    /// The human-readable report the binary prints.
    pub fn report(&self) -> String {
        let c = &self.config;
        let o = &self.outcomes;
        let l = &self.latency;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "run {}: {} wallets on {} shard(s), set-up {:.1} s",
            self.run_id, c.wallets, self.shards, self.setup_secs
        );
        let pacing = match c.mode {
            Mode::Closed => format!("closed loop, {} in flight", c.concurrency),
            Mode::Open => format!(
                "open loop at {:.0} transfers/s (at most {} in flight)",
                c.rate, c.concurrency
            ),
        };
        let _ = writeln!(
            s,
            "{pacing}, {} per request, {} connection(s), {}, durability {}",
            c.batch,
            c.connections,
            if c.retry_busy {
                "submit with retries"
            } else {
                "submit_once (busy counted, not retried)"
            },
            c.durability
        );
        let _ = writeln!(
            s,
            "{} requests, {} transfers ({} cross-shard) in {:.2} s: {:.0} transfers/s applied ok, {:.0} commands/s applied",
            self.requests,
            o.total(),
            self.cross_shard,
            self.elapsed_secs,
            self.transfers_per_sec,
            self.applied_per_sec
        );
        let mut rejected = String::new();
        for (code, n) in &o.rejected {
            let _ = write!(rejected, " {code}={n}");
        }
        let _ = writeln!(
            s,
            "outcomes: ok={} (pending {}) rejected={}{} busy={} shard_unavailable={} disk_full={} timeouts={} client_errors={}",
            o.ok,
            o.ok_pending,
            o.rejected_total(),
            if rejected.is_empty() {
                String::new()
            } else {
                format!(" [{}]", rejected.trim())
            },
            o.busy,
            o.shard_unavailable,
            o.disk_full,
            o.timeouts,
            o.client_errors
        );
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(
            s,
            "latency per request (from {}): p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, mean {:.3} ms",
            match c.mode {
                Mode::Closed => "send",
                Mode::Open => "intended send",
            },
            ms(l.p50_us),
            ms(l.p95_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.mean_us / 1000.0
        );
        let cons = &self.conservation;
        if let Some(error) = &cons.error {
            let _ = writeln!(s, "conservation: NOT CHECKED ({error})");
            return s;
        }
        let _ = writeln!(
            s,
            "conservation: {} (sum of balances {} vs deposited {}; settled {}, missing wallets {})",
            if cons.holds { "holds" } else { "VIOLATED" },
            cons.actual,
            cons.expected,
            cons.settled,
            cons.missing_wallets
        );
        s
    }
}

/// The user id of wallet `index` of run `run_id`: xxh3-128 of both, never 0 (the system owner).
pub fn user_id(run_id: &str, index: u64) -> UserId {
    let mut bytes = Vec::with_capacity(run_id.len() + 9);
    bytes.extend_from_slice(run_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&index.to_le_bytes());
    let id = xxhash_rust::xxh3::xxh3_128(&bytes);
    UserId(if id == 0 { 1 } else { id })
}

fn key(text: &str) -> Result<IdempotencyKey, Error> {
    IdempotencyKey::new(text.as_bytes()).map_err(|_| Error(format!("bad idempotency key {text}")))
}

/// Per-request statistics, merged across tasks.
#[derive(Debug)]
struct Stats {
    outcomes: Outcomes,
    histogram: Histogram<u64>,
    requests: u64,
    cross_shard: u64,
    last_answer: Option<Instant>,
    /// `(start µs since the phase began, latency µs)` per request, when `--latency-log` asks.
    log: Option<Vec<(u64, u64)>>,
}

/// Rows `--latency-log` keeps at most (16 B each: 160 MB).
const LATENCY_LOG_ROWS_MAX: usize = 10_000_000;

impl Stats {
    fn new() -> Result<Stats, Error> {
        Ok(Stats {
            outcomes: Outcomes::default(),
            histogram: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .map_err(|e| Error(e.to_string()))?,
            requests: 0,
            cross_shard: 0,
            last_answer: None,
            log: None,
        })
    }
}

/// Live counters for the progress bar.
#[derive(Debug, Default)]
struct Live {
    commands: AtomicU64,
    ok: AtomicU64,
    busy: AtomicU64,
    failed: AtomicU64,
}

/// What the measured-phase tasks share.
#[derive(Debug)]
struct Shared {
    clients: Vec<Arc<Client>>,
    wallets: Vec<WalletId>,
    currency: CurrencyCode,
    amount_max: u128,
    run_id: String,
    retry_busy: bool,
    next_key: AtomicU64,
    next_connection: AtomicU64,
    /// Start of the measured phase (the latency log counts from it).
    started: Instant,
    stats: Mutex<Stats>,
    live: Live,
}

impl Shared {
    fn client(&self) -> Arc<Client> {
        let n = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.clients[(n % self.clients.len() as u64) as usize].clone()
    }

    /// `size` transfers between random distinct wallets; also returns how many cross shards.
    fn transfers(&self, rng: &mut SmallRng, size: usize) -> Result<(Vec<Command>, u64), Error> {
        let mut commands = Vec::with_capacity(size);
        let mut cross = 0;
        let first = self.next_key.fetch_add(size as u64, Ordering::Relaxed);
        let n = self.wallets.len();
        for i in 0..size {
            let from = rng.random_range(0..n);
            let mut to = rng.random_range(0..n - 1);
            if to >= from {
                to += 1;
            }
            let (from, to) = (self.wallets[from], self.wallets[to]);
            if from.shard() != to.shard() {
                cross += 1;
            }
            let amount = rng.random_range(1..=self.amount_max);
            let op = Op::Transfer {
                from,
                to,
                amount,
                currency: self.currency,
            };
            let key = key(&format!("{}-t{}", self.run_id, first + i as u64))?;
            commands.push(Command::Client { key, op });
        }
        Ok((commands, cross))
    }

    /// Sends one request and records it; latency counted from `since`.
    async fn request(&self, commands: Vec<Command>, cross: u64, since: Instant) {
        let size = commands.len() as u64;
        let client = self.client();
        let answer = if self.retry_busy {
            client.submit(commands).await
        } else {
            client.submit_once(commands).await
        };
        let now = Instant::now();
        let latency_us = now.saturating_duration_since(since).as_micros() as u64;
        let mut outcomes = Outcomes::default();
        match &answer {
            Ok(results) => {
                for result in results {
                    match result {
                        CommandResult::Outcome(Outcome::Ok(applied)) => {
                            outcomes.ok += 1;
                            if matches!(applied, Applied::Transferred { pending: true, .. }) {
                                outcomes.ok_pending += 1;
                            }
                        }
                        CommandResult::Outcome(outcome) => {
                            let code = outcome.rejection().map_or("unknown", Reject::code);
                            *outcomes.rejected.entry(code.to_string()).or_default() += 1;
                        }
                        CommandResult::Busy => outcomes.busy += 1,
                        CommandResult::ShardUnavailable => outcomes.shard_unavailable += 1,
                        CommandResult::DiskFull => outcomes.disk_full += 1,
                    }
                }
                // A short answer is a protocol fault: count the missing commands as errors.
                outcomes.client_errors += size.saturating_sub(results.len() as u64);
            }
            Err(ClientError::Timeout(_)) => outcomes.timeouts += size,
            Err(_) => outcomes.client_errors += size,
        }
        self.live.commands.fetch_add(size, Ordering::Relaxed);
        self.live.ok.fetch_add(outcomes.ok, Ordering::Relaxed);
        self.live.busy.fetch_add(
            outcomes.busy + outcomes.shard_unavailable + outcomes.disk_full,
            Ordering::Relaxed,
        );
        self.live.failed.fetch_add(
            outcomes.timeouts + outcomes.client_errors,
            Ordering::Relaxed,
        );
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.outcomes.merge(&outcomes);
        stats
            .histogram
            .saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
        stats.requests += 1;
        stats.cross_shard += cross;
        if let Some(log) = &mut stats.log
            && log.len() < LATENCY_LOG_ROWS_MAX
        {
            let start_us = since.saturating_duration_since(self.started).as_micros() as u64;
            log.push((start_us, latency_us));
        }
        stats.last_answer = Some(stats.last_answer.map_or(now, |last| last.max(now)));
    }
}

/// Runs the whole load test: set-up, measured phase, report, conservation check. Needs a
/// multi-threaded tokio runtime. Returns `Err` only when the run could not be carried out; a
/// conservation failure is `Ok` with `summary.conservation.holds == false`.
pub async fn run(config: Config) -> Result<Summary, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run_id = match &config.run_id {
        Some(id) => id.clone(),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("lg{:x}", nanos as u64)
        }
    };
    if run_id.is_empty() || run_id.len() > RUN_ID_BYTES_MAX {
        return Err(Error(format!(
            "a run id is 1 to {RUN_ID_BYTES_MAX} bytes, not {}",
            run_id.len()
        )));
    }
    let currency = CurrencyCode::parse(&config.currency)
        .map_err(|_| Error(format!("{:?} is not a currency code", config.currency)))?;
    if config.mode == Mode::Open && !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(Error(format!(
            "--rate must be a positive number, not {}",
            config.rate
        )));
    }
    if config.amount_max == 0 {
        return Err(Error("--amount-max must be at least 1".into()));
    }
    let mut clients = Vec::new();
    for _ in 0..config.connections {
        let mut client_config = ClientConfig::new(config.server, config.trust.clone());
        client_config.server_name = config.server_name.clone();
        client_config.request_timeout_ms = config.timeout_ms.max(1);
        client_config.retries_max = 8;
        clients.push(Arc::new(Client::connect(client_config).await?));
    }
    let progress_on = !config.no_progress && std::io::stderr().is_terminal();

    // Set-up.
    let setup_started = Instant::now();
    let shards = match clients[0].query(Query::Status).await? {
        QueryResult::Status(status) => status.shards.len(),
        other => return Err(Error(format!("unexpected answer to status: {other:?}"))),
    };
    register_currency(&clients[0], &run_id, currency, config.scale).await?;
    let wallets = set_up_wallets(&config, &clients, &run_id, currency, progress_on).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();

    // Measured phase.
    let bar = progress_bar(&config, progress_on);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        clients: clients.clone(),
        wallets,
        currency,
        amount_max: config.amount_max,
        run_id: run_id.clone(),
        retry_busy: config.retry_busy,
        next_key: AtomicU64::new(0),
        next_connection: AtomicU64::new(0),
        started,
        stats: Mutex::new(Stats {
            log: config.latency_log.as_ref().map(|_| Vec::new()),
            ..Stats::new()?
        }),
        live: Live::default(),
    });
    let done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn(tick_progress(
        bar.clone(),
        shared.clone(),
        done.clone(),
        config.clone(),
        started,
    ));
    match config.mode {
        Mode::Closed => closed_loop(&config, &shared, started).await?,
        Mode::Open => open_loop(&config, &shared, started).await?,
    }
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();

    let (outcomes, histogram, requests, cross_shard, last) = {
        let mut stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(path), Some(log)) = (&config.latency_log, stats.log.take()) {
            write_latency_log(path, &log)?;
        }
        (
            stats.outcomes.clone(),
            stats.histogram.clone(),
            stats.requests,
            stats.cross_shard,
            stats.last_answer,
        )
    };
    let elapsed_secs = last
        .map_or_else(
            || started.elapsed(),
            |l| l.saturating_duration_since(started),
        )
        .as_secs_f64()
        .max(1e-9);
    let latency = Latency {
        count: histogram.len(),
        mean_us: histogram.mean(),
        p50_us: histogram.value_at_quantile(0.50),
        p95_us: histogram.value_at_quantile(0.95),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    };
    let curve = percentile_curve(&histogram);

    // Conservation.
    // A node that stops answering must not cost the summary of what was measured.
    let (conservation, status) = match check_conservation(&config, &shared).await {
        Ok(checked) => checked,
        Err(error) => (
            Conservation {
                expected: 0,
                actual: 0,
                settled: false,
                holds: false,
                missing_wallets: 0,
                error: Some(error.0),
            },
            StatusView::default(),
        ),
    };
    for client in &clients {
        client.close();
    }
    let summary = Summary {
        transfers_per_sec: outcomes.ok as f64 / elapsed_secs,
        applied_per_sec: outcomes.applied() as f64 / elapsed_secs,
        config,
        run_id,
        shards,
        setup_secs,
        elapsed_secs,
        requests,
        cross_shard,
        outcomes,
        latency,
        curve,
        conservation,
        status,
    };
    if let Some(path) = &summary.config.json {
        let text = serde_json::to_string_pretty(&summary.to_json())
            .map_err(|e| Error(format!("JSON summary: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| Error(format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &summary.config.svg {
        std::fs::write(path, percentile_svg(&summary))
            .map_err(|e| Error(format!("{}: {e}", path.display())))?;
    }
    Ok(summary)
}

/// Writes `--latency-log`: a header, then one `start_us,latency_us` row per request.
fn write_latency_log(path: &std::path::Path, log: &[(u64, u64)]) -> Result<(), Error> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| Error(format!("{}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "start_us,latency_us").map_err(fail)?;
    for (start_us, latency_us) in log {
        writeln!(out, "{start_us},{latency_us}").map_err(fail)?;
    }
    out.flush().map_err(fail)
}

/// Registers `currency` on every shard; an existing one (`currency_exists`) is fine.
async fn register_currency(
    client: &Client,
    run_id: &str,
    currency: CurrencyCode,
    scale: u8,
) -> Result<(), Error> {
    let command = Command::Client {
        key: key(&format!("{run_id}-currency"))?,
        op: Op::RegisterCurrency {
            code: currency,
            scale,
        },
    };
    match client.submit(vec![command]).await?.first() {
        Some(CommandResult::Outcome(Outcome::Ok(_)))
        | Some(CommandResult::Outcome(Outcome::Rejected(Reject::CurrencyExists))) => Ok(()),
        other => Err(Error(format!(
            "registering {currency:?} was answered {other:?}"
        ))),
    }
}

/// Opens the run's wallets and deposits into each, `SETUP_BATCH` at a time, a few requests in
/// flight; returns the wallet ids in index order.
async fn set_up_wallets(
    config: &Config,
    clients: &[Arc<Client>],
    run_id: &str,
    currency: CurrencyCode,
    progress_on: bool,
) -> Result<Vec<WalletId>, Error> {
    let total = config.wallets;
    let bar = if progress_on {
        let bar = ProgressBar::with_draw_target(Some(total * 2), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("set-up {bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("opening wallets, then depositing");
        bar
    } else {
        ProgressBar::hidden()
    };
    let chunks: Vec<(u64, u64)> = (0..total)
        .step_by(SETUP_BATCH)
        .map(|start| (start, (start + SETUP_BATCH as u64).min(total)))
        .collect();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(SETUP_IN_FLIGHT));
    let mut tasks = Vec::new();
    for (n, (start, end)) in chunks.iter().copied().enumerate() {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error(e.to_string()))?;
        let client = clients[n % clients.len()].clone();
        let run_id = run_id.to_string();
        let deposit = config.deposit;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let opens = (start..end)
                .map(|i| {
                    Ok(Command::Client {
                        key: key(&format!("{run_id}-o{i}"))?,
                        op: Op::OpenWallet {
                            user: user_id(&run_id, i),
                            currency,
                        },
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let mut wallets = Vec::with_capacity(opens.len());
            for (i, result) in (start..).zip(client.submit(opens).await?) {
                match result {
                    CommandResult::Outcome(Outcome::Ok(Applied::WalletOpened(wallet))) => {
                        wallets.push(wallet)
                    }
                    other => {
                        return Err(Error(format!(
                            "opening wallet {i} of run {run_id} was answered {other:?}"
                        )));
                    }
                }
            }
            bar.inc(end - start);
            let deposits = (start..)
                .zip(&wallets)
                .map(|(i, wallet)| {
                    Ok(Command::Client {
                        key: key(&format!("{run_id}-d{i}"))?,
                        op: Op::Deposit {
                            wallet: *wallet,
                            amount: deposit,
                            currency,
                        },
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            for (i, result) in (start..).zip(client.submit(deposits).await?) {
                if !matches!(result, CommandResult::Outcome(Outcome::Ok(_))) {
                    return Err(Error(format!(
                        "the deposit into wallet {i} of run {run_id} was answered {result:?}"
                    )));
                }
            }
            bar.inc(end - start);
            Ok::<_, Error>(wallets)
        }));
    }
    let mut wallets = Vec::with_capacity(total as usize);
    for task in tasks {
        wallets.extend(task.await.map_err(|e| Error(e.to_string()))??);
    }
    bar.finish_and_clear();
    Ok(wallets)
}

fn progress_bar(config: &Config, on: bool) -> ProgressBar {
    if !on {
        return ProgressBar::hidden();
    }
    let (length, template) = match config.duration() {
        Some(duration) => (
            duration.as_millis() as u64,
            "{spinner} {elapsed_precise} {bar:40} {percent:>3}% {msg}",
        ),
        None => (
            config.count.unwrap_or(0),
            "{spinner} {elapsed_precise} {bar:40} {pos}/{len} {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

async fn tick_progress(
    bar: ProgressBar,
    shared: Arc<Shared>,
    done: Arc<AtomicBool>,
    config: Config,
    started: Instant,
) {
    let mut last = (Instant::now(), 0u64);
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let commands = shared.live.commands.load(Ordering::Relaxed);
        let ok = shared.live.ok.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (ok - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, ok);
        match config.duration() {
            Some(_) => bar.set_position(started.elapsed().as_millis() as u64),
            None => bar.set_position(commands),
        }
        bar.set_message(format!(
            "{ok} ok, {rate:.0}/s, busy {}, failed {}",
            shared.live.busy.load(Ordering::Relaxed),
            shared.live.failed.load(Ordering::Relaxed)
        ));
    }
}

/// Reserves the size of the next request under `--count` (0 when the count is used up).
fn reserve(count: Option<u64>, issued: &AtomicU64, batch: u64) -> u64 {
    let Some(count) = count else {
        return batch;
    };
    let first = issued.fetch_add(batch, Ordering::Relaxed);
    count.saturating_sub(first).min(batch)
}

async fn closed_loop(config: &Config, shared: &Arc<Shared>, started: Instant) -> Result<(), Error> {
    let deadline = config.duration().map(|d| started + d);
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..config.concurrency {
        let shared = shared.clone();
        let issued = issued.clone();
        let count = config.count;
        let batch = config.batch;
        let mut rng =
            SmallRng::seed_from_u64(config.seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        workers.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok::<(), Error>(());
                }
                let size = reserve(count, &issued, batch);
                if size == 0 {
                    return Ok(());
                }
                let (commands, cross) = shared.transfers(&mut rng, size as usize)?;
                shared.request(commands, cross, Instant::now()).await;
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| Error(e.to_string()))??;
    }
    Ok(())
}

async fn open_loop(config: &Config, shared: &Arc<Shared>, started: Instant) -> Result<(), Error> {
    let interval = Duration::from_secs_f64((config.batch as f64 / config.rate).max(1e-9));
    let deadline = config.duration().map(|d| started + d);
    let issued = AtomicU64::new(0);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(config.concurrency as usize));
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let mut k: u64 = 0;
    loop {
        let intended = started + interval.mul_f64(k as f64);
        if deadline.is_some_and(|d| intended >= d) {
            break;
        }
        let size = reserve(config.count, &issued, config.batch);
        if size == 0 {
            break;
        }
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(intended.into()).await;
        } else {
            // Behind schedule: send at once, but let the answers be read between sends.
            tokio::task::yield_now().await;
        }
        // All requests busy: wait for one; the wait counts in this request's latency.
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error(e.to_string()))?;
        let (commands, cross) = shared.transfers(&mut rng, size as usize)?;
        let shared = shared.clone();
        tasks.spawn(async move {
            let _permit = permit;
            shared.request(commands, cross, intended).await;
        });
        while tasks.try_join_next().is_some() {}
        k += 1;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Waits (bounded) for the node to settle its cross-shard transfers, then sums the balances of
/// the run's wallets.
async fn check_conservation(
    config: &Config,
    shared: &Arc<Shared>,
) -> Result<(Conservation, StatusView), Error> {
    let client = shared.clients[0].clone();
    let deadline = Instant::now() + Duration::from_secs(config.settle_secs);
    let (settled, mut status) = loop {
        let status = match client.query(Query::Status).await? {
            QueryResult::Status(status) => status,
            other => return Err(Error(format!("unexpected answer to status: {other:?}"))),
        };
        if status.shards.iter().all(|s| s.transfers_in_flight == 0) {
            break (true, status);
        }
        if Instant::now() >= deadline {
            break (false, status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(QUERIES_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut actual: i128 = 0;
    let mut missing = 0u64;
    let chunk = shared.wallets.len().div_ceil(QUERIES_IN_FLIGHT * 4).max(1);
    for (n, wallets) in shared.wallets.chunks(chunk).enumerate() {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error(e.to_string()))?;
        let client = shared.clients[n % shared.clients.len()].clone();
        let wallets = wallets.to_vec();
        tasks.spawn(async move {
            let _permit = permit;
            let mut sum: i128 = 0;
            let mut missing = 0u64;
            for wallet in wallets {
                match client.query(Query::WalletById(wallet)).await? {
                    QueryResult::Wallet(Some(view)) => sum += view.available + view.frozen,
                    _ => missing += 1,
                }
            }
            Ok::<_, ClientError>((sum, missing))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (sum, gone) = joined.map_err(|e| Error(e.to_string()))??;
        actual += sum;
        missing += gone;
    }
    if let QueryResult::Status(after) = client.query(Query::Status).await? {
        status = after;
    }
    let expected = i128::try_from(config.deposit)
        .ok()
        .and_then(|d| d.checked_mul(i128::from(config.wallets)))
        .ok_or_else(|| Error("wallets x deposit overflows".into()))?;
    Ok((
        Conservation {
            expected,
            actual,
            settled,
            holds: actual == expected && missing == 0,
            missing_wallets: missing,
            error: None,
        },
        status,
    ))
}

/// Percentiles plotted: 0 to 99.999 on a `-log10(1 - p)` scale, plus the maximum at 100.
fn percentile_curve(histogram: &Histogram<u64>) -> Vec<(f64, u64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    // 20 points per decade of `1 - p`, from p = 0 to p = 99.999 %.
    for step in 0..=100 {
        let nines = f64::from(step) / 20.0;
        let p = 1.0 - 10f64.powf(-nines);
        points.push((p * 100.0, histogram.value_at_quantile(p)));
    }
    points.push((100.0, histogram.max()));
    points
}

/// X position (0..=1) of percentile `p` on the plot's axis: `-log10(1 - p)` up to 5 nines.
fn percentile_x(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-5);
    (-rest.log10() / 5.0).clamp(0.0, 1.0)
}

/// An SVG plot of latency (ms, linear) by percentile (0 .. 99.999, log scale of `1 - p`).
pub fn percentile_svg(summary: &Summary) -> String {
    let (width, height) = (800.0, 480.0);
    let (left, right, top, bottom) = (70.0, 30.0, 50.0, 60.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max_us = summary.curve.iter().map(|p| p.1).max().unwrap_or(1).max(1);
    let y_max_ms = nice_ceiling(max_us as f64 / 1000.0);
    let x = |p: f64| left + percentile_x(p) * plot_w;
    let y = |us: u64| top + plot_h - (us as f64 / 1000.0 / y_max_ms).min(1.0) * plot_h;
    let c = &summary.config;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let title = format!(
        "paycore-loadgen {}: {} loop, batch {}, {} in flight{} — {:.0} transfers/s",
        summary.run_id,
        c.mode.name(),
        c.batch,
        c.concurrency,
        if c.mode == Mode::Open {
            format!(", target {:.0}/s", c.rate)
        } else {
            String::new()
        },
        summary.transfers_per_sec
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        xml_escape(&title)
    );
    // Axes and grid.
    for (p, label) in [
        (0.0, "0"),
        (90.0, "90"),
        (99.0, "99"),
        (99.9, "99.9"),
        (99.99, "99.99"),
        (99.999, "99.999"),
    ] {
        let px = x(p);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            top + plot_h,
            top + plot_h + 18.0
        );
    }
    for i in 0..=5 {
        let ms = y_max_ms * f64::from(i) / 5.0;
        let py = top + plot_h - plot_h * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            py + 4.0,
            trim_number(ms)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1 - p)</text>"#,
        left + plot_w / 2.0,
        height - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency per request, ms (from {})</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        match c.mode {
            Mode::Closed => "send",
            Mode::Open => "intended send",
        }
    );
    let mut points = String::new();
    for (p, us) in summary.curve.iter().filter(|(p, _)| *p <= 99.999) {
        let _ = write!(points, "{:.1},{:.1} ", x(*p), y(*us));
    }
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        points.trim_end()
    );
    let l = &summary.latency;
    let legend = format!(
        "p50 {:.3} ms · p99 {:.3} ms · p99.9 {:.3} ms · max {:.3} ms · {} requests",
        l.p50_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.p999_us as f64 / 1000.0,
        l.max_us as f64 / 1000.0,
        l.count
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
        left + 10.0,
        top + 18.0,
        xml_escape(&legend)
    );
    s.push_str("</svg>\n");
    s
}

/// The smallest of 1, 2, 5 × 10^k at or above `value` (at least 0.001).
fn nice_ceiling(value: f64) -> f64 {
    let value = value.max(0.001);
    let mut decade = 10f64.powf(value.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * decade >= value * 0.999_999 {
                return m * decade;
            }
        }
        decade *= 10.0;
    }
}

fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_spread_and_stable() {
        let a = user_id("run", 1);
        assert_eq!(a, user_id("run", 1));
        assert_ne!(a, user_id("run", 2));
        assert_ne!(a, user_id("other", 1));
        let on_zero = (0..1000).filter(|i| user_id("r", *i).shard(2) == 0).count();
        assert!((400..600).contains(&on_zero), "{on_zero}");
    }

    #[test]
    fn count_reservations_stop_at_the_count() {
        let issued = AtomicU64::new(0);
        let sizes: Vec<u64> = (0..5).map(|_| reserve(Some(10), &issued, 4)).collect();
        assert_eq!(sizes, [4, 4, 2, 0, 0]);
        assert_eq!(reserve(None, &issued, 4), 4);
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert!((percentile_x(99.0) - 0.4).abs() < 1e-9);
        assert_eq!(percentile_x(0.0), 0.0);
        assert_eq!(trim_number(2.5), "2.5");
    }
}
