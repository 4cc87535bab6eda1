//! Token buckets for requests and tokens per minute, and the OpenAI-style headers that report
//! them. The arithmetic is pure so every store (memory now, others later) applies it the same way.
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;

/// A bucket that holds at most `capacity` and refills `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    pub capacity: f64,
    pub per_second: f64,
}

impl BucketSpec {
    /// `per_minute` on average, at most `capacity` at once.
    pub fn per_minute(per_minute: u64, capacity: u64) -> Self {
        Self {
            capacity: capacity as f64,
            per_second: per_minute as f64 / 60.0,
        }
    }
}

/// A bucket's level at a moment (milliseconds on the store's clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    pub level: f64,
    pub at_ms: u64,
}

/// The answer to one check-and-consume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Take {
    pub allowed: bool,
    /// Whole units left after this take.
    pub remaining: u64,
    /// How long until the bucket is full again.
    pub reset_after: Duration,
    /// How long until this cost would fit (zero when allowed).
    pub retry_after: Duration,
}

fn refill(state: Option<BucketState>, spec: BucketSpec, now_ms: u64) -> f64 {
    match state {
        None => spec.capacity,
        Some(s) => {
            let elapsed = now_ms.saturating_sub(s.at_ms) as f64 / 1000.0;
            (s.level + elapsed * spec.per_second).min(spec.capacity)
        }
    }
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

/// Takes `cost` if it fits; otherwise leaves the bucket as it was.
pub fn take(
    state: Option<BucketState>,
    spec: BucketSpec,
    cost: f64,
    now_ms: u64,
) -> (BucketState, Take) {
    let level = refill(state, spec, now_ms);
    let allowed = level >= cost;
    let after = if allowed { level - cost } else { level };
    let take = Take {
        allowed,
        remaining: after.max(0.0).floor() as u64,
        reset_after: secs((spec.capacity - after) / spec.per_second),
        retry_after: if allowed {
            Duration::ZERO
        } else {
            secs((cost - level) / spec.per_second)
        },
    };
    (
        BucketState {
            level: after,
            at_ms: now_ms,
        },
        take,
    )
}

/// Gives back (`delta` > 0, never above capacity) or charges (`delta` < 0, possibly below zero,
/// so later requests wait) once real usage is known. The level saturates at minus the capacity:
/// however large a charge, the client waits at most the time the bucket takes to fill twice.
pub fn adjust(
    state: Option<BucketState>,
    spec: BucketSpec,
    delta: f64,
    now_ms: u64,
) -> BucketState {
    let level = (refill(state, spec, now_ms) + delta).clamp(-spec.capacity, spec.capacity);
    BucketState {
        level,
        at_ms: now_ms,
    }
}

/// `x-ratelimit-*` headers for requests and tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct RateHeaders {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub reset_requests: Duration,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    pub reset_tokens: Duration,
}

impl RateHeaders {
    /// Every answer carries these six: each value is written once, straight into its header
    /// (no string to copy from).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.reserve(6);
        let numbers = [
            ("x-ratelimit-limit-requests", self.limit_requests),
            ("x-ratelimit-remaining-requests", self.remaining_requests),
            ("x-ratelimit-limit-tokens", self.limit_tokens),
            ("x-ratelimit-remaining-tokens", self.remaining_tokens),
        ];
        for (name, value) in numbers {
            headers.insert(name, HeaderValue::from(value));
        }
        let resets = [
            ("x-ratelimit-reset-requests", self.reset_requests),
            ("x-ratelimit-reset-tokens", self.reset_tokens),
        ];
        for (name, reset) in resets {
            // Digits and letters only: always a valid header value.
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(format_reset(reset))) {
                headers.insert(name, value);
            }
        }
    }
}

/// OpenAI's duration style: `250ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let secs = d.as_secs();
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPM: BucketSpec = BucketSpec {
        capacity: 10.0,
        per_second: 1.0,
    };

    #[test]
    fn burst_then_steady_refill() {
        let mut state = None;
        for i in 0..10 {
            let (s, t) = take(state, RPM, 1.0, 0);
            assert!(t.allowed, "request {i}");
            assert_eq!(t.remaining, 9 - i);
            state = Some(s);
        }
        let (s, t) = take(state, RPM, 1.0, 0);
        assert!(!t.allowed);
        assert_eq!(t.retry_after, Duration::from_secs(1));
        assert_eq!(t.reset_after, Duration::from_secs(10));
        let (_, t) = take(Some(s), RPM, 1.0, 1000);
        assert!(t.allowed, "one refilled after a second");
    }

    #[test]
    fn refused_take_changes_nothing_and_adjust_caps_at_capacity() {
        let (s, _) = take(None, RPM, 8.0, 0);
        let (s2, t) = take(Some(s), RPM, 5.0, 0);
        assert!(!t.allowed);
        assert_eq!(s2.level, 2.0);
        assert_eq!(t.retry_after, Duration::from_secs(3));
        assert_eq!(adjust(Some(s2), RPM, 100.0, 0).level, 10.0);
        assert_eq!(adjust(Some(s2), RPM, -5.0, 0).level, -3.0);
        // However large the charge, the debt is one bucket at most.
        let floor = adjust(Some(s2), RPM, i64::MIN as f64, 0);
        assert_eq!(floor.level, -10.0);
        let (_, t) = take(Some(floor), RPM, 1.0, 0);
        assert_eq!(t.retry_after, Duration::from_secs(11));
    }

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn every_answer_carries_the_six_headers_as_openai_writes_them() {
        let rate = RateHeaders {
            limit_requests: 60,
            remaining_requests: 59,
            reset_requests: Duration::from_millis(1500),
            limit_tokens: 1_000_000,
            remaining_tokens: 0,
            reset_tokens: Duration::from_secs(360),
        };
        let mut headers = HeaderMap::new();
        rate.apply(&mut headers);
        let written: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(
            written,
            [
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "59"),
                ("x-ratelimit-limit-tokens", "1000000"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-requests", "1.5s"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]
        );
    }
}
