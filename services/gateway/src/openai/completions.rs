//! `POST /v1/completions`: OpenAI's legacy completions, used by editors for fill-in-the-middle
//! autocomplete (`prompt` before the cursor, `suffix` after it). Reaches the agent as a
//! `completion` job; answers `text_completion` objects, streamed or whole.
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::reply::{self, Api, Reply};
use crate::error::Error;
use crate::generate::{self, Ask, Job};
use crate::state::Shared;
use crate::validate;

pub async fn completions(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let (caller, body) = generate::arrive(&state, &headers, peer, body).await?;
    let limits = validate::Limits::of(&state.settings);
    let request =
        generate::off_thread_if_large(body.len(), move || validate::completion(&body, &limits))
            .await?;
    let ask = Ask {
        model: request.model,
        max_tokens: request.max_tokens,
        stream: request.stream,
    };
    let job = Job::completion(
        ask.clone(),
        request.prompt,
        request.suffix,
        None,
        request.parameters,
        "cmpl-",
    );
    let running = caller.start(&state, job).await?;
    let reply = Reply {
        api: Api::Completion,
        id: running.id.clone(),
        created: running.created,
        model: ask.model,
    };
    if ask.stream {
        Ok(reply::stream(&state, running, reply, request.include_usage))
    } else {
        reply::whole(&state, running, reply).await
    }
}
