//! Little-endian primitives: a bounds-checked reader over one frame and the matching writers.

use paycore_engine::CurrencyCode;
use paycore_engine::SHARD_COUNT_MAX;

use crate::error::{ProtocolError, ProtocolErrorKind};

/// Reads one frame. `offset` counts from the frame's first byte, so every error names a
/// frame-relative offset. Reading past the end is a `Truncated` error, never a panic.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pub(crate) offset: usize,
}

pub(crate) type Result<T> = std::result::Result<T, ProtocolError>;

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], offset: usize) -> Self {
        Reader { bytes, offset }
    }

    pub(crate) fn fail<T>(&self, offset: usize, kind: ProtocolErrorKind) -> Result<T> {
        Err(ProtocolError::new(offset, kind))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.offset)
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.offset..).unwrap_or(&[])
    }

    /// How many items to reserve room for: never more than the bytes left could hold, so a
    /// count field cannot make the decoder allocate more than the input's length allows.
    pub(crate) fn capacity(&self, count: usize, item_bytes_min: usize) -> usize {
        count.min(self.remaining() / item_bytes_min.max(1))
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let array = self
            .offset
            .checked_add(N)
            .and_then(|end| self.bytes.get(self.offset..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok());
        match array {
            Some(array) => {
                self.offset += N;
                Ok(array)
            }
            None => self.fail(self.offset, ProtocolErrorKind::Truncated),
        }
    }

    pub(crate) fn slice(&mut self, len: usize) -> Result<&'a [u8]> {
        let slice = self
            .offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.offset..end));
        match slice {
            Some(slice) => {
                self.offset += len;
                Ok(slice)
            }
            None => self.fail(self.offset, ProtocolErrorKind::Truncated),
        }
    }

    pub(crate) fn skip(&mut self, len: usize) -> Result<()> {
        self.slice(len).map(|_| ())
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    pub(crate) fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.take()?))
    }

    pub(crate) fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.take()?))
    }

    /// A byte that must be 0 or 1.
    pub(crate) fn flag(&mut self) -> Result<bool> {
        let at = self.offset;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => self.fail(at, ProtocolErrorKind::Flag(other)),
        }
    }

    /// `0` or `1 value`.
    pub(crate) fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.flag()? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A u16 count of at most `max` items.
    pub(crate) fn count(&mut self, field: &'static str, max: usize) -> Result<usize> {
        let at = self.offset;
        let count = usize::from(self.u16()?);
        if count > max {
            return self.fail(at, ProtocolErrorKind::TooMany { field, count, max });
        }
        Ok(count)
    }

    /// `len:u8 [A-Z]{len}`, 1..=10 letters.
    pub(crate) fn code(&mut self) -> Result<CurrencyCode> {
        let at = self.offset;
        let len = usize::from(self.u8()?);
        let bytes = self.slice(len)?;
        CurrencyCode::from_bytes(bytes).or_else(|_| self.fail(at, ProtocolErrorKind::CurrencyCode))
    }

    /// A shard number, below [`SHARD_COUNT_MAX`].
    pub(crate) fn shard(&mut self) -> Result<u16> {
        let at = self.offset;
        let shard = self.u16()?;
        if shard >= SHARD_COUNT_MAX {
            return self.fail(at, ProtocolErrorKind::Shard(shard));
        }
        Ok(shard)
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u128(out: &mut Vec<u8>, value: u128) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_i128(out: &mut Vec<u8>, value: i128) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_code(out: &mut Vec<u8>, code: &CurrencyCode) {
    let bytes = code.as_bytes();
    // A code is 1 to 10 bytes.
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

pub(crate) fn put_option<T>(
    out: &mut Vec<u8>,
    value: Option<T>,
    put: impl FnOnce(&mut Vec<u8>, T),
) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put(out, value);
        }
    }
}

/// A count the caller has checked against a maximum below 65536.
pub(crate) fn put_count(out: &mut Vec<u8>, count: usize) {
    debug_assert!(count <= usize::from(u16::MAX));
    put_u16(out, count as u16);
}
