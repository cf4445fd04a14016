//! Reading a shard's journal from a sequence on, without gaps, including segments that
//! retention already moved to `journal/archive/` (a flusher that was down for a while still
//! finds them there). A record missing from both is an error, never skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use paycore_journal::format::parse_segment_name;
use paycore_journal::{JournalReader, MmapStorage, RecordRef};

use crate::flusher::FlushError;

pub struct Follower {
    journal: PathBuf,
    watermark: Option<Arc<AtomicU64>>,
    main: Option<JournalReader<MmapStorage>>,
    archive: Option<JournalReader<MmapStorage>>,
    next: u64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("next", &self.next)
            .finish()
    }
}

/// First sequences of the segments in `dir` (empty if it does not exist).
fn segment_starts(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut starts: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_name))
        .collect();
    starts.sort_unstable();
    starts
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FlushError + '_ {
    move |error| FlushError::Journal(format!("{}: {error}", path.display()))
}

impl Follower {
    /// Reads from `next` on; `watermark`: the writer's durable sequence (None: to the end of
    /// the valid data, for a stopped node).
    pub fn new(journal: &Path, next: u64, watermark: Option<Arc<AtomicU64>>) -> Follower {
        Follower {
            journal: journal.to_path_buf(),
            watermark,
            main: None,
            archive: None,
            next,
        }
    }

    pub fn next_sequence(&self) -> u64 {
        self.next
    }

    fn open(&mut self) -> Result<(), FlushError> {
        if self.main.is_some() || self.archive.is_some() {
            return Ok(());
        }
        let starts = segment_starts(&self.journal);
        let archive_dir = self.journal.join("archive");
        let needs_archive = starts.first().is_some_and(|&first| first > self.next);
        if needs_archive {
            let archived = segment_starts(&archive_dir);
            if archived.first().is_some_and(|&first| first <= self.next) {
                let storage =
                    MmapStorage::open_dir(&archive_dir).map_err(io_error(&archive_dir))?;
                // Archived segments are complete and durable: no watermark.
                self.archive = Some(JournalReader::new(storage, self.next, None));
                return Ok(());
            }
            return Err(FlushError::Gap {
                needed: self.next,
                journal_first: starts[0],
            });
        }
        let storage = MmapStorage::open_dir(&self.journal).map_err(io_error(&self.journal))?;
        self.main = Some(JournalReader::new(
            storage,
            self.next,
            self.watermark.clone(),
        ));
        Ok(())
    }

    /// Visits up to `max_records` records in order; returns how many (0: nothing new yet).
    pub fn read(
        &mut self,
        max_records: usize,
        mut visit: impl FnMut(RecordRef<'_>) -> Result<(), FlushError>,
    ) -> Result<usize, FlushError> {
        if max_records == 0 {
            return Ok(0);
        }
        if !self.journal.exists() {
            return Ok(0);
        }
        self.open()?;
        let from_archive = self.archive.is_some();
        let reader = match (&mut self.archive, &mut self.main) {
            (Some(reader), _) | (None, Some(reader)) => reader,
            (None, None) => unreachable!("opened above"),
        };
        let mut expected = self.next;
        let mut failure = None;
        let read = reader
            .read(max_records, |record| {
                if failure.is_some() {
                    return;
                }
                if record.sequence != expected {
                    failure = Some(FlushError::Gap {
                        needed: expected,
                        journal_first: record.sequence,
                    });
                    return;
                }
                expected += 1;
                if let Err(error) = visit(record) {
                    failure = Some(error);
                }
            })
            .map_err(|e| FlushError::Journal(e.to_string()))?;
        self.next = expected;
        if let Some(error) = failure {
            if matches!(error, FlushError::Gap { .. }) && !from_archive {
                // Retention moved segments away while this reader was open: look again (the
                // archive may hold them); a real gap errors from `open`.
                self.main = None;
                self.open()?;
                if self.archive.is_some() {
                    return Ok(0);
                }
            }
            return Err(error);
        }
        if read == 0 && from_archive {
            // The archive ends here: continue in the live journal.
            self.archive = None;
            return self.read(max_records, visit);
        }
        Ok(read)
    }
}
