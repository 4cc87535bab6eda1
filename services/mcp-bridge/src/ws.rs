//! bridge-agent's WebSocket (bridge protocol 2 and 1, docs/PROTOCOL.md §1): token check on the upgrade,
//! `hello`/`welcome`, pings answered, `model_invoke`/`model_cancel` in, chunks and results out.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use provider_shared::bridge::{
    negotiate, BridgeFrame, FrameError, ModelResult, CAP_RESULT_AFTER_CHUNKS, PROTOCOL_VERSION,
    RESUME_PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use tracing::Instrument;

use crate::app::App;
use crate::broker::AgentInfo;
use crate::metrics;
use crate::queue::Owner;

/// bridge-agent sends `hello` right after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
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
    if let Err((why, fingerprint)) = app.bridge_token.check(&headers) {
        metrics::auth_failed("ws");
        tracing::warn!(%addr, reason = why.as_str(), "bridge-agent connection refused: bad token");
        broker.audit.record(
            "authentication",
            json!({"client_ip": addr.ip().to_string(), "endpoint": "bridge_ws",
                   "credential": "mcp_bridge_token", "key_fingerprint": fingerprint,
                   "success": false, "reason": why.as_str()}),
        );
        let body = json!({"error": {"message": format!("{} MCP_BRIDGE_TOKEN", why.as_str()),
                                     "type": "authentication_error", "code": "invalid_bridge_token"}});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
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
        tracker.track_future(serve(app, socket, addr).instrument(span))
    })
}

async fn serve(app: Arc<App>, mut socket: WebSocket, addr: SocketAddr) {
    let (agent_id, protocol, result_after_chunks) =
        match timeout(HELLO_TIMEOUT, hello(&mut socket)).await {
            Ok(Ok(agreed)) => agreed,
            Ok(Err(why)) => {
                tracing::warn!(%why, "bridge-agent handshake failed");
                close(&mut socket, 1002, why).await;
                return;
            }
            Err(_) => {
                tracing::warn!("no hello within {HELLO_TIMEOUT:?}");
                close(&mut socket, 1002, "no hello".into()).await;
                return;
            }
        };
    let welcome = BridgeFrame::Welcome {
        protocol,
        bridge_id: Some(app.bridge_id.clone()),
        max_frame_bytes: (protocol >= 2).then_some(app.broker.config.max_frame_bytes),
    };
    if socket
        .send(Message::Text(welcome.to_text().into()))
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
    if peer.resumable && !app.closing.is_cancelled() {
        broker.agent_vanished(owner);
    } else {
        broker.agent_disconnected(owner);
    }
    tracing::info!(%agent_id, reason = %why, "bridge-agent disconnected");
}

/// Waits for `hello`; answers pings meanwhile. Returns the agent id, the protocol version both
/// sides speak, and whether it listed `result_after_chunks`.
async fn hello(socket: &mut WebSocket) -> Result<(String, u32, bool), String> {
    while let Some(msg) = socket.recv().await {
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
                let pong = BridgeFrame::Pong { ts }.to_text();
                socket
                    .send(Message::Text(pong.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            other => tracing::debug!(?other, "frame before hello ignored"),
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

async fn run(app: &App, socket: &mut WebSocket, peer: &Peer) -> String {
    let broker = &app.broker;
    let (tx, mut rx) = mpsc::unbounded_channel::<BridgeFrame>();
    let silence_limit = broker.config.heartbeat_interval * 2;
    let silence = sleep(silence_limit);
    tokio::pin!(silence);
    let mut report_tick = tokio::time::interval(REPORT_CHECK);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report: Option<(provider_shared::bridge::BridgeReport, Instant)> = None;
    loop {
        tokio::select! {
            _ = report_tick.tick() => {
                let report = broker.activity.report(&broker.status());
                let due = last_report.as_ref().is_none_or(|(last, at)| {
                    !crate::activity::same(last, &report) || at.elapsed() >= REPORT_EVERY
                });
                if due {
                    last_report = Some((report.clone(), Instant::now()));
                    if let Err(err) = send(socket, BridgeFrame::BridgeStatus(report)).await {
                        return err;
                    }
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(msg)) => {
                    silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
                    match msg {
                        Message::Text(text) => {
                            if let Some(reply) = on_text(app, peer, &tx, &text) {
                                if let Err(err) = send(socket, reply).await {
                                    return err;
                                }
                            }
                        }
                        Message::Close(frame) => return format!("closed by bridge-agent ({frame:?})"),
                        _ => {}
                    }
                }
                Some(Err(err)) => return format!("read failed: {err}"),
                None => return "connection closed".into(),
            },
            Some(frame) = rx.recv() => {
                if let Err(err) = send(socket, frame).await {
                    return err;
                }
            }
            _ = &mut silence => {
                return format!("nothing received for {silence_limit:?} (2 × HEARTBEAT_INTERVAL)");
            }
            _ = app.closing.cancelled() => {
                // Results of requests ended at shutdown go out before the Close.
                while let Ok(frame) = rx.try_recv() {
                    if send(socket, frame).await.is_err() {
                        break;
                    }
                }
                close(socket, 1001, "mcp-bridge shutting down".into()).await;
                return "shutting down".into();
            }
        }
    }
}

fn on_text(
    app: &App,
    peer: &Peer,
    tx: &mpsc::UnboundedSender<BridgeFrame>,
    text: &str,
) -> Option<BridgeFrame> {
    let owner = peer.owner;
    match BridgeFrame::parse(text) {
        Ok(BridgeFrame::ModelInvoke(invoke)) => {
            tracing::info!(id = %invoke.id, session = ?invoke.session_id, "request queued");
            let to_owner = if peer.resumable {
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
            let resumed = app.broker.resumes.resume(
                &id,
                &peer.agent_id,
                owner,
                tx.clone(),
                after_chunk_index,
            );
            match resumed {
                Ok(()) => {
                    tracing::info!(%id, ?after_chunk_index, "request resumed");
                    app.broker.reowned(&id, owner);
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
                    return Some(BridgeFrame::ModelResult(result));
                }
            }
        }
        Ok(BridgeFrame::ModelCancel { id }) => app.broker.cancel(owner, &id),
        Ok(BridgeFrame::Ping { ts }) => return Some(BridgeFrame::Pong { ts }),
        Ok(BridgeFrame::Pong { .. }) => {}
        Ok(other) => tracing::warn!(frame = ?other, "unexpected frame ignored"),
        Err(FrameError::UnknownType(kind)) => {
            tracing::info!(%kind, "frame of unknown type ignored")
        }
        Err(FrameError::Malformed(err)) => {
            tracing::warn!(%err, "malformed frame ignored");
            // A request we cannot read still gets its one result, so nobody waits for it.
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            if let (Some("model_invoke"), Some(id)) = (v["type"].as_str(), v["id"].as_str()) {
                return Some(BridgeFrame::ModelResult(ModelResult::error(
                    id,
                    "invalid_request",
                    format!("mcp-bridge cannot read this request: {err}"),
                )));
            }
        }
    }
    None
}

async fn send(socket: &mut WebSocket, frame: BridgeFrame) -> Result<(), String> {
    match timeout(
        SEND_TIMEOUT,
        socket.send(Message::Text(frame.to_text().into())),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("send failed: {err}")),
        Err(_) => Err(format!("send blocked for {SEND_TIMEOUT:?}")),
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}
