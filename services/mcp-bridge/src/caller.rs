//! Who is on the other end of an MCP call, as the HTTP layer sees it. rmcp cancels a tool call
//! on `notifications/cancelled`, but a client whose process died, whose connection closed or
//! whose MCP session ended leaves the call running (the answer is kept for a resume that never
//! comes). So every `/mcp` response body is watched here ([`watch`]): the body being dropped
//! before its end (hyper drops it when the connection closes, even mid-response) or ending before
//! the tool answered (the session closed, the call was cancelled) means nobody will read the
//! answer. A long-poll whose caller is gone takes no request, and a hand-out whose answer never
//! went out on its stream goes back to the front of the queue. (An answer handed to the
//! connection just as its peer died is lost with it; the lease covers that.)
//!
//! The same watch tells which MCP sessions are still there: a session whose standalone SSE
//! stream (`GET /mcp`) was cut by the peer and not reopened within [`REOPEN_WINDOW`], or that was
//! ended with `DELETE /mcp`, has left, and the requests it holds are given back
//! (`Broker::agent_left`).
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use tokio_util::sync::CancellationToken;

use crate::state::App;

/// The header naming a Streamable HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// How long a session whose last standalone stream was cut may take to open another before it
/// counts as gone. Clients reopen at once; a process that died never does.
pub const REOPEN_WINDOW: Duration = Duration::from_secs(1);

/// One `/mcp` response body, as its reader's side of the connection sees it.
#[derive(Debug, Default)]
pub struct ResponseStream {
    /// Fired when the body ends or is dropped: nothing more reaches the client on it.
    closed: CancellationToken,
    /// Fired when a JSON-RPC message (not a keep-alive comment or an empty priming event) was
    /// handed to the connection. Clients close the stream as soon as they read the answer, so
    /// whether it ended on its own says nothing.
    sent: CancellationToken,
}

impl ResponseStream {
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once a message went out, or the stream closed without one.
    pub async fn settled(&self) {
        tokio::select! {
            _ = self.sent.cancelled() => {}
            _ = self.closed.cancelled() => {}
        }
    }

    /// A message went out on the stream: for a tool call, its answer.
    pub fn delivered(&self) -> bool {
        self.sent.is_cancelled()
    }
}

/// Whether `data` holds a JSON-RPC message.
fn carries_message(data: &[u8]) -> bool {
    const TAG: &[u8] = b"\"jsonrpc\"";
    data.windows(TAG.len()).any(|w| w == TAG)
}

/// The caller of one tool call: gone once the call is cancelled or its response stream closed.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    cancelled: CancellationToken,
    stream: Option<Arc<ResponseStream>>,
    /// The MCP session the call came in, when the client keeps one.
    pub session: Option<Arc<str>>,
}

impl Caller {
    /// The caller of the tool call `context` describes.
    pub fn of(context: &RequestContext<RoleServer>) -> Self {
        let parts = context.extensions.get::<http::request::Parts>();
        Self {
            cancelled: context.ct.clone(),
            stream: parts.and_then(|p| p.extensions.get::<Arc<ResponseStream>>().cloned()),
            session: parts.and_then(|p| session_of(&p.headers)),
        }
    }

    /// A caller that is there until `cancelled` fires (sampling clients, tests).
    pub fn until(cancelled: CancellationToken) -> Self {
        Self {
            cancelled,
            stream: None,
            session: None,
        }
    }

    pub fn is_gone(&self) -> bool {
        self.cancelled.is_cancelled() || self.stream.as_ref().is_some_and(|s| s.is_closed())
    }

    /// Resolves once the caller is gone.
    pub async fn gone(&self) {
        match &self.stream {
            Some(stream) => tokio::select! {
                _ = self.cancelled.cancelled() => {}
                _ = stream.closed() => {}
            },
            None => self.cancelled.cancelled().await,
        }
    }

    /// The response stream the call's answer goes out on, when the HTTP layer watches it.
    pub fn stream(&self) -> Option<&Arc<ResponseStream>> {
        self.stream.as_ref()
    }
}

fn session_of(headers: &http::HeaderMap) -> Option<Arc<str>> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(Arc::from)
}

/// The open standalone streams of each MCP session.
#[derive(Default)]
pub struct Presence {
    streams: Mutex<HashMap<Arc<str>, usize>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opened(&self, session: &Arc<str>) {
        *self.lock().entry(session.clone()).or_default() += 1;
    }

    /// One stream of `session` closed; true when it was its last.
    fn closed(&self, session: &Arc<str>) -> bool {
        let mut streams = self.lock();
        match streams.get_mut(session) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                streams.remove(session);
                true
            }
            None => false,
        }
    }

    fn has_stream(&self, session: &str) -> bool {
        self.lock().contains_key(session)
    }
}

/// Middleware on `/mcp`: hands the request a [`ResponseStream`] (it reaches tool calls inside
/// `http::request::Parts`) and watches the response body that carries its answer.
pub async fn watch(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let stream = Arc::new(ResponseStream::default());
    request.extensions_mut().insert(stream.clone());
    let method = request.method().clone();
    let session = session_of(request.headers());
    let response = next.run(request).await;
    let success = response.status().is_success();
    let standalone = match (&method, session) {
        (&Method::GET, Some(session)) if success => {
            app.broker.presence.opened(&session);
            Some(Standalone {
                app: app.clone(),
                session,
            })
        }
        (&Method::DELETE, Some(session)) if success => {
            app.broker
                .agent_left(&session, "its MCP session was closed");
            None
        }
        _ => None,
    };
    response.map(|body| {
        Body::new(Watched {
            inner: body,
            stream,
            standalone,
        })
    })
}

/// A session's standalone stream, registered while its body lives.
struct Standalone {
    app: Arc<App>,
    session: Arc<str>,
}

impl Standalone {
    /// The peer cut the stream: if it was the session's last and none opens within
    /// [`REOPEN_WINDOW`], the session has left.
    fn cut(self) {
        let broker = self.app.broker.clone();
        if !broker.presence.closed(&self.session) {
            return;
        }
        let session = self.session;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(REOPEN_WINDOW) => {}
                _ = broker.stopping.cancelled() => return,
            }
            if !broker.presence.has_stream(&session) {
                broker.agent_left(&session, "its connection closed");
            }
        });
    }

    /// The server ended the stream: the session did not leave.
    fn ended(self) {
        self.app.broker.presence.closed(&self.session);
    }
}

/// A response body that reports how it ended to its [`ResponseStream`].
struct Watched {
    inner: Body,
    stream: Arc<ResponseStream>,
    standalone: Option<Standalone>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if !self.stream.sent.is_cancelled()
                    && frame.data_ref().is_some_and(|d| carries_message(d))
                {
                    self.stream.sent.cancel();
                }
            }
            Poll::Ready(None) => {
                self.stream.closed.cancel();
                if let Some(standalone) = self.standalone.take() {
                    standalone.ended();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stream.closed.cancel();
        if let Some(standalone) = self.standalone.take() {
            standalone.cut();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn watched(body: Body) -> (Watched, Arc<ResponseStream>) {
        let stream = Arc::new(ResponseStream::default());
        let body = Watched {
            inner: body,
            stream: stream.clone(),
            standalone: None,
        };
        (body, stream)
    }

    const MESSAGE: &str = "id: 0/3\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";

    #[tokio::test]
    async fn a_body_read_to_its_end_delivered_its_message() {
        let (body, stream) = watched(Body::from(MESSAGE));
        assert!(!stream.is_closed());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], MESSAGE.as_bytes());
        assert!(stream.is_closed() && stream.delivered());
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_delivered_nothing() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, axum::Error>>(4);
        let inner = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let (mut body, stream) = watched(inner);
        // A keep-alive and an empty priming event carry no message.
        for idle in [&b":\n\n"[..], &b"id: 0\nretry: 3000\ndata: \n\n"[..]] {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(idle))))
                .await
                .unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.data_ref().map(|d| &d[..]), Some(idle));
        }
        assert!(!stream.is_closed() && !stream.delivered());
        drop(body);
        assert!(stream.is_closed() && !stream.delivered());
    }

    #[tokio::test]
    async fn a_message_handed_out_is_delivered_even_if_the_reader_leaves_before_the_end() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, axum::Error>>(4);
        let inner = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let (mut body, stream) = watched(inner);
        tx.send(Ok(Frame::data(Bytes::from_static(MESSAGE.as_bytes()))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(stream.delivered());
    }

    #[tokio::test]
    async fn an_empty_body_that_ends_delivered_nothing() {
        let (body, stream) = watched(Body::empty());
        body.collect().await.unwrap();
        assert!(stream.is_closed() && !stream.delivered());
    }

    #[test]
    fn presence_counts_streams_per_session() {
        let presence = Presence::default();
        let s: Arc<str> = Arc::from("s1");
        presence.opened(&s);
        presence.opened(&s);
        assert!(!presence.closed(&s));
        assert!(presence.has_stream("s1"));
        assert!(presence.closed(&s));
        assert!(!presence.has_stream("s1"));
        assert!(!presence.closed(&s), "closing an unknown one is no last");
    }
}
