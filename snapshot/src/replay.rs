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

/// Reads up to `records_max` records, decodes and applies them; returns how many.
pub fn replay_some<S: Storage>(
    reader: &mut JournalReader<S>,
    engine: &mut Engine,
    batch: &mut ReplayBatch,
    records_max: usize,
) -> Result<usize, ShardError> {
    batch.commands.clear();
    let mut failure = None;
    let commands = &mut batch.commands;
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
    for (i, (sequence, timestamp_ns, command)) in batch.commands.iter().enumerate() {
        if let Some((_, _, ahead)) = batch.commands.get(i + PREFETCH_DISTANCE) {
            engine.prefetch(ahead);
        }
        engine.apply(*sequence, *timestamp_ns, command, &mut batch.effects);
        if batch.effects.messages.len() > 64 * 1024 {
            batch.effects.clear();
        }
    }
    batch.effects.clear();
    Ok(read)
}
