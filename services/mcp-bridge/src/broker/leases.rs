//! Leases that lapse, and shutdown: what the broker ends, and what it gives back to the Redis
//! queue for another mcp-bridge's agents.
use std::sync::atomic::Ordering;
use std::time::Instant;

use provider_shared::bridge::{codes, ModelResult};

use crate::metrics;
use crate::queue::{Ended, Entry};

use super::{Broker, AGENT_TIMEOUT};

impl Broker {
    /// Handles lapsed leases until shutdown.
    pub async fn sweep_leases(&self) {
        loop {
            let next = self.queue().next_deadline();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.leases_changed.notified() => continue,
                _ = self.stopping.cancelled() => return,
            }
            let expired = self.queue().expire(Instant::now());
            let mut requeued = false;
            for lapse in expired {
                self.counts.lease_expiries.fetch_add(1, Ordering::Relaxed);
                metrics::lease_expired();
                if lapse.requeued {
                    tracing::warn!(id = %lapse.id, "lease lapsed; the request is back in the queue");
                    requeued = true;
                } else if let Some(entry) = lapse.entry {
                    tracing::warn!(id = %lapse.id, "lease lapsed mid-answer; ending the request");
                    self.record_end(&entry, Ended::Abandoned, Some(AGENT_TIMEOUT));
                    entry.finish(ModelResult::error(
                        &lapse.id,
                        AGENT_TIMEOUT,
                        format!(
                            "the agent stopped answering for {:?} (LEASE_TIMEOUT) after part of the answer was sent",
                            self.config.lease_timeout
                        ),
                    ));
                }
            }
            self.gauges();
            if requeued {
                tracing::debug!("lapsed requests handed to waiting polls");
            }
        }
    }

    /// Shutdown, first step: queued requests end now (nobody will take them), long-polls return.
    /// On the Redis queue they are given back instead, for another mcp-bridge's agents.
    pub async fn begin_shutdown(&self) {
        self.stopping.cancel();
        let queued = self.queue().drain_queued();
        match &self.shared {
            None => self.end_all(queued),
            Some(shared) => {
                let ids = queued.into_iter().map(|e| e.invoke.id).collect();
                shared.hand_back(self, ids).await;
            }
        }
    }

    pub fn leased_count(&self) -> usize {
        self.queue().leased_count()
    }

    /// Shutdown, last step: whatever is still leased ends with `shutting_down`. On the Redis
    /// queue, a request whose answer has not begun is given back instead.
    pub async fn end_leased(&self) {
        let rest = self.queue().drain_all();
        let Some(shared) = &self.shared else {
            return self.end_all(rest);
        };
        let (begun, unanswered): (Vec<Entry>, Vec<Entry>) =
            rest.into_iter().partition(|e| e.answer.started());
        self.end_all(begun);
        let ids = unanswered.into_iter().map(|e| e.invoke.id).collect();
        shared.hand_back(self, ids).await;
    }

    pub(super) fn end_all(&self, entries: Vec<Entry>) {
        for entry in entries {
            self.record_end(&entry, Ended::ShuttingDown, None);
            let id = entry.invoke.id.clone();
            entry.finish(ModelResult::error(
                &id,
                codes::SHUTTING_DOWN,
                "mcp-bridge is shutting down",
            ));
        }
        self.gauges();
    }
}
