//! PostgreSQL through `tokio-postgres`: a few pipelined connections used round-robin (one
//! connection would serialise every commit behind the previous one's fsync), each with its
//! prepared statements cached, optionally inside a schema of its own (tests use one each).

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
    connections: Arc<Vec<Connection>>,
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

async fn open(url: &str, schema: Option<&str>) -> Result<Connection, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
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
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            connections.push(open(url, schema).await?);
        }
        Ok(Postgres {
            connections: Arc::new(connections),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn connection(&self) -> &Connection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        &self.connections[i]
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
            let connection = self.connection();
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
            let connection = self.connection();
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
            self.connections[0]
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
