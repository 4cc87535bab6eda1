//! The WebSocket to the MCP bridge: connecting with a handshake deadline, heartbeats, routing
//! inbound frames straight to the requests' gateways (over the shared peer loop,
//! `provider_shared::ws_peer`, and the request table, `request/upstream.rs`), and
//! reconnecting with the shared jittered back-off until the attempts run out.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, AUTHORIZATION};
use provider_shared::backoff::Backoff;
use provider_shared::bridge::{
    codes, negotiate, BridgeFrame, FrameError, ModelResult, CAP_RESULT_AFTER_CHUNKS,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use provider_shared::frame_summary::FrameSummary;
use provider_shared::ipc::LinkState;
use provider_shared::ws_peer::{self, CloseCode, Message};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::metrics;
use crate::request::Link;
use crate::{CurrentWebSocket, Error, Hub};

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
/// Frames waiting to go out on the WebSocket; an IPC reader with an invoke waits when it is full
/// (a control frame waits in a task of its own, one per request at most). Not the bound
/// of mcp-bridge's `OUTBOUND_QUEUE`, the other way, where a full queue ends the request.
const WEBSOCKET_QUEUE: usize = 256;

/// What one read from the WebSocket takes at most. tungstenite zero-fills this much before every
/// read, and its default (128 KiB) cost that on each read of a chunk frame of a few hundred
/// bytes. 8 KiB holds a burst of a few dozen chunk frames; a larger frame is not limited by it
/// (tungstenite reserves a frame's whole length once its header is read, then reads it in pieces
/// of this size).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The reconnect delay's ceiling never grows past this, unless `RECONNECT_DELAY` itself is longer.
const MAX_RECONNECT_CEILING: Duration = Duration::from_secs(60);

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
    let backoff = Backoff::new(hub.config.reconnect_delay(), MAX_RECONNECT_CEILING);
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
                let wait = backoff.delay(n, &mut rand::rng());
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
    // What `hello` says it accepts is what the socket takes: tungstenite's own default frame
    // limit (16 MiB) would refuse a larger answer than the bridge was told it may send.
    let limit = usize::try_from(hub.config.max_frame_bytes.0).unwrap_or(usize::MAX);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(limit))
        .max_message_size(Some(limit))
        .read_buffer_size(READ_BUFFER_BYTES);
    // Small frames go out at once: Nagle's delay would hold chunks back by tens of milliseconds.
    let (mut ws, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
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
            Ok(other) => {
                let frame = FrameSummary::of(&other);
                tracing::debug!(%frame, "frame before welcome ignored");
            }
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
    let (tx, mut rx) = ws_peer::queue::<BridgeFrame>(WEBSOCKET_QUEUE);
    hub.link.send_replace(CurrentWebSocket::Up { protocol });
    // The requests that waited for a connection go out on this one, those carried over from the
    // last one resume here.
    hub.requests.link_up(&Link {
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
    hub.set_state(LinkState::Connected);

    let beat = hub.config.heartbeat_interval();
    let settings = ws_peer::Settings {
        silence: beat * 2,
        tick: beat,
        first_tick: beat,
        send_timeout: hub.config.connection_timeout(),
        goodbye: (CloseCode::Normal, "bridge-agent shutting down".to_owned()),
    };
    let mut peer = LinkHandler {
        hub,
        last_invoke: None,
    };
    let ended = ws_peer::run(&mut ws, &mut peer, &mut rx, &settings, &hub.closing).await;
    let why = match &ended {
        ws_peer::Ended::PeerClosed(frame) => {
            if frame.as_ref().is_some_and(|f| f.code == CloseCode::Size) {
                too_big(hub, peer.last_invoke.take(), max_frame_bytes);
            }
            format!("the bridge closed the connection ({frame:?})")
        }
        ws_peer::Ended::Silent(quiet) => {
            format!("the bridge sent nothing for {quiet:?} (2 × HEARTBEAT_INTERVAL); dropping it")
        }
        other => other.to_string(),
    };
    // Its requests resume on the next one, or end with bridge_disconnected.
    hub.requests.link_down(generation);
    hub.link.send_replace(CurrentWebSocket::Down);
    // What mcp-bridge last said no longer holds once its connection is gone.
    hub.status.send_modify(|s| s.mcp_bridge = None);
    hub.status.send_modify(|s| s.max_frame_bytes = None);
    hub.set_state(LinkState::Disconnected);
    why
}

/// One connection's frames, as the shared peer loop hands them over.
struct LinkHandler<'a> {
    hub: &'a Hub,
    /// The request whose invoke went out last: if the bridge closes with 1009 (too big), it is
    /// the one that caused it.
    last_invoke: Option<String>,
}

impl ws_peer::Handler for LinkHandler<'_> {
    type Out = BridgeFrame;

    fn on_text(&mut self, text: &str) -> ws_peer::Step {
        match on_text(self.hub, text) {
            Some(reply) => ws_peer::Step::Reply(vec![reply]),
            None => ws_peer::Step::Continue,
        }
    }

    fn encode(&mut self, frame: BridgeFrame) -> Message {
        if let BridgeFrame::ModelInvoke(invoke) = &frame {
            self.last_invoke = Some(invoke.id.clone());
        }
        Message::text(frame.to_text())
    }

    /// The heartbeat: a protocol `ping` (answered with `pong`, which records `last_ping`) and a
    /// WebSocket Ping, both of which keep the bridge's silence timer off.
    fn on_tick(&mut self) -> Vec<Message> {
        vec![
            Message::text(BridgeFrame::Ping { ts: unix_millis() }.to_text()),
            Message::Ping(Vec::new().into()),
        ]
    }
}

/// Handles one inbound text frame; returns a reply to send, if any.
fn on_text(hub: &Hub, text: &str) -> Option<Message> {
    match BridgeFrame::parse(text) {
        Ok(BridgeFrame::ModelStreamChunk(chunk)) => hub.requests.on_chunk(chunk),
        Ok(BridgeFrame::ModelResult(result)) => hub.requests.on_result(result),
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
            let frame = FrameSummary::of(&other);
            tracing::warn!(%frame, "unexpected frame from the bridge ignored");
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
    hub.requests.on_result(result);
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
