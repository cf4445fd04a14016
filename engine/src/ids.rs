//! Identifiers of the ledger: users, wallets, holds, transfers and shards.
//!
//! Wallet and hold ids are assigned by the engine, deterministically, and carry the number of the
//! shard that owns them in their top 16 bits. Any node can therefore route a command that names a
//! wallet or a hold without a lookup, and a replay assigns exactly the same ids again.

use std::fmt;

/// Number of a shard. A node runs `shard_count` shards, numbered `0..shard_count`.
pub type ShardId = u16;

/// Most shards one deployment may have (so per-shard tables stay small).
pub const SHARD_COUNT_MAX: u16 = 1024;

/// Bits of a wallet or hold id that count within one shard.
const LOCAL_BITS: u32 = 48;
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;

/// A user, as the gateway knows it (a UUID, kept as its 128-bit value).
///
/// `UserId(0)` (the nil UUID) is reserved for the system wallets and is rejected as a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UserId(pub u128);

impl UserId {
    /// The owner of system wallets.
    pub const SYSTEM: UserId = UserId(0);

    /// The shard that holds every wallet of this user, out of `shard_count`.
    ///
    /// A fixed hash (xxh3 of the little-endian bytes): the same on every machine and in every
    /// version, because moving a user between shards is a data migration, not a code change.
    pub fn shard(self, shard_count: u16) -> ShardId {
        assert!(shard_count > 0, "shard_count must be positive");
        let hash = xxhash_rust::xxh3::xxh3_64(&self.0.to_le_bytes());
        // The remainder is below shard_count <= u16::MAX, so the cast is lossless.
        (hash % u64::from(shard_count)) as ShardId
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_uuid(f, self.0)
    }
}

/// A wallet: the owning shard in the top 16 bits, the wallet's slot in that shard below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalletId(pub u64);

impl WalletId {
    pub fn new(shard: ShardId, slot: u64) -> Self {
        assert!(slot <= LOCAL_MASK, "wallet slot out of range");
        WalletId((u64::from(shard) << LOCAL_BITS) | slot)
    }

    pub fn shard(self) -> ShardId {
        // The shift leaves exactly 16 bits.
        (self.0 >> LOCAL_BITS) as ShardId
    }

    pub fn slot(self) -> u64 {
        self.0 & LOCAL_MASK
    }
}

impl fmt::Display for WalletId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}:{}", self.shard(), self.slot())
    }
}

/// A hold (an authorisation or a pending withdrawal): shard in the top 16 bits, then a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HoldId(pub u64);

impl HoldId {
    pub fn new(shard: ShardId, number: u64) -> Self {
        assert!(number <= LOCAL_MASK, "hold number out of range");
        HoldId((u64::from(shard) << LOCAL_BITS) | number)
    }

    pub fn shard(self) -> ShardId {
        (self.0 >> LOCAL_BITS) as ShardId
    }

    pub fn number(self) -> u64 {
        self.0 & LOCAL_MASK
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{}:{}", self.shard(), self.number())
    }
}

/// One movement of money: the shard and sequence number of the command that made it, and its
/// index among the movements of that command (an exchange or a linked group makes several).
///
/// Packed as `shard << 80 | sequence << 16 | index`, so ids sort in commit order per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u128);

impl TransferId {
    pub fn new(shard: ShardId, sequence: u64, index: u16) -> Self {
        TransferId((u128::from(shard) << 80) | (u128::from(sequence) << 16) | u128::from(index))
    }

    pub fn shard(self) -> ShardId {
        (self.0 >> 80) as ShardId
    }

    pub fn sequence(self) -> u64 {
        (self.0 >> 16) as u64
    }

    pub fn index(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_uuid(f, self.0)
    }
}

/// Formats a 128-bit value as a UUID string (8-4-4-4-12 lower-case hex).
fn write_uuid(f: &mut fmt::Formatter<'_>, value: u128) -> fmt::Result {
    let hex = format!("{value:032x}");
    write!(
        f,
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_their_parts() {
        let wallet = WalletId::new(1023, LOCAL_MASK);
        assert_eq!(wallet.shard(), 1023);
        assert_eq!(wallet.slot(), LOCAL_MASK);
        let hold = HoldId::new(7, 42);
        assert_eq!((hold.shard(), hold.number()), (7, 42));
        let transfer = TransferId::new(3, u64::MAX, 9);
        assert_eq!(transfer.shard(), 3);
        assert_eq!(transfer.sequence(), u64::MAX);
        assert_eq!(transfer.index(), 9);
    }

    #[test]
    fn user_placement_is_fixed_and_spread() {
        // Fixed forever: moving users between shards is a migration, so pin a known value.
        assert_eq!(UserId(1).shard(1), 0);
        let mut counts = [0u32; 4];
        for user in 1..=4000u128 {
            counts[usize::from(UserId(user).shard(4))] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "uneven placement: {counts:?}");
        }
    }

    #[test]
    fn uuid_format() {
        let text = UserId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef).to_string();
        assert_eq!(text, "01234567-89ab-cdef-0123-456789abcdef");
    }
}
