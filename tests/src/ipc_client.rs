//! A test client for bridge-agent's Unix socket, playing the gateway: it performs the hello,
//! then demultiplexes chunks and results by request id.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use provider_shared::bridge::{
    ModelInvoke, ModelMeta, ModelResult, Outcome, Payload, RawJson, StreamChunk,
};
use provider_shared::ipc::{BridgeStatus, IpcCodec, IpcFrame, IPC_PROTOCOL, IPC_VERSION};
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// A raw framed connection, for handshake tests.
pub type RawIpc = Framed<UnixStream, IpcCodec>;

pub async fn raw_connect(path: &Path) -> Result<RawIpc, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect {}: {e}", path.display()))?;
    Ok(Framed::new(stream, IpcCodec::default()))
}

/// The hello a current gateway sends.
pub fn hello() -> IpcFrame {
    IpcFrame::Hello {
        protocol: IPC_PROTOCOL.into(),
        version: IPC_VERSION,
        client: "integration-tests".into(),
        // A gateway of before heartbeats: bridge-agent must serve it as it did.
        capabilities: vec![],
    }
}

/// A chat request whose only message is the user's `text` (which may carry peer directives).
pub fn chat_invoke(id: &str, text: &str, stream: bool) -> ModelInvoke {
    ModelInvoke {
        id: id.into(),
        session_id: None,
        model_meta: ModelMeta {
            provider: "local".into(),
            label: "cursor-agent-local".into(),
            requested_scopes: vec![],
        },
        payload: Payload::Chat {
            messages: raw(&json!([{"role": "user", "content": text}])),
            parameters: raw(&json!({ "stream": stream })),
        },
    }
}

/// `value` as the raw JSON a payload carries.
pub fn raw(value: &Value) -> RawJson {
    RawJson::encode(value).unwrap_or_else(|err| panic!("cannot encode {value}: {err}"))
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<IpcFrame>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A gateway connection after a successful hello.
pub struct IpcClient {
    /// The `welcome` frame's content.
    pub agent_id: String,
    pub version: u32,
    pub welcome_status: BridgeStatus,
    out: Option<mpsc::UnboundedSender<IpcFrame>>,
    routes: Routes,
    unrouted: Arc<Mutex<Vec<IpcFrame>>>,
    status: watch::Receiver<BridgeStatus>,
    closed: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl IpcClient {
    /// Connects and says hello; fails unless bridge-agent answers `welcome` within 5 s.
    pub async fn connect(path: &Path) -> Result<Self, String> {
        let mut framed = raw_connect(path).await?;
        framed
            .send(hello())
            .await
            .map_err(|e| format!("send hello: {e}"))?;
        let answer = tokio::time::timeout(Duration::from_secs(5), framed.next())
            .await
            .map_err(|_| "no answer to hello within 5 s".to_owned())?;
        let (version, agent_id, bridge) = match answer {
            Some(Ok(IpcFrame::Welcome {
                version,
                agent_id,
                bridge,
                ..
            })) => (version, agent_id, bridge),
            other => return Err(format!("expected welcome, got {other:?}")),
        };
        let (mut sink, mut source) = framed.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<IpcFrame>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let routes: Routes = Arc::default();
        let unrouted: Arc<Mutex<Vec<IpcFrame>>> = Arc::default();
        let (status_tx, status) = watch::channel(bridge.clone());
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn({
            let routes = routes.clone();
            let unrouted = unrouted.clone();
            async move {
                while let Some(Ok(frame)) = source.next().await {
                    let (id, last) = match &frame {
                        IpcFrame::Chunk(c) => (c.id.clone(), false),
                        IpcFrame::Result(r) => (r.id.clone(), true),
                        IpcFrame::Status(s) => {
                            status_tx.send_replace(s.clone());
                            continue;
                        }
                        _ => {
                            lock(&unrouted).push(frame);
                            continue;
                        }
                    };
                    let route = {
                        let mut routes = lock(&routes);
                        if last {
                            routes.remove(&id)
                        } else {
                            routes.get(&id).cloned()
                        }
                    };
                    match route {
                        Some(tx) => {
                            let _ = tx.send(frame);
                        }
                        None => lock(&unrouted).push(frame),
                    }
                }
                closed_tx.send_replace(true);
            }
        });
        Ok(Self {
            agent_id,
            version,
            welcome_status: bridge,
            out: Some(out),
            routes,
            unrouted,
            status,
            closed,
            reader,
            writer: Some(writer),
        })
    }

    /// Sends `invoke`; its chunks and result arrive on the returned handle.
    pub fn invoke(&self, invoke: ModelInvoke) -> PendingRequest {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.routes).insert(invoke.id.clone(), tx);
        let id = invoke.id.clone();
        self.send(IpcFrame::Invoke(invoke));
        PendingRequest { id, rx }
    }

    pub fn cancel(&self, id: &str) {
        self.send(IpcFrame::Cancel { id: id.into() });
    }

    /// Sends any frame as is.
    pub fn send(&self, frame: IpcFrame) {
        if let Some(out) = &self.out {
            let _ = out.send(frame);
        }
    }

    /// The latest bridge status heard (from welcome or a status frame).
    pub fn status(&self) -> BridgeStatus {
        self.status.borrow().clone()
    }

    /// Waits for a status satisfying `pred`.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        pred: impl FnMut(&BridgeStatus) -> bool,
    ) -> Option<BridgeStatus> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(pred)).await;
        match waited {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Frames that belonged to no pending request (stray chunks, second results, …).
    pub fn unrouted(&self) -> Vec<IpcFrame> {
        lock(&self.unrouted).clone()
    }

    /// Waits until bridge-agent closes the connection.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let mut rx = self.closed.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Closes the connection from our side.
    pub async fn close(mut self) {
        self.out = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
        self.reader.abort();
        let _ = (&mut self.reader).await;
    }
}

impl Drop for IpcClient {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(writer) = &self.writer {
            writer.abort();
        }
    }
}

/// One request sent on an [`IpcClient`].
pub struct PendingRequest {
    pub id: String,
    rx: mpsc::UnboundedReceiver<IpcFrame>,
}

impl PendingRequest {
    /// The next chunk or result, if one arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<IpcFrame> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects chunks until the result.
    pub async fn finish(mut self, timeout: Duration) -> Result<Answer, String> {
        let mut chunks = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(IpcFrame::Chunk(c))) => chunks.push(c),
                Ok(Some(IpcFrame::Result(result))) => return Ok(Answer { chunks, result }),
                Ok(Some(other)) => return Err(format!("{}: unexpected {other:?}", self.id)),
                Ok(None) => return Err(format!("{}: connection closed before result", self.id)),
                Err(_) => {
                    return Err(format!(
                        "{}: no result within {timeout:?} ({} chunks)",
                        self.id,
                        chunks.len()
                    ))
                }
            }
        }
    }
}

/// A request's chunks and its result.
#[derive(Debug, Clone)]
pub struct Answer {
    pub chunks: Vec<StreamChunk>,
    pub result: ModelResult,
}

impl Answer {
    /// The streamed content, concatenated.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c.delta.content.as_deref())
            .collect()
    }

    /// The error code of a failed result.
    pub fn error_code(&self) -> Option<&str> {
        match &self.result.outcome {
            Outcome::Error { error } => Some(error.code.as_str()),
            Outcome::Ok { .. } => None,
        }
    }

    pub fn error_message(&self) -> Option<&str> {
        match &self.result.outcome {
            Outcome::Error { error } => Some(error.message.as_str()),
            Outcome::Ok { .. } => None,
        }
    }

    /// The result's first message content, when it succeeded.
    pub fn message_content(&self) -> Option<String> {
        match &self.result.outcome {
            Outcome::Ok { result } => result
                .choices
                .first()
                .and_then(|c| c.message.get("content"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            Outcome::Error { .. } => None,
        }
    }
}
