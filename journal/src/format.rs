//! The byte layout of segments and records (also written down in `docs/design.md`).
//!
//! All integers little-endian. A segment is a preallocated file that reads as zeros past its last record:
//!
//! ```text
//! segment header, 64 bytes:
//!   0  [u8; 8]  magic "PAYCWAL1"
//!   8  u32      format version (1)
//!  12  u16      shard
//!  14  u16      reserved (0)
//!  16  u64      epoch of the primary that created the segment
//!  24  u64      sequence of the first record
//!  32  u64      segment length in bytes
//!  40  u32      batch_bytes_max of the writer
//!  44  [u8; 16] reserved (0)
//!  60  u32      crc32c of bytes 0..60
//! records from byte 64, each 8-byte aligned:
//!   0  u32  header crc32c (of bytes 4..40)
//!   4  u32  payload length (1..=RECORD_PAYLOAD_BYTES_MAX)
//!   8  u64  sequence
//!  16  u64  epoch
//!  24  u64  timestamp_ns
//!  32  u32  payload crc32c
//!  36  u32  header mark 0xA5C3_5AC5
//!  40  payload, then zero padding to a multiple of 8
//!  end-8  u32  payload length again
//!  end-4  u32  trailer mark 0xC55A_C3A5
//! ```
//! Both marks have at least two bits set in every byte, so no single bit flip can turn an
//! intact record's last byte into zero: that is how recovery tells a record cut short by a
//! crash (its tail is zeros) from a damaged one (see `recovery.rs`).

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PAYCWAL1";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_HEADER_BYTES: usize = 40;
pub const RECORD_TRAILER_BYTES: usize = 8;
/// Largest payload of one record: a command is at most a few KiB (64 operations of a linked
/// group), so anything larger is a bug or damage.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
pub const HEADER_MARK: u32 = 0xA5C3_5AC5;
pub const TRAILER_MARK: u32 = 0xC55A_C3A5;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(8));

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u16,
    pub epoch: u64,
    pub first_sequence: u64,
    pub segment_bytes: u64,
    pub batch_bytes_max: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..14].copy_from_slice(&self.shard.to_le_bytes());
        out[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        out[40..44].copy_from_slice(&self.batch_bytes_max.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` when the bytes are not a valid header of this format.
    pub fn decode(bytes: &[u8]) -> Option<SegmentHeader> {
        let bytes = bytes.get(..SEGMENT_HEADER_BYTES)?;
        if bytes[0..8] != SEGMENT_MAGIC || u32_at(bytes, 8) != FORMAT_VERSION {
            return None;
        }
        if crc32c::crc32c(&bytes[0..60]) != u32_at(bytes, 60) {
            return None;
        }
        Some(SegmentHeader {
            shard: u16::from_le_bytes([bytes[12], bytes[13]]),
            epoch: u64_at(bytes, 16),
            first_sequence: u64_at(bytes, 24),
            segment_bytes: u64_at(bytes, 32),
            batch_bytes_max: u32_at(bytes, 40),
        })
    }
}

/// Bytes a record with `payload_len` bytes of payload takes, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len + RECORD_TRAILER_BYTES).next_multiple_of(8)
}

/// Writes one record into `out` (exactly `record_bytes(payload.len())` long, zeroed).
pub fn write_record(out: &mut [u8], sequence: u64, epoch: u64, timestamp_ns: u64, payload: &[u8]) {
    assert!(!payload.is_empty() && payload.len() <= RECORD_PAYLOAD_BYTES_MAX);
    assert_eq!(out.len(), record_bytes(payload.len()));
    let len = payload.len() as u32;
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    out[16..24].copy_from_slice(&epoch.to_le_bytes());
    out[24..32].copy_from_slice(&timestamp_ns.to_le_bytes());
    out[32..36].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out[36..40].copy_from_slice(&HEADER_MARK.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[4..RECORD_HEADER_BYTES]);
    out[0..4].copy_from_slice(&header_crc.to_le_bytes());
    out[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload.len()].copy_from_slice(payload);
    let end = out.len();
    out[RECORD_HEADER_BYTES + payload.len()..end - 8].fill(0);
    out[end - 8..end - 4].copy_from_slice(&len.to_le_bytes());
    out[end - 4..end].copy_from_slice(&TRAILER_MARK.to_le_bytes());
    debug_assert!(matches!(parse_record(out), Parsed::Record(_)));
}

/// A record as it lies in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub sequence: u64,
    pub epoch: u64,
    pub timestamp_ns: u64,
    pub payload: &'a [u8],
    /// Bytes the record takes in the segment.
    pub bytes: usize,
}

/// What the bytes at a record position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    Record(RecordRef<'a>),
    /// Zeros where a header would start: the end of the written part of the segment.
    End,
    /// Not a valid record. `expected_end` is where the record would end (relative to its
    /// start): the end of its header if the header itself is bad, else the end of the record.
    Invalid {
        reason: InvalidRecord,
        expected_end: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidRecord {
    HeaderChecksum,
    PayloadLength,
    /// The record runs past the end of the segment.
    Overrun,
    PayloadChecksum,
    Padding,
    Trailer,
}

impl std::fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidRecord::HeaderChecksum => "record header checksum mismatch",
            InvalidRecord::PayloadLength => "record payload length out of range",
            InvalidRecord::Overrun => "record runs past the end of the segment",
            InvalidRecord::PayloadChecksum => "record payload checksum mismatch",
            InvalidRecord::Padding => "record padding is not zero",
            InvalidRecord::Trailer => "record trailer mismatch",
        })
    }
}

/// Parses the record at the start of `bytes` (the rest of the segment).
pub fn parse_record(bytes: &[u8]) -> Parsed<'_> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return if bytes.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Invalid {
                reason: InvalidRecord::Overrun,
                expected_end: RECORD_HEADER_BYTES,
            }
        };
    }
    let header = &bytes[..RECORD_HEADER_BYTES];
    if header.iter().all(|b| *b == 0) {
        return Parsed::End;
    }
    let invalid_header = Parsed::Invalid {
        reason: InvalidRecord::HeaderChecksum,
        expected_end: RECORD_HEADER_BYTES,
    };
    if crc32c::crc32c(&header[4..]) != u32_at(header, 0) || u32_at(header, 36) != HEADER_MARK {
        return invalid_header;
    }
    let len = u32_at(header, 4) as usize;
    if len == 0 || len > RECORD_PAYLOAD_BYTES_MAX {
        return Parsed::Invalid {
            reason: InvalidRecord::PayloadLength,
            expected_end: RECORD_HEADER_BYTES,
        };
    }
    let total = record_bytes(len);
    if bytes.len() < total {
        return Parsed::Invalid {
            reason: InvalidRecord::Overrun,
            expected_end: total,
        };
    }
    let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
    let invalid = |reason| Parsed::Invalid {
        reason,
        expected_end: total,
    };
    if crc32c::crc32c(payload) != u32_at(header, 32) {
        return invalid(InvalidRecord::PayloadChecksum);
    }
    if bytes[RECORD_HEADER_BYTES + len..total - 8]
        .iter()
        .any(|b| *b != 0)
    {
        return invalid(InvalidRecord::Padding);
    }
    if u32_at(bytes, total - 8) as usize != len || u32_at(bytes, total - 4) != TRAILER_MARK {
        return invalid(InvalidRecord::Trailer);
    }
    Parsed::Record(RecordRef {
        sequence: u64_at(header, 8),
        epoch: u64_at(header, 16),
        timestamp_ns: u64_at(header, 24),
        payload,
        bytes: total,
    })
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Name of the segment file whose first record is `first_sequence`.
pub fn segment_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.wal")
}

/// The first sequence encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_any_single_bit_flip_as_non_zero() {
        for mark in [HEADER_MARK, TRAILER_MARK] {
            for byte in mark.to_le_bytes() {
                assert!(byte.count_ones() >= 2, "{mark:#x}");
            }
        }
    }

    #[test]
    fn record_round_trip() {
        for len in [1usize, 7, 8, 9, 100, RECORD_PAYLOAD_BYTES_MAX] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = vec![0u8; record_bytes(len)];
            write_record(&mut out, 42, 3, 99, &payload);
            assert_eq!(out.len() % 8, 0);
            let Parsed::Record(record) = parse_record(&out) else {
                panic!("not parsed")
            };
            assert_eq!(
                (record.sequence, record.epoch, record.timestamp_ns),
                (42, 3, 99)
            );
            assert_eq!(record.payload, &payload[..]);
            assert_eq!(record.bytes, out.len());
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader {
            shard: 3,
            epoch: 2,
            first_sequence: 77,
            segment_bytes: 1 << 20,
            batch_bytes_max: 1 << 16,
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(header));
        bytes[30] ^= 1;
        assert_eq!(SegmentHeader::decode(&bytes), None);
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(12), "00000000000000000012.wal");
        assert_eq!(parse_segment_name("00000000000000000012.wal"), Some(12));
        assert_eq!(parse_segment_name("12.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000001x.wal"), None);
    }
}
