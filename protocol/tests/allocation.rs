//! Decoding allocates in proportion to its input: measured with a counting allocator.
//!
//! The one exception to the crate's `forbid(unsafe_code)`, and only in this test binary: a
//! global allocator must be an `unsafe impl`. It only counts bytes and delegates to `System`.
#![allow(unsafe_code)]

mod strategies;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use paycore_protocol::{FRAME_BYTES_MAX, Frame, FrameReader, decode, encode};
use proptest::prelude::*;
use strategies::arb_frame;

struct Counting;

thread_local! {
    /// Bytes this thread allocated and has not freed, and the most since the last reset.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are const-initialised
// thread-locals without destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated (and not yet freed) while `f` runs, including what it returns.
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, usize::try_from(peak - base).unwrap_or(0))
}

/// Decoding `n` bytes may allocate at most this much: the largest in-memory item per encoded
/// byte is a one-byte `busy` result (a 48-byte `CommandResult`), and one linked group reserves
/// its (at most 64) operations before reading them.
fn allowed(input_bytes: usize) -> usize {
    64 * input_bytes + 8 * 1024
}

fn fix_length(bytes: &mut [u8]) {
    let length = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&length.to_le_bytes());
}

proptest! {
    #[test]
    fn decoding_allocates_in_proportion_to_the_input(
        frame in arb_frame(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        counts in any::<u16>(),
    ) {
        let mut bytes = Vec::new();
        encode(&frame, 1, &mut bytes).expect("frame encodes");
        // Mutations, including to count fields (bytes 14..16 are the first count of most kinds).
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if bytes.len() >= 16 && counts % 2 == 0 {
            bytes[14..16].copy_from_slice(&counts.to_le_bytes());
        }
        fix_length(&mut bytes);
        let (decoded, peak) = peak_bytes(|| decode(&bytes));
        prop_assert!(
            peak <= allowed(bytes.len()),
            "{peak} bytes allocated decoding {} bytes ({:?})",
            bytes.len(),
            decoded.map(|(_, f)| f.kind()).map_err(|e| e.kind)
        );
    }
}

#[test]
fn big_counts_in_small_frames_reserve_little() {
    let max = |n: usize| (n as u16).to_le_bytes();
    let mut events = vec![0, 0];
    events.extend_from_slice(&[0; 16]); // sequence, timestamp
    events.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]); // first index, total
    events.extend_from_slice(&max(paycore_protocol::EVENTS_PER_FRAME_MAX));
    let cases: [(u8, Vec<u8>); 7] = [
        (1, max(paycore_protocol::BATCH_COMMANDS_MAX).to_vec()),
        (2, max(paycore_protocol::BATCH_COMMANDS_MAX).to_vec()),
        (
            4,
            [&[2][..], &max(paycore_protocol::QUERY_RESULT_WALLETS_MAX)].concat(),
        ),
        (
            4,
            [&[5][..], &max(paycore_protocol::STATUS_SHARDS_MAX)].concat(),
        ),
        (5, max(paycore_protocol::SUBSCRIBE_SHARDS_MAX).to_vec()),
        (6, events),
        (
            7,
            [&[1, 0][..], &max(paycore_protocol::ERROR_MESSAGE_BYTES_MAX)].concat(),
        ),
    ];
    // Each announces the most items its count allows and holds none of them.
    for (kind, body) in cases {
        let mut bytes = vec![0, 0, 0, 0, 1, kind, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&body);
        fix_length(&mut bytes);
        let (decoded, peak) = peak_bytes(|| decode(&bytes));
        assert!(decoded.is_err());
        assert!(
            peak <= 1024,
            "kind {kind}: {peak} bytes for {} bytes",
            bytes.len()
        );
    }
}

#[test]
fn the_densest_frames_stay_within_the_bound() {
    use paycore_engine::{Command, IdempotencyKey, Op};
    use paycore_protocol::{BATCH_COMMANDS_MAX, CommandResult};
    // One byte per result: the most memory per input byte of any frame.
    let busy = Frame::BatchResult {
        results: vec![CommandResult::Busy; BATCH_COMMANDS_MAX],
    };
    // Linked groups announcing 64 operations and holding none: the codec reserves first.
    let linked = Frame::SubmitBatch {
        commands: vec![
            Command::Client {
                key: IdempotencyKey::new(b"k").expect("valid key"),
                op: Op::Linked(vec![]),
            };
            3
        ],
    };
    for (frame, patch) in [(busy, None), (linked, Some(64u8))] {
        let mut bytes = Vec::new();
        encode(&frame, 1, &mut bytes).expect("frame encodes");
        if let Some(count) = patch {
            // Each command is `len:u32 1 1 k 15 count`: set the last command's count.
            let at = bytes.len() - 1;
            bytes[at] = count;
        }
        let (decoded, peak) = peak_bytes(|| decode(&bytes));
        assert_eq!(decoded.is_ok(), patch.is_none());
        assert!(
            peak <= allowed(bytes.len()),
            "{peak} bytes for {}",
            bytes.len()
        );
    }
}

#[test]
fn an_oversized_length_is_refused_before_buffering() {
    let (result, peak) = peak_bytes(|| {
        let mut reader = FrameReader::new();
        reader.extend(&u32::MAX.to_le_bytes());
        reader.next_frame()
    });
    assert!(result.is_err());
    assert!(peak < 1024, "{peak} bytes");
    let (result, peak) = peak_bytes(|| decode(&(FRAME_BYTES_MAX as u32).to_le_bytes()));
    assert!(result.is_err());
    assert_eq!(peak, 0);
    // A frame announcing the largest legal size holds only what has arrived.
    let (_, peak) = peak_bytes(|| {
        let mut reader = FrameReader::new();
        reader.extend(&(FRAME_BYTES_MAX as u32 - 4).to_le_bytes());
        reader.extend(&[1, 1]);
        let _ = reader.next_frame();
        reader
    });
    assert!(peak < 1024, "{peak} bytes");
    let _ = Frame::Query(paycore_protocol::Query::Status);
}
