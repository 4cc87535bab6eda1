//! The security audit log of the gateway and mcp-bridge: JSON lines (`timestamp`, `event_type`,
//! `source`, then the event's fields), appended by one writer task so requests never wait on disk.
//! It records who and what, never a key, a token or a prompt (only their digests).
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Clone)]
pub struct Audit {
    tx: Option<mpsc::UnboundedSender<String>>,
    /// The service writing, as `source` in every line.
    source: &'static str,
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

impl Audit {
    /// `source`'s audit log appending to `path` (created 0600, parent directories made), or none.
    pub async fn open(
        path: Option<&Path>,
        source: &'static str,
    ) -> std::io::Result<(Audit, AuditWriter)> {
        let Some(path) = path else {
            return Ok((Audit { tx: None, source }, AuditWriter { task: None }));
        };
        let file = open_append(path).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!("audit_writer", path = %path.display());
        let task = tokio::spawn(tracing::Instrument::instrument(
            write_lines(file, rx, path.to_owned()),
            span,
        ));
        Ok((
            Audit {
                tx: Some(tx),
                source,
            },
            AuditWriter { task: Some(task) },
        ))
    }

    /// Records `event` with its fields, a timestamp and the source.
    pub fn record(&self, event: &str, fields: Value) {
        let Some(tx) = &self.tx else { return };
        let mut line = Map::new();
        line.insert("timestamp".into(), json!(timestamp()));
        line.insert("event_type".into(), json!(event));
        line.insert("source".into(), json!(self.source));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let _ = tx.send(Value::Object(line).to_string());
    }
}

pub fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true).append(true).mode(0o600);
    options.open(path).await
}

async fn write_lines(
    mut file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<String>,
    path: PathBuf,
) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        // Batch what is already queued into one write.
        while let Ok(more) = rx.try_recv() {
            line.push_str(&more);
            line.push('\n');
        }
        if let Err(err) = file.write_all(line.as_bytes()).await {
            tracing::error!(path = %path.display(), %err, "cannot write the audit log");
        }
        let _ = file.flush().await;
    }
}
