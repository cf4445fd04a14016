//! PostgreSQL through `tokio-postgres`: one pipelined connection (statements from many
//! requests share it), optionally inside its own schema (tests use one schema each).

use std::sync::Arc;

use tokio_postgres::types::{ToSql, Type};

use super::sql::{Backend, BoxFuture, Row, StoreError, Val, to_postgres};

#[derive(Debug, Clone)]
pub struct Postgres {
    client: Arc<tokio_postgres::Client>,
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

impl Postgres {
    /// Connects; with `schema`, creates it if needed and works inside it.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Postgres, StoreError> {
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
        Ok(Postgres {
            client: Arc::new(client),
        })
    }
}

impl Backend for Postgres {
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let sql = to_postgres(sql);
            let params = boxed(&params);
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            self.client.execute(&sql, &refs).await.map_err(error)
        })
    }

    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        Box::pin(async move {
            let sql = to_postgres(sql);
            let params = boxed(&params);
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = self.client.query(&sql, &refs).await.map_err(error)?;
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
        Box::pin(async move { self.client.batch_execute(sql).await.map_err(error) })
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
    let db = Postgres::connect(url, None).await?;
    db.batch(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
}
