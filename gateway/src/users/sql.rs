//! The seam between the store's logic and its two SQL engines: statements with numbered
//! parameters (`?1`, `?2`, … — SQLite's syntax; PostgreSQL gets `$1`, `$2`, …), values that are
//! only 64-bit integers, text or NULL, and rows of such values.

use std::future::Future;
use std::pin::Pin;

/// A parameter or a column value. The schema uses only BIGINT and TEXT columns, so both
/// engines map every value the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Int(i64),
    Text(String),
    /// NULL in a BIGINT column.
    NullInt,
    /// NULL in a TEXT column.
    NullText,
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Val::Text(v) => Some(v),
            _ => None,
        }
    }

    pub fn opt_text(value: Option<&str>) -> Val {
        value.map_or(Val::NullText, |v| Val::Text(v.to_owned()))
    }
}

impl From<i64> for Val {
    fn from(value: i64) -> Val {
        Val::Int(value)
    }
}

impl From<&str> for Val {
    fn from(value: &str) -> Val {
        Val::Text(value.to_owned())
    }
}

impl From<String> for Val {
    fn from(value: String) -> Val {
        Val::Text(value)
    }
}

pub type Row = Vec<Val>;

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A UNIQUE or PRIMARY KEY constraint refused the row.
    #[error("duplicate key")]
    Duplicate,
    /// The database cannot be reached (connection lost, refused…): retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Other(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One SQL engine. Statements are written once, in the common subset of SQLite and
/// PostgreSQL; only the schema (`schema()`) differs.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Runs a statement; the number of rows it changed.
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Runs a query; its rows, each with one value per selected column.
    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>>;
    /// Runs several `;`-separated statements without parameters (schema creation).
    fn batch<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The engine's name, for logs.
    fn name(&self) -> &'static str;
}

/// `?N` placeholders as PostgreSQL's `$N`.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let bytes = sql.as_bytes();
    for (i, c) in sql.char_indices() {
        if c == '?' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(to_postgres("SELECT '?'"), "SELECT '?'");
    }
}
