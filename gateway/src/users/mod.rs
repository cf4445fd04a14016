//! The gateway's own SQL store: users (argon2id hashes, role, tier, encrypted TOTP secret),
//! refresh tokens (hashed, rotating, in families), revoked access tokens, KYC, the
//! transactions the gateway submitted (for history and lookups by id) and HTTP idempotency
//! records.
//!
//! One logic, two engines behind the [`Backend`] trait: an SQLite file (the embedded default)
//! or PostgreSQL. Statements are written once in the subset both speak; only the schema differs
//! (`AUTOINCREMENT` against `BIGSERIAL`).

pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::sync::Arc;

pub use sql::{Backend, Row, StoreError, Val};

/// Tables of the SQLite engine.
const SCHEMA_SQLITE: &str = "
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
    full_name TEXT NOT NULL, role TEXT NOT NULL, tier TEXT NOT NULL,
    totp_secret TEXT, totp_enabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    token_generation BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, family TEXT NOT NULL,
    expires_at BIGINT NOT NULL, used BIGINT NOT NULL DEFAULT 0,
    revoked BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens(user_id);
CREATE TABLE IF NOT EXISTS revoked_tokens (jti TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS kyc (
    user_id TEXT PRIMARY KEY, status TEXT NOT NULL, document_type TEXT NOT NULL,
    document_last4 TEXT NOT NULL, submitted_at BIGINT NOT NULL, reviewed_at BIGINT,
    reviewer TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS transactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    from_wallet TEXT, to_wallet TEXT, from_user TEXT, to_user TEXT, amount TEXT NOT NULL,
    currency TEXT NOT NULL, status TEXT NOT NULL, reference TEXT, created_at BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS transactions_from ON transactions(from_user, seq);
CREATE INDEX IF NOT EXISTS transactions_to ON transactions(to_user, seq);
CREATE TABLE IF NOT EXISTS totp_used (
    user_id TEXT NOT NULL, step BIGINT NOT NULL, PRIMARY KEY (user_id, step));
CREATE TABLE IF NOT EXISTS http_idempotency (
    user_id TEXT NOT NULL, idem_key TEXT NOT NULL, request_hash TEXT NOT NULL,
    state TEXT NOT NULL, status BIGINT, body TEXT, created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key));
CREATE TABLE IF NOT EXISTS provider_events (
    event_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, status BIGINT, body TEXT, received_at BIGINT NOT NULL);
";

/// Tables of the PostgreSQL engine: the same, with an identity column for `seq`, and the
/// columns added since the first schema for stores created before them.
fn schema_postgres() -> String {
    SCHEMA_SQLITE.replace(
        "seq INTEGER PRIMARY KEY AUTOINCREMENT",
        "seq BIGSERIAL PRIMARY KEY",
    ) + "ALTER TABLE users ADD COLUMN IF NOT EXISTS token_generation BIGINT NOT NULL DEFAULT 0;"
}

/// The SQLite engine's columns added since the first schema (SQLite has no `ADD COLUMN IF
/// NOT EXISTS`): (table, column, definition).
const ADDED_COLUMNS_SQLITE: [(&str, &str, &str); 1] =
    [("users", "token_generation", "BIGINT NOT NULL DEFAULT 0")];

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The seed's tiers, as words (the engine's `Tier` as numbers).
pub fn tier_name(tier: paycore_engine::Tier) -> &'static str {
    match tier {
        paycore_engine::Tier::Unverified => "unverified",
        paycore_engine::Tier::Verified => "verified",
        paycore_engine::Tier::Premium => "premium",
    }
}

pub fn parse_tier(text: &str) -> Option<paycore_engine::Tier> {
    paycore_engine::Tier::ALL
        .into_iter()
        .find(|t| tier_name(*t) == text)
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub full_name: String,
    pub role: Role,
    pub tier: paycore_engine::Tier,
    /// The TOTP secret, encrypted (see `crate::totp`), once enrollment started.
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    pub created_at_ms: i64,
    /// Access tokens carry the generation they were issued in; bumping it ends them all.
    pub token_generation: i64,
}

const USER_COLUMNS: &str = "id, email, password_hash, full_name, role, tier, totp_secret, \
                            totp_enabled, created_at, token_generation";

fn text(row: &Row, i: usize) -> Result<String, StoreError> {
    row.get(i)
        .and_then(Val::text)
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Other(format!("column {i} is not text")))
}

fn opt_text(row: &Row, i: usize) -> Option<String> {
    row.get(i).and_then(Val::text).map(str::to_owned)
}

fn int(row: &Row, i: usize) -> Result<i64, StoreError> {
    row.get(i)
        .and_then(Val::int)
        .ok_or_else(|| StoreError::Other(format!("column {i} is not an integer")))
}

fn user_of(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: text(row, 0)?,
        email: text(row, 1)?,
        password_hash: text(row, 2)?,
        full_name: text(row, 3)?,
        role: Role::parse(&text(row, 4)?).ok_or_else(|| StoreError::Other("bad role".into()))?,
        tier: parse_tier(&text(row, 5)?).ok_or_else(|| StoreError::Other("bad tier".into()))?,
        totp_secret: opt_text(row, 6),
        totp_enabled: int(row, 7)? != 0,
        created_at_ms: int(row, 8)?,
        token_generation: int(row, 9)?,
    })
}

/// What every authenticated request reads about its user, in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token_generation: i64,
    pub role: Role,
    pub totp_enabled: bool,
    /// The token's own id was revoked.
    pub jti_revoked: bool,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Valid and now spent: issue the next one in `family`.
    Rotated { user_id: String, family: String },
    /// Already spent: someone replayed it; the whole family is revoked now.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

#[derive(Debug, Clone)]
pub struct Kyc {
    pub status: String,
    pub document_type: String,
    pub document_last4: String,
    pub submitted_at_ms: i64,
    pub reviewed_at_ms: Option<i64>,
    pub reason: Option<String>,
}

/// One movement of money the gateway submitted (or learned of from a provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// The engine's transfer id, as a UUID.
    pub id: String,
    /// `transfer`, `deposit`, `withdrawal`.
    pub kind: String,
    pub from_wallet: Option<String>,
    pub to_wallet: Option<String>,
    pub from_user: Option<String>,
    pub to_user: Option<String>,
    /// Decimal string.
    pub amount: String,
    pub currency: String,
    /// `completed`, `pending`, `held`, `cancelled`.
    pub status: String,
    pub reference: Option<String>,
    pub created_at_ms: i64,
}

const TRANSACTION_COLUMNS: &str = "id, kind, from_wallet, to_wallet, from_user, to_user, amount, \
                                   currency, status, reference, created_at, seq";

fn transaction_of(row: &Row) -> Result<(TransactionRecord, i64), StoreError> {
    Ok((
        TransactionRecord {
            id: text(row, 0)?,
            kind: text(row, 1)?,
            from_wallet: opt_text(row, 2),
            to_wallet: opt_text(row, 3),
            from_user: opt_text(row, 4),
            to_user: opt_text(row, 5),
            amount: text(row, 6)?,
            currency: text(row, 7)?,
            status: text(row, 8)?,
            reference: opt_text(row, 9),
            created_at_ms: int(row, 10)?,
        },
        int(row, 11)?,
    ))
}

/// Longest a request may hold its idempotency claim before another may take it over, in ms.
pub const IDEMPOTENCY_RUNNING_MS_MAX: i64 = 60_000;
/// How long answers are kept for replay, in ms (the seed's 24 h).
pub const IDEMPOTENCY_KEPT_MS: i64 = 24 * 3600 * 1000;

/// What an `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use: the caller runs the request and calls `idempotency_finish`.
    Started,
    /// Done before with the same body: replay this status and body.
    Replay { status: u16, body: String },
    /// The first request with this key is still running.
    Running,
    /// Used before with another body.
    Mismatch,
}

/// What a provider event's id found in `provider_events` (see [`Store::provider_event_begin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBegin {
    /// Never seen: recorded now with its contents; the caller applies it.
    New,
    /// Seen with the same contents and not answered yet (a delivery still running, or one
    /// that met an unreachable core): the caller applies it again (the core's key for the
    /// event makes that safe).
    Unfinished,
    /// Seen with the same contents and answered: this status and body.
    Answered { status: u16, body: String },
    /// Seen with other contents (`kind` is the first one's type): refuse and alert.
    OtherContents { kind: String },
}

/// The store: every query the gateway makes, over one backend.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<dyn Backend>,
}

impl Store {
    /// Opens the SQLite file and creates the tables.
    pub async fn sqlite(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = sqlite::Sqlite::open(path)?;
        db.batch(SCHEMA_SQLITE).await?;
        for (table, column, definition) in ADDED_COLUMNS_SQLITE {
            let present = db
                .query(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    vec![column.into()],
                )
                .await?;
            if present.first().and_then(|r| r.first()).and_then(Val::int) == Some(0) {
                db.batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))
                .await?;
            }
        }
        Ok(Store { db: Arc::new(db) })
    }

    /// Connects to PostgreSQL (inside `schema` if given) and creates the tables.
    pub async fn postgres(url: &str, schema: Option<&str>) -> Result<Store, StoreError> {
        let db = postgres::Postgres::connect(url, schema).await?;
        db.batch(&schema_postgres()).await?;
        Ok(Store { db: Arc::new(db) })
    }

    pub fn engine_name(&self) -> &'static str {
        self.db.name()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.query("SELECT 1", vec![]).await.map(|_| ())
    }

    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO users (id, email, password_hash, full_name, role, tier, totp_secret, \
                 totp_enabled, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                vec![
                    user.id.as_str().into(),
                    user.email.as_str().into(),
                    user.password_hash.as_str().into(),
                    user.full_name.as_str().into(),
                    user.role.as_str().into(),
                    tier_name(user.tier).into(),
                    Val::opt_text(user.totp_secret.as_deref()),
                    i64::from(user.totp_enabled).into(),
                    user.created_at_ms.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn user_where(&self, column: &str, value: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1");
        let rows = self.db.query(&sql, vec![value.into()]).await?;
        rows.first().map(user_of).transpose()
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.user_where("email", email).await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.user_where("id", id).await
    }

    pub async fn update_full_name(&self, id: &str, name: &str, now: i64) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE users SET full_name = ?2, updated_at = ?3 WHERE id = ?1",
                vec![id.into(), name.into(), now.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn set_tier(
        &self,
        id: &str,
        tier: paycore_engine::Tier,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE users SET tier = ?2, updated_at = ?3 WHERE id = ?1",
                vec![id.into(), tier_name(tier).into(), now.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn set_totp(
        &self,
        id: &str,
        secret: Option<&str>,
        enabled: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE users SET totp_secret = ?2, totp_enabled = ?3, updated_at = ?4 WHERE id = ?1",
                vec![
                    id.into(),
                    Val::opt_text(secret),
                    i64::from(enabled).into(),
                    now.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    pub async fn insert_refresh(
        &self,
        token_hash: &str,
        user_id: &str,
        family: &str,
        expires_at_ms: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO refresh_tokens (token_hash, user_id, family, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                vec![
                    token_hash.into(),
                    user_id.into(),
                    family.into(),
                    expires_at_ms.into(),
                    now.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    /// Spends a refresh token (see [`RefreshUse`]).
    pub async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<RefreshUse, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT user_id, family, expires_at, used, revoked FROM refresh_tokens \
                 WHERE token_hash = ?1",
                vec![token_hash.into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(RefreshUse::Invalid);
        };
        let (user_id, family) = (text(row, 0)?, text(row, 1)?);
        if int(row, 4)? != 0 || int(row, 2)? <= now {
            return Ok(RefreshUse::Invalid);
        }
        let spent = self
            .db
            .execute(
                "UPDATE refresh_tokens SET used = 1 WHERE token_hash = ?1 AND used = 0",
                vec![token_hash.into()],
            )
            .await?;
        if int(row, 3)? != 0 || spent == 0 {
            // Two holders of one token: one is a thief. End the family and every access token
            // of the user (the thief's among them).
            self.revoke_family(&family).await?;
            self.bump_token_generation(&user_id).await?;
            return Ok(RefreshUse::Reused);
        }
        Ok(RefreshUse::Rotated { user_id, family })
    }

    pub async fn revoke_family(&self, family: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1",
                vec![family.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn revoke_user_refresh_tokens(&self, user_id: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?1",
                vec![user_id.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn revoke_jti(&self, jti: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        match self
            .db
            .execute(
                "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)",
                vec![jti.into(), expires_at_ms.into()],
            )
            .await
        {
            Ok(_) | Err(StoreError::Duplicate) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The user's current token generation, role and 2FA, and whether `jti` is revoked: one
    /// primary-key lookup per request. `None` when the user no longer exists.
    pub async fn session(&self, user_id: &str, jti: &str) -> Result<Option<Session>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT token_generation, role, totp_enabled, \
                 (SELECT COUNT(*) FROM revoked_tokens WHERE jti = ?2) FROM users WHERE id = ?1",
                vec![user_id.into(), jti.into()],
            )
            .await?;
        rows.first()
            .map(|row| {
                Ok(Session {
                    token_generation: int(row, 0)?,
                    role: Role::parse(&text(row, 1)?)
                        .ok_or_else(|| StoreError::Other("bad role".into()))?,
                    totp_enabled: int(row, 2)? != 0,
                    jti_revoked: int(row, 3)? != 0,
                })
            })
            .transpose()
    }

    /// Ends every access token issued to the user so far (logout, a stolen refresh token, a
    /// role taken away): the new generation.
    pub async fn bump_token_generation(&self, user_id: &str) -> Result<i64, StoreError> {
        self.db
            .execute(
                "UPDATE users SET token_generation = token_generation + 1 WHERE id = ?1",
                vec![user_id.into()],
            )
            .await?;
        let rows = self
            .db
            .query(
                "SELECT token_generation FROM users WHERE id = ?1",
                vec![user_id.into()],
            )
            .await?;
        rows.first().map_or(Ok(0), |row| int(row, 0))
    }

    /// Sets a user's role (the operator's `paycore admin`); false if there is no such user.
    pub async fn set_role(&self, id: &str, role: Role, now: i64) -> Result<bool, StoreError> {
        self.db
            .execute(
                "UPDATE users SET role = ?2, updated_at = ?3 WHERE id = ?1",
                vec![id.into(), role.as_str().into(), now.into()],
            )
            .await
            .map(|changed| changed > 0)
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT 1 FROM revoked_tokens WHERE jti = ?1",
                vec![jti.into()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Records (or replaces, when not approved yet) a KYC submission.
    pub async fn kyc_submit(
        &self,
        user_id: &str,
        document_type: &str,
        document_last4: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .db
            .execute(
                "UPDATE kyc SET status = 'pending', document_type = ?2, document_last4 = ?3, \
                 submitted_at = ?4, reviewed_at = NULL, reviewer = NULL, reason = NULL \
                 WHERE user_id = ?1 AND status <> 'approved'",
                vec![
                    user_id.into(),
                    document_type.into(),
                    document_last4.into(),
                    now.into(),
                ],
            )
            .await?;
        if changed > 0 {
            return Ok(true);
        }
        match self
            .db
            .execute(
                "INSERT INTO kyc (user_id, status, document_type, document_last4, submitted_at) \
                 VALUES (?1, 'pending', ?2, ?3, ?4)",
                vec![
                    user_id.into(),
                    document_type.into(),
                    document_last4.into(),
                    now.into(),
                ],
            )
            .await
        {
            Ok(_) => Ok(true),
            // A row exists and is approved: nothing to submit.
            Err(StoreError::Duplicate) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn kyc(&self, user_id: &str) -> Result<Option<Kyc>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT status, document_type, document_last4, submitted_at, reviewed_at, reason \
                 FROM kyc WHERE user_id = ?1",
                vec![user_id.into()],
            )
            .await?;
        rows.first()
            .map(|row| {
                Ok(Kyc {
                    status: text(row, 0)?,
                    document_type: text(row, 1)?,
                    document_last4: text(row, 2)?,
                    submitted_at_ms: int(row, 3)?,
                    reviewed_at_ms: row.get(4).and_then(Val::int),
                    reason: opt_text(row, 5),
                })
            })
            .transpose()
    }

    /// Approves or rejects a pending submission; false when none is pending.
    pub async fn kyc_review(
        &self,
        user_id: &str,
        approved: bool,
        reviewer: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let status = if approved { "approved" } else { "rejected" };
        let changed = self
            .db
            .execute(
                "UPDATE kyc SET status = ?2, reviewed_at = ?3, reviewer = ?4, reason = ?5 \
                 WHERE user_id = ?1 AND status = 'pending'",
                vec![
                    user_id.into(),
                    status.into(),
                    now.into(),
                    reviewer.into(),
                    Val::opt_text(reason),
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Records a transaction; a second record with the same id (a replayed provider webhook)
    /// changes nothing.
    pub async fn insert_transaction(&self, t: &TransactionRecord) -> Result<(), StoreError> {
        let result = self
            .db
            .execute(
                "INSERT INTO transactions (id, kind, from_wallet, to_wallet, from_user, to_user, \
                 amount, currency, status, reference, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                vec![
                    t.id.as_str().into(),
                    t.kind.as_str().into(),
                    Val::opt_text(t.from_wallet.as_deref()),
                    Val::opt_text(t.to_wallet.as_deref()),
                    Val::opt_text(t.from_user.as_deref()),
                    Val::opt_text(t.to_user.as_deref()),
                    t.amount.as_str().into(),
                    t.currency.as_str().into(),
                    t.status.as_str().into(),
                    Val::opt_text(t.reference.as_deref()),
                    t.created_at_ms.into(),
                ],
            )
            .await;
        match result {
            Ok(_) | Err(StoreError::Duplicate) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn set_transaction_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE transactions SET status = ?2 WHERE id = ?1",
                vec![id.into(), status.into()],
            )
            .await
            .map(|_| ())
    }

    /// A transaction and its position in the history order.
    pub async fn transaction(
        &self,
        id: &str,
    ) -> Result<Option<(TransactionRecord, i64)>, StoreError> {
        let sql = format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = ?1");
        let rows = self.db.query(&sql, vec![id.into()]).await?;
        rows.first().map(transaction_of).transpose()
    }

    /// A user's transactions, newest first, strictly before position `before` if given; at most
    /// `limit + 1` rows (the extra one says whether there are more).
    pub async fn history(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        let sql = format!(
            "SELECT {TRANSACTION_COLUMNS} FROM transactions \
             WHERE (from_user = ?1 OR to_user = ?1) AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        );
        let rows = self
            .db
            .query(
                &sql,
                vec![
                    user_id.into(),
                    before.unwrap_or(i64::MAX).into(),
                    i64::from(limit + 1).into(),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| transaction_of(row).map(|(t, _)| t))
            .collect()
    }

    /// Claims `key` for `user_id` with the request's hash (see [`IdempotencyBegin`]).
    pub async fn idempotency_begin(
        &self,
        user_id: &str,
        key: &str,
        request_hash: &str,
        now: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let inserted = self
            .db
            .execute(
                "INSERT INTO http_idempotency (user_id, idem_key, request_hash, state, created_at) \
                 VALUES (?1, ?2, ?3, 'running', ?4)",
                vec![user_id.into(), key.into(), request_hash.into(), now.into()],
            )
            .await;
        match inserted {
            Ok(_) => return Ok(IdempotencyBegin::Started),
            Err(StoreError::Duplicate) => {}
            Err(e) => return Err(e),
        }
        let rows = self
            .db
            .query(
                "SELECT request_hash, state, status, body FROM http_idempotency \
                 WHERE user_id = ?1 AND idem_key = ?2",
                vec![user_id.into(), key.into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            // Removed between the two statements (the first request failed): let it run again.
            return Ok(IdempotencyBegin::Running);
        };
        if text(row, 0)? != request_hash {
            return Ok(IdempotencyBegin::Mismatch);
        }
        if text(row, 1)? != "done" {
            // A claim older than any request can run is a gateway that died mid-request: take
            // it over (the core's own key makes running the command again safe).
            let taken = self
                .db
                .execute(
                    "UPDATE http_idempotency SET created_at = ?3 WHERE user_id = ?1 \
                     AND idem_key = ?2 AND state = 'running' AND created_at < ?4",
                    vec![
                        user_id.into(),
                        key.into(),
                        now.into(),
                        (now - IDEMPOTENCY_RUNNING_MS_MAX).into(),
                    ],
                )
                .await?;
            if taken > 0 {
                return Ok(IdempotencyBegin::Started);
            }
            return Ok(IdempotencyBegin::Running);
        }
        Ok(IdempotencyBegin::Replay {
            status: u16::try_from(int(row, 2)?).unwrap_or(500),
            body: text(row, 3)?,
        })
    }

    pub async fn idempotency_finish(
        &self,
        user_id: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE http_idempotency SET state = 'done', status = ?3, body = ?4 \
                 WHERE user_id = ?1 AND idem_key = ?2",
                vec![
                    user_id.into(),
                    key.into(),
                    i64::from(status).into(),
                    body.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    /// Records that `user_id` used the TOTP code of `step`; false if it was used already (a
    /// replayed code).
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        match self
            .db
            .execute(
                "INSERT INTO totp_used (user_id, step) VALUES (?1, ?2)",
                vec![user_id.into(), step.into()],
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes what no longer matters at `now`: idempotency records past 24 h, expired
    /// revocations and refresh tokens, used TOTP steps past their window. Rows deleted.
    pub async fn sweep(&self, now: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for (sql, before) in [
            (
                "DELETE FROM http_idempotency WHERE created_at < ?1",
                now - IDEMPOTENCY_KEPT_MS,
            ),
            ("DELETE FROM revoked_tokens WHERE expires_at < ?1", now),
            ("DELETE FROM refresh_tokens WHERE expires_at < ?1", now),
            (
                "DELETE FROM totp_used WHERE step < ?1",
                now / 1000 / crate::totp::STEP_SECS - 4,
            ),
        ] {
            deleted += self.db.execute(sql, vec![before.into()]).await?;
        }
        Ok(deleted)
    }

    /// Records provider event `event_id` with the hash of its contents before anything is
    /// applied; the row is kept for good (ids are unique for the life of the system).
    pub async fn provider_event_begin(
        &self,
        event_id: &str,
        content_hash: &str,
        kind: &str,
        now: i64,
    ) -> Result<EventBegin, StoreError> {
        let inserted = self
            .db
            .execute(
                "INSERT INTO provider_events (event_id, content_hash, kind, state, received_at) \
                 VALUES (?1, ?2, ?3, 'received', ?4)",
                vec![
                    event_id.into(),
                    content_hash.into(),
                    kind.into(),
                    now.into(),
                ],
            )
            .await;
        match inserted {
            Ok(_) => return Ok(EventBegin::New),
            Err(StoreError::Duplicate) => {}
            Err(e) => return Err(e),
        }
        let rows = self
            .db
            .query(
                "SELECT content_hash, kind, state, status, body FROM provider_events \
                 WHERE event_id = ?1",
                vec![event_id.into()],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Other("provider event vanished".into()))?;
        if text(row, 0)? != content_hash {
            return Ok(EventBegin::OtherContents {
                kind: text(row, 1)?,
            });
        }
        if text(row, 2)? != "answered" {
            return Ok(EventBegin::Unfinished);
        }
        Ok(EventBegin::Answered {
            status: u16::try_from(int(row, 3)?).unwrap_or(500),
            body: text(row, 4)?,
        })
    }

    /// Keeps the answer of a provider event that was decided (applied or refused).
    pub async fn provider_event_answered(
        &self,
        event_id: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE provider_events SET state = 'answered', status = ?2, body = ?3 \
                 WHERE event_id = ?1",
                vec![event_id.into(), i64::from(status).into(), body.into()],
            )
            .await
            .map(|_| ())
    }

    /// Forgets a key whose request failed before reaching a decision (the client may retry).
    pub async fn idempotency_abort(&self, user_id: &str, key: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "DELETE FROM http_idempotency WHERE user_id = ?1 AND idem_key = ?2",
                vec![user_id.into(), key.into()],
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(label: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("paycore-gw-store-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::sqlite(&dir.join("store.sqlite"))
            .await
            .expect("sqlite store");
        (store, dir)
    }

    #[tokio::test]
    async fn idempotency_claims_replay_refuse_and_expire() {
        let (store, dir) = store("idem").await;
        let begin = |key: &'static str, hash: &'static str, now: i64| {
            let store = store.clone();
            async move {
                store
                    .idempotency_begin("u1", key, hash, now)
                    .await
                    .expect("begin")
            }
        };
        assert_eq!(begin("k", "h1", 1_000).await, IdempotencyBegin::Started);
        assert_eq!(begin("k", "h1", 1_001).await, IdempotencyBegin::Running);
        assert_eq!(begin("k", "h2", 1_001).await, IdempotencyBegin::Mismatch);
        // Another user's identical key is theirs.
        assert_eq!(
            store
                .idempotency_begin("u2", "k", "h1", 1_001)
                .await
                .expect("begin"),
            IdempotencyBegin::Started
        );
        store
            .idempotency_finish("u1", "k", 201, "{\"id\":1}")
            .await
            .expect("finish");
        assert_eq!(
            begin("k", "h1", 1_002).await,
            IdempotencyBegin::Replay {
                status: 201,
                body: "{\"id\":1}".into()
            }
        );
        // A claim left running by a dead gateway is taken over once it is old enough.
        assert_eq!(begin("stale", "h", 0).await, IdempotencyBegin::Started);
        assert_eq!(begin("stale", "h", 10).await, IdempotencyBegin::Running);
        let later = IDEMPOTENCY_RUNNING_MS_MAX + 1;
        assert_eq!(begin("stale", "h", later).await, IdempotencyBegin::Started);
        assert_eq!(
            begin("stale", "h", later + 1).await,
            IdempotencyBegin::Running
        );
        // Aborted keys run again; swept ones too.
        store.idempotency_abort("u1", "stale").await.expect("abort");
        assert_eq!(
            begin("stale", "h", later + 2).await,
            IdempotencyBegin::Started
        );
        assert!(
            store
                .sweep(IDEMPOTENCY_KEPT_MS + later + 10)
                .await
                .expect("sweep")
                >= 3
        );
        assert_eq!(
            begin("k", "h2", IDEMPOTENCY_KEPT_MS + later + 11).await,
            IdempotencyBegin::Started
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_once_and_totp_steps_work_once() {
        let (store, dir) = store("refresh").await;
        store
            .insert_refresh("t1", "u1", "f1", 10_000, 0)
            .await
            .expect("insert");
        assert_eq!(
            store.use_refresh("t1", 1).await.expect("use"),
            RefreshUse::Rotated {
                user_id: "u1".into(),
                family: "f1".into()
            }
        );
        store
            .insert_refresh("t2", "u1", "f1", 10_000, 1)
            .await
            .expect("insert");
        assert_eq!(
            store.use_refresh("t1", 2).await.expect("use"),
            RefreshUse::Reused
        );
        // The reuse revoked the family: the newer token is dead too.
        assert_eq!(
            store.use_refresh("t2", 3).await.expect("use"),
            RefreshUse::Invalid
        );
        assert_eq!(
            store.use_refresh("nope", 3).await.expect("use"),
            RefreshUse::Invalid
        );
        store
            .insert_refresh("t3", "u1", "f2", 10, 0)
            .await
            .expect("insert");
        assert_eq!(
            store.use_refresh("t3", 10).await.expect("use"),
            RefreshUse::Invalid
        );
        assert!(store.use_totp_step("u1", 5).await.expect("step"));
        assert!(!store.use_totp_step("u1", 5).await.expect("step"));
        assert!(store.use_totp_step("u2", 5).await.expect("step"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
