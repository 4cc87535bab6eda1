//! The gateway's one multiplexed connection to bridge-agent over the Unix socket: it reconnects
//! by itself, routes chunks and results to their requests by id, and cancels requests whose
//! callers went away. A request whose connection broke can be re-attached to the next one
//! ([`Call::resume`]) when that bridge-agent takes `resume` (docs/PROTOCOL.md §2).
//!
//! The link is bounded and watched like the WebSocket: at most [`IPC_QUEUE`] frames wait to be
//! written (a request that finds the queue full gets an error; nobody waits), each write must
//! finish within `WRITE_TIMEOUT`, and with a bridge-agent that takes `heartbeat` a `ping` goes out
//! every `HEARTBEAT_EVERY` and a connection silent for `SILENCE_LIMIT` is dropped (its requests
//! resume on the next one).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use provider_shared::backoff::Backoff;
use provider_shared::batch;
use provider_shared::bridge::{ModelInvoke, ModelResult, StreamChunk};
use provider_shared::frame_summary::FrameSummary;
use provider_shared::ipc::{
    BridgeStatus, IpcCodec, IpcFrame, CAP_HEARTBEAT, CAP_RESUME, HEARTBEAT_EVERY, IPC_PROTOCOL,
    IPC_VERSION, SILENCE_LIMIT, WRITE_TIMEOUT,
};
use provider_shared::routes::{Delivered, Inbox, InsertRefused, RouteTable, Routed, Ticket};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;

/// Frames waiting to be written to bridge-agent. Invokes are bounded by
/// `MAX_CONCURRENT_REQUESTS` as well; the rest are cancels, resumes and heartbeats. A request
/// whose invoke or resume finds the queue full fails alone (the link is stalled, and its
/// heartbeat ends it within `SILENCE_LIMIT`).
pub const IPC_QUEUE: usize = 256;

/// How long a stopping gateway gives its last frames (the cancels of its requests) to go out.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);

/// What a request in flight hears back.
#[derive(Debug)]
pub enum CallEvent {
    Chunk(StreamChunk),
    Result(ModelResult),
    /// The connection to bridge-agent broke before the result came.
    Lost,
    /// More than the buffer bound of frames waited for this request's own task; it was dropped.
    Overflow,
}

/// An event as routed: with the connection reader's time for its frame (read, decode, route),
/// which counts as the request's own gateway time.
struct TimedEvent {
    event: CallEvent,
    took: Duration,
}

impl TimedEvent {
    fn untimed(event: CallEvent) -> Self {
        Self {
            event,
            took: Duration::ZERO,
        }
    }
}

impl Routed for TimedEvent {
    fn cost(&self) -> usize {
        match &self.event {
            CallEvent::Chunk(chunk) => chunk.approx_bytes(),
            _ => 0,
        }
    }

    fn is_last(&self) -> bool {
        matches!(self.event, CallEvent::Result(_))
    }

    fn overflow() -> Self {
        Self::untimed(CallEvent::Overflow)
    }
}

/// What the gateway knows of the path to the agent: whether bridge-agent is connected, and the
/// bridge status it last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    pub agent_connected: bool,
    pub bridge: BridgeStatus,
}

/// One connection to bridge-agent: where its frames are queued, and its requests. Registering
/// and closing take the table's one lock, and nothing registers once it is closed: a request
/// either is in the table when the connection's end drains it (and hears `Lost`), or is refused
/// and tries the next connection. No request can fall in between.
#[derive(Clone)]
struct Conn {
    tx: mpsc::Sender<IpcFrame>,
    table: Arc<RouteTable<TimedEvent>>,
    /// This bridge-agent takes `resume`.
    resume: bool,
}

#[derive(Clone)]
pub struct AgentClient {
    conn: watch::Receiver<Option<Conn>>,
    link: watch::Receiver<LinkStatus>,
}

impl AgentClient {
    /// Starts the connection task; it ends when `shutdown` fires.
    pub fn start(
        socket: PathBuf,
        buffer_bytes: usize,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (conn_tx, conn_rx) = watch::channel(None);
        let (link_tx, link_rx) = watch::channel(LinkStatus {
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

    pub fn link(&self) -> LinkStatus {
        self.link.borrow().clone()
    }

    /// Sends `invoke`, waiting up to `wait` for bridge-agent to be reachable. Refused with
    /// `request_too_large` when the bridge said it takes smaller frames.
    pub async fn call(&self, invoke: ModelInvoke, wait: Duration) -> Result<Call, Error> {
        if let Some(limit) = self.link.borrow().bridge.max_frame_bytes {
            // The frame the bridge gets, counted without writing it (the prompt is raw text).
            let size = invoke.frame_len();
            if size > limit {
                return Err(Error::RequestTooLarge { size, limit });
            }
        }
        let id = invoke.id.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let conn = self.next_conn(deadline, None).await.ok_or_else(|| {
                Error::BridgeAgentUnavailable(format!(
                    "bridge-agent is not running or not reachable (waited {:.1}s); the gateway reconnects by itself, try again shortly",
                    wait.as_secs_f64()
                ))
            })?;
            let (ticket, inbox) = match conn.table.insert(&id, ()) {
                Ok(registered) => registered,
                // That connection just ended; the next one is on its way.
                Err(InsertRefused::Closed) => continue,
                Err(InsertRefused::Duplicate) => {
                    return Err(Error::Internal(format!(
                        "request id {id} is already in flight to bridge-agent"
                    )))
                }
            };
            match conn.tx.try_send(IpcFrame::Invoke(invoke.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    conn.table.remove(&id, ticket);
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    conn.table.remove(&id, ticket);
                    tracing::warn!(request_id = %id, limit = IPC_QUEUE, "the queue to bridge-agent is full; refusing the request");
                    return Err(Error::BridgeAgentUnavailable(format!(
                        "bridge-agent is not reading its socket: {IPC_QUEUE} frames wait for it; the gateway drops the connection if it stays silent, try again shortly"
                    )));
                }
            }
            return Ok(Call {
                id,
                invoke: Some(invoke),
                inbox,
                ticket,
                conn,
                client: self.clone(),
                finished: false,
                ipc_time: Duration::ZERO,
            });
        }
    }

    /// The current connection once there is one other than `not`, or `None` at `deadline`.
    async fn next_conn(
        &self,
        deadline: tokio::time::Instant,
        not: Option<&Arc<RouteTable<TimedEvent>>>,
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
    inbox: Inbox<TimedEvent>,
    /// Its registration in `conn`'s table.
    ticket: Ticket,
    conn: Conn,
    client: AgentClient,
    finished: bool,
    /// The reader's time for this request's frames not yet taken by `take_ipc_time`.
    ipc_time: Duration,
}

impl Call {
    /// The next event; after a `Result`, `Lost` or `Overflow` there are none (until a resume).
    pub async fn next(&mut self) -> CallEvent {
        // The table drains every entry with `Lost` before it lets go of the inbox.
        let TimedEvent { event, took } = self
            .inbox
            .recv()
            .await
            .unwrap_or(TimedEvent::untimed(CallEvent::Lost));
        self.ipc_time += took;
        match &event {
            CallEvent::Chunk(_) => self.invoke = None,
            CallEvent::Result(_) | CallEvent::Lost | CallEvent::Overflow => self.finished = true,
        }
        event
    }

    /// The connection reader's time for this request's frames since the last call.
    pub fn take_ipc_time(&mut self) -> Duration {
        std::mem::take(&mut self.ipc_time)
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
        let Ok((ticket, inbox)) = conn.table.insert(&self.id, ()) else {
            return false;
        };
        let frame = IpcFrame::Resume {
            id: self.id.clone(),
            after_chunk_index,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            invoke: self.invoke.clone(),
        };
        if conn.tx.try_send(frame).is_err() {
            conn.table.remove(&self.id, ticket);
            return false;
        }
        self.inbox = inbox;
        self.ticket = ticket;
        self.conn = conn;
        self.finished = false;
        true
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.conn.table.remove(&self.id, self.ticket);
        if !self.finished {
            // A full queue means a stalled link, which its heartbeat ends; bridge-agent then
            // cancels the request itself when no resume comes.
            let sent = self.conn.tx.try_send(IpcFrame::Cancel {
                id: self.id.clone(),
            });
            tracing::info!(request_id = %self.id, queued = sent.is_ok(), "request cancelled at bridge-agent");
        }
    }
}

async fn maintain(
    socket: PathBuf,
    buffer_bytes: usize,
    conn_tx: watch::Sender<Option<Conn>>,
    link_tx: watch::Sender<LinkStatus>,
    shutdown: CancellationToken,
) {
    // Quick at first (bridge-agent is usually starting beside us), jittered so that gateways
    // restarted together do not knock in step.
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut failures: u32 = 0;
    let mut logged_down = false;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect(&socket) => r,
        };
        match attempt {
            Ok(welcome) => {
                failures = 0;
                logged_down = false;
                tracing::info!(resume = welcome.resume, "connected to bridge-agent");
                metrics::gauge!("gateway_bridge_agent_connected").set(1.0);
                run_connection(welcome, buffer_bytes, &conn_tx, &link_tx, &shutdown).await;
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
        failures = failures.saturating_add(1);
        let delay = backoff.delay(failures, &mut rand::rng());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// An established connection, as its `welcome` described it.
struct Welcomed {
    framed: Framed<UnixStream, IpcCodec>,
    bridge: BridgeStatus,
    resume: bool,
    /// bridge-agent answers `ping`.
    heartbeat: bool,
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
            capabilities: vec![CAP_HEARTBEAT.to_owned()],
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
            heartbeat: capabilities.iter().any(|c| c == CAP_HEARTBEAT),
        }),
        Some(Ok(IpcFrame::Reject { reason })) => Err(format!("bridge-agent refused: {reason}")),
        Some(Ok(other)) => Err(format!(
            "unexpected handshake answer: {}",
            FrameSummary::of(&other)
        )),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("bridge-agent closed the connection during the handshake".into()),
    }
}

async fn run_connection(
    welcome: Welcomed,
    buffer_bytes: usize,
    conn_tx: &watch::Sender<Option<Conn>>,
    link_tx: &watch::Sender<LinkStatus>,
    shutdown: &CancellationToken,
) {
    let (sink, mut stream) = welcome.framed.split();
    let (tx, rx) = mpsc::channel::<IpcFrame>(IPC_QUEUE);
    let conn = Conn {
        tx,
        table: Arc::new(RouteTable::new(buffer_bytes)),
        resume: welcome.resume,
    };
    set_bridge(link_tx, true, welcome.bridge);
    conn_tx.send_replace(Some(conn.clone()));

    let heartbeat = welcome.heartbeat;
    let stop_writer = CancellationToken::new();
    let writer = write_frames(sink, rx, stop_writer.clone());
    let reader = async {
        loop {
            // Each frame's read and decode is timed by the poll that completes it.
            let next = futures_util::future::poll_fn(|cx| {
                let began = Instant::now();
                stream
                    .poll_next_unpin(cx)
                    .map(|frame| frame.map(|frame| (frame, began)))
            });
            let next = if heartbeat {
                match tokio::time::timeout(SILENCE_LIMIT, next).await {
                    Ok(next) => next,
                    Err(_) => {
                        break format!(
                            "bridge-agent sent nothing for {SILENCE_LIMIT:?}, not even a pong"
                        )
                    }
                }
            } else {
                next.await
            };
            let Some((frame, began)) = next else {
                break "bridge-agent closed the connection".to_owned();
            };
            match frame {
                Ok(IpcFrame::Chunk(chunk)) => {
                    let id = chunk.id.clone();
                    route(&conn, &id, CallEvent::Chunk(chunk), began);
                }
                Ok(IpcFrame::Result(result)) => {
                    let id = result.id.clone();
                    route(&conn, &id, CallEvent::Result(result), began);
                }
                Ok(IpcFrame::Status(status)) => set_bridge(link_tx, true, status),
                Ok(IpcFrame::Pong { .. }) => {}
                Ok(other) => {
                    let frame = FrameSummary::of(&other);
                    tracing::debug!(%frame, "ignoring unexpected frame from bridge-agent");
                }
                Err(err) => break format!("bad frame from bridge-agent: {err}"),
            }
        }
    };
    tokio::pin!(writer, reader);
    let mut beat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    let why = loop {
        tokio::select! {
            why = &mut writer => break why,
            why = &mut reader => break why,
            _ = beat.tick(), if heartbeat => {
                // A full queue is a stalled link: the silence ends it, not this.
                let _ = conn.tx.try_send(IpcFrame::Ping { ts: unix_millis() });
            }
            _ = shutdown.cancelled() => {
                // The gateway is stopping and its clients' requests end with it: bridge-agent
                // cancels them now instead of holding them for a resume that will not come.
                for id in conn.table.ids() {
                    let _ = conn.tx.try_send(IpcFrame::Cancel { id });
                }
                stop_writer.cancel();
                let _ = (&mut writer).await;
                break "the gateway is stopping".to_owned();
            }
        }
    };
    if !shutdown.is_cancelled() {
        tracing::warn!(reason = %why, "the connection to bridge-agent ended");
    }
    // Unpublish first, so a request refused by the closed table waits for the next connection.
    conn_tx.send_replace(None);
    set_bridge(link_tx, false, BridgeStatus::disconnected());
    conn.table.close(|| TimedEvent::untimed(CallEvent::Lost));
}

/// Writes queued frames until a write fails or takes longer than `WRITE_TIMEOUT` (says why), or
/// `stop` fires: then what is queued goes out within `CLOSING_FLUSH` and the connection closes.
/// Each write carries what is queued already, in one flush (`provider_shared::batch`).
async fn write_frames<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<IpcFrame>,
    stop: CancellationToken,
) -> String
where
    S: futures_util::Sink<IpcFrame> + Unpin,
    S::Error: std::fmt::Display,
{
    async fn write<S>(
        sink: &mut S,
        frame: IpcFrame,
        rx: &mut mpsc::Receiver<IpcFrame>,
    ) -> Result<(), String>
    where
        S: futures_util::Sink<IpcFrame> + Unpin,
        S::Error: std::fmt::Display,
    {
        let more = || rx.try_recv().ok();
        let batch = batch::write_queued(sink, frame, more, IpcFrame::approx_bytes);
        match tokio::time::timeout(WRITE_TIMEOUT, batch).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("writing to bridge-agent failed: {err}")),
            Err(_) => Err(format!(
                "bridge-agent read nothing for {WRITE_TIMEOUT:?} (a write did not finish)"
            )),
        }
    }
    loop {
        let frame = tokio::select! {
            biased;
            frame = rx.recv() => match frame {
                Some(frame) => frame,
                None => return "no frames left to write".to_owned(),
            },
            _ = stop.cancelled() => break,
        };
        if let Err(why) = write(&mut sink, frame, &mut rx).await {
            return why;
        }
    }
    let _ = tokio::time::timeout(CLOSING_FLUSH, async {
        while let Ok(frame) = rx.try_recv() {
            if write(&mut sink, frame, &mut rx).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    })
    .await;
    "stopped".to_owned()
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Hands a frame to its request. A request whose task has let more than the buffer bound wait
/// is dropped alone (and cancelled at bridge-agent); the shared connection never waits for it.
/// The time since `began` (the frame's read and decode) goes with it to the request.
fn route(conn: &Conn, id: &str, event: CallEvent, began: Instant) {
    let took = began.elapsed();
    match conn.table.route(id, TimedEvent { event, took }) {
        Ok(Delivered::Queued) => {}
        Ok(Delivered::Overflowed) => {
            let _ = conn.tx.try_send(IpcFrame::Cancel { id: id.to_owned() });
        }
        Err(why) => tracing::debug!(
            request_id = id,
            ?why,
            "dropping a frame for a request no longer waiting"
        ),
    }
}

fn set_bridge(link_tx: &watch::Sender<LinkStatus>, agent_connected: bool, bridge: BridgeStatus) {
    let up = bridge.state == provider_shared::ipc::LinkState::Connected;
    metrics::gauge!("gateway_bridge_connected").set(if up && agent_connected { 1.0 } else { 0.0 });
    link_tx.send_replace(LinkStatus {
        agent_connected,
        bridge,
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn the_writer_sends_what_is_queued_intact_in_order_and_a_lone_frame_at_once() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (sink, _source) = Framed::new(ours, IpcCodec::default()).split();
        let mut agent = Framed::new(theirs, IpcCodec::default());
        let cancel = |id: &str| IpcFrame::Cancel { id: id.into() };
        let (tx, rx) = mpsc::channel(256);
        // More than one batch holds, queued before the writer starts.
        for i in 0..150 {
            tx.send(cancel(&format!("r{i}"))).await.unwrap();
        }
        let stop = CancellationToken::new();
        let writer = tokio::spawn(write_frames(sink, rx, stop.clone()));
        for i in 0..150 {
            let frame = agent.next().await.unwrap().unwrap();
            assert_eq!(frame, cancel(&format!("r{i}")));
        }
        tx.send(cancel("lone")).await.unwrap();
        let lone = tokio::time::timeout(Duration::from_secs(2), agent.next()).await;
        let lone = lone.expect("a lone frame goes at once").unwrap().unwrap();
        assert_eq!(lone, cancel("lone"));
        stop.cancel();
        assert_eq!(writer.await.unwrap(), "stopped");
    }

    fn chunk(id: &str, text: &str) -> CallEvent {
        CallEvent::Chunk(StreamChunk {
            id: id.into(),
            chunk_index: 0,
            delta: provider_shared::bridge::Delta {
                content: Some(text.into()),
                ..Default::default()
            },
            finish_reason: None,
        })
    }

    fn invoke(id: &str) -> ModelInvoke {
        ModelInvoke {
            id: id.into(),
            session_id: None,
            model_meta: provider_shared::bridge::ModelMeta {
                provider: "local".into(),
                label: "m".into(),
                requested_scopes: vec![],
            },
            payload: provider_shared::bridge::Payload::Chat {
                messages: provider_shared::bridge::RawJson::from_text("[]".into()).unwrap(),
                parameters: provider_shared::bridge::RawJson::from_text("{}".into()).unwrap(),
            },
        }
    }

    #[tokio::test]
    async fn a_request_that_finds_the_queue_to_bridge_agent_full_fails_alone() {
        let (tx, mut frames) = mpsc::channel(1);
        let conn = Conn {
            tx,
            table: Arc::new(RouteTable::new(1000)),
            resume: true,
        };
        let (_conn_tx, conn_rx) = watch::channel(Some(conn.clone()));
        let (_link_tx, link_rx) = watch::channel(LinkStatus {
            agent_connected: true,
            bridge: BridgeStatus::disconnected(),
        });
        let client = AgentClient {
            conn: conn_rx,
            link: link_rx,
        };
        let first = client
            .call(invoke("a"), Duration::from_secs(1))
            .await
            .unwrap();
        let Err(Error::BridgeAgentUnavailable(why)) =
            client.call(invoke("b"), Duration::from_secs(1)).await
        else {
            panic!("a full queue took the invoke");
        };
        assert!(why.contains("not reading"), "{why}");
        // Refused before it was registered: its id is free, the first request goes on.
        assert_eq!(conn.table.ids(), vec!["a".to_owned()]);
        assert!(matches!(frames.try_recv(), Ok(IpcFrame::Invoke(i)) if i.id == "a"));
        drop(first);
        assert_eq!(
            frames.try_recv().unwrap(),
            IpcFrame::Cancel { id: "a".into() }
        );
    }

    #[tokio::test]
    async fn a_request_whose_frames_pile_up_is_dropped_alone_and_cancelled() {
        let (tx, mut frames) = mpsc::channel(8);
        let conn = Conn {
            tx,
            table: Arc::new(RouteTable::new(1000)),
            resume: true,
        };
        let (_, mut slow) = conn.table.insert("slow", ()).unwrap();
        let (_, mut fast) = conn.table.insert("fast", ()).unwrap();
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
        assert!(matches!(
            slow.recv().await.map(|t| t.event),
            Some(CallEvent::Chunk(_))
        ));
        assert!(matches!(
            slow.recv().await.map(|t| t.event),
            Some(CallEvent::Overflow)
        ));
        assert!(matches!(
            fast.recv().await.map(|t| t.event),
            Some(CallEvent::Chunk(_))
        ));
        assert_eq!(
            frames.try_recv().unwrap(),
            IpcFrame::Cancel { id: "slow".into() }
        );
        assert!(frames.try_recv().is_err());
    }
}
