//! The per-partner rate limit: a token bucket per partner (GCRA, from
//! governor), refilled at `calls_per_second` and holding twice that, so a
//! partner may burst after a quiet spell but not sustain more.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::{Error, Result};

/// Buckets kept before those back to full are dropped.
const MAX_BUCKETS: usize = 10_000;

pub struct RateLimit {
    /// `None`: no limit.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
    clock: DefaultClock,
}

impl RateLimit {
    /// `calls_per_second` 0 turns the limit off.
    pub fn new(calls_per_second: u32) -> Self {
        let limiter = NonZeroU32::new(calls_per_second).map(|rate| {
            let burst = NonZeroU32::new(calls_per_second.saturating_mul(2)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            per_second: calls_per_second,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one call from `key`'s bucket (a partner id, or the fingerprint
    /// of a certificate that maps to no active partner), or says when the
    /// next one will be allowed; `who` names the key in that answer.
    pub fn check(&self, key: &str, who: &str) -> Result<()> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Certificates of no partner make buckets too; forget the full ones
        // now and then so they cannot grow without bound.
        if limiter.len() > MAX_BUCKETS {
            limiter.retain_recent();
        }
        match limiter.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                // Never advise an immediate retry: it would fail again.
                let wait = not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_millis(1));
                Err(Error::ResourceExhausted {
                    reason: "RATE_LIMITED",
                    message: format!(
                        "{who} made more than {} calls per second; retry in {} ms",
                        self.per_second,
                        wait.as_millis().max(1)
                    ),
                    retry_after: Some(wait),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_gets_a_burst_of_twice_the_rate_then_waits() {
        let limit = RateLimit::new(5);
        for call in 0..10 {
            assert!(
                limit.check("a", "partners/a").is_ok(),
                "call {call} is within the burst"
            );
        }
        match limit.check("a", "partners/a") {
            Err(Error::ResourceExhausted {
                reason: "RATE_LIMITED",
                retry_after: Some(wait),
                ..
            }) => assert!(
                wait > Duration::ZERO && wait <= Duration::from_millis(200),
                "{wait:?}"
            ),
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        // Another partner has its own bucket.
        assert!(limit.check("b", "partners/b").is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(limit.check("a", "partners/a").is_ok(), "the bucket refills");
    }

    #[test]
    fn zero_means_no_limit() {
        let limit = RateLimit::new(0);
        for _ in 0..10_000 {
            assert!(limit.check("a", "partners/a").is_ok());
        }
    }
}
