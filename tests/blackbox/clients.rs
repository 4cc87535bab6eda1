//! Real client libraries against the real binaries: the official Python `openai` and `ollama`
//! packages.
use std::path::PathBuf;
use std::process::Command;

use integration_tests::mcp_stack::test_python;
use integration_tests::stack::{GatewayProc, Stack, KEY, MODEL};
use provider_shared::bridge::Payload;

#[tokio::test]
async fn openai_and_ollama_python_clients() {
    let Some(python) = test_python() else { return };
    let stack = Stack::start().await;
    let limited = GatewayProc::new(&stack.agent.socket)
        .env("RATE_LIMIT_RPM", 1)
        .env("RATE_LIMIT_BURST", 1)
        .spawn();
    let keyless = GatewayProc::new(&stack.agent.socket)
        .env("ALLOW_KEYLESS_GENERATION", "true")
        .spawn();
    // A model with a small context: 2,000 tokens (the default output reserve is 1,024), that
    // answers to its own name only.
    let small = GatewayProc::new(&stack.agent.socket)
        .env("CONTEXT_WINDOW", 2000)
        .env("MODEL_ALIASES", MODEL)
        .spawn();
    let dir = tempfile::tempdir().unwrap();
    let down = GatewayProc::new(&dir.path().join("nobody.sock"))
        .env("CONNECTION_TIMEOUT", 0.3)
        .spawn();
    for gateway in [&limited, &keyless, &small, &down] {
        gateway.wait_live().await;
    }
    let envs = [
        ("GW_BASE_URL", stack.gateway.base_url()),
        ("GW_ROOT_URL", stack.gateway.url("")),
        ("GW_LIMITED_URL", limited.base_url()),
        ("GW_KEYLESS_ROOT_URL", keyless.url("")),
        ("GW_DOWN_URL", down.base_url()),
        ("GW_SMALL_URL", small.base_url()),
        ("GW_SMALL_ROOT_URL", small.url("")),
        ("GW_KEY", KEY.to_owned()),
        ("GW_MODEL", MODEL.to_owned()),
    ];
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(tests.join("test_openai_sdk.py"))
            .arg(tests.join("test_ollama_client.py"))
            .envs(envs)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "the Python client tests failed:\n{report}"
    );
    assert!(report.contains(" passed"), "{report}");

    // Nothing that could not fit the context reached the agent; what fits did.
    let invokes = stack.peer.invokes();
    let asked = |marker: &str| {
        invokes
            .iter()
            .any(|i| serde_json::to_string(&i.payload).unwrap().contains(marker))
    };
    assert!(
        !asked("context-overflow"),
        "a request over the context window reached the agent"
    );
    assert!(
        asked("fits-the-context"),
        "a request within the context window did not reach the agent"
    );

    // Fill-in-the-middle reached the agent as a completion, with the text after the cursor.
    let fim = stack
        .peer
        .invokes()
        .into_iter()
        .find_map(|i| match i.payload {
            Payload::Completion {
                prompt,
                suffix,
                parameters,
                ..
            } if prompt.starts_with("def add") => {
                Some((suffix, parameters.parse::<serde_json::Value>().unwrap()))
            }
            _ => None,
        });
    let (suffix, parameters) = fim.expect("the generate request reached the agent as a completion");
    assert_eq!(suffix.as_deref(), Some("\n    return c"));
    assert_eq!(parameters["max_tokens"], 64);
    assert_eq!(parameters["raw"], true);
}
