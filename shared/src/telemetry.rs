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

/// Log lines that may wait for the log writer thread. Past that, the thread logging waits for
/// room (lines are never dropped): stdout is then not being read, and a synchronous write would
/// have waited as long. The queue's slots are allocated up front (about 32 bytes each, 128 KiB),
/// the lines themselves only while they wait; at 4096 a burst of some thousands of requests'
/// lines fits while the writer catches up.
pub const LOG_QUEUE_LINES: usize = 4096;

/// The log writer's buffer: the lines it takes from the queue in one go are written together
/// up to this many bytes (a line longer than this is written alone).
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// Keeps the log writer thread of [`init_logging`] for the life of the process: dropping it
/// writes out what is still queued (waiting up to a second), so it is held by `main` and
/// dropped last.
#[must_use = "dropping the guard stops the log writer: hold it until the process ends"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// One line to stderr in one write, for a service's start-up or exit error once logging runs:
/// the log thread writes beside it (into the same file, when both are redirected), and
/// `eprintln!` would write the line in pieces that its lines can split.
pub fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Logs to stdout at `level` (a `RUST_LOG` filter, when set, wins), as text or JSON lines,
/// written by a thread of their own: a request's thread formats its line and queues it
/// ([`LOG_QUEUE_LINES`]), and never does the `write` to stdout itself.
pub fn init_logging(level: LogLevel, format: LogFormat) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .thread_name("log-writer")
        // The writer takes every queued line, then flushes: a burst becomes one `write`.
        .finish(std::io::BufWriter::with_capacity(
            LOG_WRITE_BYTES,
            std::io::stdout(),
        ));
    // A second initialisation (several services in one test process) keeps the first, and
    // this writer, which nothing uses, stops at once.
    let installed = install(level, format, writer);
    LogGuard {
        _writer: installed.then_some(guard),
    }
}

/// Logs to stdout at `level` as [`init_logging`] does, each line written by the thread that
/// logs it (mcp-bridge's, until it holds a [`LogGuard`] in its `main`).
pub fn init_tracing(level: LogLevel, format: LogFormat) {
    install(level, format, std::io::stdout);
}

/// Installs the subscriber writing to `writer`; false when one was installed already.
fn install<W>(level: LogLevel, format: LogFormat, writer: W) -> bool
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(filter_for(level)));
    // Colour only for a person at a terminal: supervisors and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    }
}

/// Latency buckets in seconds: fine below a millisecond, where the gateway's own overhead lives,
/// and up to the longest answers.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How often the histograms' queued samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
        // with every request). What waits between two upkeeps is the high-water mark of that
        // queue, which the allocator keeps (several samples per chat, thousands of chats a second).
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
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
