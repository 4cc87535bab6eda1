//! The broker between bridge-agent connections and MCP agents: the queue under a lock, wake-ups
//! for long-polls, the lease sweeper, and the one place where a request ends (metrics, audit and
//! the frame to its bridge-agent).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use provider_shared::bridge::{codes, BridgeFrame, ModelInvoke, ModelResult};
use provider_shared::digest;
use provider_shared::ws_peer::Outbound;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::Part;
use crate::caller::Presence;
use crate::config::Config;
use crate::conversation::Conversations;
use crate::metrics;
use crate::queue::{Ended, Entry, Owner, Queue, QueueFull, Refusal};
use crate::resume::Resumes;
use crate::shared_queue::{Command, SharedQueue};
use provider_shared::audit::Audit;

mod handout;

/// The agent's lease lapsed after part of the answer went out.
pub(crate) const AGENT_TIMEOUT: &str = "agent_timeout";
/// The agent's MCP session left after part of the answer went out.
const AGENT_GONE: &str = "agent_gone";

/// The owner of the requests read from the Redis queue: their bridge-agent connection may be on
/// another mcp-bridge (connections count from 1).
pub const SHARED: Owner = 0;

/// A connected bridge-agent.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub agent_id: String,
    pub address: String,
    pub connected: Instant,
}

pub struct Broker {
    pub config: Config,
    pub audit: Audit,
    pub started: Instant,
    queue: Mutex<Queue>,
    /// Woken when a lease is granted, so the sweeper looks at the new deadline.
    leases_changed: Notify,
    agents: Mutex<HashMap<Owner, AgentInfo>>,
    next_owner: AtomicU64,
    pollers: AtomicUsize,
    /// When agents asked for work, for `bridge_status` frames.
    pub activity: crate::activity::Activity,
    /// MCP clients being asked through `sampling/createMessage` (`MCP_SAMPLING`).
    pub sampling_clients: AtomicUsize,
    /// Their loops, the resume-grace timers of vanished connections and each request's
    /// forwarding task, so shutdown waits for them.
    pub samplers: TaskTracker,
    /// Shutdown began: long-polls return, nothing new is handed out.
    pub stopping: CancellationToken,
    /// What each MCP session was handed of each conversation (`MCP_DELTAS`).
    pub conversations: Arc<Conversations>,
    /// Requests of protocol-2 connections, which may resume on a new one.
    pub resumes: std::sync::Arc<Resumes>,
    /// Which MCP sessions keep a standalone stream open (`caller.rs`).
    pub presence: Presence,
    /// The request queue on Redis (`QUEUE=redis`): requests from bridge-agent go there, and the
    /// local queue holds what this mcp-bridge read from it for its agents.
    pub shared: Option<Arc<SharedQueue>>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    answered: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    withdrawn: AtomicU64,
    lease_expiries: AtomicU64,
}

/// What a successful reply did.
pub struct Submitted {
    pub done: bool,
    pub chunks_sent: usize,
}

impl Broker {
    pub fn new(config: Config, audit: Audit, shared: Option<Arc<SharedQueue>>) -> Self {
        // Request forwarding tasks share the tracker shutdown waits on.
        let samplers = TaskTracker::new();
        let resumes = Resumes::new(config.replay_bytes, config.resume_grace, samplers.clone());
        Self {
            conversations: Conversations::new(config.deltas),
            resumes: std::sync::Arc::new(resumes),
            config,
            audit,
            started: Instant::now(),
            queue: Mutex::new(Queue::default()),
            leases_changed: Notify::new(),
            agents: Mutex::new(HashMap::new()),
            next_owner: AtomicU64::new(1),
            pollers: AtomicUsize::new(0),
            activity: crate::activity::Activity::default(),
            sampling_clients: AtomicUsize::new(0),
            samplers,
            stopping: CancellationToken::new(),
            presence: Presence::default(),
            shared,
            counts: Counts::default(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-changed in a way that
        // matters more than stopping service would, so a poisoned lock is used as is.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn agents(&self) -> MutexGuard<'_, HashMap<Owner, AgentInfo>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

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
        if let Some(shared) = &self.shared {
            shared.command(Command::Left {
                owner,
                resumable: false,
            });
        }
        let n = {
            let mut agents = self.agents();
            agents.remove(&owner);
            agents.len()
        };
        metrics::agents(n);
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
        if let Some(shared) = &self.shared {
            shared.command(Command::Left {
                owner,
                resumable: true,
            });
        }
        let n = {
            let mut agents = self.agents();
            agents.remove(&owner);
            agents.len()
        };
        metrics::agents(n);
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

    /// A `model_invoke` from `owner`; a duplicate live id is answered with an error at once.
    /// `result_after_chunks`: `owner` listed that capability in its `hello`.
    pub fn invoke(
        &self,
        owner: Owner,
        invoke: ModelInvoke,
        to_owner: Outbound<BridgeFrame>,
        result_after_chunks: bool,
    ) {
        if let Some(shared) = &self.shared {
            let agent_id = self
                .agents()
                .get(&owner)
                .map(|a| a.agent_id.clone())
                .unwrap_or_default();
            shared.command(Command::Invoke {
                owner,
                agent_id,
                invoke,
                to: to_owner,
                result_after_chunks,
            });
            return;
        }
        let pushed = self.queue().push(
            invoke,
            owner,
            to_owner.clone(),
            Instant::now(),
            result_after_chunks,
        );
        match pushed {
            Ok(()) => self.gauges(),
            Err(id) => {
                tracing::warn!(%id, "model_invoke with a live id refused");
                to_owner.push_last(BridgeFrame::ModelResult(ModelResult::error(
                    id,
                    "duplicate_request_id",
                    "a request with this id is already waiting for the agent",
                )));
            }
        }
    }

    /// `model_cancel` from `owner`.
    pub fn cancel(&self, owner: Owner, id: &str) {
        if let Some(shared) = &self.shared {
            shared.command(Command::Cancel {
                owner,
                id: id.to_owned(),
            });
            return;
        }
        let entry = self.queue().cancel(owner, id);
        match entry {
            Some(entry) => {
                tracing::info!(%id, "request withdrawn: the editor's client went away");
                self.record_end(&entry, Ended::Cancelled, None);
                self.gauges();
            }
            None => tracing::debug!(%id, "model_cancel for an unknown or ended request"),
        }
    }

    /// One part of an answer from the agent. Its chunks, and on `done` its result, go out under
    /// the queue's lock, and the request ends there too: a part that finds bridge-agent's queue
    /// full ends it with `slow_client` in the same step, so no other part can slip a second
    /// result in between.
    pub fn submit(&self, id: &str, lease: &str, part: Part) -> Result<Submitted, Refusal> {
        let lease_for = self.config.lease_timeout;
        let mut queue = self.queue();
        let entry = queue.leased(id, lease, Instant::now(), lease_for)?;
        let shape = entry.shape.clone();
        let step = entry.answer.apply(id, &shape, part).map_err(Refusal)?;
        let chunks_sent = step.frames.len() - usize::from(step.done);
        let mut result = None;
        for frame in step.frames {
            let frame = match frame {
                BridgeFrame::ModelResult(r) => {
                    result = Some(r);
                    continue;
                }
                chunk => chunk,
            };
            match entry.send_chunk(frame) {
                Ok(()) => {}
                Err(QueueFull) => {
                    let why = overflow_reason();
                    tracing::warn!(%id, "outbound queue full; ending the request");
                    if let Some(entry) = queue.end(id, Ended::Failed) {
                        drop(queue);
                        self.record_end(&entry, Ended::Failed, Some(codes::SLOW_CLIENT));
                        entry.finish(ModelResult::error(id, codes::SLOW_CLIENT, &why));
                        self.gauges();
                    }
                    return Err(Refusal(why));
                }
            }
        }
        match result {
            Some(result) => {
                if let Some(entry) = queue.end(id, Ended::Answered) {
                    drop(queue);
                    self.record_end(&entry, Ended::Answered, None);
                    entry.finish(result);
                    self.gauges();
                }
            }
            None => queue.renew(id, Instant::now(), lease_for),
        }
        Ok(Submitted {
            done: step.done,
            chunks_sent,
        })
    }

    /// The agent gives up on a request.
    pub fn fail(&self, id: &str, lease: &str, code: &str, reason: &str) -> Result<(), Refusal> {
        let entry = {
            let mut queue = self.queue();
            queue.leased(id, lease, Instant::now(), self.config.lease_timeout)?;
            queue.end(id, Ended::Failed)
        };
        if let Some(entry) = entry {
            self.record_end(&entry, Ended::Failed, Some(code));
            entry.finish(ModelResult::error(id, code, reason));
            self.gauges();
        }
        Ok(())
    }

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

    fn end_all(&self, entries: Vec<Entry>) {
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

    fn record_end(&self, entry: &Entry, why: Ended, code: Option<&str>) {
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
        // The digest covers what was asked (messages or prompt and suffix), never the text.
        let mut asked = Value::clone(&entry.payload);
        if let Some(fields) = asked.as_object_mut() {
            fields.remove("parameters");
        }
        let prompt = serde_json::to_vec(&asked).unwrap_or_default();
        self.audit.record(
            "model_request",
            json!({
                "request_id": entry.invoke.id,
                "kind": entry.payload["kind"],
                "session_id": entry.invoke.session_id,
                "outcome": why.label(),
                "success": why == Ended::Answered,
                "error_code": code,
                "attempts": entry.attempts,
                "duration_ms": elapsed.as_millis() as u64,
                "prompt_sha256": digest::sha256_hex(&prompt),
            }),
        );
    }

    fn gauges(&self) {
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

    /// The gateway session and payload of the live request `id` (queued or leased).
    pub fn live_payload(&self, id: &str) -> Option<(Option<String>, Arc<Value>)> {
        let queue = self.queue();
        let entry = queue.get(id)?;
        Some((entry.invoke.session_id.clone(), Arc::clone(&entry.payload)))
    }

    pub fn queue_depth(&self) -> usize {
        self.queue().queued()
    }
}

/// Why a part that found bridge-agent's queue full ended its request (`config.rs`
/// `OUTBOUND_QUEUE`): this request ends with `slow_client`, the connection goes on for the others.
pub(crate) fn overflow_reason() -> String {
    format!(
        "bridge-agent is {} frames behind on this request (mcp-bridge's outbound queue is full); the request ends so that the others on its connection go on",
        crate::config::OUTBOUND_QUEUE
    )
}

/// Counts one waiting long-poll while it lives.
struct Poller<'a>(&'a Broker);

impl<'a> Poller<'a> {
    fn new(broker: &'a Broker) -> Self {
        let n = broker.pollers.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::pollers(n);
        broker.activity.poll_started();
        Poller(broker)
    }
}

impl Drop for Poller<'_> {
    fn drop(&mut self) {
        let n = self.0.pollers.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::pollers(n);
        self.0.activity.poll_ended();
    }
}

#[cfg(test)]
mod tests;
