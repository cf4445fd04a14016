//! Images: the whole state of an engine as plain data, for snapshots (serialised with rkyv by
//! the `snapshot` crate) and for the hot standby's catch-up.
//!
//! `to_image` walks the state in its deterministic order; `from_image` rebuilds the indexes and
//! checks the invariants a damaged or mismatched image would break (conservation per currency,
//! slot and currency references, obligations), so a snapshot that loads is a state the engine
//! could have reached. An engine rebuilt from an image has the same `state_hash`.

use hashbrown::HashTable;
use rkyv::{Archive, Deserialize, Serialize};

use crate::codec::{OUTCOME_BYTES_MAX, decode_outcome, encode_outcome};
use crate::command::Tier;
use crate::currency::{CurrencyCode, CurrencyId, minor_units_max};
use crate::engine::{CurrencyInfo, Engine, EngineConfig, PendingLeg};
use crate::hold::Hold;
use crate::ids::{HoldId, UserId, WalletId};
use crate::outcome::Reject;
use crate::velocity::VelocityWindow;
use crate::wallet::{NO_VELOCITY, SystemRole, Wallet, WalletKind, WalletStatus};

/// Format version of [`EngineImage`]; bumped on any layout change.
pub const IMAGE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct EngineImage {
    pub version: u32,
    pub shard: u16,
    pub shard_count: u16,
    pub idempotency_window_ns: u64,
    pub last_sequence: u64,
    pub last_timestamp_ns: u64,
    pub currencies: Vec<CurrencyImage>,
    pub wallets: Vec<WalletImage>,
    /// Velocity buckets `(hour, amount)`, indexed by `WalletImage::velocity`.
    pub velocity: Vec<Vec<(u64, u128)>>,
    pub tiers: Vec<(u128, u8)>,
    pub holds: Vec<HoldImage>,
    pub next_hold_number: u64,
    pub pending: Vec<PendingImage>,
    pub credits_seen: Vec<u128>,
    pub settles_seen: Vec<u64>,
    pub settled_through: Vec<u128>,
    /// (transfer, 0 for credited or the refusal's number).
    pub decisions: Vec<(u128, u8)>,
    /// Idempotency records oldest first; their keys concatenated in `idempotency_keys`.
    pub idempotency: Vec<IdempotencyImage>,
    pub idempotency_keys: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CurrencyImage {
    pub code: Vec<u8>,
    pub scale: u8,
    pub system: [u32; 4],
    pub limits_24h: [Option<u128>; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WalletImage {
    pub available: i128,
    pub frozen: i128,
    pub user: u128,
    pub version: u64,
    pub created_at_ns: u64,
    pub updated_at_ns: u64,
    pub currency: u16,
    pub status: u8,
    /// 255 for a user wallet, else the system role.
    pub kind: u8,
    pub tier: u8,
    pub open_obligations: u32,
    pub velocity: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct HoldImage {
    pub id: u64,
    pub wallet: u64,
    pub amount: u128,
    pub expires_at_ns: Option<u64>,
    pub withdrawal: bool,
    pub created_at_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PendingImage {
    pub transfer: u128,
    pub from_slot: u32,
    pub amount: u128,
    pub to: u64,
    pub currency: [u8; 10],
    pub currency_len: u8,
    pub origin_sequence: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct IdempotencyImage {
    pub key_len: u8,
    pub timestamp_ns: u64,
    pub params: u64,
    pub outcome: [u8; OUTCOME_BYTES_MAX],
}

/// Why an image cannot become an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("engine image invalid: {0}")]
pub struct ImageError(pub String);

fn invalid<T>(what: impl Into<String>) -> Result<T, ImageError> {
    Err(ImageError(what.into()))
}

/// The (user, currency) index of an image's open user wallets: slot by hash, as
/// [`Engine::find_user_wallet`] reads it. Two open wallets of one user in one currency are
/// refused.
fn user_index_of(wallets: &[WalletImage], seed: u64) -> Result<HashTable<u32>, ImageError> {
    let hash_of = |w: &WalletImage| crate::hashing::user_currency_hash(seed, w.user, w.currency);
    let mut index = HashTable::with_capacity(wallets.len());
    for (slot, w) in wallets.iter().enumerate() {
        // Kind 255 is a user wallet, status 2 closed (as decoded in `from_image`).
        if w.kind != 255 || w.status == 2 {
            continue;
        }
        let entry = index.entry(
            hash_of(w),
            |&s: &u32| {
                let other = &wallets[s as usize];
                other.user == w.user && other.currency == w.currency
            },
            |&s: &u32| hash_of(&wallets[s as usize]),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => {
                return invalid(format!(
                    "two open wallets of one user in one currency (slot {slot})"
                ));
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(slot as u32);
            }
        }
    }
    Ok(index)
}

fn tier_from(value: u8) -> Result<Tier, ImageError> {
    Tier::ALL
        .get(usize::from(value))
        .copied()
        .ok_or_else(|| ImageError(format!("tier {value}")))
}

impl Engine {
    /// The whole state as plain data.
    pub fn to_image(&self) -> EngineImage {
        let mut idempotency_keys = Vec::new();
        let mut idempotency = Vec::with_capacity(self.idempotency.len());
        for (key, entry) in self.idempotency.iter() {
            idempotency_keys.extend_from_slice(key);
            let mut encoded = Vec::with_capacity(OUTCOME_BYTES_MAX);
            encode_outcome(&entry.outcome, &mut encoded);
            let mut outcome = [0u8; OUTCOME_BYTES_MAX];
            outcome[..encoded.len()].copy_from_slice(&encoded);
            idempotency.push(IdempotencyImage {
                key_len: key.len() as u8,
                timestamp_ns: entry.timestamp_ns,
                params: entry.params,
                outcome,
            });
        }
        let mut tiers: Vec<(u128, u8)> = self.tiers.iter().map(|(u, t)| (*u, *t as u8)).collect();
        tiers.sort_unstable();
        let mut pending: Vec<PendingImage> = self
            .pending
            .iter()
            .map(|(t, p)| {
                let code = p.leg.currency.as_bytes();
                let mut currency = [0u8; 10];
                currency[..code.len()].copy_from_slice(code);
                PendingImage {
                    transfer: *t,
                    from_slot: p.from_slot,
                    amount: p.amount,
                    to: p.leg.to.0,
                    currency,
                    currency_len: code.len() as u8,
                    origin_sequence: p.leg.origin_sequence,
                }
            })
            .collect();
        pending.sort_unstable_by_key(|p| p.transfer);
        EngineImage {
            version: IMAGE_VERSION,
            shard: self.config.shard,
            shard_count: self.config.shard_count,
            idempotency_window_ns: self.config.idempotency_window_ns,
            last_sequence: self.last_sequence,
            last_timestamp_ns: self.last_timestamp_ns,
            currencies: self
                .currencies
                .iter()
                .map(|c| CurrencyImage {
                    code: c.code.as_bytes().to_vec(),
                    scale: c.scale,
                    system: c.system,
                    limits_24h: c.limits_24h,
                })
                .collect(),
            wallets: self
                .wallets
                .iter()
                .map(|w| WalletImage {
                    available: w.available,
                    frozen: w.frozen,
                    user: w.user.0,
                    version: w.version,
                    created_at_ns: w.created_at_ns,
                    updated_at_ns: w.updated_at_ns,
                    currency: w.currency.0,
                    status: w.status as u8,
                    kind: match w.kind {
                        WalletKind::User => 255,
                        WalletKind::System(role) => role as u8,
                    },
                    tier: w.tier as u8,
                    open_obligations: w.open_obligations,
                    velocity: w.velocity,
                })
                .collect(),
            velocity: self
                .velocity
                .iter()
                .map(|v| v.buckets().copied().collect())
                .collect(),
            tiers,
            holds: self
                .holds
                .sorted()
                .into_iter()
                .map(|h| HoldImage {
                    id: h.id.0,
                    wallet: h.wallet.0,
                    amount: h.amount,
                    expires_at_ns: h.expires_at_ns,
                    withdrawal: h.withdrawal,
                    created_at_ns: h.created_at_ns,
                })
                .collect(),
            next_hold_number: self.holds.next_number,
            pending,
            credits_seen: self.credits_seen.clone(),
            settles_seen: self.settles_seen.clone(),
            settled_through: self.settled_through.clone(),
            decisions: self
                .decisions
                .iter()
                .map(|(t, r)| (*t, r.map_or(0, |r| r as u8)))
                .collect(),
            idempotency,
            idempotency_keys,
        }
    }

    /// Rebuilds an engine from an image taken with the same shard layout.
    pub fn from_image(config: EngineConfig, image: &EngineImage) -> Result<Engine, ImageError> {
        if image.version != IMAGE_VERSION {
            return invalid(format!(
                "version {} (this build reads {IMAGE_VERSION})",
                image.version
            ));
        }
        if (image.shard, image.shard_count) != (config.shard, config.shard_count) {
            return invalid(format!(
                "image of shard {}/{} loaded as shard {}/{}",
                image.shard, image.shard_count, config.shard, config.shard_count
            ));
        }
        if image.idempotency_window_ns != config.idempotency_window_ns {
            return invalid("idempotency window differs from the configuration");
        }
        let shards = usize::from(config.shard_count);
        if image.credits_seen.len() != shards
            || image.settles_seen.len() != shards
            || image.settled_through.len() != shards
        {
            return invalid("per-shard counters have the wrong length");
        }
        let mut engine = Engine::new(config);
        engine.last_sequence = image.last_sequence;
        engine.last_timestamp_ns = image.last_timestamp_ns;
        // Sized up front: growing a 10 M-entry index (and wallet vector) while loading costs
        // rehashes and copies on the restart path.
        engine.wallets.reserve_exact(image.wallets.len());
        for c in &image.currencies {
            let code = CurrencyCode::from_bytes(&c.code).map_err(|e| ImageError(e.to_string()))?;
            if c.scale > crate::currency::CURRENCY_SCALE_MAX {
                return invalid("currency scale");
            }
            engine.currencies.push(CurrencyInfo {
                code,
                scale: c.scale,
                max: minor_units_max(c.scale),
                system: c.system,
                limits_24h: c.limits_24h,
            });
        }
        engine.refresh_limits_set();
        let currency_count = engine.currencies.len();
        let mut sums = vec![0i128; currency_count];
        // The (user, currency) index is built on a second thread from the image itself while
        // this one checks and copies the wallets: with millions of wallets both are hundreds of
        // milliseconds of cache misses, and they share nothing but the read-only image. (The
        // index holds the same slots either way; no outcome or hash depends on the thread.)
        let seed = engine.config.hash_seed;
        let (copied, index) = std::thread::scope(|scope| {
            // No thread to be had (a process at its limit): build the index here afterwards.
            let indexer = std::thread::Builder::new()
                .name("image-index".into())
                .spawn_scoped(scope, || user_index_of(&image.wallets, seed))
                .ok();
            let copied = (|| -> Result<(), ImageError> {
                for (slot, w) in image.wallets.iter().enumerate() {
                    if usize::from(w.currency) >= currency_count {
                        return invalid(format!("wallet {slot} has an unknown currency"));
                    }
                    let status = match w.status {
                        0 => WalletStatus::Active,
                        1 => WalletStatus::Frozen,
                        2 => WalletStatus::Closed,
                        other => return invalid(format!("wallet {slot} status {other}")),
                    };
                    let kind = match w.kind {
                        255 => WalletKind::User,
                        role => WalletKind::System(
                            *SystemRole::ALL
                                .get(usize::from(role))
                                .ok_or_else(|| ImageError(format!("role {role}")))?,
                        ),
                    };
                    if w.frozen < 0 || (kind == WalletKind::User && w.available < 0) {
                        return invalid(format!("wallet {slot} has a negative balance"));
                    }
                    if w.velocity != NO_VELOCITY && w.velocity as usize >= image.velocity.len() {
                        return invalid(format!("wallet {slot} velocity index"));
                    }
                    sums[usize::from(w.currency)] += w.available + w.frozen;
                    let wallet = Wallet {
                        available: w.available,
                        frozen: w.frozen,
                        user: UserId(w.user),
                        version: w.version,
                        created_at_ns: w.created_at_ns,
                        updated_at_ns: w.updated_at_ns,
                        currency: CurrencyId(w.currency),
                        status,
                        kind,
                        tier: tier_from(w.tier)?,
                        open_obligations: w.open_obligations,
                        velocity: w.velocity,
                    };
                    engine.wallets.push(wallet, usize::MAX);
                }
                Ok(())
            })();
            let index = match indexer {
                Some(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                None => user_index_of(&image.wallets, seed),
            };
            (copied, index)
        });
        copied?;
        engine.user_index = index?;
        if let Some(currency) = sums.iter().position(|s| *s != 0) {
            return invalid(format!(
                "balances of currency {currency} sum to {}",
                sums[currency]
            ));
        }
        for c in &engine.currencies {
            for (role, slot) in c.system.iter().enumerate() {
                let ok = engine
                    .wallets
                    .get(*slot as usize)
                    .is_some_and(|w| w.kind == WalletKind::System(SystemRole::ALL[role]));
                if !ok {
                    return invalid(format!("system wallet slot {slot} of {}", c.code));
                }
            }
        }
        engine.velocity = image
            .velocity
            .iter()
            .map(|b| VelocityWindow::from_buckets(b.clone()))
            .collect();
        for (user, tier) in &image.tiers {
            engine.tiers.insert(*user, tier_from(*tier)?);
        }
        let mut obligations = vec![0u32; engine.wallets.len()];
        for h in &image.holds {
            let wallet = WalletId(h.wallet);
            let slot = wallet.slot() as usize;
            if wallet.shard() != engine.config.shard || slot >= engine.wallets.len() {
                return invalid(format!("hold {} on an unknown wallet", h.id));
            }
            if HoldId(h.id).number() >= image.next_hold_number {
                return invalid(format!("hold {} beyond the hold counter", h.id));
            }
            obligations[slot] += 1;
            engine.holds.insert(Hold {
                id: HoldId(h.id),
                wallet,
                amount: h.amount,
                expires_at_ns: h.expires_at_ns,
                withdrawal: h.withdrawal,
                created_at_ns: h.created_at_ns,
            });
        }
        engine.holds.next_number = image.next_hold_number;
        for p in &image.pending {
            if p.from_slot as usize >= engine.wallets.len() {
                return invalid("pending transfer from an unknown wallet");
            }
            obligations[p.from_slot as usize] += 1;
            let currency = p
                .currency
                .get(..usize::from(p.currency_len))
                .and_then(|code| CurrencyCode::from_bytes(code).ok())
                .ok_or_else(|| ImageError("pending transfer currency".into()))?;
            let transfer = crate::ids::TransferId(p.transfer);
            let leg = crate::command::CreditLeg {
                transfer,
                from: WalletId::new(engine.config.shard, u64::from(p.from_slot)),
                to: WalletId(p.to),
                amount: p.amount,
                currency,
                origin_sequence: p.origin_sequence,
                settled_through: 0,
            };
            engine.pending.insert(
                p.transfer,
                PendingLeg {
                    from_slot: p.from_slot,
                    amount: p.amount,
                    leg,
                },
            );
        }
        for (slot, &expected) in obligations.iter().enumerate() {
            if engine.wallets.cold(slot as u32).open_obligations != expected {
                return invalid(format!(
                    "wallet {slot} obligations do not match its holds and legs"
                ));
            }
        }
        engine.credits_seen = image.credits_seen.clone();
        engine.settles_seen = image.settles_seen.clone();
        engine.settled_through = image.settled_through.clone();
        for (transfer, refused) in &image.decisions {
            let refused = match refused {
                0 => None,
                code => Some(
                    Reject::from_u8(*code)
                        .ok_or_else(|| ImageError(format!("decision reason {code}")))?,
                ),
            };
            engine.decisions.insert(*transfer, refused);
        }
        // Millions of records on the restart path: the table is sized once (no index doubling
        // and rehash mid-load), each key is hashed once and never allocated, and the index
        // line of the record RESTORE_AHEAD places ahead is prefetched, so the random index
        // misses overlap instead of being paid one after another.
        const RESTORE_AHEAD: usize = 16;
        let records = &image.idempotency;
        let keys = &image.idempotency_keys;
        engine.idempotency.reserve(records.len());
        let mut hashes = [0u64; RESTORE_AHEAD];
        let (mut offset, mut ahead_offset) = (0usize, 0usize);
        let hash_ahead = |engine: &Engine,
                          i: usize,
                          ahead_offset: &mut usize,
                          hashes: &mut [u64; RESTORE_AHEAD]| {
            let Some(record) = records.get(i) else {
                return;
            };
            let end = *ahead_offset + usize::from(record.key_len);
            // A truncated key gets no hint; the loop below names it.
            if let Some(key) = keys.get(*ahead_offset..end) {
                let hash = engine.idempotency.hash(key);
                engine.idempotency.prefetch_hash(hash);
                hashes[i % RESTORE_AHEAD] = hash;
            }
            *ahead_offset = end;
        };
        for i in 0..RESTORE_AHEAD {
            hash_ahead(&engine, i, &mut ahead_offset, &mut hashes);
        }
        for (i, entry) in records.iter().enumerate() {
            let hash = hashes[i % RESTORE_AHEAD];
            hash_ahead(&engine, i + RESTORE_AHEAD, &mut ahead_offset, &mut hashes);
            let end = offset + usize::from(entry.key_len);
            let Some(key) = keys.get(offset..end) else {
                return invalid("idempotency keys truncated");
            };
            let (outcome, _) =
                decode_outcome(&entry.outcome).map_err(|e| ImageError(e.to_string()))?;
            engine
                .idempotency
                .restore_hashed(key, hash, entry.params, entry.timestamp_ns, outcome)
                .map_err(|reason| ImageError(reason.into()))?;
            offset = end;
        }
        if offset != keys.len() {
            return invalid("idempotency keys have trailing bytes");
        }
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Effects, IdempotencyKey, Op, Outcome};

    fn busy_engine(config: EngineConfig) -> (Engine, u64) {
        let mut engine = Engine::new(config);
        let mut effects = Effects::default();
        let usd = CurrencyCode::parse("USD").expect("code");
        let mut sequence = 0u64;
        let mut run = |engine: &mut Engine, op: Op| {
            sequence += 1;
            let key = IdempotencyKey::new(format!("k{sequence}").as_bytes()).expect("key");
            engine.apply(
                sequence,
                sequence * 1_000_000_000,
                &Command::Client { key, op },
                &mut effects,
            )
        };
        run(
            &mut engine,
            Op::RegisterCurrency {
                code: usd,
                scale: 2,
            },
        );
        run(
            &mut engine,
            Op::SetVelocityLimit {
                tier: Tier::Unverified,
                currency: usd,
                limit_24h: Some(1_000_000),
            },
        );
        run(
            &mut engine,
            Op::SetTier {
                user: UserId(7),
                tier: Tier::Premium,
            },
        );
        let mut wallets = Vec::new();
        for user in 1..=20u128 {
            if let Outcome::Ok(crate::Applied::WalletOpened(w)) = run(
                &mut engine,
                Op::OpenWallet {
                    user: UserId(user),
                    currency: usd,
                },
            ) {
                wallets.push(w);
                run(
                    &mut engine,
                    Op::Deposit {
                        wallet: w,
                        amount: 10_000,
                        currency: usd,
                    },
                );
            }
        }
        for i in 0..20 {
            let (from, to) = (wallets[i], wallets[(i * 7 + 3) % 20]);
            run(
                &mut engine,
                Op::Transfer {
                    from,
                    to,
                    amount: 100 + i as u128,
                    currency: usd,
                },
            );
        }
        run(
            &mut engine,
            Op::Hold {
                wallet: wallets[0],
                amount: 50,
                currency: usd,
                expires_at_ns: Some(u64::MAX),
            },
        );
        run(
            &mut engine,
            Op::Withdraw {
                wallet: wallets[1],
                amount: 70,
                currency: usd,
            },
        );
        run(&mut engine, Op::FreezeWallet { wallet: wallets[2] });
        run(
            &mut engine,
            Op::Transfer {
                from: wallets[3],
                to: wallets[3],
                amount: 1,
                currency: usd,
            },
        );
        (engine, sequence)
    }

    #[test]
    fn image_round_trip_keeps_the_state_hash_and_behaviour() {
        let (engine, sequence) = busy_engine(EngineConfig::default());
        let image = engine.to_image();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&image).expect("serialise");
        let decoded =
            rkyv::from_bytes::<EngineImage, rkyv::rancor::Error>(&bytes).expect("deserialise");
        assert_eq!(decoded, image);
        let mut restored =
            Engine::from_image(EngineConfig::default(), &decoded).expect("valid image");
        assert_eq!(restored.state_hash(), engine.state_hash());
        // The idempotency records came along: a retry returns its first outcome.
        let key = IdempotencyKey::new(b"k5").expect("key");
        assert_eq!(restored.outcome_of(&key), engine.outcome_of(&key));
        // And the restored engine goes on exactly like the original.
        let mut original = engine;
        let mut effects = Effects::default();
        for (i, engine) in [&mut original, &mut restored].into_iter().enumerate() {
            let key = IdempotencyKey::new(b"after").expect("key");
            let op = Op::Deposit {
                wallet: WalletId::new(0, 10),
                amount: 5,
                currency: CurrencyCode::parse("USD").expect("code"),
            };
            let outcome = engine.apply(
                sequence + 1,
                (sequence + 1) * 1_000_000_000,
                &Command::Client { key, op },
                &mut effects,
            );
            assert!(outcome.is_ok(), "engine {i}: {outcome:?}");
        }
        assert_eq!(original.state_hash(), restored.state_hash());
    }

    #[test]
    fn damaged_images_are_refused() {
        let (engine, _) = busy_engine(EngineConfig::default());
        let mut image = engine.to_image();
        image.wallets[10].available += 1;
        assert!(
            Engine::from_image(EngineConfig::default(), &image).is_err(),
            "conservation"
        );
        let mut image = engine.to_image();
        image.wallets[9].open_obligations += 1;
        assert!(
            Engine::from_image(EngineConfig::default(), &image).is_err(),
            "obligations"
        );
        let image = engine.to_image();
        let other = EngineConfig {
            shard_count: 2,
            ..EngineConfig::default()
        };
        assert!(Engine::from_image(other, &image).is_err(), "shard layout");
        let mut image = engine.to_image();
        image.idempotency_keys.pop();
        assert!(
            Engine::from_image(EngineConfig::default(), &image).is_err(),
            "keys"
        );
        let refusal = |image: &EngineImage| {
            Engine::from_image(EngineConfig::default(), image)
                .err()
                .map(|e| e.to_string())
        };
        // Two records of one key: the second keeps its own bytes but repeats the first key.
        let mut image = engine.to_image();
        let (first, second) = (image.idempotency[0], image.idempotency[1]);
        assert_eq!(first.key_len, second.key_len, "fixture keys of one length");
        let len = usize::from(first.key_len);
        let key: Vec<u8> = image.idempotency_keys[..len].to_vec();
        image.idempotency_keys[len..2 * len].copy_from_slice(&key);
        assert!(refusal(&image).is_some_and(|e| e.contains("duplicated")));
        // Records out of time order (a panic before: the insert asserted it).
        let mut image = engine.to_image();
        image.idempotency[1].timestamp_ns = image.idempotency[0].timestamp_ns - 1;
        assert!(refusal(&image).is_some_and(|e| e.contains("time order")));
        // An empty key.
        let mut image = engine.to_image();
        let len0 = usize::from(image.idempotency[0].key_len);
        image.idempotency[0].key_len = 0;
        image.idempotency[1].key_len += len0 as u8;
        assert!(refusal(&image).is_some_and(|e| e.contains("key length")));
        // Two open wallets of one user in one currency (found by the index thread).
        let mut image = engine.to_image();
        let users: Vec<usize> = (0..image.wallets.len())
            .filter(|&i| image.wallets[i].kind == 255)
            .collect();
        let (a, b) = (users[0], users[1]);
        assert_eq!(image.wallets[a].currency, image.wallets[b].currency);
        image.wallets[b].user = image.wallets[a].user;
        assert!(refusal(&image).is_some_and(|e| e.contains("two open wallets")));
        // A damaged wallet and a duplicate at once: the wallet check names its slot first.
        image.wallets[users[2]].status = 9;
        assert!(refusal(&image).is_some_and(|e| e.contains("status 9")));
        // Intact, it loads with every record findable.
        let image = engine.to_image();
        let loaded = Engine::from_image(EngineConfig::default(), &image).expect("loads");
        assert_eq!(loaded.state_hash(), engine.state_hash());
        assert_eq!(loaded.idempotency_entries(), engine.idempotency_entries());
    }
}
