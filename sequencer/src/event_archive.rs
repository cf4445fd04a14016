//! The event archive: every committed event of a shard, on disk, for subscribers that fall
//! behind the in-memory [`EventLog`](crate::EventLog) window (a gateway that was away, a
//! burst larger than the window).
//!
//! Why a file of its own rather than the journal: the journal holds commands, and an event
//! is not a function of its command (a `balance_changed` carries the balance after it, which
//! depends on every command before). Re-deriving events means replaying from a snapshot on a
//! second engine: seconds and a second copy of the state for each catch-up. So each group
//! commit's events are appended here as one record, by the thread that lets them out, *before*
//! any reply of the batch leaves: an acknowledged command's events are in the file (page
//! cache; a SIGKILL loses nothing, a power cut can lose what the journal's fsync did not
//! cover). No fsync: the journal is the durable truth; the archive is its commentary.
//!
//! Layout: `<shard>/events/<first sequence, 20 digits>.events` segments of about
//! [`SEGMENT_BYTES_TARGET`]; each record is
//!
//! ```text
//!   0  u32  body length
//!   4  u32  crc32c of the body
//!   8  body: u64 first sequence, u64 last sequence, u64 timestamp ns, u32 event count,
//!            then per event: u64 sequence, the event (protocol encoding)
//! ```
//!
//! Records follow each other in sequence order; a record covers `first..=last` (commands
//! without events included), so a hole between two records (a crash between a journal commit
//! and its events' append, or an archive that was switched off) is visible and named to the
//! reader. Retention follows the journal's: a segment is deleted once every sequence it holds
//! is older than the oldest journal segment still on disk (live or in `journal/archive/`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::events::EventBatch;

/// Size at which a segment is closed and the next one started, in bytes.
pub const SEGMENT_BYTES_TARGET: u64 = 64 << 20;
/// Longest record body read back, in bytes (a larger length is damage).
const RECORD_BYTES_MAX: usize = 256 << 20;
const HEADER_BYTES: usize = 8;
const BODY_FIXED_BYTES: usize = 28;

/// Appends batches to the current segment (one writer per shard).
#[derive(Debug)]
pub struct ArchiveWriter {
    dir: PathBuf,
    journal_dir: Option<PathBuf>,
    file: File,
    bytes: u64,
    /// Last sequence the archive holds (0: none).
    last_sequence: u64,
    buffer: Vec<u8>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.events")
}

/// The segments of `dir`, by first sequence.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    let first = name.strip_suffix(".events")?.parse::<u64>().ok()?;
                    Some((first, entry.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable_by_key(|(first, _)| *first);
    out
}

/// The record at the reader's position: its range and events; `None` at the end of what is
/// complete (end of file, a torn or damaged tail).
fn read_record(file: &mut File) -> Option<EventBatch> {
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact(&mut header).ok()?;
    let length = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if !(BODY_FIXED_BYTES..=RECORD_BYTES_MAX).contains(&length) {
        return None;
    }
    let mut body = vec![0u8; length];
    file.read_exact(&mut body).ok()?;
    if crc32c::crc32c(&body) != crc {
        return None;
    }
    decode_body(&body)
}

fn decode_body(body: &[u8]) -> Option<EventBatch> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let first_sequence = u64_at(0)?;
    let last_sequence = u64_at(8)?;
    let timestamp_ns = u64_at(16)?;
    let count = u32::from_le_bytes(body.get(24..28)?.try_into().ok()?) as usize;
    let mut events = Vec::with_capacity(count.min(1 << 16));
    let mut at = BODY_FIXED_BYTES;
    for _ in 0..count {
        let sequence = u64_at(at)?;
        let (event, used) = paycore_protocol::decode_event(body.get(at + 8..)?).ok()?;
        events.push((sequence, event));
        at += 8 + used;
    }
    // A record is whole or it is damage.
    (at == body.len() && first_sequence <= last_sequence).then_some(EventBatch {
        first_sequence,
        last_sequence,
        timestamp_ns,
        events,
    })
}

fn encode_record(batch: &EventBatch, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    out.extend_from_slice(&batch.first_sequence.to_le_bytes());
    out.extend_from_slice(&batch.last_sequence.to_le_bytes());
    out.extend_from_slice(&batch.timestamp_ns.to_le_bytes());
    out.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
    for (sequence, event) in &batch.events {
        out.extend_from_slice(&sequence.to_le_bytes());
        paycore_protocol::encode_event(event, out);
    }
    let body_length = (out.len() - HEADER_BYTES) as u32;
    let crc = crc32c::crc32c(&out[HEADER_BYTES..]);
    out[0..4].copy_from_slice(&body_length.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

impl ArchiveWriter {
    /// Opens the archive in `dir` (created if missing) for a shard whose next sequence is
    /// `next_sequence`: a torn or damaged tail is cut, and so is anything at or after
    /// `next_sequence` (a journal tail cut at recovery or by a rejoin gives those sequences
    /// to other commands). `journal_dir` is the shard's journal, for retention.
    pub fn open(
        dir: &Path,
        journal_dir: Option<&Path>,
        next_sequence: u64,
    ) -> std::io::Result<ArchiveWriter> {
        std::fs::create_dir_all(dir)?;
        let mut all = segments(dir);
        while let Some((first, path)) = all.last() {
            if *first >= next_sequence && *first > 0 {
                std::fs::remove_file(path)?;
                all.pop();
            } else {
                break;
            }
        }
        let (path, last_sequence, valid) = match all.last() {
            Some((_, path)) => {
                let mut file = File::open(path)?;
                let mut valid = 0u64;
                let mut last = 0u64;
                while let Some(batch) = read_record(&mut file) {
                    if batch.last_sequence >= next_sequence {
                        break;
                    }
                    valid = file.stream_position()?;
                    last = batch.last_sequence;
                }
                (path.clone(), last, valid)
            }
            None => (dir.join(segment_name(0)), 0, 0),
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.set_len(valid)?;
        let mut writer = ArchiveWriter {
            dir: dir.to_path_buf(),
            journal_dir: journal_dir.map(Path::to_path_buf),
            file,
            bytes: valid,
            last_sequence,
            buffer: Vec::new(),
        };
        writer.file.seek(SeekFrom::Start(valid))?;
        Ok(writer)
    }

    /// Appends `batch` (one write: a reader sees all of it or none once it checks the crc).
    pub fn append(&mut self, batch: &EventBatch) -> std::io::Result<()> {
        if self.bytes >= SEGMENT_BYTES_TARGET {
            self.roll(batch.first_sequence)?;
        }
        encode_record(batch, &mut self.buffer);
        self.file.write_all(&self.buffer)?;
        self.bytes += self.buffer.len() as u64;
        self.last_sequence = batch.last_sequence;
        Ok(())
    }

    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    fn roll(&mut self, first: u64) -> std::io::Result<()> {
        self.file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.dir.join(segment_name(first)))?;
        self.bytes = 0;
        self.prune();
        Ok(())
    }

    /// Deletes segments wholly older than the oldest journal segment on disk.
    fn prune(&self) {
        let Some(journal) = &self.journal_dir else {
            return;
        };
        let oldest = [journal.clone(), journal.join("archive")]
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten())
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".wal")?
                    .parse::<u64>()
                    .ok()
            })
            .min();
        let Some(oldest) = oldest else {
            return;
        };
        let all = segments(&self.dir);
        for pair in all.windows(2) {
            // Segment 0 ends where segment 1 begins.
            if pair[1].0 <= oldest {
                let _ = std::fs::remove_file(&pair[0].1);
            }
        }
    }
}

/// What the archive holds for a position.
#[derive(Debug)]
pub enum ArchiveRead {
    /// Batches from the position on (the first may start before it), at most as many as
    /// asked; empty at the end of the archive.
    Batches(Vec<EventBatch>),
    /// Nothing is kept for the position: the first sequence the archive can still give (0:
    /// none at all).
    Unavailable { first_available: u64 },
}

/// A reader that walks the archive from a position, segment after segment.
#[derive(Debug)]
pub struct ArchiveReader {
    dir: PathBuf,
    segment_first: u64,
    file: File,
    /// Next sequence wanted.
    position: u64,
}

impl ArchiveReader {
    /// A reader at `position`, or what the archive can give instead.
    pub fn open(dir: &Path, position: u64) -> Result<ArchiveReader, u64> {
        let all = segments(dir);
        let first_available = all.first().map_or(0, |(first, _)| (*first).max(1));
        let Some((segment_first, path)) = all.iter().rev().find(|(first, _)| *first <= position)
        else {
            return Err(first_available);
        };
        let file = File::open(path).map_err(|_| first_available)?;
        Ok(ArchiveReader {
            dir: dir.to_path_buf(),
            segment_first: *segment_first,
            file,
            position,
        })
    }

    /// The next batches holding sequences `>= position`, at most `batches_max`.
    pub fn read(&mut self, batches_max: usize) -> ArchiveRead {
        let mut out = Vec::new();
        while out.len() < batches_max {
            let start = self.file.stream_position().unwrap_or(0);
            match read_record(&mut self.file) {
                Some(batch) if batch.last_sequence < self.position => {}
                Some(batch) => {
                    if batch.first_sequence > self.position && out.is_empty() {
                        // A hole: the caller decides (it may be at the memory window).
                        let _ = self.file.seek(SeekFrom::Start(start));
                        return ArchiveRead::Unavailable {
                            first_available: batch.first_sequence,
                        };
                    }
                    if batch.first_sequence > self.position {
                        let _ = self.file.seek(SeekFrom::Start(start));
                        break;
                    }
                    self.position = batch.last_sequence + 1;
                    out.push(batch);
                }
                None => {
                    // End of this segment's complete records: the next segment, if it
                    // starts where this one ends (else stay: the writer may add more).
                    let _ = self.file.seek(SeekFrom::Start(start));
                    let next = segments(&self.dir)
                        .into_iter()
                        .find(|(first, _)| *first > self.segment_first);
                    match next {
                        Some((first, path)) if first <= self.position => {
                            let Ok(file) = File::open(&path) else { break };
                            self.file = file;
                            self.segment_first = first;
                        }
                        Some((first, _)) if out.is_empty() => {
                            return ArchiveRead::Unavailable {
                                first_available: first,
                            };
                        }
                        _ => break,
                    }
                }
            }
        }
        ArchiveRead::Batches(out)
    }

    /// Next sequence wanted.
    pub fn position(&self) -> u64 {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paycore_engine::{Event, TransferId, TransferStatus};

    fn batch(first: u64, last: u64, events: usize) -> EventBatch {
        let event = Event::TransferSettled {
            transfer: TransferId(7),
            status: TransferStatus::Completed,
        };
        EventBatch {
            first_sequence: first,
            last_sequence: last,
            timestamp_ns: first * 10,
            events: (0..events)
                .map(|i| (first + i as u64 % (last - first + 1), event))
                .collect(),
        }
    }

    fn dir(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("paycore-events-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn batches_read_back_from_any_position_and_survive_a_torn_tail() {
        let dir = dir("roundtrip");
        let mut writer = ArchiveWriter::open(&dir, None, 1).expect("open");
        writer.append(&batch(1, 3, 4)).expect("append");
        writer.append(&batch(4, 4, 0)).expect("append");
        writer.append(&batch(5, 9, 2)).expect("append");
        drop(writer);
        let mut reader = ArchiveReader::open(&dir, 4).expect("reader");
        let ArchiveRead::Batches(read) = reader.read(10) else {
            panic!("batches expected");
        };
        assert_eq!(read, vec![batch(4, 4, 0), batch(5, 9, 2)]);
        assert_eq!(reader.position(), 10);
        // A torn last record is cut at the next open; the rest stays.
        let path = segments(&dir)[0].1.clone();
        let length = std::fs::metadata(&path).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("file")
            .set_len(length - 3)
            .expect("tear");
        let writer = ArchiveWriter::open(&dir, None, 100).expect("reopen");
        assert_eq!(writer.last_sequence(), 4);
        drop(writer);
        // Sequences the journal no longer holds are cut too.
        let writer = ArchiveWriter::open(&dir, None, 4).expect("reopen");
        assert_eq!(writer.last_sequence(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hole_is_named_with_the_first_sequence_after_it() {
        let dir = dir("hole");
        let mut writer = ArchiveWriter::open(&dir, None, 1).expect("open");
        writer.append(&batch(1, 3, 1)).expect("append");
        writer.append(&batch(8, 9, 1)).expect("append");
        let mut reader = ArchiveReader::open(&dir, 5).expect("reader");
        assert!(matches!(
            reader.read(10),
            ArchiveRead::Unavailable { first_available: 8 }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod measure {
    use super::*;
    use paycore_engine::{
        CurrencyId, Event, TransferId, TransferKind, TransferStatus, UserId, WalletId,
    };

    /// The archive's cost on the commit path: one record per group commit of 1000 transfers
    /// (3000 events). `cargo test --release -p paycore-sequencer measure_append -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "measurement"]
    fn measure_append_cost() {
        let dir =
            std::env::temp_dir().join(format!("paycore-events-measure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut writer = ArchiveWriter::open(&dir, None, 1).expect("open");
        let balance = |w: u64| Event::BalanceChanged {
            wallet: WalletId(w),
            user: UserId(u128::from(w)),
            currency: CurrencyId(1),
            available: 1_000_000,
            frozen: 0,
            version: w,
        };
        const BATCHES: u64 = 1000;
        const TRANSFERS: u64 = 1000;
        let mut appending = std::time::Duration::ZERO;
        for b in 0..BATCHES {
            let first = b * TRANSFERS + 1;
            let mut events = Vec::with_capacity(3 * TRANSFERS as usize);
            for t in 0..TRANSFERS {
                let sequence = first + t;
                events.push((
                    sequence,
                    Event::Transfer {
                        transfer: TransferId(u128::from(sequence)),
                        kind: TransferKind::Transfer,
                        from: WalletId(1),
                        to: WalletId(2),
                        amount: 100,
                        currency: CurrencyId(1),
                        status: TransferStatus::Completed,
                    },
                ));
                events.push((sequence, balance(1)));
                events.push((sequence, balance(2)));
            }
            let batch = EventBatch {
                first_sequence: first,
                last_sequence: first + TRANSFERS - 1,
                timestamp_ns: first,
                events,
            };
            let appended = std::time::Instant::now();
            writer.append(&batch).expect("append");
            appending += appended.elapsed();
        }
        let elapsed = appending.as_secs_f64();
        let bytes: u64 = segments(&dir)
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let events = BATCHES * TRANSFERS * 3;
        eprintln!(
            "MEASURE event archive append: {events} events ({} transfers) in {elapsed:.3} s: {:.0} ns/event, {:.0} ns/transfer, {:.1} B/event, {:.0} MB/s",
            BATCHES * TRANSFERS,
            elapsed * 1e9 / events as f64,
            elapsed * 1e9 / (BATCHES * TRANSFERS) as f64,
            bytes as f64 / events as f64,
            bytes as f64 / elapsed / 1e6
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
