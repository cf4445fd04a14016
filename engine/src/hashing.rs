//! Hashing for the engine's in-memory indexes: fast, seeded, and fixed across machines.
//!
//! Index layout never influences an outcome (nothing iterates a hash table to decide), so the
//! seed may differ between processes; it only has to be hard to guess for a hostile client
//! picking idempotency keys.

use std::hash::{BuildHasher, Hasher};

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Folded 64x64 -> 128 bit multiply: a good one-round mixer for integer keys.
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Hash of a (user, currency) pair, the key of the wallet index.
pub(crate) fn user_currency_hash(seed: u64, user: u128, currency: u16) -> u64 {
    let low = user as u64;
    let high = (user >> 64) as u64;
    let mixed = fold_mul(
        low ^ seed ^ MULTIPLIER,
        high ^ u64::from(currency).rotate_left(32),
    );
    fold_mul(mixed, MULTIPLIER)
}

/// Build hasher for tables keyed by integers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FixedState(pub u64);

impl BuildHasher for FixedState {
    type Hasher = IntHasher;

    fn build_hasher(&self) -> IntHasher {
        IntHasher(self.0 ^ MULTIPLIER)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        fold_mul(self.0, MULTIPLIER)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = fold_mul(self.0 ^ value, MULTIPLIER);
    }

    fn write_u128(&mut self, value: u128) {
        self.write_u64(value as u64);
        self.write_u64((value >> 64) as u64);
    }
}
