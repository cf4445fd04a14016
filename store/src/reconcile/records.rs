//! Check 4 of reconciliation: idempotency records and open holds agree, in bounded memory.
//!
//! Why not compare against an engine image sorted by key: at 10 M wallets and a day of traffic
//! the engine holds tens of millions of idempotency records, and an image plus a sorted list of
//! owned keys and outcome texts costs several times the engine itself (2.0 GB at 1 M wallets,
//! where the engine is ~0.5 GB a shard). Instead:
//!
//! 1. **Store → engine, streamed.** Every stored record (in key order, through the store's
//!    cursor, [`FETCH_ROWS_MAX`](crate::store::FETCH_ROWS_MAX) rows at a time) is looked up in the engine's own table
//!    (`Engine::outcome_of`, `Engine::hold`) and compared. A stored key the engine does not hold
//!    aged out of its window: not a discrepancy. Memory: one fetch of rows.
//! 2. **Engine → store, by count.** Keys are unique on both sides, so every engine record is
//!    stored exactly when the number of stored records the engine found equals the number the
//!    engine holds (`idempotency_entries`, `open_hold_count`). No memory at all.
//! 3. **Naming what is missing**, only when step 2 says something is: the engine's records are
//!    walked from its image (the engine has no public walk of its table; see docs/design.md
//!    §16) in key order, merged with the stored keys, and each one the store lacks is listed.
//!    That pass holds an image (about 60 bytes per record plus the keys) and a 4-byte index per
//!    record: the price of a report that names records, paid only when a record is missing.

use paycore_engine::codec::decode_outcome;
use paycore_engine::{Engine, HoldId, IdempotencyKey, WalletId};

use super::{Discrepancy, Report, ShardSummary, col, id_of, invalid};
use crate::decimal::{format_minor, parse_minor};
use crate::rows::{outcome_text, outcome_transaction};
use crate::schema::uuid_text;
use crate::store::{Pull, Query, Store, StoreError};

/// Longest idempotency key in bytes (the engine's limit): a longer stored key is unreadable.
const KEY_BYTES_MAX: usize = paycore_engine::IDEMPOTENCY_KEY_BYTES_MAX;

/// Runs check 4 for one shard.
pub(super) fn check(
    engine: &Engine,
    store: &mut Store,
    shard: u16,
    summary: &mut ShardSummary,
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut keys_found: u64 = 0;
    let mut holds_found: u64 = 0;
    let mut key_bytes = Vec::with_capacity(KEY_BYTES_MAX);
    store.cursors(
        &[Query::Idempotency, Query::OpenHolds],
        shard,
        &mut |pulls| {
            while let Some(row) = pulls[0].pull()? {
                summary.idempotency_records += 1;
                unhex(col(&row, 0), &mut key_bytes)
                    .ok_or_else(|| invalid("idempotency (key)", &row))?;
                let Ok(key) = IdempotencyKey::new(&key_bytes) else {
                    return Err(invalid("idempotency (key length)", &row));
                };
                // Not held: aged out of the engine's window, which is not a discrepancy.
                let Some(outcome) = engine.outcome_of(&key) else {
                    continue;
                };
                keys_found += 1;
                let want = (
                    outcome_text(&outcome),
                    outcome_transaction(&outcome).map(uuid_text),
                );
                let stored = (col(&row, 1), row.get(2).and_then(|v| v.as_deref()));
                if (want.0.as_str(), want.1.as_deref()) != stored {
                    report.add(Discrepancy {
                        check: "4-idempotency",
                        shard,
                        subject: format!("key {}", col(&row, 0)),
                        expected: format!("outcome {} transaction {:?}", want.0, want.1),
                        found: format!("outcome {} transaction {:?}", stored.0, stored.1),
                    });
                }
            }
            while let Some(row) = pulls[1].pull()? {
                summary.open_holds += 1;
                let id = id_of(&row, "hold")?;
                let (wallet, amount) = (col(&row, 1), col(&row, 2));
                let found = format!("open on wallet {wallet}, amount {amount}");
                let Some(hold) = engine.hold(HoldId(id)) else {
                    report.add(hold_discrepancy(shard, id, "not open".into(), found));
                    continue;
                };
                holds_found += 1;
                let scale = scale_of(engine, hold.wallet);
                let matches = wallet.parse::<u64>().ok() == Some(hold.wallet.0)
                    && parse_minor(amount, scale).ok() == Some(hold.amount as i128);
                if !matches {
                    report.add(hold_discrepancy(
                        shard,
                        id,
                        hold_text(hold.wallet.0, hold.amount, scale),
                        found,
                    ));
                }
            }
            Ok(())
        },
    )?;
    let keys_missing = engine.idempotency_entries() as u64 != keys_found;
    let holds_missing = engine.open_hold_count() as u64 != holds_found;
    if keys_missing || holds_missing {
        name_missing(engine, store, shard, keys_missing, holds_missing, report)?;
    }
    Ok(())
}

/// Lists the engine's records the store lacks (step 3 of the module docs).
fn name_missing(
    engine: &Engine,
    store: &mut Store,
    shard: u16,
    keys_missing: bool,
    holds_missing: bool,
    report: &mut Report,
) -> Result<(), StoreError> {
    let image = engine.to_image();
    // Key offsets in the arena, then record numbers sorted by key bytes.
    let mut offsets: Vec<usize> = Vec::with_capacity(image.idempotency.len() + 1);
    offsets.push(0);
    for record in &image.idempotency {
        let last = offsets.last().copied().unwrap_or(0);
        offsets.push(last + usize::from(record.key_len));
    }
    let key_of = |i: u32| {
        let i = i as usize;
        image
            .idempotency_keys
            .get(offsets[i]..offsets[i + 1])
            .unwrap_or_default()
    };
    let mut order: Vec<u32> = if keys_missing {
        (0..image.idempotency.len() as u32).collect()
    } else {
        Vec::new()
    };
    order.sort_unstable_by(|a, b| key_of(*a).cmp(key_of(*b)));
    let holds: &[paycore_engine::image::HoldImage] = if holds_missing {
        &image.holds // `to_image` lists them in id order
    } else {
        &[]
    };
    store.cursors(
        &[Query::Idempotency, Query::OpenHolds],
        shard,
        &mut |pulls| {
            // Merge: each engine key (ascending) against the stored keys (ascending).
            let mut stored = next_key(&mut *pulls[0])?;
            for &i in &order {
                let key = key_of(i);
                while stored.as_deref().is_some_and(|s| s < key) {
                    stored = next_key(&mut *pulls[0])?;
                }
                if stored.as_deref() != Some(key) {
                    let outcome = &image.idempotency[i as usize].outcome;
                    report.add(missing_key(shard, key, outcome)?);
                }
            }
            let mut stored = next_hold(&mut *pulls[1])?;
            for hold in holds {
                while stored.is_some_and(|s| s < hold.id) {
                    stored = next_hold(&mut *pulls[1])?;
                }
                if stored != Some(hold.id) {
                    report.add(missing_hold(engine, shard, hold));
                }
            }
            Ok(())
        },
    )
}

/// The next stored key's bytes.
fn next_key(pull: &mut dyn Pull) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(row) = pull.pull()? else {
        return Ok(None);
    };
    let mut key = Vec::with_capacity(col(&row, 0).len() / 2);
    unhex(col(&row, 0), &mut key).ok_or_else(|| invalid("idempotency (key)", &row))?;
    Ok(Some(key))
}

/// The next stored open hold's id.
fn next_hold(pull: &mut dyn Pull) -> Result<Option<u64>, StoreError> {
    match pull.pull()? {
        Some(row) => id_of(&row, "hold").map(Some),
        None => Ok(None),
    }
}

fn missing_key(
    shard: u16,
    key: &[u8],
    outcome: &[u8; paycore_engine::codec::OUTCOME_BYTES_MAX],
) -> Result<Discrepancy, StoreError> {
    let (outcome, _) =
        decode_outcome(outcome).map_err(|e| StoreError::Invalid(format!("engine outcome: {e}")))?;
    Ok(Discrepancy {
        check: "4-idempotency",
        shard,
        subject: format!("key {}", hex(key)),
        expected: format!(
            "outcome {} transaction {:?}",
            outcome_text(&outcome),
            outcome_transaction(&outcome).map(uuid_text)
        ),
        found: "no record".into(),
    })
}

fn missing_hold(
    engine: &Engine,
    shard: u16,
    hold: &paycore_engine::image::HoldImage,
) -> Discrepancy {
    let scale = scale_of(engine, WalletId(hold.wallet));
    hold_discrepancy(
        shard,
        hold.id,
        hold_text(hold.wallet, hold.amount, scale),
        "not open in the store".into(),
    )
}

fn hold_discrepancy(shard: u16, id: u64, expected: String, found: String) -> Discrepancy {
    Discrepancy {
        check: "4-holds",
        shard,
        subject: format!("hold {id}"),
        expected,
        found,
    }
}

fn hold_text(wallet: u64, amount: u128, scale: u8) -> String {
    format!(
        "open on wallet {wallet}, amount {}",
        format_minor(amount as i128, scale)
    )
}

fn scale_of(engine: &Engine, wallet: WalletId) -> u8 {
    engine
        .wallet(wallet)
        .and_then(|w| engine.currency(w.currency))
        .map_or(0, |c| c.scale)
}

/// Lower-case hex, as the store's cursor returns keys.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    text
}

/// Hex text into `out` (cleared first); `None` if it is not hex or longer than a key can be.
fn unhex(text: &str, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    if !text.len().is_multiple_of(2) || text.len() > 2 * KEY_BYTES_MAX {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    for pair in text.as_bytes().chunks_exact(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_keeps_byte_order() {
        let keys: [&[u8]; 4] = [b"", b"\x00\xff", b"a", b"ab"];
        let mut out = Vec::new();
        for key in keys {
            unhex(&hex(key), &mut out).expect("hex");
            assert_eq!(out, key);
        }
        for pair in keys.windows(2) {
            assert_eq!(pair[0].cmp(pair[1]), hex(pair[0]).cmp(&hex(pair[1])));
        }
        assert!(unhex("abc", &mut out).is_none());
        assert!(unhex("zz", &mut out).is_none());
    }
}
