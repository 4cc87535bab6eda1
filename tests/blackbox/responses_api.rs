//! OpenAI's Responses API with the official `openai` package and the OpenAI Agents SDK as the
//! clients, the official `mcp` package as the Cursor agent, against the real mcp-bridge,
//! bridge-agent and gateway. The scenarios are in `tests/python_mcp/test_responses.py`.
use std::collections::BTreeMap;

use integration_tests::harness::get;
use integration_tests::mcp_stack::{test_python, McpStack};

use crate::mcp_agent::pytest;

#[tokio::test]
async fn responses_clients_served_by_the_agent() {
    if test_python().is_none() {
        return;
    }
    let stack = McpStack::start().await;
    pytest(&stack, "test_responses.py", BTreeMap::new()).await;
    // The shared generation path audited them like chats, under the Responses API's ids.
    let record = stack
        .gateway
        .wait_audit("a model_request for a response", |v| {
            v["event_type"] == "model_request"
                && v["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("resp_"))
                && v["outcome"] == "ok"
        })
        .await;
    assert!(record["tokens"].as_u64().unwrap() > 0, "{record}");
    stack
        .gateway
        .wait_audit("a cancelled response", |v| {
            v["event_type"] == "model_request"
                && v["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("resp_"))
                && v["outcome"] == "cancelled"
        })
        .await;
    let (_, health) = get(&stack.bridge.url("/health")).await.unwrap();
    assert_eq!(health["queue_depth"], 0, "{health}");
    assert_eq!(health["leased"], 0, "{health}");
}
