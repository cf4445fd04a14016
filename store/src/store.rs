//! One store, two backends with the same semantics: PostgreSQL (tokio-postgres) or an embedded
//! SQLite file (rusqlite). The flusher and the reconciliation job see only [`Store`].

use std::path::PathBuf;

use crate::durability::Commit;
use crate::postgres::PgStore;
use crate::rows::BatchRows;
use crate::sqlite::SqliteStore;

/// Where the rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// An SQLite file (created if missing): the embedded default, `<data_dir>/store.sqlite`.
    Sqlite(PathBuf),
    /// A PostgreSQL database; every table lives in `schema` (created if missing).
    Postgres { url: String, schema: String },
}

impl StoreTarget {
    /// PostgreSQL when a URL is given, else SQLite in the data folder.
    pub fn from_options(
        postgres_url: Option<&str>,
        schema: &str,
        data_dir: &std::path::Path,
    ) -> StoreTarget {
        match postgres_url {
            Some(url) if !url.is_empty() => StoreTarget::Postgres {
                url: url.to_string(),
                schema: schema.to_string(),
            },
            _ => StoreTarget::Sqlite(data_dir.join("store.sqlite")),
        }
    }

    /// For logs: the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreTarget::Sqlite(path) => format!("sqlite {}", path.display()),
            StoreTarget::Postgres { url, schema } => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(start), Some(at)) if at > start => {
                        let credentials = &url[start + 3..at];
                        match credentials.split_once(':') {
                            Some((user, _)) => {
                                format!("{}{user}:***{}", &url[..start + 3], &url[at..])
                            }
                            None => url.clone(),
                        }
                    }
                    _ => url.clone(),
                };
                format!("postgresql {shown} schema {schema}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL refused or failed a statement, or the connection broke (retried).
    #[error("postgresql: {0}")]
    Postgres(String),
    /// SQLite failed a statement (retried; `database is locked` resolves itself).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The stored checkpoint is not where this flusher left it: another flusher writes this
    /// shard, or the store was restored from a backup. Not retried.
    #[error(
        "checkpoint of shard {shard} is {found:?} in the store, this flusher expected {expected}: \
         another flusher writes this shard, or the store was changed"
    )]
    CheckpointMoved {
        shard: u16,
        expected: u64,
        found: Option<u64>,
    },
    /// A stored value is not what this code writes (hand-edited, or another schema).
    #[error("{0}")]
    Invalid(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // The plain Display of tokio-postgres says only "db error": add the server's message.
        match error.as_db_error() {
            Some(db) => StoreError::Postgres(format!(
                "{} ({}){}",
                db.message(),
                db.code().code(),
                db.detail().map(|d| format!(": {d}")).unwrap_or_default()
            )),
            None => {
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(inner) = source {
                    text.push_str(": ");
                    text.push_str(&inner.to_string());
                    source = inner.source();
                }
                StoreError::Postgres(text)
            }
        }
    }
}

/// The logical queries of the reconciliation job, each of one shard and in a fixed order, with
/// every column as text. Rows with the same key in a row are folded by the caller (SQLite
/// returns raw postings where PostgreSQL sums them: same result, no float either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `code, scale`.
    Currencies,
    /// `id, currency, balance, available, frozen, version, status` by id.
    Wallets,
    /// `wallet_id, delta_sum` by wallet id.
    EntriesByWallet,
    /// `id, amount` by id.
    Movements,
    /// `transaction_id, net, positive, postings` by movement id.
    EntriesByMovement,
    /// `hex(key), outcome, transaction_id` by key bytes.
    Idempotency,
    /// `id, wallet_id, amount` of open holds, by id.
    OpenHolds,
}

/// A stream of rows, every column as text; `None` at the end.
pub trait Pull {
    fn pull(&mut self) -> Result<Option<Vec<Option<String>>>, StoreError>;
}

/// Open cursors, one per query.
pub type Pulls<'a> = [Box<dyn Pull + 'a>];
/// What [`Store::cursors`] calls with the open cursors.
pub type PullsFn<'f> = dyn for<'a> FnMut(&mut Pulls<'a>) -> Result<(), StoreError> + 'f;

/// Rows fetched per round trip when streaming (bounded memory).
pub const FETCH_ROWS_MAX: usize = 10_000;

#[derive(Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Connects (and creates the schema if missing).
    pub fn connect(target: &StoreTarget) -> Result<Store, StoreError> {
        let mut store = match target {
            StoreTarget::Sqlite(path) => Store::Sqlite(SqliteStore::open(path)?),
            StoreTarget::Postgres { url, schema } => {
                Store::Postgres(PgStore::connect(url, schema)?)
            }
        };
        store.migrate()?;
        Ok(store)
    }

    /// Connects without creating or changing anything; every statement is read-only.
    pub fn connect_read_only(target: &StoreTarget) -> Result<Store, StoreError> {
        Ok(match target {
            StoreTarget::Sqlite(path) => Store::Sqlite(SqliteStore::open_read_only(path)?),
            StoreTarget::Postgres { url, schema } => {
                Store::Postgres(PgStore::connect_read_only(url, schema)?)
            }
        })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate(),
            Store::Postgres(s) => s.migrate(),
        }
    }

    /// The last sequence of `shard` written to the store (0: nothing yet).
    pub fn checkpoint(&mut self, shard: u16) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint(shard),
            Store::Postgres(s) => s.checkpoint(shard),
        }
    }

    /// Epoch of the record at the shard's checkpoint (0: nothing yet).
    pub fn checkpoint_epoch(&mut self, shard: u16) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint_epoch(shard),
            Store::Postgres(s) => s.checkpoint_epoch(shard),
        }
    }

    /// Every shard's checkpoint.
    pub fn checkpoints(&mut self) -> Result<Vec<(u16, u64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoints(),
            Store::Postgres(s) => s.checkpoints(),
        }
    }

    /// Writes `rows` and moves the shard's checkpoint from `previous` to `rows.last_sequence`,
    /// in one SQL transaction: all of it or none. Refuses (`CheckpointMoved`) when the stored
    /// checkpoint is not `previous`. `commit` says whether the store must make it durable
    /// before answering ([`crate::durability`]).
    pub fn write_batch(
        &mut self,
        rows: &BatchRows,
        previous: u64,
        commit: Commit,
    ) -> Result<(), StoreError> {
        assert!(
            rows.last_sequence > previous,
            "a batch moves the checkpoint forward"
        );
        assert!(
            rows.first_sequence == previous + 1,
            "batches are contiguous"
        );
        match self {
            Store::Sqlite(s) => s.write_batch(rows, previous, commit),
            Store::Postgres(s) => s.write_batch(rows, previous, commit),
        }
    }

    /// Makes every commit so far durable, in a durable transaction that first checks the
    /// shard's stored checkpoint is `expected`: after a store crash that lost commits it
    /// refuses (`CheckpointMoved`) rather than vouch for them.
    pub fn make_durable(&mut self, shard: u16, expected: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.make_durable(shard, expected),
            Store::Postgres(s) => s.make_durable(shard, expected),
        }
    }

    /// Starts a consistent read-only view for the queries that follow (reconciliation).
    pub fn begin_read(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.begin_read(),
            Store::Postgres(s) => s.begin_read(),
        }
    }

    pub fn end_read(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.end_read(),
            Store::Postgres(s) => s.end_read(),
        }
    }

    /// Opens one cursor per query (of `shard`, every column as text) inside the current read
    /// transaction and hands them to `f`, which pulls rows from each as it needs (merging
    /// ordered streams in bounded memory).
    pub fn cursors(
        &mut self,
        queries: &[Query],
        shard: u16,
        f: &mut PullsFn<'_>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.cursors(queries, shard, f),
            Store::Postgres(s) => s.cursors(queries, shard, f),
        }
    }

    /// Runs SQL statements as they are (operators' tools and tests: the flusher never does).
    pub fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.execute_batch(sql),
            Store::Postgres(s) => s.execute_batch(sql),
        }
    }

    /// The first column of the first row of `sql`, as text (tests and tools).
    pub fn query_text(&mut self, sql: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.query_text(sql),
            Store::Postgres(s) => s.query_text(sql),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }
}
