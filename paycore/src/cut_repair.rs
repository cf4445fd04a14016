//! What a rejoin's cut needs so that the node starts again.
//!
//! A returning old primary cuts the records its new primary's history lacks and removes its
//! snapshots past the cut (they include cut records). If its newest remaining snapshot is
//! older than its live journal (retention archived the segments that snapshot-past-the-cut
//! covered), recovery would find a gap: "journal starts at sequence N but the state needs
//! S + 1" on every start. So before cutting, the archived segments from the one holding record
//! S + 1 up to the live journal are moved back into the journal folder (the cut then trims
//! them like any segment, backed up). When the archive does not hold them (deleted by an
//! operator), the caller falls back to seeding the shard from the new primary's snapshot.

use std::path::Path;

use paycore_journal::format::parse_segment_name;
use paycore_snapshot::ShardPaths;

/// What [`restore_archived`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The live journal holds every record from the state's next sequence on (segments
    /// moved back from the archive, by name; empty when none were needed).
    Ready { restored: Vec<String> },
    /// No segment holds the record the state needs next: the shard must be seeded.
    Missing { reason: String },
}

fn segments(dir: &Path) -> Result<Vec<(u64, String)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("{}: {error}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first) = parse_segment_name(&name) {
            found.push((first, name));
        }
    }
    found.sort();
    Ok(found)
}

/// Makes the live journal of `paths` hold record `state_next` (the first record the newest
/// snapshot that survives the cut does not cover; 1 without one) and everything after it that
/// was archived, by moving archived segments back. Durable (both folders synced).
pub fn restore_archived(paths: &ShardPaths, state_next: u64) -> Result<Restore, String> {
    assert!(state_next >= 1, "sequences start at 1");
    let live = segments(&paths.journal)?;
    let live_first = live.first().map(|(first, _)| *first);
    if live_first.is_some_and(|first| first <= state_next) {
        return Ok(Restore::Ready {
            restored: Vec::new(),
        });
    }
    let archive_dir = paths.journal.join("archive");
    let archived = segments(&archive_dir)?;
    let upto = live_first.unwrap_or(u64::MAX);
    let Some(base) = archived
        .iter()
        .filter(|(first, _)| *first <= state_next)
        .map(|(first, _)| *first)
        .max()
    else {
        return Ok(Restore::Missing {
            reason: format!(
                "no segment, live or archived, holds record {state_next} (the live journal starts at {}; the archive at {})",
                live_first.map_or("nothing".to_string(), |f| f.to_string()),
                archived
                    .first()
                    .map_or("nothing".to_string(), |(f, _)| f.to_string())
            ),
        });
    };
    let mut restored = Vec::new();
    for (first, name) in archived
        .into_iter()
        .filter(|(first, _)| (base..upto).contains(first))
    {
        debug_assert!(first < upto);
        std::fs::rename(archive_dir.join(&name), paths.journal.join(&name))
            .map_err(|e| format!("{}: {e}", archive_dir.join(&name).display()))?;
        restored.push(name);
    }
    paycore_journal::sync_dir(&paths.journal)
        .and_then(|()| paycore_journal::sync_dir(&archive_dir))
        .map_err(|e| format!("{}: {e}", paths.journal.display()))?;
    Ok(Restore::Ready { restored })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, first: u64) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join(paycore_journal::format::segment_name(first)), b"x")
            .expect("segment");
    }

    #[test]
    fn archived_segments_from_the_needed_record_on_come_back_and_a_gap_is_named() {
        let root = std::env::temp_dir().join(format!("paycore-cut-repair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = ShardPaths::new(&root, 0);
        let archive = paths.journal.join("archive");
        for first in [1, 100, 200, 300] {
            touch(&archive, first);
        }
        touch(&paths.journal, 400);
        touch(&paths.journal, 500);
        // The state needs 250: the segments from 200 on come back, 1 and 100 stay archived.
        let restored = restore_archived(&paths, 250).expect("restore");
        assert_eq!(
            restored,
            Restore::Ready {
                restored: vec![
                    paycore_journal::format::segment_name(200),
                    paycore_journal::format::segment_name(300)
                ]
            }
        );
        assert_eq!(
            segments(&paths.journal).expect("live").first().map(|s| s.0),
            Some(200)
        );
        // Already there: nothing to do.
        assert_eq!(
            restore_archived(&paths, 250).expect("again"),
            Restore::Ready {
                restored: Vec::new()
            }
        );
        // From the start (no snapshot survives): everything comes back.
        assert!(matches!(
            restore_archived(&paths, 1).expect("from 1"),
            Restore::Ready { restored } if restored.len() == 2
        ));
        // An archive that lost its segments: named, for the caller to seed instead.
        std::fs::remove_dir_all(&root).expect("cleanup");
        touch(&paths.journal, 400);
        touch(&archive, 300);
        assert!(matches!(
            restore_archived(&paths, 1).expect("gap"),
            Restore::Missing { reason } if reason.contains("record 1")
        ));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
