//! The mcp-bridge binary: configuration, the listener and signals around [`mcp_bridge::run`], or
//! with `--stdio` the MCP stdio relay to a running mcp-bridge.
use std::process::ExitCode;

use mcp_bridge::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: mcp-bridge [--stdio | healthcheck]
  (no argument)  serve bridge-agent's WebSocket, MCP at /mcp, /health and /metrics on
                 LOCAL_PROVIDER_MCP_BRIDGE_HOST:PORT (127.0.0.1:8787)
  --stdio        speak MCP on stdin/stdout, relayed to that running mcp-bridge's /mcp
                 (for MCP clients that launch their servers)
  healthcheck    exit 0 when the mcp-bridge configured by the same variables answers
                 /health/live (for container HEALTHCHECKs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdio = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => false,
        ["--stdio"] => true,
        ["healthcheck"] => return healthcheck(),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("mcp-bridge: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Before the configuration is read: the connection cap is fitted to the raised limit.
    let open_files = provider_shared::connections::raise_open_file_limit();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mcp-bridge: {err}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of `main`, after the runtime: the last lines are written before exit.
    let _logs = if stdio {
        // stdout carries the protocol: logs go to stderr.
        mcp_bridge::relay::init_stderr_tracing(config.log_level);
        None
    } else {
        let logs = provider_shared::telemetry::init_logging(config.log_level, config.log_format);
        open_files.log(config.connections.max_connections);
        Some(logs)
    };
    for var in provider_shared::config::unknown_vars() {
        tracing::warn!(%var, "unknown variable ignored (a typo?)");
    }
    let runtime = match config.worker_threads.runtime() {
        Ok(rt) => rt,
        Err(err) => {
            provider_shared::telemetry::stderr_line(&format!(
                "mcp-bridge: cannot start the runtime: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    if stdio {
        return match runtime.block_on(mcp_bridge::relay::run(&config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err),
        };
    }
    runtime.block_on(run_service(config))
}

async fn run_service(config: Config) -> ExitCode {
    if let Err(err) = config.require_tokens() {
        tracing::error!(%err, "mcp-bridge refuses to start");
        provider_shared::telemetry::stderr_line(&format!("mcp-bridge: {err}"));
        return ExitCode::from(2);
    }
    let missing = config.missing_tokens();
    if !missing.is_empty() {
        tracing::warn!(missing = %missing.join(", "),
            "serving without a token (LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN=true): any process on this machine may take the editor's prompts from /mcp or reach the agent as a bridge-agent");
    }
    if config.binds_non_loopback() {
        tracing::warn!(host = %config.host,
            "mcp-bridge bound beyond loopback (LOCAL_PROVIDER_ALLOW_NON_LOOPBACK=true)");
    }
    let addr = format!("{}:{}", config.host, config.port);
    let listener = match TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(listener) => listener,
        Err(source) => return fail(&mcp_bridge::Error::Bind { addr, source }),
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(ws = %format!("ws://{local}"), mcp = %format!("http://{local}/mcp"),
        bridge_token = config.bridge_token.is_some(), mcp_token = config.http_token.is_some(),
        "mcp-bridge listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(provider_shared::shutdown::on_signal(shutdown.clone()));
    match mcp_bridge::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// Probes the address the same `LOCAL_PROVIDER_*` variables make mcp-bridge listen on (the
/// image has no shell or curl).
fn healthcheck() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mcp-bridge healthcheck: {err}");
            return ExitCode::from(2);
        }
    };
    let timeout = std::time::Duration::from_secs(3);
    if provider_shared::probe::run("mcp-bridge", &config.host, config.port, timeout) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(err: &mcp_bridge::Error) -> ExitCode {
    tracing::error!(%err, "mcp-bridge stopping");
    provider_shared::telemetry::stderr_line(&format!("mcp-bridge: {err}"));
    ExitCode::FAILURE
}
