//! A zero-delay MCP bridge for benchmarks: answers every `model_invoke` at once (docs/PROTOCOL.md §1).
//! Streamed requests get `BENCH_CHUNKS` content chunks, `BENCH_CHUNK_DELAY_MS` apart, after
//! `BENCH_DELAY_MS`; a request's own `x_bench_chunks` / `x_bench_delay_ms` parameters (unknown
//! fields reach the agent unchanged) override those. A `model_cancel` ends a delayed answer.
//! Listens on `BENCH_PEER_ADDR` (default 127.0.0.1:8787).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bench::env_num;
use futures_util::{SinkExt, StreamExt};
use provider_shared::bridge::{
    BridgeFrame, Delta, ModelInvoke, ModelResult, Outcome, ResultBody, ResultChoice, StreamChunk,
    Usage,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy)]
struct Script {
    chunks: u64,
    delay: Duration,
    chunk_delay: Duration,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("BENCH_PEER_ADDR").unwrap_or_else(|_| "127.0.0.1:8787".into());
    let script = Script {
        chunks: env_num("BENCH_CHUNKS", 1).max(1),
        delay: Duration::from_millis(env_num("BENCH_DELAY_MS", 0)),
        chunk_delay: Duration::from_millis(env_num("BENCH_CHUNK_DELAY_MS", 0)),
    };
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("zero-peer listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, script));
    }
}

async fn serve(stream: TcpStream, script: Script) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::text(first)).await.is_err() {
                return;
            }
            // Batch whatever else is ready into one flush.
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let held: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        match BridgeFrame::parse(text.as_str()) {
            Ok(BridgeFrame::Hello { .. }) => {
                let _ = tx.send(
                    BridgeFrame::Welcome {
                        protocol: 1,
                        bridge_id: Some("zero-peer".into()),
                        max_frame_bytes: None,
                    }
                    .to_text(),
                );
            }
            Ok(BridgeFrame::Ping { ts }) => {
                let _ = tx.send(BridgeFrame::Pong { ts }.to_text());
            }
            Ok(BridgeFrame::ModelInvoke(invoke)) => answer(invoke, script, &tx, &held),
            Ok(BridgeFrame::ModelCancel { id }) => {
                if let Some(token) = held.lock().ok().and_then(|mut h| h.remove(&id)) {
                    token.cancel();
                }
            }
            _ => {}
        }
    }
    writer.abort();
}

/// Whether the request streams, and its script with the request's own overrides.
fn plan(invoke: &ModelInvoke, default: Script) -> (bool, Script) {
    // A peer that answers at once reads only the few parameters it needs.
    let parameters: serde_json::Map<String, Value> =
        invoke.payload.parameters().parse().unwrap_or_default();
    let number = |key: &str| parameters.get(key).and_then(Value::as_u64);
    let script = Script {
        chunks: number("x_bench_chunks").unwrap_or(default.chunks).max(1),
        delay: number("x_bench_delay_ms").map_or(default.delay, Duration::from_millis),
        chunk_delay: default.chunk_delay,
    };
    (
        parameters.get("stream").and_then(Value::as_bool) == Some(true),
        script,
    )
}

fn result(id: String, text: String) -> String {
    BridgeFrame::ModelResult(ModelResult {
        id,
        outcome: Outcome::Ok {
            result: ResultBody {
                choices: vec![ResultChoice {
                    index: 0,
                    message: json!({"role": "assistant", "content": text}),
                    finish_reason: Some("stop".into()),
                }],
                usage: Some(Usage {
                    prompt_tokens: 10,
                    completion_tokens: 2,
                    total_tokens: 12,
                }),
                model: None,
                created: None,
            },
        },
    })
    .to_text()
}

fn chunk(id: &str, index: u64) -> String {
    BridgeFrame::ModelStreamChunk(StreamChunk {
        id: id.to_owned(),
        chunk_index: index,
        delta: Delta {
            content: Some("x".into()),
            ..Delta::default()
        },
        finish_reason: None,
    })
    .to_text()
}

fn answer(
    invoke: ModelInvoke,
    script: Script,
    tx: &mpsc::UnboundedSender<String>,
    held: &Arc<Mutex<HashMap<String, CancellationToken>>>,
) {
    let (stream, script) = plan(&invoke, script);
    let id = invoke.id;
    let instant = script.delay.is_zero() && script.chunk_delay.is_zero();
    if instant {
        if stream {
            for i in 0..script.chunks {
                let _ = tx.send(chunk(&id, i));
            }
            let _ = tx.send(result(id, "x".repeat(script.chunks as usize)));
        } else {
            let _ = tx.send(result(id, "ok".into()));
        }
        return;
    }
    let token = CancellationToken::new();
    if let Ok(mut h) = held.lock() {
        h.insert(id.clone(), token.clone());
    }
    let (tx, held) = (tx.clone(), held.clone());
    tokio::spawn(async move {
        let play = async {
            tokio::time::sleep(script.delay).await;
            if stream {
                for i in 0..script.chunks {
                    let _ = tx.send(chunk(&id, i));
                    tokio::time::sleep(script.chunk_delay).await;
                }
            }
            let _ = tx.send(result(id.clone(), "x".repeat(script.chunks as usize)));
        };
        tokio::select! {
            _ = token.cancelled() => {}
            _ = play => {}
        }
        if let Ok(mut h) = held.lock() {
            h.remove(&id);
        }
    });
}
