//! The idempotency table: the first outcome of every client key, for a window of command time.
//!
//! Entries sit in a FIFO in timestamp order (the sequencer's timestamps never go back), so
//! eviction is "pop the front while it is older than the window": deterministic, and the same on
//! a replay. Key bytes live in one byte arena that is also FIFO, so an entry costs no heap
//! allocation of its own. When the table is full of entries still inside their window, new keys
//! are refused (`idempotency_capacity_exceeded`) rather than evicting early: an early eviction
//! would let a retry apply twice.

use std::collections::VecDeque;

use hashbrown::HashTable;

use crate::command::IdempotencyKey;
use crate::outcome::Outcome;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key_hash: u64,
    /// Logical offset of the key in the arena.
    key_offset: u64,
    key_len: u8,
    pub(crate) timestamp_ns: u64,
    /// Fingerprint of the operation's parameters.
    pub(crate) params: u64,
    pub(crate) outcome: Outcome,
}

/// FIFO byte arena: keys are appended at the back and released from the front.
#[derive(Debug, Default, Clone)]
struct KeyArena {
    bytes: Vec<u8>,
    /// Index in `bytes` of the first live byte.
    head: usize,
    /// Logical offset of `bytes[0]`.
    base: u64,
}

impl KeyArena {
    fn push(&mut self, key: &[u8]) -> u64 {
        let offset = self.base + self.bytes.len() as u64;
        self.bytes.extend_from_slice(key);
        offset
    }

    fn get(&self, offset: u64, len: u8) -> &[u8] {
        let start = usize::try_from(offset - self.base).unwrap_or(usize::MAX);
        &self.bytes[start..start + usize::from(len)]
    }

    fn pop_front(&mut self, len: u8) {
        self.head += usize::from(len);
        assert!(self.head <= self.bytes.len());
        // Compact once the dead prefix is at least half: amortised O(1) per byte.
        if self.head >= 64 * 1024 && self.head * 2 >= self.bytes.len() {
            self.bytes.drain(..self.head);
            self.base += self.head as u64;
            self.head = 0;
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct IdempotencyTable {
    entries: VecDeque<Entry>,
    /// Entry number of `entries[0]`; numbers grow by one per insert.
    first_number: u64,
    /// Entry numbers, hashed by key.
    index: HashTable<u64>,
    keys: KeyArena,
    seed: u64,
    window_ns: u64,
    entries_max: usize,
    evicted_early: u64,
}

impl IdempotencyTable {
    pub(crate) fn new(window_ns: u64, entries_max: usize, seed: u64) -> Self {
        assert!(entries_max > 0);
        IdempotencyTable {
            entries: VecDeque::new(),
            first_number: 0,
            index: HashTable::new(),
            keys: KeyArena::default(),
            seed,
            window_ns,
            entries_max,
            evicted_early: 0,
        }
    }

    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.entries_max
    }

    /// Forgets every entry whose window has passed at `now_ns`.
    pub(crate) fn evict(&mut self, now_ns: u64) {
        while let Some(front) = self.entries.front() {
            if front.timestamp_ns.saturating_add(self.window_ns) > now_ns {
                break;
            }
            self.pop_front();
        }
    }

    /// Forgets the oldest entry before its window has passed, to make room (the table is full).
    pub(crate) fn evict_oldest(&mut self) {
        if !self.entries.is_empty() {
            self.pop_front();
            self.evicted_early += 1;
        }
    }

    /// Entries forgotten before their window passed, since this table was created.
    pub(crate) fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Command time covered by the records held: now minus the oldest record's timestamp.
    pub(crate) fn span_ns(&self, now_ns: u64) -> u64 {
        self.entries
            .front()
            .map_or(0, |e| now_ns.saturating_sub(e.timestamp_ns))
    }

    fn pop_front(&mut self) {
        if let Some(front) = self.entries.front() {
            let number = self.first_number;
            let hash = front.key_hash;
            let key_len = front.key_len;
            let removed = self
                .index
                .find_entry(hash, |&n| n == number)
                .map(|e| e.remove());
            assert!(removed.is_ok(), "idempotency index lost entry {number}");
            self.entries.pop_front();
            self.keys.pop_front(key_len);
            self.first_number += 1;
        }
    }

    pub(crate) fn find(&self, key: &IdempotencyKey) -> Option<&Entry> {
        self.find_hashed(key, self.hash(key.as_bytes()))
    }

    /// `find` with the key's hash already computed (the hot path hashes each key once).
    pub(crate) fn find_hashed(&self, key: &IdempotencyKey, hash: u64) -> Option<&Entry> {
        let bytes = key.as_bytes();
        let number = self.index.find(hash, |&n| {
            let entry = &self.entries[(n - self.first_number) as usize];
            entry.key_hash == hash && self.keys.get(entry.key_offset, entry.key_len) == bytes
        })?;
        Some(&self.entries[(number - self.first_number) as usize])
    }

    pub(crate) fn insert(
        &mut self,
        key: &IdempotencyKey,
        params: u64,
        timestamp_ns: u64,
        outcome: Outcome,
    ) {
        let key_hash = self.hash(key.as_bytes());
        self.insert_hashed(key, key_hash, params, timestamp_ns, outcome);
    }

    /// `insert` with the key's hash already computed.
    pub(crate) fn insert_hashed(
        &mut self,
        key: &IdempotencyKey,
        key_hash: u64,
        params: u64,
        timestamp_ns: u64,
        outcome: Outcome,
    ) {
        debug_assert_eq!(key_hash, self.hash(key.as_bytes()));
        assert!(!self.is_full(), "idempotency insert past capacity");
        debug_assert!(self.find(key).is_none(), "idempotency key inserted twice");
        if let Some(back) = self.entries.back() {
            assert!(
                back.timestamp_ns <= timestamp_ns,
                "idempotency timestamps went back"
            );
        }
        let bytes = key.as_bytes();
        let key_len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
        assert_eq!(
            usize::from(key_len),
            bytes.len(),
            "key length checked at construction"
        );
        let key_offset = self.keys.push(bytes);
        let number = self.first_number + self.entries.len() as u64;
        self.entries.push_back(Entry {
            key_hash,
            key_offset,
            key_len,
            timestamp_ns,
            params,
            outcome,
        });
        let entries = &self.entries;
        let first = self.first_number;
        self.index.insert_unique(key_hash, number, |&n| {
            entries[(n - first) as usize].key_hash
        });
    }

    /// Entries oldest first, with their key bytes (for the state hash and snapshots).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.entries
            .iter()
            .map(|e| (self.keys.get(e.key_offset, e.key_len), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Applied, Reject};

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::new(text.as_bytes()).expect("valid key")
    }

    #[test]
    fn finds_evicts_in_order_and_compacts() {
        let mut table = IdempotencyTable::new(100, 1_000_000, 7);
        for i in 0..200_000u64 {
            table.insert(
                &key(&format!("key-{i}")),
                i,
                i / 1000,
                Outcome::Ok(Applied::Done),
            );
        }
        assert_eq!(table.find(&key("key-5")).map(|e| e.params), Some(5));
        // A record lives while timestamp + window > now: evict(150) drops timestamps <= 50,
        // i.e. keys 0..51_000.
        table.evict(150);
        assert!(table.find(&key("key-50999")).is_none());
        let found = table.find(&key("key-51000")).map(|e| e.params);
        assert_eq!(found, Some(51_000));
        assert_eq!(table.len(), 149_000);
        table.evict(10_000);
        assert_eq!(table.len(), 0);
        table.insert(
            &key("again"),
            1,
            10_000,
            Outcome::Rejected(Reject::InsufficientFunds),
        );
        assert_eq!(
            table.find(&key("again")).map(|e| e.outcome),
            Some(Outcome::Rejected(Reject::InsufficientFunds))
        );
    }

    #[test]
    fn full_is_reported() {
        let mut table = IdempotencyTable::new(100, 2, 0);
        table.insert(&key("a"), 0, 0, Outcome::Ok(Applied::Done));
        assert!(!table.is_full());
        table.insert(&key("b"), 0, 0, Outcome::Ok(Applied::Done));
        assert!(table.is_full());
        table.evict(100);
        assert!(!table.is_full());
    }
}
