//! The broker between bridge-agent connections and MCP agents: the queue under a lock, wake-ups
//! for long-polls, the lease sweeper, and the one place where a request ends (metrics, audit and
//! the frame to its bridge-agent).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provider_shared::bridge::{codes, BridgeFrame, ModelInvoke, ModelResult};
use provider_shared::digest;
use provider_shared::ws_peer::{Outbound, Refused};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::Part;
use crate::config::Config;
use crate::conversation::Conversations;
use crate::metrics;
use crate::queue::{Ended, Entry, Handout, Owner, Queue, Refusal};
use crate::resume::Resumes;
use provider_shared::audit::Audit;

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
    /// Woken when a request becomes available.
    available: Notify,
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
    pub fn new(config: Config, audit: Audit) -> Self {
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
            available: Notify::new(),
            leases_changed: Notify::new(),
            agents: Mutex::new(HashMap::new()),
            next_owner: AtomicU64::new(1),
            pollers: AtomicUsize::new(0),
            activity: crate::activity::Activity::default(),
            sampling_clients: AtomicUsize::new(0),
            samplers,
            stopping: CancellationToken::new(),
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
        let pushed = self.queue().push(
            invoke,
            owner,
            to_owner.clone(),
            Instant::now(),
            result_after_chunks,
        );
        match pushed {
            Ok(()) => {
                self.gauges();
                self.available.notify_waiters();
            }
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

    /// Waits up to `wait` for a request and leases it; `None` when none came (or `ct` fired,
    /// or shutdown began). Taking is synchronous, so a cancelled wait never holds a request.
    pub async fn next_request(&self, wait: Duration, ct: &CancellationToken) -> Option<Handout> {
        let _poller = Poller::new(self);
        let deadline = tokio::time::Instant::now() + wait;
        self.wait_for(deadline, ct, || self.take()).await
    }

    /// Waits (until `ct` fires or shutdown) for a request that `fits` and leases it for
    /// `lease_for`: how sampling clients take the requests they can answer.
    pub async fn next_matching(
        &self,
        fits: impl Fn(&Entry) -> bool,
        lease_for: Duration,
        ct: &CancellationToken,
    ) -> Option<Handout> {
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        self.wait_for(far, ct, || {
            let handout = self.queue().take_first(Instant::now(), lease_for, &fits)?;
            self.handed(&handout);
            Some(handout)
        })
        .await
    }

    async fn wait_for(
        &self,
        deadline: tokio::time::Instant,
        ct: &CancellationToken,
        take: impl Fn() -> Option<Handout>,
    ) -> Option<Handout> {
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopping.is_cancelled() {
                return None;
            }
            if let Some(handout) = take() {
                return Some(handout);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = ct.cancelled() => return None,
                _ = self.stopping.cancelled() => return None,
            }
        }
    }

    fn take(&self) -> Option<Handout> {
        let now = Instant::now();
        let handout = self.queue().take(now, self.config.lease_timeout)?;
        self.handed(&handout);
        Some(handout)
    }

    fn handed(&self, handout: &Handout) {
        if handout.attempt == 1 {
            metrics::agent_wait(handout.queued_for);
        }
        tracing::info!(id = %handout.id, attempt = handout.attempt, "request handed to the agent");
        self.leases_changed.notify_one();
        self.gauges();
    }

    /// The holder of `lease` gives `id` back unanswered: it goes to the front of the queue for
    /// any other agent or sampling client.
    pub fn release(&self, id: &str, lease: &str) {
        if self.queue().release(id, lease) {
            tracing::info!(%id, "request back in the queue");
            self.gauges();
            self.available.notify_waiters();
        }
    }

    /// One part of an answer from the agent.
    pub fn submit(&self, id: &str, lease: &str, part: Part) -> Result<Submitted, Refusal> {
        let mut queue = self.queue();
        let entry = queue.leased(id, lease)?;
        let shape = entry.shape.clone();
        let step = entry.answer.apply(id, &shape, part).map_err(Refusal)?;
        let chunks_sent = step.frames.len() - usize::from(step.done);
        let to_owner = entry.to_owner.clone();
        for frame in step.frames {
            if matches!(frame, BridgeFrame::ModelResult(_)) {
                to_owner.push_last(frame);
                continue;
            }
            match to_owner.try_push(frame) {
                // A closed channel means the connection is going; its drop withdraws the request.
                Ok(()) | Err(Refused::Closed(_)) => {}
                Err(Refused::Full(_)) => {
                    drop(queue);
                    return Err(self.overflowed(id, &to_owner));
                }
            }
        }
        if step.done {
            if let Some(entry) = queue.end(id, Ended::Answered) {
                drop(queue);
                self.record_end(&entry, Ended::Answered, None);
                self.gauges();
            }
        } else {
            queue.renew(id, Instant::now(), self.config.lease_timeout);
        }
        Ok(Submitted {
            done: step.done,
            chunks_sent,
        })
    }

    /// A chunk of `id` found its bridge-agent's queue full (`config.rs` `OUTBOUND_QUEUE`): this
    /// request ends with `slow_client`, the connection goes on for the others.
    fn overflowed(&self, id: &str, to_owner: &Outbound<BridgeFrame>) -> Refusal {
        let why = format!(
            "bridge-agent is {} frames behind on this request (mcp-bridge's outbound queue is full); the request ends so that the others on its connection go on",
            crate::config::OUTBOUND_QUEUE
        );
        tracing::warn!(%id, "outbound queue full; ending the request");
        to_owner.push_last(BridgeFrame::ModelResult(ModelResult::error(
            id,
            codes::SLOW_CLIENT,
            &why,
        )));
        let entry = self.queue().end(id, Ended::Failed);
        if let Some(entry) = entry {
            self.record_end(&entry, Ended::Failed, Some(codes::SLOW_CLIENT));
            self.gauges();
        }
        Refusal(why)
    }

    /// The agent gives up on a request.
    pub fn fail(&self, id: &str, lease: &str, code: &str, reason: &str) -> Result<(), Refusal> {
        let entry = {
            let mut queue = self.queue();
            queue.leased(id, lease)?;
            queue.end(id, Ended::Failed)
        };
        if let Some(entry) = entry {
            let result = ModelResult::error(id, code, reason);
            entry.to_owner.push_last(BridgeFrame::ModelResult(result));
            self.record_end(&entry, Ended::Failed, Some(code));
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
                    entry.to_owner.push_last(BridgeFrame::ModelResult(ModelResult::error(
                        &lapse.id,
                        "agent_timeout",
                        format!(
                            "the agent stopped answering for {:?} (LEASE_TIMEOUT) after part of the answer was sent",
                            self.config.lease_timeout
                        ),
                    )));
                    self.record_end(&entry, Ended::Abandoned, None);
                }
            }
            self.gauges();
            if requeued {
                self.available.notify_waiters();
            }
        }
    }

    /// Shutdown, first step: queued requests end now (nobody will take them), long-polls return.
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
        let queued = self.queue().drain_queued();
        self.end_all(queued);
    }

    pub fn leased_count(&self) -> usize {
        self.queue().leased_count()
    }

    /// Shutdown, last step: whatever is still leased ends with `shutting_down`.
    pub fn end_leased(&self) {
        let rest = self.queue().drain_all();
        self.end_all(rest);
    }

    fn end_all(&self, entries: Vec<Entry>) {
        for entry in entries {
            let result = ModelResult::error(
                &entry.invoke.id,
                "shutting_down",
                "mcp-bridge is shutting down",
            );
            entry.to_owner.push_last(BridgeFrame::ModelResult(result));
            self.record_end(&entry, Ended::ShuttingDown, None);
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
        json!({
            "queue_depth": q.queued(),
            "leased": q.leased_count(),
            "waiting_polls": self.pollers.load(Ordering::Relaxed),
            "sampling_clients": self.sampling_clients.load(Ordering::Relaxed),
            "connected_bridge_agents": agents.len(),
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use provider_shared::bridge::Outcome;
    use provider_shared::ws_peer;

    use crate::queue::tests::invoke;

    fn part(content: &str) -> Part {
        serde_json::from_value(json!({"content": content, "done": false})).unwrap()
    }

    fn chunk_of(frame: BridgeFrame) -> (String, String) {
        match frame {
            BridgeFrame::ModelStreamChunk(c) => (c.id, c.delta.content.unwrap_or_default()),
            other => panic!("not a chunk: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_that_overflows_its_connection_s_queue_ends_alone() {
        let config = Config::from_vars(vec![]).unwrap();
        let (audit, _writer) = Audit::open(None, "mcp-bridge", Default::default())
            .await
            .unwrap();
        let broker = Broker::new(config, audit);
        // One connection whose queue holds two frames, with two requests on it.
        let (tx, mut rx) = ws_peer::queue::<BridgeFrame>(2);
        broker.invoke(1, invoke("a"), tx.clone(), false);
        broker.invoke(1, invoke("b"), tx.clone(), false);
        let a = broker.take().unwrap();
        let b = broker.take().unwrap();
        broker.submit("a", &a.lease, part("a1")).unwrap();
        broker.submit("b", &b.lease, part("b1")).unwrap();
        let Err(refused) = broker.submit("a", &a.lease, part("a2")) else {
            panic!("a full queue took the chunk");
        };
        assert!(refused.0.contains("frames behind"), "{refused:?}");

        assert_eq!(
            chunk_of(rx.recv().await.unwrap()),
            ("a".into(), "a1".into())
        );
        assert_eq!(
            chunk_of(rx.recv().await.unwrap()),
            ("b".into(), "b1".into())
        );
        // a's result waited for room; it names the reason.
        match rx.recv().await.unwrap() {
            BridgeFrame::ModelResult(result) => {
                assert_eq!(result.id, "a");
                let Outcome::Error { error } = result.outcome else {
                    panic!("not an error")
                };
                assert_eq!(error.code, codes::SLOW_CLIENT);
            }
            other => panic!("not a result: {other:?}"),
        }
        assert!(broker.submit("a", &a.lease, part("a3")).is_err(), "a ended");
        // b, on the same connection, goes on.
        broker.submit("b", &b.lease, part("b2")).unwrap();
        assert_eq!(
            chunk_of(rx.recv().await.unwrap()),
            ("b".into(), "b2".into())
        );
    }
}
