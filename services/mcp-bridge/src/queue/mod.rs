//! The request queue with leases. Plain data, no I/O: the broker holds it under a lock and does
//! the logging. Every request is in exactly one place — queued, or leased to one agent — until
//! it ends, and an ended request leaves a tombstone so that a late reply gets a clear answer.
//!
//! Its one result goes out through [`Entry::finish`], which consumes the entry; an entry leaves
//! the queue once ([`Queue::end`] and the other ways out hand it over by value), so a request
//! gets one result by construction, whoever ends it. Waiting long-polls are in the queue too
//! (`waiters.rs`): a request goes straight to the poll that has waited longest.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::bridge::{BridgeFrame, ModelInvoke, ModelResult, Payload};
use provider_shared::ws_peer::{Outbound, Refused};
use rand::Rng;
use serde_json::{Map, Value};

use crate::answer::{Shape, Submission};

mod waiters;
pub use waiters::{Taken, Want};

/// Which bridge-agent connection sent a request; its answer goes back there.
pub type Owner = u64;

/// How many ended requests are remembered for late replies.
const TOMBSTONES: usize = 4096;

#[derive(Debug)]
pub struct Entry {
    pub invoke: ModelInvoke,
    pub owner: Owner,
    /// Where its chunks and its result go; only through [`Entry::send_chunk`] and
    /// [`Entry::finish`].
    to_owner: Outbound<BridgeFrame>,
    pub shape: Shape,
    /// Whether an MCP client can answer it through sampling, once asked (`sampling.rs`): the
    /// answer needs its messages decoded, which is done once.
    pub sampleable: std::sync::OnceLock<bool>,
    pub enqueued: Instant,
    /// How many times it was handed out.
    pub attempts: u32,
    /// When it was first handed out (for "time waiting for the agent").
    pub first_handed: Option<Instant>,
    pub lease: Option<Lease>,
    /// The last lease granted, kept while the request waits in the queue after it lapsed: its
    /// holder's late reply is still taken while nobody else holds the request.
    lapsed: Option<Lease>,
    pub answer: Submission,
}

impl Entry {
    /// Queues a chunk for bridge-agent without waiting: refused when its queue is full. A
    /// closed queue takes it (the connection is going; its end withdraws the request).
    pub fn send_chunk(&self, frame: BridgeFrame) -> Result<(), QueueFull> {
        match self.to_owner.try_push(frame) {
            Ok(()) | Err(Refused::Closed(_)) => Ok(()),
            Err(Refused::Full(_)) => Err(QueueFull),
        }
    }

    /// Sends the request's one result. The entry has left the queue (only [`Queue::end`] and
    /// its kin hand one out by value), so nothing else can send another.
    pub fn finish(self, result: ModelResult) {
        self.to_owner.push_last(BridgeFrame::ModelResult(result));
    }

    /// The audit log's digest of what was asked, never the parameters: the payload without
    /// them (`kind`, then `messages`, or `prompt`, `suffix` and `system`), as compact JSON, its
    /// messages hashed as the text they came as (docs/ARCHITECTURE.md).
    pub fn prompt_sha256(&self) -> String {
        #[derive(serde::Serialize)]
        struct Asked<'a> {
            kind: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            messages: Option<&'a serde_json::value::RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            prompt: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            suffix: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            system: Option<&'a str>,
        }
        let payload = &self.invoke.payload;
        let mut asked = Asked {
            kind: payload.kind(),
            messages: payload.messages().map(|m| m.raw()),
            prompt: None,
            suffix: None,
            system: None,
        };
        if let Payload::Completion {
            prompt,
            suffix,
            system,
            ..
        } = payload
        {
            asked.prompt = Some(prompt);
            asked.suffix = suffix.as_deref();
            asked.system = system.as_deref();
        }
        provider_shared::digest::sha256_hex_json(&asked)
    }

    fn unleased(&mut self) {
        self.lapsed = self.lease.take();
        // Parts kept for a non-streamed answer are dropped with the lease.
        self.answer = Submission::default();
    }
}

/// bridge-agent's queue for a request is full: it is that far behind.
#[derive(Debug)]
pub struct QueueFull;

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: String,
    pub until: Instant,
    /// The MCP session it was handed to, when the caller has one.
    pub holder: Option<Arc<str>>,
}

/// Why a request is no longer answerable, remembered for late replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Answered,
    Failed,
    /// The editor's client went away or timed out (`model_cancel`).
    Cancelled,
    /// The bridge-agent connection that sent it dropped.
    Withdrawn,
    /// Its lease lapsed, or its agent left, after part of the answer had gone out.
    Abandoned,
    ShuttingDown,
}

impl Ended {
    pub fn label(self) -> &'static str {
        match self {
            Ended::Answered => "answered",
            Ended::Failed => "failed",
            Ended::Cancelled => "cancelled",
            Ended::Withdrawn => "withdrawn",
            Ended::Abandoned => "abandoned",
            Ended::ShuttingDown => "shutting_down",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Ended::Answered => "it is already answered",
            Ended::Failed => "it was already failed (with fail_request, or by mcp-bridge)",
            Ended::Cancelled => "it was cancelled: the editor's client went away or gave up waiting, so nobody will read a reply",
            Ended::Withdrawn => "it was withdrawn: the bridge-agent that sent it disconnected, and the editor was told the request failed",
            Ended::Abandoned => "its agent stopped answering (lease lapsed or MCP session gone) after part of the answer had been sent, so it was ended with an error",
            Ended::ShuttingDown => "mcp-bridge is shutting down",
        }
    }
}

/// Why a reply was refused: the text is the tool error the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// A request as handed to an agent.
#[derive(Debug)]
pub struct Handout {
    pub id: String,
    pub lease: String,
    pub session_id: Option<String>,
    /// The payload as it came (its messages and parameters raw JSON text), sharing its bytes
    /// with the queue's entry: handing out copies no prompt.
    pub payload: Payload,
    pub attempt: u32,
    pub queued_for: Duration,
    pub shape: Shape,
}

/// A lease that lapsed: either the request went back to the queue, or (answer started) ended.
pub struct Expired {
    pub id: String,
    pub requeued: bool,
    pub entry: Option<Entry>,
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
    ended: HashMap<String, Ended>,
    ended_order: VecDeque<String>,
    waiters: waiters::Waiters,
}

impl Queue {
    /// Adds a request at the back (handing it to the longest-waiting poll it fits); refused
    /// (giving back its id) when a request with this id is live. `result_after_chunks`: its
    /// sender listed that capability.
    pub fn push(
        &mut self,
        invoke: ModelInvoke,
        owner: Owner,
        to_owner: Outbound<BridgeFrame>,
        now: Instant,
        result_after_chunks: bool,
    ) -> Result<(), String> {
        self.push_waited(
            invoke,
            owner,
            to_owner,
            now,
            Duration::ZERO,
            result_after_chunks,
        )
    }

    /// [`Queue::push`] of a request that already `waited` elsewhere (in the Redis queue): its
    /// time in the queue counts from then.
    pub fn push_waited(
        &mut self,
        invoke: ModelInvoke,
        owner: Owner,
        to_owner: Outbound<BridgeFrame>,
        now: Instant,
        waited: Duration,
        result_after_chunks: bool,
    ) -> Result<(), String> {
        if self.entries.contains_key(&invoke.id) {
            return Err(invoke.id);
        }
        // Only the parameters are decoded here (what the answer may hold), never the messages.
        let parameters: Map<String, Value> =
            invoke.payload.parameters().parse().unwrap_or_default();
        let mut shape = Shape::of(&parameters);
        shape.result_after_chunks = result_after_chunks;
        let id = invoke.id.clone();
        // A reused id starts afresh.
        self.ended.remove(&id);
        self.entries.insert(
            id.clone(),
            Entry {
                invoke,
                owner,
                to_owner,
                shape,
                sampleable: std::sync::OnceLock::new(),
                enqueued: now.checked_sub(waited).unwrap_or(now),
                attempts: 0,
                first_handed: None,
                lease: None,
                lapsed: None,
                answer: Submission::default(),
            },
        );
        self.order.push_back(id);
        self.dispatch(now);
        Ok(())
    }

    /// Leases the queued request at `at` in the queue's order.
    fn lease_at(
        &mut self,
        at: usize,
        now: Instant,
        lease_for: Duration,
        holder: Option<Arc<str>>,
    ) -> Option<Handout> {
        let id = self.order.remove(at)?;
        let entry = self.entries.get_mut(&id)?;
        let lease = format!("lease-{:016x}", rand::rng().random::<u64>());
        entry.lease = Some(Lease {
            id: lease.clone(),
            until: now + lease_for,
            holder,
        });
        entry.lapsed = None;
        entry.attempts += 1;
        entry.first_handed.get_or_insert(now);
        Some(Handout {
            id,
            lease,
            session_id: entry.invoke.session_id.clone(),
            payload: entry.invoke.payload.clone(),
            attempt: entry.attempts,
            queued_for: now.saturating_duration_since(entry.enqueued),
            shape: entry.shape.clone(),
        })
    }

    /// A hand-out its waiter could not take: the request goes back to the front as it was.
    fn unlease(&mut self, handout: &Handout) {
        if let Some(entry) = self.entries.get_mut(&handout.id) {
            entry.lease = None;
            entry.attempts = entry.attempts.saturating_sub(1);
            self.order.push_front(handout.id.clone());
        }
    }

    /// The live request `id`, queued or leased.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The live request `id` if `lease` is its current lease. A lease that lapsed while the
    /// request waits in the queue is granted again to its holder (nobody else took it, so its
    /// reply is still the only one), for `lease_for` from `now`.
    pub fn leased(
        &mut self,
        id: &str,
        lease: &str,
        now: Instant,
        lease_for: Duration,
    ) -> Result<&mut Entry, Refusal> {
        let Some(entry) = self.entries.get_mut(id) else {
            return Err(Refusal(match self.ended.get(id) {
                Some(ended) => format!("request {id} cannot take a reply: {}. Drop this answer and call wait_for_request for the next one.", ended.explain()),
                None => format!("unknown request_id {id:?}: use the request_id and lease_id that wait_for_request returned"),
            }));
        };
        match (&entry.lease, &entry.lapsed) {
            (Some(l), _) if l.id == lease => {}
            (Some(_), _) => {
                return Err(Refusal(format!(
                "lease {lease:?} on request {id} lapsed and the request was handed out again; drop this answer and call wait_for_request"
            )))
            }
            (None, Some(l)) if l.id == lease => {
                let mut again = l.clone();
                again.until = now + lease_for;
                entry.lease = Some(again);
                entry.lapsed = None;
                self.order.retain(|q| q != id);
            }
            (None, _) => {
                return Err(Refusal(format!(
                "lease {lease:?} on request {id} lapsed; the request is back in the queue. Call wait_for_request to take it again"
            )))
            }
        }
        self.entries
            .get_mut(id)
            .ok_or_else(|| Refusal(format!("request {id} is gone")))
    }

    /// Puts a leased request whose answer has not started back at the front of the queue (its
    /// holder gave up without answering, or never got it). False when `lease` is not its lease
    /// any more.
    pub fn release(&mut self, id: &str, lease: &str, now: Instant) -> bool {
        match self.entries.get_mut(id) {
            Some(e) if e.lease.as_ref().is_some_and(|l| l.id == lease) && !e.answer.started() => {
                e.unleased();
                self.order.push_front(id.to_owned());
                self.dispatch(now);
                true
            }
            _ => false,
        }
    }

    /// The MCP session `holder` left: what it holds goes back to the front of the queue, or,
    /// when part of its answer went out, ends (returned, to be failed by the caller). Returns the
    /// ids requeued and the entries ended.
    pub fn release_holder(&mut self, holder: &str, now: Instant) -> (Vec<String>, Vec<Entry>) {
        let held: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.lease
                    .as_ref()
                    .is_some_and(|l| l.holder.as_deref() == Some(holder))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut requeued = Vec::new();
        let mut ended = Vec::new();
        // Oldest first, so that after the pushes to the front the oldest is first.
        let mut held: Vec<(Instant, String)> = held
            .into_iter()
            .filter_map(|id| self.entries.get(&id).map(|e| (e.enqueued, id)))
            .collect();
        held.sort();
        for (_, id) in held.into_iter().rev() {
            let started = self.entries.get(&id).is_some_and(|e| e.answer.started());
            if started {
                ended.extend(self.end(&id, Ended::Abandoned));
            } else if let Some(entry) = self.entries.get_mut(&id) {
                entry.unleased();
                // Its holder is gone: its late reply cannot come.
                entry.lapsed = None;
                self.order.push_front(id.clone());
                requeued.push(id);
            }
        }
        requeued.reverse();
        self.dispatch(now);
        (requeued, ended)
    }

    /// Extends a lease after the agent showed signs of life.
    pub fn renew(&mut self, id: &str, now: Instant, lease_for: Duration) {
        if let Some(lease) = self.entries.get_mut(id).and_then(|e| e.lease.as_mut()) {
            lease.until = now + lease_for;
        }
    }

    /// Removes request `id` for good, remembering why. The entry comes out once: whoever gets
    /// it sends the result, if there is one to send ([`Entry::finish`]).
    pub fn end(&mut self, id: &str, why: Ended) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.order.retain(|q| q != id);
        self.ended.insert(id.to_owned(), why);
        self.ended_order.push_back(id.to_owned());
        while self.ended_order.len() > TOMBSTONES {
            if let Some(old) = self.ended_order.pop_front() {
                // Only forget it if it was not re-added and ended again since.
                if !self.ended_order.contains(&old) {
                    self.ended.remove(&old);
                }
            }
        }
        Some(entry)
    }

    /// `model_cancel` from `owner`: withdraws its request `id`.
    pub fn cancel(&mut self, owner: Owner, id: &str) -> Option<Entry> {
        match self.entries.get(id) {
            Some(e) if e.owner == owner => self.end(id, Ended::Cancelled),
            _ => None,
        }
    }

    /// Request `id` now belongs to connection `owner` (it was resumed there).
    pub fn reown(&mut self, id: &str, owner: Owner) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.owner = owner;
        }
    }

    /// Ends every request of `owner` (its connection dropped).
    pub fn drop_owner(&mut self, owner: Owner) -> Vec<Entry> {
        let ids: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner == owner)
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter()
            .filter_map(|id| self.end(id, Ended::Withdrawn))
            .collect()
    }

    /// Ends every request that is not leased (shutdown: nobody will take them now), and lets
    /// every waiting poll go.
    pub fn drain_queued(&mut self) -> Vec<Entry> {
        self.waiters.clear();
        let ids: Vec<String> = self.order.drain(..).collect();
        ids.iter()
            .filter_map(|id| self.end(id, Ended::ShuttingDown))
            .collect()
    }

    /// Ends everything left.
    pub fn drain_all(&mut self) -> Vec<Entry> {
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        ids.iter()
            .filter_map(|id| self.end(id, Ended::ShuttingDown))
            .collect()
    }

    /// Lapsed leases: a request whose answer has not started goes back to the front of the
    /// queue (it was the oldest); one whose answer started is ended.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let lapsed: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.lease.as_ref().is_some_and(|l| l.until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in lapsed {
            let started = self.entries.get(&id).is_some_and(|e| e.answer.started());
            if started {
                let entry = self.end(&id, Ended::Abandoned);
                out.push(Expired {
                    id,
                    requeued: false,
                    entry,
                });
            } else if let Some(entry) = self.entries.get_mut(&id) {
                entry.unleased();
                self.order.push_front(id.clone());
                out.push(Expired {
                    id,
                    requeued: true,
                    entry: None,
                });
            }
        }
        self.dispatch(now);
        out
    }

    /// When the next lease lapses.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| e.lease.as_ref().map(|l| l.until))
            .min()
    }

    pub fn queued(&self) -> usize {
        self.order.len()
    }

    pub fn leased_count(&self) -> usize {
        self.entries.len() - self.order.len()
    }

    /// (queued, leased) requests of `owner`.
    pub fn count_for(&self, owner: Owner) -> (usize, usize) {
        self.entries
            .values()
            .filter(|e| e.owner == owner)
            .fold((0, 0), |(q, l), e| {
                if e.lease.is_some() {
                    (q, l + 1)
                } else {
                    (q + 1, l)
                }
            })
    }
}

#[cfg(test)]
pub(crate) mod tests;
