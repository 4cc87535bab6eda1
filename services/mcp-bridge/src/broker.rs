//! The broker between bridge-agent connections and MCP agents: the queue under a lock, wake-ups
//! for long-polls, and a request's way through it (invoke, cancel, each part of the answer, its
//! failure). Beside it: `agents.rs` (bridge-agent connections and their resume grace),
//! `handout.rs` (long-polls), `leases.rs` (lapsed leases and shutdown), `shared.rs` (the hooks
//! of the Redis queue) and `books.rs` (where every ending is recorded: metrics, audit, status).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use provider_shared::bridge::{codes, BridgeFrame, ModelInvoke, ModelResult, Payload};
use provider_shared::ws_peer::Outbound;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::Part;
use crate::caller::Presence;
use crate::config::Config;
use crate::conversation::Conversations;
use crate::metrics;
use crate::queue::{Ended, Owner, Queue, QueueFull, Refusal};
use crate::resume::Resumes;
use crate::shared_queue::{Command, SharedQueue};
use provider_shared::audit::Audit;

mod agents;
mod books;
mod handout;
mod leases;
mod shared;

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

    /// The gateway session and payload of the live request `id` (queued or leased).
    pub fn live_payload(&self, id: &str) -> Option<(Option<String>, Payload)> {
        let queue = self.queue();
        let entry = queue.get(id)?;
        Some((
            entry.invoke.session_id.clone(),
            entry.invoke.payload.clone(),
        ))
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
