//! The security audit log of the gateway and mcp-bridge: JSON lines (`timestamp`, `event_type`,
//! `source`, then the event's fields), appended by one writer task so requests never wait on disk.
//! It records who and what, never a key, a token or a prompt (only their digests).
//!
//! The writer rotates the file by size (`AUDIT_LOG_MAX_BYTES`, keeping `AUDIT_LOG_BACKUPS` old
//! files as `<name>.1` … `<name>.N`) and reopens it on SIGHUP, for an external logrotate. Its
//! queue holds [`QUEUE_LINES`] lines: past that (the disk stalled for that long), new lines are
//! dropped rather than making requests wait, counted in `audit_log_lines_dropped_total` and in
//! [`AuditStats::dropped`] (shown by `/health`), and logged.
//!
//! Refusals and throttles are recorded with [`Audit::record_repeated`]: coalesced per kind
//! (client and reason) into one line and a count per interval ([`repeats`]), so that a flood of
//! refused requests cannot rotate the history away. Everything else ([`Audit::record`]: a
//! request served, a session made or ended) is written one line per event.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod repeats;

use repeats::{Line, Repeats};

/// Lines the writer may fall behind by before new ones are dropped.
pub const QUEUE_LINES: usize = 10_000;
/// `AUDIT_LOG_MAX_BYTES`'s default: 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// `AUDIT_LOG_BACKUPS`'s default.
pub const DEFAULT_BACKUPS: u32 = 5;

/// When the writer starts a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would take the file past this size; 0 never rotates.
    pub max_bytes: u64,
    /// Old files kept; 0 starts the file afresh on rotation.
    pub backups: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_MAX_BYTES,
            backups: DEFAULT_BACKUPS,
        }
    }
}

/// What the writer has done so far, for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditStats {
    /// Whether an audit log is written at all.
    pub enabled: bool,
    /// Lines waiting for the writer now.
    pub queued: u64,
    /// Most lines that may wait ([`QUEUE_LINES`]).
    pub capacity: u64,
    /// Lines dropped because the queue was full.
    pub dropped: u64,
    pub written: u64,
    pub write_errors: u64,
    pub rotations: u64,
    pub reopens: u64,
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
    rotations: AtomicU64,
    reopens: AtomicU64,
}

#[derive(Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
    counters: Arc<Counters>,
    /// The service writing, as `source` in every line.
    source: &'static str,
    repeats: Arc<Repeats>,
}

/// Ends the writer once every [`Audit`] handle is gone, after the last line is on disk.
pub struct AuditWriter {
    task: Option<JoinHandle<()>>,
}

impl AuditWriter {
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Registers the audit metrics' descriptions (once per process is enough; repeats are harmless).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "audit_log_lines_dropped_total",
        "Audit lines dropped because the writer's queue was full (the disk stalled)"
    );
    metrics::describe_counter!(
        "audit_log_rotations_total",
        "Audit log files rotated by size"
    );
    metrics::describe_counter!(
        "audit_log_write_errors_total",
        "Failed writes, rotations or reopens of the audit log"
    );
    metrics::describe_gauge!(
        "audit_log_queue_lines",
        "Audit lines waiting for the writer"
    );
}

impl Audit {
    /// `source`'s audit log appending to `path` (created 0600, parent directories made), or none.
    pub async fn open(
        path: Option<&Path>,
        source: &'static str,
        rotation: Rotation,
    ) -> std::io::Result<(Audit, AuditWriter)> {
        let counters = Arc::new(Counters::default());
        let repeats = Arc::new(Repeats::default());
        let Some(path) = path else {
            let audit = Audit {
                tx: None,
                counters,
                source,
                repeats,
            };
            return Ok((audit, AuditWriter { task: None }));
        };
        let file = LogFile::open(path.to_owned(), rotation).await?;
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        let span = tracing::info_span!("audit_writer", path = %path.display());
        let writer = Writer {
            file,
            counters: counters.clone(),
            repeats: repeats.clone(),
            source,
        };
        let task = tokio::spawn(tracing::Instrument::instrument(writer.run(rx), span));
        let audit = Audit {
            tx: Some(tx),
            counters,
            source,
            repeats,
        };
        Ok((audit, AuditWriter { task: Some(task) }))
    }

    /// Records `event` with its fields, a timestamp and the source. Never waits: with the queue
    /// full the line is dropped and counted.
    /// `fields` is anything that serializes as a JSON object (a `json!` object, or a struct of
    /// borrowed fields on a hot path, which writes the line without building a map first).
    pub fn record(&self, event: &str, fields: impl Serialize) {
        let Some(tx) = &self.tx else { return };
        self.send(tx, event, line(self.source, event, &fields));
    }

    /// Records `event` as a refusal or a throttle: coalesced with the others of its kind, named
    /// by its fields other than `details` (which only the line written whole carries, such as a
    /// key's fingerprint). The first of a kind in [`repeats::INTERVAL`] is written whole, the
    /// rest are counted and written as one line (the naming fields, `repeated` and
    /// `within_seconds`) once the interval is over. Never waits, as [`Audit::record`].
    pub fn record_repeated(&self, event: &str, fields: Value, details: &[&str]) {
        let Some(tx) = &self.tx else { return };
        let fields = match fields {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        for (event, fields) in self.repeats.note(event, fields, details, Instant::now()) {
            self.send(tx, &event, line(self.source, &event, &fields));
        }
    }

    fn send(&self, tx: &mpsc::Sender<String>, event: &str, line: String) {
        match tx.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let before = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("audit_log_lines_dropped_total").increment(1);
                // One log line per thousand drops: the counter has the exact figure.
                if before.is_multiple_of(1000) {
                    tracing::error!(
                        event,
                        dropped = before + 1,
                        "audit queue full ({QUEUE_LINES} lines): the audit line is dropped"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The writer's figures.
    pub fn stats(&self) -> AuditStats {
        let c = &self.counters;
        let queued = self
            .tx
            .as_ref()
            .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64);
        AuditStats {
            enabled: self.tx.is_some(),
            queued,
            capacity: if self.tx.is_some() {
                QUEUE_LINES as u64
            } else {
                0
            },
            dropped: c.dropped.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            reopens: c.reopens.load(Ordering::Relaxed),
        }
    }
}

/// One audit line: the time, the event's type, the source, then the event's fields, serialized
/// in one pass. Fields that are not an object (a caller's mistake) give a line that says so in
/// `fields_error` rather than no line at all.
fn line(source: &str, event: &str, fields: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct AuditLine<'a, F> {
        timestamp: String,
        event_type: &'a str,
        source: &'a str,
        #[serde(flatten)]
        fields: &'a F,
    }
    let whole = AuditLine {
        timestamp: timestamp(),
        event_type: event,
        source,
        fields,
    };
    serde_json::to_string(&whole).unwrap_or_else(|err| {
        let said = json!({ "fields_error": err.to_string() });
        let line = AuditLine {
            timestamp: timestamp(),
            event_type: event,
            source,
            fields: &said,
        };
        serde_json::to_string(&line).unwrap_or_default()
    })
}

pub fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The open file, its size, and where its rotated copies go.
struct LogFile {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    rotation: Rotation,
}

impl LogFile {
    async fn open(path: PathBuf, rotation: Rotation) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true).append(true).mode(0o600);
        let file = options.open(&path).await?;
        let size = file.metadata().await?.len();
        Ok(LogFile {
            path,
            file,
            size,
            rotation,
        })
    }

    /// The name of the `n`th old file.
    fn backup(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Moves `<name>` to `<name>.1` (shifting the older ones, dropping the oldest) and opens a
    /// fresh `<name>`.
    async fn rotate(&mut self) -> std::io::Result<()> {
        let _ = self.file.flush().await;
        let backups = self.rotation.backups;
        if backups == 0 {
            tokio::fs::remove_file(&self.path).await?;
        } else {
            for n in (1..backups).rev() {
                match tokio::fs::rename(self.backup(n), self.backup(n + 1)).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            tokio::fs::rename(&self.path, self.backup(1)).await?;
        }
        self.reopen().await
    }

    /// Opens `<name>` again (created if logrotate moved it away).
    async fn reopen(&mut self) -> std::io::Result<()> {
        *self = LogFile::open(self.path.clone(), self.rotation).await?;
        Ok(())
    }

    /// Appends `bytes`, rotating first when they would take the file past the limit (a batch
    /// larger than the limit still goes whole into a fresh file: lines are never cut). True when
    /// it rotated.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<bool> {
        let limit = self.rotation.max_bytes;
        let rotate = limit > 0 && self.size > 0 && self.size + bytes.len() as u64 > limit;
        if rotate {
            self.rotate().await?;
            tracing::info!(path = %self.path.display(), "audit log rotated");
        }
        self.file.write_all(bytes).await?;
        self.file.flush().await?;
        self.size += bytes.len() as u64;
        Ok(rotate)
    }
}

/// The one task that writes: the queued lines, and the counts of repeated events.
struct Writer {
    file: LogFile,
    counters: Arc<Counters>,
    repeats: Arc<Repeats>,
    source: &'static str,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<String>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGHUP; the audit log is not reopened on it");
                None
            }
        };
        let mut flush = tokio::time::interval(repeats::FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => line,
                    None => break,
                },
                _ = flush.tick() => {
                    let counts = self.repeats.flush(Instant::now());
                    self.write_counts(counts).await;
                    continue;
                }
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    self.reopen().await;
                    continue;
                }
            };
            let mut batch = first;
            batch.push('\n');
            let mut lines = 1u64;
            // Batch what is already queued into one write.
            while let Ok(more) = rx.try_recv() {
                batch.push_str(&more);
                batch.push('\n');
                lines += 1;
            }
            self.write(&batch, lines).await;
            metrics::gauge!("audit_log_queue_lines")
                .set((rx.max_capacity() - rx.capacity()) as f64);
        }
        // Every handle is gone: the counts still held are written before the writer ends.
        let counts = self.repeats.flush_all();
        self.write_counts(counts).await;
    }

    async fn write_counts(&mut self, counts: Vec<Line>) {
        if counts.is_empty() {
            return;
        }
        let lines = counts.len() as u64;
        let mut batch = String::new();
        for (event, fields) in counts {
            batch.push_str(&line(self.source, &event, &fields));
            batch.push('\n');
        }
        self.write(&batch, lines).await;
    }

    async fn write(&mut self, batch: &str, lines: u64) {
        let counters = &self.counters;
        match self.file.write(batch.as_bytes()).await {
            Ok(rotated) => {
                counters.written.fetch_add(lines, Ordering::Relaxed);
                if rotated {
                    counters.rotations.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("audit_log_rotations_total").increment(1);
                }
            }
            Err(err) => {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("audit_log_write_errors_total").increment(1);
                tracing::error!(path = %self.file.path.display(), %err, "cannot write the audit log");
            }
        }
    }

    async fn reopen(&mut self) {
        match self.file.reopen().await {
            Ok(()) => {
                self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %self.file.path.display(), "SIGHUP: audit log reopened");
            }
            Err(err) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("audit_log_write_errors_total").increment(1);
                tracing::error!(path = %self.file.path.display(), %err, "SIGHUP: cannot reopen the audit log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn rotates_by_size_keeping_the_configured_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("audit.log");
        let rotation = Rotation {
            max_bytes: 400,
            backups: 2,
        };
        let (audit, writer) = Audit::open(Some(&path), "test", rotation).await.unwrap();
        for n in 0..40 {
            audit.record("event", json!({"n": n}));
            // One line per write, so each rotation point is exercised.
            while audit.stats().queued > 0 {
                tokio::task::yield_now().await;
            }
        }
        // An empty queue means the writer took the last line, not that it wrote it yet.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while audit.stats().written + audit.stats().write_errors < 40 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the writer never wrote 40 lines: {:?}", audit.stats()));
        let stats = audit.stats();
        drop(audit);
        writer.finish().await;
        assert_eq!(
            (stats.written, stats.dropped, stats.write_errors),
            (40, 0, 0)
        );
        assert!(stats.rotations >= 4, "{stats:?}");
        let backup = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        assert!(backup(1).exists() && backup(2).exists() && !backup(3).exists());
        for file in [path.clone(), backup(1), backup(2)] {
            let size = std::fs::metadata(&file).unwrap().len();
            assert!(
                size > 0 && size <= 400,
                "{} is {size} bytes",
                file.display()
            );
        }
        // The newest lines are in the live file, in order, and the backups precede them.
        let mut all = lines(&backup(2));
        all.extend(lines(&backup(1)));
        all.extend(lines(&path));
        let numbers: Vec<u64> = all.iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(numbers.last(), Some(&39));
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn no_backups_starts_afresh_and_zero_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let fresh = Rotation {
            max_bytes: 200,
            backups: 0,
        };
        let (audit, writer) = Audit::open(Some(&path), "test", fresh).await.unwrap();
        for n in 0..20 {
            audit.record("event", json!({"n": n}));
            while audit.stats().queued > 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(audit);
        writer.finish().await;
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(!PathBuf::from(format!("{}.1", path.display())).exists());

        let never = Rotation {
            max_bytes: 0,
            backups: 5,
        };
        let (audit, writer) = Audit::open(Some(&path), "test", never).await.unwrap();
        for n in 0..50 {
            audit.record("event", json!({"n": n}));
        }
        drop(audit);
        writer.finish().await;
        assert!(lines(&path).len() >= 50);
        assert!(!PathBuf::from(format!("{}.1", path.display())).exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(Some(&path), "test", Rotation::default())
            .await
            .unwrap();
        // On one thread the writer cannot run while this loop does: the queue fills.
        let extra = 25;
        for n in 0..QUEUE_LINES + extra {
            audit.record("event", json!({"n": n}));
        }
        let stats = audit.stats();
        assert_eq!(stats.queued, QUEUE_LINES as u64, "{stats:?}");
        assert_eq!(stats.dropped, extra as u64, "{stats:?}");
        drop(audit);
        writer.finish().await;
        assert_eq!(lines(&path).len(), QUEUE_LINES);
    }

    #[tokio::test]
    async fn repeated_refusals_are_one_line_and_a_count_written_by_the_time_the_writer_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(Some(&path), "test", Rotation::default())
            .await
            .unwrap();
        audit.record("session_created", json!({"session_id": "s1"}));
        for n in 0..5000 {
            let fields = json!({"client_ip": "127.0.0.1", "reason": "wrong", "key_fingerprint": format!("{n:012}")});
            audit.record_repeated("authentication", fields, &["key_fingerprint"]);
        }
        audit.record("session_created", json!({"session_id": "s2"}));
        drop(audit);
        writer.finish().await;
        let written = lines(&path);
        assert_eq!(written.len(), 4, "{written:?}");
        assert_eq!(written[0]["session_id"], "s1");
        assert_eq!(written[1]["key_fingerprint"], "000000000000");
        assert_eq!(
            written[2]["session_id"], "s2",
            "served events are never held back"
        );
        let count = &written[3];
        assert_eq!(count["event_type"], "authentication");
        assert_eq!(count["source"], "test");
        assert_eq!(count["client_ip"], "127.0.0.1");
        assert_eq!(count["reason"], "wrong");
        assert_eq!(count["repeated"], 4999);
        assert_eq!(count["within_seconds"], 60);
        assert!(count.get("key_fingerprint").is_none(), "{count}");
    }

    #[tokio::test]
    async fn no_path_records_nothing() {
        let (audit, writer) = Audit::open(None, "test", Rotation::default())
            .await
            .unwrap();
        audit.record("event", json!({}));
        assert_eq!(audit.stats(), AuditStats::default());
        writer.finish().await;
    }

    #[test]
    fn a_line_leads_with_time_type_and_source_and_says_when_its_fields_are_not_an_object() {
        #[derive(Serialize)]
        struct Served<'a> {
            request_id: &'a str,
            client_ip: std::net::IpAddr,
            session_id: Option<&'a str>,
        }
        let served = Served {
            request_id: "r1",
            client_ip: [127, 0, 0, 1].into(),
            session_id: None,
        };
        let written = line("gateway", "model_request", &served);
        assert!(
            written.starts_with(r#"{"timestamp":""#),
            "the time leads: {written}"
        );
        let parsed: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(parsed["event_type"], "model_request");
        assert_eq!(parsed["source"], "gateway");
        assert_eq!(parsed["client_ip"], "127.0.0.1");
        assert_eq!(parsed["session_id"], Value::Null);
        let odd: Value = serde_json::from_str(&line("gateway", "event", &json!([1, 2]))).unwrap();
        assert_eq!(odd["event_type"], "event");
        assert!(
            odd["fields_error"].as_str().unwrap().contains("map"),
            "{odd}"
        );
    }
}
