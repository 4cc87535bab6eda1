//! mcp-bridge's settings, read from `LOCAL_PROVIDER_*` variables. Every field has a default so
//! that a bad value can be traced to the one variable that caused it.
use std::path::PathBuf;
use std::time::Duration;

use provider_shared::audit;
use provider_shared::config::{
    self as shared, Bounded, ConfigError, Flag, List, LogFormat, LogLevel, Port, Seconds, Secret,
};
use provider_shared::connections::ConnectionLimits;
use provider_shared::runtime::WorkerThreads;
use provider_shared::web_guard;
use serde::Deserialize;

/// Frames waiting to go out to one bridge-agent, and to it from one request (protocol 2). Code
/// holding the queue's lock cannot wait: a chunk that finds it full ends its own request with
/// `slow_client` (`broker.rs` `submit`); results wait for room. The link goes on for the others.
pub const OUTBOUND_QUEUE: usize = 256;

/// Cursor cuts a tool call off at about five minutes; a long-poll must end well before that.
pub const POLL_MAX: Duration = Duration::from_secs(280);
/// The shortest wait a caller may ask for, so that an agent loop never spins.
pub const POLL_MIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
struct Raw {
    #[serde(default = "default_host")]
    mcp_bridge_host: String,
    #[serde(default = "default_port")]
    mcp_bridge_port: Port,
    #[serde(default)]
    allow_non_loopback: Flag,
    #[serde(default)]
    allowed_hosts: List,
    #[serde(default = "default_origins")]
    allowed_origins: List,
    #[serde(default)]
    mcp_bridge_token: Option<Secret>,
    #[serde(default)]
    mcp_bridge_token_file: Option<PathBuf>,
    #[serde(default)]
    mcp_http_token: Option<Secret>,
    #[serde(default)]
    mcp_http_token_file: Option<PathBuf>,
    #[serde(default)]
    mcp_allow_no_token: Flag,
    #[serde(default = "default_lease")]
    lease_timeout: Seconds,
    #[serde(default = "default_poll")]
    poll_timeout_default: Seconds,
    #[serde(default = "thirty")]
    heartbeat_interval: Seconds,
    #[serde(default)]
    mcp_bridge_audit_log: Option<String>,
    #[serde(default = "default_audit_max_bytes")]
    audit_log_max_bytes: Bounded<0, { u64::MAX }>,
    #[serde(default = "default_audit_backups")]
    audit_log_backups: Bounded<0, 1000>,
    #[serde(default)]
    log_level: LogLevel,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default = "ten")]
    shutdown_grace: Seconds,
    #[serde(default)]
    mcp_sampling: Flag,
    #[serde(default = "yes")]
    mcp_deltas: Flag,
    #[serde(default = "default_max_frame")]
    max_frame_bytes: Bounded<1024, 1_073_741_824>,
    #[serde(default = "default_resume_grace")]
    resume_grace: Seconds,
    #[serde(default = "default_stream_buffer")]
    stream_buffer_bytes: Bounded<65_536, 1_073_741_824>,
    #[serde(default)]
    max_connections: Option<Bounded<1, 1_000_000>>,
    #[serde(default = "default_header_timeout")]
    header_timeout: Seconds,
    #[serde(default = "per_cpu")]
    worker_threads: WorkerThreads,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    redis_url: Option<Secret>,
    #[serde(default = "default_redis_prefix")]
    redis_prefix: String,
    #[serde(default = "default_store_timeout")]
    store_timeout: Seconds,
}

/// Served past the connection cap: bridge-agent's WebSocket (it connects to `/`), so that a
/// flood of connections cannot keep the editor's requests away, and the health checks.
const PRIORITY_PATHS: &[&str] = &["/", "/health", "/health/live", "/health/ready", "/metrics"];

fn per_cpu() -> WorkerThreads {
    WorkerThreads::PER_CPU
}

fn default_header_timeout() -> Seconds {
    Seconds(provider_shared::connections::DEFAULT_HEADER_TIMEOUT)
}

fn default_redis_prefix() -> String {
    "mcp-local-provider:".into()
}
fn default_store_timeout() -> Seconds {
    Seconds(Duration::from_millis(250))
}

fn default_max_frame() -> Bounded<1024, 1_073_741_824> {
    Bounded(provider_shared::bridge::DEFAULT_MAX_FRAME_BYTES)
}
fn default_stream_buffer() -> Bounded<65_536, 1_073_741_824> {
    Bounded(1024 * 1024)
}

fn default_origins() -> List {
    List(web_guard::default_allowed_origins())
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> Port {
    Bounded(8787)
}
fn default_poll() -> Seconds {
    Seconds::from_secs(240)
}
fn yes() -> Flag {
    Flag(true)
}
fn default_audit_max_bytes() -> Bounded<0, { u64::MAX }> {
    Bounded(audit::DEFAULT_MAX_BYTES)
}
fn default_audit_backups() -> Bounded<0, 1000> {
    Bounded(audit::DEFAULT_BACKUPS.into())
}
fn ten() -> Seconds {
    Seconds::from_secs(10)
}
fn thirty() -> Seconds {
    Seconds::from_secs(30)
}
fn default_lease() -> Seconds {
    Seconds(shared::timeouts::LEASE_TIMEOUT)
}
fn default_resume_grace() -> Seconds {
    Seconds(shared::timeouts::RESUME_GRACE)
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Host names served besides the loopback ones and `host` (`ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call (`ALLOWED_ORIGINS`); any other `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// bridge-agent must present this bearer on the WebSocket upgrade, when set.
    pub bridge_token: Option<Secret>,
    /// MCP clients must present this bearer on `/mcp`, when set.
    pub http_token: Option<Secret>,
    /// Serving without either token was asked for explicitly (`MCP_ALLOW_NO_TOKEN`).
    pub allow_no_token: bool,
    pub lease_timeout: Duration,
    pub poll_default: Duration,
    pub heartbeat_interval: Duration,
    pub audit_log: Option<PathBuf>,
    pub audit_rotation: audit::Rotation,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// Answer through `sampling/createMessage` when an MCP client declares sampling.
    pub sampling: bool,
    /// Hand an MCP session only the messages of a conversation it has not been given yet.
    pub deltas: bool,
    /// The largest WebSocket frame (and message) taken from bridge-agent, said in `welcome`.
    pub max_frame_bytes: u64,
    /// How long the requests of a vanished bridge-agent connection wait for it to resume them.
    pub resume_grace: Duration,
    /// Bytes of each request's sent chunks kept for a replay after a resume.
    pub replay_bytes: usize,
    /// How many connections are served, and how long one may wait for a request head.
    pub connections: ConnectionLimits,
    /// The threads that run mcp-bridge's tasks (`WORKER_THREADS`; one per CPU unless set).
    pub worker_threads: WorkerThreads,
    /// Where the request queue lives (`QUEUE`): this process's memory, or Redis, shared by every
    /// mcp-bridge on it.
    pub queue: QueueKind,
}

/// `LOCAL_PROVIDER_QUEUE`.
#[derive(Debug, Clone)]
pub enum QueueKind {
    Memory,
    Redis(RedisSettings),
}

/// The Redis queue's settings (docs/configuration.md, "The request queue on Redis").
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `REDIS_URL`; may hold a password, so it is never logged.
    pub url: Secret,
    /// Host and port (or socket path), for logs and `/health`.
    pub address: String,
    /// `REDIS_PREFIX`: every key of the queue starts with it and `queue:`.
    pub prefix: String,
    /// `STORE_TIMEOUT`: the longest wait for one Redis reply (a blocking read waits longer, on
    /// a connection of its own).
    pub timeout: Duration,
}

impl Config {
    /// Reads and checks the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::check(shared::from_env::<Raw>()?)
    }

    /// Reads and checks the given variables (full `LOCAL_PROVIDER_*` names).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::check(shared::from_vars::<Raw>(vars)?)
    }

    fn check(raw: Raw) -> Result<Self, ConfigError> {
        let queue = queue_kind(&raw)?;
        if !shared::is_loopback_host(&raw.mcp_bridge_host) && !raw.allow_non_loopback.0 {
            return Err(ConfigError::new(
                "MCP_BRIDGE_HOST",
                format!(
                    "{:?} is not a loopback address; set LOCAL_PROVIDER_ALLOW_NON_LOOPBACK=true to bind it anyway",
                    raw.mcp_bridge_host
                ),
            ));
        }
        if raw.poll_timeout_default.0 > POLL_MAX {
            return Err(ConfigError::new(
                "POLL_TIMEOUT_DEFAULT",
                format!(
                    "expected at most 280 seconds (Cursor ends tool calls near 5 minutes), got {:?}",
                    raw.poll_timeout_default.0.as_secs_f64()
                ),
            ));
        }
        // An empty token means "no token", as an unset variable does.
        let bridge_token = shared::secret_or_file(
            "MCP_BRIDGE_TOKEN",
            raw.mcp_bridge_token,
            raw.mcp_bridge_token_file.as_deref(),
        )?;
        let http_token = shared::secret_or_file(
            "MCP_HTTP_TOKEN",
            raw.mcp_http_token,
            raw.mcp_http_token_file.as_deref(),
        )?;
        let audit_log = match raw.mcp_bridge_audit_log.as_deref().map(str::trim) {
            None => Some(PathBuf::from("logs/mcp_bridge_audit.log")),
            Some("" | "off" | "none") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        Ok(Config {
            queue,
            allowed_hosts: web_guard::allowed_hosts(&raw.allowed_hosts.0)?,
            allowed_origins: web_guard::allowed_origins(&raw.allowed_origins.0)?,
            host: raw.mcp_bridge_host,
            port: raw.mcp_bridge_port.0 as u16,
            bridge_token,
            http_token,
            allow_no_token: raw.mcp_allow_no_token.0,
            lease_timeout: raw.lease_timeout.0,
            poll_default: raw.poll_timeout_default.0,
            heartbeat_interval: raw.heartbeat_interval.0,
            audit_log,
            audit_rotation: audit::Rotation {
                max_bytes: raw.audit_log_max_bytes.0,
                backups: raw.audit_log_backups.0 as u32,
            },
            log_level: raw.log_level,
            log_format: raw.log_format,
            shutdown_grace: raw.shutdown_grace.0,
            sampling: raw.mcp_sampling.0,
            deltas: raw.mcp_deltas.0,
            max_frame_bytes: raw.max_frame_bytes.0,
            resume_grace: raw.resume_grace.0,
            replay_bytes: usize::try_from(raw.stream_buffer_bytes.0).unwrap_or(usize::MAX),
            connections: ConnectionLimits::fit(
                raw.max_connections.map(|n| n.0),
                0,
                raw.header_timeout.0,
                PRIORITY_PATHS,
            )?,
            worker_threads: raw.worker_threads,
        })
    }

    /// The token variables left unset, by name: the doors anything on this machine may open.
    pub fn missing_tokens(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.bridge_token.is_none() {
            missing.push("LOCAL_PROVIDER_MCP_BRIDGE_TOKEN");
        }
        if self.http_token.is_none() {
            missing.push("LOCAL_PROVIDER_MCP_HTTP_TOKEN");
        }
        missing
    }

    /// Serving needs both tokens unless `MCP_ALLOW_NO_TOKEN` says otherwise: without them any
    /// process on the machine could read every prompt through `/mcp` or reach the agent as a
    /// bridge-agent. (`--stdio` is a client and does not ask.)
    pub fn require_tokens(&self) -> Result<(), ConfigError> {
        match self.missing_tokens().first() {
            Some(var) if !self.allow_no_token => Err(ConfigError {
                var: (*var).to_owned(),
                message: format!(
                    "not set; mcp-bridge serves only with a token for bridge-agent's WebSocket \
                     (LOCAL_PROVIDER_MCP_BRIDGE_TOKEN or _FILE) and one for /mcp \
                     (LOCAL_PROVIDER_MCP_HTTP_TOKEN or _FILE); scripts/start.sh makes both. \
                     To serve without: LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN=true (missing: {})",
                    self.missing_tokens().join(", ")
                ),
            }),
            _ => Ok(()),
        }
    }

    /// True when the listener binds something other than loopback (allowed, with a warning).
    pub fn binds_non_loopback(&self) -> bool {
        !shared::is_loopback_host(&self.host)
    }

    /// The wait of one long-poll: the caller's choice clamped to 10–280 s, else the default.
    pub fn poll_wait(&self, asked: Option<f64>) -> Duration {
        match asked {
            Some(secs) if secs.is_finite() => {
                Duration::from_secs_f64(secs.clamp(POLL_MIN.as_secs_f64(), POLL_MAX.as_secs_f64()))
            }
            _ => self.poll_default,
        }
    }
}

fn queue_kind(raw: &Raw) -> Result<QueueKind, ConfigError> {
    match raw.queue.as_deref().map(str::trim) {
        None | Some("" | "memory") => {
            if raw.redis_url.is_some() {
                tracing::warn!("LOCAL_PROVIDER_REDIS_URL is set but the request queue is in memory (set LOCAL_PROVIDER_QUEUE=redis)");
            }
            return Ok(QueueKind::Memory);
        }
        Some("redis") => {}
        Some(other) => {
            return Err(ConfigError::new(
                "QUEUE",
                format!("expected memory or redis, got {other:?}"),
            ))
        }
    }
    let Some(url) = raw.redis_url.as_ref().map(|u| u.0.trim().to_owned()) else {
        return Err(ConfigError::new(
            "REDIS_URL",
            "required with LOCAL_PROVIDER_QUEUE=redis, e.g. redis://127.0.0.1:6379/0",
        ));
    };
    use redis::IntoConnectionInfo;
    // The URL is not echoed: it may carry a password.
    let info = url.as_str().into_connection_info().map_err(|e| {
        ConfigError::new(
            "REDIS_URL",
            format!("expected a redis://[user:password@]host[:port][/db] or unix:// URL: {e}"),
        )
    })?;
    let prefix = raw.redis_prefix.trim().to_owned();
    if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            "REDIS_PREFIX",
            format!(
                "expected a non-empty key prefix without spaces, got {:?}",
                raw.redis_prefix
            ),
        ));
    }
    let timeout = raw.store_timeout.0;
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err(ConfigError::new(
            "STORE_TIMEOUT",
            format!(
                "expected more than 0 and at most 10 seconds, got {}",
                timeout.as_secs_f64()
            ),
        ));
    }
    Ok(QueueKind::Redis(RedisSettings {
        address: info.addr().to_string(),
        url: Secret(url),
        prefix,
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (format!("LOCAL_PROVIDER_{k}"), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8787));
        assert_eq!(c.worker_threads, WorkerThreads::PER_CPU);
        assert_eq!(c.lease_timeout, Duration::from_secs(30));
        assert_eq!(c.poll_default, Duration::from_secs(240));
        assert!(c.bridge_token.is_none() && c.http_token.is_none());
        assert!(!c.sampling, "sampling is opt-in");
        assert!(c.deltas, "deltas are on by default");
        assert!(
            !Config::from_vars(vars(&[("MCP_DELTAS", "false")]))
                .unwrap()
                .deltas
        );
        assert_eq!(
            c.audit_log,
            Some(PathBuf::from("logs/mcp_bridge_audit.log"))
        );
    }

    #[test]
    fn serving_requires_both_tokens_unless_allowed() {
        let none = Config::from_vars(vec![]).unwrap();
        let err = none.require_tokens().unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_MCP_BRIDGE_TOKEN");
        assert!(err.message.contains("MCP_ALLOW_NO_TOKEN"), "{err}");
        let one = Config::from_vars(vars(&[("MCP_BRIDGE_TOKEN", "b")])).unwrap();
        assert_eq!(
            one.require_tokens().unwrap_err().var,
            "LOCAL_PROVIDER_MCP_HTTP_TOKEN"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mcp_http_token");
        std::fs::write(&file, "h\n").unwrap();
        let both = Config::from_vars(vars(&[
            ("MCP_BRIDGE_TOKEN", "b"),
            ("MCP_HTTP_TOKEN_FILE", file.to_str().unwrap()),
        ]))
        .unwrap();
        assert!(both.require_tokens().is_ok());
        assert_eq!(both.http_token.unwrap().0, "h");
        let allowed = Config::from_vars(vars(&[("MCP_ALLOW_NO_TOKEN", "true")])).unwrap();
        assert!(allowed.require_tokens().is_ok());
        assert_eq!(allowed.missing_tokens().len(), 2);
    }

    #[test]
    fn audit_rotation_defaults_and_values() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.audit_rotation, audit::Rotation::default());
        let c = Config::from_vars(vars(&[
            ("AUDIT_LOG_MAX_BYTES", "0"),
            ("AUDIT_LOG_BACKUPS", "2"),
        ]))
        .unwrap();
        assert_eq!(
            (c.audit_rotation.max_bytes, c.audit_rotation.backups),
            (0, 2)
        );
        let err = Config::from_vars(vars(&[("AUDIT_LOG_BACKUPS", "-1")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_AUDIT_LOG_BACKUPS");
    }

    #[test]
    fn poll_wait_is_clamped_to_what_cursor_allows() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.poll_wait(None), Duration::from_secs(240));
        assert_eq!(c.poll_wait(Some(1.0)), POLL_MIN);
        assert_eq!(c.poll_wait(Some(100.0)), Duration::from_secs(100));
        assert_eq!(c.poll_wait(Some(10_000.0)), POLL_MAX);
        assert_eq!(c.poll_wait(Some(f64::NAN)), Duration::from_secs(240));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Config::from_vars(vars(&[("POLL_TIMEOUT_DEFAULT", "300")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_POLL_TIMEOUT_DEFAULT");
        let err = Config::from_vars(vars(&[("LEASE_TIMEOUT", "soon")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_LEASE_TIMEOUT");
        let err =
            Config::from_vars(vars(&[("ALLOWED_HOSTS", "host.docker.internal:8787")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_HOSTS");
        let err = Config::from_vars(vars(&[("ALLOWED_ORIGINS", "evil")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_ORIGINS");
        let err = Config::from_vars(vars(&[("MCP_BRIDGE_HOST", "0.0.0.0")])).unwrap_err();
        assert!(err.message.contains("ALLOW_NON_LOOPBACK"), "{err}");
        let c = Config::from_vars(vars(&[
            ("MCP_BRIDGE_HOST", "0.0.0.0"),
            ("ALLOW_NON_LOOPBACK", "true"),
            ("MCP_BRIDGE_TOKEN", ""),
            ("MCP_BRIDGE_AUDIT_LOG", "off"),
        ]))
        .unwrap();
        assert!(c.binds_non_loopback() && c.bridge_token.is_none() && c.audit_log.is_none());
    }

    #[test]
    fn the_queue_is_in_memory_unless_redis_is_asked_for_with_a_url() {
        let c = Config::from_vars(vec![]).unwrap();
        assert!(matches!(c.queue, QueueKind::Memory));
        let err = Config::from_vars(vars(&[("QUEUE", "kafka")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_QUEUE");
        assert!(err.message.contains("memory or redis"), "{err}");
        let err = Config::from_vars(vars(&[("QUEUE", "redis")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_REDIS_URL");
        let err =
            Config::from_vars(vars(&[("QUEUE", "redis"), ("REDIS_URL", "http://x")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_REDIS_URL");
        assert!(
            !err.message.contains("http://x"),
            "the URL is not echoed: {err}"
        );
        let err = Config::from_vars(vars(&[
            ("QUEUE", "redis"),
            ("REDIS_URL", "redis://127.0.0.1:6390/2"),
            ("STORE_TIMEOUT", "0"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_STORE_TIMEOUT");
        let c = Config::from_vars(vars(&[
            ("QUEUE", "redis"),
            ("REDIS_URL", "redis://:pw@127.0.0.1:6390/2"),
        ]))
        .unwrap();
        let QueueKind::Redis(r) = c.queue else {
            panic!("expected the Redis queue")
        };
        assert_eq!(r.address, "127.0.0.1:6390");
        assert_eq!(r.prefix, "mcp-local-provider:");
        assert_eq!(r.timeout, Duration::from_millis(250));
    }
}
