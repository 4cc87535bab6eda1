//! `mcp-bridge --stdio`: MCP over stdin/stdout for clients that launch their servers, relayed to
//! the running mcp-bridge's `/mcp`, so that every client shares the one queue. Each JSON-RPC
//! message is one POST in the session `initialize` opened (ended with a DELETE when stdin closes);
//! `notifications/cancelled` is passed on, and the cancelled call's POST is dropped.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{ACCEPT, CONTENT_TYPE};
use provider_shared::config::{LogLevel, Secret};
use serde_json::{json, Value};
use sse_stream::SseStream;
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
        let mut events = std::pin::pin!(sse_data(response.bytes_stream()));
        while let Some(data) = events.next().await {
            match data {
                Ok(data) => emit(&relay, &data, initialize),
                Err(why) => return reply(&why),
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

/// The most bytes of an answer's SSE stream the relay holds without a whole event coming out
/// of them (one JSON-RPC message: an answer the agent reads); past it the call fails with a clear
/// error instead of the buffer growing without end. Twice the default WebSocket frame: a request
/// handed out whole is its `model_invoke` payload written once more as JSON text inside the tool
/// result, and escaping can double text full of quotes and line breaks.
const MAX_EVENT_BYTES: usize = 2 * provider_shared::bridge::DEFAULT_MAX_FRAME_BYTES as usize;

/// The `data` of each server-sent event of `body` (parsed by `sse-stream`, as rmcp's own client
/// does), skipping events without any. The stream's first `Err` is the error to answer the call
/// with, and the stream ends there for the caller: the body broke, it was not SSE, or more than
/// [`MAX_EVENT_BYTES`] came without completing an event.
fn sse_data<S, E>(body: S) -> impl Stream<Item = Result<String, String>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    // Bytes received since the last event: what the parser can be holding.
    let held = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&held);
    // The parser gives up on a whole piece at its first bad line, dropping the events that piece
    // finished before it: handed one line at a time, it reads the same events whatever pieces
    // the body came in.
    let body = body
        .flat_map(|chunk| {
            futures_util::stream::iter(match chunk {
                Ok(chunk) => lines(chunk).into_iter().map(Ok).collect(),
                Err(err) => vec![Err(std::io::Error::other(err))],
            })
        })
        .map(move |piece| {
            let piece = piece?;
            if counted.fetch_add(piece.len(), Ordering::Relaxed) + piece.len() > MAX_EVENT_BYTES {
                return Err(std::io::Error::other("an event past the relay's bound"));
            }
            Ok(piece)
        });
    SseStream::from_bytes_stream(body).filter_map(move |event| {
        let data = match event {
            Ok(event) => {
                held.store(0, Ordering::Relaxed);
                event.data.filter(|data| !data.is_empty()).map(Ok)
            }
            Err(_) if held.load(Ordering::Relaxed) > MAX_EVENT_BYTES => Some(Err(format!(
                "an answer from mcp-bridge is larger than {} MiB; it was not relayed",
                MAX_EVENT_BYTES / (1024 * 1024)
            ))),
            Err(sse_stream::Error::Body(_)) => {
                Some(Err("the connection to mcp-bridge broke mid-answer".to_owned()))
            }
            Err(err) => Some(Err(format!(
                "mcp-bridge answered with a stream that is not valid SSE ({err}); it was not relayed"
            ))),
        };
        std::future::ready(data)
    })
}

/// `chunk` cut after each line end (`\n` or `\r`), without copying.
fn lines(mut chunk: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(end) = chunk.iter().position(|b| matches!(b, b'\n' | b'\r')) {
        out.push(chunk.split_to(end + 1));
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// The data [`sse_data`] gives for an answer's body arriving in `pieces`, up to and including its
/// first error: the relay's SSE reading without a connection (the fuzz targets in `fuzz/` and the
/// tests below use it).
pub fn sse_data_of(pieces: Vec<Bytes>) -> Vec<Result<String, String>> {
    use futures_util::FutureExt;
    let body = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
    let mut events = std::pin::pin!(sse_data(body));
    let mut out = Vec::new();
    // Every piece is there already, so the stream never has to wait.
    while let Some(Some(data)) = events.next().now_or_never() {
        let failed = data.is_err();
        out.push(data);
        if failed {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use provider_shared::property::check;

    /// The data `sse_data` gives for `bytes` cut into pieces at `cuts` (positions modulo the
    /// length), up to and including its first error.
    fn events_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Result<String, String>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        at.dedup();
        let pieces = at
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
            .collect();
        sse_data_of(pieces)
    }

    fn collect(
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send,
    ) -> Vec<Result<String, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut out = Vec::new();
            let mut events = std::pin::pin!(sse_data(body));
            while let Some(data) = events.next().await {
                let failed = data.is_err();
                out.push(data);
                if failed {
                    break;
                }
            }
            out
        })
    }

    #[test]
    fn sse_events_across_pieces() {
        let wire =
            b": keep-alive\n\nid: 1\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\nid: 2\ndata:\n\n";
        for cut in 0..wire.len() {
            assert_eq!(
                events_in_pieces(wire, &[cut]),
                vec![Ok(r#"{"a":1}"#.to_owned()), Ok("x\ny".to_owned())],
                "cut at {cut}"
            );
        }
    }

    /// Found by fuzzing (`fuzz/corpus/relay_sse/`): an event and a bad line after it in one
    /// piece came out as the error alone, in pieces as the event and then the error.
    #[test]
    fn an_event_before_a_bad_line_is_relayed_however_the_body_is_cut() {
        let wire = b"event: message\ndata: {\"id\":1}\n\n\xa3ata: x\n\n";
        let whole = events_in_pieces(wire, &[]);
        assert_eq!(whole[0], Ok(r#"{"id":1}"#.to_owned()), "{whole:?}");
        assert!(
            whole[1].as_ref().unwrap_err().contains("not valid SSE"),
            "{whole:?}"
        );
        assert_eq!(whole.len(), 2);
        for cut in 0..wire.len() {
            assert_eq!(events_in_pieces(wire, &[cut]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_broken_body_or_not_sse_is_a_clear_error() {
        let broken = vec![
            Ok(Bytes::from_static(b"data: 1\n\n")),
            Err(std::io::Error::other("reset")),
        ];
        let out = collect(futures_util::stream::iter(broken));
        assert_eq!(out[0], Ok("1".to_owned()));
        assert!(
            out[1].as_ref().unwrap_err().contains("broke mid-answer"),
            "{out:?}"
        );
        let out = events_in_pieces(b"no colon here\n\n", &[]);
        assert!(
            out[0].as_ref().unwrap_err().contains("not valid SSE"),
            "{out:?}"
        );
    }

    #[test]
    fn an_event_past_the_bound_is_refused_not_buffered() {
        let line = vec![b'x'; 1024 * 1024];
        // One data line that never ends: refused once past 96 MiB, having held no more.
        let endless = std::iter::once(Bytes::from_static(b"data: "))
            .chain(std::iter::repeat_with(|| Bytes::from(line.clone())))
            .take(120)
            .map(Ok);
        let out = collect(futures_util::stream::iter(endless));
        assert_eq!(out.len(), 1);
        assert!(
            out[0].as_ref().unwrap_err().contains("larger than 96 MiB"),
            "{out:?}"
        );
        // Events that end in time are never refused, however many.
        let event = [b"data: ".as_slice(), &line, b"\n\n"].concat();
        let many = std::iter::repeat_with(|| Ok(Bytes::from(event.clone()))).take(40);
        let out = collect(futures_util::stream::iter(many));
        assert_eq!(out.len(), 40);
        assert!(out
            .iter()
            .all(|e| e.as_ref().is_ok_and(|d| d.len() == line.len())));
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
            prop_assert_eq!(
                events_in_pieces(&bytes, &[]),
                events_in_pieces(&bytes, &cuts)
            );
            Ok(())
        });
    }

    #[test]
    fn sse_events_come_back_as_sent_however_cut() {
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
                let data = data.join("\n");
                if !data.is_empty() {
                    expected.push(Ok(data));
                }
            }
            prop_assert_eq!(events_in_pieces(wire.as_bytes(), &cuts), expected);
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
