//! Currencies: validated codes and the per-shard registry of codes and scales.
//!
//! Amounts inside the engine are integers of a currency's minor units (`10^-scale` of a unit).
//! The registry is engine state, changed only by a journaled `RegisterCurrency` command, so a
//! replay sees exactly the currencies the original run saw.

use std::fmt;

/// Longest currency code, in bytes.
pub const CURRENCY_CODE_BYTES_MAX: usize = 10;
/// Largest scale (decimal places) of a currency: the seed stores DECIMAL(28, 18).
pub const CURRENCY_SCALE_MAX: u8 = 18;
/// Digits before the decimal point that the seed's DECIMAL(28, 18) can hold.
pub const INTEGER_DIGITS_MAX: u32 = 10;
/// Most currencies one shard registers.
pub const CURRENCIES_MAX: usize = 1024;

/// A currency code: 1 to 10 ASCII upper-case letters (USD, EUR, BTC, USDT …).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CurrencyCode {
    bytes: [u8; CURRENCY_CODE_BYTES_MAX],
    len: u8,
}

/// Why a string is not a currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyCodeError {
    #[error("currency code must be 1 to {CURRENCY_CODE_BYTES_MAX} characters")]
    Length,
    #[error("currency code must be ASCII upper-case letters A-Z")]
    Character,
}

impl CurrencyCode {
    pub fn parse(text: &str) -> Result<Self, CurrencyCodeError> {
        Self::from_bytes(text.as_bytes())
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, CurrencyCodeError> {
        if raw.is_empty() || raw.len() > CURRENCY_CODE_BYTES_MAX {
            return Err(CurrencyCodeError::Length);
        }
        if !raw.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyCodeError::Character);
        }
        let mut bytes = [0u8; CURRENCY_CODE_BYTES_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        // raw.len() <= 10 was checked above.
        Ok(CurrencyCode {
            bytes,
            len: raw.len() as u8,
        })
    }

    /// The code's fixed-size storage (zero padded) and its length.
    pub(crate) fn raw(&self) -> (&[u8; CURRENCY_CODE_BYTES_MAX], u8) {
        (&self.bytes, self.len)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }
}

impl fmt::Debug for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Index of a currency in a shard's registry (the order of registration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CurrencyId(pub u16);

/// Largest amount, in minor units, that a balance or an amount of a currency with `scale` may
/// reach: `10^(10 + scale) - 1`, the largest value DECIMAL(28, 18) holds with 10 integer digits.
pub fn minor_units_max(scale: u8) -> u128 {
    assert!(scale <= CURRENCY_SCALE_MAX, "scale out of range");
    10u128.pow(INTEGER_DIGITS_MAX + u32::from(scale)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            CurrencyCode::parse("USDT").map(|c| c.to_string()),
            Ok("USDT".into())
        );
        assert_eq!(CurrencyCode::parse(""), Err(CurrencyCodeError::Length));
        assert_eq!(
            CurrencyCode::parse("ABCDEFGHIJK"),
            Err(CurrencyCodeError::Length)
        );
        assert!(CurrencyCode::parse("ABCDEFGHIJ").is_ok());
        assert_eq!(
            CurrencyCode::parse("usd"),
            Err(CurrencyCodeError::Character)
        );
        assert_eq!(
            CurrencyCode::parse("U D"),
            Err(CurrencyCodeError::Character)
        );
        assert_eq!(
            CurrencyCode::parse("ÜSD"),
            Err(CurrencyCodeError::Character)
        );
    }

    #[test]
    fn maxima() {
        assert_eq!(minor_units_max(0), 9_999_999_999);
        assert_eq!(minor_units_max(18), 10u128.pow(28) - 1);
    }
}
