//! Anthropic's Messages API with the official `anthropic` package as the client and the official
//! `mcp` package as the Cursor agent, against the real mcp-bridge, bridge-agent and gateway, plus
//! two more gateways on the same bridge-agent for the 429 and 529 answers. The scenarios are in
//! `tests/python_mcp/test_anthropic.py`.
use std::collections::BTreeMap;

use integration_tests::harness::get;
use integration_tests::mcp_stack::{test_python, McpStack};
use integration_tests::stack::GatewayProc;

use crate::mcp_agent::pytest;

#[tokio::test]
async fn anthropic_client_served_by_the_agent() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start().await;
    let socket = stack.agent_recipe.socket();
    // Only its own model name (LOCAL_PROVIDER_MODEL_ALIASES), and one failed login per minute.
    let narrow = GatewayProc::new(&socket)
        .env("MODEL_ALIASES", integration_tests::stack::MODEL)
        .env("AUTH_FAILURE_LIMIT", 1)
        .spawn();
    let single = GatewayProc::new(&socket)
        .env("MAX_CONCURRENT_REQUESTS", 1)
        .spawn();
    for gateway in [&narrow, &single] {
        gateway.wait_live().await;
    }
    let extra = BTreeMap::from([
        ("GW_NARROW_URL".to_owned(), narrow.base_url()),
        ("GW_SINGLE_URL".to_owned(), single.base_url()),
    ]);
    pytest(&stack, "test_anthropic.py", extra).await;
    for outcome in ["ok", "cancelled"] {
        stack
            .gateway
            .wait_audit(&format!("a model_request for a message, {outcome}"), |v| {
                v["event_type"] == "model_request"
                    && v["request_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("msg_"))
                    && v["outcome"] == outcome
            })
            .await;
    }
    let (_, health) = get(&stack.bridge.url("/health")).await.unwrap();
    assert_eq!(health["queue_depth"], 0, "{health}");
    assert_eq!(health["leased"], 0, "{health}");
}
