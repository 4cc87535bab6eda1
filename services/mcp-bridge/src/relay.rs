//! `mcp-bridge --stdio`: MCP over stdin/stdout for clients that launch their servers, relayed to
//! the running mcp-bridge's `/mcp`, so that every client shares the one queue. Each JSON-RPC
//! message is one POST in the session `initialize` opened (ended with a DELETE when stdin closes);
//! `notifications/cancelled` is passed on, and the cancelled call's POST is dropped.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use provider_shared::config::{LogLevel, Secret};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::{Config, Error};

/// The per-request protocol version of MCP 2026-07-28 requests.
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const SESSION_HEADER: &str = "mcp-session-id";

/// Logs to stderr: stdout belongs to the protocol.
pub fn init_stderr_tracing(level: LogLevel) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(level.0.as_str().to_ascii_lowercase())
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

struct Relay {
    client: reqwest::Client,
    url: String,
    token: Option<Secret>,
    /// Negotiated by `initialize`; sent as `MCP-Protocol-Version` afterwards.
    protocol: Mutex<Option<String>>,
    /// The `Mcp-Session-Id` the bridge gave at `initialize`.
    session: Mutex<Option<String>>,
    out: mpsc::UnboundedSender<String>,
}

/// The address a client on this machine uses for the configured listener.
fn bridge_url(config: &Config) -> String {
    let host = match config.host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_owned(),
    };
    format!("http://{host}:{}/mcp", config.port)
}

/// Relays until stdin ends.
pub async fn run(config: &Config) -> Result<(), Error> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Relay(e.to_string()))?;
    let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = out_rx.recv().await {
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let relay = Arc::new(Relay {
        client,
        url: bridge_url(config),
        token: config.http_token.clone(),
        protocol: Mutex::new(None),
        session: Mutex::new(None),
        out,
    });
    tracing::info!(url = %relay.url, "relaying MCP between stdio and mcp-bridge");
    let mut tasks = JoinSet::new();
    let mut in_flight: HashMap<String, AbortHandle> = HashMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(err) => return Err(Error::Relay(format!("reading stdin: {err}"))),
        };
        // Reap finished calls so the map holds only live ones.
        while tasks.try_join_next().is_some() {}
        in_flight.retain(|_, handle| !handle.is_finished());
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(err) => {
                let _ = relay.out.send(error_reply(
                    &Value::Null,
                    -32700,
                    &format!("parse error: {err}"),
                ));
                continue;
            }
        };
        let method = message["method"].as_str().map(str::to_owned);
        let id = message.get("id").cloned();
        let mut message = message;
        if method.as_deref() == Some("initialize") {
            // The relay passes no server requests back to the client, so sampling
            // (`MCP_SAMPLING`) must not pick this client: it serves through the tools only.
            if let Some(caps) = message["params"]["capabilities"].as_object_mut() {
                caps.remove("sampling");
            }
        }
        match (method.as_deref(), id) {
            (Some("notifications/cancelled"), None) => {
                let key = message["params"]["requestId"].to_string();
                if let Some(handle) = in_flight.remove(&key) {
                    tracing::debug!(request = %key, "cancelled by the client; dropping its call");
                    handle.abort();
                }
                tasks.spawn(forward(relay.clone(), message, None));
            }
            (Some(_), Some(id)) => {
                let handle = tasks.spawn(forward(relay.clone(), message, Some(id.clone())));
                in_flight.insert(id.to_string(), handle);
            }
            (Some(_), None) => {
                tasks.spawn(forward(relay.clone(), message, None));
            }
            (None, _) => {
                tracing::debug!("a response from the client ignored: the bridge sends no requests")
            }
        }
    }
    tracing::info!("stdin closed; ending the relay");
    tasks.shutdown().await;
    end_session(&relay).await;
    drop(relay);
    let _ = writer.await;
    Ok(())
}

/// POSTs one message and writes every JSON-RPC message of the answer to stdout.
async fn forward(relay: Arc<Relay>, message: Value, id: Option<Value>) {
    let initialize = message["method"] == "initialize";
    let version = message["params"]["_meta"][META_VERSION]
        .as_str()
        .map(str::to_owned)
        .or_else(|| relay.protocol.lock().ok().and_then(|p| p.clone()));
    let mut request = relay
        .client
        .post(&relay.url)
        .header(ACCEPT, "application/json, text/event-stream")
        .header(CONTENT_TYPE, "application/json")
        .body(message.to_string());
    if let (Some(v), false) = (&version, initialize) {
        request = request.header("MCP-Protocol-Version", v.as_str());
    }
    let session = relay.session.lock().ok().and_then(|s| s.clone());
    if let Some(session) = &session {
        request = request.header(SESSION_HEADER, session.as_str());
    }
    if let Some(token) = &relay.token {
        request = request.bearer_auth(&token.0);
    }
    let reply = |text: &str| {
        if let Some(id) = &id {
            let _ = relay.out.send(error_reply(id, -32000, text));
        }
    };
    let response = match request.send().await {
        Ok(r) => r,
        Err(err) => {
            return reply(&format!(
            "mcp-bridge is not reachable at {}: {err} (is it running? scripts/start.sh starts it)",
            relay.url
        ))
        }
    };
    let status = response.status();
    if initialize {
        let given = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        if let (Some(id), Ok(mut session)) = (given, relay.session.lock()) {
            *session = Some(id.to_owned());
        }
    }
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        let mut events = SseLines::default();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return reply("the connection to mcp-bridge broke mid-answer");
            };
            let Ok(data) = events.feed(&chunk) else {
                return reply(&format!(
                    "an answer from mcp-bridge is larger than {} MiB; it was not relayed",
                    MAX_EVENT_BYTES / (1024 * 1024)
                ));
            };
            for data in data {
                emit(&relay, &data, initialize);
            }
        }
        return;
    }
    let text = response.text().await.unwrap_or_default();
    if text.trim().is_empty() {
        if !status.is_success() {
            reply(&format!("mcp-bridge answered HTTP {status}"));
        }
        return;
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("jsonrpc").is_some() => emit(&relay, &text, initialize),
        _ => reply(&format!(
            "mcp-bridge answered HTTP {status}: {}",
            text.trim()
        )),
    }
}

/// Ends the bridge-side session, so its calls stop at once rather than at the idle timeout.
async fn end_session(relay: &Relay) {
    let Some(session) = relay.session.lock().ok().and_then(|s| s.clone()) else {
        return;
    };
    let mut request = relay
        .client
        .delete(&relay.url)
        .header(SESSION_HEADER, session)
        .timeout(Duration::from_secs(2));
    if let Some(token) = &relay.token {
        request = request.bearer_auth(&token.0);
    }
    if let Some(version) = relay.protocol.lock().ok().and_then(|p| p.clone()) {
        request = request.header("MCP-Protocol-Version", version);
    }
    if let Err(err) = request.send().await {
        tracing::debug!(%err, "could not end the session");
    }
}

fn emit(relay: &Relay, data: &str, initialize: bool) {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        tracing::debug!(%data, "non-JSON event skipped");
        return;
    };
    if initialize {
        if let (Some(version), Ok(mut p)) = (
            v["result"]["protocolVersion"].as_str(),
            relay.protocol.lock(),
        ) {
            *p = Some(version.to_owned());
        }
    }
    let _ = relay.out.send(v.to_string());
}

fn error_reply(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// The largest event the relay holds (one JSON-RPC message: an answer the agent reads); past it
/// the call fails with a clear error instead of the buffer growing without end.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The `data` of server-sent events, fed in arbitrary pieces.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
    data: Vec<String>,
    /// Bytes of `data` so far.
    held: usize,
}

/// An event past [`MAX_EVENT_BYTES`].
#[derive(Debug, PartialEq)]
struct EventTooLarge;

impl SseLines {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, EventTooLarge> {
        self.pending.extend_from_slice(bytes);
        let events = self.take_events();
        if self.pending.len() + self.held > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    fn take_events(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=at).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                    self.held = 0;
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                self.held += value.len() + 1;
                self.data.push(value.to_owned());
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_across_pieces() {
        let mut s = SseLines::default();
        assert!(s
            .feed(b": keep-alive\n\nid: 1\ndata: {\"a\"")
            .unwrap()
            .is_empty());
        assert_eq!(
            s.feed(b":1}\r\n\r\ndata: x\ndata: y\n\n").unwrap(),
            vec![r#"{"a":1}"#, "x\ny"]
        );
    }

    use provider_shared::property::check;

    /// `bytes` fed in pieces cut at `cuts` (positions modulo the length).
    fn feed_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        at.dedup();
        let mut sse = SseLines::default();
        at.windows(2)
            .flat_map(|w| sse.feed(&bytes[w[0]..w[1]]).unwrap())
            .collect()
    }

    #[test]
    fn an_event_past_the_bound_is_refused_not_buffered() {
        let mut s = SseLines::default();
        let line = vec![b'x'; 1024 * 1024];
        assert_eq!(s.feed(b"data: ").unwrap(), Vec::<String>::new());
        let mut refused = None;
        for i in 0..20 {
            if s.feed(&line).is_err() {
                refused = Some(i);
                break;
            }
        }
        // The 16th MiB, with the field name before it, takes it past the bound.
        assert_eq!(refused, Some(15), "refused once past 16 MiB");
        // Many data lines of one event count together.
        let mut s = SseLines::default();
        let data_line = [b"data: ".as_slice(), &line, b"\n"].concat();
        let fed: Vec<bool> = (0..17).map(|_| s.feed(&data_line).is_ok()).collect();
        assert_eq!(fed.iter().filter(|ok| **ok).count(), 15, "{fed:?}");
        // Events that end in time are never refused, however many.
        let mut s = SseLines::default();
        let event = [b"data: ".as_slice(), &line, b"\n\n"].concat();
        for _ in 0..40 {
            assert_eq!(s.feed(&event).unwrap().len(), 1);
        }
    }

    #[test]
    fn sse_parsing_of_any_bytes_does_not_depend_on_the_pieces() {
        use proptest::prelude::*;
        let input = (
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'\n'),
                    Just(b'\r'),
                    Just(b':'),
                    Just(b'd')
                ],
                0..512,
            ),
            prop::collection::vec(any::<usize>(), 0..10),
        );
        check("sse_any_bytes", input, |(bytes, cuts)| {
            prop_assert_eq!(feed_in_pieces(&bytes, &[]), feed_in_pieces(&bytes, &cuts));
            Ok(())
        });
    }

    #[test]
    fn sse_events_come_back_as_sent() {
        use proptest::prelude::*;
        // Each event: data lines (no line breaks inside), maybe comments, `id:` and `event:`
        // fields, CRLF or LF line ends.
        let event = (
            prop::collection::vec("[^\r\n]{0,40}", 1..4),
            any::<bool>(),
            any::<bool>(),
        );
        let input = (
            prop::collection::vec(event, 0..6),
            prop::collection::vec(any::<usize>(), 0..10),
        );
        check("sse_events_round_trip", input, |(events, cuts)| {
            let mut wire = String::new();
            let mut expected = Vec::new();
            for (data, crlf, extras) in &events {
                let end = if *crlf { "\r\n" } else { "\n" };
                if *extras {
                    wire.push_str(&format!(
                        ": keep-alive{end}{end}id: 7{end}event: message{end}"
                    ));
                }
                for line in data {
                    wire.push_str(&format!("data: {line}{end}"));
                }
                wire.push_str(end);
                expected.push(data.join("\n"));
            }
            prop_assert_eq!(feed_in_pieces(wire.as_bytes(), &cuts), expected);
            Ok(())
        });
    }

    #[test]
    fn url_for_any_bind_address() {
        let mut c = Config::from_vars(vec![]).unwrap();
        assert_eq!(bridge_url(&c), "http://127.0.0.1:8787/mcp");
        c.host = "0.0.0.0".into();
        assert_eq!(bridge_url(&c), "http://127.0.0.1:8787/mcp");
        c.host = "::1".into();
        assert_eq!(bridge_url(&c), "http://[::1]:8787/mcp");
    }
}
