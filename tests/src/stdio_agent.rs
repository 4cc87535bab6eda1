//! An MCP client playing the Cursor agent through `mcp-bridge --stdio` (the real relay): one
//! JSON-RPC message per line in and out.
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::harness::bin_path;

pub struct StdioAgent {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl StdioAgent {
    /// Starts the relay with `envs` (mcp-bridge's own variables) and completes `initialize`.
    pub async fn start(envs: &std::collections::BTreeMap<String, String>) -> Self {
        let mut child = Command::new(bin_path("mcp-bridge"))
            .arg("--stdio")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(envs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mcp-bridge --stdio: {e}"));
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut agent = Self {
            child,
            stdin,
            lines,
        };
        agent
            .send(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "status-page-test", "version": "1"}}}),
            )
            .await;
        agent.response(1, Duration::from_secs(20)).await;
        agent
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        agent
    }

    pub async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Calls `tool` with `arguments` under JSON-RPC `id`, without waiting for the answer.
    pub async fn call(&mut self, id: u64, tool: &str, arguments: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                         "params": {"name": tool, "arguments": arguments}}))
            .await;
    }

    /// The response to `id`; other lines are skipped.
    pub async fn response(&mut self, id: u64, timeout: Duration) -> Value {
        tokio::time::timeout(timeout, async {
            loop {
                let line = self.lines.next_line().await.unwrap();
                let line = line.unwrap_or_else(|| panic!("the relay closed before answering {id}"));
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to JSON-RPC id {id} within {timeout:?}"))
    }

    /// The JSON a tool answered with (its first text content).
    pub fn tool_json(response: &Value) -> Value {
        let text = response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("not a tool result: {response}"));
        serde_json::from_str(text).unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
