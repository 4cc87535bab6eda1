//! The whole product on free ports with the real MCP bridge: mcp-bridge, bridge-agent and the
//! gateway, plus the pinned Python interpreter that plays the Cursor agent and VoidEditor.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{bin_path, free_port, get, wait_for, Service};
use crate::stack::{Gateway, GatewayProc};

pub const BRIDGE_TOKEN: &str = "bridge-token-0123456789abcdef";
pub const MCP_TOKEN: &str = "mcp-token-0123456789abcdef";

fn vars(pairs: &BTreeMap<&str, String>) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("LOCAL_PROVIDER_{k}"), v.clone()))
        .collect()
}

/// Writes `secret` to `dir/name` with mode 0600, as `scripts/start.sh` does; returns the path.
pub fn token_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Builds an mcp-bridge process: a free port, short leases and long-polls, its audit log in a
/// temporary directory, both tokens in files as `scripts/start.sh` hands them over.
pub struct McpBridgeProc {
    envs: BTreeMap<&'static str, String>,
    dir: TempDir,
}

impl Default for McpBridgeProc {
    fn default() -> Self {
        Self::new()
    }
}

impl McpBridgeProc {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("logs").join("mcp_bridge_audit.log");
        let bridge_token = token_file(dir.path(), "bridge_token", BRIDGE_TOKEN);
        let mcp_token = token_file(dir.path(), "mcp_http_token", MCP_TOKEN);
        let envs = BTreeMap::from([
            ("MCP_BRIDGE_PORT", free_port().to_string()),
            ("MCP_BRIDGE_AUDIT_LOG", audit.display().to_string()),
            ("MCP_BRIDGE_TOKEN_FILE", bridge_token.display().to_string()),
            ("MCP_HTTP_TOKEN_FILE", mcp_token.display().to_string()),
            ("LEASE_TIMEOUT", "2".to_owned()),
            ("POLL_TIMEOUT_DEFAULT", "1".to_owned()),
            ("HEARTBEAT_INTERVAL", "1".to_owned()),
            ("SHUTDOWN_GRACE", "2".to_owned()),
            ("LOG_LEVEL", "debug".to_owned()),
        ]);
        Self { envs, dir }
    }

    pub fn env(mut self, name: &'static str, value: impl ToString) -> Self {
        self.envs.insert(name, value.to_string());
        self
    }

    pub fn without(mut self, name: &'static str) -> Self {
        self.envs.remove(name);
        self
    }

    pub fn spawn(self) -> McpBridge {
        let envs = vars(&self.envs);
        let service = Service::spawn(&bin_path("mcp-bridge"), &envs, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start mcp-bridge: {e}"));
        McpBridge {
            service,
            port: self.envs["MCP_BRIDGE_PORT"].parse().unwrap(),
            audit: PathBuf::from(&self.envs["MCP_BRIDGE_AUDIT_LOG"]),
            envs,
            dir: self.dir,
        }
    }
}

pub struct McpBridge {
    pub service: Service,
    /// Its variables, full names: what `mcp-bridge --stdio` needs to reach it, and what a
    /// restart starts it with again.
    pub envs: BTreeMap<String, String>,
    pub port: u16,
    audit: PathBuf,
    dir: TempDir,
}

impl McpBridge {
    /// Stops it with SIGTERM and starts it again on the same port with the same settings.
    pub async fn restart(&mut self) {
        self.service.terminate().unwrap();
        let status = self
            .service
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("mcp-bridge did not stop: {e}"));
        assert!(status.success(), "mcp-bridge exited with {status}");
        self.service = Service::spawn(&bin_path("mcp-bridge"), &self.envs, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start mcp-bridge again: {e}"));
    }

    /// Kills it (SIGKILL: nothing is handed back) and starts it again on the same port with the
    /// same settings.
    pub async fn kill_and_restart(&mut self) {
        self.service.kill().await.unwrap();
        self.service = Service::spawn(&bin_path("mcp-bridge"), &self.envs, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start mcp-bridge again: {e}"));
    }

    /// The file holding the MCP token (what Cursor's stdio entry names).
    pub fn mcp_token_file(&self) -> PathBuf {
        self.dir.path().join("mcp_http_token")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What bridge-agent's `MCP_BRIDGE_URL` is set to.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Waits until `/health` has `status` and `connected_bridge_agents == agents`.
    pub async fn wait_agents(&self, agents: u64, timeout: Duration) -> Value {
        let url = self.url("/health");
        wait_for(
            timeout,
            &format!("mcp-bridge with {agents} bridge-agent(s)"),
            || async {
                match get(&url).await {
                    Ok((_, body)) if body["connected_bridge_agents"] == agents => Some(body),
                    _ => None,
                }
            },
        )
        .await
    }

    /// Every audit record so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    pub async fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(10), what, || {
            let found = self.audit().into_iter().find(|v| pred(v));
            async move { found }
        })
        .await
    }
}

/// A bridge-agent whose environment is kept, so a test can start it again (or hand the recipe
/// to a Python orchestrator).
pub struct AgentRecipe {
    pub envs: BTreeMap<String, String>,
    pub dir: TempDir,
}

impl AgentRecipe {
    pub fn new(bridge_url: &str, token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("bridge.sock");
        let mut envs = BTreeMap::from([
            ("MCP_BRIDGE_URL", bridge_url.to_owned()),
            ("BRIDGE_SOCKET", socket.display().to_string()),
            ("BRIDGE_AGENT_PORT", free_port().to_string()),
            ("AGENT_ID", "test-agent".to_owned()),
            ("CONNECTION_TIMEOUT", "2".to_owned()),
            ("HEARTBEAT_INTERVAL", "1".to_owned()),
            ("RECONNECT_ATTEMPTS", "1000".to_owned()),
            ("RECONNECT_DELAY", "0.05".to_owned()),
            ("REQUEST_TIMEOUT", "30".to_owned()),
            ("RESPONSE_TIMEOUT", "60".to_owned()),
            ("SHUTDOWN_GRACE", "2".to_owned()),
            ("LOG_LEVEL", "debug".to_owned()),
        ]);
        if let Some(token) = token {
            let file = token_file(dir.path(), "bridge_token", token);
            envs.insert("MCP_BRIDGE_TOKEN_FILE", file.display().to_string());
        }
        Self {
            envs: vars(&envs),
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(&self.envs["LOCAL_PROVIDER_BRIDGE_SOCKET"])
    }

    pub fn health_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/health",
            self.envs["LOCAL_PROVIDER_BRIDGE_AGENT_PORT"]
        )
    }

    pub fn spawn(&self) -> Service {
        Service::spawn(&bin_path("bridge-agent"), &self.envs, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start bridge-agent: {e}"))
    }
}

/// mcp-bridge, bridge-agent and the gateway, connected.
pub struct McpStack {
    pub bridge: McpBridge,
    pub agent_recipe: AgentRecipe,
    pub agent: Service,
    pub gateway: Gateway,
}

impl McpStack {
    pub async fn start() -> Self {
        Self::start_with(|b| b, |g| g).await
    }

    pub async fn start_with(
        bridge: impl FnOnce(McpBridgeProc) -> McpBridgeProc,
        gateway: impl FnOnce(GatewayProc) -> GatewayProc,
    ) -> Self {
        let bridge = bridge(McpBridgeProc::new()).spawn();
        let agent_recipe = AgentRecipe::new(&bridge.ws_url(), Some(BRIDGE_TOKEN));
        let agent = agent_recipe.spawn();
        let gateway = gateway(GatewayProc::new(&agent_recipe.socket())).spawn();
        gateway
            .wait_health("healthy", Duration::from_secs(30))
            .await;
        bridge.wait_agents(1, Duration::from_secs(10)).await;
        Self {
            bridge,
            agent_recipe,
            agent,
            gateway,
        }
    }
}

/// The interpreter with the pinned client packages (`scripts/setup-test-deps.sh` makes it), or
/// `None` when it or its packages are missing (a failure under CI: [`crate::skip`]).
pub fn test_python() -> Option<PathBuf> {
    crate::skip::python(
        "the Python client tests",
        &["openai", "ollama", "mcp", "pytest"],
    )
}
