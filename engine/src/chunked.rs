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

use std::collections::VecDeque;

/// A chunk of `1 << shift` elements, on huge pages when large enough.
fn chunk<T>(shift: u32) -> Vec<T> {
    let chunk = Vec::with_capacity(1 << shift);
    crate::huge_pages::advise(&chunk);
    chunk
}

/// An indexed array in chunks of `1 << shift` elements (see the module docs).
#[derive(Debug)]
pub(crate) struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
    shift: u32,
}

impl<T: Copy> ChunkedVec<T> {
    pub(crate) fn new(shift: u32) -> ChunkedVec<T> {
        assert!((4..=30).contains(&shift), "chunk size");
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
            shift,
        }
    }

    fn mask(&self) -> usize {
        (1 << self.shift) - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Elements that fit without allocating another chunk.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() << self.shift
    }

    /// Allocates chunks for at least `capacity` elements (faulted in now with `populate`).
    pub(crate) fn reserve(&mut self, capacity: usize, populate: bool) {
        while self.capacity() < capacity {
            self.chunks.push(chunk(self.shift));
            if populate && let Some(last) = self.chunks.last() {
                crate::huge_pages::populate(last);
            }
        }
    }

    pub(crate) fn push(&mut self, value: T) {
        let at = self.len >> self.shift;
        if at == self.chunks.len() {
            self.chunks.push(chunk(self.shift));
        }
        self.chunks[at].push(value);
        self.len += 1;
        debug_assert_eq!(self.chunks[at].len(), ((self.len - 1) & self.mask()) + 1);
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // The emptied chunk stays allocated: a push after a pop (a linked group's undo)
        // allocates nothing.
        self.chunks[self.len >> self.shift].pop()
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        Some(&self.chunks[index >> self.shift][index & self.mask()])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

impl<T: Copy> std::ops::Index<usize> for ChunkedVec<T> {
    type Output = T;

    #[inline]
    fn index(&self, index: usize) -> &T {
        assert!(index < self.len, "index {index} past {}", self.len);
        &self.chunks[index >> self.shift][index & self.mask()]
    }
}

impl<T: Copy> std::ops::IndexMut<usize> for ChunkedVec<T> {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut T {
        assert!(index < self.len, "index {index} past {}", self.len);
        let mask = self.mask();
        &mut self.chunks[index >> self.shift][index & mask]
    }
}

impl<T: Copy> Clone for ChunkedVec<T> {
    /// Chunk by chunk, each on huge pages like the original (`huge_pages::clone_advised`).
    fn clone(&self) -> Self {
        ChunkedVec {
            chunks: self
                .chunks
                .iter()
                .map(crate::huge_pages::clone_advised)
                .collect(),
            len: self.len,
            shift: self.shift,
        }
    }
}

/// A queue in chunks of `1 << shift` elements: pushed at the back, popped at the front,
/// indexed from the front (see the module docs).
#[derive(Debug)]
pub(crate) struct ChunkedFifo<T> {
    chunks: VecDeque<Vec<T>>,
    /// Index in the front chunk of the front element.
    head: usize,
    len: usize,
    shift: u32,
    /// A chunk emptied at the front, kept for the next push at the back.
    spare: Option<Vec<T>>,
}

impl<T: Copy> ChunkedFifo<T> {
    pub(crate) fn new(shift: u32) -> ChunkedFifo<T> {
        assert!((4..=30).contains(&shift), "chunk size");
        ChunkedFifo {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
            shift,
            spare: None,
        }
    }

    fn mask(&self) -> usize {
        (1 << self.shift) - 1
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
        while (self.chunks.len() << self.shift) < self.head + capacity {
            let fresh = self.spare.take().unwrap_or_else(|| chunk(self.shift));
            if populate {
                crate::huge_pages::populate(&fresh);
            }
            self.chunks.push_back(fresh);
        }
    }

    pub(crate) fn push_back(&mut self, value: T) {
        let end = self.head + self.len;
        let at = end >> self.shift;
        if at == self.chunks.len() {
            let fresh = self.spare.take().unwrap_or_else(|| chunk(self.shift));
            debug_assert!(fresh.is_empty());
            self.chunks.push_back(fresh);
        }
        self.chunks[at].push(value);
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self.chunks[0][self.head];
        self.head += 1;
        self.len -= 1;
        if self.head == 1 << self.shift || self.len == 0 {
            // The front chunk is used up (or the queue is empty): recycle it.
            if let Some(mut used) = self.chunks.pop_front() {
                used.clear();
                if self.spare.is_none() {
                    self.spare = Some(used);
                }
            }
            self.head = 0;
        }
        Some(value)
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        let at = self.head + index;
        Some(&self.chunks[at >> self.shift][at & self.mask()])
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.get(0)
    }

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

impl<T: Copy> std::ops::Index<usize> for ChunkedFifo<T> {
    type Output = T;

    #[inline]
    fn index(&self, index: usize) -> &T {
        assert!(index < self.len, "index {index} past {}", self.len);
        let at = self.head + index;
        &self.chunks[at >> self.shift][at & self.mask()]
    }
}

impl<T: Copy> Clone for ChunkedFifo<T> {
    fn clone(&self) -> Self {
        ChunkedFifo {
            chunks: self
                .chunks
                .iter()
                .map(crate::huge_pages::clone_advised)
                .collect(),
            head: self.head,
            len: self.len,
            shift: self.shift,
            spare: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut vec: ChunkedVec<u64> = ChunkedVec::new(4);
        let mut plain = Vec::new();
        let mut fifo: ChunkedFifo<u64> = ChunkedFifo::new(4);
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
        let mut reserved: ChunkedFifo<u64> = ChunkedFifo::new(4);
        reserved.reserve(100, false);
        for n in 0..100 {
            reserved.push_back(n);
        }
        assert!(reserved.iter().copied().eq(0..100));
    }
}
