//! `gateway`: serve, or `gateway generate-api-key`, or `gateway healthcheck`.
use std::process::ExitCode;

use gateway::{run, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: gateway [generate-api-key | healthcheck | --version | --help]
Serves the OpenAI-compatible API; configured by LOCAL_PROVIDER_* environment variables.
healthcheck: exit 0 when the gateway configured by the same variables answers /health/live.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("generate-api-key") => {
            println!("{}", gateway::keygen::generate_api_key());
            return ExitCode::SUCCESS;
        }
        Some("healthcheck") => return healthcheck(),
        Some("--version" | "-V") => {
            println!("gateway {}", provider_shared::VERSION);
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("gateway: unknown argument {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // Before the configuration is read: the connection cap is fitted to the raised limit.
    let open_files = provider_shared::connections::raise_open_file_limit();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("gateway: {err}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of `main`, after the runtime: the last lines are written out before exit.
    let _logs = provider_shared::telemetry::init_logging(settings.log_level, settings.log_format);
    open_files.log(settings.connections.max_connections);
    let runtime = match settings.worker_threads.runtime() {
        Ok(rt) => rt,
        Err(err) => {
            provider_shared::telemetry::stderr_line(&format!(
                "gateway: cannot start the runtime: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_service(settings))
}

/// For container HEALTHCHECKs (the image has no shell or curl): probes the address the same
/// `LOCAL_PROVIDER_*` variables make the gateway listen on.
fn healthcheck() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("gateway healthcheck: {err}");
            return ExitCode::from(2);
        }
    };
    let timeout = std::time::Duration::from_secs(3);
    if provider_shared::probe::run("gateway", &settings.host, settings.port, timeout) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_service(settings: Settings) -> ExitCode {
    for var in provider_shared::config::unknown_vars() {
        tracing::warn!(var, "unknown variable ignored (a typo?)");
    }
    if settings.allow_keyless_generation {
        tracing::warn!("LOCAL_PROVIDER_ALLOW_KEYLESS_GENERATION is on: any program on this machine can use the agent without the API key");
    }
    if settings.binds_non_loopback() {
        tracing::warn!(host = %settings.host, "binding beyond loopback: anyone who can reach this address can try the API key");
    }
    let addr = format!("{}:{}", settings.host, settings.port);
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(err) => {
            provider_shared::telemetry::stderr_line(&format!(
                "gateway: cannot listen on {addr}: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    let answers_to = match &settings.model_aliases {
        gateway::config::ModelAliases::Any => "every model name".to_owned(),
        gateway::config::ModelAliases::Only(globs) => {
            let globs: Vec<&str> = globs.iter().map(glob::Pattern::as_str).collect();
            format!("{} and {}", settings.model_name, globs.join(","))
        }
    };
    tracing::info!(addr = %local, model = %settings.model_name, answers_to, socket = %settings.bridge_socket.display(), "gateway listening");
    // Claude Code asks for 32000 output tokens on every request.
    if let Some(limit) = settings.max_tokens_limit.filter(|l| *l < 32_000) {
        tracing::warn!(
            limit,
            "LOCAL_PROVIDER_MAX_TOKENS_LIMIT refuses requests asking for more output than {limit} tokens; Claude Code asks for 32000 on every request. Leave it unset to accept what fits the context window"
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(provider_shared::shutdown::on_signal(shutdown.clone()));
    match run(settings, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            provider_shared::telemetry::stderr_line(&format!("gateway: {err}"));
            ExitCode::FAILURE
        }
    }
}
