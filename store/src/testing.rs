//! Helpers for tests that run against a real PostgreSQL (never a mock): the server named by
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), one fresh schema per
//! test, dropped at the end. Unreachable: the test is skipped with a message, except when `CI`
//! is set, where it fails.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Store, StoreTarget};

pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.to_string())
}

/// A schema of its own for one test; dropped when this is dropped.
#[derive(Debug)]
pub struct PgSchema {
    pub target: StoreTarget,
    pub url: String,
    pub schema: String,
}

impl PgSchema {
    /// `None` (skip) when PostgreSQL is unreachable and `CI` is not set; panics under `CI`.
    pub fn create(test: &str) -> Option<PgSchema> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let url = database_url();
        let unique = format!(
            "t_{}_{}_{}_{}",
            test.to_ascii_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(24)
                .collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let target = StoreTarget::Postgres {
            url: url.clone(),
            schema: unique.clone(),
        };
        match Store::connect(&target) {
            Ok(_) => Some(PgSchema {
                target,
                url,
                schema: unique,
            }),
            Err(error) => {
                if std::env::var_os("CI").is_some() {
                    panic!("PostgreSQL at {url} is unreachable and CI is set: {error}");
                }
                eprintln!("SKIPPED: PostgreSQL at {url} is unreachable ({error}); set CI to fail");
                None
            }
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut store) = Store::connect(&StoreTarget::Postgres {
            url: self.url.clone(),
            schema: "public".into(),
        }) {
            let _ = store.execute_batch(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// A fresh folder under the system temp dir, unique per process and call
/// (`<prefix>-<pid>-<nanos>`); the test removes it at the end.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
