//! Storage that grows without moving what it holds: the engine's big arrays in fixed-size
//! chunks.
//!
//! A `Vec` that doubles copies everything it holds, inside the shard writer's batch: at
//! 10 M wallets the copy of the hot parts alone is 640 MB, hundreds of milliseconds during
//! which every reply waits (issue 17: p99 136-148 ms with default flags). Here an array is a
//! list of chunks of `1 << shift` elements, each allocated whole when the one before it is
//! full and never moved afterwards; growing costs one allocation (its pages are faulted in as
//! they are written, never copied). Element `i` is `chunks[i >> shift][i & mask]`: one more
//! load than a flat vector, from a chunk table small enough to stay in the L1 cache.
//!
//! [`ChunkedVec`] is indexed (the wallets), [`ChunkedFifo`] is a queue that is pushed at the
//! back and popped at the front (the idempotency entries); its emptied front chunk is kept for
//! the next push, so a table at its steady size allocates nothing.

/// A chunk of `1 << shift` elements, on huge pages when large enough. Chunks should be tens
/// of MiB: an allocation is only page-aligned, so the huge pages inside it are the whole
/// 2 MiB blocks it spans (15 of 16 in 32 MiB), and a chunk under 4 MiB gets none — random
/// accesses over small-page arrays miss the TLB (measured: half the transfer rate at 1 M
/// wallets with 2-4 MiB chunks).
fn chunk<T>(shift: u32) -> Vec<T> {
    let chunk = Vec::with_capacity(1 << shift);
    crate::huge_pages::advise(&chunk);
    chunk
}

/// The chunk shift that makes chunks of `T` about 32 MiB.
pub(crate) const fn shift_for<T>() -> u32 {
    let size = std::mem::size_of::<T>();
    let size = if size == 0 { 1 } else { size };
    let mut shift = 25u32;
    let mut bytes = size;
    while bytes > 1 {
        bytes >>= 1;
        shift -= 1;
    }
    shift
}

/// An indexed array in chunks of `1 << shift` elements (see the module docs).
#[derive(Debug)]
pub(crate) struct ChunkedVec<T, const SHIFT: u32> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T: Copy, const SHIFT: u32> ChunkedVec<T, SHIFT> {
    const MASK: usize = (1 << SHIFT) - 1;
    const VALID: () = assert!(SHIFT >= 4 && SHIFT <= 30, "chunk size");

    pub(crate) fn new() -> Self {
        let () = Self::VALID;
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Elements that fit without allocating another chunk.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() << SHIFT
    }

    /// Allocates chunks for at least `capacity` elements (faulted in now with `populate`).
    pub(crate) fn reserve(&mut self, capacity: usize, populate: bool) {
        while self.capacity() < capacity {
            self.chunks.push(chunk(SHIFT));
            if populate && let Some(last) = self.chunks.last() {
                crate::huge_pages::populate(last);
            }
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, value: T) {
        let at = self.len >> SHIFT;
        if at == self.chunks.len() {
            self.chunks.push(chunk(SHIFT));
        }
        self.chunks[at].push(value);
        self.len += 1;
        debug_assert_eq!(self.chunks[at].len(), ((self.len - 1) & Self::MASK) + 1);
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // The emptied chunk stays allocated: a push after a pop (a linked group's undo)
        // allocates nothing.
        self.chunks[self.len >> SHIFT].pop()
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        Some(self.at(index))
    }

    /// Element `index`, known to be below the length.
    ///
    /// The one bounds check is the caller's `index < len`: with it, chunk `index >> SHIFT`
    /// exists and holds more than `index & MASK` elements (pushes fill chunks in order, every
    /// chunk before the last is full), so the two inner checks a `Vec` of `Vec`s would repeat
    /// on every wallet access are skipped (measured: about 60 instructions a transfer).
    #[inline]
    fn at(&self, index: usize) -> &T {
        debug_assert!(index < self.len);
        let (chunk, slot) = (index >> SHIFT, index & Self::MASK);
        debug_assert!(chunk < self.chunks.len() && slot < self.chunks[chunk].len());
        #[allow(unsafe_code)]
        // SAFETY: `index < self.len` (checked by every caller); by the invariant above, chunk
        // `chunk` exists and holds more than `slot` initialised elements.
        unsafe {
            self.chunks.get_unchecked(chunk).get_unchecked(slot)
        }
    }

    #[inline]
    fn at_mut(&mut self, index: usize) -> &mut T {
        debug_assert!(index < self.len);
        let (chunk, slot) = (index >> SHIFT, index & Self::MASK);
        debug_assert!(chunk < self.chunks.len() && slot < self.chunks[chunk].len());
        #[allow(unsafe_code)]
        // SAFETY: as in `at`.
        unsafe {
            self.chunks.get_unchecked_mut(chunk).get_unchecked_mut(slot)
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

impl<T: Copy, const SHIFT: u32> std::ops::Index<usize> for ChunkedVec<T, SHIFT> {
    type Output = T;

    #[inline]
    fn index(&self, index: usize) -> &T {
        assert!(index < self.len, "index {index} past {}", self.len);
        self.at(index)
    }
}

impl<T: Copy, const SHIFT: u32> std::ops::IndexMut<usize> for ChunkedVec<T, SHIFT> {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut T {
        assert!(index < self.len, "index {index} past {}", self.len);
        self.at_mut(index)
    }
}

impl<T: Copy, const SHIFT: u32> Clone for ChunkedVec<T, SHIFT> {
    /// Chunk by chunk, each on huge pages like the original (`huge_pages::clone_advised`).
    fn clone(&self) -> Self {
        ChunkedVec {
            chunks: self
                .chunks
                .iter()
                .map(crate::huge_pages::clone_advised)
                .collect(),
            len: self.len,
        }
    }
}

/// A queue in chunks of `1 << shift` elements: pushed at the back, popped at the front,
/// indexed from the front (see the module docs).
#[derive(Debug)]
pub(crate) struct ChunkedFifo<T, const SHIFT: u32> {
    /// A plain `Vec` of chunks: indexing it is cheaper than a `VecDeque`'s, and dropping the
    /// front chunk shifts a few dozen pointers once per `1 << SHIFT` pops.
    chunks: Vec<Vec<T>>,
    /// Index in the front chunk of the front element.
    head: usize,
    len: usize,
    /// A chunk emptied at the front, kept for the next push at the back.
    spare: Option<Vec<T>>,
}

impl<T: Copy, const SHIFT: u32> ChunkedFifo<T, SHIFT> {
    const MASK: usize = (1 << SHIFT) - 1;
    const VALID: () = assert!(SHIFT >= 4 && SHIFT <= 30, "chunk size");

    pub(crate) fn new() -> Self {
        let () = Self::VALID;
        ChunkedFifo {
            chunks: Vec::new(),
            head: 0,
            len: 0,
            spare: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocates chunks so that `capacity` elements fit from the current front (faulted in
    /// now with `populate`).
    pub(crate) fn reserve(&mut self, capacity: usize, populate: bool) {
        // Chunks past the back one wait empty in the queue; a push fills them in order.
        while (self.chunks.len() << SHIFT) < self.head + capacity {
            let fresh = self.spare.take().unwrap_or_else(|| chunk(SHIFT));
            if populate {
                crate::huge_pages::populate(&fresh);
            }
            self.chunks.push(fresh);
        }
    }

    #[inline]
    pub(crate) fn push_back(&mut self, value: T) {
        let end = self.head + self.len;
        let at = end >> SHIFT;
        if at == self.chunks.len() {
            self.add_chunk();
        }
        self.chunks[at].push(value);
        self.len += 1;
    }

    #[cold]
    fn add_chunk(&mut self) {
        let fresh = self.spare.take().unwrap_or_else(|| chunk(SHIFT));
        debug_assert!(fresh.is_empty());
        self.chunks.push(fresh);
    }

    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self.chunks[0][self.head];
        self.head += 1;
        self.len -= 1;
        if self.head == 1 << SHIFT || self.len == 0 {
            self.recycle_front();
        }
        Some(value)
    }

    /// The front chunk is used up (or the queue is empty): keep it for the next push.
    #[cold]
    fn recycle_front(&mut self) {
        if !self.chunks.is_empty() {
            let mut used = self.chunks.remove(0);
            used.clear();
            if self.spare.is_none() {
                self.spare = Some(used);
            }
        }
        self.head = 0;
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        Some(self.at(index))
    }

    /// Element `index` from the front, known to be below the length (see `ChunkedVec::at`:
    /// position `head + index` lies in a chunk that holds it, since pushes fill chunks in
    /// order from the front chunk's start and pops only move `head`).
    #[inline]
    fn at(&self, index: usize) -> &T {
        debug_assert!(index < self.len);
        let position = self.head + index;
        let (chunk, slot) = (position >> SHIFT, position & Self::MASK);
        debug_assert!(chunk < self.chunks.len() && slot < self.chunks[chunk].len());
        #[allow(unsafe_code)]
        // SAFETY: `index < self.len` (checked by every caller); by the invariant above, chunk
        // `chunk` exists and holds more than `slot` initialised elements.
        unsafe {
            self.chunks.get_unchecked(chunk).get_unchecked(slot)
        }
    }

    #[inline]
    pub(crate) fn front(&self) -> Option<&T> {
        self.get(0)
    }

    #[inline]
    pub(crate) fn back(&self) -> Option<&T> {
        self.len.checked_sub(1).and_then(|last| self.get(last))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.len).map(|i| {
            self.get(i)
                .unwrap_or_else(|| unreachable!("index below the length"))
        })
    }
}

impl<T: Copy, const SHIFT: u32> std::ops::Index<usize> for ChunkedFifo<T, SHIFT> {
    type Output = T;

    #[inline]
    fn index(&self, index: usize) -> &T {
        assert!(index < self.len, "index {index} past {}", self.len);
        self.at(index)
    }
}

impl<T: Copy, const SHIFT: u32> Clone for ChunkedFifo<T, SHIFT> {
    fn clone(&self) -> Self {
        ChunkedFifo {
            chunks: self
                .chunks
                .iter()
                .map(crate::huge_pages::clone_advised)
                .collect(),
            head: self.head,
            len: self.len,
            spare: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Against `Vec` and `VecDeque` under random pushes, pops and reads: same contents, and
    /// nothing held ever moves (an element's address is stable while it lives).
    #[test]
    fn chunked_storage_matches_the_plain_collections_and_never_moves_an_element() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut vec: ChunkedVec<u64, 4> = ChunkedVec::new();
        let mut plain = Vec::new();
        let mut fifo: ChunkedFifo<u64, 4> = ChunkedFifo::new();
        let mut deque = VecDeque::new();
        let mut first_address = None;
        for step in 0..20_000u64 {
            match next() % 10 {
                0..=5 => {
                    vec.push(step);
                    plain.push(step);
                    fifo.push_back(step);
                    deque.push_back(step);
                }
                6 => {
                    assert_eq!(vec.pop(), plain.pop());
                }
                _ => {
                    assert_eq!(fifo.pop_front(), deque.pop_front());
                }
            }
            if first_address.is_none() && vec.len() > 0 {
                first_address = Some(&vec[0] as *const u64);
            }
            if let Some(address) = first_address
                && vec.len() > 0
            {
                assert_eq!(&vec[0] as *const u64, address, "an element moved");
            }
            assert_eq!(vec.len(), plain.len());
            assert_eq!(fifo.len(), deque.len());
            if step % 101 == 0 {
                assert!(vec.iter().eq(plain.iter()));
                assert!(fifo.iter().eq(deque.iter()));
                assert_eq!(fifo.front(), deque.front());
                assert_eq!(fifo.back(), deque.back());
                let probe = (next() as usize) % (plain.len() + 2);
                assert_eq!(vec.get(probe), plain.get(probe));
                assert_eq!(fifo.get(probe), deque.get(probe));
                assert!(vec.clone().iter().eq(plain.iter()));
                assert!(fifo.clone().iter().eq(deque.iter()));
            }
        }
        let mut reserved: ChunkedFifo<u64, 4> = ChunkedFifo::new();
        assert_eq!(shift_for::<crate::wallet::Hot>(), 19);
        assert_eq!(shift_for::<u64>(), 22);
        reserved.reserve(100, false);
        for n in 0..100 {
            reserved.push_back(n);
        }
        assert!(reserved.iter().copied().eq(0..100));
    }
}
