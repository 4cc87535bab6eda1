//! How many connections an HTTP server holds and for how long (docs/configuration.md, "Connection limits").
//!
//! Each accepted connection costs one file descriptor for as long as it is open, and nothing the
//! services do per request in flight costs another: the links to bridge-agent and to the MCP
//! bridge are shared (measured in BENCHMARKS.md, "Connections and descriptors"). So the
//! open-file limit is raised to its hard limit at start, and connections are capped below it,
//! leaving descriptors for what the service holds anyway ([`HEADROOM`], the Redis pool) and for
//! a reserve of connections past the cap.
//!
//! Past the cap that reserve still serves the priority routes (health checks, metrics,
//! mcp-bridge's WebSocket for bridge-agent) and answers anything else with a quick 503; past the
//! reserve a connection is closed as soon as it is accepted.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::ConfigError;

/// Connections served at once unless `LOCAL_PROVIDER_MAX_CONNECTIONS` says otherwise (and the
/// open-file limit allows). An editor holds a handful; this leaves room for many editors, CLIs
/// and scripts at once while bounding what idle sockets can take (BENCHMARKS.md, "Connections
/// and descriptors").
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long a connection may take to send a whole request head, counted from when it opens or
/// from its previous answer (so it is also the idle keep-alive timeout), unless
/// `LOCAL_PROVIDER_HEADER_TIMEOUT` says otherwise. Real clients send a head in one write and
/// close their own idle connections sooner (Node's fetch after 4 s, httpx after 5 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served past the cap, for the priority routes only.
pub const RESERVE: usize = 32;

/// Descriptors kept free of connections for what a service holds anyway: 13 to 15 at rest
/// (standard streams, the runtime's, the listener, the Unix socket or WebSocket link, the audit
/// log), with room for a rotation, a reconnect and whatever a library opens.
pub const HEADROOM: u64 = 64;

/// How long a connection past the cap has to send its request head: a health check sends it at
/// once, and an idle socket must not hold a reserved place.
pub const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The routes every service serves past the cap: its health checks and its metrics.
pub const HEALTH_PATHS: &[&str] = &["/health", "/health/live", "/health/ready", "/metrics"];

/// The bounds [`crate::http_server::serve`] keeps.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// Paths a connection past the cap is still served for (any method).
    pub priority: &'static [&'static str],
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            priority: &[],
        }
    }
}

impl ConnectionLimits {
    /// The limits for `LOCAL_PROVIDER_MAX_CONNECTIONS` (`None`: the default) within this
    /// process's open-file limit, `others` being descriptors the service holds besides its
    /// connections and the [`HEADROOM`] (the gateway's Redis pool). A value the limit cannot hold
    /// is an error naming both.
    pub fn fit(
        max_connections: Option<u64>,
        others: u64,
        header_timeout: Duration,
        priority: &'static [&'static str],
    ) -> Result<Self, ConfigError> {
        let max_connections = max_connections_for(max_connections, soft_open_file_limit(), others)?;
        Ok(Self {
            max_connections,
            header_timeout,
            priority,
        })
    }

    /// True when a connection past the cap may still be served a request for `path`.
    pub fn is_priority(&self, path: &str) -> bool {
        self.priority.contains(&path)
    }
}

/// The cap for `wanted` connections under an open-file limit of `open_files`, besides the
/// reserve, the [`HEADROOM`] and `others`: any number up to what is left, and by default half of
/// it (at most [`DEFAULT_MAX_CONNECTIONS`]).
pub fn max_connections_for(
    wanted: Option<u64>,
    open_files: u64,
    others: u64,
) -> Result<usize, ConfigError> {
    let kept = RESERVE as u64 + HEADROOM + others;
    let room = open_files.saturating_sub(kept);
    let explain = || {
        format!(
            "this process may open {open_files} files and keeps {kept} of them for other uses \
             (the {RESERVE} connections reserved for health checks among them); raise the \
             open-file limit (ulimit -Hn, LimitNOFILE=, docker run --ulimit nofile=) or lower \
             LOCAL_PROVIDER_MAX_CONNECTIONS"
        )
    };
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    match wanted {
        Some(n) if n > room => Err(ConfigError::new(
            "MAX_CONNECTIONS",
            format!("expected at most {room}, got {n}: {}", explain()),
        )),
        Some(n) => Ok(as_usize(n)),
        None if room < 2 => Err(ConfigError::new("MAX_CONNECTIONS", explain())),
        None => Ok(as_usize(room / 2).min(DEFAULT_MAX_CONNECTIONS)),
    }
}

/// This process's soft open-file limit (`u64::MAX` when unlimited).
pub fn soft_open_file_limit() -> u64 {
    use rustix::process::{getrlimit, Resource};
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// What [`raise_open_file_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub before: u64,
    pub after: u64,
    pub hard: Option<u64>,
}

impl OpenFileLimit {
    /// Logs the limit the service runs with and the connection cap fitted to it.
    pub fn log(&self, max_connections: usize) {
        tracing::info!(
            open_file_limit = self.after,
            raised_from = self.before,
            max_connections,
            "open-file limit and connection cap"
        );
    }
}

/// Raises the soft open-file limit to the hard one, for a service to call at start before
/// reading its configuration. Where the hard limit is unlimited or above what the kernel takes
/// (macOS), the highest of a few usual ceilings that is accepted is used. The limit only ever
/// goes up; if nothing higher is accepted it stays where it was.
pub fn raise_open_file_limit() -> OpenFileLimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum;
    let candidates = [hard.unwrap_or(u64::MAX), 1 << 20, 10_240];
    let after = candidates
        .into_iter()
        .filter(|&n| n > before && hard.is_none_or(|h| n <= h))
        .find(|&n| {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(n),
                    maximum: hard,
                },
            )
            .is_ok()
        })
        .unwrap_or(before);
    OpenFileLimit {
        before,
        after,
        hard,
    }
}

/// An accepted connection holding its place under the cap (or in the reserve) for exactly as
/// long as its socket is open, also after an upgrade hands the socket to a WebSocket.
pub struct Counted {
    tcp: TcpStream,
    _place: OwnedSemaphorePermit,
    _open: OpenGauge,
}

impl Counted {
    pub fn new(tcp: TcpStream, place: OwnedSemaphorePermit) -> Self {
        Self {
            tcp,
            _place: place,
            _open: OpenGauge::new(),
        }
    }
}

/// `http_connections_open`, up while a connection is open.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Counts what happens to connections past the cap and logs it at most every
/// [`Self::EVERY`], so a flood of connections cannot flood the log.
#[derive(Debug, Default)]
pub struct OverLimit {
    reserved: u64,
    closed: u64,
    last_log: Option<tokio::time::Instant>,
}

impl OverLimit {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// A connection past the cap: `reserved` when the reserve took it, else it was closed.
    pub fn record(&mut self, limits: &ConnectionLimits, reserved: bool) {
        let outcome = if reserved {
            self.reserved += 1;
            "reserve"
        } else {
            self.closed += 1;
            "closed"
        };
        metrics::counter!("http_connections_over_limit_total", "outcome" => outcome).increment(1);
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_some_and(|last| now.duration_since(last) < Self::EVERY)
        {
            return;
        }
        tracing::warn!(
            max_connections = limits.max_connections,
            served_by_reserve = self.reserved,
            closed = self.closed,
            "at the connection limit (LOCAL_PROVIDER_MAX_CONNECTIONS): connections past it get only \
             health checks and a 503, or are closed once the reserve is full too (counts since the \
             last such line)"
        );
        self.reserved = 0;
        self.closed = 0;
        self.last_log = Some(now);
    }
}

/// Describes this module's metrics (idempotent).
pub fn describe_metrics() {
    metrics::describe_gauge!("http_connections_open", "HTTP connections open");
    metrics::describe_counter!(
        "http_connections_over_limit_total",
        "Connections past LOCAL_PROVIDER_MAX_CONNECTIONS, by outcome: reserve (health checks \
         served, anything else 503) or closed"
    );
    metrics::describe_counter!(
        "http_connections_timed_out_total",
        "Connections closed part-way through a request head not completed within \
         LOCAL_PROVIDER_HEADER_TIMEOUT (silent ones close without counting)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_reserve_and_the_rest() {
        assert_eq!(max_connections_for(None, 1 << 20, 0).unwrap(), 1024);
        assert_eq!(max_connections_for(None, 1024, 0).unwrap(), (1024 - 96) / 2);
        assert_eq!(
            max_connections_for(None, 1024, 16).unwrap(),
            (1024 - 112) / 2
        );
        assert_eq!(max_connections_for(None, 256, 0).unwrap(), 80);
        assert_eq!(max_connections_for(Some(160), 256, 0).unwrap(), 160);
        assert_eq!(max_connections_for(Some(5000), u64::MAX, 0).unwrap(), 5000);
        let err = max_connections_for(Some(161), 256, 0).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_MAX_CONNECTIONS");
        assert!(err.message.contains("at most 160, got 161"), "{err}");
        assert!(err.message.contains("may open 256 files"), "{err}");
        let err = max_connections_for(Some(150), 256, 16).unwrap_err();
        assert!(err.message.contains("keeps 112"), "{err}");
        let err = max_connections_for(None, 64, 0).unwrap_err();
        assert!(err.message.contains("raise the open-file limit"), "{err}");
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_one() {
        let raised = raise_open_file_limit();
        assert!(raised.after >= raised.before);
        assert_eq!(soft_open_file_limit(), raised.after);
        if let Some(hard) = raised.hard {
            assert!(raised.after <= hard);
        }
        // A second call finds nothing left to raise.
        let again = raise_open_file_limit();
        assert_eq!(again.before, again.after);
    }
}
