//! bridge-agent's settings, read from `LOCAL_PROVIDER_*` variables. Every field has a default so
//! that a bad value can be traced to the one variable that caused it.
use std::path::PathBuf;
use std::time::Duration;

use provider_shared::config::{
    self as shared, timeouts, Bounded, ConfigError, Flag, List, LogFormat, LogLevel, Port, Seconds,
    Secret,
};
use provider_shared::connections::ConnectionLimits;
use provider_shared::runtime::WorkerThreads;
use provider_shared::web_guard;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "shared::default_bridge_socket")]
    pub bridge_socket: PathBuf,
    #[serde(default)]
    pub mcp_bridge_url: BridgeUrl,
    #[serde(default)]
    pub mcp_bridge_token: Option<Secret>,
    /// A file holding the token instead (read into `mcp_bridge_token` at start-up).
    #[serde(default)]
    pub mcp_bridge_token_file: Option<PathBuf>,
    #[serde(default = "default_agent_id")]
    pub agent_id: String,
    #[serde(default = "thirty")]
    pub connection_timeout: Seconds,
    #[serde(default = "thirty")]
    pub heartbeat_interval: Seconds,
    #[serde(default = "default_attempts")]
    pub reconnect_attempts: Bounded<1, 1_000_000>,
    #[serde(default = "five")]
    pub reconnect_delay: Seconds,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Seconds,
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Seconds,
    #[serde(default = "default_host")]
    pub bridge_agent_host: String,
    #[serde(default)]
    pub allow_non_loopback: Flag,
    #[serde(default = "default_port")]
    pub bridge_agent_port: Port,
    /// Names the health listener answers besides loopback names and its own address.
    #[serde(default)]
    pub allowed_hosts: List,
    /// Browser origins that may read the health listener; any other `Origin` is refused.
    #[serde(default = "default_origins")]
    pub allowed_origins: List,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "ten")]
    pub shutdown_grace: Seconds,
    /// Bytes of one request's answer that may wait for the gateway before the request ends.
    #[serde(default = "default_stream_buffer")]
    pub stream_buffer_bytes: Bounded<65_536, 1_073_741_824>,
    /// The largest frame the MCP bridge takes, unless its `welcome` says a smaller one.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: Bounded<1024, 1_073_741_824>,
    /// How long a request whose WebSocket dropped waits for a new one to resume on.
    #[serde(default = "default_resume_grace")]
    pub resume_grace: Seconds,
    #[serde(default)]
    pub max_connections: Option<Bounded<1, 1_000_000>>,
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Seconds,
    /// The threads that run bridge-agent's tasks: one unless set.
    #[serde(default = "one_thread")]
    pub worker_threads: WorkerThreads,
    /// The health endpoint's bounds, from the two fields above (set by [`Config::from_env`]).
    #[serde(skip)]
    pub connections: ConnectionLimits,
}

fn one_thread() -> WorkerThreads {
    WorkerThreads::ONE
}

fn default_header_timeout() -> Seconds {
    Seconds(provider_shared::connections::DEFAULT_HEADER_TIMEOUT)
}

fn default_stream_buffer() -> Bounded<65_536, 1_073_741_824> {
    Bounded(1024 * 1024)
}
fn default_max_frame() -> Bounded<1024, 1_073_741_824> {
    Bounded(provider_shared::bridge::DEFAULT_MAX_FRAME_BYTES)
}

fn default_origins() -> List {
    List(web_guard::default_allowed_origins())
}
fn default_agent_id() -> String {
    "local-provider-1".into()
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> Port {
    Bounded(8789)
}
fn default_attempts() -> Bounded<1, 1_000_000> {
    Bounded(5)
}
fn five() -> Seconds {
    Seconds::from_secs(5)
}
fn ten() -> Seconds {
    Seconds::from_secs(10)
}
fn thirty() -> Seconds {
    Seconds::from_secs(30)
}
fn default_request_timeout() -> Seconds {
    Seconds(timeouts::REQUEST_TIMEOUT)
}
fn default_response_timeout() -> Seconds {
    Seconds(timeouts::RESPONSE_TIMEOUT)
}
fn default_resume_grace() -> Seconds {
    Seconds(timeouts::RESUME_GRACE)
}

/// The MCP bridge's address: a `ws://` URL with a host. The bridge runs on this machine, so this
/// build carries no TLS stack; a `wss://` URL is refused at start-up rather than failing later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeUrl(pub String);

impl Default for BridgeUrl {
    fn default() -> Self {
        BridgeUrl("ws://127.0.0.1:8787".into())
    }
}

impl<'de> Deserialize<'de> for BridgeUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let trimmed = raw.trim();
        let uri = trimmed.parse::<http::Uri>().ok();
        let has_host = uri
            .as_ref()
            .and_then(|u| u.host())
            .is_some_and(|h| !h.is_empty());
        match uri.as_ref().and_then(|u| u.scheme_str()) {
            Some("ws") if has_host => Ok(BridgeUrl(trimmed.to_owned())),
            Some("wss") => Err(serde::de::Error::custom(format!(
                "wss:// is not supported: the MCP bridge runs on this machine, use a ws:// URL (e.g. ws://127.0.0.1:8787), got {raw:?}"
            ))),
            _ => Err(serde::de::Error::custom(format!(
                "expected a ws:// URL with a host (e.g. ws://127.0.0.1:8787), got {raw:?}"
            ))),
        }
    }
}

impl std::fmt::Display for BridgeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Reads and checks the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        shared::from_env::<Config>()?.validated()
    }

    /// Reads and checks the given variables (full `LOCAL_PROVIDER_*` names).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        shared::from_vars::<Config>(vars)?.validated()
    }

    fn validated(mut self) -> Result<Self, ConfigError> {
        if !shared::is_loopback_host(&self.bridge_agent_host) && !self.allow_non_loopback.0 {
            return Err(ConfigError::new(
                "BRIDGE_AGENT_HOST",
                format!(
                    "{:?} is not a loopback address; set LOCAL_PROVIDER_ALLOW_NON_LOOPBACK=true to bind it anyway",
                    self.bridge_agent_host
                ),
            ));
        }
        self.allowed_hosts = List(web_guard::allowed_hosts(&self.allowed_hosts.0)?);
        self.allowed_origins = List(web_guard::allowed_origins(&self.allowed_origins.0)?);
        if self.agent_id.trim().is_empty() {
            return Err(ConfigError::new("AGENT_ID", "expected a non-empty name"));
        }
        // An empty token means "no token", as an unset variable does.
        self.mcp_bridge_token = shared::secret_or_file(
            "MCP_BRIDGE_TOKEN",
            self.mcp_bridge_token.take(),
            self.mcp_bridge_token_file.as_deref(),
        )?;
        self.connections = ConnectionLimits::fit(
            self.max_connections.map(|n| n.0),
            0,
            self.header_timeout.0,
            provider_shared::connections::HEALTH_PATHS,
        )?;
        Ok(self)
    }

    /// True when the health listener binds something other than loopback (allowed, but worth a
    /// warning at start-up).
    pub fn binds_non_loopback(&self) -> bool {
        !shared::is_loopback_host(&self.bridge_agent_host)
    }

    pub fn connection_timeout(&self) -> Duration {
        self.connection_timeout.0
    }
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval.0
    }
    pub fn reconnect_delay(&self) -> Duration {
        self.reconnect_delay.0
    }
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.0
    }
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout.0
    }
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace.0
    }
    pub fn resume_grace(&self) -> Duration {
        self.resume_grace.0
    }
    pub fn stream_buffer_bytes(&self) -> usize {
        usize::try_from(self.stream_buffer_bytes.0).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (format!("LOCAL_PROVIDER_{k}"), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_the_brief() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.mcp_bridge_url.0, "ws://127.0.0.1:8787");
        assert_eq!(c.worker_threads, WorkerThreads::ONE);
        assert_eq!(c.agent_id, "local-provider-1");
        assert_eq!(c.connection_timeout(), Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(30));
        assert_eq!(c.reconnect_attempts.0, 5);
        assert_eq!(c.reconnect_delay(), Duration::from_secs(5));
        assert_eq!(c.request_timeout(), Duration::from_secs(90));
        assert_eq!(c.response_timeout(), Duration::from_secs(300));
        assert_eq!(c.shutdown_grace(), Duration::from_secs(10));
        assert_eq!(c.bridge_agent_host, "127.0.0.1");
        assert_eq!(c.bridge_agent_port.0, 8789);
        assert!(c.mcp_bridge_token.is_none());
        assert_eq!(c.bridge_socket, shared::default_bridge_socket());
    }

    #[test]
    fn fractional_seconds_and_token() {
        let c = Config::from_vars(vars(&[
            ("CONNECTION_TIMEOUT", "0.2"),
            ("MCP_BRIDGE_TOKEN", "s3cret"),
            ("MCP_BRIDGE_URL", "ws://bridge.example:9000/ws"),
        ]))
        .unwrap();
        assert_eq!(c.connection_timeout(), Duration::from_millis(200));
        assert_eq!(c.mcp_bridge_token.unwrap().0, "s3cret");
        assert!(!format!(
            "{:?}",
            Config::from_vars(vars(&[("MCP_BRIDGE_TOKEN", "s3cret")])).unwrap()
        )
        .contains("s3cret"));
        let c = Config::from_vars(vars(&[("MCP_BRIDGE_TOKEN", "")])).unwrap();
        assert!(c.mcp_bridge_token.is_none());
        let file = std::env::temp_dir().join(format!("bridge-token-{}", std::process::id()));
        std::fs::write(&file, "from-a-file\n").unwrap();
        let c = Config::from_vars(vars(&[("MCP_BRIDGE_TOKEN_FILE", file.to_str().unwrap())]));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(c.unwrap().mcp_bridge_token.unwrap().0, "from-a-file");
    }

    #[test]
    fn bad_url_names_the_variable() {
        for bad in [
            "http://127.0.0.1:8787",
            "127.0.0.1:8787",
            "ws://",
            "nonsense",
            "wss://bridge.example/ws",
        ] {
            let err = Config::from_vars(vars(&[("MCP_BRIDGE_URL", bad)])).unwrap_err();
            assert_eq!(err.var, "LOCAL_PROVIDER_MCP_BRIDGE_URL", "{bad}");
            assert!(err.message.contains("ws://"), "{err}");
        }
    }

    #[test]
    fn attempts_must_be_at_least_one() {
        let err = Config::from_vars(vars(&[("RECONNECT_ATTEMPTS", "0")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_RECONNECT_ATTEMPTS");
    }

    #[test]
    fn non_loopback_needs_opt_in() {
        let err = Config::from_vars(vars(&[("BRIDGE_AGENT_HOST", "0.0.0.0")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_BRIDGE_AGENT_HOST");
        assert!(err.message.contains("ALLOW_NON_LOOPBACK"));
        let c = Config::from_vars(vars(&[
            ("BRIDGE_AGENT_HOST", "0.0.0.0"),
            ("ALLOW_NON_LOOPBACK", "true"),
        ]))
        .unwrap();
        assert!(c.binds_non_loopback());
    }

    #[test]
    fn buffer_frame_and_resume_settings_have_documented_defaults_and_bounds() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.stream_buffer_bytes(), 1024 * 1024);
        assert_eq!(c.max_frame_bytes.0, 48 * 1024 * 1024);
        assert_eq!(c.resume_grace(), Duration::from_secs(30));
        for (var, bad) in [
            ("STREAM_BUFFER_BYTES", "1000"),
            ("MAX_FRAME_BYTES", "lots"),
            ("RESUME_GRACE", "-1"),
        ] {
            let err = Config::from_vars(vars(&[(var, bad)])).unwrap_err();
            assert_eq!(err.var, format!("LOCAL_PROVIDER_{var}"), "{err}");
        }
    }
}
