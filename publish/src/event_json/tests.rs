//! The schema test: every event the engine can emit, encoded, validates against its schema
//! file; a schema file that changed without a new version fails.

use std::collections::HashSet;
use std::path::PathBuf;

use paycore_engine::{
    Command, CurrencyId, Effects, Engine, Event, HoldId, IdempotencyKey, Op, Reject, ReleaseReason,
    Tier, TransferId, TransferKind, TransferStatus, UserId, WalletId, WalletStatus,
};
use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/events")
}

fn schema(name: &str, version: u32) -> Value {
    let path = schemas_dir().join(format!("{name}.v{version}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

thread_local! {
    static PATTERNS: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
        std::cell::RefCell::default();
}

fn matches_pattern(pattern: &str, text: &str) -> Result<bool, String> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            let regex = regex::Regex::new(pattern).map_err(|e| e.to_string())?;
            cache.insert(pattern.to_string(), regex);
        }
        Ok(cache[pattern].is_match(text))
    })
}

/// The subset of JSON Schema our files use: type (one or a list), const, enum, pattern,
/// minimum, maximum, required, properties, additionalProperties false. Anything else in a
/// schema is refused, so a file cannot say more than is checked.
fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(rules) = schema.as_object() else {
        return Err(format!("{at}: schema is not an object"));
    };
    for (key, rule) in rules {
        match key.as_str() {
            "$schema" | "$id" | "title" | "description" => {}
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{at}: bad type rule")),
                };
                let ok = types.iter().any(|t| match *t {
                    "string" => value.is_string(),
                    "integer" => value.is_u64() || value.is_i64(),
                    "boolean" => value.is_boolean(),
                    "object" => value.is_object(),
                    "null" => value.is_null(),
                    _ => false,
                });
                if !ok {
                    return Err(format!("{at}: {value} is not of type {types:?}"));
                }
            }
            "const" if rule != value => return Err(format!("{at}: {value} is not {rule}")),
            "const" => {}
            "enum" => {
                if !rule.as_array().is_some_and(|all| all.contains(value)) {
                    return Err(format!("{at}: {value} not in {rule}"));
                }
            }
            "pattern" => {
                if let Some(text) = value.as_str() {
                    let pattern = rule.as_str().ok_or(format!("{at}: bad pattern"))?;
                    if !matches_pattern(pattern, text)? {
                        return Err(format!("{at}: {text:?} does not match {pattern}"));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let (Some(v), Some(bound)) = (value.as_f64(), rule.as_f64()) {
                    let ok = if key == "minimum" {
                        v >= bound
                    } else {
                        v <= bound
                    };
                    if !ok {
                        return Err(format!("{at}: {v} breaks {key} {bound}"));
                    }
                }
            }
            "required" => {
                for field in rule.as_array().into_iter().flatten() {
                    let field = field.as_str().unwrap_or_default();
                    if value.get(field).is_none() {
                        return Err(format!("{at}: missing {field}"));
                    }
                }
            }
            "additionalProperties" => {
                if rule != &Value::Bool(false) {
                    return Err(format!(
                        "{at}: only additionalProperties: false is supported"
                    ));
                }
                let known = schema.get("properties").and_then(Value::as_object);
                for field in value.as_object().into_iter().flatten().map(|(k, _)| k) {
                    if !known.is_some_and(|k| k.contains_key(field)) {
                        return Err(format!("{at}: field {field} is not in the schema"));
                    }
                }
            }
            "properties" => {
                for (field, sub) in rule.as_object().into_iter().flatten() {
                    if let Some(v) = value.get(field) {
                        validate(sub, v, &format!("{at}.{field}"))?;
                    }
                }
            }
            other => return Err(format!("{at}: schema keyword {other} is not checked")),
        }
    }
    Ok(())
}

/// A fixed world for arbitrary events: two currencies, wallets of shard 0 in USD.
struct World;

impl Currencies for World {
    fn currency(&self, currency: CurrencyId) -> Option<(String, u8)> {
        match currency.0 {
            1 => Some(("USD".into(), 2)),
            2 => Some(("JPY".into(), 0)),
            _ => Some(("BTC".into(), 8)),
        }
    }

    fn wallet_currency(&self, _wallet: WalletId) -> Option<CurrencyId> {
        Some(CurrencyId(1))
    }
}

fn check(event: &Event, meta: &EventMeta, currencies: &impl Currencies) -> Result<(), String> {
    let mut out = String::new();
    encode(event, meta, currencies, &mut out);
    let value: Value = serde_json::from_str(&out).map_err(|e| format!("{out}: {e}"))?;
    let (name, version, _) = type_entry(event);
    validate(&schema(name, version), &value, name).map_err(|e| format!("{e}\n{out}"))
}

fn arb_reject() -> impl Strategy<Value = Reject> {
    prop_oneof![
        Just(Reject::InsufficientFunds),
        Just(Reject::WalletFrozen),
        Just(Reject::WalletNotFound),
    ]
}

fn arb_status() -> impl Strategy<Value = TransferStatus> {
    prop_oneof![
        Just(TransferStatus::Completed),
        Just(TransferStatus::Pending),
        arb_reject().prop_map(TransferStatus::Bounced),
    ]
}

fn arb_kind() -> impl Strategy<Value = TransferKind> {
    prop_oneof![
        Just(TransferKind::Deposit),
        Just(TransferKind::Transfer),
        Just(TransferKind::Capture),
        Just(TransferKind::Withdrawal),
        Just(TransferKind::ExchangeOut),
        Just(TransferKind::ExchangeIn),
        Just(TransferKind::Refund),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    let currency = (0u16..4).prop_map(CurrencyId);
    let wallet = any::<u64>().prop_map(WalletId);
    let user = any::<u128>().prop_map(UserId);
    prop_oneof![
        (currency.clone(), 0u8..=18)
            .prop_map(|(currency, scale)| Event::CurrencyRegistered { currency, scale }),
        (wallet.clone(), user.clone(), currency.clone()).prop_map(|(wallet, user, currency)| {
            Event::WalletOpened {
                wallet,
                user,
                currency,
            }
        }),
        (
            wallet.clone(),
            user.clone(),
            prop_oneof![
                Just(WalletStatus::Active),
                Just(WalletStatus::Frozen),
                Just(WalletStatus::Closed)
            ]
        )
            .prop_map(|(wallet, user, status)| Event::WalletStatusChanged {
                wallet,
                user,
                status
            }),
        (
            user.clone(),
            prop_oneof![
                Just(Tier::Unverified),
                Just(Tier::Verified),
                Just(Tier::Premium)
            ]
        )
            .prop_map(|(user, tier)| Event::TierChanged { user, tier }),
        (
            wallet.clone(),
            user,
            currency.clone(),
            any::<i128>(),
            any::<i128>(),
            any::<u64>()
        )
            .prop_map(|(wallet, user, currency, available, frozen, version)| {
                Event::BalanceChanged {
                    wallet,
                    user,
                    currency,
                    available,
                    frozen,
                    version,
                }
            }),
        (
            any::<u128>(),
            arb_kind(),
            wallet.clone(),
            wallet.clone(),
            any::<u128>(),
            currency,
            arb_status()
        )
            .prop_map(|(transfer, kind, from, to, amount, currency, status)| {
                Event::Transfer {
                    transfer: TransferId(transfer),
                    kind,
                    from,
                    to,
                    amount: amount >> 1, // amounts fit i128 (the engine's maximum is far below)
                    currency,
                    status,
                }
            }),
        (any::<u128>(), arb_status()).prop_map(|(t, status)| Event::TransferSettled {
            transfer: TransferId(t),
            status
        }),
        (
            any::<u64>(),
            wallet.clone(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<bool>()
        )
            .prop_map(
                |(h, wallet, amount, expires_at_ns, withdrawal)| Event::HoldPlaced {
                    hold: HoldId(h),
                    wallet,
                    amount: u128::from(amount),
                    expires_at_ns,
                    withdrawal
                }
            ),
        (any::<u64>(), wallet.clone(), any::<u64>(), any::<u64>()).prop_map(
            |(h, wallet, captured, released)| Event::HoldCaptured {
                hold: HoldId(h),
                wallet,
                captured: u128::from(captured),
                released: u128::from(released)
            }
        ),
        (any::<u64>(), wallet, any::<u64>(), any::<bool>()).prop_map(
            |(h, wallet, amount, expired)| Event::HoldReleased {
                hold: HoldId(h),
                wallet,
                amount: u128::from(amount),
                reason: if expired {
                    ReleaseReason::Expired
                } else {
                    ReleaseReason::Released
                }
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Every variant, with arbitrary field values, validates against its schema.
    #[test]
    fn arbitrary_events_match_their_schema(
        event in arb_event(),
        shard in any::<u16>(),
        sequence in 1u64..u64::MAX,
        index in any::<u32>(),
        epoch in any::<u64>(),
        timestamp_ns in any::<u64>(),
    ) {
        let meta = EventMeta {
            position: EventPosition { shard, sequence, index },
            epoch,
            timestamp_ns,
        };
        if let Err(error) = check(&event, &meta, &World) {
            prop_assert!(false, "{}", error);
        }
    }
}

/// Events as the engine emits them, from a mixed multi-shard workload (every operation):
/// each validates against its schema, and every event type occurs.
#[test]
fn engine_events_of_every_kind_match_their_schema() {
    use paycore_store::workload::{Workload, WorkloadConfig};
    let config = WorkloadConfig {
        shards: 2,
        seed: 7,
        users: 200,
        start_ns: 1_767_225_600_000_000_000,
        step_ns: 1_000_000_000, // holds expire within the run
        transfers_only: false,
        legs_in_flight_max: None,
    };
    let mut workload = Workload::new(config);
    let mut engines: Vec<Engine> = (0..config.shards)
        .map(|s| Engine::new(Workload::engine_config(&config, s)))
        .collect();
    let mut records = Vec::new();
    workload.generate(0, &mut records);
    workload.generate(5_000, &mut records);
    workload.drain_legs(&mut records);
    // Tier changes and freezes are rare in the mix: a few explicit ones after it.
    let last = records
        .iter()
        .filter(|r| r.shard == 0)
        .map(|r| (r.sequence, r.timestamp_ns))
        .max();
    let (mut sequence, timestamp_ns) = last.unwrap_or((0, config.start_ns));
    let opened = {
        let mut probe = Effects::default();
        let mut engine = Engine::new(Workload::engine_config(&config, 0));
        let mut found = None;
        for record in records.iter().filter(|r| r.shard == 0) {
            probe.clear();
            engine.apply(
                record.sequence,
                record.timestamp_ns,
                &record.command,
                &mut probe,
            );
            for event in &probe.events {
                if let Event::WalletOpened { wallet, user, .. } = event {
                    found.get_or_insert((*wallet, *user));
                }
            }
        }
        found.expect("the workload opens wallets")
    };
    for (n, op) in [
        Op::SetTier {
            user: opened.1,
            tier: Tier::Premium,
        },
        Op::FreezeWallet { wallet: opened.0 },
        Op::UnfreezeWallet { wallet: opened.0 },
    ]
    .into_iter()
    .enumerate()
    {
        sequence += 1;
        let key = IdempotencyKey::new(format!("schema-test-{n}").as_bytes()).expect("key");
        records.push(paycore_store::workload::Record {
            shard: 0,
            sequence,
            timestamp_ns: timestamp_ns + 1,
            command: Command::Client { key, op },
        });
    }
    let mut effects = Effects::default();
    let mut seen = HashSet::new();
    for record in &records {
        let engine = &mut engines[usize::from(record.shard)];
        effects.clear();
        engine.apply(
            record.sequence,
            record.timestamp_ns,
            &record.command,
            &mut effects,
        );
        for (index, event) in effects.events.iter().enumerate() {
            let meta = EventMeta {
                position: EventPosition {
                    shard: record.shard,
                    sequence: record.sequence,
                    index: index as u32,
                },
                epoch: 1,
                timestamp_ns: record.timestamp_ns,
            };
            if let Err(error) = check(event, &meta, &*engine) {
                panic!("{error}");
            }
            seen.insert(type_name(event));
        }
    }
    let missing: Vec<_> = EVENT_TYPES
        .iter()
        .map(|(n, _, _)| *n)
        .filter(|n| !seen.contains(n))
        .collect();
    // currency_registered and the rarer kinds come from the workload's set-up and mix; a
    // kind missing here means the workload no longer covers it.
    assert!(
        missing.is_empty(),
        "event types never emitted by the workload: {missing:?}"
    );
}

#[test]
fn every_type_is_listed_once_and_has_a_schema_file() {
    let names: HashSet<_> = EVENT_TYPES.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(names.len(), EVENT_TYPES.len());
    for (name, version, _) in EVENT_TYPES {
        let schema = schema(name, version);
        assert_eq!(schema["properties"]["type"]["const"], name);
        assert_eq!(schema["properties"]["version"]["const"], version);
    }
}

/// `schemas/events/VERSIONS` records the SHA-256 of every released schema file. Editing a
/// released file fails here: a changed event is a new version (a new file, a new line, and
/// the version in EVENT_TYPES), so consumers of the old one are never surprised.
#[test]
fn a_schema_never_changes_without_a_new_version() {
    let lock = std::fs::read_to_string(schemas_dir().join("VERSIONS")).expect("VERSIONS");
    let mut released = std::collections::HashMap::new();
    for line in lock
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            3,
            "VERSIONS line {line:?}: <type> <version> <sha256>"
        );
        released.insert(
            (fields[0].to_string(), fields[1].to_string()),
            fields[2].to_string(),
        );
    }
    for (name, version, _) in EVENT_TYPES {
        let path = schemas_dir().join(format!("{name}.v{version}.json"));
        let bytes = std::fs::read(&path).expect("schema file");
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let recorded = released.get(&(name.to_string(), version.to_string()));
        assert_eq!(
            recorded,
            Some(&hex),
            "{} changed (or is new) without a version line in schemas/events/VERSIONS: a \
             changed event needs a new version (new file, new line, EVENT_TYPES bumped)",
            path.display()
        );
    }
}

#[test]
fn event_ids_read_back() {
    let position = EventPosition {
        shard: 3,
        sequence: 123_456_789,
        index: 2,
    };
    assert_eq!(EventPosition::parse(&position.id()), Some(position));
    assert_eq!(EventPosition::parse("3-1"), None);
    assert_eq!(EventPosition::parse("3-1-2-4"), None);
    assert_eq!(EventPosition::parse("x-1-2"), None);
    assert_eq!(
        rfc3339(1_767_225_600_123_456_789),
        "2026-01-01T00:00:00.123456789Z"
    );
}
