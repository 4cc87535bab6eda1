//! Real client libraries against the real binaries: the official Python `openai` package.
use std::path::PathBuf;
use std::process::Command;

use integration_tests::stack::{GatewayProc, Stack, KEY, MODEL};

/// The interpreter with the pinned client packages (`scripts/setup-test-deps.sh` makes it).
fn python() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidate = std::env::var_os("LOCAL_PROVIDER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    if candidate.is_file() {
        return Some(candidate);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing; scripts/setup-test-deps.sh creates it",
        candidate.display()
    );
    eprintln!("no Python test environment at {}: the OpenAI SDK tests did not run (run scripts/setup-test-deps.sh)", candidate.display());
    None
}

#[tokio::test]
async fn openai_python_sdk() {
    let Some(python) = python() else { return };
    let stack = Stack::start().await;
    let limited = GatewayProc::new(&stack.agent.socket)
        .env("RATE_LIMIT_RPM", 1)
        .env("RATE_LIMIT_BURST", 1)
        .spawn();
    let dir = tempfile::tempdir().unwrap();
    let down = GatewayProc::new(&dir.path().join("nobody.sock"))
        .env("CONNECTION_TIMEOUT", 0.3)
        .spawn();
    limited.wait_live().await;
    down.wait_live().await;

    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(&tests)
            .env("GW_BASE_URL", stack.gateway.base_url())
            .env("GW_LIMITED_URL", limited.base_url())
            .env("GW_DOWN_URL", down.base_url())
            .env("GW_KEY", KEY)
            .env("GW_MODEL", MODEL)
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
        "the OpenAI SDK tests failed:\n{report}"
    );
    assert!(report.contains(" passed"), "{report}");
}
