//! Every request's deadlines in one structure, `Inner::deadlines` (a map from each request's
//! next deadline to its id), and one task that ends the requests whose deadline passed:
//! `REQUEST_TIMEOUT` to the first chunk, `RESPONSE_TIMEOUT` for the whole answer, the wait for a
//! WebSocket (`CONNECTION_TIMEOUT`), and `RESUME_GRACE` for a resume (of the WebSocket, or of the
//! gateway's connection). A request holds one entry, for whichever of its deadlines comes next
//! where it is now; it is moved when that changes, not on every chunk.
use std::sync::Arc;
use std::time::Instant;

use provider_shared::bridge::codes;

use super::bridge;
use super::state::Leg;
use super::table::{Inner, Requests};
use super::Ending;
use crate::metrics::OutcomeLabel;
use crate::Hub;

/// Ends requests as their deadlines pass, until bridge-agent closes.
pub async fn run_timers(hub: Arc<Hub>) {
    let table = &hub.requests;
    loop {
        let next = table.fire_due(Instant::now());
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            // A deadline earlier than `next` was set.
            () = table.wake.notified() => {}
            () = hub.closing.cancelled() => return,
        }
    }
}

impl Requests {
    /// Puts request `id`'s next deadline in the timer structure, in place of the one it had.
    pub(super) fn schedule(&self, inner: &mut Inner, id: &str) {
        let Inner {
            entries, deadlines, ..
        } = inner;
        let Some(request) = entries.get_mut(id) else {
            return;
        };
        let next = request.next_deadline();
        if request.timer == Some(next) {
            return;
        }
        if let Some(old) = request.timer.take() {
            deadlines.remove(&(old, request.serial));
        }
        request.timer = Some(next);
        let earliest = deadlines.first_key_value().map(|((at, _), _)| *at);
        deadlines.insert((next, request.serial), id.to_owned());
        if earliest.is_none_or(|at| next < at) {
            self.wake.notify_one();
        }
    }

    /// Handles every deadline up to `now`; returns the next one.
    pub(super) fn fire_due(&self, now: Instant) -> Option<Instant> {
        let mut inner = self.lock();
        loop {
            let (&(at, serial), _) = inner.deadlines.first_key_value()?;
            if at > now {
                return Some(at);
            }
            let (_, id) = inner.deadlines.pop_first()?;
            if let Some(request) = inner.entries.get_mut(&id) {
                if request.serial == serial {
                    request.timer = None;
                    self.on_deadline(&mut inner, &id, now);
                }
            }
        }
    }

    fn on_deadline(&self, inner: &mut Inner, id: &str, now: Instant) {
        let Some(request) = inner.entries.get(id) else {
            return;
        };
        let limits = &self.limits;
        let ending = if request.orphaned_until.is_some_and(|until| now >= until) {
            tracing::info!(%id, "no gateway resumed the request within RESUME_GRACE; cancelling it");
            request.cancel_at_peer(id);
            Some(Ending::silent(OutcomeLabel::Cancelled))
        } else {
            match &request.leg {
                Leg::Waiting { until, .. } if now >= *until => Some(bridge::unavailable(
                    id,
                    &limits.bridge_url,
                    limits.connection_timeout,
                )),
                Leg::CarryOver { until } if now >= *until => Some(bridge::disconnected(id)),
                Leg::On(_) if request.orphaned_until.is_none() => {
                    if !request.first_seen && now >= request.first_deadline {
                        request.cancel_at_peer(id);
                        let secs = limits.request_timeout.as_secs_f64();
                        Some(Ending::error(
                            id,
                            OutcomeLabel::Timeout,
                            codes::REQUEST_TIMEOUT,
                            format!("the agent did not start answering within {secs}s"),
                        ))
                    } else if now >= request.last_deadline {
                        request.cancel_at_peer(id);
                        let secs = limits.response_timeout.as_secs_f64();
                        Some(Ending::error(
                            id,
                            OutcomeLabel::Timeout,
                            codes::RESPONSE_TIMEOUT,
                            format!("the agent did not finish answering within {secs}s"),
                        ))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        match ending {
            Some(ending) => self.finish(inner, id, ending),
            None => self.schedule(inner, id),
        }
    }
}
