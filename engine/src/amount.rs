//! Decimal amounts at the edges: parse a decimal string into integer minor units, and format
//! minor units back into a decimal string.
//!
//! The engine never sees a decimal: gateways and tools call these functions with the currency's
//! scale and hand the engine integers. Parsing is strict and never rounds: more decimal places
//! than the scale (other than trailing zeros), zero, a sign, an exponent or a value past
//! DECIMAL(28, 18) is a named error.

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::currency::{CURRENCY_SCALE_MAX, minor_units_max};

/// Longest decimal string accepted, in bytes (28 digits, a point, and leading zeros to spare).
pub const AMOUNT_TEXT_BYTES_MAX: usize = 64;

/// Why a decimal string is not a valid amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be a plain decimal number such as \"12.50\"")]
    Malformed,
    #[error("amount must be positive")]
    Negative,
    #[error("amount must not be zero")]
    Zero,
    #[error("amount has more decimal places than the currency's scale {scale}")]
    TooManyDecimals { scale: u8 },
    #[error("amount is larger than the largest balance the currency allows")]
    OutOfRange,
}

/// Parses `text` (e.g. `"12.50"`) into minor units of a currency with `scale` decimal places.
///
/// Accepts `digits` or `digits.digits`; trailing zeros beyond the scale are accepted because they
/// change nothing (`"1.500"` at scale 2 is 150). Rejects signs, exponents, whitespace and zero.
pub fn parse_amount(text: &str, scale: u8) -> Result<u128, AmountError> {
    assert!(scale <= CURRENCY_SCALE_MAX, "scale out of range");
    if text.len() > AMOUNT_TEXT_BYTES_MAX {
        return Err(AmountError::OutOfRange);
    }
    if text.starts_with('-') {
        return Err(AmountError::Negative);
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits_only = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || fraction.is_some_and(|f| !digits_only(f)) {
        return Err(AmountError::Malformed);
    }
    // Leading zeros do not count against the 28 digits rust_decimal can hold.
    let trimmed = text.trim_start_matches('0');
    let trimmed = if trimmed.is_empty() || trimmed.starts_with('.') {
        // "0.5" -> ".5" would not parse; keep one zero.
        &text[text.len() - trimmed.len() - 1..]
    } else {
        trimmed
    };
    let value = Decimal::from_str_exact(trimmed).map_err(|_| AmountError::OutOfRange)?;
    let value = value.normalize();
    if value.is_zero() {
        return Err(AmountError::Zero);
    }
    if value.scale() > u32::from(scale) {
        return Err(AmountError::TooManyDecimals { scale });
    }
    let mantissa = u128::try_from(value.mantissa()).map_err(|_| AmountError::Negative)?;
    let minor = 10u128
        .checked_pow(u32::from(scale) - value.scale())
        .and_then(|factor| mantissa.checked_mul(factor))
        .ok_or(AmountError::OutOfRange)?;
    if minor > minor_units_max(scale) {
        return Err(AmountError::OutOfRange);
    }
    Ok(minor)
}

/// Formats `minor` units of a currency with `scale` decimal places, with exactly `scale`
/// decimals (`1250` at scale 2 is `"12.50"`). Negative values (system wallets) keep their sign.
pub fn format_amount(minor: i128, scale: u8) -> String {
    assert!(scale <= CURRENCY_SCALE_MAX, "scale out of range");
    let digits = minor.unsigned_abs().to_string();
    let sign = if minor < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let scale = usize::from(scale);
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// Parses a decimal exchange rate (e.g. `"1.0845"`) into the engine's [`crate::Rate`].
pub fn parse_rate(text: &str) -> Result<crate::Rate, AmountError> {
    if text.len() > AMOUNT_TEXT_BYTES_MAX {
        return Err(AmountError::OutOfRange);
    }
    // A rate may have up to 18 decimals; reuse the strict amount grammar at scale 18.
    let mantissa = parse_amount(text, CURRENCY_SCALE_MAX)?;
    let value = Decimal::from_str(text)
        .map_err(|_| AmountError::Malformed)?
        .normalize();
    let scale = u8::try_from(value.scale()).map_err(|_| AmountError::Malformed)?;
    // mantissa is at scale 18; bring it down to the rate's own scale exactly.
    let divisor = 10u128.pow(u32::from(CURRENCY_SCALE_MAX - scale));
    crate::Rate::new(mantissa / divisor, scale).ok_or(AmountError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_amount("12.50", 2), Ok(1250));
        assert_eq!(parse_amount("12.5", 2), Ok(1250));
        assert_eq!(parse_amount("12", 2), Ok(1200));
        assert_eq!(parse_amount("1.500", 2), Ok(150));
        assert_eq!(parse_amount("0.01", 2), Ok(1));
        assert_eq!(parse_amount("007", 0), Ok(7));
        assert_eq!(parse_amount("0.000000000000000001", 18), Ok(1));
        assert_eq!(
            parse_amount("9999999999.999999999999999999", 18),
            Ok(10u128.pow(28) - 1)
        );
        assert_eq!(parse_amount("9999999999", 0), Ok(9_999_999_999));
    }

    #[test]
    fn rejects_with_names() {
        assert_eq!(
            parse_amount("12.505", 2),
            Err(AmountError::TooManyDecimals { scale: 2 })
        );
        assert_eq!(
            parse_amount("0.5", 0),
            Err(AmountError::TooManyDecimals { scale: 0 })
        );
        assert_eq!(parse_amount("0", 2), Err(AmountError::Zero));
        assert_eq!(parse_amount("0.00", 2), Err(AmountError::Zero));
        assert_eq!(parse_amount("-1", 2), Err(AmountError::Negative));
        assert_eq!(parse_amount("10000000000", 0), Err(AmountError::OutOfRange));
        assert_eq!(
            parse_amount("10000000000.0", 18),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(
            parse_amount(&"9".repeat(40), 2),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(
            parse_amount(&"9".repeat(65), 2),
            Err(AmountError::OutOfRange)
        );
        for bad in [
            "", ".", "1.", ".5", "+1", "1e5", " 1", "1 ", "1,5", "0x10", "1.2.3", "NaN",
        ] {
            assert_eq!(parse_amount(bad, 2), Err(AmountError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_amount(1250, 2), "12.50");
        assert_eq!(format_amount(5, 2), "0.05");
        assert_eq!(format_amount(-5, 2), "-0.05");
        assert_eq!(format_amount(0, 2), "0.00");
        assert_eq!(format_amount(42, 0), "42");
        assert_eq!(format_amount(1, 18), "0.000000000000000001");
    }

    #[test]
    fn parse_format_round_trip() {
        for scale in [0u8, 2, 8, 18] {
            for minor in [1u128, 7, 100, 123_456_789, minor_units_max(scale)] {
                let text = format_amount(minor as i128, scale);
                assert_eq!(parse_amount(&text, scale), Ok(minor), "{text}");
            }
        }
    }

    #[test]
    fn rates() {
        let rate = parse_rate("1.0845").expect("valid rate");
        assert_eq!((rate.mantissa(), rate.scale()), (10845, 4));
        assert_eq!(parse_rate("0"), Err(AmountError::Zero));
        assert_eq!(parse_rate("-1"), Err(AmountError::Negative));
    }
}
