//! The broker's side of the request queue on Redis (`shared_queue/`): how many requests to read
//! for the polls waiting here, taking one in, and letting one go that ended elsewhere.
use std::sync::atomic::Ordering;
use std::time::Instant;

use provider_shared::bridge::{BridgeFrame, ModelInvoke};
use provider_shared::ws_peer::Outbound;

use crate::queue::Ended;

use super::{Broker, SHARED};

impl Broker {
    /// Polls waiting here for which no local request is queued: how many requests to read
    /// from the Redis queue.
    pub fn demand(&self) -> usize {
        if self.stopping.is_cancelled() {
            return 0;
        }
        let q = self.queue();
        q.waiting_polls().saturating_sub(q.queued())
    }

    pub fn waiting_polls(&self) -> usize {
        self.pollers.load(Ordering::Relaxed)
    }

    /// A request read from the Redis queue, after `waited` in it, joins the local one (handed
    /// at once to the poll that has waited longest); its frames go to `sink`. False when its
    /// id is live here.
    pub fn take_in(
        &self,
        invoke: ModelInvoke,
        sink: Outbound<BridgeFrame>,
        result_after_chunks: bool,
        waited: std::time::Duration,
    ) -> bool {
        let pushed = self.queue().push_waited(
            invoke,
            SHARED,
            sink,
            Instant::now(),
            waited,
            result_after_chunks,
        );
        self.gauges();
        pushed.is_ok()
    }

    /// A request read from the Redis queue ended elsewhere, or went back to it: it leaves the
    /// local queue without a result (its result, if any, is not ours to send).
    pub fn drop_shared(&self, id: &str) {
        let mut queue = self.queue();
        if queue.get(id).is_some_and(|e| e.owner == SHARED) {
            queue.end(id, Ended::Withdrawn);
        }
        drop(queue);
        self.gauges();
    }

    /// Whether the request read from Redis `id` is leased here now; `None` once it is gone.
    pub fn held_leased(&self, id: &str) -> Option<bool> {
        self.queue().get(id).map(|e| e.lease.is_some())
    }
}
