//! Proptest strategies for every frame kind (shared by the integration tests).

#![allow(dead_code)] // each test binary uses a part

use paycore_engine::{
    Applied, Command, CreditLeg, CurrencyCode, CurrencyId, Event, HoldId, IdempotencyKey, Op,
    Outcome, Rate, Reject, ReleaseReason, SettleLeg, SystemRole, Tier, TransferId, TransferKind,
    TransferStatus, UserId, WalletId, WalletKind, WalletStatus,
};
use paycore_protocol::{
    CommandResult, ErrorCode, Frame, HoldView, Query, QueryResult, ShardStatus, StatusView,
    WalletView,
};
use proptest::collection::vec;
use proptest::prelude::*;

pub fn code(text: &str) -> CurrencyCode {
    CurrencyCode::parse(text).expect("valid code")
}

pub fn arb_code() -> impl Strategy<Value = CurrencyCode> {
    "[A-Z]{1,10}".prop_map(|s| code(&s))
}

pub fn arb_tier() -> impl Strategy<Value = Tier> {
    prop_oneof![
        Just(Tier::Unverified),
        Just(Tier::Verified),
        Just(Tier::Premium)
    ]
}

pub fn arb_reject() -> impl Strategy<Value = Reject> {
    (0..Reject::ALL.len()).prop_map(|i| Reject::ALL[i])
}

pub fn arb_key() -> impl Strategy<Value = IdempotencyKey> {
    prop_oneof![
        3 => vec(any::<u8>(), 1..=40),
        1 => vec(any::<u8>(), 1..=255),
    ]
    .prop_map(|k| IdempotencyKey::new(&k).expect("valid length"))
}

pub fn arb_simple_op() -> impl Strategy<Value = Op> {
    let w = any::<u64>().prop_map(WalletId);
    prop_oneof![
        (arb_code(), any::<u8>()).prop_map(|(code, scale)| Op::RegisterCurrency { code, scale }),
        (arb_tier(), arb_code(), any::<Option<u128>>()).prop_map(|(tier, currency, limit_24h)| {
            Op::SetVelocityLimit {
                tier,
                currency,
                limit_24h,
            }
        }),
        (any::<u128>(), arb_tier()).prop_map(|(u, tier)| Op::SetTier {
            user: UserId(u),
            tier
        }),
        (any::<u128>(), arb_code()).prop_map(|(u, currency)| Op::OpenWallet {
            user: UserId(u),
            currency
        }),
        w.clone().prop_map(|wallet| Op::CloseWallet { wallet }),
        (w.clone(), any::<u128>(), arb_code()).prop_map(|(wallet, amount, currency)| {
            Op::Deposit {
                wallet,
                amount,
                currency,
            }
        }),
        (w.clone(), w.clone(), any::<u128>(), arb_code()).prop_map(
            |(from, to, amount, currency)| Op::Transfer {
                from,
                to,
                amount,
                currency
            }
        ),
        (w.clone(), any::<u128>(), arb_code(), any::<Option<u64>>()).prop_map(
            |(wallet, amount, currency, expires_at_ns)| Op::Hold {
                wallet,
                amount,
                currency,
                expires_at_ns
            }
        ),
        (any::<u64>(), any::<Option<u128>>(), any::<Option<u64>>()).prop_map(|(h, amount, to)| {
            Op::Capture {
                hold: HoldId(h),
                amount,
                to: to.map(WalletId),
            }
        }),
        any::<u64>().prop_map(|h| Op::Release { hold: HoldId(h) }),
        (w.clone(), any::<u128>(), arb_code()).prop_map(|(wallet, amount, currency)| {
            Op::Withdraw {
                wallet,
                amount,
                currency,
            }
        }),
        w.clone().prop_map(|wallet| Op::FreezeWallet { wallet }),
        w.clone().prop_map(|wallet| Op::UnfreezeWallet { wallet }),
        (w.clone(), w, any::<u128>(), 1u128..1_000_000, 0u8..=18).prop_map(
            |(from, to, amount, m, s)| Op::Exchange {
                from,
                to,
                amount,
                rate: Rate::new(m, s).expect("in range"),
            }
        ),
    ]
}

pub fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => arb_simple_op(),
        1 => vec(arb_simple_op(), 0..6).prop_map(Op::Linked),
    ]
}

pub fn arb_client_command() -> impl Strategy<Value = Command> {
    (arb_key(), arb_op()).prop_map(|(key, op)| Command::Client { key, op })
}

/// Commands a client may not submit.
pub fn arb_internal_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            any::<u128>(),
            any::<u64>(),
            any::<u64>(),
            any::<u128>(),
            arb_code(),
            any::<u64>()
        )
            .prop_map(|(t, f, to, amount, currency, origin_sequence)| {
                Command::CreditLeg(CreditLeg {
                    transfer: TransferId(t),
                    from: WalletId(f),
                    to: WalletId(to),
                    amount,
                    currency,
                    origin_sequence,
                    settled_through: t / 2,
                })
            }),
        (
            any::<u128>(),
            any::<u16>(),
            any::<u64>(),
            proptest::option::of(arb_reject())
        )
            .prop_map(
                |(t, from_shard, from_sequence, refused)| Command::SettleLeg(SettleLeg {
                    transfer: TransferId(t),
                    from_shard,
                    from_sequence,
                    refused,
                })
            ),
        Just(Command::Tick),
    ]
}

pub fn arb_outcome() -> impl Strategy<Value = Outcome> {
    let applied = prop_oneof![
        Just(Applied::Done),
        any::<u64>().prop_map(|w| Applied::WalletOpened(WalletId(w))),
        any::<u16>().prop_map(|c| Applied::CurrencyRegistered(CurrencyId(c))),
        (any::<u128>(), any::<bool>()).prop_map(|(t, pending)| Applied::Transferred {
            transfer: TransferId(t),
            pending
        }),
        any::<u64>().prop_map(|h| Applied::HoldPlaced(HoldId(h))),
        (any::<u128>(), any::<u128>()).prop_map(|(t, credited)| Applied::Exchanged {
            transfer: TransferId(t),
            credited
        }),
        any::<u16>().prop_map(|ops| Applied::Linked { ops }),
    ];
    prop_oneof![
        applied.prop_map(Outcome::Ok),
        arb_reject().prop_map(Outcome::Rejected),
        (any::<u16>(), arb_reject())
            .prop_map(|(index, reason)| Outcome::LinkedRejected { index, reason }),
    ]
}

pub fn arb_command_result() -> impl Strategy<Value = CommandResult> {
    prop_oneof![
        8 => arb_outcome().prop_map(CommandResult::Outcome),
        1 => Just(CommandResult::Busy),
        1 => Just(CommandResult::ShardUnavailable),
        1 => Just(CommandResult::DiskFull),
    ]
}

pub fn arb_wallet_status() -> impl Strategy<Value = WalletStatus> {
    prop_oneof![
        Just(WalletStatus::Active),
        Just(WalletStatus::Frozen),
        Just(WalletStatus::Closed)
    ]
}

pub fn arb_transfer_status() -> impl Strategy<Value = TransferStatus> {
    prop_oneof![
        Just(TransferStatus::Completed),
        Just(TransferStatus::Pending),
        arb_reject().prop_map(TransferStatus::Bounced),
    ]
}

pub fn arb_transfer_kind() -> impl Strategy<Value = TransferKind> {
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

pub fn arb_event() -> impl Strategy<Value = Event> {
    let w = any::<u64>().prop_map(WalletId);
    let u = any::<u128>().prop_map(UserId);
    let c = any::<u16>().prop_map(CurrencyId);
    prop_oneof![
        (c.clone(), any::<u8>())
            .prop_map(|(currency, scale)| Event::CurrencyRegistered { currency, scale }),
        (w.clone(), u.clone(), c.clone()).prop_map(|(wallet, user, currency)| {
            Event::WalletOpened {
                wallet,
                user,
                currency,
            }
        }),
        (w.clone(), u.clone(), arb_wallet_status()).prop_map(|(wallet, user, status)| {
            Event::WalletStatusChanged {
                wallet,
                user,
                status,
            }
        }),
        (u.clone(), arb_tier()).prop_map(|(user, tier)| Event::TierChanged { user, tier }),
        (
            w.clone(),
            u,
            c.clone(),
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
            arb_transfer_kind(),
            w.clone(),
            w.clone(),
            any::<u128>(),
            c,
            arb_transfer_status()
        )
            .prop_map(
                |(t, kind, from, to, amount, currency, status)| Event::Transfer {
                    transfer: TransferId(t),
                    kind,
                    from,
                    to,
                    amount,
                    currency,
                    status,
                }
            ),
        (any::<u128>(), arb_transfer_status()).prop_map(|(t, status)| Event::TransferSettled {
            transfer: TransferId(t),
            status
        }),
        (
            any::<u64>(),
            w.clone(),
            any::<u128>(),
            any::<Option<u64>>(),
            any::<bool>()
        )
            .prop_map(
                |(h, wallet, amount, expires_at_ns, withdrawal)| Event::HoldPlaced {
                    hold: HoldId(h),
                    wallet,
                    amount,
                    expires_at_ns,
                    withdrawal,
                }
            ),
        (any::<u64>(), w.clone(), any::<u128>(), any::<u128>()).prop_map(
            |(h, wallet, captured, released)| Event::HoldCaptured {
                hold: HoldId(h),
                wallet,
                captured,
                released,
            }
        ),
        (any::<u64>(), w, any::<u128>(), any::<bool>()).prop_map(|(h, wallet, amount, expired)| {
            Event::HoldReleased {
                hold: HoldId(h),
                wallet,
                amount,
                reason: if expired {
                    ReleaseReason::Expired
                } else {
                    ReleaseReason::Released
                },
            }
        }),
    ]
}

pub fn arb_wallet_kind() -> impl Strategy<Value = WalletKind> {
    prop_oneof![
        3 => Just(WalletKind::User),
        1 => (0..SystemRole::ALL.len()).prop_map(|i| WalletKind::System(SystemRole::ALL[i])),
    ]
}

pub fn arb_wallet_view() -> impl Strategy<Value = WalletView> {
    (
        (
            any::<u64>(),
            any::<u128>(),
            arb_wallet_kind(),
            arb_code(),
            0u8..=18,
        ),
        (
            any::<i128>(),
            any::<i128>(),
            any::<u64>(),
            arb_wallet_status(),
        ),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (id, user, kind, currency, scale),
                (available, frozen, version, status),
                (created_at_ns, updated_at_ns),
            )| WalletView {
                id: WalletId(id),
                user: UserId(user),
                kind,
                currency,
                scale,
                available,
                frozen,
                version,
                status,
                created_at_ns,
                updated_at_ns,
            },
        )
}

pub fn arb_hold_view() -> impl Strategy<Value = HoldView> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u128>(),
        any::<Option<u64>>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, wallet, amount, expires_at_ns, withdrawal, created_at_ns)| HoldView {
                id: HoldId(id),
                wallet: WalletId(wallet),
                amount,
                expires_at_ns,
                withdrawal,
                created_at_ns,
            },
        )
}

pub fn arb_shard() -> impl Strategy<Value = u16> {
    0u16..paycore_engine::SHARD_COUNT_MAX
}

pub fn arb_shard_status() -> impl Strategy<Value = ShardStatus> {
    (
        arb_shard(),
        proptest::array::uniform10(any::<u64>()),
        prop_oneof![4 => Just(Vec::new()), 1 => vec(any::<u64>(), 0..4)],
    )
        .prop_map(|(shard, f, extra)| ShardStatus {
            shard,
            last_sequence: f[0],
            durable_sequence: f[1],
            last_timestamp_ns: f[2],
            ring_depth: f[3],
            ring_capacity: f[4],
            wallets: f[5],
            open_holds: f[6],
            transfers_in_flight: f[7],
            idempotency_entries: f[8],
            idempotency_evicted_early: f[9],
            extra,
        })
}

pub fn arb_query() -> impl Strategy<Value = Query> {
    prop_oneof![
        any::<u64>().prop_map(|w| Query::WalletById(WalletId(w))),
        any::<u128>().prop_map(|u| Query::WalletsOfUser(UserId(u))),
        any::<u64>().prop_map(|h| Query::HoldById(HoldId(h))),
        (arb_shard(), arb_key()).prop_map(|(shard, key)| Query::OutcomeByKey { shard, key }),
        Just(Query::Status),
    ]
}

pub fn arb_query_result() -> impl Strategy<Value = QueryResult> {
    prop_oneof![
        proptest::option::of(arb_wallet_view()).prop_map(QueryResult::Wallet),
        vec(arb_wallet_view(), 0..5).prop_map(QueryResult::Wallets),
        proptest::option::of(arb_hold_view()).prop_map(QueryResult::Hold),
        proptest::option::of(arb_outcome()).prop_map(QueryResult::Outcome),
        vec(arb_shard_status(), 0..4).prop_map(|shards| QueryResult::Status(StatusView { shards })),
    ]
}

/// Resume positions with distinct shards.
pub fn arb_positions() -> impl Strategy<Value = Vec<(u16, u64)>> {
    proptest::collection::btree_map(arb_shard(), any::<u64>(), 0..6)
        .prop_map(|map| map.into_iter().collect())
        .prop_shuffle()
}

pub fn arb_events_frame() -> impl Strategy<Value = Frame> {
    (
        arb_shard(),
        any::<u64>(),
        any::<u64>(),
        vec(arb_event(), 0..8),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(shard, sequence, timestamp_ns, events, a, b)| {
            let count = events.len() as u32;
            let (first_index, events_total) = if count == 0 {
                (0, 0)
            } else {
                // Any range that holds the events.
                let first_index = a % (u32::MAX - count);
                let room = u32::MAX - first_index - count;
                (first_index, first_index + count + b % (room + 1))
            };
            Frame::Events {
                shard,
                sequence,
                timestamp_ns,
                first_index,
                events_total,
                events,
            }
        })
}

pub fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        (0..ErrorCode::ALL.len()).prop_map(|i| ErrorCode::ALL[i]),
        any::<u16>().prop_map(ErrorCode),
    ]
}

pub fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..=paycore_protocol::AUTH_TOKEN_BYTES_MAX)
            .prop_map(|token| Frame::Authenticate { token }),
        1 => "[a-z_]{0,32}".prop_map(|role| Frame::Authenticated { role }),
        3 => vec(arb_client_command(), 1..12).prop_map(|commands| Frame::SubmitBatch { commands }),
        2 => vec(arb_command_result(), 1..12).prop_map(|results| Frame::BatchResult { results }),
        1 => arb_query().prop_map(Frame::Query),
        2 => arb_query_result().prop_map(Frame::QueryResult),
        1 => arb_positions().prop_map(|from| Frame::Subscribe { from }),
        2 => arb_events_frame(),
        1 => (arb_error_code(), "\\PC{0,40}")
            .prop_map(|(code, message)| Frame::Error { code, message }),
        1 => (0u16..1024, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(shard, from_sequence, last_epoch, epoch)| Frame::ReplicaHello {
                shard,
                from_sequence,
                last_epoch,
                epoch,
            }
        ),
        1 => (0u16..1024, any::<u64>(), any::<u8>(), vec((any::<u64>(), any::<u64>()), 0..6)).prop_map(
            |(shard, epoch, mode, history)| Frame::ReplicaWelcome {
                shard,
                epoch,
                mode,
                history: history
                    .into_iter()
                    .map(|(epoch, first_sequence)| paycore_protocol::EpochStart {
                        epoch,
                        first_sequence,
                    })
                    .collect(),
            }
        ),
        1 => (0u16..1024, any::<u64>(), vec(any::<u8>(), 0..200)).prop_map(
            |(shard, primary_durable, records)| Frame::ReplicaRecords {
                shard,
                primary_durable,
                records,
            }
        ),
        1 => (0u16..1024, any::<u64>()).prop_map(|(shard, durable_sequence)| {
            Frame::ReplicaAck {
                shard,
                durable_sequence,
            }
        }),
        1 => (0u16..1024, any::<u64>(), any::<u64>()).prop_map(|(shard, epoch, keep_through)| {
            Frame::ReplicaDiverged {
                shard,
                epoch,
                keep_through,
            }
        }),
        1 => prop_oneof![
            Just(paycore_protocol::AdminCommand::Status),
            any::<bool>().prop_map(|force| paycore_protocol::AdminCommand::Promote { force }),
        ]
        .prop_map(Frame::Admin),
        1 => "\\PC{0,60}".prop_map(|json| Frame::AdminResult { json }),
        1 => (0u16..1024).prop_map(|shard| Frame::ReplicaSnapshotRequest { shard }),
        1 => (0u16..1024, any::<u64>(), any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..100)).prop_map(
            |(shard, sequence, total_bytes, offset, bytes)| Frame::ReplicaSnapshotChunk {
                shard,
                sequence,
                total_bytes,
                offset,
                bytes,
            }
        ),
    ]
}
