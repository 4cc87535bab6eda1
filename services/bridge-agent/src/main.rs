//! The bridge-agent binary: configuration, sockets and signals around [`bridge_agent::run`].
use std::process::ExitCode;

use bridge_agent::{bind_socket, Config, Listeners};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: bridge-agent [healthcheck | --version | --help]
Owns the MCP bridge WebSocket and serves the gateway over a Unix socket; configured by
LOCAL_PROVIDER_* environment variables.
healthcheck: exit 0 when the bridge-agent configured by the same variables answers /health/live.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("healthcheck") => return healthcheck(),
        Some("--version" | "-V") => {
            println!("bridge-agent {}", provider_shared::VERSION);
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("bridge-agent: unknown argument {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // Before the configuration is read: the connection cap is fitted to the raised limit.
    let open_files = provider_shared::connections::raise_open_file_limit();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("bridge-agent: {err}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of `main`, after the runtime: the last lines are written out before exit.
    let _logs = provider_shared::telemetry::init_logging(config.log_level, config.log_format);
    open_files.log(config.connections.max_connections);
    for var in provider_shared::config::unknown_vars() {
        tracing::warn!(%var, "unknown variable ignored (a typo?)");
    }
    let runtime = match config.worker_threads.runtime() {
        Ok(rt) => rt,
        Err(err) => {
            provider_shared::telemetry::stderr_line(&format!(
                "bridge-agent: cannot start the runtime: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_service(config))
}

/// For container HEALTHCHECKs (the image has no shell or curl): probes the health address the
/// same `LOCAL_PROVIDER_*` variables make bridge-agent listen on.
fn healthcheck() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("bridge-agent healthcheck: {err}");
            return ExitCode::from(2);
        }
    };
    let port = config.bridge_agent_port.0 as u16;
    let timeout = std::time::Duration::from_secs(3);
    if provider_shared::probe::run("bridge-agent", &config.bridge_agent_host, port, timeout) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_service(config: Config) -> ExitCode {
    if config.binds_non_loopback() {
        tracing::warn!(host = %config.bridge_agent_host,
            "health endpoint bound beyond loopback (LOCAL_PROVIDER_ALLOW_NON_LOOPBACK=true)");
    }
    let ipc = match bind_socket(&config.bridge_socket, bridge_agent::TAKEOVER_WAIT).await {
        Ok(listener) => listener,
        Err(err) => return fail(&err),
    };
    let addr = (
        config.bridge_agent_host.clone(),
        config.bridge_agent_port.0 as u16,
    );
    let http = match bind_health(&addr.0, addr.1).await {
        Ok(listener) => listener,
        Err(source) => {
            ipc.release();
            return fail(&bridge_agent::Error::Bind {
                addr: format!("{}:{}", addr.0, addr.1),
                source,
            });
        }
    };
    tracing::info!(socket = %config.bridge_socket.display(),
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        bridge = %config.mcp_bridge_url, "bridge-agent listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(provider_shared::shutdown::on_signal(shutdown.clone()));
    match bridge_agent::run(config, Listeners { ipc, http }, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// Binds the health port; a port still held (by the bridge-agent before this one, exiting) is
/// tried again for up to `TAKEOVER_WAIT`, as the socket is.
async fn bind_health(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + bridge_agent::TAKEOVER_WAIT;
    loop {
        match TcpListener::bind((host, port)).await {
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            bound => return bound,
        }
    }
}

fn fail(err: &bridge_agent::Error) -> ExitCode {
    tracing::error!(%err, "bridge-agent stopping");
    provider_shared::telemetry::stderr_line(&format!("bridge-agent: {err}"));
    ExitCode::FAILURE
}
