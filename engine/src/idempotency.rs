//! The idempotency table: the first outcome of every client key, for a window of command time.
//!
//! Entries sit in a FIFO in timestamp order (the sequencer's timestamps never go back), so
//! eviction is "pop the front while it is older than the window": deterministic, and the same on
//! a replay. Key bytes live in one byte arena that is also FIFO, so an entry costs no heap
//! allocation of its own. When the table is full the oldest entry is forgotten early to make
//! room (`evict_oldest`, counted in `evicted_early`; docs/design.md §8).
//!
//! Why the hash index is hand-written ([`Index`]) rather than a general hash table: with
//! millions of live keys every command costs random DRAM accesses in the index (probe the new
//! key, insert it, remove the evicted key), and those were about half the time of a transfer.
//! The index here is built for exactly this use:
//!
//! - one `u64` per slot holding a 32-bit tag of the key's hash and the entry number (mod 2^32),
//!   so a probe, the insert after it and a removal each touch one cache line in the common case
//!   (a general table keeps control bytes and buckets apart: two lines);
//! - linear probing with backward-shift deletion: no tombstones, so no purge or rehash pause
//!   from churn; the table only rehashes when it grows, as before;
//! - the slot's position derives from the tag, so the FIFO knows where the key it evicts next
//!   lives: [`IdempotencyTable::prefetch_eviction`] hints that line a few evictions ahead, and
//!   [`IdempotencyTable::prefetch_key`] the probe of a command a few places ahead (both from
//!   `Engine::prefetch`, which callers run a few commands ahead of `apply`).
//!
//! Entries are 48 bytes: the outcome is packed into a word and a few small fields (the common
//! outcomes: transfer ids, wallet and hold ids, rejections); an outcome that does not fit (an
//! exchange's credited amount, an unusual transfer id from an image) is kept whole in a side
//! FIFO, `spilled`, found by entry number.

use std::collections::VecDeque;

use crate::command::IdempotencyKey;
use crate::currency::CurrencyId;
use crate::ids::{HoldId, TransferId, WalletId};
use crate::outcome::{Applied, Outcome, Reject};
use crate::prefetch::hint;

/// A record as the table gives it out (lookups and the oldest-first walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) timestamp_ns: u64,
    /// Fingerprint of the operation's parameters.
    pub(crate) params: u64,
    pub(crate) outcome: Outcome,
}

/// The shape of a packed outcome; the payload is in [`Entry`]'s `word`, `half` and `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Done,
    /// `word`: the wallet id.
    WalletOpened,
    /// `half`: the currency id.
    CurrencyRegistered,
    /// `shard`, `word`, `half`: the transfer id's shard, sequence and index.
    Transferred,
    TransferredPending,
    /// `word`: the hold id.
    HoldPlaced,
    /// `half`: the number of operations.
    Linked,
    Rejected(Reject),
    /// `half`: the failing operation's index.
    LinkedRejected(Reject),
    /// The whole outcome is in `spilled`.
    Spilled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    kind: Kind,
    word: u64,
    half: u16,
    shard: u16,
}

impl Packed {
    fn new(kind: Kind) -> Packed {
        Packed {
            kind,
            word: 0,
            half: 0,
            shard: 0,
        }
    }

    /// The packed form of `outcome`, or `Kind::Spilled` if it does not fit.
    fn pack(outcome: &Outcome) -> Packed {
        let transfer = |id: TransferId, kind| {
            if id.0 >> 96 == 0 {
                Packed {
                    kind,
                    word: (id.0 >> 16) as u64,
                    half: id.0 as u16,
                    shard: (id.0 >> 80) as u16,
                }
            } else {
                Packed::new(Kind::Spilled)
            }
        };
        match *outcome {
            Outcome::Ok(Applied::Done) => Packed::new(Kind::Done),
            Outcome::Ok(Applied::WalletOpened(wallet)) => Packed {
                word: wallet.0,
                ..Packed::new(Kind::WalletOpened)
            },
            Outcome::Ok(Applied::CurrencyRegistered(currency)) => Packed {
                half: currency.0,
                ..Packed::new(Kind::CurrencyRegistered)
            },
            Outcome::Ok(Applied::Transferred {
                transfer: id,
                pending,
            }) => transfer(
                id,
                if pending {
                    Kind::TransferredPending
                } else {
                    Kind::Transferred
                },
            ),
            Outcome::Ok(Applied::HoldPlaced(hold)) => Packed {
                word: hold.0,
                ..Packed::new(Kind::HoldPlaced)
            },
            Outcome::Ok(Applied::Linked { ops }) => Packed {
                half: ops,
                ..Packed::new(Kind::Linked)
            },
            Outcome::Ok(Applied::Exchanged { .. }) => Packed::new(Kind::Spilled),
            Outcome::Rejected(reason) => Packed::new(Kind::Rejected(reason)),
            Outcome::LinkedRejected { index, reason } => Packed {
                half: index,
                ..Packed::new(Kind::LinkedRejected(reason))
            },
        }
    }

    /// The outcome back; `None` for `Kind::Spilled` (look it up in `spilled`).
    fn unpack(self) -> Option<Outcome> {
        let transfer = || {
            TransferId(
                (u128::from(self.shard) << 80)
                    | (u128::from(self.word) << 16)
                    | u128::from(self.half),
            )
        };
        Some(match self.kind {
            Kind::Done => Outcome::Ok(Applied::Done),
            Kind::WalletOpened => Outcome::Ok(Applied::WalletOpened(WalletId(self.word))),
            Kind::CurrencyRegistered => {
                Outcome::Ok(Applied::CurrencyRegistered(CurrencyId(self.half)))
            }
            Kind::Transferred | Kind::TransferredPending => Outcome::Ok(Applied::Transferred {
                transfer: transfer(),
                pending: self.kind == Kind::TransferredPending,
            }),
            Kind::HoldPlaced => Outcome::Ok(Applied::HoldPlaced(HoldId(self.word))),
            Kind::Linked => Outcome::Ok(Applied::Linked { ops: self.half }),
            Kind::Rejected(reason) => Outcome::Rejected(reason),
            Kind::LinkedRejected(reason) => Outcome::LinkedRejected {
                index: self.half,
                reason,
            },
            Kind::Spilled => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Entry {
    timestamp_ns: u64,
    /// Fingerprint of the operation's parameters.
    params: u64,
    /// Logical offset of the key in the arena.
    key_offset: u64,
    word: u64,
    /// [`tag`] of the key's hash: where the key sits in the index.
    tag: u32,
    half: u16,
    shard: u16,
    key_len: u8,
    kind: Kind,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    fn packed(&self) -> Packed {
        Packed {
            kind: self.kind,
            word: self.word,
            half: self.half,
            shard: self.shard,
        }
    }
}

/// The index tag of a key hash: its high 32 bits, never 0 (0 marks an empty slot).
fn tag(hash: u64) -> u32 {
    ((hash >> 32) as u32) | 1
}

/// Open-addressing hash index from key tags to entry numbers (mod 2^32).
///
/// A slot is `tag << 32 | number`, or 0 when empty. The home slot of a tag is its top `bits`
/// bits; collisions probe forward (linear probing, wrapping), and removal shifts later entries
/// of the run back into the hole (backward-shift deletion), so there are never tombstones and a
/// probe ends at the first empty slot. Matching tags are confirmed by the caller (key bytes).
/// The load stays at most 3/4: the slot count doubles before an insert would pass it.
#[derive(Debug)]
struct Index {
    slots: Vec<u64>,
    bits: u32,
    len: usize,
}

impl Clone for Index {
    /// On huge pages like the original (`huge_pages::clone_advised`).
    fn clone(&self) -> Self {
        Index {
            slots: crate::huge_pages::clone_advised(&self.slots),
            bits: self.bits,
            len: self.len,
        }
    }
}

impl Index {
    const BITS_MIN: u32 = 4;

    fn with_bits(bits: u32) -> Index {
        assert!((1..=32).contains(&bits), "idempotency index size");
        let slots = vec![0; 1 << bits];
        crate::huge_pages::advise(&slots);
        Index {
            slots,
            bits,
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, tag: u32) -> usize {
        (u64::from(tag) >> (32 - self.bits)) as usize
    }

    fn slot_tag(slot: u64) -> u32 {
        (slot >> 32) as u32
    }

    /// Hints the cache line where a probe for `tag` starts.
    fn prefetch(&self, tag: u32) {
        if let Some(slot) = self.slots.get(self.home(tag)) {
            hint((slot as *const u64).cast());
        }
    }

    /// The number of the first entry with `tag` that `matches`, probing from its home.
    fn find(&self, tag: u32, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let mut i = self.home(tag);
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if Index::slot_tag(slot) == tag && matches(slot as u32) {
                return Some(slot as u32);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `number` under `tag` (the caller has checked the key is not in the index).
    fn insert(&mut self, tag: u32, number: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.place((u64::from(tag) << 32) | u64::from(number));
        self.len += 1;
    }

    fn place(&mut self, value: u64) {
        let mask = self.mask();
        let mut i = self.home(Index::slot_tag(value));
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = value;
    }

    /// Doubles the slot count and re-places every entry (the only rehash).
    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        *self = Index {
            len: self.len,
            ..Index::with_bits(self.bits + 1)
        };
        for value in old.into_iter().filter(|&v| v != 0) {
            self.place(value);
        }
    }

    /// Removes `number` under `tag`; false if it is not there.
    fn remove(&mut self, tag: u32, number: u32) -> bool {
        let value = (u64::from(tag) << 32) | u64::from(number);
        let mask = self.mask();
        let mut hole = self.home(tag);
        loop {
            match self.slots[hole] {
                0 => return false,
                v if v == value => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Backward shift: a later entry of the run moves into the hole when the hole lies
        // between its home and its slot (its displacement reaches back to the hole).
        let mut j = (hole + 1) & mask;
        loop {
            let slot = self.slots[j];
            if slot == 0 {
                break;
            }
            let displacement = j.wrapping_sub(self.home(Index::slot_tag(slot))) & mask;
            if displacement >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = slot;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
        true
    }
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
    /// Entry number of `entries[0]`; numbers grow by one per insert. The index holds them mod
    /// 2^32, which is unambiguous because fewer than 2^32 entries are ever live.
    first_number: u64,
    index: Index,
    /// Outcomes that do not pack into an entry, by entry number, oldest first.
    spilled: VecDeque<(u64, Outcome)>,
    keys: KeyArena,
    seed: u64,
    window_ns: u64,
    entries_max: usize,
    evicted_early: u64,
}

impl IdempotencyTable {
    /// Allocates room for `entries` entries (capped at the maximum) and an index that holds
    /// them under its load limit, so nothing grows below that size.
    /// The room is faulted in now (`huge_pages::populate`): the first inserts into it take no
    /// page faults inside a writer's batch.
    pub(crate) fn with_reserve(mut self, entries: usize) -> Self {
        let entries = entries.min(self.entries_max);
        if self.entries.is_empty() && entries > 0 {
            let room: Vec<Entry> = Vec::with_capacity(entries);
            crate::huge_pages::advise(&room);
            crate::huge_pages::populate(&room);
            // Reuses the vector's buffer as it is (no copy, no reallocation).
            self.entries = VecDeque::from(room);
        }
        self.reserve(entries);
        crate::huge_pages::populate(&self.index.slots);
        self
    }

    /// Like [`with_reserve`](Self::with_reserve) on a table that may hold entries already (a
    /// clone, which keeps only the room it uses): re-places the index once if it is too small.
    pub(crate) fn reserve(&mut self, entries: usize) {
        let entries = entries.min(self.entries_max);
        if entries == 0 {
            return;
        }
        self.entries
            .reserve_exact(entries.saturating_sub(self.entries.len()));
        // Keys average well under 32 bytes (UUIDs are 36; the arena compacts at half dead).
        let key_bytes = entries.saturating_mul(32);
        self.keys
            .bytes
            .reserve(key_bytes.saturating_sub(self.keys.bytes.len()));
        // Load stays at most 3/4: slots >= entries * 4 / 3.
        let slots = entries.saturating_mul(4).div_ceil(3).next_power_of_two();
        let bits = slots.trailing_zeros().clamp(Index::BITS_MIN, 32);
        while self.index.bits < bits {
            self.index.grow();
        }
    }

    pub(crate) fn new(window_ns: u64, entries_max: usize, seed: u64) -> Self {
        assert!(entries_max > 0);
        assert!(
            entries_max <= u32::MAX as usize,
            "idempotency entries are numbered mod 2^32"
        );
        IdempotencyTable {
            entries: VecDeque::new(),
            first_number: 0,
            index: Index::with_bits(Index::BITS_MIN),
            spilled: VecDeque::new(),
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

    /// Hints the index line a lookup of `key` will read (no effect on state).
    pub(crate) fn prefetch_key(&self, key: &IdempotencyKey) {
        self.prefetch_hash(self.hash(key.as_bytes()));
    }

    /// Hints the index line of the entry `ahead` places from the front of the FIFO: the one
    /// the `ahead`-th eviction from now removes.
    pub(crate) fn prefetch_eviction(&self, ahead: usize) {
        if let Some(entry) = self.entries.get(ahead) {
            self.index.prefetch(entry.tag);
        }
    }

    /// Hints the index line a lookup of a key with this hash will read.
    pub(crate) fn prefetch_hash(&self, hash: u64) {
        self.index.prefetch(tag(hash));
    }

    /// Adds a record loaded from an image (oldest first): the key checked as
    /// [`IdempotencyKey::new`] would, hashed once (`hash` is [`Self::hash`] of it), refused if
    /// the table is full or holds the key already. No key is allocated: loading millions of
    /// records is on the restart path.
    pub(crate) fn restore_hashed(
        &mut self,
        key: &[u8],
        hash: u64,
        params: u64,
        timestamp_ns: u64,
        outcome: Outcome,
    ) -> Result<(), &'static str> {
        if key.is_empty() || key.len() > crate::command::IDEMPOTENCY_KEY_BYTES_MAX {
            return Err("idempotency key length");
        }
        if self.is_full() || self.find_bytes_hashed(key, hash).is_some() {
            return Err("idempotency records over capacity or duplicated");
        }
        if self
            .entries
            .back()
            .is_some_and(|back| back.timestamp_ns > timestamp_ns)
        {
            return Err("idempotency records out of time order");
        }
        self.insert_bytes_hashed(key, hash, params, timestamp_ns, outcome);
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.entries_max
    }

    /// Forgets every entry whose window has passed at `now_ns`.
    #[inline]
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

    #[inline]
    fn pop_front(&mut self) {
        let Some(front) = self.entries.pop_front() else {
            return;
        };
        let number = self.first_number;
        let removed = self.index.remove(front.tag, number as u32);
        assert!(removed, "idempotency index lost entry {number}");
        if front.kind == Kind::Spilled {
            let spilled = self.spilled.pop_front().map(|(n, _)| n);
            assert_eq!(
                spilled,
                Some(number),
                "idempotency spilled outcomes out of step"
            );
        }
        self.keys.pop_front(front.key_len);
        self.first_number += 1;
    }

    fn record(&self, number: u64, entry: &Entry) -> Record {
        let outcome = entry.packed().unpack().unwrap_or_else(|| {
            let at = self
                .spilled
                .binary_search_by_key(&number, |&(n, _)| n)
                .expect("idempotency spilled outcome missing");
            self.spilled[at].1
        });
        Record {
            timestamp_ns: entry.timestamp_ns,
            params: entry.params,
            outcome,
        }
    }

    pub(crate) fn find(&self, key: &IdempotencyKey) -> Option<Record> {
        self.find_hashed(key, self.hash(key.as_bytes()))
    }

    /// `find` with the key's hash already computed (the hot path hashes each key once).
    #[inline]
    pub(crate) fn find_hashed(&self, key: &IdempotencyKey, hash: u64) -> Option<Record> {
        self.find_bytes_hashed(key.as_bytes(), hash)
    }

    #[inline]
    fn find_bytes_hashed(&self, bytes: &[u8], hash: u64) -> Option<Record> {
        let first = self.first_number as u32;
        let number = self.index.find(tag(hash), |n| {
            let entry = &self.entries[n.wrapping_sub(first) as usize];
            self.keys.get(entry.key_offset, entry.key_len) == bytes
        })?;
        let position = number.wrapping_sub(first);
        Some(self.record(
            self.first_number + u64::from(position),
            &self.entries[position as usize],
        ))
    }

    #[cfg(test)]
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
    #[inline]
    pub(crate) fn insert_hashed(
        &mut self,
        key: &IdempotencyKey,
        key_hash: u64,
        params: u64,
        timestamp_ns: u64,
        outcome: Outcome,
    ) {
        self.insert_bytes_hashed(key.as_bytes(), key_hash, params, timestamp_ns, outcome);
    }

    #[inline]
    fn insert_bytes_hashed(
        &mut self,
        bytes: &[u8],
        key_hash: u64,
        params: u64,
        timestamp_ns: u64,
        outcome: Outcome,
    ) {
        debug_assert_eq!(key_hash, self.hash(bytes));
        assert!(!self.is_full(), "idempotency insert past capacity");
        debug_assert!(
            self.find_bytes_hashed(bytes, key_hash).is_none(),
            "idempotency key inserted twice"
        );
        if let Some(back) = self.entries.back() {
            assert!(
                back.timestamp_ns <= timestamp_ns,
                "idempotency timestamps went back"
            );
        }
        let key_len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
        assert_eq!(
            usize::from(key_len),
            bytes.len(),
            "key length checked at construction"
        );
        let key_offset = self.keys.push(bytes);
        let number = self.first_number + self.entries.len() as u64;
        let packed = Packed::pack(&outcome);
        if packed.kind == Kind::Spilled {
            self.spilled.push_back((number, outcome));
        }
        let tag = tag(key_hash);
        self.entries.push_back(Entry {
            timestamp_ns,
            params,
            key_offset,
            word: packed.word,
            tag,
            half: packed.half,
            shard: packed.shard,
            key_len,
            kind: packed.kind,
        });
        self.index.insert(tag, number as u32);
    }

    /// Records oldest first, with their key bytes (for the state hash and snapshots).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Record)> {
        self.entries
            .iter()
            .zip(self.first_number..)
            .map(|(e, number)| {
                (
                    self.keys.get(e.key_offset, e.key_len),
                    self.record(number, e),
                )
            })
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

    fn outcomes() -> Vec<Outcome> {
        let mut all = vec![
            Outcome::Ok(Applied::Done),
            Outcome::Ok(Applied::WalletOpened(WalletId::new(3, 77))),
            Outcome::Ok(Applied::CurrencyRegistered(CurrencyId(9))),
            Outcome::Ok(Applied::HoldPlaced(HoldId(u64::MAX))),
            Outcome::Ok(Applied::Linked { ops: 16 }),
            Outcome::Ok(Applied::Exchanged {
                transfer: TransferId::new(1, 2, 3),
                credited: u128::MAX,
            }),
            Outcome::LinkedRejected {
                index: 7,
                reason: Reject::LimitExceeded,
            },
        ];
        for pending in [false, true] {
            for transfer in [
                TransferId::new(1023, u64::MAX, u16::MAX),
                TransferId::new(0, 0, 0),
                TransferId(u128::MAX),
                TransferId(1 << 96),
            ] {
                all.push(Outcome::Ok(Applied::Transferred { transfer, pending }));
            }
        }
        all.extend(Reject::ALL.iter().map(|&r| Outcome::Rejected(r)));
        all
    }

    #[test]
    fn outcomes_pack_or_spill_losslessly() {
        for outcome in outcomes() {
            let packed = Packed::pack(&outcome);
            match packed.unpack() {
                Some(back) => assert_eq!(back, outcome),
                None => assert_eq!(packed.kind, Kind::Spilled),
            }
        }
        let spilled = Outcome::Ok(Applied::Transferred {
            transfer: TransferId(1 << 96),
            pending: false,
        });
        assert_eq!(Packed::pack(&spilled).kind, Kind::Spilled);
    }

    /// Every outcome, spilled or not, survives insert, lookup, the oldest-first walk and the
    /// eviction of the entries around it.
    #[test]
    fn records_round_trip_through_eviction() {
        let all = outcomes();
        let mut table = IdempotencyTable::new(10, 1 << 20, 3);
        let mut time = 0;
        for round in 0..50u64 {
            for (i, outcome) in all.iter().enumerate() {
                time += 1;
                table.evict(time);
                table.insert(&key(&format!("{round}/{i}")), i as u64, time, *outcome);
            }
            let start = time + 1 - table.len() as u64;
            let walked: Vec<_> = table.iter().map(|(k, r)| (k.to_vec(), r)).collect();
            assert_eq!(walked.len(), table.len());
            for (offset, (k, record)) in walked.iter().enumerate() {
                assert_eq!(record.timestamp_ns, start + offset as u64);
                let found = table.find(&IdempotencyKey::new(k).expect("key"));
                assert_eq!(found, Some(*record));
                assert_eq!(record.outcome, all[record.params as usize]);
            }
        }
        table.evict(u64::MAX);
        assert_eq!(table.len(), 0);
        assert!(table.spilled.is_empty());
        assert_eq!(table.index.len, 0);
        assert!(table.index.slots.iter().all(|&s| s == 0));
    }

    /// The index against a model, with few distinct tags (long colliding runs), wrapping runs
    /// and growth.
    #[test]
    fn index_matches_a_model_under_collisions_and_wrap() {
        use std::collections::BTreeSet;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Tags near the top of the range start near the last slot and wrap.
        let tags = [u32::MAX, u32::MAX - 2, 0xF000_0001, 1, 3, 0x8000_0001];
        let mut index = Index::with_bits(Index::BITS_MIN);
        let mut model = BTreeSet::new();
        let mut number = 0u32;
        for step in 0..6_000 {
            let grow_phase = step < 3_000;
            if model.is_empty() || (next() % 100) < if grow_phase { 60 } else { 45 } {
                let tag = if next() % 2 == 0 {
                    tags[(next() % tags.len() as u64) as usize]
                } else {
                    tag(next())
                };
                index.insert(tag, number);
                model.insert((tag, number));
                number = number.wrapping_add(1);
            } else {
                let pick = (next() % model.len() as u64) as usize;
                let &(tag, n) = model.iter().nth(pick).expect("non-empty");
                assert!(index.remove(tag, n));
                assert!(!index.remove(tag, n));
                model.remove(&(tag, n));
            }
            assert_eq!(index.len, model.len());
            if step % 97 == 0 {
                for &(tag, n) in &model {
                    assert_eq!(index.find(tag, |m| m == n), Some(n));
                }
                assert_eq!(index.find(tags[0], |m| m == number), None);
                assert_eq!(index.slots.iter().filter(|&&s| s != 0).count(), model.len());
            }
        }
        assert!(index.bits > Index::BITS_MIN);
    }

    /// The one pause the index has: doubling. Timed at the default capacity's last growth
    /// (12.6 M entries, 2^24 -> 2^25 slots): `cargo test --release -p paycore-engine --lib
    /// index_growth_pause -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, release build"]
    fn index_growth_pause() {
        let bits = 24;
        let mut index = Index::with_bits(bits);
        let full = (1usize << bits) * 3 / 4;
        for n in 0..full as u32 {
            index.insert(tag(xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes())), n);
        }
        assert_eq!(index.bits, bits);
        let start = std::time::Instant::now();
        index.insert(tag(u64::MAX), full as u32);
        let pause = start.elapsed();
        assert_eq!(index.bits, bits + 1);
        println!(
            "growth of {full} entries to 2^{} slots: {pause:.2?}",
            bits + 1
        );
    }
}
