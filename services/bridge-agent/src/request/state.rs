//! One request's state, as the table keeps it: where it is on each side, its deadlines, and what
//! has been relayed of its answer.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use provider_shared::bridge::ModelInvoke;

use super::bridge::Link;
use super::gateway::{Holder, Resync};
use super::Start;

/// Where a request is on the bridge side.
#[derive(Debug)]
pub(super) enum Leg {
    /// Not sent yet: waits for a WebSocket until `until` (`CONNECTION_TIMEOUT`).
    Waiting {
        until: Instant,
        /// Taken when it goes out (boxed: it holds the whole request).
        opening: Option<Box<Start>>,
    },
    /// Sent on this connection.
    On(Link),
    /// The connection it was on dropped: waits until `until` (`RESUME_GRACE`, never past the
    /// answer's deadline) for the next one, to resume there.
    CarryOver { until: Instant },
}

#[derive(Debug)]
pub(super) struct Request {
    /// Tells this request from an earlier one that had the same id (its deadlines, for one).
    pub serial: u64,
    pub received: Instant,
    /// The gateway connection that gets its frames; `None` while it waits for a `resume`.
    pub gateway: Option<Holder>,
    /// Set while its gateway is gone: when to give up waiting for a `resume` (`RESUME_GRACE`).
    pub orphaned_until: Option<Instant>,
    pub leg: Leg,
    /// `REQUEST_TIMEOUT`: the first chunk must have come by then.
    pub first_deadline: Instant,
    /// `RESPONSE_TIMEOUT`: the answer must have ended by then.
    pub last_deadline: Instant,
    /// When its first frame went to the bridge (for the time to the first chunk).
    pub sent: Instant,
    pub first_seen: bool,
    /// The last chunk queued for the gateway (or the gateway said it has, on a resume).
    pub last_forwarded: Option<u64>,
    /// Set while a resume on the connection the request is already on is sorted out.
    pub resync: Option<Resync>,
    /// A `model_resume` went out and its answer has not shown whether the bridge holds it.
    pub asked_resume: bool,
    /// Until the first chunk, the request is kept: a bridge that answers a resume with "no such
    /// request" never got it (it was still on its way), so it is sent afresh.
    pub fallback: Option<ModelInvoke>,
    /// Bytes of its chunks waiting in its gateway's queue.
    pub queued: Arc<AtomicUsize>,
    /// The deadline the timer holds for it.
    pub timer: Option<Instant>,
}

impl Request {
    /// The next moment something may end it, given where it is.
    pub fn next_deadline(&self) -> Instant {
        let own = match &self.leg {
            Leg::Waiting { until, .. } | Leg::CarryOver { until } => Some(*until),
            // While it waits for its gateway, only that wait counts (never past the answer's
            // deadline); the request's own clocks count again once it is taken up.
            Leg::On(_) if self.orphaned_until.is_some() => None,
            Leg::On(_) if self.first_seen => Some(self.last_deadline),
            Leg::On(_) => Some(self.first_deadline.min(self.last_deadline)),
        };
        match (own, self.orphaned_until) {
            (Some(own), Some(orphaned)) => own.min(orphaned),
            (Some(own), None) => own,
            (None, Some(orphaned)) => orphaned,
            (None, None) => self.last_deadline,
        }
    }

    pub fn link(&self) -> Option<&Link> {
        match &self.leg {
            Leg::On(link) => Some(link),
            _ => None,
        }
    }

    /// Cancels it at the bridge, if it went out on a connection that is still up.
    pub fn cancel_at_peer(&self, id: &str) {
        if let Some(link) = self.link() {
            link.cancel(id);
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}
