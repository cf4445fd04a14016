//! Command timestamps (nanoseconds since the Unix epoch, UTC) as SQL `TIMESTAMP` text, and the
//! month partitions they fall in. Civil-date arithmetic from days (Howard Hinnant's algorithm):
//! no clock is read and no time zone is involved.

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const NS_PER_SECOND: u64 = 1_000_000_000;
const SECONDS_PER_DAY: u64 = 86_400;

/// `YYYY-MM-DD HH:MM:SS.ffffff` (microseconds, truncated: PostgreSQL's precision).
pub fn timestamp_text(ns: u64) -> String {
    let mut out = Vec::with_capacity(26);
    write_timestamp(&mut out, ns);
    // Only ASCII digits and separators were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`timestamp_text`] appended to `out`, without allocating (the flusher's COPY buffers).
pub fn write_timestamp(out: &mut Vec<u8>, ns: u64) {
    use std::io::Write as _;
    let seconds = ns / NS_PER_SECOND;
    let micros = (ns % NS_PER_SECOND) / 1_000;
    let (year, month, day) = civil_from_days((seconds / SECONDS_PER_DAY) as i64);
    let in_day = seconds % SECONDS_PER_DAY;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}",
        in_day / 3600,
        (in_day / 60) % 60,
        in_day % 60
    );
}

/// A calendar month, the unit of the `transactions` partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i64,
    /// 1..=12.
    pub month: u32,
}

impl Month {
    pub fn of(ns: u64) -> Month {
        let (year, month, _) = civil_from_days((ns / NS_PER_SECOND / SECONDS_PER_DAY) as i64);
        Month { year, month }
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Name of the partition table: `transactions_2026_01`.
    pub fn partition_name(self) -> String {
        format!("transactions_{:04}_{:02}", self.year, self.month)
    }

    /// `YYYY-MM-01`, the inclusive lower bound of the partition.
    pub fn first_day(self) -> String {
        format!("{:04}-{:02}-01", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(timestamp_text(0), "1970-01-01 00:00:00.000000");
        // 2026-01-01T00:00:00Z
        assert_eq!(
            timestamp_text(1_767_225_600_000_000_000),
            "2026-01-01 00:00:00.000000"
        );
        // One nanosecond before: the last microsecond of 2025.
        assert_eq!(
            timestamp_text(1_767_225_599_999_999_999),
            "2025-12-31 23:59:59.999999"
        );
        // 2024-02-29T12:34:56.789Z (a leap day)
        assert_eq!(
            timestamp_text(1_709_210_096_789_000_000),
            "2024-02-29 12:34:56.789000"
        );
    }

    #[test]
    fn months_roll_over_years() {
        let december = Month::of(1_767_225_599_999_999_999);
        assert_eq!(
            december,
            Month {
                year: 2025,
                month: 12
            }
        );
        assert_eq!(december.next(), Month::of(1_767_225_600_000_000_000));
        assert_eq!(december.partition_name(), "transactions_2025_12");
        assert_eq!(december.next().first_day(), "2026-01-01");
    }
}
