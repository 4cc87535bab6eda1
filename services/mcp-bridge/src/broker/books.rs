//! What the broker records and reports: the end of each request (counts, metrics, the audit
//! record with its prompt digest), the queue gauges, and the status `get_status` and `/health`
//! show.
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::metrics;
use crate::queue::{Ended, Entry, Owner};

use super::{AgentInfo, Broker};

impl Broker {
    pub(super) fn record_end(&self, entry: &Entry, why: Ended, code: Option<&str>) {
        let counter = match why {
            Ended::Answered => &self.counts.answered,
            Ended::Failed | Ended::Abandoned | Ended::ShuttingDown => &self.counts.failed,
            Ended::Cancelled => &self.counts.cancelled,
            Ended::Withdrawn => &self.counts.withdrawn,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::request_ended(why.label());
        let elapsed = entry.enqueued.elapsed();
        if let Some(handed) = entry.first_handed {
            metrics::answer_time(handed.elapsed());
        }
        self.audit.record(
            "model_request",
            json!({
                "request_id": entry.invoke.id,
                "kind": entry.invoke.payload.kind(),
                "session_id": entry.invoke.session_id,
                "outcome": why.label(),
                "success": why == Ended::Answered,
                "error_code": code,
                "attempts": entry.attempts,
                "duration_ms": elapsed.as_millis() as u64,
                // What was asked (messages or prompt and suffix), never the text.
                "prompt_sha256": entry.prompt_sha256(),
            }),
        );
    }

    pub(super) fn gauges(&self) {
        let (queued, leased) = {
            let q = self.queue();
            (q.queued(), q.leased_count())
        };
        metrics::queue(queued, leased);
    }

    /// What `get_status` and `/health` report.
    pub fn status(&self) -> Value {
        let agents: Vec<(Owner, AgentInfo)> =
            self.agents().iter().map(|(o, a)| (*o, a.clone())).collect();
        let q = self.queue();
        let agents: Vec<Value> = agents
            .into_iter()
            .map(|(owner, a)| {
                let (queued, leased) = q.count_for(owner);
                json!({"agent_id": a.agent_id, "address": a.address,
                       "connected_seconds": a.connected.elapsed().as_secs(),
                       "queued": queued, "leased": leased})
            })
            .collect();
        let c = &self.counts;
        let (queued, leased, polls, connected) = match &self.shared {
            None => (
                q.queued() as u64,
                q.leased_count() as u64,
                self.pollers.load(Ordering::Relaxed) as u64,
                agents.len() as u64,
            ),
            // Every mcp-bridge on the queue reports the same figures.
            Some(shared) => {
                let v = shared.view();
                (v.queued, v.leased, v.waiting_polls, v.bridge_agents)
            }
        };
        let queue = match &self.shared {
            None => json!({"kind": "memory"}),
            Some(shared) => shared.view().to_json(shared.address()),
        };
        json!({
            "queue": queue,
            "queue_depth": queued,
            "leased": leased,
            "waiting_polls": polls,
            "sampling_clients": self.sampling_clients.load(Ordering::Relaxed),
            "connected_bridge_agents": connected,
            "bridge_agents": agents,
            "answered": c.answered.load(Ordering::Relaxed),
            "failed": c.failed.load(Ordering::Relaxed),
            "cancelled": c.cancelled.load(Ordering::Relaxed),
            "withdrawn": c.withdrawn.load(Ordering::Relaxed),
            "lease_expiries": c.lease_expiries.load(Ordering::Relaxed),
            "lease_timeout_seconds": self.config.lease_timeout.as_secs_f64(),
        })
    }
}
