//! Serving HTTP/1.1 with hyper's connection builder, for the gateway and mcp-bridge. `axum::serve`
//! takes hyper's defaults; here the per-connection buffers are chosen (docs/performance.md,
//! "Memory and buffers"), every connection is tracked so a shutdown lets in-flight requests finish, and each
//! accepted socket gets `TCP_NODELAY`. [`guarded`] puts a router behind the web guard.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::audit::Audit;
use crate::web_guard::WebGuard;

/// The most one connection buffers in each direction: a request head (with its headers) must fit
/// in it, and a response whose client does not read stops being polled once this much waits in
/// hyper (the rest waits in the caller's own bounded buffers). hyper's default is about 400 KiB;
/// its minimum, and the size each buffer starts at, is 8 KiB.
pub const MAX_BUF_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `stop` fires. Then the listener is closed (new
/// connections are refused), idle keep-alive connections close, and requests in flight finish
/// (their connections close after them); returns once every connection has ended. Handlers see
/// the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .max_buf_size(MAX_BUF_BYTES)
        // Body chunks (one SSE event each) are queued as they are and written with one writev,
        // not copied into the head buffer, which would otherwise grow to the largest burst and
        // keep that size for the connection's life.
        .writev(true);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    if !is_connection_error(&err) {
                        // Out of descriptors, most likely: give connections time to close.
                        tracing::error!(%err, "cannot accept connections; retrying in 1 s");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        connections.spawn(connection(&http, tcp, peer, router.clone(), stop.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

fn connection(
    http: &hyper::server::conn::http1::Builder,
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // Each streamed event must leave at once: Nagle's delay would hold chunks back by tens of ms.
    let _ = tcp.set_nodelay(true);
    let service = router.map_request(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let service = TowerToHyperService::new(service);
    // Upgrades serve mcp-bridge's WebSocket; on a connection that never asks, they cost nothing.
    let conn = http
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, %peer, "HTTP connection ended with an error");
        }
    }
}

/// Where a service records the requests its web guard refused.
#[derive(Clone)]
pub struct Refusals {
    /// The counter, labelled by `reason` (the refusal's code).
    pub counter: &'static str,
    /// The audit log, for the services that keep one: a `security_violation` record.
    pub audit: Option<Audit>,
    /// Paths whose clients read errors as `{"error": "<message>"}` (the gateway's Ollama
    /// routes); every other path gets the object shape.
    pub plain_errors: fn(&str) -> bool,
}

/// For [`Refusals::plain_errors`] when no path uses the plain shape.
pub fn no_plain_errors(_: &str) -> bool {
    false
}

/// `router` behind `guard`, outermost, so that a refused request (a CORS preflight too) reaches
/// nothing else: it is logged, counted, audited, and answered with its status and the error
/// shape the path's clients read (`{"error": {"message", "type", "param", "code"}}`, or
/// `{"error": "<message>"}` where [`Refusals::plain_errors`] says so).
pub fn guarded(router: Router, guard: WebGuard, refusals: Refusals) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        (Arc::new(guard), refusals),
        refuse_foreign,
    ))
}

async fn refuse_foreign(
    State((guard, refusals)): State<(Arc<WebGuard>, Refusals)>,
    req: Request,
    next: Next,
) -> Response {
    let Err(refusal) = guard.check(req.uri(), req.headers()) else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let presented = refusal.presented();
    tracing::warn!(client_ip = ?peer, reason = refusal.code(), %presented,
        method = %req.method(), path = %req.uri().path(), "request refused by the web guard");
    metrics::counter!(refusals.counter, "reason" => refusal.code()).increment(1);
    if let Some(audit) = &refusals.audit {
        audit.record(
            "security_violation",
            json!({"client_ip": peer, "violation_type": refusal.code(), "details": presented}),
        );
    }
    let kind = if refusal.status() == http::StatusCode::FORBIDDEN {
        "permission_error"
    } else {
        "invalid_request_error"
    };
    let body = if (refusals.plain_errors)(req.uri().path()) {
        json!({"error": refusal.to_string()})
    } else {
        json!({"error": {"message": refusal.to_string(), "type": kind, "param": null,
                         "code": refusal.code()}})
    };
    (
        refusal.status(),
        [("x-should-retry", "false")],
        axum::Json(body),
    )
        .into_response()
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn started(
        router: Router,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, stop.clone()));
        (addr, stop, server)
    }

    /// Reads one response whose body has `Content-Length`, leaving the connection open.
    async fn response(tcp: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed mid-head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        tcp.read_exact(&mut body).await.unwrap();
        format!("{head}{}", String::from_utf8(body).unwrap())
    }

    #[tokio::test]
    async fn serves_keep_alive_with_the_peer_address_and_nodelay() {
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (addr, stop, server) = started(router).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        for _ in 0..2 {
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let text = response(&mut tcp).await;
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with(&local.to_string()), "{text}");
        }
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_shutdown_lets_the_request_in_flight_finish_and_refuses_new_connections() {
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let finish = std::sync::Arc::new(tokio::sync::Notify::new());
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get({
                let finish = finish.clone();
                move || async move {
                    if let Some(tx) = entered.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    finish.notified().await;
                    "done"
                }
            }),
        );
        let (addr, stop, server) = started(router).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        entered_rx.await.unwrap();
        // A keep-alive connection idle after its answer is closed by the shutdown.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(response(&mut idle).await.ends_with("ok"));
        stop.cancel();
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).await.unwrap(), 0);
        // Refused once the accept loop has seen the stop (a connection that raced it into the
        // backlog is reset with the listener).
        tokio::time::timeout(Duration::from_secs(5), async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the listener closes");
        assert!(!server.is_finished(), "a request is still in flight");
        finish.notify_one();
        let text = response(&mut tcp).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("done"), "{text}");
        server.await.unwrap();
        // The connection closes after its last answer.
        assert_eq!(tcp.read(&mut [0u8; 16]).await.unwrap(), 0);
    }
}
