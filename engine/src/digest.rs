//! A streaming digest with a fixed, little-endian encoding of every value fed to it.
//!
//! Used for the state hash and for the parameter fingerprint of idempotent commands. Both must
//! be equal on every machine and in every build, so nothing here depends on `std::hash::Hash`
//! (whose byte stream is not specified) or on native endianness.

use xxhash_rust::xxh3::Xxh3;

use crate::currency::CurrencyCode;

/// Where digested bytes go.
pub(crate) trait Sink {
    fn update(&mut self, bytes: &[u8]);
}

impl Sink for Xxh3 {
    fn update(&mut self, bytes: &[u8]) {
        Xxh3::update(self, bytes);
    }
}

/// A 64-bit fingerprint of a short byte stream (a command's parameters), built in a stack
/// buffer: no streaming-hasher set-up on the hot path. Longer streams are folded chunk by chunk.
#[derive(Debug)]
pub(crate) struct Fingerprint {
    buffer: [u8; FINGERPRINT_CHUNK_BYTES],
    len: usize,
    folded: u64,
}

const FINGERPRINT_CHUNK_BYTES: usize = 192;

impl Sink for Fingerprint {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == FINGERPRINT_CHUNK_BYTES {
                self.folded = xxhash_rust::xxh3::xxh3_64_with_seed(&self.buffer, self.folded);
                self.len = 0;
            }
            let take = bytes.len().min(FINGERPRINT_CHUNK_BYTES - self.len);
            self.buffer[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
        }
    }
}

pub(crate) struct Digest<S: Sink = Xxh3>(S);

impl<S: Sink> std::fmt::Debug for Digest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest")
    }
}

impl Digest<Xxh3> {
    pub(crate) fn new() -> Self {
        Digest(Xxh3::new())
    }

    pub(crate) fn finish_128(&self) -> u128 {
        self.0.digest128()
    }
}

impl Digest<Fingerprint> {
    pub(crate) fn fingerprint() -> Self {
        Digest(Fingerprint {
            buffer: [0; FINGERPRINT_CHUNK_BYTES],
            len: 0,
            folded: 0,
        })
    }

    pub(crate) fn finish_64(&self) -> u64 {
        let f = &self.0;
        xxhash_rust::xxh3::xxh3_64_with_seed(&f.buffer[..f.len], f.folded)
    }
}

impl<S: Sink> Digest<S> {
    pub(crate) fn u8(&mut self, value: u8) -> &mut Self {
        self.0.update(&[value]);
        self
    }

    pub(crate) fn u16(&mut self, value: u16) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub(crate) fn u128(&mut self, value: u128) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub(crate) fn i128(&mut self, value: i128) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u64(value.len() as u64);
        self.0.update(value);
        self
    }

    pub(crate) fn code(&mut self, code: &CurrencyCode) -> &mut Self {
        self.bytes(code.as_bytes())
    }
}
