//! How long to wait between failed connection attempts: exponential, capped, and jittered so
//! that several processes restarted together do not retry in lockstep. bridge-agent uses it to
//! reconnect to the MCP bridge, the gateway to reconnect to bridge-agent.
use std::time::Duration;

use rand::Rng;

/// An exponential back-off from `base`, whose ceiling never grows past `cap` (unless `base`
/// itself is longer, which is then kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The ceiling after `failures` consecutive failed attempts (1-based):
    /// `min(base · 2^(failures−1), max(base, cap))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let cap = self.base.max(self.cap);
        let exponent = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(cap)
            .min(cap)
    }

    /// A delay drawn uniformly between half the ceiling and the whole of it.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let full = self.ceiling(failures);
        let half = full / 2;
        let spread = (full - half).as_secs_f64();
        half + Duration::from_secs_f64(rng.random_range(0.0..=spread))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_the_base_and_stops_at_the_cap() {
        let b = Backoff::new(S(5), S(60));
        assert_eq!(b.ceiling(1), S(5));
        assert_eq!(b.ceiling(2), S(10));
        assert_eq!(b.ceiling(3), S(20));
        assert_eq!(b.ceiling(4), S(40));
        assert_eq!(b.ceiling(5), S(60));
        assert_eq!(b.ceiling(500), S(60));
        let quick = Backoff::new(MS(50), S(1));
        assert_eq!(quick.ceiling(1), MS(50));
        assert_eq!(quick.ceiling(5), MS(800));
        assert_eq!(quick.ceiling(6), S(1));
    }

    #[test]
    fn zero_failures_wait_the_base() {
        assert_eq!(Backoff::new(MS(50), S(1)).ceiling(0), MS(50));
    }

    #[test]
    fn a_base_longer_than_the_cap_is_kept() {
        let b = Backoff::new(S(90), S(60));
        assert_eq!(b.ceiling(1), S(90));
        assert_eq!(b.ceiling(7), S(90));
    }

    #[test]
    fn fractional_bases_work() {
        assert_eq!(Backoff::new(MS(200), S(60)).ceiling(3), MS(800));
    }

    #[test]
    fn jitter_stays_between_half_and_full_and_varies() {
        let b = Backoff::new(S(5), S(60));
        let mut rng = rand::rng();
        for failures in 1..8 {
            let full = b.ceiling(failures);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let d = b.delay(failures, &mut rng);
                assert!(d >= full / 2 && d <= full, "{d:?} outside {full:?}");
                seen.insert(d);
            }
            assert!(seen.len() > 1, "no jitter at {failures} failures");
        }
    }
}
