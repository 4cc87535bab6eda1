//! The WebSocket to the MCP bridge: connecting with a handshake deadline, heartbeats, routing
//! inbound frames to requests, and reconnecting with backoff until the attempts run out.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, AUTHORIZATION};
use provider_shared::bridge::{
    codes, negotiate, BridgeFrame, FrameError, ModelResult, CAP_RESULT_AFTER_CHUNKS,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use provider_shared::ipc::LinkState;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::hub::{Hub, Link};
use crate::metrics;
use crate::table::{Event, Undeliverable};
use crate::{backoff, Error};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `result_after_chunks`: the gateway takes a streamed answer from its chunks and reads the
/// result's message only when no chunk carried output, so the bridge need not repeat the text.
const CAPABILITIES: &[&str] = &[
    "stream",
    "cancel",
    "tools",
    "reasoning",
    CAP_RESULT_AFTER_CHUNKS,
];
/// Frames waiting to go out on the WebSocket; request tasks wait when it is full.
const OUTBOUND_QUEUE: usize = 256;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("no welcome within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error(
        "the bridge answered with protocol {0}; this bridge-agent speaks 1 to {PROTOCOL_VERSION}"
    )]
    Protocol(u32),
    #[error("the bridge closed the connection before its welcome")]
    Closed,
    #[error("MCP_BRIDGE_TOKEN cannot be sent as a header")]
    BadToken,
}

/// Keeps the link up until `closing`; an error once `RECONNECT_ATTEMPTS` attempts in a row failed.
pub async fn supervise(hub: Arc<Hub>) -> Result<(), Error> {
    let attempts = hub.config.reconnect_attempts.0;
    let mut failures: u64 = 0;
    let mut generation: u64 = 0;
    while !hub.closing.is_cancelled() {
        hub.set_state(LinkState::Connecting);
        let attempt = tokio::select! {
            res = connect(&hub) => res,
            _ = hub.closing.cancelled() => break,
        };
        match attempt {
            Ok(Welcomed {
                ws,
                bridge_id,
                protocol,
                max_frame_bytes,
            }) => {
                failures = 0;
                generation += 1;
                if generation > 1 {
                    ::metrics::counter!(metrics::WS_RECONNECTS).increment(1);
                }
                tracing::info!(url = %hub.config.mcp_bridge_url, ?bridge_id, protocol, max_frame_bytes,
                    "connected to the MCP bridge");
                let welcomed = Welcomed {
                    ws,
                    bridge_id,
                    protocol,
                    max_frame_bytes,
                };
                let why = run_connection(&hub, welcomed, generation).await;
                tracing::warn!(reason = %why, "MCP bridge connection ended");
                // An established connection that drops is retried at once.
            }
            Err(err) => {
                failures += 1;
                ::metrics::counter!(metrics::WS_CONNECT_FAILURES).increment(1);
                hub.set_state(LinkState::Disconnected);
                tracing::warn!(url = %hub.config.mcp_bridge_url, attempt = failures, of = attempts, %err,
                    "could not connect to the MCP bridge");
                if failures >= attempts {
                    return Err(Error::ReconnectExhausted {
                        url: hub.config.mcp_bridge_url.to_string(),
                        attempts,
                        last: err.to_string(),
                    });
                }
                let n = u32::try_from(failures).unwrap_or(u32::MAX);
                let wait = backoff::delay(hub.config.reconnect_delay(), n, &mut rand::rng());
                tracing::debug!(?wait, "waiting before the next attempt");
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = hub.closing.cancelled() => break,
                }
            }
        }
    }
    hub.set_state(LinkState::Disconnected);
    Ok(())
}

/// An established connection, as the handshake agreed it.
struct Welcomed {
    ws: Ws,
    bridge_id: Option<String>,
    protocol: u32,
    /// The lower of ours and the bridge's (when it said one).
    max_frame_bytes: u64,
}

/// TCP, WebSocket upgrade, our hello and the bridge's welcome, all within CONNECTION_TIMEOUT.
async fn connect(hub: &Hub) -> Result<Welcomed, ConnectError> {
    let limit = hub.config.connection_timeout();
    timeout(limit, handshake(hub))
        .await
        .unwrap_or(Err(ConnectError::Timeout(limit)))
}

async fn handshake(hub: &Hub) -> Result<Welcomed, ConnectError> {
    let mut request = hub.config.mcp_bridge_url.0.as_str().into_client_request()?;
    if let Some(token) = &hub.config.mcp_bridge_token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0))
            .map_err(|_| ConnectError::BadToken)?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    // Small frames go out at once: Nagle's delay would hold chunks back by tens of milliseconds.
    let (mut ws, _response) =
        tokio_tungstenite::connect_async_with_config(request, None, true).await?;
    // `protocol` stays 1, so that a bridge that knows only 1 (and checks it) still answers.
    let hello = BridgeFrame::Hello {
        agent_id: hub.config.agent_id.clone(),
        protocol: MIN_PROTOCOL_VERSION,
        max_protocol: Some(PROTOCOL_VERSION),
        capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        max_frame_bytes: Some(hub.config.max_frame_bytes.0),
    };
    ws.send(Message::text(hello.to_text())).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        match BridgeFrame::parse(&text) {
            Ok(BridgeFrame::Welcome {
                protocol,
                bridge_id,
                max_frame_bytes,
            }) => {
                // The bridge answers with the version both speak: never above ours.
                if negotiate(protocol) != Some(protocol) {
                    return Err(ConnectError::Protocol(protocol));
                }
                let ours = hub.config.max_frame_bytes.0;
                return Ok(Welcomed {
                    ws,
                    bridge_id,
                    protocol,
                    max_frame_bytes: max_frame_bytes.map_or(ours, |theirs| theirs.min(ours)),
                });
            }
            Ok(BridgeFrame::Ping { ts }) => {
                ws.send(Message::text(BridgeFrame::Pong { ts }.to_text()))
                    .await?;
            }
            Ok(other) => tracing::debug!(?other, "frame before welcome ignored"),
            Err(err) => tracing::debug!(%err, "frame before welcome ignored"),
        }
    }
    Err(ConnectError::Closed)
}

/// Serves one established connection until it drops, goes silent, or `closing`; says why.
async fn run_connection(hub: &Hub, welcomed: Welcomed, generation: u64) -> String {
    let Welcomed {
        mut ws,
        bridge_id,
        protocol,
        max_frame_bytes,
    } = welcomed;
    let (tx, mut rx) = mpsc::channel::<BridgeFrame>(OUTBOUND_QUEUE);
    hub.link.send_replace(Link::Up {
        generation,
        tx,
        protocol,
        max_frame_bytes,
    });
    hub.status.send_modify(|s| {
        s.bridge_id = bridge_id;
        s.reconnects = generation - 1;
        s.max_frame_bytes = Some(max_frame_bytes);
    });
    // The request whose invoke went out last: if the bridge closes with 1009 (too big), it is
    // the one that caused it.
    let mut last_invoke: Option<String> = None;
    hub.set_state(LinkState::Connected);

    let beat = hub.config.heartbeat_interval();
    let send_limit = hub.config.connection_timeout();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let silence = sleep(beat * 2);
    tokio::pin!(silence);

    let why = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(msg)) => {
                    silence.as_mut().reset(Instant::now() + beat * 2);
                    if let Message::Close(frame) = &msg {
                        if frame.as_ref().is_some_and(|f| f.code == CloseCode::Size) {
                            too_big(hub, last_invoke.take(), max_frame_bytes);
                        }
                        break format!("the bridge closed the connection ({frame:?})");
                    }
                    if let Message::Text(text) = msg {
                        if let Some(reply) = on_text(hub, &text) {
                            if let Err(err) = send(&mut ws, reply, send_limit).await {
                                break err;
                            }
                        }
                    }
                }
                Some(Err(err)) => break format!("read failed: {err}"),
                None => break "the connection closed".to_owned(),
            },
            Some(frame) = rx.recv() => {
                if let BridgeFrame::ModelInvoke(invoke) = &frame {
                    last_invoke = Some(invoke.id.clone());
                }
                if let Err(err) = send(&mut ws, Message::text(frame.to_text()), send_limit).await {
                    break err;
                }
            }
            _ = heartbeat.tick() => {
                let ping = Message::text(BridgeFrame::Ping { ts: unix_millis() }.to_text());
                if let Err(err) = send(&mut ws, ping, send_limit).await {
                    break err;
                }
                if let Err(err) = send(&mut ws, Message::Ping(Vec::new().into()), send_limit).await {
                    break err;
                }
            }
            _ = &mut silence => {
                break format!("the bridge sent nothing for {:?} (2 × HEARTBEAT_INTERVAL); dropping it",
                    beat * 2);
            }
            _ = hub.closing.cancelled() => {
                // Cancels queued by requests ended at shutdown go out before the Close.
                while let Ok(frame) = rx.try_recv() {
                    if send(&mut ws, Message::text(frame.to_text()), send_limit).await.is_err() {
                        break;
                    }
                }
                close(&mut ws).await;
                break "shutting down".to_owned();
            }
        }
    };
    // Request tasks watching this generation resume on the next one, or end with
    // bridge_disconnected.
    hub.link.send_replace(Link::Down);
    // What mcp-bridge last said no longer holds once its connection is gone.
    hub.status.send_modify(|s| s.mcp_bridge = None);
    hub.status.send_modify(|s| s.max_frame_bytes = None);
    hub.set_state(LinkState::Disconnected);
    why
}

/// Handles one inbound text frame; returns a reply to send, if any.
fn on_text(hub: &Hub, text: &str) -> Option<Message> {
    match BridgeFrame::parse(text) {
        Ok(BridgeFrame::ModelStreamChunk(chunk)) => {
            let id = chunk.id.clone();
            deliver(hub, &id, Event::Chunk(chunk));
        }
        Ok(BridgeFrame::ModelResult(result)) => {
            let id = result.id.clone();
            deliver(hub, &id, Event::Result(result));
        }
        Ok(BridgeFrame::Ping { ts }) => {
            return Some(Message::text(BridgeFrame::Pong { ts }.to_text()));
        }
        Ok(BridgeFrame::Pong { .. }) => {
            let now = rfc3339_now();
            hub.status.send_modify(|s| s.last_ping = now);
        }
        Ok(BridgeFrame::BridgeStatus(report)) => {
            // Passed on to the gateways inside the next IPC `status` (docs/PROTOCOL.md §2).
            hub.status.send_modify(|s| s.mcp_bridge = Some(report));
        }
        Ok(other) => {
            tracing::warn!(frame = ?other, "unexpected frame from the bridge ignored");
            metrics::frame_dropped("unexpected");
        }
        Err(FrameError::UnknownType(kind)) => {
            tracing::info!(%kind, "bridge frame of unknown type ignored");
            metrics::frame_dropped("unknown_type");
        }
        Err(FrameError::Malformed(err)) => {
            tracing::warn!(%err, "malformed bridge frame ignored");
            metrics::frame_dropped("malformed");
        }
    }
    None
}

/// The bridge refused a frame as too big: the request that sent it ends with
/// `request_too_large`; the others resume on the next connection.
fn too_big(hub: &Hub, id: Option<String>, limit: u64) {
    let Some(id) = id else { return };
    tracing::warn!(%id, "the bridge closed the connection with 1009 (message too big) after this request");
    let result = ModelResult::error(
        &id,
        codes::REQUEST_TOO_LARGE,
        format!("the MCP bridge refused this request as too large for one frame (it closed the connection with 1009); bridge-agent's limit is {limit} bytes (LOCAL_PROVIDER_MAX_FRAME_BYTES): lower it to the bridge's, or shorten the conversation"),
    );
    deliver(hub, &id, Event::Result(result));
}

fn deliver(hub: &Hub, id: &str, event: Event) {
    match hub.requests.route(id, event) {
        Ok(()) => {}
        Err(Undeliverable::UnknownId) => {
            tracing::warn!(%id, "bridge frame for an unknown request id dropped");
            metrics::frame_dropped("unknown_id");
        }
        Err(Undeliverable::AfterResult) => {
            tracing::debug!(%id, "bridge frame after the request's result dropped");
            metrics::frame_dropped("after_result");
        }
    }
}

async fn send(ws: &mut Ws, msg: Message, limit: Duration) -> Result<(), String> {
    match timeout(limit, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("send failed: {err}")),
        Err(_) => Err(format!("send blocked for {limit:?}")),
    }
}

/// Sends a Close frame and waits briefly for the bridge to answer it.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bridge-agent shutting down".into(),
    };
    let _ = timeout(Duration::from_secs(1), async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn rfc3339_now() -> Option<String> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}
