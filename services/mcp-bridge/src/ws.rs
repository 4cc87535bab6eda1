//! bridge-agent's WebSocket (bridge protocol 2 and 1, docs/PROTOCOL.md §1): token check on the upgrade,
//! `hello`/`welcome`, pings answered, `model_invoke`/`model_cancel` in, chunks and results out,
//! over the peer loop bridge-agent runs too (`provider_shared::ws_peer`).
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{self as axum_ws, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{Sink, Stream, StreamExt};
use provider_shared::bridge::{
    negotiate, BridgeFrame, FrameError, ModelResult, CAP_RESULT_AFTER_CHUNKS, PROTOCOL_VERSION,
    RESUME_PROTOCOL_VERSION,
};
use provider_shared::frame_summary::FrameSummary;
use provider_shared::ws_peer::{self, Bytes, CloseCode, CloseFrame, Message, Outbound, Utf8Bytes};
use serde_json::{json, Value};
use tokio::time::timeout;
use tracing::Instrument;

use crate::broker::AgentInfo;
use crate::metrics;
use crate::queue::Owner;
use crate::state::App;

/// bridge-agent sends `hello` right after connecting.
const BRIDGE_AGENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A send that blocks this long means the peer stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the queue and the polls are looked at for a `bridge_status` that changed.
const REPORT_CHECK: Duration = Duration::from_secs(1);
/// A `bridge_status` goes out at least this often, changed or not, so its reader can tell a
/// current report from a stale one.
const REPORT_EVERY: Duration = Duration::from_secs(10);

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let broker = &app.broker;
    if let Err((why, fingerprint)) = app.bridge_token.check(&headers, addr.ip()) {
        metrics::auth_failed("ws");
        tracing::warn!(%addr, reason = why.as_str(), "bridge-agent connection refused");
        broker.audit.record_repeated(
            "authentication",
            json!({"client_ip": addr.ip().to_string(), "endpoint": "bridge_ws",
                   "credential": "mcp_bridge_token", "key_fingerprint": fingerprint,
                   "success": false, "reason": why.as_str()}),
            &["key_fingerprint"],
        );
        let body = json!({"error": {"message": why.message("MCP_BRIDGE_TOKEN"),
                                     "type": "authentication_error", "code": "invalid_bridge_token"}});
        return (why.status(), Json(body)).into_response();
    }
    if broker.stopping.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "mcp-bridge is shutting down",
        )
            .into_response();
    }
    let tracker = app.tasks.clone();
    let app = app.clone();
    // A frame over the limit closes the connection with 1009; bridge-agent, told the limit in
    // `welcome`, refuses such a request itself before sending it.
    let limit = usize::try_from(broker.config.max_frame_bytes).unwrap_or(usize::MAX);
    let ws = ws.max_frame_size(limit).max_message_size(limit);
    ws.on_upgrade(move |socket| {
        let span = tracing::info_span!("bridge_agent", %addr);
        tracker.track_future(agent_connection(app, socket, addr).instrument(span))
    })
}

async fn agent_connection(app: Arc<App>, socket: WebSocket, addr: SocketAddr) {
    let mut socket = Socket(socket);
    let (agent_id, protocol, result_after_chunks) =
        match timeout(BRIDGE_AGENT_HELLO_TIMEOUT, hello(&mut socket)).await {
            Ok(Ok(agreed)) => agreed,
            Ok(Err(why)) => {
                tracing::warn!(%why, "bridge-agent handshake failed");
                ws_peer::close(&mut socket, CloseCode::Protocol, &why).await;
                return;
            }
            Err(_) => {
                tracing::warn!("no hello within {BRIDGE_AGENT_HELLO_TIMEOUT:?}");
                ws_peer::close(&mut socket, CloseCode::Protocol, "no hello").await;
                return;
            }
        };
    let welcome = BridgeFrame::Welcome {
        protocol,
        bridge_id: Some(app.bridge_id.clone()),
        max_frame_bytes: (protocol >= 2).then_some(app.broker.config.max_frame_bytes),
    };
    let welcome = Message::text(welcome.to_text());
    if ws_peer::send(&mut socket, welcome, SEND_TIMEOUT)
        .await
        .is_err()
    {
        return;
    }
    let broker = &app.broker;
    let owner = broker.agent_connected(AgentInfo {
        agent_id: agent_id.clone(),
        address: addr.to_string(),
        connected: Instant::now(),
    });
    broker.audit.record(
        "authentication",
        json!({"client_ip": addr.ip().to_string(), "endpoint": "bridge_ws", "agent_id": agent_id,
               "credential": if app.bridge_token.required() { "mcp_bridge_token" } else { "none" },
               "success": true}),
    );
    tracing::info!(%agent_id, owner, protocol, "bridge-agent connected");
    let peer = Peer {
        owner,
        agent_id: agent_id.clone(),
        resumable: protocol >= RESUME_PROTOCOL_VERSION && !broker.config.resume_grace.is_zero(),
        result_after_chunks,
    };
    let why = run(&app, &mut socket, &peer).await;
    // On the Redis queue a closing mcp-bridge leaves its requests to the next one bridge-agent
    // reaches, as a vanished connection does.
    let stays = !app.closing.is_cancelled() || broker.shared.is_some();
    if peer.resumable && stays {
        broker.agent_vanished(owner);
    } else {
        broker.agent_disconnected(owner);
    }
    tracing::info!(%agent_id, reason = %why, "bridge-agent disconnected");
}

/// Waits for `hello`; answers pings meanwhile. Returns the agent id, the protocol version both
/// sides speak, and whether it listed `result_after_chunks`.
async fn hello(socket: &mut Socket) -> Result<(String, u32, bool), String> {
    while let Some(msg) = socket.next().await {
        let Message::Text(text) = msg.map_err(|e| e.to_string())? else {
            continue;
        };
        match BridgeFrame::parse(&text) {
            Ok(BridgeFrame::Hello {
                agent_id,
                protocol,
                max_protocol,
                capabilities,
                ..
            }) => {
                let Some(agreed) = negotiate(max_protocol.unwrap_or(protocol).max(protocol)) else {
                    return Err(format!(
                        "bridge protocol {protocol} is not supported (this bridge speaks 1 to {PROTOCOL_VERSION})"
                    ));
                };
                let lean = capabilities.iter().any(|c| c == CAP_RESULT_AFTER_CHUNKS);
                return Ok((agent_id, agreed, lean));
            }
            Ok(BridgeFrame::Ping { ts }) => {
                let pong = Message::text(BridgeFrame::Pong { ts }.to_text());
                ws_peer::send(socket, pong, SEND_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(other) => {
                let frame = FrameSummary::of(&other);
                tracing::debug!(%frame, "frame before hello ignored");
            }
            Err(err) => tracing::debug!(%err, "frame before hello ignored"),
        }
    }
    Err("closed before hello".into())
}

/// One bridge-agent connection, as its requests see it.
struct Peer {
    owner: Owner,
    agent_id: String,
    /// Protocol 2 with a resume grace: its requests outlive the connection.
    resumable: bool,
    /// Listed `result_after_chunks` in its `hello`.
    result_after_chunks: bool,
}

async fn run(app: &App, socket: &mut Socket, peer: &Peer) -> String {
    let (tx, mut rx) = ws_peer::queue::<BridgeFrame>(crate::config::OUTBOUND_QUEUE);
    let silence = app.broker.config.heartbeat_interval * 2;
    let settings = ws_peer::Settings {
        silence,
        tick: REPORT_CHECK,
        // The first report goes out at once.
        first_tick: Duration::ZERO,
        send_timeout: SEND_TIMEOUT,
        goodbye: (CloseCode::Away, "mcp-bridge shutting down".to_owned()),
    };
    let mut connection = AgentHandler {
        app,
        peer,
        tx,
        last_report: None,
    };
    match ws_peer::run(socket, &mut connection, &mut rx, &settings, &app.closing).await {
        ws_peer::Ended::PeerClosed(frame) => format!("closed by bridge-agent ({frame:?})"),
        ws_peer::Ended::Silent(quiet) => {
            format!("nothing received for {quiet:?} (2 × HEARTBEAT_INTERVAL)")
        }
        other => other.to_string(),
    }
}

/// One connection's frames, as the shared peer loop hands them over.
struct AgentHandler<'a> {
    app: &'a App,
    peer: &'a Peer,
    /// Where this connection's requests send their frames.
    tx: Outbound<BridgeFrame>,
    /// The last `bridge_status` sent, and when.
    last_report: Option<(provider_shared::bridge::BridgeReport, Instant)>,
}

impl ws_peer::Handler for AgentHandler<'_> {
    type Out = BridgeFrame;

    fn on_text(&mut self, text: &str) -> ws_peer::Step {
        let replies = on_text(self.app, self.peer, &self.tx, text);
        if replies.is_empty() {
            ws_peer::Step::Continue
        } else {
            ws_peer::Step::Reply(
                replies
                    .into_iter()
                    .map(|frame| Message::text(frame.to_text()))
                    .collect(),
            )
        }
    }

    fn encode(&mut self, frame: BridgeFrame) -> Message {
        Message::text(frame.to_text())
    }

    /// A `bridge_status` when the report changed, or `REPORT_EVERY` after the last one.
    fn on_tick(&mut self) -> Vec<Message> {
        let broker = &self.app.broker;
        let report = broker.activity.report(&broker.status());
        let due = self.last_report.as_ref().is_none_or(|(last, at)| {
            !crate::activity::same(last, &report) || at.elapsed() >= REPORT_EVERY
        });
        if !due {
            return Vec::new();
        }
        self.last_report = Some((report.clone(), Instant::now()));
        vec![Message::text(BridgeFrame::BridgeStatus(report).to_text())]
    }
}

/// Handles one inbound text frame; returns the frames to send back at once (a `pong`, an
/// error result, or the frames a `model_resume` replays).
fn on_text(app: &App, peer: &Peer, tx: &Outbound<BridgeFrame>, text: &str) -> Vec<BridgeFrame> {
    let owner = peer.owner;
    match BridgeFrame::parse(text) {
        Ok(BridgeFrame::ModelInvoke(invoke)) => {
            tracing::info!(id = %invoke.id, session = ?invoke.session_id, "request queued");
            let to_owner = if peer.resumable && app.broker.shared.is_none() {
                let routed = app
                    .broker
                    .resumes
                    .open(&invoke.id, &peer.agent_id, owner, tx.clone());
                // A live id: the queue refuses it, answering on the connection itself.
                routed.unwrap_or_else(|| tx.clone())
            } else {
                tx.clone()
            };
            app.broker
                .invoke(owner, invoke, to_owner, peer.result_after_chunks);
        }
        Ok(BridgeFrame::ModelResume {
            id,
            after_chunk_index,
        }) if peer.resumable => {
            if let Some(shared) = &app.broker.shared {
                shared.command(crate::shared_queue::Command::Resume {
                    owner,
                    agent_id: peer.agent_id.clone(),
                    id,
                    after_chunk_index,
                    to: tx.clone(),
                });
                return Vec::new();
            }
            let resumed = app.broker.resumes.resume(
                &id,
                &peer.agent_id,
                owner,
                tx.clone(),
                after_chunk_index,
            );
            match resumed {
                Ok(replay) => {
                    tracing::info!(%id, ?after_chunk_index, "request resumed");
                    app.broker.reowned(&id, owner);
                    return replay;
                }
                Err(refused) => {
                    tracing::info!(%id, reason = %refused.why, "model_resume refused");
                    let mut result = ModelResult::error(
                        &id,
                        provider_shared::bridge::codes::BRIDGE_DISCONNECTED,
                        refused.why,
                    );
                    if refused.withdrawn {
                        app.broker.withdraw(&id);
                        // Tells bridge-agent the bridge had the request, so it must not send it
                        // afresh (docs/PROTOCOL.md, resume).
                        if let provider_shared::bridge::Outcome::Error { error } =
                            &mut result.outcome
                        {
                            error.details = Some(serde_json::json!({ "withdrawn": true }));
                        }
                    }
                    return vec![BridgeFrame::ModelResult(result)];
                }
            }
        }
        Ok(BridgeFrame::ModelCancel { id }) => app.broker.cancel(owner, &id),
        Ok(BridgeFrame::Ping { ts }) => return vec![BridgeFrame::Pong { ts }],
        Ok(BridgeFrame::Pong { .. }) => {}
        Ok(other) => {
            let frame = FrameSummary::of(&other);
            tracing::warn!(%frame, "unexpected frame ignored");
        }
        Err(FrameError::UnknownType(kind)) => {
            tracing::info!(%kind, "frame of unknown type ignored")
        }
        Err(FrameError::Malformed(err)) => {
            tracing::warn!(%err, "malformed frame ignored");
            // A request we cannot read still gets its one result, so nobody waits for it.
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            if let (Some("model_invoke"), Some(id)) = (v["type"].as_str(), v["id"].as_str()) {
                return vec![BridgeFrame::ModelResult(ModelResult::error(
                    id,
                    "invalid_request",
                    format!("mcp-bridge cannot read this request: {err}"),
                ))];
            }
        }
    }
    Vec::new()
}

/// axum's WebSocket, speaking the shared loop's [`Message`]: axum upgrades the connection (and
/// checks the handshake); the loop is the same as bridge-agent's. axum wraps the same tungstenite
/// (the workspace follows axum's version) in message types of its own whose conversions are
/// private, so each frame's payload is handed across as the `Bytes` it already is: moved, not
/// copied.
struct Socket(WebSocket);

impl Stream for Socket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|next| next.map(|msg| msg.map(from_axum)))
    }
}

impl Sink<Message> for Socket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.0).start_send(to_axum(msg))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

fn from_axum(msg: axum_ws::Message) -> Message {
    match msg {
        axum_ws::Message::Text(text) => Message::Text(utf8(Bytes::from(text))),
        axum_ws::Message::Binary(bytes) => Message::Binary(bytes),
        axum_ws::Message::Ping(bytes) => Message::Ping(bytes),
        axum_ws::Message::Pong(bytes) => Message::Pong(bytes),
        axum_ws::Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
            code: CloseCode::from(f.code),
            reason: utf8(Bytes::from(f.reason)),
        })),
    }
}

fn to_axum(msg: Message) -> axum_ws::Message {
    match msg {
        Message::Text(text) => axum_ws::Message::Text(axum_utf8(Bytes::from(text))),
        Message::Binary(bytes) => axum_ws::Message::Binary(bytes),
        Message::Ping(bytes) => axum_ws::Message::Ping(bytes),
        Message::Pong(bytes) => axum_ws::Message::Pong(bytes),
        Message::Close(frame) => axum_ws::Message::Close(frame.map(|f| axum_ws::CloseFrame {
            code: f.code.into(),
            reason: axum_utf8(Bytes::from(f.reason)),
        })),
        // Raw frames are tungstenite's own; the loop never sends one.
        Message::Frame(frame) => axum_ws::Message::Binary(frame.into_payload()),
    }
}

/// Text that was UTF-8 on the other side, as tungstenite's text, without a copy (the check
/// cannot fail; were it to, the text would be lost rather than the process).
fn utf8(bytes: Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(bytes).unwrap_or_default()
}

/// The same towards axum's text type.
fn axum_utf8(bytes: Bytes) -> axum_ws::Utf8Bytes {
    axum_ws::Utf8Bytes::try_from(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_to_axum_and_back_without_a_copy() {
        let text = Message::text("{\"type\":\"model_stream_chunk\"}".repeat(100));
        let Message::Text(ours) = &text else {
            unreachable!("built as text")
        };
        let at = ours.as_str().as_ptr();
        let axum_ws::Message::Text(theirs) = to_axum(text.clone()) else {
            panic!("text stays text")
        };
        assert_eq!(theirs.as_str().as_ptr(), at, "the same bytes, not a copy");
        let back = from_axum(axum_ws::Message::Text(theirs));
        assert_eq!(back, text);
        let Message::Text(back) = back else {
            panic!("text stays text")
        };
        assert_eq!(back.as_str().as_ptr(), at, "the same bytes, not a copy");

        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Size,
            reason: "message too big".into(),
        }));
        assert_eq!(from_axum(to_axum(close.clone())), close);
        let ping = Message::Ping(Bytes::from_static(b"p"));
        assert_eq!(from_axum(to_axum(ping.clone())), ping);
    }
}
