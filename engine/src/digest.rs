//! A streaming digest with a fixed, little-endian encoding of every value fed to it.
//!
//! Used for the state hash and for the parameter fingerprint of idempotent commands. Both must
//! be equal on every machine and in every build, so nothing here depends on `std::hash::Hash`
//! (whose byte stream is not specified) or on native endianness.

use xxhash_rust::xxh3::Xxh3;

use crate::currency::CurrencyCode;

/// Where digested values go.
pub(crate) trait Sink {
    fn update(&mut self, bytes: &[u8]);
    /// An integer `width` bytes wide (1, 2, 4, 8 or 16).
    fn int(&mut self, value: u128, width: usize);
    /// A currency code: by default its length (as a u64) then its bytes.
    fn code(&mut self, bytes: &[u8; 10], len: u8) {
        self.int(u128::from(len), 8);
        self.update(&bytes[..usize::from(len)]);
    }
}

/// xxh3-128 fed through a 4 KiB buffer: the state hash writes millions of small fields, and one
/// streaming update per field costs several times the hashing itself. The byte stream (and so
/// the hash) is exactly the same as feeding the fields one by one.
pub(crate) struct BufferedXxh3 {
    hasher: Xxh3,
    buffer: Box<[u8; STATE_HASH_BUFFER_BYTES]>,
    len: usize,
}

const STATE_HASH_BUFFER_BYTES: usize = 4096;

impl BufferedXxh3 {
    fn flush(&mut self) {
        self.hasher.update(&self.buffer[..self.len]);
        self.len = 0;
    }
}

impl Sink for BufferedXxh3 {
    fn update(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > STATE_HASH_BUFFER_BYTES {
            self.flush();
        }
        if bytes.len() > STATE_HASH_BUFFER_BYTES {
            self.hasher.update(bytes);
        } else {
            self.buffer[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn int(&mut self, value: u128, width: usize) {
        self.update(&value.to_le_bytes()[..width]);
    }
}

/// A 64-bit fingerprint of a command's parameters, folded word by word with multiplications by
/// fixed constants: a few instructions per field, no buffer and no set-up on the hot path.
/// Deterministic on every machine. Not collision-resistant against a chosen input, which is
/// harmless here: a collision could only make a retry with other parameters return the first
/// outcome (nothing applies), never apply anything twice.
#[derive(Debug, Default)]
pub(crate) struct Fingerprint {
    state: u64,
    words: u64,
}

impl Fingerprint {
    fn word(&mut self, word: u64) {
        self.state = crate::hashing::fold_mul(self.state ^ word, 0x9E37_79B9_7F4A_7C15);
        self.words += 1;
    }
}

impl Sink for Fingerprint {
    fn update(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(word));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(tail) ^ (bytes.len() as u64) << 56);
    }

    fn int(&mut self, value: u128, width: usize) {
        self.word(value as u64);
        if width == 16 {
            self.word((value >> 64) as u64);
        }
    }

    /// Two words straight from the zero-padded storage: no copy through a byte buffer.
    fn code(&mut self, bytes: &[u8; 10], len: u8) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&bytes[..8]);
        self.word(u64::from_le_bytes(head));
        self.word(u64::from(bytes[8]) | u64::from(bytes[9]) << 8 | u64::from(len) << 16);
    }
}

pub(crate) struct Digest<S: Sink = BufferedXxh3>(S);

impl<S: Sink> std::fmt::Debug for Digest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest")
    }
}

impl Digest<BufferedXxh3> {
    pub(crate) fn new() -> Self {
        Digest(BufferedXxh3 {
            hasher: Xxh3::new(),
            buffer: Box::new([0; STATE_HASH_BUFFER_BYTES]),
            len: 0,
        })
    }

    pub(crate) fn finish_128(&mut self) -> u128 {
        self.0.flush();
        self.0.hasher.digest128()
    }
}

impl Digest<Fingerprint> {
    pub(crate) fn fingerprint() -> Self {
        Digest(Fingerprint::default())
    }

    pub(crate) fn finish_64(&self) -> u64 {
        crate::hashing::fold_mul(self.0.state ^ self.0.words, 0xC2B2_AE3D_27D4_EB4F)
    }
}

impl<S: Sink> Digest<S> {
    pub(crate) fn u8(&mut self, value: u8) -> &mut Self {
        self.0.int(u128::from(value), 1);
        self
    }

    pub(crate) fn u16(&mut self, value: u16) -> &mut Self {
        self.0.int(u128::from(value), 2);
        self
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.0.int(u128::from(value), 4);
        self
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.0.int(u128::from(value), 8);
        self
    }

    pub(crate) fn u128(&mut self, value: u128) -> &mut Self {
        self.0.int(value, 16);
        self
    }

    pub(crate) fn i128(&mut self, value: i128) -> &mut Self {
        self.0.int(value as u128, 16);
        self
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u64(value.len() as u64);
        self.0.update(value);
        self
    }

    pub(crate) fn code(&mut self, code: &CurrencyCode) -> &mut Self {
        let (bytes, len) = code.raw();
        self.0.code(bytes, len);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffering_does_not_change_the_hash() {
        let mut buffered = Digest::new();
        let mut plain = Xxh3::new();
        for i in 0..20_000u64 {
            buffered.u64(i).u8(i as u8).u128(u128::from(i) << 70);
            plain.update(&i.to_le_bytes());
            plain.update(&[i as u8]);
            plain.update(&(u128::from(i) << 70).to_le_bytes());
            if i % 997 == 0 {
                let long = vec![i as u8; 5000];
                buffered.bytes(&long);
                plain.update(&(long.len() as u64).to_le_bytes());
                plain.update(&long);
            }
        }
        assert_eq!(buffered.finish_128(), plain.digest128());
    }
}
