//! The PostgreSQL backend (tokio-postgres on a private current-thread runtime: the flusher is a
//! plain thread). One SQL transaction per batch: each table gets one multi-row statement whose
//! columns are arrays (`INSERT ... SELECT FROM unnest($1, $2, ...)`), so a batch of 8 192
//! records is about ten round trips whatever its size. Movement partitions are created inside
//! the same transaction, under an advisory lock, before the first row of a month (and the month
//! after the batch's last timestamp, ahead of time).
//!
//! Why the writer's session settings (all measured, BENCHMARKS.md "Store"):
//! - `synchronous_commit = off`: a batch's commit does not wait for the WAL flush, except the
//!   durable ones ([`Commit::Durable`]: `SET LOCAL synchronous_commit = on`), which are the only
//!   ones journal retention trusts ([`crate::durability`]);
//! - `enable_hashjoin` / `enable_mergejoin` off: every join the writer makes is one batch's
//!   staged rows against a large table by its key, where an index nested loop is right, but a
//!   temporary table has no statistics and the planner picked a hash join that scans the whole
//!   `wallets` table for each batch;
//! - `jit` off: the writer's statements are short and the same every batch; compiling them
//!   cost CPU (LLVM showed in the flush's profile) and bought nothing;
//! - rows go in with binary COPY ([`crate::copy_binary`]): the server parses no text;
//! - wallets opened in the batch are appended with COPY; the others are `UPDATE`d from a
//!   staging table of the seven columns that change (an index probe and a new row version
//!   each). Should the store not match (a wallet missing, or already there), the batch is
//!   written again with update + `INSERT … ON CONFLICT DO NOTHING` for every wallet. An upsert of every wallet also locks each row
//!   first (one more WAL record per wallet) and was ~15% slower.

use std::collections::HashSet;

use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};

use crate::copy_binary::CopyBinary;
use crate::decimal::format_minor;
use crate::durability::Commit;
use crate::rows::{BatchRows, IdempotencyRow, WalletRow};
use crate::schema::{self, uuid_text};
use crate::store::{FETCH_ROWS_MAX, Pull, PullsFn, Query, StoreError};
use crate::time::{Month, timestamp_text};

/// Advisory lock key serialising partition creation between flushers.
const PARTITION_LOCK_KEY: i64 = 0x0070_6179_636f_7265; // "paycore"

/// Longest schema name (PostgreSQL's identifier limit).
const SCHEMA_BYTES_MAX: usize = 63;

pub struct PgStore {
    runtime: Runtime,
    client: Client,
    schema: String,
    /// Months whose partition is known to exist.
    months: HashSet<Month>,
    /// Where the batches written on this connection spent their time (logged when it closes).
    totals: Box<Phases>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish()
    }
}

fn amount(value: u128, scale: u8) -> String {
    format_minor(value as i128, scale)
}

/// A schema name is used in SQL text: lower-case letters, digits and `_` only.
pub fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= SCHEMA_BYTES_MAX
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema name {schema:?}: use 1 to {SCHEMA_BYTES_MAX} of a-z, 0-9, _ (not starting \
             with a digit)"
        )))
    }
}

impl PgStore {
    pub fn connect(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        Self::connect_with(url, schema, false)
    }

    /// Read-only (reconciliation): no schema is created, every transaction is read-only, and
    /// statements have no time limit (a full aggregate of a large store takes minutes).
    pub fn connect_read_only(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        Self::connect_with(url, schema, true)
    }

    fn connect_with(url: &str, schema: &str, read_only: bool) -> Result<PgStore, StoreError> {
        validate_schema(schema)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("runtime: {e}")))?;
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("postgres url: {e}")))?;
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let client = runtime.block_on(async {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "postgresql connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        })?;
        let mut store = PgStore {
            runtime,
            client,
            schema: schema.to_string(),
            months: HashSet::new(),
            totals: Box::new(Phases::start()),
        };
        let sql = if read_only {
            format!(
                "SET search_path TO {schema}; SET statement_timeout = 0; \
                 SET default_transaction_read_only = on;"
            )
        } else {
            format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}; \
                 SET statement_timeout = '120s'; SET synchronous_commit = off; \
                 SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off;"
            )
        };
        store.batch_execute(&sql)?;
        Ok(store)
    }

    pub fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.batch_execute(sql)
    }

    pub fn query_text(&mut self, sql: &str) -> Result<Option<String>, StoreError> {
        let client = &self.client;
        let row = self.runtime.block_on(client.query_opt(sql, &[]))?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    fn batch_execute(&mut self, sql: &str) -> Result<(), StoreError> {
        let client = &self.client;
        self.runtime.block_on(client.batch_execute(sql))?;
        Ok(())
    }

    pub fn migrate(&mut self) -> Result<(), StoreError> {
        // Two flushers may start together: one creates, the other waits on the lock.
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({PARTITION_LOCK_KEY}); {} COMMIT; {STAGING}",
            schema::POSTGRES
        );
        self.batch_execute(&sql)
    }

    pub fn checkpoint(&mut self, shard: u16) -> Result<u64, StoreError> {
        let client = &self.client;
        let row = self.runtime.block_on(client.query_opt(
            "SELECT last_sequence FROM flush_checkpoints WHERE shard = $1",
            &[&i32::from(shard)],
        ))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    pub fn checkpoint_epoch(&mut self, shard: u16) -> Result<u64, StoreError> {
        let client = &self.client;
        let row = self.runtime.block_on(client.query_opt(
            "SELECT last_epoch FROM flush_checkpoints WHERE shard = $1",
            &[&i32::from(shard)],
        ))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    pub fn checkpoints(&mut self) -> Result<Vec<(u16, u64)>, StoreError> {
        let client = &self.client;
        let rows = self.runtime.block_on(client.query(
            "SELECT shard, last_sequence FROM flush_checkpoints ORDER BY shard",
            &[],
        ))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u16, r.get::<_, i64>(1) as u64))
            .collect())
    }

    pub fn make_durable(&mut self, shard: u16, expected: u64) -> Result<(), StoreError> {
        let client = &mut self.client;
        self.runtime.block_on(async {
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await?;
            // A row written, so the commit has a WAL record to flush (and every earlier commit
            // before it).
            let found = tx
                .query_opt(
                    "UPDATE flush_checkpoints SET updated_at = now() AT TIME ZONE 'UTC'
                     WHERE shard = $1 RETURNING last_sequence",
                    &[&i32::from(shard)],
                )
                .await?
                .map(|r| r.get::<_, i64>(0) as u64);
            if found.unwrap_or(0) != expected {
                return Err(StoreError::CheckpointMoved {
                    shard,
                    expected,
                    found,
                });
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn write_batch(
        &mut self,
        rows: &BatchRows,
        previous: u64,
        commit: Commit,
    ) -> Result<(), StoreError> {
        let mut months: Vec<Month> = rows
            .transactions
            .iter()
            .map(|t| Month::of(t.created_at_ns))
            .chain(std::iter::once(Month::of(rows.last_timestamp_ns).next()))
            .filter(|m| !self.months.contains(m))
            .collect();
        months.sort_unstable();
        months.dedup();
        let schema = self.schema.clone();
        let client = &mut self.client;
        let phases = match self.runtime.block_on(write(
            client, &schema, rows, previous, commit, &months, false,
        ))? {
            Some(phases) => phases,
            None => {
                tracing::debug!(
                    shard = rows.shard,
                    "a re-made idempotency key, or wallets the store does not match: upserting all"
                );
                self.runtime
                    .block_on(write(
                        client, &schema, rows, previous, commit, &months, true,
                    ))?
                    .ok_or_else(|| StoreError::Invalid("upsert_all cannot conflict".into()))?
            }
        };
        self.totals.add(&phases, rows.last_sequence - previous);
        self.months.extend(months);
        Ok(())
    }

    pub fn begin_read(&mut self) -> Result<(), StoreError> {
        self.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    }

    pub fn end_read(&mut self) -> Result<(), StoreError> {
        self.batch_execute("COMMIT")
    }

    pub fn cursors(
        &mut self,
        queries: &[Query],
        shard: u16,
        f: &mut PullsFn<'_>,
    ) -> Result<(), StoreError> {
        let client = &self.client;
        let runtime = &self.runtime;
        let mut pulls: Vec<Box<dyn Pull + '_>> = Vec::with_capacity(queries.len());
        for (i, query) in queries.iter().enumerate() {
            let name = format!("paycore_cursor_{i}");
            let sql = sql(*query, shard);
            runtime.block_on(
                client.batch_execute(&format!("DECLARE {name} NO SCROLL CURSOR FOR {sql}")),
            )?;
            pulls.push(Box::new(PgPull {
                runtime,
                client,
                fetch: format!("FETCH {FETCH_ROWS_MAX} FROM {name}"),
                buffer: std::collections::VecDeque::new(),
                done: false,
            }));
        }
        let result = f(&mut pulls);
        drop(pulls);
        for i in 0..queries.len() {
            runtime.block_on(client.batch_execute(&format!("CLOSE paycore_cursor_{i}")))?;
        }
        result
    }
}

struct PgPull<'a> {
    runtime: &'a Runtime,
    client: &'a Client,
    fetch: String,
    buffer: std::collections::VecDeque<tokio_postgres::Row>,
    done: bool,
}

impl Pull for PgPull<'_> {
    fn pull(&mut self) -> Result<Option<Vec<Option<String>>>, StoreError> {
        if self.buffer.is_empty() && !self.done {
            let rows = self
                .runtime
                .block_on(self.client.query(self.fetch.as_str(), &[]))?;
            self.done = rows.len() < FETCH_ROWS_MAX;
            self.buffer.extend(rows);
        }
        let Some(row) = self.buffer.pop_front() else {
            return Ok(None);
        };
        Ok(Some(
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i))
                .collect(),
        ))
    }
}

fn sql(query: Query, shard: u16) -> String {
    match query {
        Query::Currencies => format!(
            "SELECT code::text, scale::text FROM currencies WHERE shard = {shard} ORDER BY code"
        ),
        Query::Wallets => format!(
            "SELECT id::text, currency::text, balance::text, available_balance::text,
                frozen_balance::text, version::text, status::text
             FROM wallets w WHERE shard = {shard} ORDER BY w.id"
        ),
        Query::EntriesByWallet => format!(
            "SELECT e.wallet_id::text, sum(e.delta)::text FROM ledger_entries e
             WHERE e.shard = {shard} GROUP BY e.wallet_id ORDER BY e.wallet_id"
        ),
        Query::Movements => format!(
            "SELECT t.id::text, t.amount::text FROM transactions t WHERE t.shard = {shard}
             ORDER BY t.id"
        ),
        Query::EntriesByMovement => format!(
            "SELECT transaction_id::text, sum(delta)::text, sum(greatest(delta, 0))::text,
                count(*)::text
             FROM ledger_entries e WHERE e.shard = {shard}
             GROUP BY e.transaction_id ORDER BY e.transaction_id"
        ),
        Query::Idempotency => format!(
            "SELECT encode(idempotency_key, 'hex'), outcome::text, transaction_id::text
             FROM transaction_idempotency i WHERE i.shard = {shard} ORDER BY i.idempotency_key"
        ),
        Query::OpenHolds => format!(
            "SELECT h.id::text, h.wallet_id::text, h.amount::text FROM holds h
             WHERE h.shard = {shard} AND h.status = 'open' ORDER BY h.id"
        ),
    }
}

/// `COPY {into} FROM STDIN (FORMAT binary)` of `rows`.
async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    into: &str,
    rows: CopyBinary,
) -> Result<(), StoreError> {
    use futures_util::SinkExt;
    let sql = format!("COPY {into} FROM STDIN (FORMAT binary)");
    let sink = tx
        .copy_in::<_, std::collections::VecDeque<u8>>(&sql)
        .await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(std::collections::VecDeque::from(rows.finish()))
        .await?;
    sink.as_mut().finish().await?;
    Ok(())
}

/// Sets the columns of `wallets` that change from the staging table `stage`, joined by id.
fn wallets_update_sql(stage: &str) -> String {
    format!(
        "UPDATE wallets w SET balance = s.balance,
            available_balance = s.available_balance, frozen_balance = s.frozen_balance,
            version = s.version, status = s.status, updated_at = s.updated_at
         FROM {stage} s WHERE w.id = s.id"
    )
}

/// Every column of a `wallets` row, in table order.
fn wallet_row_copy(c: &mut CopyBinary, w: &WalletRow) {
    c.row(12)
        .int8(w.id as i64)
        .int4(i32::from(w.shard))
        .uuid(w.user)
        .text(w.currency.as_str())
        .text(w.kind)
        .numeric(w.balance(), w.scale)
        .numeric(w.available, w.scale)
        .numeric(w.frozen, w.scale)
        .int8(w.version as i64)
        .text(w.status)
        .timestamp(w.created_at_ns)
        .timestamp(w.updated_at_ns);
}

/// Per-connection staging tables for the updates and upserts (COPY cannot upsert).
const STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS wallet_changes_stage (
    id BIGINT NOT NULL,
    balance NUMERIC(56, 18) NOT NULL,
    available_balance NUMERIC(56, 18) NOT NULL,
    frozen_balance NUMERIC(56, 18) NOT NULL,
    version BIGINT NOT NULL,
    status VARCHAR(10) NOT NULL,
    updated_at TIMESTAMP NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS wallets_stage (LIKE wallets) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS idempotency_stage (LIKE transaction_idempotency)
    ON COMMIT DELETE ROWS;
";

/// SQLSTATE of a unique violation, as [`StoreError`]'s text carries it.
const UNIQUE_VIOLATION: &str = "(23505)";

fn idempotency_copy<'a>(records: impl Iterator<Item = &'a IdempotencyRow>) -> CopyBinary {
    let mut c = CopyBinary::with_capacity(1024, 128);
    for i in records {
        c.row(6)
            .int4(i32::from(i.shard))
            .bytea(&i.key)
            .opt_uuid(i.transaction)
            .text(&i.outcome)
            .int8(i.sequence as i64)
            .timestamp(i.created_at_ns);
    }
    c
}

/// Writes one batch in one transaction; `Ok(None)`: a fresh idempotency key was already stored
/// (nothing written; write again with `upsert_all`).
async fn write(
    client: &mut Client,
    schema: &str,
    rows: &BatchRows,
    previous: u64,
    commit: Commit,
    months: &[Month],
    upsert_all: bool,
) -> Result<Option<Phases>, StoreError> {
    let mut phases = Phases::start();
    let tx = client.transaction().await?;
    let shard = i32::from(rows.shard);
    let found = tx
        .query_opt(
            "SELECT last_sequence FROM flush_checkpoints WHERE shard = $1 FOR UPDATE",
            &[&shard],
        )
        .await?
        .map(|r| r.get::<_, i64>(0) as u64);
    if found.unwrap_or(0) != previous {
        return Err(StoreError::CheckpointMoved {
            shard: rows.shard,
            expected: previous,
            found,
        });
    }
    if !months.is_empty() {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK_KEY])
            .await?;
        for month in months {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {schema}.{} PARTITION OF {schema}.transactions \
                 FOR VALUES FROM ('{}') TO ('{}')",
                month.partition_name(),
                month.first_day(),
                month.next().first_day()
            );
            tx.batch_execute(&sql).await?;
        }
    }
    if !rows.currencies.is_empty() {
        let shards: Vec<i32> = rows.currencies.iter().map(|c| i32::from(c.shard)).collect();
        let codes: Vec<&str> = rows.currencies.iter().map(|c| c.code.as_str()).collect();
        let scales: Vec<i16> = rows.currencies.iter().map(|c| i16::from(c.scale)).collect();
        tx.execute(
            "INSERT INTO currencies (shard, code, scale) SELECT * FROM unnest($1::int4[],
                $2::text[], $3::int2[]) ON CONFLICT (shard, code) DO NOTHING",
            &[&shards, &codes, &scales],
        )
        .await?;
    }
    phases.lap("checkpoint_partitions_currencies");
    // Wallets opened in the batch are appended; the others are updated from a staging table of
    // the columns that change. A wallet the store has not got (or has already got) fails its
    // statement: the caller writes the batch again with `upsert_all` (update, then insert).
    let opened = |w: &&WalletRow| w.opened && !upsert_all;
    if rows.wallets.iter().any(|w| opened(&w)) {
        let mut c = CopyBinary::with_capacity(rows.wallets.len(), 160);
        for w in rows.wallets.iter().filter(opened) {
            wallet_row_copy(&mut c, w);
        }
        match copy_in(&tx, "wallets", c).await {
            Err(StoreError::Postgres(text)) if text.contains(UNIQUE_VIOLATION) => {
                return Ok(None);
            }
            other => other?,
        }
        phases.lap("wallets_append");
    }
    let changed = rows.wallets.iter().filter(|w| !opened(w)).count();
    if changed > 0 && !upsert_all {
        let mut c = CopyBinary::with_capacity(changed, 96);
        for w in rows.wallets.iter().filter(|w| !opened(w)) {
            c.row(7)
                .int8(w.id as i64)
                .numeric(w.balance(), w.scale)
                .numeric(w.available, w.scale)
                .numeric(w.frozen, w.scale)
                .int8(w.version as i64)
                .text(w.status)
                .timestamp(w.updated_at_ns);
        }
        copy_in(&tx, "wallet_changes_stage", c).await?;
        phases.lap("wallets_copy");
        let updated = tx
            .execute(&wallets_update_sql("wallet_changes_stage"), &[])
            .await?;
        phases.lap("wallets_update");
        if updated != changed as u64 {
            tracing::warn!(
                shard = rows.shard,
                updated,
                changed,
                "wallets missing from the store: writing the batch again with upserts"
            );
            return Ok(None);
        }
    }
    if changed > 0 && upsert_all {
        let mut c = CopyBinary::with_capacity(changed, 160);
        for w in &rows.wallets {
            wallet_row_copy(&mut c, w);
        }
        copy_in(&tx, "wallets_stage", c).await?;
        tx.execute(&wallets_update_sql("wallets_stage"), &[])
            .await?;
        tx.execute(
            "INSERT INTO wallets SELECT * FROM wallets_stage ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await?;
        phases.lap("wallets_upsert");
    }
    if !rows.transactions.is_empty() {
        let mut c = CopyBinary::with_capacity(rows.transactions.len(), 160);
        for t in &rows.transactions {
            c.row(12)
                .uuid(t.id)
                .int4(i32::from(t.shard))
                .text(t.kind)
                .int8(t.from as i64)
                .int8(t.to as i64)
                .numeric(t.amount as i128, t.scale)
                .text(t.currency.as_str())
                .text(t.status)
                .opt_text(t.reason)
                .opt_bytea(t.key.as_deref())
                .int8(t.sequence as i64)
                .timestamp(t.created_at_ns);
        }
        copy_in(
            &tx,
            "transactions (id, shard, kind, from_wallet_id, to_wallet_id, amount, currency,
                status, reason, idempotency_key, sequence, created_at)",
            c,
        )
        .await?;
        phases.lap("transactions");
    }
    if !rows.status_updates.is_empty() {
        let u = &rows.status_updates;
        let ids: Vec<String> = u.iter().map(|u| uuid_text(u.id)).collect();
        let shards: Vec<i32> = u.iter().map(|u| i32::from(u.shard)).collect();
        let statuses: Vec<&str> = u.iter().map(|u| u.status).collect();
        let reasons: Vec<Option<&str>> = u.iter().map(|u| u.reason).collect();
        tx.execute(
            "UPDATE transactions t SET status = u.status, reason = u.reason
             FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[])
                AS u(id, shard, status, reason)
             WHERE t.id = u.id::uuid AND t.shard = u.shard",
            &[&ids, &shards, &statuses, &reasons],
        )
        .await?;
        phases.lap("status_updates");
    }
    if !rows.entries.is_empty() {
        let mut c = CopyBinary::with_capacity(rows.entries.len(), 96);
        for e in &rows.entries {
            c.row(6)
                .int8(e.wallet as i64)
                .uuid(e.transaction)
                .int4(i32::from(e.shard))
                .int8(e.sequence as i64)
                .numeric(e.delta, e.scale)
                .text(e.currency.as_str());
        }
        copy_in(
            &tx,
            "ledger_entries (wallet_id, transaction_id, shard, sequence, delta, currency)",
            c,
        )
        .await?;
        phases.lap("entries");
    }
    // Fresh keys are appended with COPY; the others (retries, re-made keys) are upserted from
    // the staging table. A fresh key the store does have (the engine forgot it earlier and it
    // was re-made) fails the COPY: the caller writes the batch again with `upsert_all`.
    let fresh = |i: &&IdempotencyRow| i.fresh && !upsert_all;
    if rows.idempotency.iter().any(|i| fresh(&i)) {
        let c = idempotency_copy(rows.idempotency.iter().filter(fresh));
        match copy_in(&tx, "transaction_idempotency", c).await {
            Err(StoreError::Postgres(text)) if text.contains(UNIQUE_VIOLATION) => {
                return Ok(None); // `tx` rolls back as it drops
            }
            other => other?,
        }
        phases.lap("idempotency_copy");
    }
    if rows.idempotency.iter().any(|i| !fresh(&i)) {
        let c = idempotency_copy(rows.idempotency.iter().filter(|i| !fresh(i)));
        copy_in(&tx, "idempotency_stage", c).await?;
        tx.execute(
            "INSERT INTO transaction_idempotency SELECT * FROM idempotency_stage
             ON CONFLICT (shard, idempotency_key) DO UPDATE SET
                transaction_id = excluded.transaction_id, outcome = excluded.outcome,
                sequence = excluded.sequence, created_at = excluded.created_at
             WHERE transaction_idempotency.outcome IS DISTINCT FROM excluded.outcome
                OR transaction_idempotency.transaction_id IS DISTINCT FROM excluded.transaction_id",
            &[],
        )
        .await?;
        phases.lap("idempotency_upsert");
    }
    if !rows.holds.is_empty() {
        let h = &rows.holds;
        let ids: Vec<i64> = h.iter().map(|h| h.id as i64).collect();
        let shards: Vec<i32> = h.iter().map(|h| i32::from(h.shard)).collect();
        let wallets: Vec<i64> = h.iter().map(|h| h.wallet as i64).collect();
        let amounts: Vec<String> = h.iter().map(|h| amount(h.amount, h.scale)).collect();
        let currencies: Vec<&str> = h.iter().map(|h| h.currency.as_str()).collect();
        let withdrawals: Vec<bool> = h.iter().map(|h| h.withdrawal).collect();
        let statuses: Vec<&str> = h.iter().map(|h| h.status).collect();
        let captured: Vec<Option<String>> = h
            .iter()
            .map(|h| h.captured.map(|c| amount(c, h.scale)))
            .collect();
        let expires: Vec<Option<String>> = h
            .iter()
            .map(|h| h.expires_at_ns.map(timestamp_text))
            .collect();
        let created: Vec<String> = h.iter().map(|h| timestamp_text(h.created_at_ns)).collect();
        let closed: Vec<Option<String>> = h
            .iter()
            .map(|h| h.closed_at_ns.map(timestamp_text))
            .collect();
        let sequences: Vec<i64> = h.iter().map(|h| h.sequence as i64).collect();
        tx.execute(
            "INSERT INTO holds (id, shard, wallet_id, amount, currency, withdrawal, status,
                captured_amount, expires_at, created_at, closed_at, sequence)
             SELECT id, s, w, a::numeric, c, wd, st, cap::numeric, ex::timestamp, cr::timestamp,
                cl::timestamp, q
             FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::text[], $5::text[], $6::bool[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[])
                AS u(id, s, w, a, c, wd, st, cap, ex, cr, cl, q)",
            &[
                &ids,
                &shards,
                &wallets,
                &amounts,
                &currencies,
                &withdrawals,
                &statuses,
                &captured,
                &expires,
                &created,
                &closed,
                &sequences,
            ],
        )
        .await?;
    }
    if !rows.hold_closes.is_empty() {
        let h = &rows.hold_closes;
        let ids: Vec<i64> = h.iter().map(|h| h.id as i64).collect();
        let statuses: Vec<&str> = h.iter().map(|h| h.status).collect();
        let captured: Vec<Option<String>> = h
            .iter()
            .map(|h| h.captured.map(|c| amount(c, h.scale)))
            .collect();
        let closed: Vec<String> = h.iter().map(|h| timestamp_text(h.closed_at_ns)).collect();
        let sequences: Vec<i64> = h.iter().map(|h| h.sequence as i64).collect();
        tx.execute(
            "UPDATE holds h SET status = u.st, captured_amount = u.cap::numeric,
                closed_at = u.cl::timestamp, sequence = u.q
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])
                AS u(id, st, cap, cl, q)
             WHERE h.id = u.id",
            &[&ids, &statuses, &captured, &closed, &sequences],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO flush_checkpoints (shard, last_sequence, last_epoch, last_timestamp_ns,
            updated_at)
         VALUES ($1, $2, $4, $3, now() AT TIME ZONE 'UTC')
         ON CONFLICT (shard) DO UPDATE SET last_sequence = excluded.last_sequence,
            last_epoch = excluded.last_epoch,
            last_timestamp_ns = excluded.last_timestamp_ns, updated_at = excluded.updated_at",
        &[
            &shard,
            &(rows.last_sequence as i64),
            &(rows.last_timestamp_ns as i64),
            &(rows.last_epoch as i64),
        ],
    )
    .await?;
    if commit == Commit::Durable {
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await?;
    }
    phases.lap("holds_checkpoint");
    tx.commit().await?;
    phases.lap("commit");
    tracing::debug!(
        shard,
        records = rows.last_sequence - previous,
        wallets = rows.wallets.len(),
        durable = commit == Commit::Durable,
        phases = %phases,
        "batch written"
    );
    Ok(Some(phases))
}

/// Where batches' time went, in microseconds per phase: one batch's at debug level, and the
/// connection's totals at info level when it closes (the figures in BENCHMARKS.md "Store").
struct Phases {
    at: std::time::Instant,
    laps: Vec<(&'static str, u128)>,
    batches: u64,
    records: u64,
}

impl Phases {
    fn start() -> Self {
        Phases {
            at: std::time::Instant::now(),
            laps: Vec::with_capacity(12),
            batches: 0,
            records: 0,
        }
    }

    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, (now - self.at).as_micros()));
        self.at = now;
    }

    /// Adds one batch's laps to these totals.
    fn add(&mut self, batch: &Phases, records: u64) {
        self.batches += 1;
        self.records += records;
        for &(name, us) in &batch.laps {
            match self.laps.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += us,
                None => self.laps.push((name, us)),
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if self.totals.batches > 0 {
            tracing::info!(
                schema = %self.schema,
                batches = self.totals.batches,
                records = self.totals.records,
                phases_us = %self.totals,
                "postgresql writer closed"
            );
        }
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, us)) in self.laps.iter().enumerate() {
            write!(f, "{}{name}={us}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PgSchema;

    /// `rows` COPYed into `table` in a transaction of their own, committed.
    fn copy_committed(
        store: &mut PgStore,
        table: &str,
        rows: CopyBinary,
    ) -> Result<(), StoreError> {
        let client = &mut store.client;
        store.runtime.block_on(async {
            let tx = client.transaction().await?;
            copy_in(&tx, table, rows).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every kind of value the flusher COPYs in binary, read back as PostgreSQL's text, equals
    /// what the text path writes (amounts at the column's 18 decimals).
    #[test]
    fn binary_copy_values_read_back_as_their_text() {
        let Some(pg) = PgSchema::create("binary_copy") else {
            return;
        };
        let mut store = PgStore::connect(&pg.url, &pg.schema).expect("connect");
        store
            .execute_batch(
                "CREATE TABLE copy_types (k SMALLINT, n NUMERIC(56, 18), i INTEGER, l BIGINT,
                    t VARCHAR(10), b BYTEA, u UUID, ts TIMESTAMP, f BOOLEAN)",
            )
            .expect("table");
        let amounts: Vec<(i128, u8)> = vec![
            (0, 2),
            (1, 0),
            (-1, 18),
            (1_250, 2),
            (-10_000, 4),
            (123_456_789_012_345_678, 18),
            (10i128.pow(36), 18),
            (-(10i128.pow(36) - 1), 18),
            (10i128.pow(27) + 1, 16),
            (99_999_999, 0),
            (100_000_001, 8),
            (5, 17),
        ];
        let nanos = [0u64, 946_684_800_000_000_000, 1_767_225_600_123_456_789];
        let mut c = CopyBinary::with_capacity(amounts.len() + 1, 128);
        let mut want = Vec::new();
        for (k, &(value, scale)) in amounts.iter().enumerate() {
            let id = (u128::from(k as u64) << 80) | 0xABCD_EF01;
            let ns = nanos[k % nanos.len()];
            c.row(9)
                .int2(k as i16)
                .numeric(value, scale)
                .int4(-(k as i32))
                .int8(i64::MIN + k as i64)
                .text("USD")
                .bytea(&[0, k as u8, 255])
                .uuid(id)
                .timestamp(ns)
                .bool(k % 2 == 0);
            want.push(format!(
                "{k}|{}|{}|{}|USD|\\x00{:02x}ff|{}|{}|{}",
                format_minor(value * 10i128.pow(u32::from(18 - scale)), 18),
                -(k as i32),
                i64::MIN + k as i64,
                k,
                uuid_text(id),
                timestamp_text(ns)
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
                if k % 2 == 0 { "true" } else { "false" },
            ));
        }
        c.row(9)
            .int2(99)
            .null()
            .null()
            .null()
            .opt_text(None)
            .opt_bytea(None)
            .opt_uuid(None)
            .null()
            .null();
        want.push("99|~|~|~|~|~|~|~|~".into());
        copy_committed(&mut store, "copy_types", c).expect("copy");
        let got = store
            .query_text(
                "SELECT string_agg(concat_ws('|', k, coalesce(n::text, '~'), coalesce(i::text, '~'),
                    coalesce(l::text, '~'), coalesce(t, '~'), coalesce(b::text, '~'),
                    coalesce(u::text, '~'), coalesce(ts::text, '~'), coalesce(f::text, '~')),
                    E'\\n' ORDER BY k) FROM copy_types",
            )
            .expect("query")
            .unwrap_or_default();
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got, want);
    }

    /// A value of the wrong width is refused by PostgreSQL, not reinterpreted: the writer's
    /// typed methods are what keeps the columns right.
    #[test]
    fn binary_copy_of_a_mistyped_value_is_an_error() {
        let Some(pg) = PgSchema::create("binary_copy_type") else {
            return;
        };
        let mut store = PgStore::connect(&pg.url, &pg.schema).expect("connect");
        store
            .execute_batch("CREATE TABLE copy_int (i INTEGER)")
            .expect("table");
        let mut c = CopyBinary::with_capacity(1, 16);
        c.row(1).int8(7);
        let result = copy_committed(&mut store, "copy_int", c);
        assert!(result.is_err(), "{result:?}");
    }
}
