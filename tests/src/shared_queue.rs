//! Several mcp-bridges on one Redis (`LOCAL_PROVIDER_QUEUE=redis`): Redis in a container of the
//! locally built image, the real binaries, and agents written with the official Python `mcp`
//! package (`tests/python_mcp/queue_agent.py`).
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::harness::{get, wait_for};
use crate::mcp_stack::{McpBridge, McpBridgeProc, MCP_TOKEN};

/// An mcp-bridge on the queue at `redis_url`, its keys under `prefix`.
pub fn bridge_on(redis_url: &str, prefix: &str) -> McpBridgeProc {
    McpBridgeProc::new()
        .env("QUEUE", "redis")
        .env("REDIS_URL", redis_url)
        .env("REDIS_PREFIX", prefix)
        // The suite runs many processes on two cores: replies take longer than on a quiet machine.
        .env("STORE_TIMEOUT", 2)
        .env("RESUME_GRACE", 30)
}

/// An agent process, killed when dropped.
pub struct QueueAgent {
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl QueueAgent {
    /// Starts `queue_agent.py --name name args…` against `bridge`'s `/mcp`.
    pub fn spawn(python: &Path, bridge: &McpBridge, name: &str, args: &[&str]) -> Self {
        Self::spawn_at(python, &bridge.url("/mcp"), name, args)
    }

    /// Starts `queue_agent.py` against the MCP endpoint `mcp_url`.
    pub fn spawn_at(python: &Path, mcp_url: &str, name: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_mcp/queue_agent.py");
        let child = Command::new(python)
            .arg(script)
            .args(["--name", name, "--log"])
            .arg(&log)
            .args(args)
            .env("MB_MCP_URL", mcp_url)
            .env("MB_MCP_TOKEN", MCP_TOKEN)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            name: name.to_owned(),
            child,
            log,
            _dir: dir,
        }
    }

    /// What it logged so far.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the first event `event` for which `pred` holds.
    pub async fn wait_event(&self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(
            Duration::from_secs(30),
            &format!("agent {} to log {event}", self.name),
            || {
                let found = self
                    .events()
                    .into_iter()
                    .find(|e| e["event"] == event && pred(e));
                async move { found }
            },
        )
        .await
    }

    /// SIGKILL: it dies holding whatever it holds.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// `/health` of `bridge`.
pub async fn health(bridge: &McpBridge) -> Value {
    get(&bridge.url("/health"))
        .await
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Waits until `bridge`'s `/health` satisfies `pred` (the figures are shared by every mcp-bridge
/// on the queue, refreshed every second).
pub async fn wait_health(bridge: &McpBridge, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(30), what, || async {
        let h = health(bridge).await;
        pred(&h).then_some(h)
    })
    .await
}
