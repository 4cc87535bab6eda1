//! The real coding CLIs against the whole chain: gateway → bridge-agent → mcp-bridge → an MCP
//! agent written with the official Python `mcp` package (`tests/python_mcp/coding_agent.py`)
//! that answers with the client's own file-writing tool. Each client runs non-interactively with
//! only the settings docs/clients.md gives for it, and must leave the file written.
//!
//! - Claude Code (the binary `claude-agent-sdk` ships): `ANTHROPIC_BASE_URL` and
//!   `ANTHROPIC_API_KEY`, `claude -p … --permission-mode acceptEdits`;
//! - Codex CLI (`openai-codex-cli-bin`): a provider block in `$CODEX_HOME/config.toml`,
//!   `codex exec --sandbox workspace-write`;
//! - aider (`aider-chat`, in `.venv-aider`): `--openai-api-base`, `--openai-api-key`, `--model
//!   openai/<name>`, on a source file over 300 KB.
//!
//! The gateway runs with its default limits (tokens per minute, context window, output cap), so
//! the clients' 128,000- and 32,000-token output caps are served as a user would have them served.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::mcp_stack::{test_python, McpStack, MCP_TOKEN};
use integration_tests::skip::missing_dependency;
use integration_tests::stack::{KEY, MODEL};
use serde_json::Value;

/// How long a CLI may take for a whole task (it starts, asks, runs the tool, asks again).
const CLI_TIMEOUT: Duration = Duration::from_secs(240);

/// The MCP agent, stopped when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(python: &Path, stack: &McpStack, log: PathBuf, args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_mcp/coding_agent.py");
        let child = Command::new(python)
            .arg(script)
            .arg("--log")
            .arg(&log)
            .args(args)
            .env("MB_MCP_URL", stack.bridge.url("/mcp"))
            .env("MB_MCP_TOKEN", MCP_TOKEN)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// Every request the agent answered, as it logged them.
    fn handled(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Fails the test when the agent died (its error is on stderr).
    fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the MCP agent exited with {status}");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end within [`CLI_TIMEOUT`] (killing it past that); returns its output.
async fn run_cli(mut cmd: Command, agent: &mut Agent) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let started = Instant::now();
    // Waiting is polled so that a dead agent or a hung CLI fails the test with what happened.
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        agent.alive();
        if started.elapsed() > CLI_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the client (pid {pid}) did not finish within {CLI_TIMEOUT:?}:\n{}{}\nthe agent handled: {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                agent.handled()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = child.wait_with_output().unwrap();
    println!(
        "client exited {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path the Python test environment prints (`expr` is evaluated after importing `module`),
/// or `None` after reporting the package missing.
fn python_path(python: &Path, test: &str, module: &str, expr: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", &format!("import {module}; print({expr})")])
        .output()
        .unwrap();
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.is_file() {
        Some(path)
    } else {
        missing_dependency(
            test,
            &format!(
                "the Python package {module} ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "scripts/setup-test-deps.sh installs it",
        );
        None
    }
}

/// Only these variables reach a client, besides its own settings: no key or setting of the
/// machine's leaks in, and its home (config, caches, logs) is the test's.
fn bare(cmd: &mut Command, home: &Path) {
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("LANG", "C.UTF-8");
}

/// The chain and an agent that answers by writing `hello.txt` in `work` with the client's tool.
struct HelloTask {
    stack: McpStack,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    content: &'static str,
    agent: Agent,
}

impl HelloTask {
    async fn start(python: &Path) -> Self {
        let stack = McpStack::start().await;
        let home = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let content = "hello from the agent\n";
        let agent = Agent::spawn(
            python,
            &stack,
            home.path().join("agent.log"),
            &[
                "--dir",
                work.path().to_str().unwrap(),
                "--name",
                "hello.txt",
                "--content",
                content,
            ],
        );
        HelloTask {
            stack,
            home,
            work,
            content,
            agent,
        }
    }
}

fn assert_written(path: &Path, content: &str, agent: &Agent, out: &std::process::Output) {
    let written = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{} was not written ({e}); the agent handled {:?}; client stderr:\n{}",
            path.display(),
            agent.handled(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(written, content);
}

#[tokio::test]
async fn claude_code_writes_a_file_through_the_whole_chain() {
    const TEST: &str = "claude_code_writes_a_file_through_the_whole_chain";
    let Some(python) = test_python() else { return };
    let Some(claude) = python_path(
        &python,
        TEST,
        "claude_agent_sdk, pathlib",
        "pathlib.Path(claude_agent_sdk.__file__).parent / '_bundled' / 'claude'",
    ) else {
        return;
    };
    let HelloTask {
        stack,
        home,
        work,
        content,
        mut agent,
    } = HelloTask::start(&python).await;
    let mut cmd = Command::new(&claude);
    bare(&mut cmd, home.path());
    cmd.current_dir(work.path())
        .env("ANTHROPIC_BASE_URL", stack.gateway.url(""))
        .env("ANTHROPIC_API_KEY", KEY)
        .args([
            "-p",
            "Create hello.txt here.",
            "--permission-mode",
            "acceptEdits",
        ]);
    let out = run_cli(cmd, &mut agent).await;
    assert!(out.status.success(), "claude exited {}", out.status);
    assert_written(&work.path().join("hello.txt"), content, &agent, &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Done"));

    // What reached the agent: Messages requests with Claude Code's own model name and output
    // cap, its Write tool among the others, and the tool's result on the next turn.
    let handled = agent.handled();
    let wrote = handled
        .iter()
        .find(|h| h["tool"] == "Write")
        .unwrap_or_else(|| panic!("no Write call: {handled:?}"));
    assert_eq!(wrote["api"], "messages");
    assert!(wrote["model"].as_str().unwrap().starts_with("claude-"));
    assert!(wrote["max_tokens"].as_u64().unwrap() >= 32000, "{wrote}");
    assert!(handled
        .iter()
        .any(|h| h["roles"].as_array().unwrap().last().unwrap() == "tool"));
    // With the default token budget (100,000 a minute) a request asking 128,000 output tokens
    // reserves its prompt and RATE_LIMIT_OUTPUT_RESERVATION (8192) of output, so the turns of a
    // task follow each other without a 429.
    let limited: Vec<_> = stack
        .gateway
        .audit()
        .into_iter()
        .filter(|v| v["event_type"] == "rate_limit_exceeded")
        .collect();
    println!("rate-limit refusals: {}", limited.len());
    assert!(limited.is_empty(), "{limited:?}");
}

#[tokio::test]
async fn codex_writes_a_file_through_the_whole_chain() {
    const TEST: &str = "codex_writes_a_file_through_the_whole_chain";
    let Some(python) = test_python() else { return };
    let Some(codex) = python_path(
        &python,
        TEST,
        "codex_cli_bin",
        "codex_cli_bin.bundled_codex_path()",
    ) else {
        return;
    };
    let HelloTask {
        stack,
        home,
        work,
        content,
        mut agent,
    } = HelloTask::start(&python).await;
    // The provider block of docs/clients.md, nothing else.
    let codex_home = home.path().join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "model_provider = \"local-provider\"\n\n[model_providers.local-provider]\nname = \"mcp-local-provider\"\nbase_url = \"{}\"\nwire_api = \"responses\"\nenv_key = \"MCP_LOCAL_PROVIDER_KEY\"\n",
            stack.gateway.base_url()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&codex);
    bare(&mut cmd, home.path());
    cmd.current_dir(work.path())
        .env("CODEX_HOME", &codex_home)
        .env("MCP_LOCAL_PROVIDER_KEY", KEY)
        .args([
            "exec",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
        ])
        .arg("-C")
        .arg(work.path())
        .arg("Create hello.txt here.");
    let out = run_cli(cmd, &mut agent).await;
    assert!(out.status.success(), "codex exited {}", out.status);
    assert_written(&work.path().join("hello.txt"), content, &agent, &out);

    // Its default model's tools came as an `additional_tools` item: the free-form `exec` of the
    // `functions` namespace reached the agent as a function of one string, the agent's call went
    // back as a `custom_tool_call`, and its output came back as the tool's result.
    let handled = agent.handled();
    let wrote = handled
        .iter()
        .find(|h| h["answered"] == "tool_calls")
        .unwrap_or_else(|| panic!("no tool call: {handled:?}"));
    assert_eq!(wrote["api"], "responses");
    assert!(
        ["functions__exec", "apply_patch", "exec_command", "shell"]
            .contains(&wrote["tool"].as_str().unwrap()),
        "{wrote}"
    );
    assert!(handled
        .iter()
        .any(|h| h["roles"].as_array().unwrap().last().unwrap() == "tool"));
}

#[tokio::test]
async fn aider_edits_a_file_over_300_kb_through_the_whole_chain() {
    const TEST: &str = "aider_edits_a_file_over_300_kb_through_the_whole_chain";
    let Some(python) = test_python() else { return };
    let aider = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-aider/bin/aider");
    if !aider.is_file() {
        missing_dependency(
            TEST,
            &format!("aider ({})", aider.display()),
            "scripts/setup-test-deps.sh installs it into .venv-aider",
        );
        return;
    }
    // A large prompt takes a while to count and relay: the bridge's timeouts stay the defaults
    // the test stack uses for every other test.
    let stack = McpStack::start().await;
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // A source file over 300 KB: 6,000 small functions, one of which the agent changes.
    let mut source = String::new();
    for i in 0..6000 {
        source.push_str(&format!(
            "def function_{i:05}(value):\n    \"\"\"Returns value plus {i}.\"\"\"\n    return value + {i}\n\n\n"
        ));
    }
    assert!(source.len() > 300 * 1024, "{} bytes", source.len());
    let file = work.path().join("big_module.py");
    std::fs::write(&file, &source).unwrap();
    let search = "    return value + 4242\n";
    let replace = "    return value + 4242 + 1\n";
    let mut agent = Agent::spawn(
        &python,
        &stack,
        home.path().join("agent.log"),
        &[
            "--dir",
            work.path().to_str().unwrap(),
            "--name",
            "big_module.py",
            "--search",
            search.trim_end_matches('\n'),
            "--replace",
            replace.trim_end_matches('\n'),
        ],
    );
    let mut cmd = Command::new(&aider);
    bare(&mut cmd, home.path());
    cmd.current_dir(work.path()).args([
        "--yes-always",
        "--no-git",
        "--no-auto-commits",
        "--no-analytics",
        "--no-check-update",
        "--no-show-model-warnings",
        "--no-show-release-notes",
        "--no-pretty",
        "--no-stream",
        "--edit-format",
        "diff",
        "--map-tokens",
        "0",
    ]);
    cmd.arg("--model")
        .arg(format!("openai/{MODEL}"))
        .arg("--openai-api-base")
        .arg(stack.gateway.base_url())
        .arg("--openai-api-key")
        .arg(KEY)
        .arg("--message")
        .arg("In function_04242, return one more.")
        .arg("big_module.py");
    let out = run_cli(cmd, &mut agent).await;
    assert!(out.status.success(), "aider exited {}", out.status);
    let edited = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        edited,
        source.replace(search, replace),
        "the file was not edited as asked"
    );

    let handled = agent.handled();
    let asked = handled
        .iter()
        .find(|h| h["prompt_bytes"].as_u64().unwrap() > 300 * 1024)
        .unwrap_or_else(|| panic!("no request carried the file: {handled:?}"));
    assert_eq!(asked["api"], Value::Null, "Chat Completions: {asked}");
    assert_eq!(asked["model"], MODEL);
}
