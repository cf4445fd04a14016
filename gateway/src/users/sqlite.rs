//! The embedded default: one SQLite file (WAL mode), one connection behind a mutex, every
//! statement on the blocking thread pool so that no async worker waits on the disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::types::{Value, ValueRef};

use super::sql::{Backend, BoxFuture, Row, StoreError, Val};

#[derive(Debug, Clone)]
pub struct Sqlite {
    connection: Arc<Mutex<rusqlite::Connection>>,
}

fn error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Duplicate
        }
        _ => StoreError::Other(e.to_string()),
    }
}

fn value(val: Val) -> Value {
    match val {
        Val::Int(v) => Value::Integer(v),
        Val::Text(v) => Value::Text(v),
        Val::NullInt | Val::NullText => Value::Null,
    }
}

impl Sqlite {
    /// Opens (creating) the file; `":memory:"` for a private in-memory database.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Other(format!("{}: {e}", parent.display())))?;
        }
        let connection = rusqlite::Connection::open(path).map_err(error)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(error)?;
        Ok(Sqlite {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let guard = connection
                .lock()
                .map_err(|_| StoreError::Other("sqlite connection poisoned".into()))?;
            work(&guard)
        })
        .await
        .map_err(|e| StoreError::Other(e.to_string()))?
    }
}

impl Backend for Sqlite {
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let sql = sql.to_owned();
        Box::pin(self.blocking(move |c| {
            let mut statement = c.prepare_cached(&sql).map_err(error)?;
            let changed = statement
                .execute(rusqlite::params_from_iter(params.into_iter().map(value)))
                .map_err(error)?;
            Ok(changed as u64)
        }))
    }

    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        let sql = sql.to_owned();
        Box::pin(self.blocking(move |c| {
            let mut statement = c.prepare_cached(&sql).map_err(error)?;
            let columns = statement.column_count();
            let mut rows = statement
                .query(rusqlite::params_from_iter(params.into_iter().map(value)))
                .map_err(error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(error)? {
                let mut values = Vec::with_capacity(columns);
                for i in 0..columns {
                    values.push(match row.get_ref(i).map_err(error)? {
                        ValueRef::Integer(v) => Val::Int(v),
                        ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Null => Val::NullText,
                        ValueRef::Real(_) | ValueRef::Blob(_) => {
                            return Err(StoreError::Other("unexpected column type".into()));
                        }
                    });
                }
                out.push(values);
            }
            Ok(out)
        }))
    }

    fn batch<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let sql = sql.to_owned();
        Box::pin(self.blocking(move |c| c.execute_batch(&sql).map_err(error)))
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}
