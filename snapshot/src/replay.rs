//! Replay: journal records decoded in batches and applied to an engine, with the wallets of
//! commands a few places ahead prefetched (the same overlap of cache misses the sequencer
//! uses). Shared by start-up recovery and the replica.

use paycore_engine::codec::decode_command;
use paycore_engine::{Command, Effects, Engine};
use paycore_journal::{JournalReader, Storage};

use crate::shard::ShardError;

/// Commands ahead of the one applied whose wallets are prefetched.
const PREFETCH_DISTANCE: usize = 4;

/// Decoded records waiting to be applied; reused between batches.
#[derive(Debug)]
pub struct ReplayBatch {
    commands: Vec<(u64, u64, Command)>,
    /// Replay needs no events (state is all it rebuilds; pending cross-shard legs are part of
    /// the state), so they are never built.
    effects: Effects,
}

impl Default for ReplayBatch {
    fn default() -> Self {
        ReplayBatch {
            commands: Vec::new(),
            effects: Effects::without_events(),
        }
    }
}

/// Decoded commands of one batch: (sequence, timestamp, command).
type Decoded = Vec<(u64, u64, Command)>;

/// Reads up to `records_max` records and decodes them into `commands` (cleared first); returns
/// how many were read. A record that does not decode is named by its sequence.
fn read_batch<S: Storage>(
    reader: &mut JournalReader<S>,
    commands: &mut Decoded,
    records_max: usize,
) -> Result<usize, ShardError> {
    commands.clear();
    let mut failure = None;
    let read = reader.read(records_max, |record| {
        if failure.is_some() {
            return;
        }
        match decode_command(record.payload) {
            Ok(command) => commands.push((record.sequence, record.timestamp_ns, command)),
            Err(error) => failure = Some((record.sequence, error.to_string())),
        }
    })?;
    if let Some((sequence, reason)) = failure {
        return Err(ShardError::Replay { sequence, reason });
    }
    Ok(read)
}

/// Applies `commands` in order, prefetching the wallets of the command `PREFETCH_DISTANCE`
/// places ahead.
fn apply_batch(engine: &mut Engine, commands: &Decoded, effects: &mut Effects) {
    for (i, (sequence, timestamp_ns, command)) in commands.iter().enumerate() {
        if let Some((_, _, ahead)) = commands.get(i + PREFETCH_DISTANCE) {
            engine.prefetch(ahead);
        }
        engine.apply(*sequence, *timestamp_ns, command, effects);
        if effects.messages.len() > 64 * 1024 {
            effects.clear();
        }
    }
    effects.clear();
}

/// Reads up to `records_max` records, decodes and applies them; returns how many.
pub fn replay_some<S: Storage>(
    reader: &mut JournalReader<S>,
    engine: &mut Engine,
    batch: &mut ReplayBatch,
    records_max: usize,
) -> Result<usize, ShardError> {
    let read = read_batch(reader, &mut batch.commands, records_max)?;
    apply_batch(engine, &batch.commands, &mut batch.effects);
    Ok(read)
}

/// Batches decoded ahead of the one being applied (bounded: each holds up to `records_max`
/// commands).
const DECODED_AHEAD_BATCHES: usize = 2;

/// Replays every record `reader` can read onto `engine`, in batches of up to `records_max`,
/// and returns how many it applied. A second thread reads, checks and decodes the next batch
/// while this one applies the previous: the same records in the same order, so the same state
/// as [`replay_some`] in a loop; reading and decoding (about a sixth of replay's time at 10 M
/// wallets) leaves the applying thread. On a decode or read error nothing after the failing
/// batch is applied and the error is returned.
pub fn replay_to_end<S: Storage>(
    reader: JournalReader<S>,
    engine: &mut Engine,
    records_max: usize,
) -> Result<u64, ShardError>
where
    JournalReader<S>: Send,
{
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Decoded>(DECODED_AHEAD_BATCHES);
    let (empty_tx, empty_rx) = sync_channel::<Decoded>(DECODED_AHEAD_BATCHES + 2);
    for _ in 0..DECODED_AHEAD_BATCHES + 2 {
        // Capacity DECODED_AHEAD_BATCHES + 2, nothing received yet: cannot block or fail.
        let _ = empty_tx.send(Vec::with_capacity(records_max));
    }
    std::thread::scope(|scope| {
        let decoder = std::thread::Builder::new()
            .name("replay-decode".into())
            .spawn_scoped(scope, move || -> Result<(), ShardError> {
                let mut reader = reader;
                // Ends when the journal has nothing more (dropping `full_tx` ends the applier's
                // loop) or the applier is gone.
                while let Ok(mut commands) = empty_rx.recv() {
                    if read_batch(&mut reader, &mut commands, records_max)? == 0 {
                        break;
                    }
                    if full_tx.send(commands).is_err() {
                        break;
                    }
                }
                Ok(())
            })
            .map_err(|error| ShardError::Replay {
                sequence: engine.last_sequence() + 1,
                reason: format!("cannot start the decoding thread: {error}"),
            })?;
        let mut effects = Effects::without_events();
        let mut replayed = 0u64;
        for commands in full_rx.iter() {
            apply_batch(engine, &commands, &mut effects);
            replayed += commands.len() as u64;
            // The decoder may have finished: then nobody needs the buffer back.
            let _ = empty_tx.send(commands);
        }
        match decoder.join() {
            Ok(result) => result.map(|()| replayed),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
