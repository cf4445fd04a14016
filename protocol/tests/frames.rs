//! Round trips of every frame kind, truncations, extensions, random and mutated bytes
//! (the decoder's fuzzing), streaming, limits, and the encoder's refusals.
//!
//! For a longer fuzzing run: `PROPTEST_CASES=200000 cargo test --release -p paycore-protocol`.

mod strategies;

use paycore_engine::codec::encode_command;
use paycore_engine::{
    Command, CurrencyId, Event, IdempotencyKey, LINKED_OPS_MAX, Op, Rate, UserId, WalletId,
};
use paycore_protocol::{
    BATCH_COMMANDS_MAX, COMMAND_BYTES_MAX, CommandResult, ERROR_MESSAGE_BYTES_MAX,
    EVENTS_PER_FRAME_MAX, EncodeError, ErrorCode, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, Frame,
    FrameKind, FrameReader, ProtocolErrorKind, Query, QueryResult, decode, encode, frame_bytes,
};
use proptest::prelude::*;
use strategies::*;

fn encoded(frame: &Frame, request_id: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(frame, request_id, &mut bytes).expect("frame encodes");
    bytes
}

/// Rewrites the length field to match the buffer (when it has one).
fn fix_length(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let length = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&length.to_le_bytes());
    }
}

/// Decodes `bytes`, and if they decode, checks they are the one encoding of what they decode
/// to. Also feeds them to a `FrameReader`, which must agree.
fn decode_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoded = decode(bytes);
    if let Ok((request_id, frame)) = &decoded {
        let mut again = Vec::new();
        prop_assert_eq!(encode(frame, *request_id, &mut again), Ok(()));
        prop_assert_eq!(
            &again,
            &bytes.to_vec(),
            "decoded frame re-encodes differently"
        );
    }
    // A reader given the same bytes takes the first frame, if the header allows one.
    let mut reader = FrameReader::new();
    reader.extend(bytes);
    let read = reader.next_frame();
    match frame_bytes(bytes, FRAME_BYTES_MAX) {
        Ok(Some(len)) => {
            let first = decode(&bytes[..len]);
            prop_assert_eq!(read, first.map(Some));
            if len < bytes.len() {
                prop_assert_eq!(
                    decoded.map_err(|e| (e.offset, e.kind)),
                    Err((len, ProtocolErrorKind::TrailingBytes))
                );
            }
        }
        Ok(None) => {
            prop_assert_eq!(read, Ok(None));
            prop_assert_eq!(
                decoded.map_err(|e| e.kind),
                Err(ProtocolErrorKind::Truncated)
            );
        }
        Err(error) => {
            prop_assert_eq!(read, Err(error));
            prop_assert_eq!(decoded, Err(error));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in arb_frame(), request_id in any::<u64>()) {
        let bytes = encoded(&frame, request_id);
        prop_assert_eq!(frame_bytes(&bytes, FRAME_BYTES_MAX), Ok(Some(bytes.len())));
        prop_assert_eq!(decode(&bytes), Ok((request_id, frame.clone())));
        let mut reader = FrameReader::new();
        reader.extend(&bytes);
        prop_assert_eq!(reader.next_frame(), Ok(Some((request_id, frame))));
        prop_assert_eq!(reader.next_frame(), Ok(None));
        prop_assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn truncations_are_errors_or_need_more(frame in arb_frame()) {
        let bytes = encoded(&frame, 7);
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            // As received so far: need more bytes.
            let mut reader = FrameReader::new();
            reader.extend(prefix);
            prop_assert_eq!(reader.next_frame(), Ok(None));
            prop_assert_eq!(
                decode(prefix).map_err(|e| e.kind),
                Err(ProtocolErrorKind::Truncated)
            );
            // The same prefix claiming to be whole (its length field rewritten): an error.
            let mut cut = prefix.to_vec();
            fix_length(&mut cut);
            prop_assert!(decode(&cut).is_err(), "a cut frame decoded: {:?}", cut);
        }
    }

    #[test]
    fn extensions_are_trailing_bytes(frame in arb_frame(), extra in any::<u8>()) {
        let mut bytes = encoded(&frame, 7);
        let len = bytes.len();
        bytes.push(extra);
        fix_length(&mut bytes);
        let error = decode(&bytes).expect_err("an extended frame decoded");
        prop_assert_eq!((error.offset, error.kind), (len, ProtocolErrorKind::TrailingBytes));
        prop_assert_eq!(error.request_id, Some(7));
    }

    #[test]
    fn random_bytes_never_panic(
        noise in proptest::collection::vec(any::<u8>(), 0..400),
        kind in 0u8..=8,
    ) {
        decode_checked(&noise)?;
        // The same bytes behind a valid header, so they reach the body decoders.
        let mut framed = vec![0, 0, 0, 0, 1, kind];
        framed.extend_from_slice(&noise);
        fix_length(&mut framed);
        decode_checked(&framed)?;
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in arb_frame(),
        edits in proptest::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..6),
        keep_length in any::<bool>(),
    ) {
        let mut bytes = encoded(&frame, 99);
        for (edit, at, value) in edits {
            let at = at % (bytes.len() + 1);
            match edit {
                0 | 1 if at < bytes.len() => bytes[at] = value,
                2 => bytes.insert(at, value),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(value),
            }
        }
        if !keep_length {
            fix_length(&mut bytes);
        }
        decode_checked(&bytes)?;
    }

    #[test]
    fn a_stream_in_any_pieces_gives_the_same_frames(
        frames in proptest::collection::vec((arb_frame(), any::<u64>()), 1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for (frame, id) in &frames {
            encode(frame, *id, &mut stream).expect("frame encodes");
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        let mut from = 0;
        for cut in cuts {
            reader.extend(&stream[from..cut]);
            from = cut;
            while let Some(frame) = reader.next_frame().expect("valid stream") {
                got.push(frame);
            }
        }
        let want: Vec<(u64, Frame)> = frames.into_iter().map(|(f, id)| (id, f)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn internal_commands_are_refused(
        client in proptest::collection::vec(arb_client_command(), 0..4),
        internal in arb_internal_command(),
    ) {
        let mut commands = client;
        let index = commands.len();
        commands.push(internal.clone());
        let frame = Frame::SubmitBatch { commands };
        let mut out = vec![1, 2, 3];
        prop_assert_eq!(
            encode(&frame, 1, &mut out),
            Err(EncodeError::NotClientCommand { index })
        );
        prop_assert_eq!(&out, &vec![1, 2, 3], "a failed encode leaves the buffer as it was");
        // Forged on the wire: refused at the command's first byte.
        let Frame::SubmitBatch { mut commands } = frame else { unreachable!() };
        commands.pop();
        if commands.is_empty() {
            commands.push(deposit(b"k"));
        }
        let mut bytes = encoded(&Frame::SubmitBatch { commands }, 1);
        let at = forge_command(&mut bytes, &internal);
        let error = decode(&bytes).expect_err("an internal command was accepted");
        prop_assert_eq!((error.offset, error.kind), (at, ProtocolErrorKind::NotClientCommand));
        prop_assert_eq!(error.code(), ErrorCode::COMMAND_NOT_ALLOWED);
    }
}

/// Appends `command` to the encoded batch in `bytes` (count and length fixed up); returns the
/// offset of the command's first byte.
fn forge_command(bytes: &mut Vec<u8>, command: &Command) -> usize {
    let count = u16::from_le_bytes([bytes[14], bytes[15]]) + 1;
    bytes[14..16].copy_from_slice(&count.to_le_bytes());
    let mut encoded = Vec::new();
    encode_command(command, &mut encoded);
    bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    let at = bytes.len();
    bytes.extend_from_slice(&encoded);
    fix_length(bytes);
    at
}

fn deposit(key: &[u8]) -> Command {
    Command::Client {
        key: IdempotencyKey::new(key).expect("valid key"),
        op: Op::Deposit {
            wallet: WalletId(1),
            amount: 100,
            currency: code("USD"),
        },
    }
}

/// The longest client command the engine codec encodes.
fn longest_command() -> Command {
    let exchange = Op::Exchange {
        from: WalletId(u64::MAX),
        to: WalletId(u64::MAX),
        amount: u128::MAX,
        rate: Rate::new(1, 18).expect("valid rate"),
    };
    Command::Client {
        key: IdempotencyKey::new(&[0xff; 255]).expect("valid key"),
        op: Op::Linked(vec![exchange; LINKED_OPS_MAX]),
    }
}

#[test]
fn the_longest_command_fits_and_so_does_the_largest_batch() {
    let mut bytes = Vec::new();
    encode_command(&longest_command(), &mut bytes);
    assert_eq!(bytes.len(), 3459);
    assert!(bytes.len() <= COMMAND_BYTES_MAX);
    let batch = Frame::SubmitBatch {
        commands: vec![longest_command(); BATCH_COMMANDS_MAX],
    };
    let bytes = encoded(&batch, 1);
    assert_eq!(
        bytes.len(),
        FRAME_HEADER_BYTES + 2 + BATCH_COMMANDS_MAX * (4 + 3459)
    );
    assert!(bytes.len() <= FRAME_BYTES_MAX);
    assert_eq!(decode(&bytes), Ok((1, batch)));
}

#[test]
fn frame_layout_is_as_documented() {
    let frame = Frame::Query(Query::WalletById(WalletId(0x0102)));
    let bytes = encoded(&frame, 0x1122_3344_5566_7788);
    assert_eq!(
        bytes,
        [
            19, 0, 0, 0, // length of the rest
            1, // version
            3, // kind: query
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // request id
            1,    // wallet by id
            2, 1, 0, 0, 0, 0, 0, 0, // wallet id
        ]
    );
    let error = encoded(&Frame::error(ErrorCode::FRAME_TOO_LARGE, "big"), 0);
    assert_eq!(
        error,
        [
            17, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, b'b', b'i', b'g'
        ]
    );
}

#[test]
fn header_errors_name_their_offsets_and_codes() {
    let good = encoded(&Frame::Query(Query::Status), 5);
    let check = |bytes: &[u8], offset, kind, code| {
        let error = decode(bytes).expect_err("bad header decoded");
        assert_eq!((error.offset, error.kind), (offset, kind));
        assert_eq!(error.code(), code);
        let Frame::Error { code: sent, .. } = error.to_frame() else {
            panic!("not an error frame")
        };
        assert_eq!(sent, code);
    };
    let mut bad = good.clone();
    bad[4] = 2;
    check(
        &bad,
        4,
        ProtocolErrorKind::UnsupportedVersion(2),
        ErrorCode::UNSUPPORTED_VERSION,
    );
    let mut bad = good.clone();
    bad[5] = 0;
    check(
        &bad,
        5,
        ProtocolErrorKind::UnknownKind(0),
        ErrorCode::UNKNOWN_KIND,
    );
    assert_eq!(decode(&bad).map_err(|e| e.request_id), Err(Some(5)));
    let mut bad = good.clone();
    bad[..4].copy_from_slice(&9u32.to_le_bytes());
    check(
        &bad,
        0,
        ProtocolErrorKind::FrameTooShort { length: 9 },
        ErrorCode::MALFORMED,
    );
    let mut bad = good.clone();
    bad[14] = 9;
    check(
        &bad,
        14,
        ProtocolErrorKind::Tag {
            field: "query",
            tag: 9,
        },
        ErrorCode::MALFORMED,
    );
}

#[test]
fn oversized_frames_are_refused_from_their_length_field() {
    // Four bytes are enough to refuse, so nothing of the frame is ever buffered.
    for length in [FRAME_BYTES_MAX as u32 - 3, u32::MAX] {
        let header = length.to_le_bytes();
        let mut reader = FrameReader::new();
        reader.extend(&header);
        let error = reader
            .next_frame()
            .expect_err("an oversized frame was accepted");
        assert!(matches!(
            error.kind,
            ProtocolErrorKind::FrameTooLarge { .. }
        ));
        assert_eq!(
            (error.offset, error.code()),
            (0, ErrorCode::FRAME_TOO_LARGE)
        );
        assert_eq!(reader.next_frame(), Err(error), "the reader stays failed");
        assert!(decode(&header).is_err());
    }
    // Exactly at the limit: waits for the bytes.
    let mut reader = FrameReader::new();
    reader.extend(&(FRAME_BYTES_MAX as u32 - 4).to_le_bytes());
    assert_eq!(reader.next_frame(), Ok(None));
    // A node's own lower limit.
    let frame = encoded(&Frame::Query(Query::Status), 1);
    let mut reader = FrameReader::with_frame_bytes_max(frame.len() - 1);
    reader.extend(&frame[..4]);
    assert!(matches!(
        reader.next_frame().map_err(|e| e.kind),
        Err(ProtocolErrorKind::FrameTooLarge { .. })
    ));
    let mut reader = FrameReader::with_frame_bytes_max(frame.len());
    reader.extend(&frame);
    assert_eq!(
        reader.next_frame(),
        Ok(Some((1, Frame::Query(Query::Status))))
    );
}

#[test]
fn body_errors_name_their_offsets() {
    let batch = encoded(
        &Frame::SubmitBatch {
            commands: vec![deposit(b"a"), deposit(b"b")],
        },
        3,
    );
    // Count 0 and count over the maximum.
    for count in [0u16, BATCH_COMMANDS_MAX as u16 + 1] {
        let mut bad = batch.clone();
        bad[14..16].copy_from_slice(&count.to_le_bytes());
        let error = decode(&bad).expect_err("bad count decoded");
        assert_eq!(
            (error.offset, error.kind),
            (14, ProtocolErrorKind::BatchSize(usize::from(count)))
        );
        assert_eq!(error.code(), ErrorCode::BATCH_INVALID);
        assert_eq!(error.request_id, Some(3));
    }
    // A command length over the maximum, and an unknown op tag in the second command.
    let mut bad = batch.clone();
    bad[16..20].copy_from_slice(&(COMMAND_BYTES_MAX as u32 + 1).to_le_bytes());
    assert_eq!(
        decode(&bad).map_err(|e| (e.offset, e.kind)),
        Err((
            16,
            ProtocolErrorKind::CommandLength(COMMAND_BYTES_MAX as u32 + 1)
        ))
    );
    let first_len = u32::from_le_bytes(batch[16..20].try_into().expect("4 bytes")) as usize;
    let second = 20 + first_len + 4;
    let mut bad = batch.clone();
    bad[second + 3] = 99; // tag 1, key length 1, key, op tag
    let error = decode(&bad).expect_err("bad op decoded");
    assert_eq!(error.offset, second + 3);
    assert!(matches!(error.kind, ProtocolErrorKind::Command(_)));
    // An error message that is not UTF-8.
    let mut bad = encoded(&Frame::error(ErrorCode::INTERNAL, "abc"), 0);
    bad[19] = 0xff;
    assert_eq!(
        decode(&bad).map_err(|e| (e.offset, e.kind)),
        Err((19, ProtocolErrorKind::MessageUtf8))
    );
    // A duplicate shard in a subscription.
    let mut bad = encoded(
        &Frame::Subscribe {
            from: vec![(1, 10), (2, 20)],
        },
        0,
    );
    bad[26..28].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(
        decode(&bad).map_err(|e| (e.offset, e.kind)),
        Err((26, ProtocolErrorKind::DuplicateShard(1)))
    );
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let refuse = |frame: Frame| {
        let mut out = Vec::new();
        let error = encode(&frame, 0, &mut out).expect_err("an invalid frame encoded");
        assert!(out.is_empty());
        error
    };
    assert_eq!(
        refuse(Frame::SubmitBatch { commands: vec![] }),
        EncodeError::BatchSize(0)
    );
    assert_eq!(
        refuse(Frame::SubmitBatch {
            commands: vec![deposit(b"k"); BATCH_COMMANDS_MAX + 1]
        }),
        EncodeError::BatchSize(BATCH_COMMANDS_MAX + 1)
    );
    assert_eq!(
        refuse(Frame::BatchResult { results: vec![] }),
        EncodeError::BatchSize(0)
    );
    let nested = Command::Client {
        key: IdempotencyKey::new(b"k").expect("valid key"),
        op: Op::Linked(vec![Op::Linked(vec![])]),
    };
    assert_eq!(
        refuse(Frame::SubmitBatch {
            commands: vec![deposit(b"a"), nested]
        }),
        EncodeError::LinkedGroup { index: 1 }
    );
    let long = Command::Client {
        key: IdempotencyKey::new(b"k").expect("valid key"),
        op: Op::Linked(vec![
            Op::Release {
                hold: paycore_engine::HoldId(1)
            };
            LINKED_OPS_MAX + 1
        ]),
    };
    assert_eq!(
        refuse(Frame::SubmitBatch {
            commands: vec![long]
        }),
        EncodeError::LinkedGroup { index: 0 }
    );
    assert_eq!(
        refuse(Frame::Subscribe {
            from: vec![(3, 1), (3, 2)]
        }),
        EncodeError::DuplicateShard(3)
    );
    assert_eq!(
        refuse(Frame::Subscribe {
            from: vec![(1024, 1)]
        }),
        EncodeError::Shard(1024)
    );
    let event = Event::TierChanged {
        user: UserId(1),
        tier: paycore_engine::Tier::Premium,
    };
    let events = |first_index, events_total, count| Frame::Events {
        shard: 0,
        sequence: 1,
        timestamp_ns: 2,
        first_index,
        events_total,
        events: vec![event; count],
    };
    assert_eq!(refuse(events(1, 2, 2)), EncodeError::EventRange);
    assert_eq!(refuse(events(0, 1, 0)), EncodeError::EventRange);
    assert_eq!(
        refuse(events(u32::MAX, u32::MAX, 1)),
        EncodeError::EventRange
    );
    assert!(matches!(
        refuse(events(0, u32::MAX, EVENTS_PER_FRAME_MAX + 1)),
        EncodeError::TooMany { .. }
    ));
    let mut wallet = QueryResult::Wallets(vec![]);
    if let QueryResult::Wallets(wallets) = &mut wallet {
        wallets.push(paycore_protocol::WalletView {
            id: WalletId(1),
            user: UserId(1),
            kind: paycore_engine::WalletKind::User,
            currency: code("USD"),
            scale: 19,
            available: 0,
            frozen: 0,
            version: 1,
            status: paycore_engine::WalletStatus::Active,
            created_at_ns: 0,
            updated_at_ns: 0,
        });
    }
    assert_eq!(refuse(Frame::QueryResult(wallet)), EncodeError::Scale(19));
    assert!(matches!(
        refuse(Frame::Error {
            code: ErrorCode::INTERNAL,
            message: "x".repeat(ERROR_MESSAGE_BYTES_MAX + 1)
        }),
        EncodeError::TooMany { .. }
    ));
    // Frame::error cuts a long message at a character boundary, so it always encodes.
    let frame = Frame::error(ErrorCode::INTERNAL, "é".repeat(ERROR_MESSAGE_BYTES_MAX));
    let Frame::Error { message, .. } = &frame else {
        panic!("not an error frame")
    };
    assert_eq!(message.len(), ERROR_MESSAGE_BYTES_MAX);
    assert_eq!(
        decode(&encoded(&frame, 0)).map(|(_, f)| f),
        Ok(frame.clone())
    );
}

#[test]
fn every_kind_is_covered_and_directions_are_set() {
    let frames = [
        Frame::SubmitBatch {
            commands: vec![deposit(b"k")],
        },
        Frame::BatchResult {
            results: vec![CommandResult::Busy],
        },
        Frame::Query(Query::Status),
        Frame::QueryResult(QueryResult::Hold(None)),
        Frame::Subscribe { from: vec![] },
        Frame::Events {
            shard: 0,
            sequence: 9,
            timestamp_ns: 1,
            first_index: 0,
            events_total: 1,
            events: vec![Event::CurrencyRegistered {
                currency: CurrencyId(0),
                scale: 2,
            }],
        },
        Frame::error(ErrorCode::SHUTTING_DOWN, ""),
        Frame::ReplicaHello {
            shard: 1,
            from_sequence: 10,
            last_epoch: 1,
            epoch: 1,
        },
        Frame::ReplicaWelcome {
            shard: 1,
            epoch: 2,
            mode: 2,
            history: vec![paycore_protocol::EpochStart {
                epoch: 2,
                first_sequence: 7,
            }],
        },
        Frame::ReplicaRecords {
            shard: 1,
            primary_durable: 12,
            records: vec![1, 2, 3],
        },
        Frame::ReplicaAck {
            shard: 1,
            durable_sequence: 12,
        },
        Frame::ReplicaDiverged {
            shard: 1,
            epoch: 2,
            keep_through: 6,
        },
        Frame::Admin(paycore_protocol::AdminCommand::Promote { force: true }),
        Frame::AdminResult { json: "{}".into() },
        Frame::ReplicaSnapshotRequest { shard: 3 },
        Frame::ReplicaSnapshotChunk {
            shard: 3,
            sequence: 100,
            total_bytes: 10,
            offset: 4,
            bytes: vec![9; 6],
        },
        Frame::Authenticate {
            token: b"secret".to_vec(),
        },
        Frame::Authenticated {
            role: "replica".into(),
        },
    ];
    assert_eq!(frames.len(), FrameKind::ALL.len());
    for (frame, kind) in frames.iter().zip(FrameKind::ALL) {
        assert_eq!(frame.kind(), kind);
        assert_eq!(FrameKind::from_u8(kind as u8), Some(kind));
        let bytes = encoded(frame, 1);
        assert_eq!(bytes[5], kind as u8);
        assert_eq!(decode(&bytes), Ok((1, frame.clone())));
        assert!(kind.sent_by_client() || kind.sent_by_node());
    }
    assert!(FrameKind::Error.sent_by_client() && FrameKind::Error.sent_by_node());
    assert!(!FrameKind::Events.sent_by_client() && !FrameKind::SubmitBatch.sent_by_node());
}

#[test]
fn error_codes_are_stable_and_named() {
    let mut names = std::collections::BTreeSet::new();
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(usize::from(code.0), i + 1, "numbers are dense and in order");
        assert!(names.insert(code.name()), "duplicate name {}", code.name());
        assert_ne!(code.name(), "unknown");
    }
    assert_eq!(ErrorCode(999).name(), "unknown");
    assert!(ErrorCode(999).closes_connection());
    assert!(!ErrorCode::SHARD_UNAVAILABLE.closes_connection());
    assert!(ErrorCode::MALFORMED.closes_connection());
}
