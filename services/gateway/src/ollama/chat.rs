//! `POST /api/chat`: Ollama's chat, NDJSON when streamed (the default), one object otherwise.
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use provider_shared::answer::AnswerAccumulator;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::convert;
use super::{
    counters, created_at, done_reason, ndjson, ndjson_line, object, parameters, requested_model,
    wants_stream, OllamaError,
};
use crate::error::Error;
use crate::generate::{self, Ask, Job, Piece};
use crate::openai::Headers;
use crate::state::Shared;
use crate::validate::{self, Limits};

pub async fn chat(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OllamaError> {
    let (caller, body) = generate::arrive(&state, &headers, peer, body).await?;
    let started = caller.started;
    let limits = Limits::of(&state.settings);
    let (model, job) = generate::off_thread_if_large(body.len(), move || {
        let mut request = object(&body)?;
        let model = requested_model(&request)?;
        let job = job(&model, &mut request, &limits)?;
        Ok::<_, OllamaError>((model, job))
    })
    .await?;
    let Some(job) = job else {
        // Ollama answers an empty chat by loading the model: nothing to ask the agent.
        state.models.resolve(&model)?;
        return Ok(Json(json!({"model": model, "created_at": created_at(),
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "load"}))
        .into_response());
    };
    let stream = job.ask.stream;
    let running = caller.start(&state, job).await?;
    let headers = Headers::of(&state, &running);
    let mut pieces = running.pieces;
    if !stream {
        let (answer, finish_reason, usage, overhead) = generate::drive::finish(pieces).await?;
        let headers = headers.with_overhead(overhead);
        let mut line = line(&model, message(&answer, &answer.content, true));
        line.insert("done".into(), json!(true));
        line.insert("done_reason".into(), json!(done_reason(&finish_reason)));
        line.extend(counters(started, None, &usage));
        let mut response = Json(Value::Object(line)).into_response();
        headers.apply(response.headers_mut());
        return Ok(response);
    }
    let lines = async_stream::stream! {
        let mut first = None;
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Delta(delta) => {
                    first.get_or_insert_with(Instant::now);
                    let thinking = delta.reasoning_content.as_deref();
                    // Ollama clients take tool calls whole: they go out with the last message.
                    if delta.content.is_none() && thinking.is_none() {
                        continue;
                    }
                    yield ndjson_line(&DeltaLine {
                        model: &model,
                        created_at: created_at(),
                        message: DeltaMessage {
                            role: "assistant",
                            content: delta.content.as_deref().unwrap_or_default(),
                            thinking,
                        },
                        done: false,
                    });
                }
                Piece::Done { answer, finish_reason, usage, .. } => {
                    if !answer.tool_calls.is_empty() {
                        let mut l = line(&model, message(&answer, "", false));
                        l.insert("done".into(), json!(false));
                        yield ndjson_line(&l);
                    }
                    let mut l = line(&model, json!({"role": "assistant", "content": ""}));
                    l.insert("done".into(), json!(true));
                    l.insert("done_reason".into(), json!(done_reason(&finish_reason)));
                    l.extend(counters(started, first, &usage));
                    yield ndjson_line(&l);
                }
                Piece::Failed(err) => yield ndjson_line(&json!({"error": err.to_string()})),
            }
        }
    };
    Ok(ndjson(lines, &headers))
}

/// The agent's job for a `/api/chat` body naming `model`, by the rules every chat API shares
/// (`validate.rs`); `None` for a chat without messages.
pub fn job(
    model: &str,
    request: &mut Map<String, Value>,
    limits: &Limits,
) -> Result<Option<Job>, Error> {
    let stream = wants_stream(request)?;
    let given = match request.get("messages") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(m)) if m.is_empty() => return Ok(None),
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(validate::invalid(
                "messages",
                format!("expected an array, got {}", validate::kind_of(other)),
            ))
        }
    };
    validate::messages(&validate::OLLAMA, given)?;
    let messages = convert::messages(given);
    let (mut params, max_tokens) = parameters(limits, request, stream)?;
    if validate::tools(request)? {
        // Moved, not copied: the request is done with once its job is built.
        if let Some(tools) = request.remove("tools") {
            params.insert("tools".into(), tools);
        }
    }
    let ask = Ask {
        model: model.to_owned(),
        max_tokens,
        stream,
    };
    Ok(Some(Job::chat(ask, messages, params, "chatcmpl-")))
}

/// A streamed line of the answer, borrowing its text.
#[derive(Serialize)]
struct DeltaLine<'a> {
    model: &'a str,
    created_at: String,
    message: DeltaMessage<'a>,
    done: bool,
}

#[derive(Serialize)]
struct DeltaMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
}

fn line(model: &str, message: Value) -> Map<String, Value> {
    let mut l = Map::new();
    l.insert("model".into(), json!(model));
    l.insert("created_at".into(), json!(created_at()));
    l.insert("message".into(), message);
    l
}

/// The assistant message with `content`, its tool calls, and its thinking when `whole`.
fn message(answer: &AnswerAccumulator, content: &str, whole: bool) -> Value {
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert("content".into(), json!(content));
    if whole && !answer.reasoning.is_empty() {
        msg.insert("thinking".into(), json!(answer.reasoning));
    }
    if !answer.tool_calls.is_empty() {
        let calls: Vec<Value> = answer
            .tool_calls
            .values()
            .map(|c| convert::tool_call_out(&c.name, &c.arguments))
            .collect();
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(msg)
}
