//! Reconciliation: proves the store and the engine agree, reading both and changing neither.
//!
//! Per shard, inside one read-only SQL transaction (a consistent view even while flushers
//! write), at the shard's flushed sequence (its checkpoint):
//! 1. per currency, the stored balances sum to zero (double entry);
//! 2. each wallet's stored balance equals the sum of its stored postings, and each movement's
//!    postings sum to zero with credits equal to its amount (a deleted movement row, or a
//!    posting without its movement, shows here);
//! 3. each stored wallet equals the engine's (newest snapshot at or below the checkpoint, then
//!    the journal up to it): available, frozen, version, status; none missing on either side;
//! 4. every idempotency record the engine holds is stored with the same outcome, and the stored
//!    open holds are exactly the engine's.
//!
//! Memory, what scales with what: one shard's engine at a time (as the node itself holds it,
//! rebuilt for the shard and dropped before the next), plus a bounded amount: the store's rows
//! arrive through cursors ([`FETCH_ROWS_MAX`] rows a fetch, at most three cursors open), merged
//! in id order with the engine's wallets, which are walked in place; idempotency records and
//! holds are looked up in the engine's own tables ([`records`]); the report keeps at most
//! [`DISCREPANCIES_LISTED_MAX`] discrepancies. Nothing grows with the number of stored rows or
//! copies the engine — except naming idempotency records or holds the store *lacks*, which walks
//! an engine image (see [`records`]) and happens only when such a record exists.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use paycore_engine::{EngineConfig, WalletId};

use crate::decimal::{format_minor, parse_minor};
use crate::flusher::{FlushError, FlusherConfig, engine_at};
use crate::rows::wallet_row;
use crate::store::{FETCH_ROWS_MAX, Pull, Query, Store, StoreError, StoreTarget};

mod records;

/// Discrepancies listed in the report (all are counted).
pub const DISCREPANCIES_LISTED_MAX: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub data_dir: PathBuf,
    pub shard_count: u16,
    /// The node's engine configuration (its `shard` and `shard_count` are set per shard).
    pub engine_config: EngineConfig,
    pub target: StoreTarget,
}

/// Progress callbacks (the CLI draws them with indicatif).
pub trait Progress {
    fn stage(&self, shard: u16, name: &str, total: Option<u64>);
    fn advance(&self, rows: u64);
}

/// No progress output.
#[derive(Debug)]
pub struct Silent;

impl Progress for Silent {
    fn stage(&self, _: u16, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    /// `1-sum-zero`, `2-wallet-postings`, `2-movement-postings`, `3-engine-wallet`,
    /// `4-idempotency`, `4-holds`, `3-engine-state`.
    pub check: &'static str,
    pub shard: u16,
    pub subject: String,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSummary {
    pub shard: u16,
    pub checkpoint: u64,
    pub wallets: u64,
    pub movements: u64,
    pub postings: u64,
    pub idempotency_records: u64,
    pub open_holds: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub store: String,
    pub shards: Vec<ShardSummary>,
    pub discrepancies: Vec<Discrepancy>,
    pub discrepancy_count: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("shard {shard}: {source}")]
    Engine { shard: u16, source: FlushError },
}

impl Report {
    pub fn ok(&self) -> bool {
        self.discrepancy_count == 0
    }

    fn add(&mut self, d: Discrepancy) {
        self.discrepancy_count += 1;
        if self.discrepancies.len() < DISCREPANCIES_LISTED_MAX {
            self.discrepancies.push(d);
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok(),
            "store": self.store,
            "elapsed_ms": self.elapsed_ms,
            "shards": self.shards.iter().map(|s| serde_json::json!({
                "shard": s.shard,
                "checkpoint": s.checkpoint,
                "wallets": s.wallets,
                "movements": s.movements,
                "postings": s.postings,
                "idempotency_records": s.idempotency_records,
                "open_holds": s.open_holds,
            })).collect::<Vec<_>>(),
            "discrepancy_count": self.discrepancy_count,
            "discrepancies_listed": self.discrepancies.len(),
            "discrepancies": self.discrepancies.iter().map(|d| serde_json::json!({
                "check": d.check,
                "shard": d.shard,
                "subject": d.subject,
                "expected": d.expected,
                "found": d.found,
            })).collect::<Vec<_>>(),
        })
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let total = |f: fn(&ShardSummary) -> u64| self.shards.iter().map(f).sum::<u64>();
        let _ = writeln!(
            out,
            "reconciled {} shard(s) of {} in {} ms: {} wallets, {} movements, {} postings, {} \
             idempotency records, {} open holds",
            self.shards.len(),
            self.store,
            self.elapsed_ms,
            total(|s| s.wallets),
            total(|s| s.movements),
            total(|s| s.postings),
            total(|s| s.idempotency_records),
            total(|s| s.open_holds),
        );
        for s in &self.shards {
            let _ = writeln!(
                out,
                "  shard {}: flushed through sequence {}",
                s.shard, s.checkpoint
            );
        }
        if self.ok() {
            let _ = writeln!(out, "OK: every check matches");
        } else {
            let _ = writeln!(
                out,
                "MISMATCH: {} discrepanc{} ({} listed)",
                self.discrepancy_count,
                if self.discrepancy_count == 1 {
                    "y"
                } else {
                    "ies"
                },
                self.discrepancies.len()
            );
            for d in self.discrepancies.iter().take(50) {
                let _ = writeln!(
                    out,
                    "  [{}] shard {} {}: expected {}, found {}",
                    d.check, d.shard, d.subject, d.expected, d.found
                );
            }
            if self.discrepancies.len() > 50 {
                let _ = writeln!(out, "  ... the rest are in the JSON report");
            }
        }
        out
    }
}

fn col(row: &[Option<String>], i: usize) -> &str {
    row.get(i).and_then(|v| v.as_deref()).unwrap_or("")
}

fn invalid(what: &str, row: &[Option<String>]) -> StoreError {
    StoreError::Invalid(format!("unreadable {what} row: {row:?}"))
}

fn id_of(row: &[Option<String>], what: &str) -> Result<u64, StoreError> {
    col(row, 0).parse::<u64>().map_err(|_| invalid(what, row))
}

/// Pulls from a stream of rows keyed by column 0, folding consecutive rows with the same key
/// (SQLite returns raw postings where PostgreSQL returns sums).
struct Folded<'p, 'a> {
    pull: &'p mut Box<dyn Pull + 'a>,
    ahead: Option<Vec<Option<String>>>,
}

impl<'p, 'a> Folded<'p, 'a> {
    fn new(pull: &'p mut Box<dyn Pull + 'a>) -> Result<Self, StoreError> {
        let ahead = pull.pull()?;
        Ok(Folded { pull, ahead })
    }

    fn peek_key(&self) -> Option<&str> {
        self.ahead.as_ref().map(|r| col(r, 0))
    }

    /// The next key's rows, each column after the key summed as a decimal at `scale`.
    fn next(
        &mut self,
        scale: u8,
        rows: &mut u64,
    ) -> Result<Option<(String, Vec<i128>)>, StoreError> {
        let Some(first) = self.ahead.take() else {
            return Ok(None);
        };
        let key = col(&first, 0).to_string();
        let mut sums = vec![0i128; first.len().saturating_sub(1)];
        let mut current = Some(first);
        while let Some(row) = current {
            if col(&row, 0) != key {
                self.ahead = Some(row);
                break;
            }
            *rows += 1;
            for (i, sum) in sums.iter_mut().enumerate() {
                let value = parse_minor(col(&row, i + 1), scale)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                *sum = sum
                    .checked_add(value)
                    .ok_or_else(|| StoreError::Invalid(format!("sum overflows for {key}")))?;
            }
            current = self.pull.pull()?;
        }
        Ok(Some((key, sums)))
    }
}

/// Runs every check; the report lists what does not match.
pub fn reconcile(
    config: &ReconcileConfig,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let mut store = Store::connect_read_only(&config.target)?;
    let mut report = Report {
        store: config.target.describe(),
        ..Report::default()
    };
    store.begin_read()?;
    let checkpoints: HashMap<u16, u64> = store.checkpoints()?.into_iter().collect();
    for shard in 0..config.shard_count {
        let checkpoint = checkpoints.get(&shard).copied().unwrap_or(0);
        reconcile_shard(config, &mut store, shard, checkpoint, progress, &mut report)?;
    }
    for (&shard, _) in checkpoints
        .iter()
        .filter(|(s, _)| **s >= config.shard_count)
    {
        report.add(Discrepancy {
            check: "3-engine-state",
            shard,
            subject: "flush checkpoint".into(),
            expected: format!("no shard {shard} (the node has {})", config.shard_count),
            found: "a checkpoint row".into(),
        });
    }
    store.end_read()?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn reconcile_shard(
    config: &ReconcileConfig,
    store: &mut Store,
    shard: u16,
    checkpoint: u64,
    progress: &dyn Progress,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let mut summary = ShardSummary {
        shard,
        checkpoint,
        ..ShardSummary::default()
    };
    progress.stage(
        shard,
        "engine state from snapshot + journal",
        Some(checkpoint),
    );
    let flusher = FlusherConfig::new(
        config.data_dir.clone(),
        EngineConfig {
            shard,
            shard_count: config.shard_count,
            ..config.engine_config.clone()
        },
        config.target.clone(),
    );
    let engine = match engine_at(&flusher, checkpoint) {
        Ok(engine) => engine,
        Err(error @ FlushError::StoreAhead { .. }) => {
            report.add(Discrepancy {
                check: "3-engine-state",
                shard,
                subject: "flushed sequence".into(),
                expected: "at most the journal's last sequence".into(),
                found: error.to_string(),
            });
            report.shards.push(summary);
            return Ok(());
        }
        Err(source) => return Err(ReconcileError::Engine { shard, source }),
    };
    progress.advance(checkpoint);

    // Scales of this shard's currencies, to read decimals back exactly.
    let mut scales: HashMap<String, u8> = HashMap::new();
    store.cursors(&[Query::Currencies], shard, &mut |pulls| {
        while let Some(row) = pulls[0].pull()? {
            let scale = col(&row, 1)
                .parse::<u8>()
                .map_err(|_| invalid("currency", &row))?;
            scales.insert(col(&row, 0).to_string(), scale);
        }
        Ok(())
    })?;
    for info in engine.currencies() {
        if scales.get(info.code.as_str()) != Some(&info.scale) {
            report.add(Discrepancy {
                check: "3-engine-state",
                shard,
                subject: format!("currency {}", info.code),
                expected: format!("scale {}", info.scale),
                found: format!("{:?}", scales.get(info.code.as_str())),
            });
        }
    }

    // Checks 1, 2 (wallets) and 3: wallets, their postings and the engine, merged by id.
    progress.stage(
        shard,
        "wallets, postings, engine balances",
        Some(engine.wallet_count() as u64),
    );
    let mut sums: HashMap<String, i128> = HashMap::new();
    // Postings are counted in the movement pass (column 3 holds each group's count).
    let mut scratch = 0u64;
    store.cursors(
        &[Query::Wallets, Query::EntriesByWallet],
        shard,
        &mut |pulls| {
            let (wallets, entries) = pulls.split_at_mut(1);
            let mut entries = Folded::new(&mut entries[0])?;
            let mut engine_wallets = engine.wallets().peekable();
            let mut ahead = wallets[0].pull()?;
            let mut done: u64 = 0;
            loop {
                let stored_id = match &ahead {
                    Some(row) => Some(id_of(row, "wallet")?),
                    None => None,
                };
                let engine_id = engine_wallets.peek().map(|(id, _)| id.0);
                let Some(id) = [stored_id, engine_id].into_iter().flatten().min() else {
                    break;
                };
                // Postings of wallets that have no row at all (ids below this one).
                while let Some(key) = entries.peek_key() {
                    let key_id: u64 = key
                        .parse()
                        .map_err(|_| StoreError::Invalid(format!("wallet id {key:?}")))?;
                    if key_id >= id {
                        break;
                    }
                    let (_, total) = entries.next(18, &mut scratch)?.unwrap_or_default();
                    report.add(Discrepancy {
                        check: "2-wallet-postings",
                        shard,
                        subject: format!("wallet {key_id}"),
                        expected: "a wallet row for its postings".into(),
                        found: format!(
                            "no wallet row; postings sum {}",
                            format_minor(total.first().copied().unwrap_or(0), 18)
                        ),
                    });
                }
                let engine_row = if engine_id == Some(id) {
                    engine_wallets.next();
                    wallet_row(&engine, WalletId(id))
                } else {
                    None
                };
                if stored_id == Some(id) {
                    let Some(row) = ahead.take() else {
                        unreachable!("stored id came from it")
                    };
                    ahead = wallets[0].pull()?;
                    summary.wallets += 1;
                    let currency = col(&row, 1).to_string();
                    let Some(&scale) = scales.get(&currency) else {
                        return Err(invalid("wallet (unknown currency)", &row));
                    };
                    let read = |i: usize| {
                        parse_minor(col(&row, i), scale)
                            .map_err(|e| StoreError::Invalid(e.to_string()))
                    };
                    let (balance, available, frozen) = (read(2)?, read(3)?, read(4)?);
                    let entry = sums.entry(currency.clone()).or_default();
                    *entry = entry.saturating_add(balance);
                    // Check 2: its postings.
                    let posted = match entries.peek_key() {
                        Some(key) if key == id.to_string() => {
                            entries.next(scale, &mut scratch)?.map(|(_, s)| s[0])
                        }
                        _ => None,
                    };
                    if posted.unwrap_or(0) != balance {
                        report.add(Discrepancy {
                            check: "2-wallet-postings",
                            shard,
                            subject: format!("wallet {id}"),
                            expected: format!(
                                "balance {} {currency}",
                                format_minor(balance, scale)
                            ),
                            found: format!(
                                "postings sum {}",
                                format_minor(posted.unwrap_or(0), scale)
                            ),
                        });
                    }
                    if balance != available + frozen {
                        report.add(Discrepancy {
                            check: "2-wallet-postings",
                            shard,
                            subject: format!("wallet {id}"),
                            expected: format!(
                                "balance = available + frozen = {}",
                                format_minor(available + frozen, scale)
                            ),
                            found: format!("balance {}", format_minor(balance, scale)),
                        });
                    }
                    // Check 3: the engine.
                    let stored = format!(
                        "available {} frozen {} version {} status {}",
                        format_minor(available, scale),
                        format_minor(frozen, scale),
                        col(&row, 5),
                        col(&row, 6)
                    );
                    let expected = engine_row.map(|w| {
                        format!(
                            "available {} frozen {} version {} status {}",
                            format_minor(w.available, w.scale),
                            format_minor(w.frozen, w.scale),
                            w.version,
                            w.status
                        )
                    });
                    if expected.as_deref() != Some(stored.as_str()) {
                        report.add(Discrepancy {
                            check: "3-engine-wallet",
                            shard,
                            subject: format!("wallet {id} ({currency})"),
                            expected: expected
                                .unwrap_or_else(|| "no such wallet in the engine".into()),
                            found: stored,
                        });
                    }
                } else if let Some(w) = engine_row {
                    report.add(Discrepancy {
                        check: "3-engine-wallet",
                        shard,
                        subject: format!("wallet {id} ({})", w.currency),
                        expected: format!(
                            "available {} frozen {} version {}",
                            format_minor(w.available, w.scale),
                            format_minor(w.frozen, w.scale),
                            w.version
                        ),
                        found: "no wallet row".into(),
                    });
                }
                done += 1;
                if done.is_multiple_of(FETCH_ROWS_MAX as u64) {
                    progress.advance(FETCH_ROWS_MAX as u64);
                }
            }
            while let Some(key) = entries.peek_key().map(str::to_string) {
                let (_, total) = entries.next(18, &mut scratch)?.unwrap_or_default();
                report.add(Discrepancy {
                    check: "2-wallet-postings",
                    shard,
                    subject: format!("wallet {key}"),
                    expected: "a wallet row for its postings".into(),
                    found: format!(
                        "no wallet row; postings sum {}",
                        format_minor(total.first().copied().unwrap_or(0), 18)
                    ),
                });
            }
            Ok(())
        },
    )?;
    // Check 1.
    let mut currencies: Vec<_> = sums.into_iter().collect();
    currencies.sort();
    for (currency, sum) in currencies {
        if sum != 0 {
            let scale = scales.get(&currency).copied().unwrap_or(0);
            report.add(Discrepancy {
                check: "1-sum-zero",
                shard,
                subject: format!("currency {currency}"),
                expected: "balances sum to 0".into(),
                found: format!("sum {}", format_minor(sum, scale)),
            });
        }
    }

    // Check 2 (movements): each movement's postings net to zero and credit its amount.
    progress.stage(shard, "movements and their postings", None);
    store.cursors(
        &[Query::Movements, Query::EntriesByMovement],
        shard,
        &mut |pulls| {
            let (movements, entries) = pulls.split_at_mut(1);
            let mut entries = Folded::new(&mut entries[0])?;
            let mut ahead = movements[0].pull()?;
            let mut done: u64 = 0;
            loop {
                let movement_key = ahead.as_ref().map(|r| col(r, 0).to_string());
                let entry_key = entries.peek_key().map(str::to_string);
                let key = match (&movement_key, &entry_key) {
                    (None, None) => break,
                    (Some(m), Some(e)) => m.min(e).clone(),
                    (Some(k), None) | (None, Some(k)) => k.clone(),
                };
                // Amounts read at 18 decimals (a movement is at most 10^28 of them: no overflow).
                let amount = if movement_key.as_ref() == Some(&key) {
                    let Some(row) = ahead.take() else {
                        unreachable!("key came from it")
                    };
                    ahead = movements[0].pull()?;
                    summary.movements += 1;
                    Some(
                        parse_minor(col(&row, 1), 18)
                            .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    )
                } else {
                    None
                };
                let postings = if entry_key.as_ref() == Some(&key) {
                    let mut rows = 0;
                    let sums = entries.next(18, &mut rows)?.map(|(_, s)| s);
                    // Column 3 counts the postings; summed like the amounts, at 18 decimals.
                    summary.postings += sums
                        .as_ref()
                        .and_then(|s| s.get(2))
                        .map_or(0, |n| (n / 10i128.pow(18)) as u64);
                    sums
                } else {
                    None
                };
                let subject = format!("movement {key}");
                match (amount, postings) {
                    (Some(amount), Some(sums)) => {
                        let (net, credits) = (sums[0], sums[1]);
                        if net != 0 || credits != amount {
                            report.add(Discrepancy {
                                check: "2-movement-postings",
                                shard,
                                subject,
                                expected: format!(
                                    "postings net 0, credits {}",
                                    format_minor(amount, 18)
                                ),
                                found: format!(
                                    "net {}, credits {}",
                                    format_minor(net, 18),
                                    format_minor(credits, 18)
                                ),
                            });
                        }
                    }
                    (Some(amount), None) => report.add(Discrepancy {
                        check: "2-movement-postings",
                        shard,
                        subject,
                        expected: format!("postings of {}", format_minor(amount, 18)),
                        found: "no postings".into(),
                    }),
                    (None, Some(sums)) => report.add(Discrepancy {
                        check: "2-movement-postings",
                        shard,
                        subject,
                        expected: "a movement row for its postings".into(),
                        found: format!(
                            "no movement row; postings credit {}",
                            format_minor(sums.get(1).copied().unwrap_or(0), 18)
                        ),
                    }),
                    (None, None) => unreachable!("the key came from one side"),
                }
                done += 1;
                if done.is_multiple_of(FETCH_ROWS_MAX as u64) {
                    progress.advance(FETCH_ROWS_MAX as u64);
                }
            }
            Ok(())
        },
    )?;

    // Check 4: idempotency records and open holds (bounded memory: see `records`).
    progress.stage(shard, "idempotency records and holds", None);
    records::check(&engine, store, shard, &mut summary, report)?;
    report.shards.push(summary);
    Ok(())
}
