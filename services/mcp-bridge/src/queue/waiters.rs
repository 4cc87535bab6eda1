//! Long-polls waiting for a request, in the order they began. A request that comes (or comes
//! back) goes straight to the longest-waiting poll it fits, under the queue's lock: one request
//! wakes one poll, a poll that came later never overtakes one that waits, and a poll whose caller
//! is gone is skipped (and forgotten) rather than handed anything.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Entry, Handout, Queue};
use crate::caller::Caller;

/// Which requests a poll takes.
pub type Fits = Box<dyn Fn(&Entry) -> bool + Send>;

/// What a poll asks for.
pub struct Want {
    /// Only requests this accepts (sampling clients take plain chats); any when `None`.
    pub fits: Option<Fits>,
    pub lease_for: Duration,
    pub caller: Caller,
}

impl Want {
    fn fits(&self, entry: &Entry) -> bool {
        self.fits.as_ref().is_none_or(|fits| fits(entry))
    }
}

struct Waiter {
    serial: u64,
    want: Want,
    tx: oneshot::Sender<Handout>,
}

#[derive(Default)]
pub(super) struct Waiters {
    waiting: VecDeque<Waiter>,
    next_serial: u64,
}

impl Waiters {
    pub(super) fn clear(&mut self) {
        self.waiting.clear();
    }
}

/// What [`Queue::take_or_wait`] gave.
pub enum Taken {
    Now(Handout),
    /// Waiting as poll `serial`; the hand-out comes on the receiver.
    Waiting {
        serial: u64,
        handout: oneshot::Receiver<Handout>,
    },
}

impl Queue {
    /// Leases the oldest queued request `want` fits, or puts the poll at the back of the line.
    /// A request is only queued while no waiting poll fits it, so taking at once never
    /// overtakes a waiting poll.
    pub fn take_or_wait(&mut self, want: Want, now: Instant) -> Taken {
        let at = self
            .order
            .iter()
            .position(|id| self.entries.get(id).is_some_and(|e| want.fits(e)));
        if let Some(handout) =
            at.and_then(|at| self.lease_at(at, now, want.lease_for, want.caller.session.clone()))
        {
            return Taken::Now(handout);
        }
        let (tx, rx) = oneshot::channel();
        let waiters = &mut self.waiters;
        waiters.next_serial += 1;
        let serial = waiters.next_serial;
        waiters.waiting.push_back(Waiter { serial, want, tx });
        Taken::Waiting {
            serial,
            handout: rx,
        }
    }

    /// Poll `serial` stops waiting; false when it was not waiting any more (it was handed a
    /// request, which is then on its receiver).
    pub fn stop_waiting(&mut self, serial: u64) -> bool {
        let waiting = &mut self.waiters.waiting;
        match waiting.iter().position(|w| w.serial == serial) {
            Some(at) => {
                waiting.remove(at);
                true
            }
            None => false,
        }
    }

    pub fn waiting_polls(&self) -> usize {
        self.waiters.waiting.len()
    }

    /// Hands queued requests to waiting polls, longest-waiting first, each the oldest request
    /// it fits. Polls whose caller is gone are dropped on the way.
    pub(super) fn dispatch(&mut self, now: Instant) {
        let mut w = 0;
        while w < self.waiters.waiting.len() && !self.order.is_empty() {
            let waiter = &self.waiters.waiting[w];
            if waiter.tx.is_closed() || waiter.want.caller.is_gone() {
                self.waiters.waiting.remove(w);
                continue;
            }
            let at = self
                .order
                .iter()
                .position(|id| self.entries.get(id).is_some_and(|e| waiter.want.fits(e)));
            let Some(at) = at else {
                w += 1;
                continue;
            };
            let Some(waiter) = self.waiters.waiting.remove(w) else {
                break;
            };
            let holder: Option<Arc<str>> = waiter.want.caller.session.clone();
            let Some(handout) = self.lease_at(at, now, waiter.want.lease_for, holder) else {
                continue;
            };
            if let Err(handout) = waiter.tx.send(handout) {
                self.unlease(&handout);
            }
        }
    }
}
