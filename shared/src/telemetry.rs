//! Logging and metrics set-up shared by both services.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogLevel};

/// Libraries whose debug and trace lines print whole messages (MCP tool results holding
/// prompts, WebSocket frames, headers with tokens): kept at `info` whatever `LOG_LEVEL` says.
const VERBATIM_LIBRARIES: &[&str] = &["rmcp", "tungstenite", "tokio_tungstenite", "hyper", "h2"];

/// The filter for `level` (a `RUST_LOG` filter, when set, wins instead).
fn filter_for(level: LogLevel) -> String {
    let mut directives = level.0.as_str().to_ascii_lowercase();
    if level.0 > tracing::Level::INFO {
        for library in VERBATIM_LIBRARIES {
            directives.push_str(&format!(",{library}=info"));
        }
    }
    directives
}

/// Logs to stdout at `level` (a `RUST_LOG` filter, when set, wins), as text or JSON lines.
pub fn init_tracing(level: LogLevel, format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(filter_for(level)));
    // Colour only for a person at a terminal: supervisors and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    // A second initialisation (several services in one test process) keeps the first.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Latency buckets in seconds: fine below a millisecond, where the gateway's own overhead lives,
/// and up to the longest answers.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only when another recorder is installed; this handle then renders nothing new,
        // which is visible on /metrics rather than fatal.
        let _ = metrics::set_global_recorder(recorder);
        let collector = PROCESS.get_or_init(metrics_process::Collector::default);
        collector.describe();
        // The recorder queues every histogram sample until upkeep folds it into the buckets;
        // without a regular upkeep an unscraped process would hold all of them (memory growing
        // with every request).
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        handle
    })
}

/// The Prometheus text exposition, with fresh process memory and CPU figures.
pub fn render_metrics() -> String {
    let handle = metrics();
    if let Some(collector) = PROCESS.get() {
        collector.collect();
    }
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_logs_leave_message_printing_libraries_at_info() {
        let debug = filter_for(LogLevel(tracing::Level::DEBUG));
        assert!(
            debug.starts_with("debug,") && debug.contains("rmcp=info"),
            "{debug}"
        );
        assert_eq!(filter_for(LogLevel(tracing::Level::WARN)), "warn");
    }
}
