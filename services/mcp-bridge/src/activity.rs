//! When agents ask for work: the stretch of long-polls open now and the last moment one was
//! open, reported to bridge-agent in `bridge_status` frames (docs/PROTOCOL.md §1) so the gateway's
//! status page can say whether an agent is polling and since when.
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use provider_shared::bridge::BridgeReport;
use serde_json::Value;

/// A new poll this soon after the last one ended continues the same stretch of polling: an agent
/// takes a moment between answering one request and asking for the next.
const SAME_STRETCH_MS: u64 = 15_000;

#[derive(Default)]
pub struct Activity {
    inner: Mutex<Polls>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Polls {
    open: u64,
    since_ms: Option<u64>,
    last_ms: Option<u64>,
}

impl Polls {
    fn started(&mut self, now: u64) {
        let continues = self
            .last_ms
            .is_some_and(|last| now.saturating_sub(last) <= SAME_STRETCH_MS);
        if self.open == 0 && !(continues && self.since_ms.is_some()) {
            self.since_ms = Some(now);
        }
        self.open += 1;
        self.last_ms = Some(now);
    }

    fn ended(&mut self, now: u64) {
        self.open = self.open.saturating_sub(1);
        self.last_ms = Some(now);
    }
}

impl Activity {
    fn polls(&self) -> std::sync::MutexGuard<'_, Polls> {
        // Three plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn poll_started(&self) {
        self.polls().started(unix_ms());
    }

    pub fn poll_ended(&self) {
        self.polls().ended(unix_ms());
    }

    /// The report sent to bridge-agent, from the broker's `status` and the polls.
    pub fn report(&self, status: &Value) -> BridgeReport {
        let polls = *self.polls();
        let n = |key: &str| status[key].as_u64().unwrap_or(0);
        BridgeReport {
            queue_depth: n("queue_depth"),
            leased: n("leased"),
            waiting_polls: polls.open,
            sampling_clients: n("sampling_clients"),
            polling_since_ms: if polls.open > 0 { polls.since_ms } else { None },
            last_poll_ms: if polls.open > 0 {
                Some(unix_ms())
            } else {
                polls.last_ms
            },
            connected_bridge_agents: n("connected_bridge_agents"),
            answered: n("answered"),
            failed: n("failed"),
            at_ms: unix_ms(),
        }
    }
}

/// True when `a` and `b` say the same apart from when they were taken.
pub fn same(a: &BridgeReport, b: &BridgeReport) -> bool {
    let strip = |r: &BridgeReport| BridgeReport {
        at_ms: 0,
        last_poll_ms: if r.waiting_polls > 0 {
            None
        } else {
            r.last_poll_ms
        },
        ..r.clone()
    };
    strip(a) == strip(b)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_close_together_are_one_stretch_and_a_pause_starts_another() {
        let mut p = Polls::default();
        p.started(1_000);
        p.ended(5_000);
        p.started(6_000);
        assert_eq!(p.since_ms, Some(1_000), "a short gap continues the stretch");
        p.started(7_000);
        p.ended(8_000);
        assert_eq!(p.open, 1);
        p.ended(9_000);
        assert_eq!((p.open, p.last_ms), (0, Some(9_000)));
        p.started(9_000 + SAME_STRETCH_MS + 1);
        assert_eq!(p.since_ms, Some(9_000 + SAME_STRETCH_MS + 1));
    }

    #[test]
    fn a_report_while_polling_names_the_stretch_and_otherwise_only_the_last_poll() {
        let activity = Activity::default();
        let status =
            serde_json::json!({"queue_depth": 3, "leased": 1, "connected_bridge_agents": 1});
        let idle = activity.report(&status);
        assert_eq!(
            (idle.queue_depth, idle.leased, idle.waiting_polls),
            (3, 1, 0)
        );
        assert_eq!((idle.polling_since_ms, idle.last_poll_ms), (None, None));
        activity.poll_started();
        let polling = activity.report(&status);
        assert_eq!(polling.waiting_polls, 1);
        assert!(polling.polling_since_ms.is_some());
        assert!(!same(&idle, &polling));
        activity.poll_ended();
        let after = activity.report(&status);
        assert_eq!(after.polling_since_ms, None);
        assert!(after.last_poll_ms.is_some());
        assert!(same(&after, &activity.report(&status)));
    }
}
