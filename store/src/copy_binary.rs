//! Rows in PostgreSQL's binary COPY format (`COPY … FROM STDIN (FORMAT binary)`), built in place
//! in one buffer per statement.
//!
//! Why binary: with the text format PostgreSQL parses every value back (a profile of the flush
//! showed `uuid_in`, `numeric_in`, the date/time parser and `strtoull`/`strtod` at ~10 % of the
//! machine's CPU), and the flusher formats every value as text first. In the binary format an
//! integer, a uuid or a timestamp is a fixed-width big-endian copy, and a decimal is its base
//! 10 000 digits.
//!
//! The format (PostgreSQL docs, "COPY", "Binary Format"): a signature, flags and header
//! extension length; per row a 16-bit field count, then per field a 32-bit byte length (-1 for
//! NULL) and the bytes of the type's binary representation (`*_send`); a 16-bit -1 at the end.
//! Each value must match its column's type exactly (an `int8` into an `integer` column is an
//! error, not a conversion), so the methods are named after the SQL types they write.

/// `PGCOPY\n\377\r\n\0`, flags 0, no header extension.
const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00).
const POSTGRES_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// Decimal digits per base-10 000 digit of a `numeric`.
const NUMERIC_DIGIT_DECIMALS: u32 = 4;
const NUMERIC_BASE: u128 = 10_000;
const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
/// Base-10 000 digits of the largest value written: |i128| < 10^39 has 10 integer digits, a
/// scale of at most 18 adds 5 fraction digits.
const NUMERIC_DIGITS_MAX: usize = 16;

/// Longest minor-unit scale a currency has (the engine's limit), so `10^scale` and the padded
/// fraction fit in a `u128`.
const SCALE_MAX: u8 = 18;

#[derive(Debug)]
pub struct CopyBinary {
    bytes: Vec<u8>,
    /// Fields still expected in the row being written (checked in debug builds).
    fields_left: i16,
    rows: usize,
}

impl CopyBinary {
    /// A buffer for about `rows` rows of about `row_bytes` each.
    pub fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        let mut bytes = Vec::with_capacity(HEADER.len() + rows * row_bytes + 2);
        bytes.extend_from_slice(HEADER);
        CopyBinary {
            bytes,
            fields_left: 0,
            rows: 0,
        }
    }

    /// Starts a row of `fields` values.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        debug_assert_eq!(self.fields_left, 0, "the previous row is incomplete");
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        self.fields_left = fields;
        self.rows += 1;
        self
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn field(&mut self, len: usize) {
        debug_assert!(self.fields_left > 0, "more values than the row declared");
        self.fields_left -= 1;
        let len = i32::try_from(len).unwrap_or_else(|_| unreachable!("a value over 2 GiB"));
        self.bytes.extend_from_slice(&len.to_be_bytes());
    }

    pub fn null(&mut self) -> &mut Self {
        debug_assert!(self.fields_left > 0, "more values than the row declared");
        self.fields_left -= 1;
        self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn int2(&mut self, value: i16) -> &mut Self {
        self.field(2);
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(4);
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.field(8);
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.field(1);
        self.bytes.push(u8::from(value));
        self
    }

    /// `text`/`varchar`: the UTF-8 bytes as they are (no escaping in this format).
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.len());
        self.bytes.extend_from_slice(value.as_bytes());
        self
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn bytea(&mut self, value: &[u8]) -> &mut Self {
        self.field(value.len());
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn opt_bytea(&mut self, value: Option<&[u8]>) -> &mut Self {
        match value {
            Some(v) => self.bytea(v),
            None => self.null(),
        }
    }

    /// `uuid`: its 16 bytes, most significant first (as [`crate::schema::uuid_text`] spells it).
    pub fn uuid(&mut self, value: u128) -> &mut Self {
        self.field(16);
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn opt_uuid(&mut self, value: Option<u128>) -> &mut Self {
        match value {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    /// `timestamp` (without time zone) of `ns` after the Unix epoch, in UTC: microseconds since
    /// 2000-01-01, the nanoseconds below a microsecond dropped (as the text path writes them).
    pub fn timestamp(&mut self, ns: u64) -> &mut Self {
        // u64 ns / 1000 < 2^54: fits i64.
        let micros = (ns / 1_000) as i64 - POSTGRES_EPOCH_UNIX_US;
        self.int8(micros)
    }

    /// `numeric` of `value` minor units at `scale` decimals (`value / 10^scale`), exactly.
    pub fn numeric(&mut self, value: i128, scale: u8) -> &mut Self {
        assert!(scale <= SCALE_MAX, "scale {scale} above {SCALE_MAX}");
        let (digits, count, weight) = numeric_digits(value.unsigned_abs(), scale);
        self.field(8 + 2 * count);
        let sign = if value < 0 {
            NUMERIC_NEGATIVE
        } else {
            NUMERIC_POSITIVE
        };
        // count <= NUMERIC_DIGITS_MAX and |weight| < 16: both fit i16.
        self.bytes.extend_from_slice(&(count as i16).to_be_bytes());
        self.bytes.extend_from_slice(&weight.to_be_bytes());
        self.bytes.extend_from_slice(&sign.to_be_bytes());
        self.bytes
            .extend_from_slice(&u16::from(scale).to_be_bytes());
        for digit in &digits[..count] {
            self.bytes.extend_from_slice(&digit.to_be_bytes());
        }
        self
    }

    /// The finished stream (the trailer appended).
    pub fn finish(mut self) -> Vec<u8> {
        debug_assert_eq!(self.fields_left, 0, "the last row is incomplete");
        self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
        self.bytes
    }
}

/// The base-10 000 digits of `magnitude / 10^scale`, most significant first, without leading
/// or trailing zero digits, their count, and the weight of the first (the power of 10 000 it
/// stands for). Zero has no digits.
fn numeric_digits(magnitude: u128, scale: u8) -> ([i16; NUMERIC_DIGITS_MAX], usize, i16) {
    let mut digits = [0i16; NUMERIC_DIGITS_MAX];
    if magnitude == 0 {
        return (digits, 0, 0);
    }
    let unit = 10u128.pow(u32::from(scale));
    let (mut int, frac) = (magnitude / unit, magnitude % unit);
    // The fraction padded to whole base-10 000 digits: frac < 10^18, times < 10^4.
    let frac_digits = u32::from(scale).div_ceil(NUMERIC_DIGIT_DECIMALS);
    let mut frac = frac * 10u128.pow(frac_digits * NUMERIC_DIGIT_DECIMALS - u32::from(scale));
    // Integer digits, least significant first, into the front of a scratch array.
    let mut int_rev = [0i16; NUMERIC_DIGITS_MAX];
    let mut int_count = 0;
    while int > 0 {
        int_rev[int_count] = (int % NUMERIC_BASE) as i16;
        int /= NUMERIC_BASE;
        int_count += 1;
    }
    let mut count = 0;
    for i in (0..int_count).rev() {
        digits[count] = int_rev[i];
        count += 1;
    }
    let frac_start = count;
    for i in (0..frac_digits as usize).rev() {
        digits[frac_start + i] = (frac % NUMERIC_BASE) as i16;
        frac /= NUMERIC_BASE;
    }
    count += frac_digits as usize;
    // Weight of digits[0] before stripping: int_count - 1 (or -1 when there is no integer part).
    let mut weight = int_count as i16 - 1;
    let mut first = 0;
    while digits[first] == 0 {
        first += 1;
        weight -= 1;
    }
    while digits[count - 1] == 0 {
        count -= 1;
    }
    digits.copy_within(first..count, 0);
    (digits, count - first, weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads digits back as decimal text (no trailing fraction zeros), power by power.
    fn value_of(magnitude: u128, scale: u8) -> String {
        let (digits, count, weight) = numeric_digits(magnitude, scale);
        if count == 0 {
            return "0".into();
        }
        let (weight, lowest) = (i32::from(weight), i32::from(weight) - count as i32 + 1);
        assert!(digits[..count].iter().all(|d| (0..10_000).contains(d)));
        assert!(digits[0] != 0 && digits[count - 1] != 0, "not stripped");
        let (mut int, mut frac) = (String::new(), String::new());
        for power in (lowest.min(0)..=weight.max(0)).rev() {
            let digit = if (lowest..=weight).contains(&power) {
                digits[(weight - power) as usize]
            } else {
                0
            };
            let text = format!("{digit:04}");
            if power >= 0 {
                int.push_str(&text)
            } else {
                frac.push_str(&text)
            }
        }
        let int = match int.trim_start_matches('0') {
            "" => "0",
            rest => rest,
        };
        match frac.trim_end_matches('0') {
            "" => int.to_string(),
            frac => format!("{int}.{frac}"),
        }
    }

    fn expected(magnitude: u128, scale: u8) -> String {
        let text = crate::decimal::format_minor(magnitude as i128, scale);
        if text.contains('.') {
            let t = text.trim_end_matches('0').trim_end_matches('.');
            t.to_string()
        } else {
            text
        }
    }

    #[test]
    fn numeric_digits_spell_the_same_value_as_the_text() {
        let values = [
            0u128,
            1,
            9,
            10,
            9_999,
            10_000,
            10_001,
            123_456_789,
            100_000_000,
            1_000_000_000_000_000_000,
            10u128.pow(36),
            10u128.pow(36) - 1,
            (i128::MAX as u128) / 7,
        ];
        for scale in [0u8, 1, 2, 3, 4, 5, 6, 8, 9, 17, 18] {
            for &v in &values {
                assert_eq!(
                    value_of(v, scale),
                    expected(v, scale),
                    "{v} at scale {scale}"
                );
            }
        }
    }

    #[test]
    fn rows_are_framed_with_counts_lengths_and_a_trailer() {
        let mut c = CopyBinary::with_capacity(1, 32);
        c.row(3).int4(7).null().text("ab");
        assert_eq!(c.rows(), 1);
        let bytes = c.finish();
        let mut want = HEADER.to_vec();
        want.extend_from_slice(&[0, 3, 0, 0, 0, 4, 0, 0, 0, 7, 255, 255, 255, 255]);
        want.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 255, 255]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn timestamps_count_microseconds_from_2000() {
        let mut c = CopyBinary::with_capacity(1, 16);
        c.row(1).timestamp(946_684_800_000_001_999);
        let bytes = c.finish();
        assert_eq!(
            &bytes[HEADER.len() + 6..HEADER.len() + 14],
            &1i64.to_be_bytes()
        );
    }
}
