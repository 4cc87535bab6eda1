//! `POST /v1/completions`: OpenAI's legacy completions, used by editors for fill-in-the-middle
//! autocomplete (`prompt` before the cursor, `suffix` after it). Reaches the agent as a
//! `completion` job; answers `text_completion` objects, streamed or whole.
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use provider_shared::bridge::Payload;
use provider_shared::digest;
use serde_json::Value;

use super::reply::{self, Api, Reply};
use crate::error::Error;
use crate::generate::{self, Job};
use crate::state::Shared;
use crate::validate;

pub async fn completions(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let started = Instant::now();
    let (principal, body) = generate::caller_and_body(&state, &headers, peer, body).await?;
    let request = validate::completion(&body, &validate::Limits::of(&state.settings))?;
    let job = completion_job(
        request.prompt,
        request.suffix,
        None,
        request.parameters,
        request.max_tokens,
        request.stream,
        "cmpl-",
    );
    let running = generate::start(&state, &principal, peer, started, job).await?;
    let reply = Reply {
        api: Api::Completion,
        id: running.id.clone(),
        created: running.created,
        model: state.settings.model_name.clone(),
    };
    if request.stream {
        Ok(reply::stream(&state, running, reply, request.include_usage))
    } else {
        reply::whole(&state, running, reply).await
    }
}

/// A `completion` job for the agent: the text around the cursor, counted as the prompt.
pub fn completion_job(
    prompt: String,
    suffix: Option<String>,
    system: Option<String>,
    parameters: serde_json::Map<String, Value>,
    max_tokens: Option<u64>,
    stream: bool,
    id_prefix: &'static str,
) -> Job {
    let texts = [Some(&prompt), suffix.as_ref(), system.as_ref()];
    let mut hashed = String::new();
    for text in texts.iter().flatten() {
        hashed.push_str(text);
        hashed.push('\0');
    }
    Job {
        prompt_sha256: digest::sha256_hex(hashed.as_bytes()),
        payload: Payload::Completion {
            prompt,
            suffix,
            system,
            parameters,
        },
        max_tokens,
        stream,
        scopes: vec!["completion".to_owned()],
        id_prefix,
    }
}
