//! Serving HTTP/1.1 with hyper's connection builder, for the gateway, mcp-bridge and
//! bridge-agent's health endpoint. `axum::serve` takes hyper's defaults; here the per-connection
//! buffers are chosen (docs/performance.md, "Memory and buffers"), connections are bounded in
//! number and in how long they may wait for a request ([`ConnectionLimits`]), every connection is
//! tracked so a shutdown lets in-flight requests finish, and each accepted socket gets
//! `TCP_NODELAY`. [`guarded`] puts a router behind the web guard.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::audit::Audit;
use crate::connections::{self, ConnectionLimits, Counted, OverLimit, RESERVE};
use crate::web_guard::WebGuard;

/// The most one connection buffers in each direction: a request head (with its headers) must fit
/// in it, and a response whose client does not read stops being polled once this much waits in
/// hyper (the rest waits in the caller's own bounded buffers). hyper's default is about 400 KiB;
/// its minimum, and the size each buffer starts at, is 8 KiB.
pub const MAX_BUF_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `stop` fires, within `limits`. Then the listener is
/// closed (new connections are refused), idle keep-alive connections close, and requests in
/// flight finish (their connections close after them); returns once every connection has ended.
/// Handlers see the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    connections::describe_metrics();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .max_buf_size(MAX_BUF_BYTES)
        // Body chunks (one SSE event each) are queued as they are and written with one writev,
        // not copied into the head buffer, which would otherwise grow to the largest burst and
        // keep that size for the connection's life.
        .writev(true)
        .timer(TokioTimer::new())
        // hyper starts this clock whenever it waits for a request head: on a new connection
        // and after each answer on a kept-alive one.
        .header_read_timeout(limits.header_timeout);
    // Keep-alive stays on past the cap so that an upgrade's answer can say `connection:
    // upgrade`; every other answer there says `connection: close` (see `priority_only`).
    let mut reserve_http = http.clone();
    reserve_http.header_read_timeout(connections::RESERVE_HEADER_TIMEOUT);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(RESERVE));
    let limits = Arc::new(limits);
    let mut over_limit = OverLimit::default();
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    if !is_connection_error(&err) {
                        // Out of descriptors (another part of the process holds them all, since
                        // the cap keeps connections to half): give them time to close.
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
        // Each streamed event must leave at once: Nagle's delay would hold chunks back by tens
        // of ms.
        let _ = tcp.set_nodelay(true);
        if let Ok(place) = places.clone().try_acquire_owned() {
            let tcp = Counted::new(tcp, place);
            let service = router.clone();
            connections.spawn(connection(&http, tcp, peer, service, stop.clone()));
            continue;
        }
        match reserve.clone().try_acquire_owned() {
            Ok(place) => {
                over_limit.record(&limits, true);
                let tcp = Counted::new(tcp, place);
                let service = priority_only(router.clone(), limits.clone());
                connections.spawn(connection(&reserve_http, tcp, peer, service, stop.clone()));
            }
            Err(_) => {
                over_limit.record(&limits, false);
                close_at_once(tcp);
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The router for a connection past the cap: its priority routes, and a 503 for the rest.
fn priority_only(router: Router, limits: Arc<ConnectionLimits>) -> Router {
    Router::new().fallback_service(tower::service_fn(
        move |request: http::Request<axum::body::Body>| {
            let router = router.clone();
            let limits = limits.clone();
            async move {
                let mut response = if limits.is_priority(request.uri().path()) {
                    router.oneshot(request).await?
                } else {
                    at_limit(limits.max_connections)
                };
                // One request per connection past the cap, unless it became a WebSocket.
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        },
    ))
}

/// The answer past the cap: retry shortly, on a new connection.
fn at_limit(max_connections: usize) -> Response {
    let body = serde_json::json!({"error": {
        "message": format!("the server is at its limit of {max_connections} connections \
            (LOCAL_PROVIDER_MAX_CONNECTIONS); try again shortly"),
        "type": "server_error",
        "param": null,
        "code": "too_many_connections",
    }});
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Closes a connection nothing can serve: a reset, so that no state lingers on our side.
fn close_at_once(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

fn connection(
    http: &hyper::server::conn::http1::Builder,
    tcp: Counted,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
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
            if err.is_timeout() {
                metrics::counter!("http_connections_timed_out_total").increment(1);
            }
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
        audit.record_repeated(
            "security_violation",
            json!({"client_ip": peer, "violation_type": refusal.code(), "details": presented}),
            &["details"],
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
        started_within(router, ConnectionLimits::default()).await
    }

    async fn started_within(
        router: Router,
        limits: ConnectionLimits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, limits, stop.clone()));
        (addr, stop, server)
    }

    /// True once the server has closed `tcp` (end of stream or reset), within 10 s.
    async fn closed_by_server(tcp: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest));
        matches!(read.await, Ok(Ok(_) | Err(_)))
    }

    fn limits(max_connections: usize, header_timeout: Duration) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_timeout,
            priority: &["/health"],
        }
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

    #[tokio::test]
    async fn a_half_sent_head_and_an_idle_connection_are_closed_after_the_header_timeout() {
        let router = Router::new().route("/", get(|| async { "ok" }));
        let (addr, stop, server) =
            started_within(router, limits(8, Duration::from_millis(300))).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(response(&mut idle).await.ends_with("ok"));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Each is closed by the server, without an answer; none waits for the client.
        for tcp in [&mut half, &mut idle, &mut silent] {
            assert!(closed_by_server(tcp).await);
        }
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn past_the_cap_only_priority_routes_are_served_and_past_the_reserve_nothing() {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/health", get(|| async { "healthy" }));
        let (addr, stop, server) = started_within(router, limits(2, Duration::from_secs(30))).await;
        // Two kept-alive connections take the two places.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            assert!(response(&mut tcp).await.ends_with("ok"));
            held.push(tcp);
        }
        let mut refused = TcpStream::connect(addr).await.unwrap();
        refused
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let text = response(&mut refused).await;
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        assert!(text.contains("too_many_connections"), "{text}");
        assert!(closed_by_server(&mut refused).await, "closed after the 503");
        let mut health = TcpStream::connect(addr).await.unwrap();
        health
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let text = response(&mut health).await;
        assert!(text.ends_with("healthy"), "{text}");
        assert!(
            closed_by_server(&mut health).await,
            "no keep-alive past the cap"
        );

        // Silent connections fill the reserve; the next one is closed at once.
        let mut silent = Vec::new();
        for _ in 0..RESERVE {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut dropped = TcpStream::connect(addr).await.unwrap();
        let _ = dropped
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(1), dropped.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "closed without an answer: {read:?}"
        );
        // A place freed under the cap is taken again.
        drop(held.pop());
        drop(silent);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let _ = tcp
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let mut text = Vec::new();
            let _ = tcp.read_to_end(&mut text).await;
            if text.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no place freed");
            tokio::task::yield_now().await;
        }
        stop.cancel();
        server.await.unwrap();
    }
}
