//! In-process rate limits: GCRA (a token bucket kept as one "theoretical arrival time" per
//! key), as in the seed — per tier per second and per endpoint per minute.
//!
//! Without `--redis-url` each gateway counts on its own (with N gateways behind a balancer a
//! user gets up to N times the limit). With it, the same GCRA runs inside Redis as one Lua
//! script on Redis's clock, so every gateway draws from one allowance; if Redis cannot be
//! reached the gateway falls back to its own count (and logs it) rather than refuse everyone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::error::ApiError;

/// Keys kept before old ones are swept.
const KEYS_MAX: usize = 100_000;

/// One limit: `count` requests per `period`, with bursts up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

/// The seed's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per second by tier (unverified, verified, premium).
    pub tier_per_sec: [u32; 3],
    pub send_per_min: u32,
    pub login_per_min: u32,
    pub balance_per_min: u32,
}

impl Limits {
    pub const SEED: Limits = Limits {
        tier_per_sec: [10, 50, 200],
        send_per_min: 5,
        login_per_min: 10,
        balance_per_min: 100,
    };
}

/// What is limited; part of the key and of the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Tier,
    Send,
    Login,
    Balance,
    /// Unauthenticated requests, per client address (at the unverified tier's rate).
    Address,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Tier => "tier",
            Scope::Send => "send",
            Scope::Login => "login",
            Scope::Balance => "balance",
            Scope::Address => "address",
        }
    }
}

#[derive(Debug)]
pub struct Limiter {
    pub limits: Option<Limits>,
    redis: Option<crate::redis::Redis>,
    start: Instant,
    /// (scope, subject) -> theoretical arrival time, in ns since `start`.
    tats: Mutex<HashMap<(Scope, String), u64>>,
}

impl Limiter {
    /// `None`: no limits (benchmarks).
    pub fn new(limits: Option<Limits>) -> Limiter {
        Limiter::with_redis(limits, None)
    }

    /// Limits kept in Redis (shared by every gateway using it).
    pub fn with_redis(limits: Option<Limits>, redis: Option<crate::redis::Redis>) -> Limiter {
        Limiter {
            redis,
            limits,
            start: Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self, scope: Scope, tier: paycore_engine::Tier) -> Option<Rate> {
        let limits = self.limits?;
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let (count, period) = match scope {
            Scope::Tier => (limits.tier_per_sec[tier.index()], second),
            Scope::Address => (limits.tier_per_sec[0], second),
            Scope::Send => (limits.send_per_min, minute),
            Scope::Login => (limits.login_per_min, minute),
            Scope::Balance => (limits.balance_per_min, minute),
        };
        Some(Rate { count, period })
    }

    /// Takes one request from `subject`'s allowance; a 429 with `Retry-After` and `RateLimit`
    /// headers when it is spent.
    pub async fn check(
        &self,
        scope: Scope,
        subject: &str,
        tier: paycore_engine::Tier,
    ) -> Result<(), ApiError> {
        let Some(rate) = self.rate(scope, tier) else {
            return Ok(());
        };
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let taken = match &self.redis {
            Some(redis) => match redis.take(scope.name(), subject, rate).await {
                Ok(taken) => taken,
                Err(error) => {
                    tracing::warn!(%error, "redis rate limiter unreachable; counting locally");
                    self.take(scope, subject, rate, now)
                }
            },
            None => self.take(scope, subject, rate, now),
        };
        match taken {
            Ok(()) => Ok(()),
            Err(wait_ns) => {
                let retry_after = wait_ns.div_ceil(1_000_000_000).max(1);
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "{} limit of {} per {} s reached; retry in {retry_after} s",
                        scope.name(),
                        rate.count,
                        rate.period.as_secs()
                    ),
                );
                error.retry_after_secs = Some(retry_after);
                error.headers = vec![
                    ("ratelimit-limit", rate.count.to_string()),
                    ("ratelimit-remaining", "0".into()),
                    ("ratelimit-reset", retry_after.to_string()),
                    (
                        "ratelimit-policy",
                        format!("{};w={}", rate.count, rate.period.as_secs()),
                    ),
                ];
                Err(error)
            }
        }
    }

    /// GCRA: `Err(ns to wait)` when the request does not conform.
    fn take(&self, scope: Scope, subject: &str, rate: Rate, now: u64) -> Result<(), u64> {
        if rate.count == 0 {
            return Err(u64::try_from(rate.period.as_nanos()).unwrap_or(u64::MAX));
        }
        let period = u64::try_from(rate.period.as_nanos()).unwrap_or(u64::MAX);
        let interval = period / u64::from(rate.count);
        let tolerance = period - interval;
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if tats.len() >= KEYS_MAX {
            tats.retain(|_, tat| *tat > now);
        }
        let tat = tats.entry((scope, subject.to_owned())).or_insert(0);
        let start = (*tat).max(now);
        if start - now > tolerance {
            return Err(start - now - tolerance);
        }
        *tat = start + interval;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_up_to_the_count_then_waits() {
        let limiter = Limiter::new(Some(Limits::SEED));
        let rate = Rate {
            count: 5,
            period: Duration::from_secs(60),
        };
        for _ in 0..5 {
            assert!(limiter.take(Scope::Send, "u", rate, 0).is_ok());
        }
        let wait = limiter.take(Scope::Send, "u", rate, 0).err();
        assert_eq!(wait, Some(12_000_000_000));
        assert!(limiter.take(Scope::Send, "other", rate, 0).is_ok());
        assert!(limiter.take(Scope::Send, "u", rate, 12_000_000_000).is_ok());
    }
}
