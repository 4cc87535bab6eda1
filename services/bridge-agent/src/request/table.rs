//! The table of requests in flight, by id, which the IPC reader, the WebSocket reader and the
//! timer change under one lock. This file holds what the gateway side does (start, cancel,
//! resume, a connection gone) and the one place a request ends; `upstream.rs` what the bridge
//! side does, `timers.rs` the deadlines.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use provider_shared::bridge::{codes, BridgeFrame, RESUME_PROTOCOL_VERSION};
use provider_shared::ipc::IpcFrame;
use provider_shared::routes::Rebind;
use provider_shared::ws_peer::{Outbound, Refused};
use tokio::sync::{watch, Notify};

use super::bridge::{self, Link};
use super::gateway::{self, GatewayOut, Holder, Outgoing, Resync};
use super::state::{Leg, Request};
use super::{Ending, Start};
use crate::ipc_server::ConnId;
use crate::metrics::{self, OutcomeLabel};
use crate::Config;

/// The settings the table's decisions use, read once.
pub(super) struct Limits {
    pub stream_buffer_bytes: usize,
    pub resume_grace: Duration,
    pub request_timeout: Duration,
    pub response_timeout: Duration,
    pub connection_timeout: Duration,
    pub bridge_url: String,
}

/// Why the table ends every request at once.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    /// An orderly stop: they end without a result or a cancel, for the next bridge-agent.
    HandOver,
    /// They end now with this error.
    Hard(&'static str, String),
}

pub struct Requests {
    inner: Mutex<Inner>,
    pub(super) limits: Limits,
    /// Wakes the timer task when a deadline earlier than every other is set.
    pub(super) wake: Notify,
    /// How many requests are in flight, for a stop to wait on.
    count: watch::Sender<usize>,
}

pub(super) struct Inner {
    pub entries: HashMap<String, Request>,
    /// Every request's next deadline, earliest first: the one timer structure (`timers.rs`).
    pub deadlines: BTreeMap<(Instant, u64), String>,
    /// The WebSocket new requests go out on.
    pub link: Option<Link>,
    pub stop: Option<Stop>,
    next_serial: u64,
}

/// What became of a request a gateway sent.
#[derive(Debug)]
pub enum Started {
    /// In the table; its first frame is queued, or it waits for a WebSocket.
    Taken,
    /// In the table, but the WebSocket's queue was full: the caller queues this frame, waiting
    /// for room.
    Queue(Outbound<BridgeFrame>, BridgeFrame),
    /// A request with this id is in flight.
    Duplicate,
    /// bridge-agent stops in order: it is left for the next one, unanswered.
    LeftForNext,
    /// Requests are being ended with this error.
    Stopped(&'static str, String),
}

fn lock(mutex: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every change under this lock is complete before anything can panic, so a poisoned lock
    // still holds a consistent state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Requests {
    pub fn new(config: &Config) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                deadlines: BTreeMap::new(),
                link: None,
                stop: None,
                next_serial: 0,
            }),
            limits: Limits {
                stream_buffer_bytes: config.stream_buffer_bytes(),
                resume_grace: config.resume_grace(),
                request_timeout: config.request_timeout(),
                response_timeout: config.response_timeout(),
                connection_timeout: config.connection_timeout(),
                bridge_url: config.mcp_bridge_url.to_string(),
            },
            wake: Notify::new(),
            count: watch::Sender::new(0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Resolves once no request is in flight.
    pub async fn drained(&self) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Takes request `id` from gateway connection `conn`: sends it on the WebSocket if one is
    /// up, else it waits for one.
    pub fn start(&self, conn: ConnId, out: GatewayOut, id: String, start: Start) -> Started {
        let mut inner = self.lock();
        match &inner.stop {
            Some(Stop::HandOver) => return Started::LeftForNext,
            Some(Stop::Hard(code, message)) => return Started::Stopped(code, message.clone()),
            None => {}
        }
        if inner.entries.contains_key(&id) {
            return Started::Duplicate;
        }
        let now = Instant::now();
        let (begun, last_forwarded) = match &start {
            Start::Invoke(_) => (now, None),
            Start::Resume {
                after_chunk_index,
                elapsed,
                ..
            } => (now.checked_sub(*elapsed).unwrap_or(now), *after_chunk_index),
        };
        inner.next_serial += 1;
        let request = Request {
            serial: inner.next_serial,
            received: now,
            gateway: Some(Holder { conn, out }),
            orphaned_until: None,
            leg: Leg::Waiting {
                until: now + self.limits.connection_timeout,
                opening: Some(Box::new(start)),
            },
            first_deadline: begun + self.limits.request_timeout,
            last_deadline: begun + self.limits.response_timeout,
            sent: now,
            first_seen: last_forwarded.is_some(),
            last_forwarded,
            resync: None,
            asked_resume: false,
            fallback: None,
            queued: Arc::new(AtomicUsize::new(0)),
            timer: None,
        };
        inner.entries.insert(id.clone(), request);
        self.counted(&inner);
        let Some(link) = inner.link.clone() else {
            self.schedule(&mut inner, &id);
            return Started::Taken;
        };
        match self.open_on(&mut inner, &id, &link) {
            Some(frame) => match link.tx.try_push(frame) {
                Ok(()) => Started::Taken,
                Err(Refused::Full(frame)) => Started::Queue(link.tx.clone(), frame),
                // Gone: when its end is handled, this request is carried over with the others.
                Err(Refused::Closed(_)) => Started::Taken,
            },
            None => Started::Taken,
        }
    }

    /// Puts waiting request `id` on `link`: its first frame, unless that ends it (too large,
    /// or a resume a protocol-1 bridge cannot take).
    pub(super) fn open_on(&self, inner: &mut Inner, id: &str, link: &Link) -> Option<BridgeFrame> {
        let request = inner.entries.get_mut(id)?;
        let Leg::Waiting { opening, .. } = &mut request.leg else {
            return None;
        };
        let opening = opening.take()?;
        let resumes = link.protocol >= RESUME_PROTOCOL_VERSION;
        let frame = match *opening {
            Start::Invoke(invoke) => {
                let size = bridge::invoke_size(&invoke);
                if size > link.max_frame_bytes {
                    self.finish(inner, id, bridge::too_large(id, size, link.max_frame_bytes));
                    return None;
                }
                request.fallback = resumes.then(|| invoke.clone());
                BridgeFrame::ModelInvoke(invoke)
            }
            Start::Resume {
                after_chunk_index,
                invoke,
                ..
            } => {
                if !resumes {
                    self.finish(inner, id, bridge::not_resumable(id, link.protocol));
                    return None;
                }
                request.fallback = invoke;
                request.asked_resume = true;
                BridgeFrame::ModelResume {
                    id: id.to_owned(),
                    after_chunk_index,
                }
            }
        };
        request.leg = Leg::On(link.clone());
        request.sent = Instant::now();
        self.schedule(inner, id);
        Some(frame)
    }

    /// The gateway on connection `conn` cancelled request `id`.
    pub fn cancel(&self, id: &str, conn: ConnId) {
        let mut inner = self.lock();
        let Some(request) = inner
            .entries
            .get(id)
            .filter(|r| r.gateway.as_ref().is_some_and(|g| g.conn == conn))
        else {
            tracing::debug!(%id, "cancel for a request not in flight (or cancelled already) ignored");
            return;
        };
        request.cancel_at_peer(id);
        let ending = Ending::error(
            id,
            OutcomeLabel::Cancelled,
            codes::CANCELLED,
            "cancelled by the gateway",
        );
        self.finish(&mut inner, id, ending);
    }

    /// Gateway connection `conn` closed: its requests wait for the gateway's `resume`, or end.
    /// Returns how many it held.
    pub fn gateway_gone(&self, conn: ConnId) -> usize {
        let mut inner = self.lock();
        let ids: Vec<String> = inner
            .entries
            .iter()
            .filter(|(_, r)| r.gateway.as_ref().is_some_and(|g| g.conn == conn))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.orphan(&mut inner, id);
        }
        ids.len()
    }

    /// Request `id`'s gateway is gone: with a bridge that resumes it waits up to `RESUME_GRACE`
    /// (never past its deadline) for a gateway to take it up again; what the bridge sends
    /// meanwhile is dropped, and replayed after the resume. Otherwise it is cancelled.
    pub(super) fn orphan(&self, inner: &mut Inner, id: &str) {
        let Some(request) = inner.entries.get_mut(id) else {
            return;
        };
        request.gateway = None;
        let grace = self.limits.resume_grace;
        let keep = match &request.leg {
            Leg::On(link) => link.protocol >= RESUME_PROTOCOL_VERSION && !grace.is_zero(),
            // Nothing is being answered: nobody is left to want it.
            Leg::Waiting { .. } | Leg::CarryOver { .. } => false,
        };
        if !keep {
            request.cancel_at_peer(id);
            self.finish(inner, id, Ending::silent(OutcomeLabel::Cancelled));
            return;
        }
        tracing::info!(%id, ?grace, "the gateway's connection closed; keeping the request for its resume");
        request.orphaned_until = Some((Instant::now() + grace).min(request.last_deadline));
        self.schedule(inner, id);
    }

    /// A `resume` of request `id` on gateway connection `conn` while it is still here (its
    /// gateway's connection dropped, bridge-agent stayed up): its frames go to `out` from now
    /// on, and the bridge replays what came after the gateway's last chunk.
    pub fn reattach(
        &self,
        id: &str,
        conn: ConnId,
        out: GatewayOut,
        after_chunk_index: Option<u64>,
    ) -> Rebind {
        let mut inner = self.lock();
        let Some(request) = inner.entries.get_mut(id) else {
            return Rebind::Unknown;
        };
        // A gateway whose connection dropped comes back on a new one, possibly before the old
        // one is seen to end here; the same connection resuming its own request is a duplicate.
        if request.gateway.as_ref().is_some_and(|g| g.conn == conn) {
            return Rebind::NotOwned;
        }
        request.gateway = Some(Holder { conn, out });
        request.orphaned_until = None;
        let after = after_chunk_index;
        match &request.leg {
            // Nothing reached the bridge yet: the new connection just takes the answer.
            Leg::Waiting { .. } => {}
            // The resume on the next WebSocket starts after the gateway's last chunk.
            Leg::CarryOver { .. } => {
                request.last_forwarded = after;
                ::metrics::counter!(metrics::REATTACHED).increment(1);
            }
            Leg::On(link) => {
                ::metrics::counter!(metrics::REATTACHED).increment(1);
                tracing::info!(%id, after_chunk_index = ?after, relayed = ?request.last_forwarded,
                    "request taken up again by a new gateway connection");
                let beyond = gateway::beyond(request.last_forwarded, after);
                request.last_forwarded = after;
                request.asked_resume = true;
                if link.protocol < RESUME_PROTOCOL_VERSION {
                    // Nothing can be replayed: only a gateway that has every chunk relayed can
                    // go on.
                    if beyond {
                        let ending = bridge::not_resumable(id, link.protocol);
                        self.finish(&mut inner, id, ending);
                        return Rebind::Rebound;
                    }
                } else {
                    // Until the replay is sorted out, a result that came live does not end it.
                    request.resync = Some(Resync::new(after, beyond));
                    link.resume(id, after);
                }
            }
        }
        self.schedule(&mut inner, id);
        Rebind::Rebound
    }

    /// Ends every request: handed over (`None`) or with error `code`.
    pub fn stop_all(&self, error: Option<(&'static str, String)>) {
        let mut inner = self.lock();
        let stop = match error {
            None => Stop::HandOver,
            Some((code, message)) => Stop::Hard(code, message),
        };
        inner.stop = Some(stop.clone());
        let ids: Vec<String> = inner.entries.keys().cloned().collect();
        for id in &ids {
            let Some(request) = inner.entries.get(id) else {
                continue;
            };
            let ending = match &stop {
                // The gateway resumes it at the next bridge-agent, and mcp-bridge keeps it for
                // that: nothing is cancelled.
                Stop::HandOver => Ending::silent(OutcomeLabel::HandedOver),
                Stop::Hard(code, message) => {
                    request.cancel_at_peer(id);
                    if request.gateway.is_some() {
                        Ending::error(id, OutcomeLabel::Error, code, message.clone())
                    } else {
                        Ending::silent(OutcomeLabel::Cancelled)
                    }
                }
            };
            self.finish(&mut inner, id, ending);
        }
    }

    /// Queues a chunk or result for request `id`'s gateway, counting a chunk's `bytes`; gives
    /// the frame back when its connection is gone.
    pub(super) fn to_gateway(request: &Request, frame: IpcFrame, bytes: usize) -> Option<IpcFrame> {
        let Some(holder) = &request.gateway else {
            return Some(frame);
        };
        let item = if bytes == 0 {
            Outgoing::plain(frame)
        } else {
            Outgoing::charged(frame, &request.queued, bytes)
        };
        holder.out.send(item).err().map(|gone| gone.0.into_frame())
    }

    /// The one place a request ends: it leaves the table, is counted, and its gateway (if still
    /// there) gets its result.
    pub(super) fn finish(&self, inner: &mut Inner, id: &str, ending: Ending) {
        let Some(request) = inner.entries.remove(id) else {
            return;
        };
        if let Some(at) = request.timer {
            inner.deadlines.remove(&(at, request.serial));
        }
        self.counted(inner);
        metrics::count_request(ending.outcome);
        ::metrics::histogram!(metrics::REQUEST_DURATION)
            .record(request.received.elapsed().as_secs_f64());
        tracing::debug!(%id, outcome = ending.outcome.as_str(), "request ended");
        if let Some(result) = ending.result {
            // A closed connection has nobody left to tell.
            let _ = Self::to_gateway(&request, IpcFrame::Result(result), 0);
        }
    }

    fn counted(&self, inner: &Inner) {
        let n = inner.entries.len();
        metrics::gauge_in_flight(n);
        self.count.send_replace(n);
    }
}
