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

use crate::chunked::ChunkedFifo;
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

#[derive(Debug, Clone, Copy)]
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
///
/// Doubling never stops the world: the old slots are kept as a read-only [`Retiring`] table
/// and moved into the new one [`MIGRATE_SLOTS_PER_INSERT`] at a time, one step per insert,
/// long before the new table could fill (it starts at 3/8 load). Meanwhile a lookup probes the
/// new table, then the old; an entry lives in exactly one of them. (Re-placing 12.6 M entries
/// at once took a batch hundreds of milliseconds.)
#[derive(Debug)]
struct Index {
    slots: Vec<u64>,
    bits: u32,
    /// Entries in both tables.
    len: usize,
    retiring: Option<Retiring>,
}

/// The old table while its entries move to the new one. Its moved or removed slots hold
/// [`MOVED`] (a probe passes over them, nothing matches them), so probes for the entries
/// still there find them as before. Its empty slots stay empty (at least a quarter of them:
/// it was at most 3/4 full and takes no inserts), so every probe of it ends.
#[derive(Debug, Clone)]
struct Retiring {
    slots: Vec<u64>,
    bits: u32,
    /// Slots below it have been moved.
    cursor: usize,
}

/// An old-table slot whose entry has moved or gone. Never a real slot: real tags are odd.
const MOVED: u64 = 2;

/// Old slots moved per insert while a table grows (the new table, twice the size, could only
/// fill after as many inserts as the old one held: far more than its slots / this).
const MIGRATE_SLOTS_PER_INSERT: usize = 8;

impl Clone for Index {
    /// On huge pages like the original (`huge_pages::clone_advised`).
    fn clone(&self) -> Self {
        Index {
            slots: crate::huge_pages::clone_advised(&self.slots),
            bits: self.bits,
            len: self.len,
            retiring: self.retiring.as_ref().map(|old| Retiring {
                slots: crate::huge_pages::clone_advised(&old.slots),
                bits: old.bits,
                cursor: old.cursor,
            }),
        }
    }
}

fn home_of(tag: u32, bits: u32) -> usize {
    (u64::from(tag) >> (32 - bits)) as usize
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
            retiring: None,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, tag: u32) -> usize {
        home_of(tag, self.bits)
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
                break;
            }
            if Index::slot_tag(slot) == tag && matches(slot as u32) {
                return Some(slot as u32);
            }
            i = (i + 1) & mask;
        }
        let old = self.retiring.as_ref()?;
        let mask = old.slots.len() - 1;
        let mut i = home_of(tag, old.bits);
        loop {
            let slot = old.slots[i];
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
        self.migrate(MIGRATE_SLOTS_PER_INSERT);
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

    /// Starts doubling: the current slots retire, a table twice the size takes new entries.
    fn grow(&mut self) {
        // A previous growth still moving (only when a reserve grows twice in a row): finish it.
        self.migrate(usize::MAX);
        let old = std::mem::take(&mut self.slots);
        let bits = self.bits;
        *self = Index {
            len: self.len,
            ..Index::with_bits(bits + 1)
        };
        self.retiring = Some(Retiring {
            slots: old,
            bits,
            cursor: 0,
        });
    }

    /// Moves up to `slots` old slots into the new table; drops the old table once all moved.
    #[inline]
    fn migrate(&mut self, slots: usize) {
        if self.retiring.is_some() {
            self.migrate_some(slots);
        }
    }

    #[cold]
    fn migrate_some(&mut self, slots: usize) {
        let Some(mut old) = self.retiring.take() else {
            return;
        };
        let end = old.cursor.saturating_add(slots).min(old.slots.len());
        for i in old.cursor..end {
            let value = old.slots[i];
            if value == 0 {
                // Empty stays empty: no run crosses it, and every probe of the old table must
                // still find an empty slot to end at.
                continue;
            }
            if value != MOVED {
                self.place(value);
            }
            // Not 0: a probe for an entry later in this run must walk past it.
            old.slots[i] = MOVED;
        }
        old.cursor = end;
        if old.cursor < old.slots.len() {
            self.retiring = Some(old);
        }
    }

    /// Entries held in both tables, counted slot by slot (a check of `len`).
    #[cfg(test)]
    fn live_slots(&self) -> usize {
        let live = |slots: &[u64]| slots.iter().filter(|&&s| s != 0 && s != MOVED).count();
        live(&self.slots) + self.retiring.as_ref().map_or(0, |old| live(&old.slots))
    }

    /// Finishes any growth in progress (tests and reserves: nothing left half moved).
    fn settle(&mut self) {
        self.migrate(usize::MAX);
    }

    /// Removes `number` under `tag`; false if it is not there.
    fn remove(&mut self, tag: u32, number: u32) -> bool {
        if self.remove_current(tag, number) {
            self.len -= 1;
            return true;
        }
        let Some(old) = self.retiring.as_mut() else {
            return false;
        };
        let value = (u64::from(tag) << 32) | u64::from(number);
        let mask = old.slots.len() - 1;
        let mut i = home_of(tag, old.bits);
        loop {
            match old.slots[i] {
                0 => return false,
                v if v == value => {
                    // No backward shift in the old table: a mark keeps the run whole.
                    old.slots[i] = MOVED;
                    self.len -= 1;
                    return true;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn remove_current(&mut self, tag: u32, number: u32) -> bool {
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
        true
    }
}

/// Bytes per chunk of the key arena (on huge pages: a lookup compares a random key).
const KEY_CHUNK_BYTES: usize = 32 << 20;

fn key_chunk() -> Vec<u8> {
    let chunk = Vec::with_capacity(KEY_CHUNK_BYTES);
    crate::huge_pages::advise(&chunk);
    chunk
}

/// FIFO byte arena: keys are appended at the back and released from the front, in chunks
/// that never move (a key never straddles two; the tail a key did not fit in stays unused).
/// A key's logical offset is its chunk's number times [`KEY_CHUNK_BYTES`] plus its place in
/// the chunk. (A `Vec<u8>` compacted by draining its dead half moved hundreds of megabytes
/// inside a batch at millions of keys.)
#[derive(Debug, Default, Clone)]
struct KeyArena {
    /// A plain `Vec` of chunks (cheaper to index than a `VecDeque`; the front one leaves
    /// once per 32 MiB of keys).
    chunks: Vec<Vec<u8>>,
    /// Number of `chunks[0]`.
    first_chunk: u64,
    /// An emptied chunk, kept for the next one needed.
    spare: Option<Vec<u8>>,
}

impl KeyArena {
    #[inline]
    fn push(&mut self, key: &[u8]) -> u64 {
        debug_assert!(key.len() <= usize::from(u8::MAX));
        let fits = self
            .chunks
            .last()
            .is_some_and(|back| back.len() + key.len() <= KEY_CHUNK_BYTES);
        if !fits {
            let fresh = self.spare.take().unwrap_or_else(key_chunk);
            debug_assert!(fresh.is_empty());
            self.chunks.push(fresh);
        }
        let number = self.first_chunk + self.chunks.len() as u64 - 1;
        let Some(back) = self.chunks.last_mut() else {
            unreachable!("a chunk was just ensured")
        };
        let offset = number * KEY_CHUNK_BYTES as u64 + back.len() as u64;
        back.extend_from_slice(key);
        offset
    }

    #[inline]
    fn get(&self, offset: u64, len: u8) -> &[u8] {
        let chunk = (offset / KEY_CHUNK_BYTES as u64 - self.first_chunk) as usize;
        let start = (offset % KEY_CHUNK_BYTES as u64) as usize;
        &self.chunks[chunk][start..start + usize::from(len)]
    }

    /// Releases every chunk before the one holding `offset` (the oldest live key), or every
    /// chunk when no key is live (`None`).
    #[inline]
    fn release_before(&mut self, offset: Option<u64>) {
        let keep_from = offset.map_or(u64::MAX, |o| o / KEY_CHUNK_BYTES as u64);
        if self.first_chunk < keep_from {
            self.release_front(keep_from);
        }
    }

    #[cold]
    fn release_front(&mut self, keep_from: u64) {
        while self.first_chunk < keep_from && !self.chunks.is_empty() {
            let mut used = self.chunks.remove(0);
            self.first_chunk += 1;
            used.clear();
            if self.spare.is_none() {
                self.spare = Some(used);
            }
        }
    }

    /// Chunks allocated, for a reserve of `bytes`.
    fn reserve(&mut self, bytes: usize) {
        if self.spare.is_none() && bytes > 0 {
            self.spare = Some(key_chunk());
        }
    }
}

/// Entries per chunk of the FIFO (about 32 MiB chunks, on huge pages: a lookup reads a
/// random entry).
const ENTRY_CHUNK_SHIFT: u32 = crate::chunked::shift_for::<Entry>();

#[derive(Debug, Clone)]
pub(crate) struct IdempotencyTable {
    entries: ChunkedFifo<Entry, ENTRY_CHUNK_SHIFT>,
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
        self.entries.reserve(entries, true);
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
        self.entries.reserve(entries, false);
        self.keys.reserve(entries);
        // Load stays at most 3/4: slots >= entries * 4 / 3.
        let slots = entries.saturating_mul(4).div_ceil(3).next_power_of_two();
        let bits = slots.trailing_zeros().clamp(Index::BITS_MIN, 32);
        while self.index.bits < bits {
            self.index.grow();
        }
        // Reserving happens before work starts: nothing is left half moved.
        self.index.settle();
    }

    pub(crate) fn new(window_ns: u64, entries_max: usize, seed: u64) -> Self {
        assert!(entries_max > 0);
        assert!(
            entries_max <= u32::MAX as usize,
            "idempotency entries are numbered mod 2^32"
        );
        IdempotencyTable {
            entries: ChunkedFifo::new(),
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
        self.keys
            .release_before(self.entries.front().map(|next| next.key_offset));
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
        assert_eq!(table.index.live_slots(), 0);
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
                assert_eq!(index.live_slots(), model.len());
            }
        }
        assert!(index.bits > Index::BITS_MIN);
    }

    /// Growth moves the old table a few slots per insert: every entry stays findable and
    /// removable at every step of a migration, including removals of entries still in the old
    /// table and wrapped runs; the old table goes once all moved.
    #[test]
    fn a_growing_index_finds_and_removes_every_entry_mid_migration() {
        use std::collections::BTreeSet;
        let mut index = Index::with_bits(Index::BITS_MIN + 6);
        let mut model = BTreeSet::new();
        let mut number = 0u32;
        let mut seen_migrating = false;
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..40_000u32 {
            if model.is_empty() || next() % 10 < 7 {
                let tag = if next() % 4 == 0 {
                    u32::MAX
                } else {
                    tag(next())
                };
                index.insert(tag, number);
                model.insert((tag, number));
                number = number.wrapping_add(1);
            } else {
                let pick = (next() % model.len() as u64) as usize;
                let &(tag, n) = model.iter().nth(pick).expect("non-empty");
                assert!(index.remove(tag, n), "step {step}");
                model.remove(&(tag, n));
            }
            seen_migrating |= index.retiring.is_some();
            if step % 211 == 0 {
                for &(tag, n) in &model {
                    assert_eq!(index.find(tag, |m| m == n), Some(n), "step {step}");
                }
                assert_eq!(index.live_slots(), model.len());
            }
        }
        assert!(seen_migrating);
        index.settle();
        assert!(index.retiring.is_none());
        assert_eq!(index.live_slots(), model.len());
    }

    /// What doubling costs an insert now that it migrates incrementally, at the default
    /// capacity's last growth (12.6 M entries, 2^24 -> 2^25 slots): the slowest single insert
    /// of the growth and of the whole migration after it. `cargo test --release -p
    /// paycore-engine --lib index_growth_pause -- --ignored --nocapture`.
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
        let mut slowest = std::time::Duration::ZERO;
        let mut n = full as u32;
        let started = std::time::Instant::now();
        loop {
            let start = std::time::Instant::now();
            index.insert(tag(xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes())), n);
            slowest = slowest.max(start.elapsed());
            n += 1;
            if index.bits > bits && index.retiring.is_none() {
                break;
            }
        }
        println!(
            "growth of {full} entries to 2^{} slots, migrated over {} inserts in {:.2?}: slowest insert {slowest:.2?}",
            bits + 1,
            n as usize - full,
            started.elapsed()
        );
    }
}
