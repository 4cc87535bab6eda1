//! `POST /v1/chat/completions`, streamed as strict clients need it (docs/http-api.md, "Chat") or whole.
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
        generate::off_thread_if_large(body.len(), move || validate::chat(&body, &limits)).await?;
    let ask = Ask {
        model: request.model,
        max_tokens: request.max_tokens,
        stream: request.stream,
    };
    let job = Job::chat(
        ask.clone(),
        request.messages,
        request.parameters,
        "chatcmpl-",
    );
    let running = caller.start(&state, job).await?;
    let reply = Reply {
        api: Api::Chat,
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
