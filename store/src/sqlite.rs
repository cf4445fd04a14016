//! The embedded backend: one SQLite file, WAL journal, one SQL transaction per batch with
//! prepared statements. A deferred commit runs with `synchronous = NORMAL`, which in WAL mode may
//! lose the last transactions at a power cut but never tears one: rows and checkpoint go back
//! together, and the flusher writes them again. A durable one runs with `synchronous = FULL`
//! (the WAL is synced at its commit, and with it every earlier commit in the same file): only
//! those move the watermark journal retention trusts ([`crate::durability`]). Several shard
//! flushers share the file; SQLite serialises their transactions (`busy_timeout`).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::decimal::format_minor;
use crate::durability::Commit;
use crate::rows::BatchRows;
use crate::schema::{self, uuid_text};
use crate::store::{Pull, PullsFn, Query, StoreError};
use crate::time::timestamp_text;

/// How long a writer waits for another one before `database is locked`.
const BUSY_TIMEOUT_MS: u64 = 30_000;
/// Batches between forced WAL checkpoints. With several flushers writing in turn, SQLite's
/// automatic (passive) checkpoint never finds a moment to restart the WAL, which then grows
/// without bound (28 GB in one benchmark); a TRUNCATE checkpoint waits for the other writers'
/// current transaction and resets it.
const WAL_CHECKPOINT_EVERY_BATCHES: u64 = 16;

pub struct SqliteStore {
    connection: Connection,
    batches: u64,
    /// The connection's `synchronous` setting now.
    synchronous: Commit,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish()
    }
}

fn amount(value: u128, scale: u8) -> String {
    // Amounts are at most SYSTEM_BALANCE_MAX (10^36) < i128::MAX.
    format_minor(value as i128, scale)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(SqliteStore {
            connection,
            batches: 0,
            synchronous: Commit::Deferred,
        })
    }

    /// Read-only (reconciliation): nothing is created or changed.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let connection =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        connection.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        Ok(SqliteStore {
            connection,
            batches: 0,
            synchronous: Commit::Deferred,
        })
    }

    pub fn migrate(&mut self) -> Result<(), StoreError> {
        self.connection.execute_batch(schema::SQLITE)?;
        // Stores made before the epoch was kept (0: not checked).
        let has_epoch: i64 = self.connection.query_row(
            "SELECT count(*) FROM pragma_table_info('flush_checkpoints') WHERE name = 'last_epoch'",
            [],
            |row| row.get(0),
        )?;
        if has_epoch == 0 {
            self.connection.execute_batch(
                "ALTER TABLE flush_checkpoints ADD COLUMN last_epoch INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        Ok(())
    }

    pub fn checkpoint(&mut self, shard: u16) -> Result<u64, StoreError> {
        let found: Option<i64> = self
            .connection
            .query_row(
                "SELECT last_sequence FROM flush_checkpoints WHERE shard = ?1",
                [i64::from(shard)],
                |row| row.get(0),
            )
            .optional()?;
        Ok(found.unwrap_or(0) as u64)
    }

    pub fn checkpoint_epoch(&mut self, shard: u16) -> Result<u64, StoreError> {
        let found: Option<i64> = self
            .connection
            .query_row(
                "SELECT last_epoch FROM flush_checkpoints WHERE shard = ?1",
                [i64::from(shard)],
                |row| row.get(0),
            )
            .optional()?;
        Ok(found.unwrap_or(0) as u64)
    }

    pub fn checkpoints(&mut self) -> Result<Vec<(u16, u64)>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT shard, last_sequence FROM flush_checkpoints ORDER BY shard")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, i64>(0)? as u16, row.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `synchronous` for the next transaction: FULL for a durable commit, else NORMAL.
    fn set_synchronous(&mut self, commit: Commit) -> Result<(), StoreError> {
        if self.synchronous != commit {
            let level = match commit {
                Commit::Durable => "FULL",
                Commit::Deferred => "NORMAL",
            };
            self.connection.pragma_update(None, "synchronous", level)?;
            self.synchronous = commit;
        }
        Ok(())
    }

    pub fn make_durable(&mut self, shard: u16, expected: u64) -> Result<(), StoreError> {
        self.set_synchronous(Commit::Durable)?;
        let tx = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<i64> = tx
            .query_row(
                "SELECT last_sequence FROM flush_checkpoints WHERE shard = ?1",
                [i64::from(shard)],
                |row| row.get(0),
            )
            .optional()?;
        if found.unwrap_or(0) as u64 != expected {
            return Err(StoreError::CheckpointMoved {
                shard,
                expected,
                found: found.map(|f| f as u64),
            });
        }
        // A row written, so the commit syncs the WAL (and every earlier commit with it).
        tx.execute(
            "UPDATE flush_checkpoints SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
             WHERE shard = ?1",
            [i64::from(shard)],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn write_batch(
        &mut self,
        rows: &BatchRows,
        previous: u64,
        commit: Commit,
    ) -> Result<(), StoreError> {
        self.set_synchronous(commit)?;
        let tx = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let shard = i64::from(rows.shard);
        let found: Option<i64> = tx
            .query_row(
                "SELECT last_sequence FROM flush_checkpoints WHERE shard = ?1",
                [shard],
                |row| row.get(0),
            )
            .optional()?;
        if found.unwrap_or(0) as u64 != previous {
            return Err(StoreError::CheckpointMoved {
                shard: rows.shard,
                expected: previous,
                found: found.map(|f| f as u64),
            });
        }
        {
            let mut s = tx.prepare_cached(
                "INSERT INTO currencies (shard, code, scale) VALUES (?1, ?2, ?3)
                 ON CONFLICT (shard, code) DO NOTHING",
            )?;
            for c in &rows.currencies {
                s.execute(params![
                    i64::from(c.shard),
                    c.code.as_str(),
                    i64::from(c.scale)
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO wallets (id, shard, user_id, currency, kind, balance,
                    available_balance, frozen_balance, version, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET balance = excluded.balance,
                    available_balance = excluded.available_balance,
                    frozen_balance = excluded.frozen_balance, version = excluded.version,
                    status = excluded.status, updated_at = excluded.updated_at",
            )?;
            for w in &rows.wallets {
                s.execute(params![
                    w.id as i64,
                    i64::from(w.shard),
                    uuid_text(w.user),
                    w.currency.as_str(),
                    w.kind,
                    format_minor(w.balance(), w.scale),
                    format_minor(w.available, w.scale),
                    format_minor(w.frozen, w.scale),
                    w.version as i64,
                    w.status,
                    timestamp_text(w.created_at_ns),
                    timestamp_text(w.updated_at_ns),
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO transactions (id, shard, kind, from_wallet_id, to_wallet_id, amount,
                    currency, status, reason, idempotency_key, sequence, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for t in &rows.transactions {
                s.execute(params![
                    uuid_text(t.id),
                    i64::from(t.shard),
                    t.kind,
                    t.from as i64,
                    t.to as i64,
                    amount(t.amount, t.scale),
                    t.currency.as_str(),
                    t.status,
                    t.reason,
                    t.key,
                    t.sequence as i64,
                    timestamp_text(t.created_at_ns),
                ])?;
            }
            let mut s = tx.prepare_cached(
                "UPDATE transactions SET status = ?3, reason = ?4 WHERE id = ?1 AND shard = ?2",
            )?;
            for u in &rows.status_updates {
                s.execute(params![
                    uuid_text(u.id),
                    i64::from(u.shard),
                    u.status,
                    u.reason
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO ledger_entries (wallet_id, transaction_id, shard, sequence, delta,
                    currency) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in &rows.entries {
                s.execute(params![
                    e.wallet as i64,
                    uuid_text(e.transaction),
                    i64::from(e.shard),
                    e.sequence as i64,
                    format_minor(e.delta, e.scale),
                    e.currency.as_str(),
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO transaction_idempotency (shard, idempotency_key, transaction_id,
                    outcome, sequence, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (shard, idempotency_key) DO UPDATE SET
                    transaction_id = excluded.transaction_id, outcome = excluded.outcome,
                    sequence = excluded.sequence, created_at = excluded.created_at
                 WHERE transaction_idempotency.outcome IS NOT excluded.outcome
                    OR transaction_idempotency.transaction_id IS NOT excluded.transaction_id",
            )?;
            for i in &rows.idempotency {
                s.execute(params![
                    i64::from(i.shard),
                    i.key,
                    i.transaction.map(uuid_text),
                    i.outcome,
                    i.sequence as i64,
                    timestamp_text(i.created_at_ns),
                ])?;
            }
            let mut s = tx.prepare_cached(
                "INSERT INTO holds (id, shard, wallet_id, amount, currency, withdrawal, status,
                    captured_amount, expires_at, created_at, closed_at, sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for h in &rows.holds {
                s.execute(params![
                    h.id as i64,
                    i64::from(h.shard),
                    h.wallet as i64,
                    amount(h.amount, h.scale),
                    h.currency.as_str(),
                    h.withdrawal,
                    h.status,
                    h.captured.map(|c| amount(c, h.scale)),
                    h.expires_at_ns.map(timestamp_text),
                    timestamp_text(h.created_at_ns),
                    h.closed_at_ns.map(timestamp_text),
                    h.sequence as i64,
                ])?;
            }
            let mut s = tx.prepare_cached(
                "UPDATE holds SET status = ?2, captured_amount = ?3, closed_at = ?4, sequence = ?5
                 WHERE id = ?1",
            )?;
            for h in &rows.hold_closes {
                s.execute(params![
                    h.id as i64,
                    h.status,
                    h.captured.map(|c| amount(c, h.scale)),
                    timestamp_text(h.closed_at_ns),
                    h.sequence as i64,
                ])?;
            }
            tx.execute(
                "INSERT INTO flush_checkpoints (shard, last_sequence, last_epoch, last_timestamp_ns,
                    updated_at)
                 VALUES (?1, ?2, ?4, ?3, strftime('%Y-%m-%d %H:%M:%f', 'now'))
                 ON CONFLICT (shard) DO UPDATE SET last_sequence = excluded.last_sequence,
                    last_epoch = excluded.last_epoch,
                    last_timestamp_ns = excluded.last_timestamp_ns,
                    updated_at = excluded.updated_at",
                params![
                    shard,
                    rows.last_sequence as i64,
                    rows.last_timestamp_ns as i64,
                    rows.last_epoch as i64
                ],
            )?;
        }
        tx.commit()?;
        self.batches += 1;
        if self.batches.is_multiple_of(WAL_CHECKPOINT_EVERY_BATCHES) {
            // Best effort: a busy checkpoint is retried at the next turn.
            let checkpoint =
                self.connection
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                        row.get::<_, i64>(0)
                    });
            if let Err(error) = checkpoint {
                tracing::debug!(%error, "sqlite wal checkpoint skipped");
            }
        }
        Ok(())
    }

    pub fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.connection.execute_batch(sql)?;
        Ok(())
    }

    pub fn query_text(&mut self, sql: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .connection
            .query_row(sql, [], |row| row.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }

    pub fn begin_read(&mut self) -> Result<(), StoreError> {
        self.connection.execute_batch("BEGIN DEFERRED")?;
        Ok(())
    }

    pub fn end_read(&mut self) -> Result<(), StoreError> {
        self.connection.execute_batch("COMMIT")?;
        Ok(())
    }

    pub fn cursors(
        &mut self,
        queries: &[Query],
        shard: u16,
        f: &mut PullsFn<'_>,
    ) -> Result<(), StoreError> {
        let mut statements = Vec::with_capacity(queries.len());
        for query in queries {
            statements.push(self.connection.prepare(sql(*query))?);
        }
        let mut pulls: Vec<Box<dyn Pull + '_>> = Vec::with_capacity(queries.len());
        for statement in &mut statements {
            let columns = statement.column_count();
            let rows = statement.query([i64::from(shard)])?;
            pulls.push(Box::new(SqlitePull { rows, columns }));
        }
        f(&mut pulls)
    }
}

struct SqlitePull<'a> {
    rows: rusqlite::Rows<'a>,
    columns: usize,
}

impl Pull for SqlitePull<'_> {
    fn pull(&mut self) -> Result<Option<Vec<Option<String>>>, StoreError> {
        let Some(row) = self.rows.next()? else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(self.columns);
        for i in 0..self.columns {
            values.push(row.get::<_, Option<String>>(i)?);
        }
        Ok(Some(values))
    }
}

fn sql(query: Query) -> &'static str {
    match query {
        Query::Currencies => {
            "SELECT code, CAST(scale AS TEXT) FROM currencies WHERE shard = ?1 ORDER BY code"
        }
        Query::Wallets => {
            "SELECT CAST(id AS TEXT), currency, balance, available_balance, frozen_balance,
                CAST(version AS TEXT), status FROM wallets WHERE shard = ?1 ORDER BY id"
        }
        Query::EntriesByWallet => {
            "SELECT CAST(wallet_id AS TEXT), delta FROM ledger_entries WHERE shard = ?1
             ORDER BY wallet_id"
        }
        Query::Movements => "SELECT id, amount FROM transactions WHERE shard = ?1 ORDER BY id",
        Query::EntriesByMovement => {
            "SELECT transaction_id, delta,
                CASE WHEN delta LIKE '-%' THEN '0' ELSE delta END, '1'
             FROM ledger_entries WHERE shard = ?1 ORDER BY transaction_id"
        }
        Query::Idempotency => {
            "SELECT lower(hex(idempotency_key)), outcome, transaction_id
             FROM transaction_idempotency WHERE shard = ?1 ORDER BY idempotency_key"
        }
        Query::OpenHolds => {
            "SELECT CAST(id AS TEXT), CAST(wallet_id AS TEXT), amount FROM holds
             WHERE shard = ?1 AND status = 'open' ORDER BY id"
        }
    }
}
