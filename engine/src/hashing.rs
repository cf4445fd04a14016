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
///
/// Each half is multiplied by a fixed odd constant on its own before they are combined, so no
/// input makes a product vanish (an earlier version multiplied the two halves together, and the
/// high half of small sequential user ids is zero: every such key hashed alike).
pub(crate) fn user_currency_hash(seed: u64, user: u128, currency: u16) -> u64 {
    let low = fold_mul(user as u64 ^ seed, MULTIPLIER);
    let high = fold_mul(
        (user >> 64) as u64 ^ (u64::from(currency) << 48) ^ SECOND,
        THIRD,
    );
    fold_mul(low ^ high.rotate_left(29), MULTIPLIER)
}

const SECOND: u64 = 0xC2B2_AE3D_27D4_EB4F;
const THIRD: u64 = 0x1656_67B1_9E37_79F9;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_and_random_users_spread_over_buckets() {
        // Small sequential ids (high half zero) and ids differing only in the high half, in
        // two currencies: the low 20 bits of the hashes must be nearly all distinct.
        let mut seen = std::collections::HashSet::new();
        let keys = (1..=20_000u128).chain((1..=20_000u128).map(|u| u << 64));
        for user in keys {
            for currency in [0u16, 1] {
                seen.insert(user_currency_hash(0, user, currency) & 0xF_FFFF);
            }
        }
        assert!(
            seen.len() > 70_000,
            "only {} distinct buckets of 80000",
            seen.len()
        );
    }
}
