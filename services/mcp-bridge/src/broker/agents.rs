//! bridge-agent connections as the broker sees them: arriving, leaving (their requests
//! withdrawn), and vanishing with a resume grace (their requests held for `RESUME_GRACE`).
use std::sync::atomic::Ordering;

use crate::metrics;
use crate::queue::{Ended, Owner};
use crate::shared_queue::Command;

use super::{AgentInfo, Broker};

impl Broker {
    pub fn agent_connected(&self, info: AgentInfo) -> Owner {
        let owner = self.next_owner.fetch_add(1, Ordering::SeqCst);
        let n = {
            let mut agents = self.agents();
            agents.insert(owner, info);
            agents.len()
        };
        metrics::agents(n);
        owner
    }

    /// The connection of `owner` dropped: its requests are withdrawn. bridge-agent has already
    /// failed them towards the editor (`bridge_disconnected`), and a reconnecting bridge-agent
    /// cannot resume them, so handing them out would only produce answers nobody reads.
    pub fn agent_disconnected(&self, owner: Owner) {
        self.left(owner, false);
        let withdrawn = self.queue().drop_owner(owner);
        for entry in withdrawn {
            self.record_end(&entry, Ended::Withdrawn, None);
        }
        self.gauges();
    }

    /// The connection of `owner`, which can resume, vanished: its requests stay (the agent
    /// keeps answering them) until one of the same `agent_id` resumes them, or for
    /// `RESUME_GRACE`, after which the rest are withdrawn.
    pub fn agent_vanished(self: &std::sync::Arc<Self>, owner: Owner) {
        self.left(owner, true);
        let held = self.resumes.detach(owner);
        tracing::info!(
            held,
            grace = ?self.resumes.grace,
            "holding the requests of a vanished bridge-agent connection for a resume"
        );
        let broker = self.clone();
        let span = tracing::info_span!("resume_grace", owner);
        self.samplers.spawn(tracing::Instrument::instrument(
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(broker.resumes.grace) => {}
                    _ = broker.stopping.cancelled() => {}
                }
                for id in broker.resumes.expire(owner) {
                    let entry = broker.queue().end(&id, Ended::Withdrawn);
                    // No result: the connection it would go to is gone.
                    if let Some(entry) = entry {
                        tracing::info!(%id, "not resumed within RESUME_GRACE; withdrawn");
                        broker.record_end(&entry, Ended::Withdrawn, None);
                    }
                }
                broker.gauges();
            },
            span,
        ));
    }

    /// The connection of `owner` is gone: the Redis queue hears of it and it leaves the list.
    fn left(&self, owner: Owner, resumable: bool) {
        if let Some(shared) = &self.shared {
            shared.command(Command::Left { owner, resumable });
        }
        let n = {
            let mut agents = self.agents();
            agents.remove(&owner);
            agents.len()
        };
        metrics::agents(n);
    }

    /// A `model_resume` of `id` was refused although the bridge held it: it ends here, so an agent
    /// still answering it has its parts refused.
    pub fn withdraw(&self, id: &str) {
        let entry = self.queue().end(id, Ended::Withdrawn);
        if let Some(entry) = entry {
            tracing::info!(%id, "withdrawn: its resume was refused");
            self.record_end(&entry, Ended::Withdrawn, None);
        }
        self.gauges();
    }

    /// `model_resume` succeeded: cancels from the new connection now reach the request.
    pub fn reowned(&self, id: &str, owner: Owner) {
        self.queue().reown(id, owner);
    }

    pub fn agent_count(&self) -> usize {
        self.agents().len()
    }
}
