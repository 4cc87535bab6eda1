//! The gateway's one multiplexed connection to bridge-agent over the Unix socket: it reconnects
//! by itself, routes chunks and results to their requests by id, and cancels requests whose
//! callers went away. A request whose connection broke can be re-attached to the next one
//! ([`Call::resume`]) when that bridge-agent takes `resume` (docs/PROTOCOL.md §2).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use provider_shared::bridge::{ModelInvoke, ModelResult, StreamChunk};
use provider_shared::ipc::{
    BridgeStatus, IpcCodec, IpcFrame, CAP_RESUME, IPC_PROTOCOL, IPC_VERSION,
};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;

/// What a request hears back.
#[derive(Debug)]
pub enum Event {
    Chunk(StreamChunk),
    Result(ModelResult),
    /// The connection to bridge-agent broke before the result came.
    Lost,
    /// More than the buffer bound of frames waited for this request's own task; it was dropped.
    Overflow,
}

/// What the gateway knows of the path to the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub agent_connected: bool,
    pub bridge: BridgeStatus,
}

/// Where one request's frames go, and how many bytes of them wait there.
struct Route {
    tx: mpsc::UnboundedSender<Event>,
    queued: Arc<AtomicUsize>,
    /// The reader's time for this request's frames (nanoseconds), for the overhead metric.
    ipc_nanos: Arc<AtomicU64>,
}

/// The requests of one connection. Registering and closing take the same lock, and nothing
/// registers once the table is closed: a request either is in the table when the connection's
/// end drains it (and hears `Lost`), or is refused and tries the next connection. No request
/// can fall in between.
#[derive(Default)]
struct Table {
    open: bool,
    routes: HashMap<String, Route>,
}

#[derive(Clone)]
struct Conn {
    tx: mpsc::UnboundedSender<IpcFrame>,
    table: Arc<Mutex<Table>>,
    /// This bridge-agent takes `resume`.
    resume: bool,
    /// Bytes of frames one request may have waiting for its task.
    buffer_bytes: usize,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // Every change to the table is one statement, so a poisoned lock still holds a whole table.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    /// Adds `id`; false when this connection has already ended.
    fn register(&self, id: &str, route: Route) -> bool {
        let mut table = lock(&self.table);
        if !table.open {
            return false;
        }
        table.routes.insert(id.to_owned(), route);
        true
    }

    fn unregister(&self, id: &str) {
        lock(&self.table).routes.remove(id);
    }

    /// Ends the connection's table; returns the requests that were waiting on it.
    fn close(&self) -> Vec<Route> {
        let mut table = lock(&self.table);
        table.open = false;
        table.routes.drain().map(|(_, r)| r).collect()
    }
}

#[derive(Clone)]
pub struct BridgeClient {
    conn: watch::Receiver<Option<Conn>>,
    link: watch::Receiver<Link>,
}

impl BridgeClient {
    /// Starts the connection task; it ends when `shutdown` fires.
    pub fn start(
        socket: PathBuf,
        buffer_bytes: usize,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (conn_tx, conn_rx) = watch::channel(None);
        let (link_tx, link_rx) = watch::channel(Link {
            agent_connected: false,
            bridge: BridgeStatus::disconnected(),
        });
        let span = tracing::info_span!("bridge_agent_link", socket = %socket.display());
        tracker.spawn(maintain(socket, buffer_bytes, conn_tx, link_tx, shutdown).instrument(span));
        Self {
            conn: conn_rx,
            link: link_rx,
        }
    }

    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Sends `invoke`, waiting up to `wait` for bridge-agent to be reachable. Refused with
    /// `request_too_large` when the bridge said it takes smaller frames.
    pub async fn call(&self, invoke: ModelInvoke, wait: Duration) -> Result<Call, Error> {
        if let Some(limit) = self.link.borrow().bridge.max_frame_bytes {
            // The frame the bridge gets is this object plus its `"type":"model_invoke",` tag.
            let size = serde_json::to_vec(&invoke).map_or(0, |v| v.len()) + 24;
            if size as u64 > limit {
                return Err(Error::RequestTooLarge {
                    size: size as u64,
                    limit,
                });
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let ipc_nanos = Arc::new(AtomicU64::new(0));
        let id = invoke.id.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let conn = self.next_conn(deadline, None).await.ok_or_else(|| {
                Error::BridgeAgentUnavailable(format!(
                    "bridge-agent is not running or not reachable (waited {:.1}s); the gateway reconnects by itself, try again shortly",
                    wait.as_secs_f64()
                ))
            })?;
            let route = Route {
                tx: tx.clone(),
                queued: queued.clone(),
                ipc_nanos: ipc_nanos.clone(),
            };
            if !conn.register(&id, route) {
                // That connection just ended; the next one is on its way.
                continue;
            }
            if conn.tx.send(IpcFrame::Invoke(invoke.clone())).is_err() {
                conn.unregister(&id);
                continue;
            }
            return Ok(Call {
                id,
                invoke: Some(invoke),
                tx,
                rx,
                queued,
                ipc_nanos,
                conn,
                client: self.clone(),
                finished: false,
            });
        }
    }

    /// The current connection once there is one other than `not`, or `None` at `deadline`.
    async fn next_conn(
        &self,
        deadline: tokio::time::Instant,
        not: Option<&Arc<Mutex<Table>>>,
    ) -> Option<Conn> {
        let mut conn_rx = self.conn.clone();
        let fresh = |c: &Option<Conn>| {
            c.as_ref()
                .is_some_and(|c| not.is_none_or(|old| !Arc::ptr_eq(old, &c.table)))
        };
        let found = match tokio::time::timeout_at(deadline, conn_rx.wait_for(fresh)).await {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        };
        found
    }
}

/// One request in flight. Dropping it before its result cancels it all the way to the agent.
pub struct Call {
    pub id: String,
    /// Kept until the first chunk, for a resume to send afresh if the bridge never got it.
    invoke: Option<ModelInvoke>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    queued: Arc<AtomicUsize>,
    ipc_nanos: Arc<AtomicU64>,
    conn: Conn,
    client: BridgeClient,
    finished: bool,
}

impl Call {
    /// The next event; after a `Result`, `Lost` or `Overflow` there are none (until a resume).
    pub async fn next(&mut self) -> Event {
        let event = self.rx.recv().await.unwrap_or(Event::Lost);
        match &event {
            Event::Chunk(chunk) => {
                self.queued
                    .fetch_sub(chunk.approx_bytes(), Ordering::Relaxed);
                self.invoke = None;
            }
            Event::Result(_) | Event::Lost | Event::Overflow => self.finished = true,
        }
        event
    }

    /// The connection reader's time for this request's frames since the last call.
    pub fn take_ipc_time(&self) -> Duration {
        Duration::from_nanos(self.ipc_nanos.swap(0, Ordering::Relaxed))
    }

    /// After `Lost`: re-attaches this request to the next bridge-agent connection, if one that
    /// takes `resume` comes before `deadline`. The gateway has the chunks up to
    /// `after_chunk_index`; the request has been running for `elapsed`.
    pub async fn resume(
        &mut self,
        after_chunk_index: Option<u64>,
        elapsed: Duration,
        deadline: tokio::time::Instant,
    ) -> bool {
        let old = self.conn.table.clone();
        let Some(conn) = self.client.next_conn(deadline, Some(&old)).await else {
            return false;
        };
        if !conn.resume {
            tracing::info!(request_id = %self.id, "the new bridge-agent cannot resume requests");
            return false;
        }
        let route = Route {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
            ipc_nanos: self.ipc_nanos.clone(),
        };
        self.queued.store(0, Ordering::Relaxed);
        if !conn.register(&self.id, route) {
            return false;
        }
        let frame = IpcFrame::Resume {
            id: self.id.clone(),
            after_chunk_index,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            invoke: self.invoke.clone(),
        };
        if conn.tx.send(frame).is_err() {
            conn.unregister(&self.id);
            return false;
        }
        self.conn = conn;
        self.finished = false;
        true
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.unregister(&self.id);
            let _ = self.conn.tx.send(IpcFrame::Cancel {
                id: self.id.clone(),
            });
            tracing::info!(request_id = %self.id, "request cancelled at bridge-agent");
        }
    }
}

async fn maintain(
    socket: PathBuf,
    buffer_bytes: usize,
    conn_tx: watch::Sender<Option<Conn>>,
    link_tx: watch::Sender<Link>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    let mut logged_down = false;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect(&socket) => r,
        };
        match attempt {
            Ok(welcome) => {
                delay = Duration::from_millis(50);
                logged_down = false;
                tracing::info!(resume = welcome.resume, "connected to bridge-agent");
                metrics::gauge!("gateway_bridge_agent_connected").set(1.0);
                serve(welcome, buffer_bytes, &conn_tx, &link_tx, &shutdown).await;
                metrics::gauge!("gateway_bridge_agent_connected").set(0.0);
                metrics::gauge!("gateway_bridge_connected").set(0.0);
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!("lost the connection to bridge-agent; reconnecting");
                metrics::counter!("gateway_bridge_agent_reconnects_total").increment(1);
            }
            Err(err) => {
                if !logged_down {
                    tracing::warn!(%err, "bridge-agent not reachable yet; retrying");
                    logged_down = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// An established connection, as its `welcome` described it.
struct Welcomed {
    framed: Framed<UnixStream, IpcCodec>,
    bridge: BridgeStatus,
    resume: bool,
}

async fn connect(socket: &PathBuf) -> Result<Welcomed, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut framed = Framed::new(stream, IpcCodec::default());
    framed
        .send(IpcFrame::Hello {
            protocol: IPC_PROTOCOL.into(),
            version: IPC_VERSION,
            client: format!("gateway/{}", provider_shared::VERSION),
        })
        .await
        .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .map_err(|_| "bridge-agent did not answer the handshake".to_owned())?;
    match reply {
        Some(Ok(IpcFrame::Welcome {
            bridge,
            capabilities,
            ..
        })) => Ok(Welcomed {
            framed,
            bridge,
            resume: capabilities.iter().any(|c| c == CAP_RESUME),
        }),
        Some(Ok(IpcFrame::Reject { reason })) => Err(format!("bridge-agent refused: {reason}")),
        Some(Ok(other)) => Err(format!("unexpected handshake answer: {other:?}")),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("bridge-agent closed the connection during the handshake".into()),
    }
}

async fn serve(
    welcome: Welcomed,
    buffer_bytes: usize,
    conn_tx: &watch::Sender<Option<Conn>>,
    link_tx: &watch::Sender<Link>,
    shutdown: &CancellationToken,
) {
    let (mut sink, mut stream) = welcome.framed.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<IpcFrame>();
    let conn = Conn {
        tx,
        table: Arc::new(Mutex::new(Table {
            open: true,
            routes: HashMap::new(),
        })),
        resume: welcome.resume,
        buffer_bytes,
    };
    set_bridge(link_tx, true, welcome.bridge);
    conn_tx.send_replace(Some(conn.clone()));

    let writer = async {
        while let Some(frame) = rx.recv().await {
            if let Err(err) = sink.send(frame).await {
                tracing::warn!(%err, "writing to bridge-agent failed");
                break;
            }
        }
    };
    let reader = async {
        // Each frame's read and decode is timed by the poll that completes it.
        while let Some((frame, began)) = futures_util::future::poll_fn(|cx| {
            let began = Instant::now();
            stream
                .poll_next_unpin(cx)
                .map(|frame| frame.map(|frame| (frame, began)))
        })
        .await
        {
            match frame {
                Ok(IpcFrame::Chunk(chunk)) => {
                    let id = chunk.id.clone();
                    route(&conn, &id, Event::Chunk(chunk), began);
                }
                Ok(IpcFrame::Result(result)) => {
                    let id = result.id.clone();
                    route(&conn, &id, Event::Result(result), began);
                }
                Ok(IpcFrame::Status(status)) => set_bridge(link_tx, true, status),
                Ok(other) => tracing::debug!(?other, "ignoring unexpected frame from bridge-agent"),
                Err(err) => {
                    tracing::warn!(%err, "bad frame from bridge-agent");
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = shutdown.cancelled() => {}
    }
    // Unpublish first, so a request refused by the closed table waits for the next connection.
    conn_tx.send_replace(None);
    set_bridge(link_tx, false, BridgeStatus::disconnected());
    for orphan in conn.close() {
        let _ = orphan.tx.send(Event::Lost);
    }
}

/// Hands a frame to its request. A request whose task has let more than the buffer bound wait
/// is dropped alone (and cancelled at bridge-agent); the shared connection never waits for it.
/// The time since `began` (the frame's read and decode) is added to the request's.
fn route(conn: &Conn, id: &str, event: Event, began: Instant) {
    let mut table = lock(&conn.table);
    let Some(route) = table.routes.get(id) else {
        tracing::debug!(
            request_id = id,
            "dropping a frame for a request no longer waiting"
        );
        return;
    };
    let chunk_bytes = match &event {
        Event::Chunk(chunk) => chunk.approx_bytes(),
        _ => 0,
    };
    let waiting = route.queued.fetch_add(chunk_bytes, Ordering::Relaxed) + chunk_bytes;
    // Before the send, so the request's task finds it with the frame.
    let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
    route.ipc_nanos.fetch_add(took, Ordering::Relaxed);
    if waiting > conn.buffer_bytes {
        if let Some(route) = table.routes.remove(id) {
            let _ = route.tx.send(Event::Overflow);
        }
        let _ = conn.tx.send(IpcFrame::Cancel { id: id.to_owned() });
        return;
    }
    if matches!(event, Event::Result(_)) {
        if let Some(route) = table.routes.remove(id) {
            let _ = route.tx.send(event);
        }
    } else {
        let _ = route.tx.send(event);
    }
}

fn set_bridge(link_tx: &watch::Sender<Link>, agent_connected: bool, bridge: BridgeStatus) {
    let up = bridge.state == provider_shared::ipc::LinkState::Connected;
    metrics::gauge!("gateway_bridge_connected").set(if up && agent_connected { 1.0 } else { 0.0 });
    link_tx.send_replace(Link {
        agent_connected,
        bridge,
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn conn() -> (Conn, mpsc::UnboundedReceiver<IpcFrame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let table = Table {
            open: true,
            routes: HashMap::new(),
        };
        let conn = Conn {
            tx,
            table: Arc::new(Mutex::new(table)),
            resume: true,
            buffer_bytes: 1000,
        };
        (conn, rx)
    }

    fn route_to(tx: &mpsc::UnboundedSender<Event>) -> Route {
        Route {
            tx: tx.clone(),
            queued: Arc::default(),
            ipc_nanos: Arc::default(),
        }
    }

    // The interleaving that used to lose a request: a caller holding the connection registers
    // just after the connection's end drained the table. It must be refused, never parked.
    #[test]
    fn a_request_registering_after_the_end_is_refused_not_lost() {
        let (conn, _frames) = conn();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let held_by_caller = conn.clone();
        assert!(conn.close().is_empty());
        assert!(!held_by_caller.register("r1", route_to(&tx)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_request_registered_before_the_end_hears_lost() {
        let (conn, _frames) = conn();
        let (tx, _rx) = mpsc::unbounded_channel();
        assert!(conn.register("r1", route_to(&tx)));
        let orphans = conn.close();
        assert_eq!(orphans.len(), 1);
    }

    fn chunk(id: &str, text: &str) -> Event {
        Event::Chunk(StreamChunk {
            id: id.into(),
            chunk_index: 0,
            delta: provider_shared::bridge::Delta {
                content: Some(text.into()),
                ..Default::default()
            },
            finish_reason: None,
        })
    }

    #[test]
    fn a_request_whose_frames_pile_up_is_dropped_alone_and_cancelled() {
        let (conn, mut frames) = conn();
        let (slow_tx, mut slow_rx) = mpsc::unbounded_channel();
        let (fast_tx, mut fast_rx) = mpsc::unbounded_channel();
        conn.register("slow", route_to(&slow_tx));
        conn.register("fast", route_to(&fast_tx));
        route(
            &conn,
            "slow",
            chunk("slow", &"x".repeat(600)),
            Instant::now(),
        );
        route(
            &conn,
            "slow",
            chunk("slow", &"x".repeat(600)),
            Instant::now(),
        );
        route(&conn, "fast", chunk("fast", "hi"), Instant::now());
        assert!(matches!(slow_rx.try_recv().unwrap(), Event::Chunk(_)));
        assert!(matches!(slow_rx.try_recv().unwrap(), Event::Overflow));
        assert!(matches!(fast_rx.try_recv().unwrap(), Event::Chunk(_)));
        assert_eq!(
            frames.try_recv().unwrap(),
            IpcFrame::Cancel { id: "slow".into() }
        );
        assert_eq!(lock(&conn.table).routes.len(), 1);
    }
}
