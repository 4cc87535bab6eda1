//! Benchmark (not a test): what the agent is handed over a 20-turn VoidEditor conversation, with
//! conversation deltas on (`MCP_DELTAS=true`, the default) and off. Run by
//! `bench/conversation-deltas.sh` (which builds the binaries first).
//!
//! Each setting gets a fresh stack (mcp-bridge, bridge-agent, gateway). `bench/conversation_replay.py`
//! plays Void with the official `openai` client and the Cursor agent with the official `mcp`
//! client, and records the exact text of every `wait_for_request` result; this program counts
//! its bytes and its cl100k tokens (the gateway's tokenizer) per turn and in total.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::PathBuf;
use std::process::Command;

use integration_tests::harness::bin_path;
use integration_tests::mcp_stack::{test_python, McpStack, MCP_TOKEN};
use integration_tests::stack::{KEY, MODEL};
use serde_json::Value;

/// Bytes and tokens of each turn's hand-out.
async fn replay(deltas: bool) -> Vec<(usize, usize)> {
    let python = test_python().expect("the Python environment: scripts/setup-test-deps.sh");
    let stack = McpStack::start_with(
        |b| {
            b.env("MCP_DELTAS", deltas)
                .env("LOG_LEVEL", "warning")
                .env("LEASE_TIMEOUT", 30)
        },
        |g| {
            g.env("LOG_LEVEL", "warning")
                .env("RATE_LIMIT_TPM", 100_000_000)
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("handed.json");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/conversation_replay.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .env("GW_BASE_URL", stack.gateway.base_url())
        .env("GW_KEY", KEY)
        .env("GW_MODEL", MODEL)
        .env("MB_MCP_URL", stack.bridge.url("/mcp"))
        .env("MB_MCP_TOKEN", MCP_TOKEN)
        .env("MB_BIN", bin_path("mcp-bridge"))
        .env("REPLAY_OUT", &out);
    let status = tokio::task::spawn_blocking(move || cmd.status().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the replay failed: {status}");
    let recorded: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let bpe = tiktoken::get_encoding("cl100k_base").unwrap();
    recorded["handed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|text| {
            let text = text.as_str().unwrap();
            (text.len(), bpe.count(text))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let on = replay(true).await;
    let off = replay(false).await;
    println!(
        "| turn | bytes, deltas off | bytes, deltas on | tokens, deltas off | tokens, deltas on |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (i, ((b_on, t_on), (b_off, t_off))) in on.iter().zip(&off).enumerate() {
        println!("| {} | {b_off} | {b_on} | {t_off} | {t_on} |", i + 1);
    }
    let total = |v: &[(usize, usize)]| v.iter().fold((0, 0), |(b, t), (bb, tt)| (b + bb, t + tt));
    let ((b_on, t_on), (b_off, t_off)) = (total(&on), total(&off));
    println!("| **total** | **{b_off}** | **{b_on}** | **{t_off}** | **{t_on}** |");
    println!(
        "\nWith deltas on the agent was handed {:.1}% of the bytes (1/{:.1}) and {:.1}% of the tokens (1/{:.1}); target: at most 1/8 (12.5%).",
        100.0 * b_on as f64 / b_off as f64,
        b_off as f64 / b_on as f64,
        100.0 * t_on as f64 / t_off as f64,
        t_off as f64 / t_on as f64,
    );
}
