//! A Docker API version shim, used only when the engine is older than the API version the
//! `testcontainers` crate speaks.
//!
//! `testcontainers` (through bollard) puts a fixed API version in every path (`/v1.53/...`) and
//! never negotiates; an engine whose newest API is older refuses every such request ("client
//! version 1.53 is too new"). Debian 12's engine (20.10, API 1.41) is one. The calls the tests
//! make (create, start, kill, inspect, logs, networks, volumes) mean the same in 1.41, so the shim
//! listens on a Unix socket of its own, lowers the version in each request path to the engine's,
//! and passes requests, streamed bodies and connection upgrades through unchanged.
use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

/// A Docker API version, e.g. `1.41`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(Self(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// `path_and_query` with a leading `/vX.Y/` above `max` lowered to `max`; anything else as is.
pub fn rewrite(path_and_query: &str, max: ApiVersion) -> String {
    let Some(rest) = path_and_query.strip_prefix("/v") else {
        return path_and_query.to_owned();
    };
    let Some((version, tail)) = rest.split_once('/') else {
        return path_and_query.to_owned();
    };
    match ApiVersion::parse(version) {
        Some(asked) if asked > max => format!("/v{max}/{tail}"),
        _ => path_and_query.to_owned(),
    }
}

type Body = Either<Incoming, Full<Bytes>>;

/// Starts the shim on its own thread (it outlives any one test's runtime) in front of
/// `upstream`; returns the socket path to give `testcontainers` as `DOCKER_HOST`.
pub fn start(upstream: PathBuf, max: ApiVersion) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir();
    remove_stale_sockets(&dir);
    let path = dir.join(format!("mlp-docker-shim-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("docker-api-shim".into())
        .spawn(move || runtime.block_on(serve(listener, Arc::new(upstream), max)))?;
    Ok(path)
}

/// Sockets left by earlier test processes that have exited.
fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("mlp-docker-shim-")
            .and_then(|rest| rest.strip_suffix(".sock"));
        if let Some(pid) = pid {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    upstream: Arc<PathBuf>,
    max: ApiVersion,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("docker API shim: cannot listen: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("docker API shim: accept failed: {e}");
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| forward(req, upstream.clone(), max));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn forward(
    mut req: Request<Incoming>,
    upstream: Arc<PathBuf>,
    max: ApiVersion,
) -> Result<Response<Body>, Infallible> {
    let target = rewrite(req.uri().path_and_query().map_or("/", |p| p.as_str()), max);
    match target.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                format!("bad path {target}: {e}"),
            ))
        }
    }
    // Taken before the request moves on; resolves only if the engine switches protocols
    // (attach and exec hijack the connection this way).
    let client_side = hyper::upgrade::on(&mut req);
    let stream = match UnixStream::connect(upstream.as_path()).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_GATEWAY,
                format!("docker engine: {e}"),
            ))
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_GATEWAY,
                format!("docker engine: {e}"),
            ))
        }
    };
    tokio::spawn(conn.with_upgrades());
    let mut resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_GATEWAY,
                format!("docker engine: {e}"),
            ))
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let engine_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = (client_side.await, engine_side.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
    }
    Ok(resp.map(Either::Left))
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    let body = serde_json::json!({ "message": format!("docker API shim: {message}") }).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_newer_versions() {
        let max = ApiVersion(1, 41);
        assert_eq!(
            rewrite("/v1.53/containers/json?all=1", max),
            "/v1.41/containers/json?all=1"
        );
        assert_eq!(rewrite("/v1.40/info", max), "/v1.40/info");
        assert_eq!(rewrite("/v1.41/info", max), "/v1.41/info");
        assert_eq!(rewrite("/_ping", max), "/_ping");
        assert_eq!(rewrite("/version", max), "/version");
        assert_eq!(rewrite("/volumes/v1.53", max), "/volumes/v1.53");
    }

    #[test]
    fn parses_versions() {
        assert_eq!(ApiVersion::parse("1.41"), Some(ApiVersion(1, 41)));
        assert!(ApiVersion(1, 53) > ApiVersion(1, 41));
        assert!(ApiVersion(1, 9) < ApiVersion(1, 10));
        assert_eq!(ApiVersion::parse("x"), None);
    }
}
