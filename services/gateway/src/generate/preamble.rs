//! The preamble every generating route runs, in one order for all of them (OpenAI chat and
//! completions, Responses, Messages, Ollama chat and generate):
//!
//! 1. [`arrive`]: authenticate the caller (API key, session token, or nobody on a gateway that
//!    allows keyless generation; failures audited and throttled per address), then read the body
//!    within `MAX_BODY_BYTES` and the budget for bodies in flight (`body.rs`). Nothing of the
//!    body is read for a caller who is refused, nor of a body declared larger than the cap.
//! 2. The route parses and checks the body in its own API's terms and builds a [`Job`].
//! 3. [`Arrival::start`]: the model the job names is resolved (`models.rs`), then admission, which
//!    costs little and bounds what follows: refused while shutting down, a
//!    `MAX_CONCURRENT_REQUESTS` permit, one request from the client's request-rate bucket. Only an
//!    admitted request has its prompt counted (the costly step, run on the blocking pool when
//!    large), then checked against `CONTEXT_WINDOW`, then its tokens reserved from the client's
//!    token bucket; then it goes to the agent. The body's room in the budget is given back once
//!    the request is with bridge-agent or refused.
//!
//! `count_tokens` runs the same steps with [`Arrival::count`]: the key or a session (never
//! keyless), the body within the same bounds, the same admission (from a bucket of its own),
//! then the count.
//!
//! Refusals along the way are `Error`s, rendered by each API in its own shape and logged and
//! counted in one place for every route (`status/mod.rs` `record_errors`).
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::HeaderMap;
use provider_shared::bridge::{codes, ModelInvoke, ModelMeta};
use serde_json::json;

use super::account::Accounting;
use super::admission::{headers_of, reservation, reserve_tokens, take_request, Bucket};
use super::body::{read_within_budget, Reservation};
use super::{drive, overhead, unix_seconds, Encoded, Job, Prompt, Running};
use crate::auth::{Accept, Principal};
use crate::error::Error;
use crate::ratelimit::Take;
use crate::secrets::random_hex;
use crate::state::Shared;

/// An authenticated caller, when its request began, and its body's room in the budget.
pub struct Arrival {
    pub principal: Principal,
    pub peer: SocketAddr,
    pub started: Instant,
    _body: Reservation,
}

/// Step 1 of a generating route: the caller, authenticated before anything else, and the body,
/// read within the cap and the budget.
pub async fn arrive(
    state: &Shared,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
) -> Result<(Arrival, bytes::Bytes), Error> {
    let accept = crate::auth::for_generation(state);
    arrive_as(state, headers, peer, body, accept).await
}

/// Step 1 for callers `accept` names.
pub async fn arrive_as(
    state: &Shared,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
    accept: Accept,
) -> Result<(Arrival, bytes::Bytes), Error> {
    let started = Instant::now();
    let principal = crate::auth::authenticate(state, headers, peer.ip(), accept).await?;
    let (body, room) =
        read_within_budget(body, state.settings.max_body_bytes, &state.bodies).await?;
    Ok((
        Arrival {
            principal,
            peer,
            started,
            _body: room,
        },
        body,
    ))
}

impl Arrival {
    /// Admission, which costs little and bounds what follows: refused while shutting down, a
    /// `MAX_CONCURRENT_REQUESTS` permit, one request from the client's `bucket`.
    async fn admit(
        &self,
        state: &Shared,
        bucket: Bucket,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Take), Error> {
        if state.shutdown.is_cancelled() {
            return Err(Error::Agent {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                code: codes::SHUTTING_DOWN.into(),
                message: "the gateway is shutting down; try again shortly".into(),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        let permit = state.concurrency.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("gateway_rate_limited_total", "kind" => "concurrency").increment(1);
            Error::Overloaded {
                limit: state.settings.max_concurrent_requests,
            }
        })?;
        let client = self.principal.client(state);
        let requests = take_request(state, client, self.peer, bucket).await?;
        Ok((permit, requests))
    }

    /// `count_tokens`' step 3: admitted like a generating request (from its own bucket), then
    /// the prompt counted.
    pub async fn count(self, state: &Shared, payload: Prompt) -> Result<u64, Error> {
        let (_permit, _) = self.admit(state, Bucket::Counts).await?;
        let bytes = payload.text_bytes();
        let (_, tokens) = crate::tokens::count_payload(payload, bytes).await?;
        Ok(tokens)
    }

    /// Step 3: resolves the job's model, admits it, counts and checks it, reserves its tokens
    /// and sends it to the agent.
    pub async fn start(self, state: &Shared, job: Job) -> Result<Running, Error> {
        state.models.resolve(&job.ask.model)?;
        let kind = job.prompt.kind();
        let (permit, requests) = self.admit(state, Bucket::Requests).await?;
        let client = self.principal.client(state).to_owned();

        // What it costs.
        let text_bytes = job.prompt.text_bytes();
        let (mut prompt, prompt_tokens) =
            crate::tokens::count_payload(job.prompt, text_bytes).await?;
        let output = job
            .ask
            .max_tokens
            .unwrap_or(state.settings.default_max_tokens);
        check_context(&state.settings, &prompt, prompt_tokens, output)?;
        let reserved = reservation(
            prompt_tokens,
            output,
            state.settings.output_reservation,
            state.settings.tpm,
        );
        // The most an answer can hold, against which the agent's usage is held.
        let output_cap = job
            .ask
            .max_tokens
            .unwrap_or(state.settings.context_window.saturating_sub(prompt_tokens));
        // The agent learns which model the client asked for (docs/PROTOCOL.md). From here on the
        // prompt is the payload's JSON text, encoded this once (before the
        // reservation, which a failure here would leave taken).
        prompt
            .parameters_mut()
            .insert("model".into(), json!(job.ask.model));
        let Encoded {
            payload,
            sha256: prompt_sha256,
        } = super::off_thread_if_large(text_bytes, move || {
            prompt
                .encode()
                .map_err(|err| Error::Internal(format!("encoding the prompt failed: {err}")))
        })
        .await?;
        let tokens = reserve_tokens(state, &client, self.peer, reserved, &requests).await?;
        let rate = headers_of(state, &requests, &tokens);

        let id = format!("{}{}", job.id_prefix, random_hex(12));
        let session_id = self.principal.session_id().map(str::to_owned);
        let mut account = Accounting {
            state: state.clone(),
            request_id: id.clone(),
            model: job.ask.model.clone(),
            client,
            session_id: session_id.clone(),
            client_ip: self.peer.ip(),
            stream: job.ask.stream,
            prompt_tokens,
            reserved_tokens: reserved,
            output_cap,
            prompt_sha256,
            started: self.started,
            first_chunk: None,
            permit: Some(permit),
            relayed_bytes: 0,
            done: true,
            overhead: overhead::Overhead::new(),
        }
        .begin();
        state
            .status
            .started(&id, kind, job.ask.stream, self.principal.client(state));
        let invoke = ModelInvoke {
            id: id.clone(),
            session_id,
            model_meta: ModelMeta {
                provider: "mcp-local-provider".into(),
                label: state.settings.model_name.clone(),
                requested_scopes: job.scopes,
            },
            payload,
        };
        let calling = Instant::now();
        let call = match state
            .agent
            .call(invoke, state.settings.connection_timeout)
            .await
        {
            Ok(call) => call,
            Err(err) => {
                account.finish(&err.code(), 0);
                return Err(err);
            }
        };
        // Waiting for bridge-agent to come back is not the gateway's own time.
        let pre_dispatch = self.started.elapsed().saturating_sub(calling.elapsed());
        account.overhead.add(pre_dispatch);
        Ok(Running {
            id,
            created: unix_seconds(),
            rate,
            pre_dispatch,
            overhead: account.overhead.clone(),
            prompt_tokens,
            pieces: drive::drive(state.clone(), call, account),
        })
    }
}

/// Refuses a request that cannot fit the model's context (`CONTEXT_WINDOW`): its prompt tokens
/// plus the `output` it asks for (its `max_tokens`, or `DEFAULT_MAX_TOKENS`), with OpenAI's code
/// and wording, so that clients which trim or fall back on `context_length_exceeded` do so.
pub fn check_context(
    settings: &crate::config::Settings,
    prompt: &Prompt,
    prompt_tokens: u64,
    output: u64,
) -> Result<(), Error> {
    let window = settings.context_window;
    let total = prompt_tokens.saturating_add(output);
    if total <= window {
        return Ok(());
    }
    metrics::counter!("gateway_context_length_exceeded_total").increment(1);
    let (param, message) = match prompt {
        Prompt::Chat { .. } => (
            "messages",
            format!(
                "This model's maximum context length is {window} tokens. However, your messages resulted in {total} tokens ({prompt_tokens} in the messages, {output} in the completion). Please reduce the length of the messages or completion."
            ),
        ),
        Prompt::Completion { .. } => (
            "prompt",
            format!(
                "This model's maximum context length is {window} tokens. However, your prompt resulted in {total} tokens ({prompt_tokens} in your prompt; {output} for the completion). Please reduce your prompt; or completion length."
            ),
        ),
    };
    Err(Error::InvalidRequest {
        message,
        param: Some(param.to_owned()),
        code: Some("context_length_exceeded"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Map, Value};

    fn settings(window: u64) -> crate::config::Settings {
        let vars = [
            (
                "LOCAL_PROVIDER_API_KEY",
                "k3y-0123456789abcdef0123456789abcdef",
            ),
            ("LOCAL_PROVIDER_CONTEXT_WINDOW", &window.to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        crate::config::Settings::resolve(provider_shared::config::from_vars(vars).unwrap()).unwrap()
    }

    fn chat() -> Prompt {
        Prompt::Chat {
            messages: vec![json!({"role": "user", "content": "hello"})],
            parameters: Map::new(),
        }
    }

    #[test]
    fn a_request_that_cannot_fit_gets_openais_error() {
        let s = settings(2000);
        assert!(
            check_context(&s, &chat(), 900, 1100).is_ok(),
            "exactly the window fits"
        );
        let err = check_context(&s, &chat(), 900, 1101).unwrap_err();
        let body = err.body();
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(
            body["error"]["message"],
            "This model's maximum context length is 2000 tokens. However, your messages resulted in 2001 tokens (900 in the messages, 1101 in the completion). Please reduce the length of the messages or completion."
        );
        let completion = Prompt::Completion {
            prompt: "x".into(),
            suffix: None,
            system: None,
            parameters: Map::new(),
        };
        let err = check_context(&s, &completion, 1900, 300).unwrap_err();
        assert_eq!(err.body()["error"]["param"], "prompt");
        assert!(err
            .to_string()
            .contains("your prompt resulted in 2200 tokens"));
    }

    #[test]
    fn large_prompts_are_counted_off_the_worker_threads_to_the_same_figure() {
        // The async code runs on a thread of its own (a current-thread runtime) and the runtime's
        // blocking pool has a name of its own, so the tokenizer hook in `tokens` tells them apart
        // from every other test's threads.
        const WORKER: &str = "preamble-test-async-worker";
        const POOL: &str = "preamble-test-blocking-pool";
        let run = || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .thread_name(POOL)
                .build()
                .unwrap();
            runtime.block_on(counted_where_expected(WORKER, POOL));
        };
        std::thread::Builder::new()
            .name(WORKER.into())
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    /// Small prompts and answers are counted inline (on `worker`), large ones on the blocking
    /// pool (`pool`), never on the worker: the same figure either way.
    async fn counted_where_expected(worker: &str, pool: &str) {
        use crate::tokens::counted_on::texts;
        let on = || (texts(worker), texts(pool));
        for (words, inline) in [(10, true), (20_000, false)] {
            let text = vec!["token"; words].join(" ");
            let messages: Vec<Value> = vec![json!({"role": "user", "content": text})];
            let direct = crate::tokens::count_prompt(&messages, None);
            let before = on();
            let prompt = Prompt::Chat {
                messages: messages.clone(),
                parameters: Map::new(),
            };
            let bytes = prompt.text_bytes();
            let (payload, counted) = crate::tokens::count_payload(prompt, bytes).await.unwrap();
            let after = on();
            assert_eq!(counted, direct);
            assert!(matches!(payload, Prompt::Chat { messages: m, .. } if m == messages));
            if inline {
                assert!(after.0 > before.0, "{words} words counted inline");
                assert_eq!(after.1, before.1, "{words} words not sent to the pool");
            } else {
                assert_eq!(after.0, before.0, "{words} words not counted on the worker");
                assert!(after.1 > before.1, "{words} words counted on the pool");
            }
        }
        let answer = "word ".repeat(10_000);
        let direct = crate::tokens::count_text(&answer);
        assert!(direct >= 10_000);
        let before = on();
        assert_eq!(crate::tokens::count_answer(answer).await, direct);
        let after = on();
        assert_eq!(
            after.0, before.0,
            "a large answer is not counted on the worker"
        );
        assert!(after.1 > before.1, "a large answer is counted on the pool");
    }
}
