//! The gateway's one multiplexed connection to bridge-agent over the Unix socket: it reconnects
//! by itself, routes chunks and results to their requests by id, and cancels requests whose
//! callers went away.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use provider_shared::bridge::{ModelInvoke, ModelResult, StreamChunk};
use provider_shared::ipc::{BridgeStatus, IpcCodec, IpcFrame, IPC_PROTOCOL, IPC_VERSION};
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
}

/// What the gateway knows of the path to the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub agent_connected: bool,
    pub bridge: BridgeStatus,
}

type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>>;

#[derive(Clone)]
struct Conn {
    tx: mpsc::UnboundedSender<IpcFrame>,
    pending: Pending,
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
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (conn_tx, conn_rx) = watch::channel(None);
        let (link_tx, link_rx) = watch::channel(Link {
            agent_connected: false,
            bridge: BridgeStatus::disconnected(),
        });
        let span = tracing::info_span!("bridge_agent_link", socket = %socket.display());
        tracker.spawn(maintain(socket, conn_tx, link_tx, shutdown).instrument(span));
        Self {
            conn: conn_rx,
            link: link_rx,
        }
    }

    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Sends `invoke`, waiting up to `wait` for bridge-agent to be reachable.
    pub async fn call(&self, invoke: ModelInvoke, wait: Duration) -> Result<Call, Error> {
        let mut conn_rx = self.conn.clone();
        let conn = match tokio::time::timeout(wait, conn_rx.wait_for(Option::is_some)).await {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        };
        let Some(conn) = conn else {
            return Err(Error::BridgeAgentUnavailable(format!(
                "bridge-agent is not running or not reachable (waited {:.1}s); the gateway reconnects by itself, try again shortly",
                wait.as_secs_f64()
            )));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = invoke.id.clone();
        {
            let mut pending = conn
                .pending
                .lock()
                .map_err(|_| Error::Internal("request table lock poisoned".into()))?;
            pending.insert(id.clone(), tx);
        }
        if conn.tx.send(IpcFrame::Invoke(invoke)).is_err() {
            remove(&conn.pending, &id);
            return Err(Error::BridgeAgentUnavailable(
                "the connection to bridge-agent closed; try again shortly".into(),
            ));
        }
        Ok(Call {
            id,
            rx,
            conn,
            finished: false,
        })
    }
}

fn remove(pending: &Pending, id: &str) -> Option<mpsc::UnboundedSender<Event>> {
    pending.lock().ok()?.remove(id)
}

/// One request in flight. Dropping it before its result cancels it all the way to the agent.
pub struct Call {
    pub id: String,
    rx: mpsc::UnboundedReceiver<Event>,
    conn: Conn,
    finished: bool,
}

impl Call {
    /// The next event; after a `Result` or `Lost` there are none.
    pub async fn next(&mut self) -> Event {
        let event = self.rx.recv().await.unwrap_or(Event::Lost);
        if matches!(event, Event::Result(_) | Event::Lost) {
            self.finished = true;
        }
        event
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            remove(&self.conn.pending, &self.id);
            let _ = self.conn.tx.send(IpcFrame::Cancel {
                id: self.id.clone(),
            });
            tracing::info!(request_id = %self.id, "request cancelled: its caller went away");
        }
    }
}

async fn maintain(
    socket: PathBuf,
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
            Ok((framed, bridge)) => {
                delay = Duration::from_millis(50);
                logged_down = false;
                tracing::info!("connected to bridge-agent");
                metrics::gauge!("gateway_bridge_agent_connected").set(1.0);
                serve(framed, bridge, &conn_tx, &link_tx, &shutdown).await;
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

async fn connect(socket: &PathBuf) -> Result<(Framed<UnixStream, IpcCodec>, BridgeStatus), String> {
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
        Some(Ok(IpcFrame::Welcome { bridge, .. })) => Ok((framed, bridge)),
        Some(Ok(IpcFrame::Reject { reason })) => Err(format!("bridge-agent refused: {reason}")),
        Some(Ok(other)) => Err(format!("unexpected handshake answer: {other:?}")),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("bridge-agent closed the connection during the handshake".into()),
    }
}

async fn serve(
    framed: Framed<UnixStream, IpcCodec>,
    bridge: BridgeStatus,
    conn_tx: &watch::Sender<Option<Conn>>,
    link_tx: &watch::Sender<Link>,
    shutdown: &CancellationToken,
) {
    let (mut sink, mut stream) = framed.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<IpcFrame>();
    let pending: Pending = Arc::default();
    set_bridge(link_tx, true, bridge);
    conn_tx.send_replace(Some(Conn {
        tx,
        pending: pending.clone(),
    }));

    let writer = async {
        while let Some(frame) = rx.recv().await {
            if let Err(err) = sink.send(frame).await {
                tracing::warn!(%err, "writing to bridge-agent failed");
                break;
            }
        }
    };
    let reader = async {
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(IpcFrame::Chunk(chunk)) => {
                    route(&pending, &chunk.id.clone(), Event::Chunk(chunk), false)
                }
                Ok(IpcFrame::Result(result)) => {
                    route(&pending, &result.id.clone(), Event::Result(result), true)
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
    conn_tx.send_replace(None);
    set_bridge(link_tx, false, BridgeStatus::disconnected());
    let orphans: Vec<_> = pending
        .lock()
        .map(|mut p| p.drain().map(|(_, tx)| tx).collect())
        .unwrap_or_default();
    for tx in orphans {
        let _ = tx.send(Event::Lost);
    }
}

fn route(pending: &Pending, id: &str, event: Event, last: bool) {
    let sender = match pending.lock() {
        Ok(mut p) if last => p.remove(id),
        Ok(p) => p.get(id).cloned(),
        Err(_) => None,
    };
    match sender {
        Some(tx) => {
            let _ = tx.send(event);
        }
        None => tracing::debug!(
            request_id = id,
            "dropping a frame for a request no longer waiting"
        ),
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
