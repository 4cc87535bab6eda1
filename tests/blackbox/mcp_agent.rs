//! The real MCP bridge: the official Python `mcp` package plays the Cursor agent (over Streamable
//! HTTP and over stdio) and the official `openai` package plays VoidEditor, against the real
//! mcp-bridge, bridge-agent and gateway. The scenarios are in `tests/python_mcp/`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use integration_tests::harness::{bin_path, get, wait_for};
use integration_tests::mcp_stack::{
    test_python, AgentRecipe, McpBridgeProc, McpStack, BRIDGE_TOKEN, MCP_TOKEN,
};
use integration_tests::relay::{TcpRelay, UnixRelay};
use integration_tests::stack::{GatewayProc, KEY, MODEL};

use crate::SOON;

/// Runs one pytest file of `tests/python_mcp` against `stack`, with `extra` in the environment.
pub(crate) async fn pytest(stack: &McpStack, file: &str, extra: BTreeMap<String, String>) {
    let Some(python) = test_python() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python_mcp");
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
        .arg(dir.join(file))
        .env("GW_BASE_URL", stack.gateway.base_url())
        .env("GW_KEY", KEY)
        .env("GW_MODEL", MODEL)
        .env("MB_MCP_URL", stack.bridge.url("/mcp"))
        .env("MB_PORT", stack.bridge.port.to_string())
        .env("MB_MCP_TOKEN", MCP_TOKEN)
        .env("MB_MCP_TOKEN_FILE", stack.bridge.mcp_token_file())
        .env("MB_BIN", bin_path("mcp-bridge"))
        .envs(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "{file} failed:\n{report}");
    assert!(report.contains(" passed"), "{report}");
}

#[tokio::test]
async fn cursor_agent_serves_void_through_the_tools() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start().await;
    pytest(&stack, "test_serving.py", BTreeMap::new()).await;
    // Everything handed out was answered, failed or withdrawn as the scenarios say: nothing is
    // left in the queue, and the figures are on /metrics.
    let (_, health) = get(&stack.bridge.url("/health")).await.unwrap();
    assert_eq!(health["queue_depth"], 0, "{health}");
    assert_eq!(health["leased"], 0, "{health}");
    let (_, metrics) = get(&stack.bridge.url("/metrics")).await.unwrap();
    let metrics = metrics.as_str().unwrap().to_owned();
    for name in [
        "mcp_bridge_queue_depth",
        "mcp_bridge_lease_expiries_total",
        "mcp_bridge_requests_total{outcome=\"answered\"}",
        "mcp_bridge_requests_total{outcome=\"cancelled\"}",
        "mcp_bridge_agent_wait_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let answered = stack
        .bridge
        .wait_audit("a model_request audit record", |v| {
            v["event_type"] == "model_request" && v["outcome"] == "answered"
        })
        .await;
    assert_eq!(answered["prompt_sha256"].as_str().map(str::len), Some(64));
    assert!(!stack
        .bridge
        .audit()
        .iter()
        .any(|v| v.to_string().contains(MCP_TOKEN)));
}

#[tokio::test]
async fn agents_that_vanish_take_nothing_and_lose_nothing() {
    if test_python().is_none() {
        return;
    }
    // Leases long enough that only the vanished agent's own signals can explain a fast hand-over.
    let stack = McpStack::start_with(|b| b.env("LEASE_TIMEOUT", 20), |g| g).await;
    pytest(&stack, "test_vanished.py", BTreeMap::new()).await;
    let (_, health) = get(&stack.bridge.url("/health")).await.unwrap();
    assert_eq!(health["queue_depth"], 0, "{health}");
    assert_eq!(health["leased"], 0, "{health}");
}

#[tokio::test]
async fn the_agents_figures_are_advisory() {
    if test_python().is_none() {
        return;
    }
    // The default tokens-per-minute budget (100,000): a claim the books took at its word would
    // leave the key waiting for years.
    let stack = McpStack::start().await;
    pytest(&stack, "test_trust.py", BTreeMap::new()).await;
}

#[tokio::test]
async fn bridge_agent_restart_resumes_every_request_exactly_once() {
    if test_python().is_none() {
        return;
    }
    // The gateway holds requests up to CONNECTION_TIMEOUT while bridge-agent is away.
    let stack = McpStack::start_with(|b| b, |g| g.env("CONNECTION_TIMEOUT", 20)).await;
    let extra = restart_env(&stack.agent_recipe, &stack.agent);
    pytest(&stack, "test_restart.py", extra).await;
}

#[tokio::test]
async fn orderly_bridge_agent_restarts_and_a_cut_gateway_connection_lose_no_stream() {
    if test_python().is_none() {
        return;
    }
    // The gateway reaches bridge-agent through a Unix-socket relay the Python side cuts; it holds
    // requests up to CONNECTION_TIMEOUT while bridge-agent is away.
    let bridge = McpBridgeProc::new().spawn();
    let recipe = AgentRecipe::new(&bridge.ws_url(), Some(BRIDGE_TOKEN));
    let agent = recipe.spawn();
    let relay = UnixRelay::start(&recipe.socket()).await;
    let gateway = GatewayProc::new(&relay.path)
        .env("CONNECTION_TIMEOUT", 20)
        .spawn();
    gateway
        .wait_health("healthy", std::time::Duration::from_secs(30))
        .await;
    bridge.wait_agents(1, SOON).await;
    let mut extra = restart_env(&recipe, &agent);
    extra.insert("IPC_CUT_PORT".to_owned(), relay.cut_port.to_string());
    let stack = McpStack {
        bridge,
        agent_recipe: recipe,
        agent,
        gateway,
    };
    pytest(&stack, "test_handover.py", extra).await;
    assert!(relay.accepted() >= 4, "{} connections", relay.accepted());
}

/// What a Python test needs to stop bridge-agent and start it again.
fn restart_env(
    recipe: &AgentRecipe,
    agent: &integration_tests::harness::Service,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "AGENT_BIN".to_owned(),
            bin_path("bridge-agent").display().to_string(),
        ),
        (
            "AGENT_ENV".to_owned(),
            serde_json::to_string(&recipe.envs).unwrap(),
        ),
        ("AGENT_PID".to_owned(), agent.pid().unwrap().to_string()),
        ("AGENT_HEALTH".to_owned(), recipe.health_url()),
        (
            "AGENT_LOG".to_owned(),
            recipe
                .dir
                .path()
                .join("bridge-agent-2.log")
                .display()
                .to_string(),
        ),
    ])
}

/// What mcp-bridge keeps of each answer for a resume in the chaos test.
const REPLAY_BYTES: usize = 16 << 20;

#[tokio::test]
async fn chaos_half_through_mcp_bridge_kills_a_sigterm_restart_a_drop_vanished_agents_and_stalled_readers(
) {
    if test_python().is_none() {
        return;
    }
    // The other half of the chaos test (`chaos::`): agents answering over MCP. bridge-agent
    // reaches mcp-bridge through a relay the Python side cuts to drop the WebSocket. The gateway
    // holds requests up to CONNECTION_TIMEOUT while bridge-agent is away, and holds 64 KiB for a
    // reader that stops. mcp-bridge keeps a whole stalled answer (10 MiB) for replay: a stalled
    // reader's chain holds megabytes unread in socket buffers; a resume from before the kept
    // chunks is refused, and that request would end with `bridge_disconnected` instead of its answer.
    let bridge = McpBridgeProc::new()
        .env("STREAM_BUFFER_BYTES", REPLAY_BYTES)
        .spawn();
    let relay = TcpRelay::start(bridge.port).await;
    let recipe = AgentRecipe::new(&relay.ws_url(), Some(BRIDGE_TOKEN));
    let agent = recipe.spawn();
    let gateway = GatewayProc::new(&recipe.socket())
        .env("CONNECTION_TIMEOUT", 20)
        .env("STREAM_BUFFER_BYTES", 65_536)
        .spawn();
    gateway
        .wait_health("healthy", std::time::Duration::from_secs(30))
        .await;
    bridge.wait_agents(1, SOON).await;
    let rss_report = recipe.dir.path().join("rss.json");
    let mut extra = restart_env(&recipe, &agent);
    extra.extend([
        ("RELAY_CUT_PORT".to_owned(), relay.cut_port.to_string()),
        (
            "GW_PID".to_owned(),
            gateway.service.pid().unwrap().to_string(),
        ),
        (
            "MB_PID".to_owned(),
            bridge.service.pid().unwrap().to_string(),
        ),
        ("RSS_REPORT".to_owned(), rss_report.display().to_string()),
    ]);
    let stack = McpStack {
        bridge,
        agent_recipe: recipe,
        agent,
        gateway,
    };
    pytest(&stack, "test_chaos.py", extra).await;
    // One drop through the relay; bridge-agent connected through it at the start, after each
    // restart and after the drop.
    assert_eq!(relay.cuts(), 1);
    assert!(relay.accepted() >= 5, "{} connections", relay.accepted());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rss_report).unwrap()).unwrap();
    let rss = &report["rss"];
    let faults: Vec<String> = report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| fixed_width(t.as_str().unwrap()))
        .collect();
    let cut: Vec<String> = stack
        .gateway
        .audit()
        .iter()
        .filter(|r| r["outcome"] == "slow_client")
        .map(|r| fixed_width(r["timestamp"].as_str().unwrap()))
        .collect();
    println!("faults at {faults:?}; stalled readers cut off at {cut:?}");
    assert_eq!(cut.len(), 5, "{cut:?}");
    assert!(
        cut.iter().all(|t| *t > faults[0]),
        "the stalled readers were cut off during the faults, not before"
    );
    println!("RSS (MiB, debug build, before / peak during the faults / after): {rss}");
    let peak = |name: &str| rss[name]["peak"].as_f64().unwrap_or(0.0);
    let before = |name: &str| rss[name]["before"].as_f64().unwrap_or(0.0);
    // Bounded: the five stalled readers were sent megabytes each; the services hold far less.
    assert!(peak("gateway") < before("gateway") + 64.0, "{rss}");
    let replay_mib = (REPLAY_BYTES >> 20) as f64;
    assert!(
        peak("mcp-bridge") < before("mcp-bridge") + 5.0 * replay_mib + 32.0,
        "{rss}"
    );
    assert!(peak("bridge-agent") < 96.0, "{rss}");
}

/// An RFC 3339 UTC time with its fraction padded to nine digits, so that times compare as text.
fn fixed_width(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (whole, fraction) = t.split_once('.').unwrap_or((t, ""));
    format!("{whole}.{fraction:0<9}Z")
}

#[tokio::test]
async fn a_wrong_or_missing_bridge_token_is_refused_and_audited() {
    let bridge = McpBridgeProc::new().spawn();
    let wrong = AgentRecipe::new(&bridge.ws_url(), Some("not-the-bridge-token"));
    let missing = AgentRecipe::new(&bridge.ws_url(), None);
    let mut wrong_agent = wrong.spawn();
    let mut missing_agent = missing.spawn();
    for (why, fingerprint) in [("wrong", true), ("missing", false)] {
        let record = bridge
            .wait_audit(&format!("a refused {why} bridge token"), |v| {
                v["event_type"] == "authentication"
                    && v["endpoint"] == "bridge_ws"
                    && v["reason"] == why
            })
            .await;
        assert_eq!(record["success"], false);
        assert_eq!(record["source"], "mcp-bridge");
        assert_eq!(
            record["key_fingerprint"].is_string(),
            fingerprint,
            "{record}"
        );
    }
    // Neither got in, and both keep saying so on their own /health.
    let (_, health) = get(&bridge.url("/health")).await.unwrap();
    assert_eq!(health["connected_bridge_agents"], 0, "{health}");
    assert_eq!(health["status"], "degraded");
    for recipe in [&wrong, &missing] {
        let (_, h) = get(&recipe.health_url()).await.unwrap_or_default();
        assert_ne!(h["mcp_connection"]["status"], "connected", "{h}");
    }
    let text = std::fs::read_to_string(bridge.service.log_path()).unwrap_or_default();
    assert!(
        !text.contains("not-the-bridge-token"),
        "a token reached the log"
    );
    assert!(!bridge
        .audit()
        .iter()
        .any(|v| v.to_string().contains("not-the-bridge-token")));

    // The right token gets in.
    let right = AgentRecipe::new(&bridge.ws_url(), Some(BRIDGE_TOKEN));
    let _right_agent = right.spawn();
    bridge.wait_agents(1, SOON).await;
    bridge
        .wait_audit("a successful bridge-agent authentication", |v| {
            v["event_type"] == "authentication" && v["success"] == true
        })
        .await;

    // /mcp wants its own bearer: missing and wrong are 401 and audited, right passes.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    for token in [None, Some("wrong-mcp-token")] {
        let mut req = client
            .post(bridge.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(list);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    bridge
        .wait_audit("a refused /mcp token", |v| {
            v["endpoint"] == "mcp" && v["reason"] == "wrong" && v["success"] == false
        })
        .await;
    let (_, metrics) = get(&bridge.url("/metrics")).await.unwrap();
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let failures = |endpoint: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "mcp_bridge_auth_failures_total{{endpoint=\"{endpoint}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(failures("ws") >= 2.0 && failures("mcp") >= 2.0, "{metrics}");

    // SIGTERM: a clean exit.
    bridge.service.terminate().unwrap();
    let mut bridge = bridge;
    let status = bridge.service.wait_exit(SOON).await.unwrap();
    assert!(status.success(), "{status}");
    wrong_agent.kill().await.ok();
    missing_agent.kill().await.ok();
}

#[tokio::test]
async fn a_client_that_declares_sampling_answers_when_sampling_is_on() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start_with(|b| b.env("MCP_SAMPLING", "true"), |g| g).await;
    pytest(&stack, "test_sampling.py", BTreeMap::new()).await;
    // Every sampling client left with its session, so none is used any more; nothing is left.
    let url = stack.bridge.url("/health");
    let health = wait_for(SOON, "no sampling client left", || async {
        let (_, health) = get(&url).await.ok()?;
        (health["sampling_clients"] == 0).then_some(health)
    })
    .await;
    assert_eq!(health["sampling_clients"], 0, "{health}");
    assert_eq!(health["queue_depth"], 0, "{health}");
    assert_eq!(health["leased"], 0, "{health}");
    stack
        .bridge
        .wait_audit("a request failed by a refused sampling call", |v| {
            v["event_type"] == "model_request" && v["error_code"] == "sampling_failed"
        })
        .await;
}

#[tokio::test]
async fn with_sampling_off_a_sampling_client_is_never_asked() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start().await;
    pytest(&stack, "test_sampling_off.py", BTreeMap::new()).await;
}

/// A request near the gateway's body cap (above the old 16 MiB frame limit) through every hop
/// to an agent over HTTP and over stdio. Leases and heartbeats have their default scale here,
/// and the logs are quiet: a debug build takes seconds to mask, send and parse 18 MiB, longer
/// than the 1 s heartbeat and 2 s lease the other scenarios use (a frame being received counts
/// as silence until it is whole).
#[tokio::test]
async fn a_request_near_the_body_cap_reaches_the_agent_whole() {
    if test_python().is_none() {
        return;
    }
    let bridge = McpBridgeProc::new()
        .env("LEASE_TIMEOUT", 60)
        .env("HEARTBEAT_INTERVAL", 30)
        .env("LOG_LEVEL", "info")
        .spawn();
    let mut agent_recipe = AgentRecipe::new(&bridge.ws_url(), Some(BRIDGE_TOKEN));
    for (name, value) in [("HEARTBEAT_INTERVAL", "30"), ("LOG_LEVEL", "info")] {
        agent_recipe
            .envs
            .insert(format!("LOCAL_PROVIDER_{name}"), value.to_owned());
    }
    let agent = agent_recipe.spawn();
    // Each of the two requests is ~57k tokens: under the default budget (100,000 a minute) the
    // second would wait for the first's tokens to come back, which is not what this test is about.
    let gateway = GatewayProc::new(&agent_recipe.socket())
        .env("LOG_LEVEL", "info")
        .env("RATE_LIMIT_TPM", 1_000_000_000)
        .spawn();
    gateway
        .wait_health("healthy", std::time::Duration::from_secs(30))
        .await;
    let stack = McpStack {
        bridge,
        agent_recipe,
        agent,
        gateway,
    };
    pytest(&stack, "test_large.py", BTreeMap::new()).await;
}

#[tokio::test]
async fn conversations_are_handed_as_deltas() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start().await;
    pytest(&stack, "test_deltas.py", BTreeMap::new()).await;
    let (_, metrics) = get(&stack.bridge.url("/metrics")).await.unwrap();
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for handed in ["delta", "whole"] {
        let series = format!("mcp_bridge_chat_handouts_total{{handed=\"{handed}\"}}");
        let count: f64 = metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        assert!(count > 0.0, "{series} missing or zero in /metrics");
    }
}

#[tokio::test]
async fn with_deltas_off_every_conversation_is_handed_whole() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start_with(|b| b.env("MCP_DELTAS", "false"), |g| g).await;
    pytest(&stack, "test_deltas_off.py", BTreeMap::new()).await;
}

#[tokio::test]
async fn after_an_mcp_bridge_restart_the_conversation_is_handed_whole() {
    if test_python().is_none() {
        return;
    }
    let mut stack = McpStack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conversation.json").display().to_string();
    let extra = BTreeMap::from([("CONVERSATION_FILE".to_owned(), file)]);
    pytest(
        &stack,
        "test_deltas_restart.py::test_before_restart",
        extra.clone(),
    )
    .await;
    stack.bridge.restart().await;
    stack.bridge.wait_agents(1, SOON).await;
    stack.gateway.wait_health("healthy", SOON).await;
    pytest(&stack, "test_deltas_restart.py::test_after_restart", extra).await;
}
