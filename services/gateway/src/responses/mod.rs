//! `POST /v1/responses`: OpenAI's Responses API on the shared generation path (auth, limits,
//! sessions, audit, cancellation). The request reaches the agent as a `chat` payload
//! ([`convert`]); the answer comes back as a `response` object whose `output` holds `reasoning`,
//! `message` and `function_call` items, whole or as the typed SSE events ([`events`]).
//! Stateless: nothing is stored, so `previous_response_id` is refused and `store` is reported
//! as `false`.
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use provider_shared::bridge::Usage;
use serde_json::{json, Value};

use crate::error::Error;
use crate::generate::{self, drive, Ask, Job, Piece, Running};
use crate::openai::{sse_response, Headers};
use crate::parts::Parts;
use crate::state::Shared;
use crate::validate;

pub mod convert;
mod events;
pub mod tools;

use events::Render;

pub async fn create(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let (caller, body) = generate::arrive(&state, &headers, peer, body).await?;
    let limits = validate::Limits::of(&state.settings);
    let request =
        generate::off_thread_if_large(body.len(), move || convert::request(&body, &limits)).await?;
    let ask = Ask {
        model: request.model,
        max_tokens: request.max_output_tokens,
        stream: request.stream,
    };
    let job = Job::chat(ask.clone(), request.messages, request.parameters, "resp_");
    let running = caller.start(&state, job).await?;
    let shell = Shell {
        id: running.id.clone(),
        created_at: running.created,
        model: ask.model,
        max_output_tokens: request.max_output_tokens,
        echo: request.echo,
        tool_names: request.tool_names,
    };
    if request.stream {
        Ok(stream(&state, running, shell))
    } else {
        whole(&state, running, shell).await
    }
}

/// `GET` / `DELETE /v1/responses/{id}`: nothing is stored, so there is nothing to find.
pub async fn not_stored() -> Error {
    Error::NotFound {
        message: "responses are not stored here (store is always false): keep the response you were given, and send the whole conversation in `input`".into(),
        code: "response_not_found",
    }
}

/// The fields of the `response` object that do not depend on the answer.
pub struct Shell {
    id: String,
    created_at: u64,
    model: String,
    max_output_tokens: Option<u64>,
    echo: convert::Echo,
    /// Namespaced tools, to name the agent's calls of them back as the client knows them.
    tool_names: tools::ToolNames,
}

impl Shell {
    fn object(&self, status: &str, output: Vec<Value>, ending: Ending<'_>) -> Value {
        let (usage, error, incomplete) = match ending {
            Ending::Running => (Value::Null, Value::Null, Value::Null),
            Ending::Finished { usage, incomplete } => (
                usage_of(usage),
                Value::Null,
                incomplete.map_or(Value::Null, |reason| json!({"reason": reason})),
            ),
            Ending::Failed(err) => (
                Value::Null,
                json!({"code": err.code(), "message": err.to_string()}),
                Value::Null,
            ),
        };
        let e = &self.echo;
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": e.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": e.reasoning,
            "store": false,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": usage,
            "metadata": e.metadata,
        })
    }
}

enum Ending<'a> {
    Running,
    Finished {
        usage: &'a Usage,
        incomplete: Option<&'static str>,
    },
    Failed(&'a Error),
}

/// The response `status` and `incomplete_details.reason` for a chat `finish_reason`.
fn status_of(finish_reason: &str) -> (&'static str, Option<&'static str>) {
    match finish_reason {
        "length" => ("incomplete", Some("max_output_tokens")),
        "content_filter" => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

fn usage_of(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// `response.created` and `response.in_progress` at once, then the items' events as the agent
/// answers, then `response.completed` (or `response.incomplete`); a failure closes the open item
/// and sends `error` and `response.failed`.
fn stream(state: &Shared, running: Running, shell: Shell) -> Response {
    let headers = Headers::of(state, &running);
    let mut pieces = running.pieces;
    let events = async_stream::stream! {
        let mut render = Render::new(shell);
        for event in render.start() {
            yield event;
        }
        while let Some(piece) = pieces.next().await {
            let events = match piece {
                Piece::Delta(delta) => render.delta(&delta),
                Piece::Done { finish_reason, usage, .. } => render.done(&finish_reason, &usage),
                Piece::Failed(err) => render.failed(&err),
            };
            for event in events {
                yield event;
            }
        }
    };
    sse_response(events, state.settings.keepalive_interval, &headers)
}

/// One `response` object with `usage`.
async fn whole(state: &Shared, running: Running, shell: Shell) -> Result<Response, Error> {
    let headers = Headers::of(state, &running);
    let (answer, finish_reason, usage, overhead) = drive::finish(running.pieces).await?;
    let headers = headers.with_overhead(overhead);
    let mut parts = Parts::default();
    if let Some(delta) = answer.as_single_delta() {
        parts.absorb(&delta);
    }
    let output = parts
        .list
        .iter()
        .map(|part| {
            let id = events::item_id(part, &shell.tool_names);
            events::item(part, &id, "completed", &shell.tool_names)
        })
        .collect();
    let (status, incomplete) = status_of(&finish_reason);
    let body = shell.object(
        status,
        output,
        Ending::Finished {
            usage: &usage,
            incomplete,
        },
    );
    let mut response = Json(body).into_response();
    headers.apply(response.headers_mut());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_become_statuses_and_usage_is_renamed() {
        assert_eq!(status_of("stop"), ("completed", None));
        assert_eq!(status_of("tool_calls"), ("completed", None));
        assert_eq!(
            status_of("length"),
            ("incomplete", Some("max_output_tokens"))
        );
        let usage = usage_of(&Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
        });
        assert_eq!(
            (
                &usage["input_tokens"],
                &usage["output_tokens"],
                &usage["total_tokens"]
            ),
            (&json!(3), &json!(4), &json!(7))
        );
    }

    #[test]
    fn items_are_complete_only_when_done() {
        let mut parts = Parts::default();
        parts.absorb(
            &serde_json::from_value(json!({"reasoning_content": "hm", "content": "Hi",
            "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}))
            .unwrap(),
        );
        let names = tools::ToolNames::default();
        let open = events::item(&parts.list[1], "msg_1", "in_progress", &names);
        assert_eq!(open["content"], json!([]));
        let done: Vec<Value> = parts
            .list
            .iter()
            .map(|p| events::item(p, "id", "completed", &names))
            .collect();
        assert_eq!(done[0]["summary"][0]["text"], "hm");
        assert_eq!(done[1]["content"][0]["text"], "Hi");
        assert_eq!(
            (&done[2]["call_id"], &done[2]["arguments"]),
            (&json!("c"), &json!("{}"))
        );
    }
}
