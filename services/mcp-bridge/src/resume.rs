//! Requests that outlive their bridge-agent connection (bridge protocol 2, docs/PROTOCOL.md §1):
//! every frame a request sends goes through its [`Route`], which forwards it to the connection
//! that owns the request now and keeps the recent chunks and the result. When that connection
//! vanishes, its requests stay for `RESUME_GRACE` (the agent keeps answering into the log), and a
//! `model_resume` from a connection of the same `agent_id` re-attaches one and replays what came
//! after the chunk bridge-agent names.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use provider_shared::bridge::BridgeFrame;
use provider_shared::ws_peer::{self, Outbound};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::OUTBOUND_QUEUE;
use crate::queue::Owner;

/// How many ended requests keep their last frames, in case the connection that was sent them
/// drops before they arrive.
const ENDED_KEPT: usize = 64;

/// Where one request's frames go.
#[derive(Clone)]
struct Route(Arc<Mutex<RouteState>>);

struct RouteState {
    /// The owning connection; `None` while it is gone.
    tx: Option<Outbound<BridgeFrame>>,
    owner: Owner,
    /// Chunks sent, oldest first, at most `limit` bytes of them.
    chunks: VecDeque<(u64, BridgeFrame, usize)>,
    bytes: usize,
    limit: usize,
    /// The highest chunk index dropped from `chunks` to keep within `limit`.
    dropped_through: Option<u64>,
    result: Option<BridgeFrame>,
}

impl Route {
    fn lock(&self) -> MutexGuard<'_, RouteState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `frame` for a resume and forwards it to the owning connection, waiting while that
    /// connection's queue is full.
    async fn send(&self, frame: BridgeFrame) {
        let tx = self.keep(frame.clone());
        if let Some(tx) = tx {
            // A closed queue means the connection is going; the frame is kept for a resume.
            let _ = tx.send(frame).await;
        }
    }

    /// Keeps `frame`; returns where it goes now.
    fn keep(&self, frame: BridgeFrame) -> Option<Outbound<BridgeFrame>> {
        let mut state = self.lock();
        let tx = state.tx.clone();
        match frame {
            BridgeFrame::ModelStreamChunk(chunk) => {
                let size = chunk.approx_bytes();
                let index = chunk.chunk_index;
                state
                    .chunks
                    .push_back((index, BridgeFrame::ModelStreamChunk(chunk), size));
                state.bytes += size;
                while state.bytes > state.limit {
                    let Some((index, _, size)) = state.chunks.pop_front() else {
                        break;
                    };
                    state.bytes -= size;
                    state.dropped_through = Some(index);
                }
            }
            result @ BridgeFrame::ModelResult(_) => state.result = Some(result),
            _ => {}
        }
        tx
    }

    /// Points the route at a new connection; returns what came after `after`, for the
    /// connection to send at once, ahead of the frames that follow through its queue.
    fn attach(
        &self,
        tx: Outbound<BridgeFrame>,
        owner: Owner,
        after: Option<u64>,
    ) -> Result<Vec<BridgeFrame>, String> {
        let mut state = self.lock();
        if let Some(dropped) = state.dropped_through {
            if after.is_none_or(|a| a < dropped) {
                return Err(format!(
                    "chunks up to {dropped} are no longer held (STREAM_BUFFER_BYTES), and bridge-agent has only up to {after:?}"
                ));
            }
        }
        let mut replay: Vec<BridgeFrame> = state
            .chunks
            .iter()
            .filter(|(index, _, _)| after.is_none_or(|a| *index > a))
            .map(|(_, frame, _)| frame.clone())
            .collect();
        replay.extend(state.result.clone());
        state.tx = Some(tx);
        state.owner = owner;
        Ok(replay)
    }
}

struct Held {
    agent_id: String,
    route: Route,
    /// When its last frame was sent (it is no longer in the queue).
    ended: Option<Instant>,
}

/// The routes of protocol-2 requests, by id.
pub struct Resumes {
    held: Mutex<HashMap<String, Held>>,
    limit: usize,
    pub grace: Duration,
    /// Where each request's forwarding task runs; shutdown waits on it.
    tasks: TaskTracker,
}

/// A `model_resume` that cannot be honoured, with the sentence to send back.
#[derive(Debug)]
pub struct NotResumable {
    pub why: String,
    /// The bridge held the request but cannot carry it on (its early chunks are gone): it has
    /// been forgotten here, and the queue must withdraw it, so that nothing is left live and
    /// bridge-agent, told so, does not send it afresh under the same id.
    pub withdrawn: bool,
}

impl Resumes {
    pub fn new(limit: usize, grace: Duration, tasks: TaskTracker) -> Self {
        Self {
            held: Mutex::default(),
            limit,
            grace,
            tasks,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sender a new request of `agent_id` on connection `owner` should be answered through;
    /// `None` when a live request already has this id (the queue refuses the duplicate).
    pub fn open(
        self: &Arc<Self>,
        id: &str,
        agent_id: &str,
        owner: Owner,
        tx: Outbound<BridgeFrame>,
    ) -> Option<Outbound<BridgeFrame>> {
        let route = Route(Arc::new(Mutex::new(RouteState {
            tx: Some(tx),
            owner,
            chunks: VecDeque::new(),
            bytes: 0,
            limit: self.limit,
            dropped_through: None,
            result: None,
        })));
        {
            let mut held = self.lock();
            if held.get(id).is_some_and(|h| h.ended.is_none()) {
                return None;
            }
            held.insert(
                id.to_owned(),
                Held {
                    agent_id: agent_id.to_owned(),
                    route: route.clone(),
                    ended: None,
                },
            );
        }
        // The queue's entry holds the sender; when the entry is gone, so is the request.
        // Bounded like the connection's queue: a request whose connection does not keep up
        // fills its own queue and ends alone (`broker.rs` `submit`).
        let (request_tx, mut request_rx) = ws_peer::queue::<BridgeFrame>(OUTBOUND_QUEUE);
        let resumes = self.clone();
        let id = id.to_owned();
        let span = tracing::info_span!("route", %id);
        self.tasks.spawn(
            async move {
                while let Some(frame) = request_rx.recv().await {
                    route.send(frame).await;
                }
                resumes.ended(&id, &route);
            }
            .instrument(span),
        );
        Some(request_tx)
    }

    fn ended(&self, id: &str, route: &Route) {
        let mut held = self.lock();
        if let Some(h) = held
            .get_mut(id)
            .filter(|h| Arc::ptr_eq(&h.route.0, &route.0))
        {
            h.ended = Some(Instant::now());
        }
        let mut ended: Vec<(Instant, String)> = held
            .iter()
            .filter_map(|(id, h)| h.ended.map(|at| (at, id.clone())))
            .collect();
        if ended.len() > ENDED_KEPT {
            ended.sort();
            for (_, id) in &ended[..ended.len() - ENDED_KEPT] {
                held.remove(id);
            }
        }
    }

    /// Connection `owner` vanished: its requests wait for a resume. Returns how many.
    pub fn detach(&self, owner: Owner) -> usize {
        self.lock()
            .values()
            .filter(|h| {
                let mut state = h.route.lock();
                let mine = state.owner == owner && state.tx.is_some();
                if mine {
                    state.tx = None;
                }
                mine && h.ended.is_none()
            })
            .count()
    }

    /// After the grace: forgets the requests of `owner` nobody resumed; returns the live ones,
    /// for the queue to withdraw.
    pub fn expire(&self, owner: Owner) -> Vec<String> {
        let mut held = self.lock();
        let lapsed: Vec<(String, bool)> = held
            .iter()
            .filter(|(_, h)| {
                let state = h.route.lock();
                state.owner == owner && state.tx.is_none()
            })
            .map(|(id, h)| (id.clone(), h.ended.is_none()))
            .collect();
        for (id, _) in &lapsed {
            held.remove(id);
        }
        lapsed
            .into_iter()
            .filter_map(|(id, live)| live.then_some(id))
            .collect()
    }

    /// `model_resume` of `id` from connection `owner` of `agent_id`: re-attaches, and returns
    /// the frames to replay.
    pub fn resume(
        &self,
        id: &str,
        agent_id: &str,
        owner: Owner,
        tx: Outbound<BridgeFrame>,
        after: Option<u64>,
    ) -> Result<Vec<BridgeFrame>, NotResumable> {
        let mut held = self.lock();
        let Some(h) = held.get(id).filter(|h| h.agent_id == agent_id) else {
            return Err(NotResumable {
                why: format!(
                    "mcp-bridge holds no request {id} of bridge-agent {agent_id:?} to resume: it restarted (its queue is in memory) or LOCAL_PROVIDER_RESUME_GRACE ran out"
                ),
                withdrawn: false,
            });
        };
        let attached = h.route.attach(tx, owner, after);
        attached.map_err(|why| {
            held.remove(id);
            NotResumable {
                why: format!("request {id} cannot be resumed, and is withdrawn: {why}"),
                withdrawn: true,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use provider_shared::bridge::{Delta, ModelResult, StreamChunk};

    fn chunk(id: &str, index: u64) -> BridgeFrame {
        BridgeFrame::ModelStreamChunk(StreamChunk {
            id: id.into(),
            chunk_index: index,
            delta: Delta {
                content: Some(format!("c{index}")),
                ..Delta::default()
            },
            finish_reason: None,
        })
    }

    fn indices(rx: &mut tokio::sync::mpsc::Receiver<BridgeFrame>) -> Vec<String> {
        let mut frames = vec![];
        while let Ok(frame) = rx.try_recv() {
            frames.push(frame);
        }
        named(frames)
    }

    fn named(frames: Vec<BridgeFrame>) -> Vec<String> {
        let mut out = vec![];
        for frame in frames {
            out.push(match frame {
                BridgeFrame::ModelStreamChunk(c) => c.chunk_index.to_string(),
                BridgeFrame::ModelResult(_) => "result".into(),
                _ => "other".into(),
            });
        }
        out
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_vanished_connection_s_request_is_replayed_after_the_named_chunk() {
        let resumes = Arc::new(Resumes::new(
            1 << 20,
            Duration::from_secs(30),
            TaskTracker::new(),
        ));
        let (old_tx, mut old_rx) = ws_peer::queue(64);
        let request = resumes.open("r1", "agent", 1, old_tx).unwrap();
        request.try_push(chunk("r1", 0)).unwrap();
        request.try_push(chunk("r1", 1)).unwrap();
        settle().await;
        assert_eq!(indices(&mut old_rx), ["0", "1"]);
        assert_eq!(resumes.detach(1), 1);
        // The agent keeps answering while nobody is attached.
        request.try_push(chunk("r1", 2)).unwrap();
        request
            .try_push(BridgeFrame::ModelResult(ModelResult::error("r1", "x", "y")))
            .unwrap();
        drop(request);
        settle().await;
        let (new_tx, mut new_rx) = ws_peer::queue(64);
        assert!(resumes
            .resume("r1", "other-agent", 2, new_tx.clone(), Some(0))
            .is_err());
        let replay = resumes.resume("r1", "agent", 2, new_tx, Some(0)).unwrap();
        assert_eq!(named(replay), ["1", "2", "result"]);
        assert!(
            indices(&mut new_rx).is_empty(),
            "the replay goes out directly"
        );
        assert!(resumes.expire(1).is_empty(), "it was resumed");
    }

    #[tokio::test]
    async fn past_the_grace_the_live_requests_are_given_up_and_forgotten() {
        let resumes = Arc::new(Resumes::new(
            1 << 20,
            Duration::from_secs(30),
            TaskTracker::new(),
        ));
        let (tx, _rx) = ws_peer::queue(64);
        let _live = resumes.open("r1", "agent", 1, tx.clone()).unwrap();
        assert!(
            resumes.open("r1", "agent", 1, tx.clone()).is_none(),
            "a live id is not opened twice"
        );
        resumes.detach(1);
        assert_eq!(resumes.expire(1), vec!["r1".to_owned()]);
        assert!(resumes.resume("r1", "agent", 2, tx, None).is_err());
    }

    #[tokio::test]
    async fn a_resume_from_before_the_kept_chunks_is_refused() {
        let resumes = Arc::new(Resumes::new(
            600,
            Duration::from_secs(30),
            TaskTracker::new(),
        ));
        let (tx, _rx) = ws_peer::queue(64);
        let request = resumes.open("r1", "agent", 1, tx.clone()).unwrap();
        for i in 0..5 {
            request.try_push(chunk("r1", i)).unwrap();
        }
        settle().await;
        resumes.detach(1);
        let err = resumes
            .resume("r1", "agent", 2, tx.clone(), Some(0))
            .unwrap_err();
        assert!(err.why.contains("no longer held"), "{err:?}");
        assert!(err.withdrawn, "a held request refused is withdrawn");
        // Forgotten at once: no second resume, nothing left to expire, and the id is free.
        let (tx, _rx) = ws_peer::queue(64);
        let again = resumes.resume("r1", "agent", 2, tx.clone(), Some(3));
        assert!(again.is_err_and(|e| !e.withdrawn));
        assert!(resumes.expire(1).is_empty());
        assert!(resumes.open("r1", "agent", 2, tx).is_some());
        drop(request);
    }

    #[tokio::test]
    async fn a_resume_from_within_the_kept_chunks_replays_them() {
        let resumes = Arc::new(Resumes::new(
            600,
            Duration::from_secs(30),
            TaskTracker::new(),
        ));
        let (tx, _rx) = ws_peer::queue(64);
        let request = resumes.open("r1", "agent", 1, tx).unwrap();
        for i in 0..5 {
            request.try_push(chunk("r1", i)).unwrap();
        }
        settle().await;
        resumes.detach(1);
        let (tx, _rx) = ws_peer::queue(64);
        let replay = resumes.resume("r1", "agent", 2, tx, Some(3)).unwrap();
        assert_eq!(named(replay), ["4"]);
    }

    #[tokio::test]
    async fn a_request_waits_for_its_connection_then_fills_its_own_bounded_queue() {
        let resumes = Arc::new(Resumes::new(
            1 << 20,
            Duration::from_secs(30),
            TaskTracker::new(),
        ));
        // A connection whose queue holds one frame and is not being read.
        let (conn_tx, mut conn_rx) = ws_peer::queue(1);
        let request = resumes.open("r1", "agent", 1, conn_tx).unwrap();
        let mut pushed = 0u64;
        for _ in 0..2 {
            request.try_push(chunk("r1", pushed)).unwrap();
            pushed += 1;
            settle().await;
        }
        while request.try_push(chunk("r1", pushed)).is_ok() {
            pushed += 1;
            assert!(pushed <= 2 + OUTBOUND_QUEUE as u64, "never full");
        }
        // One frame in the connection's queue, one held by the waiting forwarder, the rest in
        // the request's own queue.
        assert_eq!(pushed, 2 + OUTBOUND_QUEUE as u64);
        assert_eq!(indices(&mut conn_rx), ["0"]);
        settle().await;
        assert_eq!(
            indices(&mut conn_rx),
            ["1"],
            "the forwarder goes on as room appears"
        );
        assert!(request.try_push(chunk("r1", pushed)).is_ok());
    }
}
