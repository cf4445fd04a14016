//! Velocity: how much a wallet sent over the last 24 hours, by command timestamps.
//!
//! The window is kept in hourly buckets. A check counts the current hour and the 24 before it,
//! so an amount sent at 10:15 counts against the limit until 11:00 the next day: between 24 and
//! 25 hours, never less. That errs on the side of the limit (never lets more than the limit
//! through in any 24 h) and keeps memory to at most 25 buckets per active wallet, usually one
//! or two. Windows exist only for wallets whose tier has a limit in their currency.

use std::collections::VecDeque;

/// Nanoseconds in one bucket.
pub const BUCKET_NS: u64 = 3_600 * 1_000_000_000;
/// Buckets counted: the current hour and the 24 before.
pub const BUCKETS_COUNTED: u64 = 25;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VelocityWindow {
    /// (hour number, amount sent in that hour), oldest first, at most [`BUCKETS_COUNTED`].
    buckets: VecDeque<(u64, u128)>,
}

impl VelocityWindow {
    fn drop_old(&mut self, hour: u64) {
        while let Some(&(oldest, _)) = self.buckets.front() {
            if oldest + BUCKETS_COUNTED > hour {
                break;
            }
            self.buckets.pop_front();
        }
    }

    /// Sum sent in the counted buckets at `now_ns` (saturating: limits are far below u128).
    pub(crate) fn sent(&mut self, now_ns: u64) -> u128 {
        let hour = now_ns / BUCKET_NS;
        self.drop_old(hour);
        self.buckets
            .iter()
            .fold(0u128, |sum, &(_, amount)| sum.saturating_add(amount))
    }

    pub(crate) fn add(&mut self, now_ns: u64, amount: u128) {
        let hour = now_ns / BUCKET_NS;
        self.drop_old(hour);
        match self.buckets.back_mut() {
            Some((last, sum)) if *last == hour => *sum = sum.saturating_add(amount),
            _ => self.buckets.push_back((hour, amount)),
        }
        debug_assert!(self.buckets.len() as u64 <= BUCKETS_COUNTED);
    }

    /// Undo of `add` (for a linked group that failed). The bucket is still the newest one
    /// because time does not move within a command.
    pub(crate) fn subtract(&mut self, hour: u64, amount: u128) {
        let back = self.buckets.back_mut();
        let Some((last, sum)) = back else {
            unreachable!("undo of a velocity add without a bucket")
        };
        assert_eq!(*last, hour, "undo of a velocity add in another hour");
        *sum -= amount;
        if *sum == 0 {
            self.buckets.pop_back();
        }
    }

    pub(crate) fn from_buckets(buckets: Vec<(u64, u128)>) -> Self {
        VelocityWindow {
            buckets: buckets.into(),
        }
    }

    pub(crate) fn buckets(&self) -> impl Iterator<Item = &(u64, u128)> {
        self.buckets.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_between_24_and_25_hours() {
        let mut window = VelocityWindow::default();
        let t0 = 100 * BUCKET_NS + BUCKET_NS / 4; // 100h15m
        window.add(t0, 10);
        assert_eq!(window.sent(t0), 10);
        assert_eq!(
            window.sent(t0 + 24 * BUCKET_NS),
            10,
            "still counted 24h later"
        );
        assert_eq!(
            window.sent(125 * BUCKET_NS - 1),
            10,
            "counted until the hour ends"
        );
        assert_eq!(window.sent(125 * BUCKET_NS), 0, "gone at 125h00");
    }

    #[test]
    fn add_and_subtract() {
        let mut window = VelocityWindow::default();
        window.add(BUCKET_NS, 5);
        window.add(BUCKET_NS + 1, 7);
        assert_eq!(window.sent(BUCKET_NS + 2), 12);
        window.subtract(1, 7);
        assert_eq!(window.sent(BUCKET_NS + 2), 5);
        window.subtract(1, 5);
        assert_eq!(window.buckets().count(), 0);
    }
}
