//! `POST /v1/chat/completions`, streamed as strict clients need it (docs/http-api.md, "Chat") or whole.
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;

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
    let request = validate::chat(&body, &validate::Limits::of(&state.settings))?;
    let job = Job::chat(
        request.messages,
        request.parameters,
        request.tools.is_some(),
        request.max_tokens,
        request.stream,
        "chatcmpl-",
    );
    let running = generate::start(&state, &principal, peer, started, job).await?;
    let reply = Reply {
        api: Api::Chat,
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
