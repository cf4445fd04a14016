//! A streaming digest with a fixed, little-endian encoding of every value fed to it.
//!
//! Used for the state hash and for the parameter fingerprint of idempotent commands. Both must
//! be equal on every machine and in every build, so nothing here depends on `std::hash::Hash`
//! (whose byte stream is not specified) or on native endianness.

use xxhash_rust::xxh3::Xxh3;

use crate::currency::CurrencyCode;

#[derive(Clone, Default)]
pub(crate) struct Digest(Xxh3);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest")
    }
}

impl Digest {
    pub(crate) fn new() -> Self {
        Digest(Xxh3::new())
    }

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

    pub(crate) fn finish_64(&self) -> u64 {
        self.0.digest()
    }

    pub(crate) fn finish_128(&self) -> u128 {
        self.0.digest128()
    }
}
