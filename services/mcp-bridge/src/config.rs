//! mcp-bridge's settings, read from `LOCAL_PROVIDER_*` variables. Every field has a default so
//! that a bad value can be traced to the one variable that caused it.
use std::path::PathBuf;
use std::time::Duration;

use provider_shared::config::{
    self as shared, Bounded, ConfigError, Flag, LogFormat, LogLevel, Port, Seconds, Secret,
};
use serde::Deserialize;

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
    mcp_bridge_token: Option<Secret>,
    #[serde(default)]
    mcp_http_token: Option<Secret>,
    #[serde(default = "sixty")]
    lease_timeout: Seconds,
    #[serde(default = "default_poll")]
    poll_timeout_default: Seconds,
    #[serde(default = "thirty")]
    heartbeat_interval: Seconds,
    #[serde(default)]
    mcp_bridge_audit_log: Option<String>,
    #[serde(default)]
    log_level: LogLevel,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default = "ten")]
    shutdown_grace: Seconds,
    #[serde(default)]
    mcp_sampling: Flag,
    #[serde(default = "default_max_frame")]
    max_frame_bytes: Bounded<1024, 1_073_741_824>,
    #[serde(default = "thirty")]
    resume_grace: Seconds,
    #[serde(default = "default_stream_buffer")]
    stream_buffer_bytes: Bounded<65_536, 1_073_741_824>,
}

fn default_max_frame() -> Bounded<1024, 1_073_741_824> {
    Bounded(provider_shared::bridge::DEFAULT_MAX_FRAME_BYTES)
}
fn default_stream_buffer() -> Bounded<65_536, 1_073_741_824> {
    Bounded(1024 * 1024)
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
fn ten() -> Seconds {
    Seconds::from_secs(10)
}
fn thirty() -> Seconds {
    Seconds::from_secs(30)
}
fn sixty() -> Seconds {
    Seconds::from_secs(60)
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// bridge-agent must present this bearer on the WebSocket upgrade, when set.
    pub bridge_token: Option<Secret>,
    /// MCP clients must present this bearer on `/mcp`, when set.
    pub http_token: Option<Secret>,
    pub lease_timeout: Duration,
    pub poll_default: Duration,
    pub heartbeat_interval: Duration,
    pub audit_log: Option<PathBuf>,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// Answer through `sampling/createMessage` when an MCP client declares sampling.
    pub sampling: bool,
    /// The largest WebSocket frame (and message) taken from bridge-agent, said in `welcome`.
    pub max_frame_bytes: u64,
    /// How long the requests of a vanished bridge-agent connection wait for it to resume them.
    pub resume_grace: Duration,
    /// Bytes of each request's sent chunks kept for a replay after a resume.
    pub replay_bytes: usize,
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
        let non_empty = |t: Option<Secret>| t.filter(|t| !t.0.is_empty());
        let audit_log = match raw.mcp_bridge_audit_log.as_deref().map(str::trim) {
            None => Some(PathBuf::from("logs/mcp_bridge_audit.log")),
            Some("" | "off" | "none") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        Ok(Config {
            host: raw.mcp_bridge_host,
            port: raw.mcp_bridge_port.0 as u16,
            bridge_token: non_empty(raw.mcp_bridge_token),
            http_token: non_empty(raw.mcp_http_token),
            lease_timeout: raw.lease_timeout.0,
            poll_default: raw.poll_timeout_default.0,
            heartbeat_interval: raw.heartbeat_interval.0,
            audit_log,
            log_level: raw.log_level,
            log_format: raw.log_format,
            shutdown_grace: raw.shutdown_grace.0,
            sampling: raw.mcp_sampling.0,
            max_frame_bytes: raw.max_frame_bytes.0,
            resume_grace: raw.resume_grace.0,
            replay_bytes: usize::try_from(raw.stream_buffer_bytes.0).unwrap_or(usize::MAX),
        })
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
        assert_eq!(c.lease_timeout, Duration::from_secs(60));
        assert_eq!(c.poll_default, Duration::from_secs(240));
        assert!(c.bridge_token.is_none() && c.http_token.is_none());
        assert!(!c.sampling, "sampling is opt-in");
        assert_eq!(
            c.audit_log,
            Some(PathBuf::from("logs/mcp_bridge_audit.log"))
        );
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
}
