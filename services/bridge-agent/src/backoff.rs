//! How long to wait between failed connection attempts.
use std::time::Duration;

use rand::Rng;

/// The exponential ceiling never grows past this, unless the base delay itself is longer.
const MAX_CEILING: Duration = Duration::from_secs(60);

/// The ceiling after `failures` consecutive failed attempts (1-based):
/// `min(base · 2^(failures−1), max(base, 60 s))`.
pub fn ceiling(base: Duration, failures: u32) -> Duration {
    let cap = base.max(MAX_CEILING);
    let exponent = failures.saturating_sub(1).min(31);
    base.checked_mul(1u32 << exponent).unwrap_or(cap).min(cap)
}

/// A delay drawn uniformly between half the ceiling and the whole of it, so that several agents
/// restarted together do not retry in lockstep.
pub fn delay(base: Duration, failures: u32, rng: &mut impl Rng) -> Duration {
    let full = ceiling(base, failures);
    let half = full / 2;
    let spread = (full - half).as_secs_f64();
    half + Duration::from_secs_f64(rng.random_range(0.0..=spread))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_from_the_base_and_caps_at_sixty_seconds() {
        assert_eq!(ceiling(S(5), 1), S(5));
        assert_eq!(ceiling(S(5), 2), S(10));
        assert_eq!(ceiling(S(5), 3), S(20));
        assert_eq!(ceiling(S(5), 4), S(40));
        assert_eq!(ceiling(S(5), 5), S(60));
        assert_eq!(ceiling(S(5), 500), S(60));
    }

    #[test]
    fn a_base_longer_than_the_cap_is_kept() {
        assert_eq!(ceiling(S(90), 1), S(90));
        assert_eq!(ceiling(S(90), 7), S(90));
    }

    #[test]
    fn fractional_bases_work() {
        assert_eq!(
            ceiling(Duration::from_millis(200), 3),
            Duration::from_millis(800)
        );
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let mut rng = rand::rng();
        for failures in 1..8 {
            let full = ceiling(S(5), failures);
            for _ in 0..200 {
                let d = delay(S(5), failures, &mut rng);
                assert!(d >= full / 2 && d <= full, "{d:?} outside {full:?}");
            }
        }
    }
}
