//! The compatibility corpus replayed: every request real clients sent (`tests/corpus/`, recorded
//! by `tests/clients/record.py`: Claude Code, Codex CLI, aider, langchain-openai's chat and
//! Responses, openai-agents, `llm`, ollama-python, and Void's documented requests) is sent again,
//! headers and body as recorded, to the real gateway and bridge-agent with the scripted peer as
//! the agent. Each must be accepted (2xx, its whole answer read) and, when it asks for an answer,
//! reach the agent as intended: the API, the model asked for, the roles of its messages in order
//! and the names of its tools.
use integration_tests::corpus::{self, Api};
use integration_tests::stack::{http, Stack, KEY};
use reqwest::Method;

#[tokio::test]
async fn every_recorded_client_request_is_served_and_reaches_the_agent_as_sent() {
    let recorded = corpus::load();
    let clients: std::collections::BTreeSet<&str> =
        recorded.iter().map(|r| r.client.as_str()).collect();
    for client in [
        "claude-code",
        "codex",
        "aider",
        "langchain-chat",
        "langchain-responses",
        "openai-agents",
        "llm",
        "ollama-python",
        "void",
    ] {
        assert!(clients.contains(client), "no recording of {client}");
    }
    // Void's Ollama provider sends no key: the opt-in docs/clients.md describes. The requests
    // are replayed back to back, faster than any client sends them, so the token budget is out
    // of the way (the real clients run with the default one in coding_clients.rs).
    let stack = Stack::start_with(
        |a| a,
        |g| {
            g.env("ALLOW_KEYLESS_GENERATION", "true")
                .env("RATE_LIMIT_TPM", 100_000_000)
        },
    )
    .await;
    let mut failures = Vec::new();
    for r in &recorded {
        let name = r
            .file
            .strip_prefix(corpus::dir())
            .unwrap()
            .display()
            .to_string();
        let before = stack.peer.invokes().len();
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let mut req = http().request(method.clone(), stack.gateway.url(&r.path));
        for (header, value) in r.replay_headers(KEY) {
            req = req.header(header, value);
        }
        if !r.body.is_null() {
            req = req.body(serde_json::to_vec(&r.body).unwrap());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        if !status.is_success() {
            failures.push(format!("{name}: {status} {text}"));
            continue;
        }
        let Some(expected) = r.expected() else {
            continue;
        };
        // The answer was read whole, so the agent was asked before it.
        let invokes = stack.peer.invokes();
        if invokes.len() != before + 1 {
            failures.push(format!(
                "{name}: the agent was asked {} times",
                invokes.len() - before
            ));
            continue;
        }
        let invoke = serde_json::to_value(&invokes[before]).unwrap();
        let payload = &invoke["payload"];
        let parameters = &payload["parameters"];
        let mut seen = Vec::new();
        if parameters["model"] != expected.model.as_str() {
            seen.push(format!(
                "model {} (sent {})",
                parameters["model"], expected.model
            ));
        }
        let marker = parameters["api"].as_str();
        if marker != expected.api.marker() {
            seen.push(format!("api {marker:?}, expected {:?}", expected.api));
        }
        match expected.api {
            Api::Completion => {
                if payload["kind"] != "completion" {
                    seen.push(format!("kind {}", payload["kind"]));
                }
            }
            _ => {
                let roles: Vec<String> = payload["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["role"].as_str().unwrap_or("").to_owned())
                    .collect();
                if roles != expected.roles {
                    seen.push(format!("roles {roles:?}, expected {:?}", expected.roles));
                }
                let tools: Vec<String> = parameters["tools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| t["function"]["name"].as_str().unwrap_or("").to_owned())
                    .collect();
                if tools != expected.tools {
                    seen.push(format!("tools {tools:?}, expected {:?}", expected.tools));
                }
            }
        }
        if !seen.is_empty() {
            failures.push(format!("{name}: {}", seen.join("; ")));
        }
    }
    println!(
        "{} recorded requests of {} clients replayed",
        recorded.len(),
        clients.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
