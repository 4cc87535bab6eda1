//! Handing requests out: a long-poll waits in the queue's line and is handed a request directly
//! (`queue/waiters.rs`); a hand-out is [`Held`] until its answer went out, and goes back to the
//! front of the queue when it did not (the poll was dropped, its caller went away, or its
//! response stream was cut before the answer left); a session that leaves gives back what it
//! holds ([`Broker::agent_left`]).
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::bridge::ModelResult;
use tracing::Instrument;

use super::{Broker, Poller, AGENT_GONE};
use crate::caller::Caller;
use crate::metrics;
use crate::queue::{Ended, Entry, Handout, Taken, Want};

impl Broker {
    /// Waits up to `wait` for a request and leases it to `caller`; `None` when none came, the
    /// caller went away, or shutdown began.
    pub async fn next_request(&self, wait: Duration, caller: &Caller) -> Option<Handout> {
        let _poller = Poller::new(self);
        let deadline = tokio::time::Instant::now() + wait;
        let want = Want {
            fits: None,
            lease_for: self.config.lease_timeout,
            caller: caller.clone(),
        };
        self.wait(want, Some(deadline)).await
    }

    /// Waits (until `caller` goes or shutdown) for a request that `fits` and leases it for
    /// `lease_for`: how sampling clients take the requests they can answer.
    pub async fn next_matching(
        &self,
        fits: impl Fn(&Entry) -> bool + Send + 'static,
        lease_for: Duration,
        caller: &Caller,
    ) -> Option<Handout> {
        let want = Want {
            fits: Some(Box::new(fits)),
            lease_for,
            caller: caller.clone(),
        };
        self.wait(want, None).await
    }

    async fn wait(&self, want: Want, deadline: Option<tokio::time::Instant>) -> Option<Handout> {
        let caller = want.caller.clone();
        if self.stopping.is_cancelled() || caller.is_gone() {
            return None;
        }
        let taken = self.queue().take_or_wait(want, Instant::now());
        let (serial, handout) = match taken {
            Taken::Now(handout) => {
                self.handed(&handout);
                return Some(handout);
            }
            Taken::Waiting { serial, handout } => (serial, handout),
        };
        if let Some(shared) = &self.shared {
            shared.wanted();
        }
        // Dropped on every way out, this future's too: a hand-out that came meanwhile and is
        // not returned goes back to the front.
        let mut line = InLine {
            broker: self,
            serial,
            handout: Some(handout),
        };
        let until = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            biased;
            got = line.next() => got,
            _ = caller.gone() => None,
            _ = until => None,
            _ = self.stopping.cancelled() => None,
        };
        if let Some(handout) = &got {
            self.handed(handout);
        }
        got
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
    /// the longest-waiting poll, agent or sampling client.
    pub fn release(&self, id: &str, lease: &str) {
        if self.queue().release(id, lease, Instant::now()) {
            tracing::info!(%id, "request back in the queue");
            self.gauges();
        }
    }

    /// Holds `handout` for its poll until the answer carrying it has gone out
    /// ([`Held::deliver`]); dropped before that, it gives the request back.
    pub fn hold(self: &Arc<Self>, handout: &Handout) -> Held {
        Held {
            broker: self.clone(),
            id: handout.id.clone(),
            lease: handout.lease.clone(),
            armed: true,
        }
    }

    /// The MCP session `session` left (`why`): the requests it holds go back to the front of
    /// the queue, and one whose answer had begun ends with `agent_gone`.
    pub fn agent_left(&self, session: &str, why: &str) {
        let (requeued, ended) = self.queue().release_holder(session, Instant::now());
        for id in &requeued {
            metrics::handout_returned("agent_left");
            tracing::info!(%id, reason = why, "the agent holding the request left; it is back at the front of the queue");
        }
        for entry in ended {
            let id = entry.invoke.id.clone();
            tracing::warn!(%id, reason = why, "the agent left mid-answer; ending the request");
            self.record_end(&entry, Ended::Abandoned, Some(AGENT_GONE));
            entry.finish(ModelResult::error(
                &id,
                AGENT_GONE,
                format!("the agent answering this request left ({why}) after part of the answer was sent"),
            ));
        }
        if !requeued.is_empty() {
            self.gauges();
        }
    }

    /// A sign of life from `session`: the lease of `id` it holds is renewed.
    pub fn touch(&self, id: &str, session: Option<&str>) {
        let mut queue = self.queue();
        let holds = queue
            .get(id)
            .and_then(|e| e.lease.as_ref())
            .is_some_and(|l| session.is_some() && l.holder.as_deref() == session);
        if holds {
            queue.renew(id, Instant::now(), self.config.lease_timeout);
        }
    }
}

/// A poll's place in the queue's line.
struct InLine<'a> {
    broker: &'a Broker,
    serial: u64,
    handout: Option<tokio::sync::oneshot::Receiver<Handout>>,
}

impl InLine<'_> {
    async fn next(&mut self) -> Option<Handout> {
        let got = self.handout.as_mut()?.await.ok();
        self.handout = None;
        got
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let Some(mut handout) = self.handout.take() else {
            return;
        };
        let mut queue = self.broker.queue();
        if queue.stop_waiting(self.serial) {
            return;
        }
        // It was handed a request that nobody will read here.
        if let Ok(h) = handout.try_recv() {
            if queue.release(&h.id, &h.lease, Instant::now()) {
                metrics::handout_returned("poll_ended");
                tracing::info!(id = %h.id, "the poll ended as the request came; back at the front of the queue");
            }
        }
    }
}

/// A hand-out on its way to the agent.
pub struct Held {
    broker: Arc<Broker>,
    id: String,
    lease: String,
    armed: bool,
}

impl Held {
    /// The answer is being returned to `caller`: the lease stands once its response stream has
    /// handed it to the connection; a stream that closes before that gives the request back at
    /// once. Without a stream to watch, the lease alone covers a lost answer.
    pub fn deliver(mut self, caller: &Caller) {
        self.armed = false;
        let Some(stream) = caller.stream().cloned() else {
            return;
        };
        let broker = self.broker.clone();
        let (id, lease) = (
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.lease),
        );
        let stopping = broker.stopping.clone();
        let watch = broker.config.lease_timeout;
        let span = tracing::info_span!("delivery", %id);
        let tasks = broker.samplers.clone();
        tasks.spawn(
            async move {
                tokio::select! {
                    _ = stream.settled() => {}
                    _ = tokio::time::sleep(watch) => return,
                    _ = stopping.cancelled() => return,
                }
                if !stream.delivered() && broker.queue().release(&id, &lease, Instant::now()) {
                    metrics::handout_returned("not_delivered");
                    tracing::warn!("the hand-out did not reach the agent (its connection closed); back at the front of the queue");
                    broker.gauges();
                }
            }
            .instrument(span),
        );
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.armed
            && self
                .broker
                .queue()
                .release(&self.id, &self.lease, Instant::now())
        {
            metrics::handout_returned("not_delivered");
            tracing::info!(id = %self.id, "the hand-out's caller went away before it was sent; back at the front of the queue");
            self.broker.gauges();
        }
    }
}
