//! The security audit log: JSON lines (`timestamp`, `event_type`, `source: "mcp-bridge"`, …),
//! appended by one writer task so nothing waits on disk. Never a token or a prompt, only digests.
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Clone)]
pub struct Audit {
    tx: Option<mpsc::UnboundedSender<String>>,
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
    /// An audit log appending to `path` (created 0600, parent directories made), or none.
    pub async fn open(path: Option<&Path>) -> std::io::Result<(Audit, AuditWriter)> {
        let Some(path) = path else {
            return Ok((Audit { tx: None }, AuditWriter { task: None }));
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_lines(file, rx, path.to_owned()));
        Ok((Audit { tx: Some(tx) }, AuditWriter { task: Some(task) }))
    }

    /// Records `event` with its fields.
    pub fn record(&self, event: &str, fields: Value) {
        let Some(tx) = &self.tx else { return };
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), json!(now));
        line.insert("event_type".into(), json!(event));
        line.insert("source".into(), json!("mcp-bridge"));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let _ = tx.send(Value::Object(line).to_string());
    }
}

async fn write_lines(
    mut file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<String>,
    path: PathBuf,
) {
    while let Some(mut lines) = rx.recv().await {
        lines.push('\n');
        while let Ok(more) = rx.try_recv() {
            lines.push_str(&more);
            lines.push('\n');
        }
        if let Err(err) = file.write_all(lines.as_bytes()).await {
            tracing::error!(path = %path.display(), %err, "cannot write the audit log");
        }
        let _ = file.flush().await;
    }
}
