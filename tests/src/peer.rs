//! A scripted MCP bridge: the WebSocket peer of bridge-agent (docs/PROTOCOL.md §1), for tests.
//!
//! It records what it receives and answers each `model_invoke` according to directives in the
//! text of the LAST user message (for a `completion`, in its prompt):
//!
//! | directive | effect |
//! |---|---|
//! | (none) | stream `"echo: <text>"` as content chunks split after spaces, then an ok result |
//! | `[[reasoning]]` | first two `reasoning_content` chunks (`"thinking"`, `"…"`) |
//! | `[[tool]]` | an OpenAI-style `get_weather` tool call (`{"city":"Paris"}`), finish `tool_calls` |
//! | `[[tool:NAME]]` | the same call, of the tool named `NAME` |
//! | `[[chunks:N]]` | exactly N content chunks (the text is padded with `" ."` when too short) |
//! | `[[bulk:N]]` | N content chunks of 4 KiB each (`"x"` repeated), as fast as they go |
//! | `[[delay:MS]]` / `[[slow:MS]]` | wait before the first chunk / between chunks |
//! | `[[usage]]` | usage {11, 7, 18} in the result |
//! | `[[fail]]` | error result `agent_error` / `scripted failure` |
//! | `[[drop]]` | one chunk, then the whole connection is dropped |
//! | `[[hang]]` | never answer (a `model_cancel` ends it quietly) |
//! | `[[silent]]` | the peer goes silent from now on (see [`ScriptedPeer::set_silent`]) |
//! | `[[held]]` | after its first chunk (unstreamed: before its result), wait while the peer holds (see [`ScriptedPeer::hold`]) |
//!
//! Directives are removed and the rest trimmed to make `<text>`. Requests whose
//! `parameters.stream` is not `true` get no chunks, only the result.
//!
//! With a welcome of protocol 2 ([`ScriptedPeer::set_welcome_protocol`]) the peer resumes as
//! mcp-bridge does: a request's script outlives its connection, every frame it sent is kept, and
//! `model_resume` on any later connection re-attaches it and replays what came after the chunk
//! named. [`ScriptedPeer::limit_frames`] makes it refuse larger frames with a 1009 close.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use provider_shared::bridge::{
    BridgeFrame, Delta, FunctionDelta, ModelInvoke, ModelResult, Outcome, Payload, ResultBody,
    ResultChoice, StreamChunk, ToolCallDelta, Usage,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Everything the peer has received, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// WebSocket upgrades accepted (including ones refused before welcome).
    pub connections: usize,
    /// Connections currently open.
    pub open: usize,
    /// The `Authorization` header of every upgrade request, accepted or not.
    pub authorization: Vec<Option<String>>,
    pub hellos: Vec<Value>,
    pub invokes: Vec<ModelInvoke>,
    pub cancels: Vec<String>,
    /// `ts` of application `ping` frames.
    pub pings: Vec<u64>,
    pub pongs: Vec<u64>,
    /// WebSocket-level Ping frames.
    pub ws_pings: usize,
    /// WebSocket Close frames.
    pub closes: usize,
    /// Text frames the peer did not expect (unknown types, malformed).
    pub other: Vec<String>,
    /// `model_resume` frames: id and `after_chunk_index`.
    pub resumes: Vec<(String, Option<u64>)>,
    /// Connections closed with 1009 because a frame was over the limit.
    pub too_big: usize,
    /// `model_stream_chunk` frames written to a connection (replays included): how far the
    /// streams have got, for a test that waits for them to be under way.
    pub chunks_sent: usize,
}

struct Conn {
    out: mpsc::UnboundedSender<Outgoing>,
    kill: CancellationToken,
}

struct Outgoing {
    msg: Message,
    sent: Option<oneshot::Sender<()>>,
    /// A `model_stream_chunk`: counted in [`Record::chunks_sent`] once written.
    chunk: bool,
}

impl Outgoing {
    fn frame(frame: &BridgeFrame, sent: Option<oneshot::Sender<()>>) -> Self {
        Self {
            msg: Message::text(frame.to_text()),
            sent,
            chunk: matches!(frame, BridgeFrame::ModelStreamChunk(_)),
        }
    }
}

struct Shared {
    record: watch::Sender<Record>,
    silent: watch::Sender<bool>,
    /// While true, scripts of `[[held]]` requests wait before their first frame.
    held: watch::Sender<bool>,
    refuse: AtomicBool,
    expected_token: Mutex<Option<String>>,
    welcome_protocol: AtomicU32,
    conns: Mutex<HashMap<u64, Conn>>,
    /// The largest frame taken, and whether `welcome` says so.
    frame_limit: Mutex<Option<(u64, bool)>>,
    /// Protocol 2: a `model_resume` of a held request is refused and the request withdrawn, as
    /// mcp-bridge does when the chunks after `after_chunk_index` are no longer held.
    withdraw_on_resume: AtomicBool,
    /// Protocol 2: a `model_resume` is answered as by an mcp-bridge that never got the request.
    forget_on_resume: AtomicBool,
    /// Protocol 2: every request's script and frames, by id.
    journals: Mutex<HashMap<String, Journal>>,
    /// Stops every script when the peer stops.
    stopped: CancellationToken,
}

/// One request's frames so far and where they go now (protocol 2).
struct Journal {
    frames: Vec<BridgeFrame>,
    out: Option<mpsc::UnboundedSender<Outgoing>>,
    conn: u64,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn note(&self, f: impl FnOnce(&mut Record)) {
        self.record.send_modify(f);
    }

    fn broadcast(&self, msg: &Message) {
        for conn in lock(&self.conns).values() {
            let _ = conn.out.send(Outgoing {
                msg: msg.clone(),
                sent: None,
                chunk: false,
            });
        }
    }
}

pub const BRIDGE_ID: &str = "scripted-peer";

/// The scripted bridge. Dropping it stops it.
pub struct ScriptedPeer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    accept: Option<JoinHandle<()>>,
}

impl ScriptedPeer {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Listens on 127.0.0.1:`port` (to come back on the same address after [`Self::stop`]).
    pub async fn start_on(port: u16) -> Self {
        Self::start_on_addr(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// Listens on `addr` (the `scripted-peer` program binds all addresses of its container).
    pub async fn start_on_addr(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("scripted peer cannot bind {addr}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("scripted peer has no address: {e}"));
        let shared = Arc::new(Shared {
            record: watch::Sender::new(Record::default()),
            silent: watch::Sender::new(false),
            held: watch::Sender::new(false),
            refuse: AtomicBool::new(false),
            expected_token: Mutex::new(None),
            welcome_protocol: AtomicU32::new(1),
            conns: Mutex::new(HashMap::new()),
            frame_limit: Mutex::new(None),
            withdraw_on_resume: AtomicBool::new(false),
            forget_on_resume: AtomicBool::new(false),
            journals: Mutex::new(HashMap::new()),
            stopped: CancellationToken::new(),
        });
        let stop = shared.stopped.clone();
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Self {
            addr,
            shared,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A snapshot of everything received so far.
    pub fn record(&self) -> Record {
        self.shared.record.borrow().clone()
    }

    /// Waits until `pred` holds for the record; the record then, or `None` on timeout.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Record) -> bool,
    ) -> Option<Record> {
        let mut rx = self.shared.record.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(pred)).await;
        match waited {
            Ok(Ok(record)) => Some(record.clone()),
            _ => None,
        }
    }

    /// The first `hello` frame received, waiting for it.
    pub async fn wait_for_hello(&self, timeout: Duration) -> Option<Value> {
        self.wait_until(timeout, |r| !r.hellos.is_empty())
            .await
            .and_then(|r| r.hellos.first().cloned())
    }

    /// Waits until `n` connections were accepted in total.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.connections >= n)
            .await
            .is_some()
    }

    /// Waits until exactly `n` connections are open.
    pub async fn wait_for_open(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.open == n).await.is_some()
    }

    pub async fn wait_for_invoke(&self, id: &str, timeout: Duration) -> Option<ModelInvoke> {
        self.wait_until(timeout, |r| r.invokes.iter().any(|i| i.id == id))
            .await
            .and_then(|r| r.invokes.into_iter().find(|i| i.id == id))
    }

    pub async fn wait_for_cancel(&self, id: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.cancels.iter().any(|c| c == id))
            .await
            .is_some()
    }

    /// Waits for `n` application pings and `n` WebSocket pings.
    pub async fn wait_for_pings(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.pings.len() >= n && r.ws_pings >= n)
            .await
            .is_some()
    }

    /// The messages and parameters of the last chat the peer received (a completion's
    /// parameters, with no messages).
    pub fn last_asked(&self) -> (Vec<Value>, serde_json::Map<String, Value>) {
        let invoke = self
            .record()
            .invokes
            .pop()
            .unwrap_or_else(|| panic!("no request reached the peer"));
        asked(&invoke.payload)
    }

    pub fn invokes(&self) -> Vec<ModelInvoke> {
        self.record().invokes
    }

    pub fn cancels(&self) -> Vec<String> {
        self.record().cancels
    }

    pub fn hellos(&self) -> Vec<Value> {
        self.record().hellos
    }

    pub fn authorization_headers(&self) -> Vec<Option<String>> {
        self.record().authorization
    }

    /// Drops every open connection at once, without a Close frame.
    pub fn drop_connections(&self) {
        for (_, conn) in lock(&self.shared.conns).drain() {
            conn.kill.cancel();
        }
    }

    /// While silent the peer neither reads nor sends anything on any connection (so WebSocket
    /// pings go unanswered too) and new connections get no welcome.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.send_replace(silent);
    }

    /// While held, a request whose text says `[[held]]` waits after its first chunk (it is in
    /// flight and under way), whatever happens to its connection; releasing lets every such
    /// script go on. A test uses it to have a request in flight exactly while
    /// a fault happens, however slow the machine.
    pub fn hold(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    /// While refusing, new connections are closed right after the upgrade, before any welcome.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Upgrades without `Authorization: Bearer <token>` get 401 while a token is set.
    pub fn expected_token(&self, token: Option<String>) {
        *lock(&self.shared.expected_token) = token;
    }

    /// The protocol number put in `welcome` (1 unless changed).
    pub fn set_welcome_protocol(&self, protocol: u32) {
        self.shared
            .welcome_protocol
            .store(protocol, Ordering::SeqCst);
    }

    /// From now on a `model_resume` of a request the peer holds is refused (`bridge_disconnected`,
    /// `details.withdrawn`) and the request withdrawn, as mcp-bridge does once the chunks after
    /// `after_chunk_index` are past its `STREAM_BUFFER_BYTES`.
    pub fn withdraw_on_resume(&self, withdraw: bool) {
        self.shared
            .withdraw_on_resume
            .store(withdraw, Ordering::SeqCst);
    }

    /// From now on a `model_resume` is answered as by an mcp-bridge that never got the request
    /// (`bridge_disconnected`, no `details`), and the request it held is forgotten.
    pub fn forget_on_resume(&self, forget: bool) {
        self.shared.forget_on_resume.store(forget, Ordering::SeqCst);
    }

    /// Frames larger than `bytes` close the connection with 1009 (message too big), as Python's
    /// `websockets` does past its 1 MiB default; `announce` puts the limit in `welcome`.
    /// Applies to connections made after the call.
    pub fn limit_frames(&self, bytes: u64, announce: bool) {
        *lock(&self.shared.frame_limit) = Some((bytes, announce));
    }

    /// Sends a text frame, verbatim, on every open connection.
    pub fn send_raw(&self, text: &str) {
        self.shared.broadcast(&Message::text(text));
    }

    /// Sends `frame` on every open connection.
    pub fn send_frame(&self, frame: &BridgeFrame) {
        self.send_raw(&frame.to_text());
    }

    /// Sends a content chunk for `id` (which may be unknown to bridge-agent) on every connection.
    pub fn send_chunk_for(&self, id: &str) {
        self.send_frame(&BridgeFrame::ModelStreamChunk(StreamChunk {
            id: id.into(),
            chunk_index: 0,
            delta: Delta {
                content: Some("stray".into()),
                ..Delta::default()
            },
            finish_reason: None,
        }));
    }

    /// Stops listening and drops every connection; the port is free when this returns.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        self.drop_connections();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.drop_connections();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut next: u64 = 0;
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        next += 1;
        tokio::spawn(connection(tcp, next, shared.clone(), stop.child_token()));
    }
}

async fn connection(tcp: TcpStream, conn_id: u64, shared: Arc<Shared>, kill: CancellationToken) {
    let expected = lock(&shared.expected_token).clone();
    let mut seen_auth = None;
    // The error type is tungstenite's; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ok = match &expected {
            None => true,
            Some(token) => auth.as_deref() == Some(format!("Bearer {token}").as_str()),
        };
        seen_auth = Some(auth);
        if ok {
            Ok(resp)
        } else {
            let mut denied = ErrorResponse::new(Some("missing or wrong bearer token".into()));
            *denied.status_mut() = http::StatusCode::UNAUTHORIZED;
            Err(denied)
        }
    };
    let limit = *lock(&shared.frame_limit);
    let config = limit.map(|(bytes, _)| {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_frame_size(Some(bytes))
            .max_message_size(Some(bytes))
    });
    let upgraded = tokio_tungstenite::accept_hdr_async_with_config(tcp, check, config).await;
    if let Some(auth) = seen_auth {
        shared.note(|r| r.authorization.push(auth));
    }
    let Ok(mut ws) = upgraded else { return };
    shared.note(|r| r.connections += 1);
    if shared.refuse.load(Ordering::SeqCst) {
        let _ = ws.close(None).await;
        return;
    }
    shared.note(|r| r.open += 1);
    let (out, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    lock(&shared.conns).insert(
        conn_id,
        Conn {
            out: out.clone(),
            kill: kill.clone(),
        },
    );
    let (mut sink, mut stream) = ws.split();
    let writer_kill = kill.clone();
    let silent_for_writer = shared.silent.subscribe();
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = writer_kill.cancelled() => break,
                next = out_rx.recv() => next,
            };
            let Some(Outgoing { msg, sent, chunk }) = next else {
                break;
            };
            // A silent peer sends nothing at all; what it would have sent is lost.
            if !*silent_for_writer.borrow() {
                if sink.send(msg).await.is_err() {
                    break;
                }
                if chunk {
                    writer_shared.note(|r| r.chunks_sent += 1);
                }
            }
            if let Some(sent) = sent {
                let _ = sent.send(());
            }
        }
        sink
    });

    let mut silent = shared.silent.subscribe();
    let mut scripts: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        if *silent.borrow_and_update() {
            // Not reading means WebSocket pings stay unanswered too.
            tokio::select! {
                _ = kill.cancelled() => break,
                _ = silent.wait_for(|s| !*s) => continue,
            }
        }
        let msg = tokio::select! {
            _ = kill.cancelled() => break,
            _ = silent.changed() => continue,
            msg = stream.next() => msg,
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                let close = CloseFrame {
                    code: CloseCode::Size,
                    reason: "message too big".into(),
                };
                let (tx, rx) = oneshot::channel();
                let _ = out.send(Outgoing {
                    msg: Message::Close(Some(close)),
                    sent: Some(tx),
                    chunk: false,
                });
                let _ = rx.await;
                shared.note(|r| r.too_big += 1);
                break;
            }
            Some(Err(_)) | None => break,
        };
        match msg {
            Message::Text(text) => {
                let at = At {
                    conn: conn_id,
                    out: &out,
                    kill: &kill,
                };
                on_text(&text, &shared, &at, &mut scripts);
            }
            Message::Ping(_) => shared.note(|r| r.ws_pings += 1),
            Message::Close(_) => shared.note(|r| r.closes += 1),
            _ => {}
        }
    }
    kill.cancel();
    for (_, script) in scripts {
        script.cancel();
    }
    // Protocol-2 requests of this connection wait for a resume.
    for journal in lock(&shared.journals).values_mut() {
        if journal.conn == conn_id {
            journal.out = None;
        }
    }
    lock(&shared.conns).remove(&conn_id);
    // Dropping both halves closes the TCP connection.
    if let Ok(sink) = writer.await {
        drop(sink);
    }
    drop(stream);
    shared.note(|r| r.open = r.open.saturating_sub(1));
}

/// The connection a frame came in on.
struct At<'a> {
    conn: u64,
    out: &'a mpsc::UnboundedSender<Outgoing>,
    kill: &'a CancellationToken,
}

fn on_text(
    text: &str,
    shared: &Arc<Shared>,
    at: &At<'_>,
    scripts: &mut HashMap<String, CancellationToken>,
) {
    let (out, kill) = (at.out, at.kill);
    let resumable = shared.welcome_protocol.load(Ordering::SeqCst) >= 2;
    let reply = |frame: BridgeFrame| {
        let _ = out.send(Outgoing::frame(&frame, None));
    };
    match BridgeFrame::parse(text) {
        Ok(BridgeFrame::Hello { .. }) => {
            let hello = serde_json::from_str(text).unwrap_or(Value::Null);
            shared.note(|r| r.hellos.push(hello));
            let announced = lock(&shared.frame_limit).and_then(|(b, say)| say.then_some(b));
            reply(BridgeFrame::Welcome {
                protocol: shared.welcome_protocol.load(Ordering::SeqCst),
                bridge_id: Some(BRIDGE_ID.into()),
                max_frame_bytes: announced,
            });
        }
        Ok(BridgeFrame::ModelInvoke(invoke)) if resumable => {
            shared.note(|r| r.invokes.push(invoke.clone()));
            let cancel = shared.stopped.child_token();
            lock(&shared.journals).insert(
                invoke.id.clone(),
                Journal {
                    frames: Vec::new(),
                    out: Some(out.clone()),
                    conn: at.conn,
                    cancel: cancel.clone(),
                },
            );
            let target = Target::Journal(shared.clone(), invoke.id.clone());
            tokio::spawn(script(invoke, target, shared.clone(), cancel, kill.clone()));
        }
        Ok(BridgeFrame::ModelResume {
            id,
            after_chunk_index,
        }) if resumable => {
            shared.note(|r| r.resumes.push((id.clone(), after_chunk_index)));
            let mut journals = lock(&shared.journals);
            let withdraw = shared.withdraw_on_resume.load(Ordering::SeqCst);
            if shared.forget_on_resume.load(Ordering::SeqCst) {
                if let Some(journal) = journals.remove(&id) {
                    journal.cancel.cancel();
                }
            }
            match journals.get_mut(&id) {
                Some(_) if withdraw => {
                    if let Some(journal) = journals.remove(&id) {
                        journal.cancel.cancel();
                    }
                    let mut refused = ModelResult::error(
                        &id,
                        "bridge_disconnected",
                        "the scripted peer no longer holds the chunks asked for; withdrawn",
                    );
                    if let Outcome::Error { error } = &mut refused.outcome {
                        error.details = Some(serde_json::json!({ "withdrawn": true }));
                    }
                    reply(BridgeFrame::ModelResult(refused));
                }
                Some(journal) => {
                    for frame in &journal.frames {
                        let replay = match frame {
                            BridgeFrame::ModelStreamChunk(c) => {
                                after_chunk_index.is_none_or(|a| c.chunk_index > a)
                            }
                            _ => true,
                        };
                        if replay {
                            reply(frame.clone());
                        }
                    }
                    journal.out = Some(out.clone());
                    journal.conn = at.conn;
                }
                None => reply(BridgeFrame::ModelResult(ModelResult::error(
                    &id,
                    "bridge_disconnected",
                    "the scripted peer holds no such request",
                ))),
            }
        }
        Ok(BridgeFrame::ModelCancel { id }) if resumable => {
            if let Some(journal) = lock(&shared.journals).remove(&id) {
                journal.cancel.cancel();
            }
            shared.note(|r| r.cancels.push(id));
        }
        Ok(BridgeFrame::ModelInvoke(invoke)) => {
            shared.note(|r| r.invokes.push(invoke.clone()));
            let cancel = kill.child_token();
            scripts.retain(|_, t| !t.is_cancelled());
            scripts.insert(invoke.id.clone(), cancel.clone());
            tokio::spawn(script(
                invoke,
                Target::Conn(out.clone()),
                shared.clone(),
                cancel,
                kill.clone(),
            ));
        }
        Ok(BridgeFrame::ModelCancel { id }) => {
            if let Some(script) = scripts.remove(&id) {
                script.cancel();
            }
            shared.note(|r| r.cancels.push(id));
        }
        Ok(BridgeFrame::Ping { ts }) => {
            shared.note(|r| r.pings.push(ts));
            reply(BridgeFrame::Pong { ts });
        }
        Ok(BridgeFrame::Pong { ts }) => shared.note(|r| r.pongs.push(ts)),
        Ok(_) | Err(_) => shared.note(|r| r.other.push(text.to_owned())),
    }
}

/// What the last user message asks of the peer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    pub text: String,
    pub reasoning: bool,
    /// The name of the tool to call, if any.
    pub tool: Option<String>,
    pub chunks: Option<usize>,
    pub bulk: Option<usize>,
    pub delay: Duration,
    pub slow: Duration,
    pub usage: bool,
    pub fail: bool,
    pub drop: bool,
    pub hang: bool,
    pub silent: bool,
    pub held: bool,
}

impl Directives {
    /// Reads the directives from `invoke`'s last user message (a completion's prompt).
    pub fn of(invoke: &ModelInvoke) -> Self {
        let text = match &invoke.payload {
            Payload::Chat { .. } => asked(&invoke.payload)
                .0
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(message_text)
                .unwrap_or_default(),
            Payload::Completion { prompt, .. } => prompt.clone(),
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut d = Directives::default();
        let mut rest = String::new();
        let mut tail = text;
        while let Some(start) = tail.find("[[") {
            let Some(len) = tail[start..].find("]]") else {
                break;
            };
            rest.push_str(&tail[..start]);
            let inner = &tail[start + 2..start + len];
            let (name, arg) = inner.split_once(':').unwrap_or((inner, ""));
            let ms = || Duration::from_millis(arg.trim().parse().unwrap_or(0));
            match name.trim() {
                "reasoning" => d.reasoning = true,
                "tool" if arg.trim().is_empty() => d.tool = Some("get_weather".into()),
                "tool" => d.tool = Some(arg.trim().to_owned()),
                "chunks" => d.chunks = arg.trim().parse().ok(),
                "bulk" => d.bulk = arg.trim().parse().ok(),
                "delay" => d.delay = ms(),
                "slow" => d.slow = ms(),
                "usage" => d.usage = true,
                "fail" => d.fail = true,
                "drop" => d.drop = true,
                "hang" => d.hang = true,
                "silent" => d.silent = true,
                "held" => d.held = true,
                // Not ours: keep it as text.
                _ => rest.push_str(&tail[start..start + len + 2]),
            }
            tail = &tail[start + len + 2..];
        }
        rest.push_str(tail);
        d.text = rest.trim().to_owned();
        d
    }
}

/// A message's text: its content string, or its text parts joined by newlines.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The pieces of the reply `"echo: <text>"`: split after spaces, or into exactly `n` pieces.
pub fn reply_pieces(text: &str, n: Option<usize>) -> Vec<String> {
    let mut reply = format!("echo: {text}");
    match n {
        None => reply.split_inclusive(' ').map(str::to_owned).collect(),
        Some(n) => {
            let n = n.max(1);
            while reply.chars().count() < n {
                reply.push_str(" .");
            }
            let chars: Vec<char> = reply.chars().collect();
            let (base, extra) = (chars.len() / n, chars.len() % n);
            let mut pieces = Vec::with_capacity(n);
            let mut at = 0;
            for i in 0..n {
                let len = base + usize::from(i < extra);
                pieces.push(chars[at..at + len].iter().collect());
                at += len;
            }
            pieces
        }
    }
}

/// Where a script's frames go: its connection, or (protocol 2) its request's journal.
enum Target {
    Conn(mpsc::UnboundedSender<Outgoing>),
    Journal(Arc<Shared>, String),
}

impl Target {
    /// Sends `frame`; the receiver hears when it was written (never, when nobody is attached).
    fn send(&self, frame: BridgeFrame) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let outgoing = |frame: &BridgeFrame| Outgoing::frame(frame, Some(tx));
        match self {
            Target::Conn(out) => {
                let _ = out.send(outgoing(&frame));
            }
            Target::Journal(shared, id) => {
                if let Some(journal) = lock(&shared.journals).get_mut(id) {
                    if let Some(out) = &journal.out {
                        let _ = out.send(outgoing(&frame));
                    }
                    journal.frames.push(frame);
                }
            }
        }
        rx
    }
}

async fn script(
    invoke: ModelInvoke,
    target: Target,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    kill: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = play(invoke, &target, &shared, &kill) => {}
    }
}

/// A payload's messages (none for a completion) and parameters, decoded: the peer reads what
/// it is asked as the agent would.
pub fn asked(payload: &Payload) -> (Vec<Value>, serde_json::Map<String, Value>) {
    let parameters = payload.parameters().parse().unwrap_or_default();
    let messages = payload
        .messages()
        .map(|m| m.parse().unwrap_or_default())
        .unwrap_or_default();
    (messages, parameters)
}

async fn play(invoke: ModelInvoke, target: &Target, shared: &Shared, kill: &CancellationToken) {
    let d = Directives::of(&invoke);
    let id = invoke.id.clone();
    let (_, parameters) = asked(&invoke.payload);
    let streamed = parameters.get("stream").and_then(Value::as_bool) == Some(true);
    if d.silent {
        shared.silent.send_replace(true);
        return;
    }
    if d.hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(d.delay).await;
    let send = |frame: BridgeFrame| target.send(frame);
    if d.fail {
        // Nobody needs to know when it was written.
        drop(send(BridgeFrame::ModelResult(ModelResult::error(
            &id,
            "agent_error",
            "scripted failure",
        ))));
        return;
    }

    let (held, release) = (d.held, &shared.held);
    let hold = move || async move {
        if held {
            let _ = release.subscribe().wait_for(|h| !*h).await;
        }
    };
    if let (Some(n), true) = (d.bulk, streamed) {
        bulk(&id, n, &send, hold).await;
        return;
    }
    let (deltas, finish, message) = answer(&d);
    if streamed {
        let last = deltas.len().saturating_sub(1);
        for (i, delta) in deltas.into_iter().enumerate() {
            if i == 1 {
                hold().await;
            }
            if i > 0 {
                tokio::time::sleep(d.slow).await;
            }
            let sent = send(BridgeFrame::ModelStreamChunk(StreamChunk {
                id: id.clone(),
                chunk_index: i as u64,
                delta,
                finish_reason: (i == last).then(|| finish.to_owned()),
            }));
            if d.drop {
                let _ = sent.await;
                kill.cancel();
                return;
            }
        }
    } else if d.drop {
        kill.cancel();
        return;
    } else {
        hold().await;
    }
    let result = ModelResult {
        id,
        outcome: Outcome::Ok {
            result: ResultBody {
                choices: vec![ResultChoice {
                    index: 0,
                    message,
                    finish_reason: Some(finish.to_owned()),
                }],
                usage: d.usage.then_some(Usage {
                    prompt_tokens: 11,
                    completion_tokens: 7,
                    total_tokens: 18,
                }),
                model: Some(BRIDGE_ID.into()),
                created: Some(1_700_000_000),
            },
        },
    };
    drop(send(BridgeFrame::ModelResult(result)));
}

/// `n` chunks of 4 KiB, then a result without the text (it would not fit in one frame).
async fn bulk<H: std::future::Future<Output = ()>>(
    id: &str,
    n: usize,
    send: &impl Fn(BridgeFrame) -> oneshot::Receiver<()>,
    hold: impl Fn() -> H,
) {
    let piece = "x".repeat(4096);
    for i in 0..n {
        if i == 1 {
            hold().await;
        }
        let sent = send(BridgeFrame::ModelStreamChunk(StreamChunk {
            id: id.to_owned(),
            chunk_index: i as u64,
            delta: Delta {
                content: Some(piece.clone()),
                ..Delta::default()
            },
            finish_reason: (i + 1 == n).then(|| "stop".to_owned()),
        }));
        // Every 64 chunks, wait for the write, so the peer's own queue stays small (a detached
        // protocol-2 request carries on into its journal, as mcp-bridge's agent would).
        if i % 64 == 63 {
            let _ = sent.await;
        }
    }
    let result = ModelResult {
        id: id.to_owned(),
        outcome: Outcome::Ok {
            result: ResultBody {
                choices: vec![ResultChoice {
                    index: 0,
                    message: json!({"role": "assistant", "content": ""}),
                    finish_reason: Some("stop".into()),
                }],
                ..ResultBody::default()
            },
        },
    };
    drop(send(BridgeFrame::ModelResult(result)));
}

/// The streamed deltas, the finish reason and the whole message for directives `d`.
fn answer(d: &Directives) -> (Vec<Delta>, &'static str, Value) {
    let mut deltas = Vec::new();
    if d.reasoning {
        for piece in ["thinking", "…"] {
            deltas.push(Delta {
                reasoning_content: Some(piece.into()),
                ..Delta::default()
            });
        }
    }
    let (finish, mut message) = if let Some(tool) = &d.tool {
        deltas.push(Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index: Some(0),
                id: Some("call_1".into()),
                kind: Some("function".into()),
                function: Some(FunctionDelta {
                    name: Some(tool.clone()),
                    arguments: Some(String::new()),
                }),
            }]),
            ..Delta::default()
        });
        for fragment in ["{\"city\":", "\"Paris\"}"] {
            deltas.push(Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: Some(0),
                    function: Some(FunctionDelta {
                        name: None,
                        arguments: Some(fragment.into()),
                    }),
                    ..ToolCallDelta::default()
                }]),
                ..Delta::default()
            });
        }
        let message = json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": tool, "arguments": "{\"city\":\"Paris\"}"}
            }]
        });
        ("tool_calls", message)
    } else {
        let pieces = reply_pieces(&d.text, d.chunks);
        let full: String = pieces.concat();
        for piece in pieces {
            deltas.push(Delta {
                content: Some(piece),
                ..Delta::default()
            });
        }
        ("stop", json!({"role": "assistant", "content": full}))
    };
    if d.reasoning {
        message["reasoning_content"] = json!("thinking…");
    }
    if let Some(first) = deltas.first_mut() {
        first.role = Some("assistant".into());
    }
    (deltas, finish, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_and_removed() {
        let d = Directives::parse("hello [[usage]] world [[slow:30]][[chunks:4]] [[other]]");
        assert!(d.usage);
        assert_eq!(d.slow, Duration::from_millis(30));
        assert_eq!(d.chunks, Some(4));
        assert_eq!(d.text, "hello  world  [[other]]");
    }

    #[test]
    fn pieces_split_after_spaces_or_into_n() {
        assert_eq!(reply_pieces("a b", None), vec!["echo: ", "a ", "b"]);
        let p = reply_pieces("hi", Some(3));
        assert_eq!(p.len(), 3);
        assert_eq!(p.concat(), "echo: hi");
        let p = reply_pieces("", Some(20));
        assert_eq!(p.len(), 20);
        assert!(p.iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn tool_answer_streams_the_call_openai_style() {
        let (deltas, finish, message) = answer(&Directives::parse("[[tool]]"));
        assert_eq!(finish, "tool_calls");
        assert_eq!(deltas.len(), 3);
        let args: String = deltas
            .iter()
            .filter_map(|d| d.tool_calls.as_ref())
            .map(|c| c[0].arguments())
            .collect();
        assert_eq!(args, "{\"city\":\"Paris\"}");
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
        let (_, _, message) = answer(&Directives::parse("[[tool:mcp__fs__write]]"));
        assert_eq!(
            message["tool_calls"][0]["function"]["name"],
            "mcp__fs__write"
        );
    }
}
