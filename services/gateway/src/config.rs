//! The gateway's settings, all from `LOCAL_PROVIDER_*` variables (docs/configuration.md).
use std::path::PathBuf;
use std::time::Duration;

use provider_shared::config::{
    self, is_loopback_host, timeouts, Bounded, ConfigError, Flag, List, LogFormat, LogLevel, Port,
    Seconds, Secret,
};
use provider_shared::connections::{self, ConnectionLimits};
use provider_shared::runtime::WorkerThreads;
use serde::Deserialize;

/// The variables as given; [`Settings::resolve`] checks how they fit together.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub host: String,
    pub port: Port,
    pub allow_non_loopback: Flag,
    pub allow_keyless_generation: Flag,
    pub overhead_header: Flag,
    pub api_key: Option<Secret>,
    pub api_key_sha256: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    pub admin_token: Option<Secret>,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub session_ttl: Seconds,
    pub session_idle: Seconds,
    pub max_sessions: Bounded<0, 1_000_000>,
    pub rate_limit_rpm: Bounded<1, 1_000_000_000>,
    pub rate_limit_burst: Bounded<1, 1_000_000_000>,
    pub rate_limit_tpm: Bounded<1, 1_000_000_000_000>,
    pub default_max_tokens: Bounded<1, 1_000_000>,
    pub rate_limit_output_reservation: Bounded<0, 100_000_000>,
    pub auth_failure_limit: Bounded<1, 1_000_000>,
    pub model_name: String,
    pub model_aliases: Option<String>,
    pub max_tokens_limit: Option<Bounded<1, 100_000_000>>,
    pub context_window: Bounded<1, 100_000_000>,
    /// No longer read: set, it stops start-up with a line naming what replaced it.
    pub max_content_bytes: Option<String>,
    pub max_body_bytes: Bounded<1024, 1_073_741_824>,
    pub max_body_bytes_in_flight: Option<Bounded<1024, 4_398_046_511_104>>,
    pub request_timeout: Seconds,
    pub response_timeout: Seconds,
    pub max_concurrent_requests: Bounded<1, 1_000_000>,
    pub session_store: StoreKind,
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
    pub redis_pool_size: Bounded<1, 1024>,
    pub store_timeout: Seconds,
    pub store_failure_policy: FailurePolicy,
    pub audit_log: Option<String>,
    pub audit_log_max_bytes: Bounded<0, { u64::MAX }>,
    pub audit_log_backups: Bounded<0, 1000>,
    pub allowed_origins: List,
    pub allowed_hosts: List,
    pub protect_operations: Flag,
    pub bridge_socket: Option<PathBuf>,
    pub connection_timeout: Seconds,
    pub keepalive_interval: Seconds,
    pub shutdown_grace: Seconds,
    pub status_agent_gone_after: Seconds,
    pub stream_buffer_bytes: Bounded<65_536, 1_073_741_824>,
    pub resume_grace: Seconds,
    pub max_connections: Option<Bounded<1, 1_000_000>>,
    pub header_timeout: Seconds,
    pub worker_threads: WorkerThreads,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: Bounded(8788),
            allow_non_loopback: Flag(false),
            allow_keyless_generation: Flag(false),
            overhead_header: Flag(false),
            api_key: None,
            api_key_sha256: None,
            api_key_file: None,
            admin_token: None,
            log_level: LogLevel::default(),
            log_format: LogFormat::default(),
            session_ttl: Seconds::from_secs(300),
            session_idle: Seconds::from_secs(300),
            max_sessions: Bounded(10),
            rate_limit_rpm: Bounded(60),
            rate_limit_burst: Bounded(10),
            rate_limit_tpm: Bounded(100_000),
            default_max_tokens: Bounded(1024),
            rate_limit_output_reservation: Bounded(8192),
            auth_failure_limit: Bounded(10),
            model_name: "cursor-agent-local".into(),
            model_aliases: None,
            max_tokens_limit: None,
            context_window: Bounded(200_000),
            max_content_bytes: None,
            max_body_bytes: Bounded(DEFAULT_MAX_BODY_BYTES),
            max_body_bytes_in_flight: None,
            request_timeout: Seconds(timeouts::REQUEST_TIMEOUT),
            response_timeout: Seconds(timeouts::RESPONSE_TIMEOUT),
            max_concurrent_requests: Bounded(50),
            session_store: StoreKind::Memory,
            redis_url: None,
            redis_prefix: "mcp-local-provider:".into(),
            redis_pool_size: Bounded(16),
            store_timeout: Seconds(Duration::from_millis(250)),
            store_failure_policy: FailurePolicy::Closed,
            audit_log: None,
            audit_log_max_bytes: Bounded(provider_shared::audit::DEFAULT_MAX_BYTES),
            audit_log_backups: Bounded(provider_shared::audit::DEFAULT_BACKUPS.into()),
            allowed_origins: List(provider_shared::web_guard::default_allowed_origins()),
            allowed_hosts: List::default(),
            protect_operations: Flag(false),
            bridge_socket: None,
            connection_timeout: Seconds::from_secs(30),
            keepalive_interval: Seconds::from_secs(10),
            shutdown_grace: Seconds::from_secs(10),
            status_agent_gone_after: Seconds::from_secs(60),
            stream_buffer_bytes: Bounded(DEFAULT_STREAM_BUFFER_BYTES),
            resume_grace: Seconds(timeouts::RESUME_GRACE),
            max_connections: None,
            header_timeout: Seconds(provider_shared::connections::DEFAULT_HEADER_TIMEOUT),
            worker_threads: WorkerThreads::ONE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

impl<'de> Deserialize<'de> for StoreKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "memory" | "" => Ok(StoreKind::Memory),
            "redis" => Ok(StoreKind::Redis),
            _ => Err(serde::de::Error::custom(format!(
                "expected memory or redis, got {raw:?}"
            ))),
        }
    }
}

/// What the gateway does while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse with 503 `store_unavailable`.
    Closed,
    /// Let rate limits and auth throttling pass; sessions still need the store.
    Open,
}

impl<'de> Deserialize<'de> for FailurePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "closed" | "" => Ok(FailurePolicy::Closed),
            "open" => Ok(FailurePolicy::Open),
            _ => Err(serde::de::Error::custom(format!(
                "expected closed (refuse with 503) or open (rate limits pass), got {raw:?}"
            ))),
        }
    }
}

/// The model names the one agent answers to besides `MODEL_NAME` (`LOCAL_PROVIDER_MODEL_ALIASES`).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelAliases {
    /// Every name (the default, and `*`): single-model servers answer whatever name a client
    /// asks for, and so does this one.
    Any,
    /// Only names matching one of these globs (and `MODEL_NAME`).
    Only(Vec<glob::Pattern>),
}

/// At most this many globs, each at most this long (a model name is at most 256 bytes too).
const MAX_ALIASES: usize = 64;
const MAX_ALIAS_BYTES: usize = 256;

impl ModelAliases {
    /// Comma-separated globs: `*` any run of characters, `?` one character, `[abc]` / `[a-z]` /
    /// `[!abc]` one character of (or not of) a set; everything else is literal and
    /// case-sensitive. Spaces around entries and empty entries are ignored; unset or empty is
    /// `*`.
    pub fn parse(raw: Option<&str>) -> Result<Self, ConfigError> {
        let entries: Vec<&str> = raw
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() || entries.contains(&"*") {
            return Ok(ModelAliases::Any);
        }
        let syntax = "expected comma-separated model-name globs (`*` any run of characters, `?` one character, `[abc]` one of a set), e.g. `claude-*,gpt-4o`";
        if entries.len() > MAX_ALIASES {
            return Err(ConfigError::new(
                "MODEL_ALIASES",
                format!(
                    "{syntax}; at most {MAX_ALIASES} of them, got {}",
                    entries.len()
                ),
            ));
        }
        let mut patterns = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.len() > MAX_ALIAS_BYTES
                || entry.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::new(
                    "MODEL_ALIASES",
                    format!("{syntax}, each without spaces and at most {MAX_ALIAS_BYTES} bytes; got {entry:?}"),
                ));
            }
            let pattern = glob::Pattern::new(entry).map_err(|err| {
                ConfigError::new("MODEL_ALIASES", format!("{syntax}; {entry:?}: {err}"))
            })?;
            patterns.push(pattern);
        }
        Ok(ModelAliases::Only(patterns))
    }
}

/// Where the Redis store lives.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    /// `host:port` (or the socket path) without credentials, for logs and health.
    pub address: String,
    pub prefix: String,
    pub pool_size: usize,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisSettings")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Validated settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub api_key_digest: [u8; 32],
    pub admin_token_digest: Option<[u8; 32]>,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub session_ttl: Duration,
    pub session_idle: Duration,
    pub max_sessions: u64,
    pub rpm: u64,
    pub burst: u64,
    pub tpm: u64,
    pub default_max_tokens: u64,
    /// The most of a request's output cap its token reservation holds (`RATE_LIMIT_OUTPUT_RESERVATION`).
    pub output_reservation: u64,
    pub auth_failure_limit: u64,
    pub model_name: String,
    /// Which other model names are answered by the one agent (`MODEL_ALIASES`).
    pub model_aliases: ModelAliases,
    /// `MAX_TOKENS_LIMIT` when set: the most output a request may ask for. Unset, the context
    /// window alone bounds it.
    pub max_tokens_limit: Option<u64>,
    /// Prompt plus output tokens a request may need; more is a 400 `context_length_exceeded`.
    pub context_window: u64,
    pub max_body_bytes: usize,
    /// Bytes of request bodies read and held at once on the authenticated routes, from before
    /// each is read until its request is with bridge-agent or refused.
    pub max_body_bytes_in_flight: u64,
    pub response_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// Generating routes serve callers without a key (loopback only).
    pub allow_keyless_generation: bool,
    /// Answers carry `x-gateway-overhead-ms`.
    pub overhead_header: bool,
    pub session_store: StoreKind,
    /// Set when `session_store` is Redis.
    pub redis: Option<RedisSettings>,
    /// Bound on every store operation.
    pub store_timeout: Duration,
    pub store_failure_policy: FailurePolicy,
    pub audit_log: Option<PathBuf>,
    pub audit_rotation: provider_shared::audit::Rotation,
    pub allowed_origins: Vec<String>,
    /// Host names served besides the loopback ones (`ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
    /// `/metrics`, `/health` detail and `/status.json` need the admin token.
    pub protect_operations: bool,
    pub bridge_socket: PathBuf,
    pub connection_timeout: Duration,
    pub keepalive_interval: Duration,
    pub shutdown_grace: Duration,
    /// The status page calls the agent gone when no long-poll was open for this long.
    pub status_agent_gone_after: Duration,
    /// Bytes of answer one request may hold for a client that is not reading, before it ends
    /// with `slow_client`.
    pub stream_buffer_bytes: usize,
    /// How long a request waits for bridge-agent to come back and resume it.
    pub resume_grace: Duration,
    /// How many connections are served, and how long one may wait for a request head.
    pub connections: ConnectionLimits,
    /// The threads that run the gateway's tasks (`WORKER_THREADS`).
    pub worker_threads: WorkerThreads,
}

/// 1 MiB: eight times a 32,000-token answer (what Claude Code asks for) at four bytes a token, so
/// an agent that keeps to what it was asked never trips the bound, yet one client that stops
/// reading costs at most this much.
pub const DEFAULT_STREAM_BUFFER_BYTES: u64 = 1024 * 1024;

/// 32 MiB, the request size Anthropic's Messages API takes: whatever Claude Code sends there fits.
/// A whole 200,000-token context of text is 1–2 MB of JSON; the rest is room for base64 images
/// and documents. The WebSocket frame (`MAX_FRAME_BYTES`, 48 MiB by default) holds a request of
/// this size with room for its conversion.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// `MAX_BODY_BYTES_IN_FLIGHT`'s default, in bodies of `MAX_BODY_BYTES`: 128 MiB at the default
/// cap, while a typical request (an editor's conversation) is tens to hundreds of KiB.
pub const BODIES_IN_FLIGHT: u64 = 4;

/// Keys shorter than this are refused: they would be guessable.
pub const MIN_SECRET_LEN: usize = 32;

impl Settings {
    /// Reads and checks the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::resolve(config::from_env()?)
    }

    pub fn resolve(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.host.trim().is_empty() {
            return Err(ConfigError::new(
                "HOST",
                "expected an address to bind, got \"\"",
            ));
        }
        if !is_loopback_host(&raw.host) && !raw.allow_non_loopback.0 {
            return Err(ConfigError::new(
                "HOST",
                format!(
                    "{:?} is not a loopback address; set LOCAL_PROVIDER_ALLOW_NON_LOOPBACK=true to bind it anyway",
                    raw.host
                ),
            ));
        }
        if raw.allow_keyless_generation.0 && !is_loopback_host(&raw.host) {
            return Err(ConfigError::new(
                "ALLOW_KEYLESS_GENERATION",
                format!(
                    "keyless generation is allowed only on a loopback address, and LOCAL_PROVIDER_HOST is {:?}",
                    raw.host
                ),
            ));
        }
        let api_key_digest = api_key_digest(&raw)?;
        let admin_token_digest = match &raw.admin_token {
            Some(token) => {
                check_secret_len("ADMIN_TOKEN", &token.0)?;
                let digest = provider_shared::digest::sha256(token.0.as_bytes());
                if digest == api_key_digest {
                    return Err(ConfigError::new(
                        "ADMIN_TOKEN",
                        "must differ from the API key",
                    ));
                }
                Some(digest)
            }
            None => None,
        };
        if raw.model_name.trim().is_empty() {
            return Err(ConfigError::new(
                "MODEL_NAME",
                "expected a model name, got \"\"",
            ));
        }
        if raw
            .max_content_bytes
            .as_deref()
            .is_some_and(|v| !v.trim().is_empty())
        {
            return Err(ConfigError::new(
                "MAX_CONTENT_BYTES",
                "is no longer used: a message may be as large as the context window allows (LOCAL_PROVIDER_CONTEXT_WINDOW, in tokens), within the request body cap (LOCAL_PROVIDER_MAX_BODY_BYTES); remove this variable",
            ));
        }
        if let Some(limit) = raw.max_tokens_limit {
            if limit.0 > raw.context_window.0 {
                return Err(ConfigError::new(
                    "MAX_TOKENS_LIMIT",
                    format!(
                        "expected at most LOCAL_PROVIDER_CONTEXT_WINDOW ({}), or leave it unset to accept up to the window; got {}",
                        raw.context_window.0, limit.0
                    ),
                ));
            }
            if raw.default_max_tokens.0 > limit.0 {
                return Err(ConfigError::new(
                    "DEFAULT_MAX_TOKENS",
                    format!(
                        "expected at most LOCAL_PROVIDER_MAX_TOKENS_LIMIT ({}), got {}",
                        limit.0, raw.default_max_tokens.0
                    ),
                ));
            }
        }
        if raw.default_max_tokens.0 >= raw.context_window.0 {
            return Err(ConfigError::new(
                "CONTEXT_WINDOW",
                format!(
                    "expected more than LOCAL_PROVIDER_DEFAULT_MAX_TOKENS ({}) tokens, or no request without max_tokens would fit; got {}",
                    raw.default_max_tokens.0, raw.context_window.0
                ),
            ));
        }
        let max_body_bytes_in_flight = match raw.max_body_bytes_in_flight {
            None => raw.max_body_bytes.0.saturating_mul(BODIES_IN_FLIGHT),
            Some(bytes) if bytes.0 < raw.max_body_bytes.0 => {
                return Err(ConfigError::new(
                    "MAX_BODY_BYTES_IN_FLIGHT",
                    format!(
                        "expected at least LOCAL_PROVIDER_MAX_BODY_BYTES ({}), or a body of that size could never be read; got {}",
                        raw.max_body_bytes.0, bytes.0
                    ),
                ));
            }
            Some(bytes) => bytes.0,
        };
        let redis = redis_settings(&raw)?;
        if raw.store_timeout.0 > Duration::from_secs(10) {
            return Err(ConfigError::new(
                "STORE_TIMEOUT",
                format!(
                    "expected at most 10 seconds (a request waits this long on the store), got {}",
                    raw.store_timeout.0.as_secs_f64()
                ),
            ));
        }
        let audit_log = match raw.audit_log.as_deref().map(str::trim) {
            None => Some(PathBuf::from("logs/security_audit.log")),
            Some("" | "off" | "none") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        let allowed_origins = provider_shared::web_guard::allowed_origins(&raw.allowed_origins.0)?;
        if raw.allow_keyless_generation.0 {
            // Any page can send `Origin: null` (a sandboxed frame), so it is as open as `*`.
            if let Some(open) = allowed_origins.iter().find(|o| *o == "*" || *o == "null") {
                return Err(ConfigError::new(
                    "ALLOWED_ORIGINS",
                    format!(
                        "{open:?} lets any web page use the agent while LOCAL_PROVIDER_ALLOW_KEYLESS_GENERATION is on; list the origins instead"
                    ),
                ));
            }
        }
        let allowed_hosts = provider_shared::web_guard::allowed_hosts(&raw.allowed_hosts.0)?;
        if raw.protect_operations.0 && admin_token_digest.is_none() {
            return Err(ConfigError::new(
                "PROTECT_OPERATIONS",
                "needs LOCAL_PROVIDER_ADMIN_TOKEN: /metrics, /health detail and /status.json are then served to its holder only",
            ));
        }
        // The Redis pool's connections are descriptors too.
        let connections = ConnectionLimits::fit(
            raw.max_connections.map(|n| n.0),
            redis.as_ref().map_or(0, |r| r.pool_size as u64),
            raw.header_timeout.0,
            connections::HEALTH_PATHS,
        )?;
        Ok(Self {
            host: raw.host.trim().to_owned(),
            port: raw.port.0 as u16,
            api_key_digest,
            admin_token_digest,
            log_level: raw.log_level,
            log_format: raw.log_format,
            session_ttl: raw.session_ttl.0,
            session_idle: raw.session_idle.0,
            max_sessions: raw.max_sessions.0,
            rpm: raw.rate_limit_rpm.0,
            burst: raw.rate_limit_burst.0,
            tpm: raw.rate_limit_tpm.0,
            default_max_tokens: raw.default_max_tokens.0,
            output_reservation: raw.rate_limit_output_reservation.0,
            auth_failure_limit: raw.auth_failure_limit.0,
            model_name: raw.model_name.trim().to_owned(),
            model_aliases: ModelAliases::parse(raw.model_aliases.as_deref())?,
            max_tokens_limit: raw.max_tokens_limit.map(|l| l.0),
            context_window: raw.context_window.0,
            max_body_bytes: raw.max_body_bytes.0 as usize,
            max_body_bytes_in_flight,
            response_timeout: raw.response_timeout.0.max(raw.request_timeout.0),
            max_concurrent_requests: raw.max_concurrent_requests.0 as usize,
            allow_keyless_generation: raw.allow_keyless_generation.0,
            overhead_header: raw.overhead_header.0,
            session_store: raw.session_store,
            redis,
            store_timeout: raw.store_timeout.0,
            store_failure_policy: raw.store_failure_policy,
            audit_log,
            audit_rotation: provider_shared::audit::Rotation {
                max_bytes: raw.audit_log_max_bytes.0,
                backups: raw.audit_log_backups.0 as u32,
            },
            allowed_origins,
            allowed_hosts,
            protect_operations: raw.protect_operations.0,
            bridge_socket: raw
                .bridge_socket
                .unwrap_or_else(config::default_bridge_socket),
            connection_timeout: raw.connection_timeout.0,
            keepalive_interval: raw.keepalive_interval.0,
            shutdown_grace: raw.shutdown_grace.0,
            status_agent_gone_after: raw.status_agent_gone_after.0,
            stream_buffer_bytes: raw.stream_buffer_bytes.0 as usize,
            resume_grace: raw.resume_grace.0,
            connections,
            worker_threads: raw.worker_threads,
        })
    }

    /// True when binding `host` exposes the gateway beyond this machine.
    pub fn binds_non_loopback(&self) -> bool {
        !is_loopback_host(&self.host)
    }
}

fn redis_settings(raw: &RawConfig) -> Result<Option<RedisSettings>, ConfigError> {
    if raw.session_store != StoreKind::Redis {
        if raw.redis_url.is_some() {
            tracing::warn!(
                "LOCAL_PROVIDER_REDIS_URL is set but the memory session store is in use (set LOCAL_PROVIDER_SESSION_STORE=redis)"
            );
        }
        return Ok(None);
    }
    let Some(url) = raw.redis_url.as_ref().map(|u| u.0.trim().to_owned()) else {
        return Err(ConfigError::new(
            "REDIS_URL",
            "required with LOCAL_PROVIDER_SESSION_STORE=redis, e.g. redis://127.0.0.1:6379/0",
        ));
    };
    use deadpool_redis::redis::IntoConnectionInfo;
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
    Ok(Some(RedisSettings {
        address: info.addr().to_string(),
        url,
        prefix,
        pool_size: raw.redis_pool_size.0 as usize,
    }))
}

fn check_secret_len(var: &str, secret: &str) -> Result<(), ConfigError> {
    if secret.chars().count() < MIN_SECRET_LEN {
        return Err(ConfigError::new(
            var,
            format!(
                "expected at least {MIN_SECRET_LEN} characters (make one with `gateway generate-api-key`)"
            ),
        ));
    }
    Ok(())
}

fn api_key_digest(raw: &RawConfig) -> Result<[u8; 32], ConfigError> {
    let given: Vec<&str> = [
        raw.api_key.as_ref().map(|_| "API_KEY"),
        raw.api_key_sha256.as_ref().map(|_| "API_KEY_SHA256"),
        raw.api_key_file.as_ref().map(|_| "API_KEY_FILE"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [] => Err(ConfigError::new(
            "API_KEY",
            "no API key: set LOCAL_PROVIDER_API_KEY, LOCAL_PROVIDER_API_KEY_SHA256 or LOCAL_PROVIDER_API_KEY_FILE (make a key with `gateway generate-api-key`)",
        )),
        [_] => {
            if let Some(key) = &raw.api_key {
                check_secret_len("API_KEY", &key.0)?;
                Ok(provider_shared::digest::sha256(key.0.as_bytes()))
            } else if let Some(hex_digest) = &raw.api_key_sha256 {
                let mut out = [0u8; 32];
                hex::decode_to_slice(hex_digest.0.trim(), &mut out).map_err(|_| {
                    ConfigError::new("API_KEY_SHA256", "expected 64 hexadecimal digits (a SHA-256 digest)")
                })?;
                Ok(out)
            } else {
                let path = raw.api_key_file.as_deref().unwrap_or(std::path::Path::new(""));
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("API_KEY_FILE", format!("cannot read {}: {e}", path.display()))
                })?;
                let key = text.trim_end_matches(['\r', '\n']);
                check_secret_len("API_KEY_FILE", key)?;
                Ok(provider_shared::digest::sha256(key.as_bytes()))
            }
        }
        many => Err(ConfigError::new(
            many[0],
            format!(
                "set only one of {}",
                many.iter()
                    .map(|v| format!("LOCAL_PROVIDER_{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars = pairs
            .iter()
            .map(|(k, v)| (format!("LOCAL_PROVIDER_{k}"), v.to_string()));
        Settings::resolve(config::from_vars(vars)?)
    }

    const KEY: &str = "k3y-0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_follow_the_seed() {
        let s = with(&[("API_KEY", KEY)]).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 8788));
        assert_eq!(
            (s.rpm, s.burst, s.tpm, s.max_sessions),
            (60, 10, 100_000, 10)
        );
        assert_eq!(s.model_name, "cursor-agent-local");
        assert_eq!(
            s.context_window, 200_000,
            "what the Void override in docs/clients.md declares"
        );
        assert_eq!(s.session_ttl, Duration::from_secs(300));
        assert_eq!(s.audit_log, Some(PathBuf::from("logs/security_audit.log")));
        assert_eq!(
            (s.audit_rotation.max_bytes, s.audit_rotation.backups),
            (10 * 1024 * 1024, 5)
        );
    }

    #[test]
    fn a_missing_or_weak_key_is_refused() {
        let err = with(&[]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_API_KEY");
        assert!(err.message.contains("generate-api-key"));
        assert!(with(&[("API_KEY", "short")])
            .unwrap_err()
            .message
            .contains("32"));
        let err = with(&[("API_KEY", KEY), ("API_KEY_SHA256", &"a".repeat(64))]).unwrap_err();
        assert!(err.message.contains("only one"), "{err}");
        let err = with(&[("API_KEY_SHA256", "xyz")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_API_KEY_SHA256");
    }

    #[test]
    fn digest_and_file_forms_give_the_same_key() {
        let digest = provider_shared::digest::sha256_hex(KEY.as_bytes());
        let a = with(&[("API_KEY_SHA256", &digest)]).unwrap();
        let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("{KEY}\n")).unwrap();
        let b = with(&[("API_KEY_FILE", file.to_str().unwrap())]).unwrap();
        assert_eq!(a.api_key_digest, b.api_key_digest);
        let err = with(&[("API_KEY_FILE", "/nonexistent/key")]).unwrap_err();
        assert!(err.message.contains("cannot read"), "{err}");
    }

    #[test]
    fn non_loopback_needs_opt_in() {
        let err = with(&[("API_KEY", KEY), ("HOST", "0.0.0.0")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_HOST");
        assert!(with(&[
            ("API_KEY", KEY),
            ("HOST", "0.0.0.0"),
            ("ALLOW_NON_LOOPBACK", "true")
        ])
        .unwrap()
        .binds_non_loopback());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = with(&[("API_KEY", KEY), ("RATE_LIMIT_RPM", "0")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_RATE_LIMIT_RPM");
        let err = with(&[("API_KEY", KEY), ("SESSION_STORE", "mongo")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_SESSION_STORE");
        let err = with(&[("API_KEY", KEY), ("ALLOWED_ORIGINS", "ftp//x")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_ORIGINS");
        let err = with(&[("API_KEY", KEY), ("ALLOWED_HOSTS", "gateway:8788")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_HOSTS");
        let err = with(&[("API_KEY", KEY), ("PROTECT_OPERATIONS", "true")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_PROTECT_OPERATIONS");
        for open in ["*", "null"] {
            let err = with(&[
                ("API_KEY", KEY),
                ("ALLOW_KEYLESS_GENERATION", "true"),
                ("ALLOWED_ORIGINS", open),
            ])
            .unwrap_err();
            assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_ORIGINS", "{open}");
        }
        let err = with(&[("API_KEY", KEY), ("CONTEXT_WINDOW", "1000")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_CONTEXT_WINDOW");
        assert!(err.message.contains("DEFAULT_MAX_TOKENS"), "{err}");
        let err = with(&[("API_KEY", KEY), ("CONTEXT_WINDOW", "lots")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_CONTEXT_WINDOW");
    }

    #[test]
    fn limits_come_from_the_context_window() {
        let s = with(&[("API_KEY", KEY)]).unwrap();
        assert_eq!(s.max_tokens_limit, None, "the window alone bounds output");
        assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(s.max_body_bytes_in_flight, 128 * 1024 * 1024, "four bodies");
        assert_eq!(s.worker_threads, WorkerThreads::ONE);
        let s = with(&[("API_KEY", KEY), ("MAX_BODY_BYTES", "1048576")]).unwrap();
        assert_eq!(s.max_body_bytes_in_flight, 4 << 20, "four of the cap set");
        let err = with(&[
            ("API_KEY", KEY),
            ("MAX_BODY_BYTES", "1048576"),
            ("MAX_BODY_BYTES_IN_FLIGHT", "1048575"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_MAX_BODY_BYTES_IN_FLIGHT");
        assert!(err.message.contains("MAX_BODY_BYTES (1048576)"), "{err}");
        let s = with(&[("API_KEY", KEY), ("MAX_TOKENS_LIMIT", "8192")]).unwrap();
        assert_eq!(s.max_tokens_limit, Some(8192), "a limit set is kept");
        let err = with(&[("API_KEY", KEY), ("MAX_TOKENS_LIMIT", "300000")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_MAX_TOKENS_LIMIT");
        assert!(err.message.contains("CONTEXT_WINDOW"), "{err}");
        let err = with(&[("API_KEY", KEY), ("MAX_TOKENS_LIMIT", "512")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_DEFAULT_MAX_TOKENS");
        // The per-message byte cap is gone; setting it says what replaced it.
        let err = with(&[("API_KEY", KEY), ("MAX_CONTENT_BYTES", "100000")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_MAX_CONTENT_BYTES");
        assert!(
            err.message.contains("LOCAL_PROVIDER_CONTEXT_WINDOW")
                && err.message.contains("LOCAL_PROVIDER_MAX_BODY_BYTES"),
            "{err}"
        );
        assert!(with(&[("API_KEY", KEY), ("MAX_CONTENT_BYTES", "")]).is_ok());
    }

    #[test]
    fn model_aliases_are_globs_and_default_to_every_name() {
        let any = with(&[("API_KEY", KEY)]).unwrap();
        assert_eq!(any.model_aliases, ModelAliases::Any);
        for raw in ["", " ", "*", "claude-*,*", " , "] {
            assert_eq!(
                ModelAliases::parse(Some(raw)).unwrap(),
                ModelAliases::Any,
                "{raw:?}"
            );
        }
        let ModelAliases::Only(globs) =
            ModelAliases::parse(Some(" claude-* , gpt-4o,,o[0-9]-mini ")).unwrap()
        else {
            panic!("narrowed")
        };
        let shown: Vec<&str> = globs.iter().map(glob::Pattern::as_str).collect();
        assert_eq!(shown, ["claude-*", "gpt-4o", "o[0-9]-mini"]);
        for bad in ["claude-[", "a b", &"x".repeat(300)] {
            let err = with(&[("API_KEY", KEY), ("MODEL_ALIASES", bad)]).unwrap_err();
            assert_eq!(err.var, "LOCAL_PROVIDER_MODEL_ALIASES", "{bad}");
            assert!(err.message.contains("claude-*,gpt-4o"), "{err}");
        }
        let many = vec!["m"; 65].join(",");
        let err = with(&[("API_KEY", KEY), ("MODEL_ALIASES", &many)]).unwrap_err();
        assert!(err.message.contains("at most 64"), "{err}");
    }

    #[test]
    fn the_redis_store_needs_a_valid_url() {
        let err = with(&[("API_KEY", KEY), ("SESSION_STORE", "redis")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_REDIS_URL");
        let err = with(&[
            ("API_KEY", KEY),
            ("SESSION_STORE", "redis"),
            ("REDIS_URL", "http://user:hunter2@host"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_REDIS_URL");
        assert!(!err.message.contains("hunter2"), "{err}");
        let s = with(&[
            ("API_KEY", KEY),
            ("SESSION_STORE", "redis"),
            ("REDIS_URL", "redis://:pw@127.0.0.1:6390/2"),
        ])
        .unwrap();
        let redis = s.redis.unwrap();
        assert_eq!(redis.address, "127.0.0.1:6390");
        assert_eq!(redis.prefix, "mcp-local-provider:");
        assert!(!format!("{redis:?}").contains("pw"));
        assert_eq!(s.store_timeout, Duration::from_millis(250));
        assert_eq!(s.store_failure_policy, FailurePolicy::Closed);
        let err = with(&[("API_KEY", KEY), ("STORE_FAILURE_POLICY", "maybe")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_STORE_FAILURE_POLICY");
        let err = with(&[("API_KEY", KEY), ("STORE_TIMEOUT", "60")]).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_STORE_TIMEOUT");
    }
}
