//! PostgreSQL through `tokio-postgres`: a few pipelined connections used round-robin (one
//! connection would serialise every commit behind the previous one's fsync), each with its
//! prepared statements cached, optionally inside a schema of its own (tests use one each). A
//! connection found closed (the server restarted, an admin ended it) is opened again on its
//! next use; the request that met the closed one answers 503 and may be retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_postgres::types::{ToSql, Type};

use super::sql::{Backend, BoxFuture, Row, StoreError, Val, to_postgres};

/// Connections opened per store.
pub const CONNECTIONS: usize = 8;

#[derive(Debug)]
struct Connection {
    client: tokio_postgres::Client,
    statements: Mutex<HashMap<String, tokio_postgres::Statement>>,
}

#[derive(Debug, Clone)]
pub struct Postgres {
    url: String,
    schema: Option<String>,
    slots: Arc<Vec<Mutex<Arc<Connection>>>>,
    next: Arc<AtomicUsize>,
}

fn error(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        return StoreError::Duplicate;
    }
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    match e.as_db_error() {
        // Connection exceptions (08) and operator intervention (57P: shutdown, terminated).
        Some(db) if db.code().code().starts_with("08") || db.code().code().starts_with("57P") => {
            StoreError::Unavailable(format!("{}: {}", db.code().code(), db.message()))
        }
        Some(db) => StoreError::Other(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn boxed(params: &[Val]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                Val::Int(v) => Box::new(*v),
                Val::Text(v) => Box::new(v.clone()),
                Val::NullInt => Box::new(None::<i64>),
                Val::NullText => Box::new(None::<String>),
            }
        })
        .collect()
}

/// `application_name` of the store's connections (with the schema, when there is one).
pub fn application_name(schema: Option<&str>) -> String {
    match schema {
        Some(schema) => format!("paycore-gateway:{schema}"),
        None => "paycore-gateway".into(),
    }
}

async fn open(url: &str, schema: Option<&str>) -> Result<Connection, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Other(format!("--postgres-url: {e}")))?;
    config.application_name(application_name(schema));
    config.connect_timeout(std::time::Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgres connection ended");
        }
    });
    if let Some(schema) = schema {
        if !schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Other(format!(
                "schema name {schema:?} is not plain"
            )));
        }
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
            ))
            .await
            .map_err(error)?;
    }
    Ok(Connection {
        client,
        statements: Mutex::new(HashMap::new()),
    })
}

impl Postgres {
    /// Connects; with `schema`, creates it if needed and works inside it.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Postgres, StoreError> {
        Postgres::connect_n(url, schema, CONNECTIONS).await
    }

    pub async fn connect_n(
        url: &str,
        schema: Option<&str>,
        count: usize,
    ) -> Result<Postgres, StoreError> {
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            slots.push(Mutex::new(Arc::new(open(url, schema).await?)));
        }
        Ok(Postgres {
            url: url.to_owned(),
            schema: schema.map(str::to_owned),
            slots: Arc::new(slots),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next connection, reopened first if it was closed.
    async fn connection(&self) -> Result<Arc<Connection>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slot(i).await
    }

    async fn slot(&self, i: usize) -> Result<Arc<Connection>, StoreError> {
        let current = self.slots[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !current.client.is_closed() {
            return Ok(current);
        }
        tracing::info!(slot = i, "postgres connection closed; reconnecting");
        let fresh = Arc::new(open(&self.url, self.schema.as_deref()).await?);
        *self.slots[i].lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

impl Connection {
    /// The prepared statement of `sql` (`?N` placeholders), prepared once per connection.
    async fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(statement) = self
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
        {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(&to_postgres(sql))
            .await
            .map_err(error)?;
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Backend for Postgres {
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let connection = self.connection().await?;
            let statement = connection.statement(sql).await?;
            let params = boxed(&params);
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            connection
                .client
                .execute(&statement, &refs)
                .await
                .map_err(error)
        })
    }

    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        Box::pin(async move {
            let connection = self.connection().await?;
            let statement = connection.statement(sql).await?;
            let params = boxed(&params);
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = connection
                .client
                .query(&statement, &refs)
                .await
                .map_err(error)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut values = Vec::with_capacity(row.len());
                for (i, column) in row.columns().iter().enumerate() {
                    let value = if *column.type_() == Type::INT8 {
                        row.try_get::<_, Option<i64>>(i)
                            .map_err(error)?
                            .map_or(Val::NullInt, Val::Int)
                    } else if *column.type_() == Type::INT4 {
                        row.try_get::<_, Option<i32>>(i)
                            .map_err(error)?
                            .map_or(Val::NullInt, |v| Val::Int(i64::from(v)))
                    } else {
                        row.try_get::<_, Option<String>>(i)
                            .map_err(error)?
                            .map_or(Val::NullText, Val::Text)
                    };
                    values.push(value);
                }
                out.push(values);
            }
            Ok(out)
        })
    }

    fn batch<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        // Schema statements run on the first connection (the others see the result).
        Box::pin(async move {
            self.slot(0)
                .await?
                .client
                .batch_execute(sql)
                .await
                .map_err(error)
        })
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// Drops `schema` and everything in it (tests give each run its own schema).
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
    if !schema
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::Other(format!(
            "schema name {schema:?} is not plain"
        )));
    }
    let db = Postgres::connect_n(url, None, 1).await?;
    db.batch(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
}
