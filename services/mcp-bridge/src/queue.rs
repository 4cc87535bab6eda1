//! The request queue with leases. Plain data, no I/O: the broker holds it under a lock and does
//! the sending. Every request is in exactly one place — queued, or leased to one agent — until
//! it ends, and an ended request leaves a tombstone so that a late reply gets a clear answer.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::bridge::{BridgeFrame, ModelInvoke};
use provider_shared::ws_peer::Outbound;
use rand::Rng;
use serde_json::{Map, Value};

use crate::answer::{Shape, Submission};

/// Which bridge-agent connection sent a request; its answer goes back there.
pub type Owner = u64;

/// How many ended requests are remembered for late replies.
const TOMBSTONES: usize = 4096;

#[derive(Debug)]
pub struct Entry {
    pub invoke: ModelInvoke,
    pub owner: Owner,
    pub to_owner: Outbound<BridgeFrame>,
    /// The payload as JSON (`kind` and its fields), whatever its kind; shared with every
    /// hand-out of it, so handing out does not copy the prompt.
    pub payload: Arc<Value>,
    pub shape: Shape,
    pub enqueued: Instant,
    /// How many times it was handed out.
    pub attempts: u32,
    /// When it was first handed out (for "time waiting for the agent").
    pub first_handed: Option<Instant>,
    pub lease: Option<Lease>,
    pub answer: Submission,
}

#[derive(Debug)]
pub struct Lease {
    pub id: String,
    pub until: Instant,
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
    /// Its lease lapsed after part of the answer had gone out.
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
            Ended::Failed => "it was already failed with fail_request",
            Ended::Cancelled => "it was cancelled: the editor's client went away or gave up waiting, so nobody will read a reply",
            Ended::Withdrawn => "it was withdrawn: the bridge-agent that sent it disconnected, and the editor was told the request failed",
            Ended::Abandoned => "its lease lapsed after part of the answer had been sent, so it was ended with an error",
            Ended::ShuttingDown => "mcp-bridge is shutting down",
        }
    }
}

/// Why a reply was refused: the text is the tool error the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// A request as handed to an agent.
pub struct Handout {
    pub id: String,
    pub lease: String,
    pub session_id: Option<String>,
    /// `kind` and the payload's fields (`messages`, `parameters`, … or `prompt`, `suffix`, …),
    /// shared with the queue's entry.
    pub payload: Arc<Value>,
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
}

impl Queue {
    /// Adds a request at the back; refused (giving back its id) when a request with this id is
    /// live. `result_after_chunks`: its sender listed that capability.
    pub fn push(
        &mut self,
        invoke: ModelInvoke,
        owner: Owner,
        to_owner: Outbound<BridgeFrame>,
        now: Instant,
        result_after_chunks: bool,
    ) -> Result<(), String> {
        if self.entries.contains_key(&invoke.id) {
            return Err(invoke.id);
        }
        let payload = Arc::new(serde_json::to_value(&invoke.payload).unwrap_or_default());
        let mut shape = Shape::of(payload["parameters"].as_object().unwrap_or(&Map::new()));
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
                payload,
                shape,
                enqueued: now,
                attempts: 0,
                first_handed: None,
                lease: None,
                answer: Submission::default(),
            },
        );
        self.order.push_back(id);
        Ok(())
    }

    /// Hands out the oldest queued request under a new lease.
    pub fn take(&mut self, now: Instant, lease_for: Duration) -> Option<Handout> {
        self.take_first(now, lease_for, |_| true)
    }

    /// Hands out the oldest queued request that `fits` under a new lease.
    pub fn take_first(
        &mut self,
        now: Instant,
        lease_for: Duration,
        fits: impl Fn(&Entry) -> bool,
    ) -> Option<Handout> {
        let at = self
            .order
            .iter()
            .position(|id| self.entries.get(id).is_some_and(&fits))?;
        let id = self.order.remove(at)?;
        let entry = self.entries.get_mut(&id)?;
        let lease = format!("lease-{:016x}", rand::rng().random::<u64>());
        entry.lease = Some(Lease {
            id: lease.clone(),
            until: now + lease_for,
        });
        entry.attempts += 1;
        entry.first_handed.get_or_insert(now);
        Some(Handout {
            id,
            lease,
            session_id: entry.invoke.session_id.clone(),
            payload: Arc::clone(&entry.payload),
            attempt: entry.attempts,
            queued_for: now.saturating_duration_since(entry.enqueued),
            shape: entry.shape.clone(),
        })
    }

    /// The live request `id`, queued or leased.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The live request `id` if `lease` is its current lease.
    pub fn leased(&mut self, id: &str, lease: &str) -> Result<&mut Entry, Refusal> {
        let Some(entry) = self.entries.get_mut(id) else {
            return Err(Refusal(match self.ended.get(id) {
                Some(ended) => format!("request {id} cannot take a reply: {}. Drop this answer and call wait_for_request for the next one.", ended.explain()),
                None => format!("unknown request_id {id:?}: use the request_id and lease_id that wait_for_request returned"),
            }));
        };
        match &entry.lease {
            Some(l) if l.id == lease => Ok(entry),
            Some(_) => Err(Refusal(format!(
                "lease {lease:?} on request {id} lapsed and the request was handed out again; drop this answer and call wait_for_request"
            ))),
            None => Err(Refusal(format!(
                "lease {lease:?} on request {id} lapsed; the request is back in the queue. Call wait_for_request to take it again"
            ))),
        }
    }

    /// Puts a leased request whose answer has not started back at the front of the queue (its
    /// holder gave up without answering). False when `lease` is not its lease any more.
    pub fn release(&mut self, id: &str, lease: &str) -> bool {
        match self.entries.get_mut(id) {
            Some(e) if e.lease.as_ref().is_some_and(|l| l.id == lease) && !e.answer.started() => {
                e.lease = None;
                e.answer = Submission::default();
                self.order.push_front(id.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Extends a lease after the agent showed signs of life.
    pub fn renew(&mut self, id: &str, now: Instant, lease_for: Duration) {
        if let Some(lease) = self.entries.get_mut(id).and_then(|e| e.lease.as_mut()) {
            lease.until = now + lease_for;
        }
    }

    /// Removes request `id` for good, remembering why.
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

    /// Ends every request that is not leased (shutdown: nobody will take them now).
    pub fn drain_queued(&mut self) -> Vec<Entry> {
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
                entry.lease = None;
                // Parts kept for a non-streamed answer are dropped with the lease.
                entry.answer = Submission::default();
                self.order.push_front(id.clone());
                out.push(Expired {
                    id,
                    requeued: true,
                    entry: None,
                });
            }
        }
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
pub(crate) mod tests {
    use super::*;
    use crate::answer::Part;
    use provider_shared::bridge::{ModelMeta, Payload};
    use serde_json::json;

    /// A streamed chat request whose one message is its id (the broker's tests use it too).
    pub(crate) fn invoke(id: &str) -> ModelInvoke {
        ModelInvoke {
            id: id.into(),
            session_id: None,
            model_meta: ModelMeta {
                provider: "local".into(),
                label: "m".into(),
                requested_scopes: vec![],
            },
            payload: Payload::Chat {
                messages: vec![json!({"role": "user", "content": id})],
                parameters: Map::from_iter([("stream".to_owned(), json!(true))]),
            },
        }
    }

    const LEASE: Duration = Duration::from_secs(5);

    fn queue_of(ids: &[&str], owner: Owner) -> Queue {
        let (tx, _rx) = provider_shared::ws_peer::queue(8);
        let mut q = Queue::default();
        for id in ids {
            q.push(invoke(id), owner, tx.clone(), Instant::now(), false)
                .unwrap_or_else(|_| panic!("push"));
        }
        q
    }

    #[test]
    fn fifo_with_leases_and_duplicate_ids_refused() {
        let mut q = queue_of(&["a", "b"], 1);
        let (tx, _rx) = provider_shared::ws_peer::queue(8);
        assert!(q.push(invoke("a"), 2, tx, Instant::now(), false).is_err());
        let now = Instant::now();
        let a = q.take(now, LEASE).unwrap();
        assert_eq!((a.id.as_str(), a.attempt), ("a", 1));
        assert_eq!((q.queued(), q.leased_count()), (1, 1));
        assert!(q.leased("a", &a.lease).is_ok());
        assert!(q
            .leased("a", "lease-other")
            .unwrap_err()
            .0
            .contains("handed out again"));
        assert_eq!(q.take(now, LEASE).unwrap().id, "b");
        assert!(q.take(now, LEASE).is_none());
    }

    #[test]
    fn take_first_skips_what_does_not_fit_and_release_puts_it_back_in_front() {
        let mut q = queue_of(&["a", "b", "c"], 1);
        let now = Instant::now();
        let b = q.take_first(now, LEASE, |e| e.invoke.id == "b").unwrap();
        assert_eq!((q.queued(), q.leased_count()), (2, 1));
        assert!(!q.release("b", "lease-other"), "only the holder releases");
        assert!(q.release("b", &b.lease));
        assert!(q.leased("b", &b.lease).is_err());
        let again = q.take(now, LEASE).unwrap();
        assert_eq!((again.id.as_str(), again.attempt), ("b", 2));
        // Both hand-outs share the entry's payload: nothing was copied.
        let entry = q.get("b").unwrap();
        assert!(Arc::ptr_eq(&b.payload, &entry.payload));
        assert!(Arc::ptr_eq(&again.payload, &entry.payload));
        assert_eq!(again.payload["messages"][0]["content"], "b");
        assert!(q.take_first(now, LEASE, |_| false).is_none());
    }

    #[test]
    fn a_lapsed_lease_goes_back_to_the_front_and_the_old_lease_is_refused() {
        let mut q = queue_of(&["a", "b"], 1);
        let t0 = Instant::now();
        let first = q.take(t0, LEASE).unwrap();
        assert!(q.expire(t0 + LEASE / 2).is_empty());
        let expired = q.expire(t0 + LEASE);
        assert!(expired.len() == 1 && expired[0].requeued);
        assert!(q
            .leased("a", &first.lease)
            .unwrap_err()
            .0
            .contains("back in the queue"));
        let again = q.take(t0 + LEASE, LEASE).unwrap();
        assert_eq!((again.id.as_str(), again.attempt), ("a", 2));
        assert!(q.leased("a", &first.lease).is_err());
        assert!(q.leased("a", &again.lease).is_ok());
        q.end("a", Ended::Answered);
        assert!(q
            .leased("a", &again.lease)
            .unwrap_err()
            .0
            .contains("already answered"));
    }

    #[test]
    fn a_lapsed_lease_after_output_ends_the_request() {
        let mut q = queue_of(&["a"], 1);
        let t0 = Instant::now();
        let h = q.take(t0, LEASE).unwrap();
        let entry = q.leased("a", &h.lease).unwrap();
        let shape = entry.shape.clone();
        let part: Part = serde_json::from_value(json!({"content": "x", "done": false})).unwrap();
        entry.answer.apply("a", &shape, part).unwrap();
        q.renew("a", t0 + LEASE, LEASE);
        assert!(q.expire(t0 + LEASE).is_empty());
        let expired = q.expire(t0 + LEASE * 2);
        assert!(!expired[0].requeued && expired[0].entry.is_some());
        assert!(q
            .leased("a", &h.lease)
            .unwrap_err()
            .0
            .contains("lapsed after part"));
        assert_eq!(q.queued() + q.leased_count(), 0);
    }

    #[test]
    fn cancel_and_owner_drop_withdraw_with_reasons() {
        let mut q = queue_of(&["a", "b"], 1);
        let (tx, _rx) = provider_shared::ws_peer::queue(8);
        q.push(invoke("c"), 2, tx, Instant::now(), false)
            .unwrap_or_else(|_| panic!());
        let h = q.take(Instant::now(), LEASE).unwrap();
        assert!(q.cancel(2, "a").is_none(), "only the owner cancels");
        assert!(q.cancel(1, "a").is_some());
        assert!(q.leased("a", &h.lease).unwrap_err().0.contains("cancelled"));
        assert_eq!(q.drop_owner(1).len(), 1);
        assert!(q.leased("b", "x").unwrap_err().0.contains("withdrawn"));
        assert_eq!(q.count_for(2), (1, 0));
        assert_eq!(q.take(Instant::now(), LEASE).unwrap().id, "c");
        assert!(q
            .leased("zzz", "x")
            .unwrap_err()
            .0
            .contains("unknown request_id"));
    }
}
