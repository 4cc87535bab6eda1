//! Configuration from `LOCAL_PROVIDER_*` environment variables (via `envy`), with value types
//! whose errors say what a variable accepts. A bad value names its variable in one line.
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub const PREFIX: &str = "LOCAL_PROVIDER_";

/// The timeouts of one request's path, whose defaults are set together (docs/configuration.md,
/// "Timeouts"): a request whose agent vanished without a word is handed to another agent when
/// its lease lapses, and that agent still has half of `REQUEST_TIMEOUT` to start answering.
pub mod timeouts {
    use std::time::Duration;

    /// mcp-bridge: a hand-out waits this long for the agent's first part, and each part for the
    /// next, before the request goes back to the queue (or, once output went out, ends).
    pub const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
    /// bridge-agent: from sending a request to its first chunk.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
    /// bridge-agent and the gateway: the whole answer.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
    /// All three: how long a request waits to be resumed after its bridge-agent or connection
    /// went away.
    pub const RESUME_GRACE: Duration = Duration::from_secs(30);
}

/// Every variable either service reads; anything else with the prefix is probably a typo.
pub const KNOWN_VARS: &[&str] = &[
    "HOST",
    "PORT",
    "ALLOW_NON_LOOPBACK",
    "QUEUE",
    "ALLOW_KEYLESS_GENERATION",
    "OVERHEAD_HEADER",
    "API_KEY",
    "API_KEY_SHA256",
    "API_KEY_FILE",
    "ADMIN_TOKEN",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "SESSION_TTL",
    "SESSION_IDLE",
    "MAX_SESSIONS",
    "RATE_LIMIT_RPM",
    "RATE_LIMIT_TPM",
    "RATE_LIMIT_OUTPUT_RESERVATION",
    "RATE_LIMIT_BURST",
    "DEFAULT_MAX_TOKENS",
    "AUTH_FAILURE_LIMIT",
    "MODEL_NAME",
    "MODEL_ALIASES",
    "MAX_TOKENS_LIMIT",
    "CONTEXT_WINDOW",
    "MAX_BODY_BYTES",
    "MAX_BODY_BYTES_IN_FLIGHT",
    "REQUEST_TIMEOUT",
    "RESPONSE_TIMEOUT",
    "MAX_CONCURRENT_REQUESTS",
    "SESSION_STORE",
    "REDIS_URL",
    "REDIS_PREFIX",
    "REDIS_POOL_SIZE",
    "STORE_TIMEOUT",
    "STORE_FAILURE_POLICY",
    "AUDIT_LOG",
    "AUDIT_LOG_MAX_BYTES",
    "AUDIT_LOG_BACKUPS",
    "ALLOWED_ORIGINS",
    "ALLOWED_HOSTS",
    "PROTECT_OPERATIONS",
    "BRIDGE_SOCKET",
    "MCP_BRIDGE_URL",
    "MCP_BRIDGE_TOKEN",
    "MCP_BRIDGE_TOKEN_FILE",
    "AGENT_ID",
    "CONNECTION_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "RECONNECT_ATTEMPTS",
    "RECONNECT_DELAY",
    "BRIDGE_AGENT_HOST",
    "BRIDGE_AGENT_PORT",
    "MCP_BRIDGE_HOST",
    "MCP_BRIDGE_PORT",
    "MCP_HTTP_TOKEN",
    "MCP_HTTP_TOKEN_FILE",
    "MCP_ALLOW_NO_TOKEN",
    "MCP_BRIDGE_AUDIT_LOG",
    "MCP_SAMPLING",
    "MCP_DELTAS",
    "LEASE_TIMEOUT",
    "POLL_TIMEOUT_DEFAULT",
    "KEEPALIVE_INTERVAL",
    "SHUTDOWN_GRACE",
    "STATUS_AGENT_GONE_AFTER",
    "STREAM_BUFFER_BYTES",
    "RESUME_GRACE",
    "MAX_FRAME_BYTES",
    "MAX_CONNECTIONS",
    "HEADER_TIMEOUT",
    "WORKER_THREADS",
];

/// A variable with a value its service cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &str, message: impl Into<String>) -> Self {
        Self {
            var: format!("{PREFIX}{var}"),
            message: message.into(),
        }
    }
}

/// Deserialises `T` from the `LOCAL_PROVIDER_*` entries of `vars`. Every field of `T` must have a
/// default, so that a failure can be traced to the one variable that caused it.
pub fn from_vars<T: DeserializeOwned>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let ours: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    match envy::prefixed(PREFIX).from_iter::<_, T>(ours.clone()) {
        Ok(config) => Ok(config),
        Err(whole) => {
            for (key, value) in &ours {
                let one = [(key.clone(), value.clone())];
                if let Err(err) = envy::prefixed(PREFIX).from_iter::<_, T>(one) {
                    return Err(ConfigError {
                        var: key.clone(),
                        message: strip_envy_suffix(&err.to_string()),
                    });
                }
            }
            Err(ConfigError {
                var: PREFIX.trim_end_matches('_').to_owned(),
                message: whole.to_string(),
            })
        }
    }
}

/// Reads the process environment; a variable that is not valid UTF-8 is an error, not skipped.
pub fn from_env<T: DeserializeOwned>() -> Result<T, ConfigError> {
    let mut vars = Vec::new();
    for (key, value) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if !key.starts_with(PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError {
            var: key.to_owned(),
            message: "value is not valid UTF-8".into(),
        })?;
        vars.push((key.to_owned(), value));
    }
    from_vars(vars)
}

/// `LOCAL_PROVIDER_*` names in the environment that no service reads.
pub fn unknown_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            k.strip_prefix(PREFIX)
                .is_some_and(|rest| !KNOWN_VARS.contains(&rest))
        })
        .collect()
}

fn strip_envy_suffix(msg: &str) -> String {
    // envy appends "while parsing value '…' provided by NAME"; we name the variable ourselves.
    match msg.find(" while parsing value") {
        Some(at) => msg[..at].to_owned(),
        None => msg.to_owned(),
    }
}

fn expected<E: serde::de::Error>(what: &str, got: &str) -> E {
    E::custom(format!("expected {what}, got {got:?}"))
}

/// A duration given in seconds, whole or fractional (`30`, `0.5`), greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let what = "a number of seconds greater than 0, at most 31536000 (e.g. 30 or 0.5)";
        match raw.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 31_536_000.0 => {
                Ok(Seconds(Duration::from_secs_f64(s)))
            }
            _ => Err(expected(what, &raw)),
        }
    }
}

impl Seconds {
    pub fn from_secs(secs: u64) -> Self {
        Seconds(Duration::from_secs(secs))
    }
}

/// A whole number within `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().parse::<u64>() {
            Ok(n) if (MIN..=MAX).contains(&n) => Ok(Bounded(n)),
            _ => Err(expected(
                &format!("a whole number from {MIN} to {MAX}"),
                &raw,
            )),
        }
    }
}

/// A TCP port; 0 asks the system for a free one.
pub type Port = Bounded<0, 65535>;

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Flag(true)),
            "0" | "false" | "no" | "off" | "" => Ok(Flag(false)),
            _ => Err(expected("true or false", &raw)),
        }
    }
}

/// A comma-separated list; blanks around items are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(List(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// A log level as the seed writes them (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`) or as
/// tracing does (`trace`…`error`), any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub tracing::Level);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(tracing::Level::INFO)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use tracing::Level;
        let raw = String::deserialize(d)?;
        let level = match raw.trim().to_ascii_lowercase().as_str() {
            "trace" => Level::TRACE,
            "debug" => Level::DEBUG,
            "info" => Level::INFO,
            "warn" | "warning" => Level::WARN,
            "error" | "critical" => Level::ERROR,
            _ => {
                return Err(expected(
                    "one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL",
                    &raw,
                ))
            }
        };
        Ok(LogLevel(level))
    }
}

/// `text` (the default) or `json` log lines on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(expected("text or json", &raw)),
        }
    }
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The secret `LOCAL_PROVIDER_<var>`, or the contents of the file `LOCAL_PROVIDER_<var>_FILE`
/// names (one line; container secrets and `scripts/start.sh`'s files), never both. An empty value
/// means none, as an unset variable does; an unreadable or empty file is an error.
pub fn secret_or_file(
    var: &str,
    value: Option<Secret>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, ConfigError> {
    let value = value.filter(|v| !v.0.is_empty());
    let file_var = format!("{var}_FILE");
    match (value, file.filter(|f| !f.as_os_str().is_empty())) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            var,
            format!("set only one of {PREFIX}{var} and {PREFIX}{file_var}"),
        )),
        (Some(value), None) => Ok(Some(value)),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(&file_var, format!("cannot read {}: {e}", path.display()))
            })?;
            let secret = text.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(ConfigError::new(
                    &file_var,
                    format!(
                        "{} is empty; expected the secret on one line",
                        path.display()
                    ),
                ));
            }
            Ok(Some(Secret(secret.to_owned())))
        }
    }
}

/// True when `host` is a loopback address or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Where both services meet when `LOCAL_PROVIDER_BRIDGE_SOCKET` is unset: a private directory
/// under `$XDG_RUNTIME_DIR`, or else under the temporary directory, named for the user id.
pub fn default_bridge_socket() -> std::path::PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => std::path::PathBuf::from(runtime).join("mcp-local-provider"),
        None => std::env::temp_dir().join(format!(
            "mcp-local-provider-{}",
            rustix::process::getuid().as_raw()
        )),
    };
    dir.join("bridge.sock")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_timeouts_fit_together() {
        use super::timeouts::*;
        assert!(
            LEASE_TIMEOUT * 2 < REQUEST_TIMEOUT,
            "a second agent gets at least half"
        );
        assert!(REQUEST_TIMEOUT < RESPONSE_TIMEOUT);
        assert!(RESUME_GRACE < RESPONSE_TIMEOUT);
    }

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default = "default_timeout")]
        timeout: Seconds,
        #[serde(default)]
        verbose: Flag,
        #[serde(default)]
        port: Option<Port>,
        #[serde(default)]
        origins: List,
    }

    fn default_timeout() -> Seconds {
        Seconds::from_secs(30)
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_values() {
        let s: Sample = from_vars(vars(&[("TIMEOUT", "0.25"), ("ORIGINS", "a, b,,c")])).unwrap();
        assert_eq!(s.timeout, Seconds(Duration::from_millis(250)));
        assert_eq!(s.origins, List(vec!["a".into(), "b".into(), "c".into()]));
        assert!(!s.verbose.0);
        assert_eq!(s.port, None);
        let s: Sample = from_vars(vec![("OTHER".into(), "x".into())]).unwrap();
        assert_eq!(s.timeout, Seconds::from_secs(30));
    }

    #[test]
    fn a_bad_value_names_its_variable_and_what_it_accepts() {
        let err = from_vars::<Sample>(vars(&[("VERBOSE", "true"), ("PORT", "70000")])).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_PORT");
        assert!(err.message.contains("0 to 65535"), "{err}");
        assert!(err.message.contains("70000"), "{err}");
        let err = from_vars::<Sample>(vars(&[("TIMEOUT", "-1")])).unwrap_err();
        assert_eq!(
            err.to_string().split(':').next(),
            Some("LOCAL_PROVIDER_TIMEOUT")
        );
        let err = from_vars::<Sample>(vars(&[("VERBOSE", "maybe")])).unwrap_err();
        assert!(err.message.contains("true or false"));
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file() {
        let dir = std::env::temp_dir().join(format!("secret-or-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let given = |v: &str| Some(Secret(v.to_owned()));
        assert_eq!(secret_or_file("T", None, None).unwrap(), None);
        assert_eq!(secret_or_file("T", given(""), None).unwrap(), None);
        assert_eq!(secret_or_file("T", given("v"), None).unwrap(), given("v"));
        assert_eq!(
            secret_or_file("T", None, Some(&file)).unwrap(),
            given("from-file")
        );
        let err = secret_or_file("T", given("v"), Some(&file)).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_T");
        assert!(err.message.contains("LOCAL_PROVIDER_T_FILE"), "{err}");
        let err = secret_or_file("T", None, Some(&dir.join("missing"))).unwrap_err();
        assert_eq!(err.var, "LOCAL_PROVIDER_T_FILE");
        std::fs::write(&file, "\n").unwrap();
        let err = secret_or_file("T", None, Some(&file)).unwrap_err();
        assert!(err.message.contains("empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["0.0.0.0", "192.168.1.2", "example.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
