//! Refusals made visible: every 4xx answer, on every route, is logged at INFO with its route,
//! status, code and message as `reason` (messages name fields and describe values by kind, never quoting
//! prompt text), repeats coalesced so a flood cannot fill the log (`shared/src/coalesce.rs`: the
//! first of each (route, status, code) in [`INTERVAL`] is logged whole, the rest counted and
//! logged as one line when the interval is over), and counted for the status page
//! (`status/board.rs`). Called for every response by `status/mod.rs` `record_errors`.
use std::time::{Duration, Instant};

use provider_shared::coalesce::{Coalescer, Verdict};

/// How long a logged refusal stands for its repeats.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Kinds of refusal (route, status, code) tracked at once; past it, refusals of new kinds are
/// counted in one line per flush.
pub const MAX_KINDS: usize = 256;

type Kind = (String, u16, String);

pub struct RefusalLog {
    lines: Coalescer<Kind>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            lines: Coalescer::new(INTERVAL, MAX_KINDS),
        }
    }
}

impl RefusalLog {
    /// Logs one refusal, unless its kind was logged within [`INTERVAL`].
    pub fn record(&self, route: &str, status: u16, code: &str, message: &str) {
        let kind = (route.to_owned(), status, code.to_owned());
        match self.lines.note(&kind, Instant::now()) {
            Verdict::Write { held_back: 0 } => {
                tracing::info!(route, status, code, reason = message, "request refused");
            }
            Verdict::Write { held_back } => {
                tracing::info!(
                    route,
                    status,
                    code,
                    reason = message,
                    earlier_unlogged = held_back,
                    "request refused (and earlier ones like it, counted, not logged one by one)"
                );
            }
            Verdict::Hold => {}
        }
    }

    /// Logs the counts of repeats whose interval is over (called every few seconds).
    pub fn flush(&self) {
        let flushed = self.lines.flush(Instant::now());
        for ((route, status, code), repeated) in flushed.held_back {
            tracing::info!(
                route,
                status,
                code,
                repeated,
                within_seconds = INTERVAL.as_secs(),
                "the same refusal again, counted, not logged one by one"
            );
        }
        if flushed.overflow > 0 {
            tracing::info!(
                refused = flushed.overflow,
                "refusals of more kinds than the log tracks at once, counted, not logged one by one"
            );
        }
    }
}
