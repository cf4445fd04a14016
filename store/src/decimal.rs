//! Exact conversion between integer minor units and the decimal text SQL stores
//! (`NUMERIC` in PostgreSQL, `TEXT` in SQLite). No floats anywhere: the text is built digit by
//! digit and parsed back digit by digit.

/// Longest decimal text accepted by [`parse_minor`] (a sign, 39 digits of i128, a point and
/// 18 decimals fit comfortably).
pub const DECIMAL_TEXT_BYTES_MAX: usize = 80;

/// `value` minor units at `scale` as a decimal string: `-12.34` for (-1234, 2), `7` at scale 0.
pub fn format_minor(value: i128, scale: u8) -> String {
    let mut out = Vec::with_capacity(48);
    write_minor(&mut out, value, scale);
    // Only ASCII digits, '-' and '.' were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`format_minor`] appended to `out`, without allocating (the flusher's COPY buffers).
pub fn write_minor(out: &mut Vec<u8>, value: i128, scale: u8) {
    // u128::MAX has 39 digits.
    let mut buffer = [0u8; 39];
    let mut start = buffer.len();
    let mut rest = value.unsigned_abs();
    loop {
        start -= 1;
        buffer[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = &buffer[start..];
    let scale = usize::from(scale);
    if value < 0 {
        out.push(b'-');
    }
    if scale == 0 {
        out.extend_from_slice(digits);
    } else if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
        out.extend_from_slice(digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    }
}

/// Why a stored decimal could not be read back as minor units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decimal {text:?} at scale {scale}: {reason}")]
pub struct DecimalError {
    pub text: String,
    pub scale: u8,
    pub reason: &'static str,
}

/// Parses what SQL returns (`-12.340000000000000000`, `5`, `0.5`) as minor units at `scale`.
/// Decimals beyond the scale must be zeros (nothing is ever rounded).
pub fn parse_minor(text: &str, scale: u8) -> Result<i128, DecimalError> {
    let fail = |reason| DecimalError {
        text: text.chars().take(DECIMAL_TEXT_BYTES_MAX).collect(),
        scale,
        reason,
    };
    if text.is_empty() || text.len() > DECIMAL_TEXT_BYTES_MAX {
        return Err(fail("empty or too long"));
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match body.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (body, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("not a decimal number"));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("not a decimal number"));
    }
    let scale_digits = usize::from(scale);
    let (kept, extra) = frac.split_at(frac.len().min(scale_digits));
    if extra.bytes().any(|b| b != b'0') {
        return Err(fail("more decimals than the currency's scale"));
    }
    let mut value: i128 = 0;
    let digits = int
        .bytes()
        .chain(kept.bytes())
        .chain(std::iter::repeat_n(b'0', scale_digits - kept.len()));
    for b in digits {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(|| fail("out of range"))?;
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_exactly() {
        assert_eq!(format_minor(1234, 2), "12.34");
        assert_eq!(format_minor(-1234, 2), "-12.34");
        assert_eq!(format_minor(5, 3), "0.005");
        assert_eq!(format_minor(0, 2), "0.00");
        assert_eq!(format_minor(7, 0), "7");
        assert_eq!(
            format_minor(10i128.pow(28) - 1, 18),
            "9999999999.999999999999999999"
        );
        assert_eq!(
            format_minor(-(10i128.pow(36)), 0),
            format!("-1{}", "0".repeat(36))
        );
    }

    #[test]
    fn parses_what_sql_returns() {
        assert_eq!(parse_minor("12.340000000000000000", 2), Ok(1234));
        assert_eq!(parse_minor("-0.05", 2), Ok(-5));
        assert_eq!(parse_minor("3", 2), Ok(300));
        assert!(parse_minor("1.234", 2).is_err());
        assert!(parse_minor("1e5", 2).is_err());
        assert!(parse_minor("", 2).is_err());
        assert!(parse_minor(&"9".repeat(60), 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn round_trips(value in proptest::num::i128::ANY, scale in 0u8..=18) {
            let value = value / 10; // keep room for nothing; the format is total anyway
            let text = format_minor(value, scale);
            proptest::prop_assert_eq!(parse_minor(&text, scale), Ok(value));
        }
    }
}
