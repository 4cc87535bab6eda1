//! The agent side's two tokens, as `scripts/start.sh` hands them over (files): mcp-bridge refuses
//! to start without them unless `MCP_ALLOW_NO_TOKEN` says so, `mcp-bridge --stdio` reads its token
//! from the file Cursor's entry names, and a refused token is audited by fingerprint only.
use std::process::Stdio;

use integration_tests::harness::get;
use integration_tests::mcp_stack::{
    token_file, AgentRecipe, McpBridgeProc, BRIDGE_TOKEN, MCP_TOKEN,
};
use provider_shared::digest;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::SOON;

#[tokio::test]
async fn mcp_bridge_refuses_to_start_without_either_token() {
    for (missing, var) in [
        ("MCP_BRIDGE_TOKEN_FILE", "LOCAL_PROVIDER_MCP_BRIDGE_TOKEN"),
        ("MCP_HTTP_TOKEN_FILE", "LOCAL_PROVIDER_MCP_HTTP_TOKEN"),
    ] {
        let mut bridge = McpBridgeProc::new().without(missing).spawn();
        let status = bridge.service.wait_exit(SOON).await.unwrap();
        assert_eq!(status.code(), Some(2), "without {missing}: {status}");
        let logs = bridge.service.logs();
        assert!(
            logs.contains(&format!("mcp-bridge: {var}: not set")),
            "{logs}"
        );
        assert!(
            logs.contains("LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN=true"),
            "{logs}"
        );
        // It never listened.
        assert!(get(&bridge.url("/health/live")).await.is_err());
    }
}

#[tokio::test]
async fn allow_no_token_serves_both_doors_open_and_says_so() {
    let bridge = McpBridgeProc::new()
        .without("MCP_BRIDGE_TOKEN_FILE")
        .without("MCP_HTTP_TOKEN_FILE")
        .env("MCP_ALLOW_NO_TOKEN", "true")
        .spawn();
    // A bridge-agent without a token gets in.
    let recipe = AgentRecipe::new(&bridge.ws_url(), None);
    let _agent = recipe.spawn();
    bridge.wait_agents(1, SOON).await;
    let logs = bridge.service.logs();
    assert!(logs.contains("serving without a token"), "{logs}");
    assert!(
        logs.contains("LOCAL_PROVIDER_MCP_BRIDGE_TOKEN, LOCAL_PROVIDER_MCP_HTTP_TOKEN"),
        "{logs}"
    );
    // /mcp answers without a bearer.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .post(bridge.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize(1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Its audit writer's figures are on /health too.
    let (_, health) = get(&bridge.url("/health")).await.unwrap();
    assert_eq!(health["audit"]["enabled"], true, "{health}");
    assert_eq!(health["audit"]["dropped"], 0, "{health}");
}

/// A client that ends its session gets 204 (rmcp's own answer is 202, which the official
/// clients log as a failure on every disconnect).
#[tokio::test]
async fn an_ended_mcp_session_is_answered_204() {
    let bridge = McpBridgeProc::new().spawn();
    bridge.wait_agents(0, SOON).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let rpc = |message: Value, session: Option<&str>| {
        let mut req = client
            .post(bridge.url("/mcp"))
            .bearer_auth(MCP_TOKEN)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(session) = session {
            req = req.header("mcp-session-id", session);
        }
        req.body(message.to_string()).send()
    };
    let resp = rpc(initialize(1), None).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let end = |session: &str| {
        client
            .delete(bridge.url("/mcp"))
            .bearer_auth(MCP_TOKEN)
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    let resp = end(&session).await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    // Ended means ended: the session is gone.
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let resp = rpc(list, Some(&session)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // Without the token, nothing is ended.
    let resp = client
        .delete(bridge.url("/mcp"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

fn initialize(id: u64) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "token-test", "version": "1"}}})
}

/// Runs `mcp-bridge --stdio` against `port` with `token_file` as Cursor's entry names it, sends
/// `initialize` and returns the one reply.
async fn stdio_initialize(port: u16, token_file: &std::path::Path) -> Value {
    let mut child =
        tokio::process::Command::new(integration_tests::harness::bin_path("mcp-bridge"))
            .arg("--stdio")
            .env_clear()
            .env("LOCAL_PROVIDER_MCP_BRIDGE_PORT", port.to_string())
            .env("LOCAL_PROVIDER_MCP_HTTP_TOKEN_FILE", token_file)
            .env("LOCAL_PROVIDER_LOG_LEVEL", "warning")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", initialize(7)).as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(SOON, lines.next_line())
        .await
        .expect("a reply from mcp-bridge --stdio")
        .unwrap()
        .expect("a line");
    drop(stdin);
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn stdio_reads_the_token_from_its_file_and_a_wrong_one_is_audited_by_fingerprint() {
    let bridge = McpBridgeProc::new().spawn();
    // Listening (no bridge-agent is needed for MCP's initialize).
    bridge.wait_agents(0, SOON).await;

    let reply = stdio_initialize(bridge.port, &bridge.mcp_token_file()).await;
    assert_eq!(reply["id"], 7, "{reply}");
    assert!(reply["result"]["protocolVersion"].is_string(), "{reply}");

    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-mcp-token-in-a-file";
    let reply = stdio_initialize(bridge.port, &token_file(dir.path(), "t", wrong)).await;
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("401"), "{reply}");
    let record = bridge
        .wait_audit("the refused stdio token", |v| {
            v["endpoint"] == "mcp" && v["reason"] == "wrong"
        })
        .await;
    assert_eq!(record["success"], false);
    assert_eq!(
        record["key_fingerprint"],
        digest::fingerprint(wrong.as_bytes())
    );
    for text in [
        std::fs::read_to_string(bridge.service.log_path()).unwrap_or_default(),
        bridge
            .audit()
            .iter()
            .map(Value::to_string)
            .collect::<String>(),
    ] {
        assert!(!text.contains(wrong) && !text.contains(BRIDGE_TOKEN));
    }
}
