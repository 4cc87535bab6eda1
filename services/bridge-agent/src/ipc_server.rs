//! The gateway-facing side: accepts connections on the Unix socket, checks each one's hello, then
//! multiplexes its requests: its reader starts each request in the request table, which queues
//! the invoke straight on the WebSocket's writer. Each connection has its own queue and writer
//! task (each write bounded by `WRITE_TIMEOUT`), where the WebSocket reader puts the chunks and
//! results of its requests, each request's waiting chunks bounded by `STREAM_BUFFER_BYTES`; so a
//! slow gateway only ever slows itself. One that listed `heartbeat` and goes silent for
//! `SILENCE_LIMIT` is dropped. The requests of a connection that drops wait for the gateway's
//! `resume` on its next one (`request/table.rs` `orphan`).
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use provider_shared::batch;
use provider_shared::bridge::{codes, ModelResult};
use provider_shared::frame_summary::FrameSummary;
use provider_shared::ipc::{
    IpcCodec, IpcFrame, CAP_HEARTBEAT, CAP_RESUME, IPC_PROTOCOL, IPC_VERSION, SILENCE_LIMIT,
    WRITE_TIMEOUT,
};
use provider_shared::routes::Rebind;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};

use crate::request::{GatewayOut, GatewayQueue, Outgoing, Start, Started};
use crate::socket::OwnedSocket;
use crate::Hub;

/// Which gateway connection a request came from.
pub type ConnId = u64;

const GATEWAY_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a gateway may take to read its last frames once bridge-agent is closing.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);

type Source = SplitStream<Framed<UnixStream, IpcCodec>>;

/// Accepts gateway connections until shutdown begins; then gives the socket up at once.
pub async fn accept_loop(hub: Arc<Hub>, socket: OwnedSocket, tracker: TaskTracker) {
    let mut next_id: ConnId = 0;
    loop {
        let stream = tokio::select! {
            _ = hub.draining.cancelled() => break,
            accepted = socket.listener().accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Usually EMFILE; pausing keeps this loop from spinning.
                    tracing::warn!(%err, "accepting a gateway connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let conn = next_id;
        tracker.spawn(
            connection(hub.clone(), stream, conn, tracker.clone())
                .instrument(info_span!("gateway", conn)),
        );
    }
    socket.release();
    tracing::debug!("no longer accepting gateway connections; the socket is free");
}

async fn connection(hub: Arc<Hub>, stream: UnixStream, conn: ConnId, tracker: TaskTracker) {
    let (mut sink, mut source) = Framed::new(stream, IpcCodec::default()).split();
    let heartbeat = match handshake(&mut source).await {
        Ok(capabilities) => capabilities.iter().any(|c| c == CAP_HEARTBEAT),
        Err(reason) => {
            tracing::info!(%reason, "gateway connection rejected");
            let _ = sink.send(IpcFrame::Reject { reason }).await;
            let _ = sink.close().await;
            return;
        }
    };
    let mut status_rx = hub.status.subscribe();
    let welcome = IpcFrame::Welcome {
        version: IPC_VERSION,
        agent_id: hub.config.agent_id.clone(),
        bridge: status_rx.borrow_and_update().clone(),
        capabilities: vec![CAP_RESUME.to_owned(), CAP_HEARTBEAT.to_owned()],
    };
    if sink.send(welcome).await.is_err() {
        return;
    }
    let _counted = hub.gateway_connected();
    tracing::info!(heartbeat, "gateway connected");
    let (out, out_rx) = mpsc::unbounded_channel();
    // The writer fires this when a write fails or times out: the connection is over.
    let broken = CancellationToken::new();
    tracker.spawn(
        writer(sink, out_rx, status_rx, hub.closing.clone(), broken.clone())
            .instrument(info_span!("gateway_writer", conn)),
    );

    let silence = tokio::time::sleep(SILENCE_LIMIT);
    tokio::pin!(silence);
    loop {
        let frame = tokio::select! {
            frame = source.next() => frame,
            _ = hub.closing.cancelled() => break,
            _ = broken.cancelled() => break,
            () = &mut silence, if heartbeat => {
                tracing::warn!(limit = ?SILENCE_LIMIT, "the gateway sent nothing, not even its heartbeat; dropping its connection");
                break;
            }
        };
        silence
            .as_mut()
            .reset(tokio::time::Instant::now() + SILENCE_LIMIT);
        match frame {
            Some(Ok(IpcFrame::Ping { ts })) => {
                let _ = out.send(Outgoing::plain(IpcFrame::Pong { ts }));
            }
            Some(Ok(IpcFrame::Invoke(invoke))) => {
                let id = invoke.id.clone();
                on_request(&hub, conn, id, Start::Invoke(invoke), &out).await;
            }
            Some(Ok(IpcFrame::Resume {
                id,
                after_chunk_index,
                elapsed_ms,
                invoke,
            })) => {
                if taken_up(&hub, conn, &id, after_chunk_index, &out) {
                    continue;
                }
                let start = Start::Resume {
                    after_chunk_index,
                    elapsed: Duration::from_millis(elapsed_ms),
                    invoke,
                };
                on_request(&hub, conn, id, start, &out).await;
            }
            Some(Ok(IpcFrame::Cancel { id })) => hub.requests.cancel(&id, conn),
            Some(Ok(other)) => {
                let frame = FrameSummary::of(&other);
                tracing::debug!(%frame, "unexpected gateway frame ignored");
            }
            Some(Err(err)) => {
                tracing::warn!(%err, "unreadable gateway frame; closing the connection");
                break;
            }
            None => break,
        }
    }
    let orphaned = hub.requests.gateway_gone(conn);
    tracing::info!(orphaned, "gateway disconnected");
    // The writer ends once this sender and those its requests held are gone.
}

/// A `resume` of a request still served here (its gateway's connection dropped while
/// bridge-agent stayed up): the running request is re-attached to connection `conn`. False when
/// no such request is here, so the resume starts it anew.
fn taken_up(
    hub: &Hub,
    conn: ConnId,
    id: &str,
    after_chunk_index: Option<u64>,
    out: &GatewayOut,
) -> bool {
    if hub.hand_over.is_cancelled() {
        // Left for the next bridge-agent: this connection closes without answering it.
        return true;
    }
    match hub
        .requests
        .reattach(id, conn, out.clone(), after_chunk_index)
    {
        Rebind::Rebound => true,
        Rebind::Unknown => false,
        Rebind::NotOwned => {
            tracing::warn!(%id, "resume of a request this connection already has; ignored");
            true
        }
    }
}

/// The gateway's hello; gives its capabilities.
async fn handshake(source: &mut Source) -> Result<Vec<String>, String> {
    match tokio::time::timeout(GATEWAY_HELLO_TIMEOUT, source.next()).await {
        Ok(Some(Ok(IpcFrame::Hello {
            protocol,
            version,
            capabilities,
            ..
        }))) if protocol == IPC_PROTOCOL && version == IPC_VERSION => Ok(capabilities),
        Ok(Some(Ok(IpcFrame::Hello {
            protocol, version, ..
        }))) => Err(format!(
            "unsupported protocol {protocol:?} version {version}; this bridge-agent speaks {IPC_PROTOCOL:?} version {IPC_VERSION}"
        )),
        Ok(Some(Ok(_))) => Err("the first frame must be hello".into()),
        Ok(Some(Err(err))) => Err(format!("unreadable hello: {err}")),
        Ok(None) => Err("closed before hello".into()),
        Err(_) => Err(format!("no hello within {GATEWAY_HELLO_TIMEOUT:?}")),
    }
}

async fn on_request(hub: &Hub, conn: ConnId, id: String, start: Start, out: &GatewayOut) {
    let refuse = |code: &str, message: &str| {
        crate::metrics::count_request(crate::metrics::OutcomeLabel::Error);
        let result = IpcFrame::Result(ModelResult::error(&id, code, message));
        let _ = out.send(Outgoing::plain(result));
    };
    if hub.hand_over.is_cancelled() {
        // Not answered: when this connection closes the gateway sends it to the next
        // bridge-agent with its `resume`.
        tracing::info!(%id, "request left for the next bridge-agent");
        return;
    }
    if hub.draining.is_cancelled() {
        refuse(codes::SHUTTING_DOWN, "bridge-agent is shutting down");
        return;
    }
    match hub.requests.start(conn, out.clone(), id.clone(), start) {
        Started::Taken => {}
        // The WebSocket's queue is full: this gateway's next frames wait behind this one.
        Started::Queue(link, frame) => {
            let _ = link.send(frame).await;
        }
        Started::Duplicate => {
            tracing::warn!(%id, "request refused: a request with this id is in flight");
            refuse(
                codes::DUPLICATE_ID,
                "a request with this id is already in flight",
            );
        }
        Started::LeftForNext => {
            tracing::info!(%id, "request left for the next bridge-agent");
        }
        Started::Stopped(code, message) => {
            tracing::warn!(%id, "request refused: requests are being ended");
            refuse(code, &message);
        }
    }
}

/// Sends queued frames, and the bridge status whenever it changes, to one gateway. A write that
/// fails or takes longer than `WRITE_TIMEOUT` ends the connection (`broken`). Each write carries
/// what is queued already, in one flush (`provider_shared::batch`).
async fn writer<S>(
    mut sink: S,
    mut frames: GatewayQueue,
    mut status: tokio::sync::watch::Receiver<provider_shared::ipc::BridgeStatus>,
    closing: CancellationToken,
    broken: CancellationToken,
) where
    S: futures_util::Sink<IpcFrame> + Unpin,
    S::Error: std::fmt::Display,
{
    // Once closing, a gateway that does not read gets a moment to, then is dropped.
    let gave_up = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSING_FLUSH).await;
    };
    tokio::pin!(gave_up);
    let mut status_open = true;
    loop {
        let frame = tokio::select! {
            biased;
            frame = frames.recv() => match frame {
                Some(frame) => frame.into_frame(),
                None => break,
            },
            changed = status.changed(), if status_open => match changed {
                Ok(()) => IpcFrame::Status(status.borrow_and_update().clone()),
                Err(_) => {
                    status_open = false;
                    continue;
                }
            },
        };
        let more = || frames.try_recv().ok().map(Outgoing::into_frame);
        let batch = batch::write_queued(&mut sink, frame, more, IpcFrame::approx_bytes);
        tokio::select! {
            sent = tokio::time::timeout(WRITE_TIMEOUT, batch) => match sent {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%err, "gateway write failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!(limit = ?WRITE_TIMEOUT, "the gateway stopped reading; dropping its connection");
                    break;
                }
            },
            () = &mut gave_up => {
                tracing::warn!("gateway not reading at shutdown; dropping its connection");
                broken.cancel();
                return;
            }
        }
    }
    broken.cancel();
    tokio::select! {
        _ = sink.close() => {}
        () = &mut gave_up => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use provider_shared::ipc::BridgeStatus;

    fn cancel(id: &str) -> IpcFrame {
        IpcFrame::Cancel { id: id.into() }
    }

    #[tokio::test]
    async fn the_writer_sends_what_is_queued_intact_in_order_and_a_lone_frame_at_once() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (sink, _source) = Framed::new(ours, IpcCodec::default()).split();
        let mut gateway = Framed::new(theirs, IpcCodec::default());
        let (tx, rx) = mpsc::unbounded_channel();
        // More than one batch holds, queued before the writer starts.
        for i in 0..150 {
            tx.send(Outgoing::plain(cancel(&format!("r{i}")))).unwrap();
        }
        let (_status_tx, status_rx) = tokio::sync::watch::channel(BridgeStatus::disconnected());
        let (closing, broken) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(writer(sink, rx, status_rx, closing.clone(), broken.clone()));
        for i in 0..150 {
            let frame = gateway.next().await.unwrap().unwrap();
            assert_eq!(frame, cancel(&format!("r{i}")));
        }
        tx.send(Outgoing::plain(cancel("lone"))).unwrap();
        let lone = tokio::time::timeout(Duration::from_secs(2), gateway.next()).await;
        let lone = lone.expect("a lone frame goes at once").unwrap().unwrap();
        assert_eq!(lone, cancel("lone"));
        drop(tx);
        task.await.unwrap();
        assert!(broken.is_cancelled());
    }
}
