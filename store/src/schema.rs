//! The SQL schema, for PostgreSQL and for SQLite: the seed's tables (`wallets`, `transactions`,
//! `transaction_idempotency`) plus `currencies`, `ledger_entries` (double-entry postings),
//! `holds` and `flush_checkpoints`. Creating it is idempotent (`IF NOT EXISTS`).
//!
//! Differences between the two, all of representation, none of meaning:
//! - amounts: PostgreSQL `NUMERIC(28,18)` for movement and hold amounts (the engine's range),
//!   `NUMERIC(56,18)` for balances and postings (system wallets accumulate up to ±10^36 minor
//!   units, docs/design.md §3); SQLite has no exact decimal type, so the same decimal text is
//!   stored as `TEXT` and summed in Rust, never as a float.
//! - ids: wallet and hold ids are `BIGINT` (shard < 1024 keeps bit 63 clear); movement ids
//!   (u128) and user ids are `UUID` in PostgreSQL and the same hyphenated text in SQLite.
//! - `transactions` is range-partitioned by month on `created_at` in PostgreSQL (partitions
//!   made by the flusher before the first row of a month, and one month ahead); SQLite has one
//!   table.
//! - idempotency keys are bytes (`BYTEA`/`BLOB`): the engine compares keys byte for byte.
//! - `wallets` has no `UNIQUE(user_id, currency)`: a closed wallet stays and the user may open
//!   a new one in the same currency, and system wallets all belong to the nil user.

pub const POSTGRES: &str = "
CREATE TABLE IF NOT EXISTS flush_checkpoints (
    shard INTEGER PRIMARY KEY,
    last_sequence BIGINT NOT NULL,
    last_epoch BIGINT NOT NULL,
    last_timestamp_ns BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
-- Stores made before the epoch was kept (0: not checked).
ALTER TABLE flush_checkpoints ADD COLUMN IF NOT EXISTS last_epoch BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS currencies (
    shard INTEGER NOT NULL,
    code VARCHAR(10) NOT NULL,
    scale SMALLINT NOT NULL,
    PRIMARY KEY (shard, code)
);
CREATE TABLE IF NOT EXISTS wallets (
    id BIGINT PRIMARY KEY,
    shard INTEGER NOT NULL,
    user_id UUID NOT NULL,
    currency VARCHAR(10) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    balance NUMERIC(56, 18) NOT NULL,
    available_balance NUMERIC(56, 18) NOT NULL,
    frozen_balance NUMERIC(56, 18) NOT NULL,
    version BIGINT NOT NULL,
    status VARCHAR(10) NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS idx_wallets_user_id ON wallets (user_id);
CREATE TABLE IF NOT EXISTS transactions (
    id UUID NOT NULL,
    shard INTEGER NOT NULL,
    kind VARCHAR(16) NOT NULL,
    from_wallet_id BIGINT NOT NULL,
    to_wallet_id BIGINT NOT NULL,
    amount NUMERIC(28, 18) NOT NULL,
    currency VARCHAR(10) NOT NULL,
    status VARCHAR(10) NOT NULL,
    reason VARCHAR(48),
    idempotency_key BYTEA,
    sequence BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (id, shard, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE IF NOT EXISTS ledger_entries (
    wallet_id BIGINT NOT NULL,
    transaction_id UUID NOT NULL,
    shard INTEGER NOT NULL,
    sequence BIGINT NOT NULL,
    delta NUMERIC(56, 18) NOT NULL,
    currency VARCHAR(10) NOT NULL
);
CREATE TABLE IF NOT EXISTS transaction_idempotency (
    shard INTEGER NOT NULL,
    idempotency_key BYTEA NOT NULL,
    transaction_id UUID,
    outcome VARCHAR(80) NOT NULL,
    sequence BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (shard, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idx_idempotency_created ON transaction_idempotency (created_at);
CREATE TABLE IF NOT EXISTS holds (
    id BIGINT PRIMARY KEY,
    shard INTEGER NOT NULL,
    wallet_id BIGINT NOT NULL,
    amount NUMERIC(28, 18) NOT NULL,
    currency VARCHAR(10) NOT NULL,
    withdrawal BOOLEAN NOT NULL,
    status VARCHAR(10) NOT NULL,
    captured_amount NUMERIC(28, 18),
    expires_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    closed_at TIMESTAMP,
    sequence BIGINT NOT NULL
);
";

pub const SQLITE: &str = "
CREATE TABLE IF NOT EXISTS flush_checkpoints (
    shard INTEGER PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    last_epoch INTEGER NOT NULL,
    last_timestamp_ns INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS currencies (
    shard INTEGER NOT NULL,
    code TEXT NOT NULL,
    scale INTEGER NOT NULL,
    PRIMARY KEY (shard, code)
);
CREATE TABLE IF NOT EXISTS wallets (
    id INTEGER PRIMARY KEY,
    shard INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    kind TEXT NOT NULL,
    balance TEXT NOT NULL,
    available_balance TEXT NOT NULL,
    frozen_balance TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_wallets_user_id ON wallets (user_id);
CREATE TABLE IF NOT EXISTS transactions (
    id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    kind TEXT NOT NULL,
    from_wallet_id INTEGER NOT NULL,
    to_wallet_id INTEGER NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    idempotency_key BLOB,
    sequence INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (id, shard, created_at)
);
CREATE TABLE IF NOT EXISTS ledger_entries (
    wallet_id INTEGER NOT NULL,
    transaction_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    delta TEXT NOT NULL,
    currency TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transaction_idempotency (
    shard INTEGER NOT NULL,
    idempotency_key BLOB NOT NULL,
    transaction_id TEXT,
    outcome TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (shard, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idx_idempotency_created ON transaction_idempotency (created_at);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    shard INTEGER NOT NULL,
    wallet_id INTEGER NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    withdrawal INTEGER NOT NULL,
    status TEXT NOT NULL,
    captured_amount TEXT,
    expires_at TEXT,
    created_at TEXT NOT NULL,
    closed_at TEXT,
    sequence INTEGER NOT NULL
);
";

/// A movement id (u128) as UUID text: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_text(value: u128) -> String {
    let mut out = Vec::with_capacity(36);
    write_uuid(&mut out, value);
    // Only hex digits and '-' were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`uuid_text`] appended to `out`, without allocating (the flusher's COPY buffers).
pub fn write_uuid(out: &mut Vec<u8>, value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push(b'-');
        }
        let nibble = (value >> (124 - 4 * i)) & 15;
        out.push(DIGITS[nibble as usize]);
    }
}

/// Reads [`uuid_text`] back.
pub fn parse_uuid(text: &str) -> Option<u128> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_round_trip() {
        let v = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let text = super::uuid_text(v);
        assert_eq!(text, "01234567-89ab-cdef-0011-223344556677");
        assert_eq!(super::parse_uuid(&text), Some(v));
        assert_eq!(super::parse_uuid("zz"), None);
    }
}
