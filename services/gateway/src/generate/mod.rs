//! The path every generating route shares (OpenAI chat and completions, Ollama chat and generate):
//! admit the job (concurrency, requests and tokens per minute), hand it to the agent, and turn the
//! agent's frames into [`drive::Piece`]s that each API renders in its own format.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use provider_shared::bridge::{codes, ErrorBody, ModelInvoke, ModelMeta, Payload};
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::error::Error;
use crate::ratelimit::{RateHeaders, Take};
use crate::secrets::random_hex;
use crate::state::{AppState, Shared};

mod account;
pub mod drive;
mod outbox;
pub mod overhead;

use account::Accounting;
pub use drive::{Piece, Pieces};

/// One request for the agent, already validated. Its prompt tokens are counted by [`start`].
pub struct Job {
    pub payload: Payload,
    /// What the client capped the answer at, if anything.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub scopes: Vec<String>,
    /// SHA-256 of the prompt, for the audit log (never the prompt itself).
    pub prompt_sha256: String,
    /// `chatcmpl-`, `cmpl-`, …: the id's prefix in the client's API.
    pub id_prefix: &'static str,
}

impl Job {
    /// A chat for the agent, as every chat-shaped API sends it: the audit log's digest of the
    /// messages, and the `tools` scope when the request carries tools.
    pub fn chat(
        messages: Vec<Value>,
        parameters: Map<String, Value>,
        has_tools: bool,
        max_tokens: Option<u64>,
        stream: bool,
        id_prefix: &'static str,
    ) -> Self {
        let mut scopes = vec!["chat".to_owned()];
        if has_tools {
            scopes.push("tools".to_owned());
        }
        let prompt = serde_json::to_string(&messages).unwrap_or_default();
        Self {
            prompt_sha256: provider_shared::digest::sha256_hex(prompt.as_bytes()),
            payload: Payload::Chat {
                messages,
                parameters,
            },
            max_tokens,
            stream,
            scopes,
            id_prefix,
        }
    }
}

/// A job the agent is working on.
pub struct Running {
    pub id: String,
    pub created: u64,
    pub rate: RateHeaders,
    /// Gateway time before the request reached bridge-agent.
    pub pre_dispatch: Duration,
    /// The gateway's own time for the whole request, added to as the answer is rendered.
    pub overhead: std::sync::Arc<overhead::Overhead>,
    /// The prompt's token count, as admitted.
    pub prompt_tokens: u64,
    pub pieces: Pieces,
}

/// Admits `job` for `principal` and sends it to the agent.
pub async fn start(
    state: &Shared,
    principal: &Principal,
    peer: SocketAddr,
    started: Instant,
    job: Job,
) -> Result<Running, Error> {
    let kind = match &job.payload {
        Payload::Chat { .. } => "chat",
        Payload::Completion { .. } => "completion",
    };
    let (payload, prompt_tokens) = crate::tokens::count_payload(job.payload).await?;
    check_context(&state.settings, &payload, prompt_tokens, job.max_tokens)?;
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
    let reserved =
        prompt_tokens.saturating_add(job.max_tokens.unwrap_or(state.settings.default_max_tokens));
    let output_cap = job
        .max_tokens
        .unwrap_or(state.settings.context_window.saturating_sub(prompt_tokens));
    let client = principal.client(state).to_owned();
    let rate = admit(state, &client, peer, reserved).await?;

    let id = format!("{}{}", job.id_prefix, random_hex(12));
    let account = Accounting {
        state: state.clone(),
        request_id: id.clone(),
        client,
        session_id: principal.session_id().map(str::to_owned),
        client_ip: peer.ip(),
        stream: job.stream,
        prompt_tokens,
        reserved_tokens: reserved,
        output_cap,
        prompt_sha256: job.prompt_sha256,
        started,
        first_chunk: None,
        permit: Some(permit),
        done: true,
        overhead: overhead::Overhead::new(),
    }
    .begin();
    state
        .status
        .started(&id, kind, job.stream, principal.client(state));
    let invoke = ModelInvoke {
        id: id.clone(),
        session_id: principal.session_id().map(str::to_owned),
        model_meta: ModelMeta {
            provider: "mcp-local-provider".into(),
            label: state.settings.model_name.clone(),
            requested_scopes: job.scopes,
        },
        payload,
    };
    let mut account = account;
    let calling = Instant::now();
    let call = match state
        .agent
        .call(invoke, state.settings.connection_timeout)
        .await
    {
        Ok(call) => call,
        Err(err) => {
            account.finish(&err.code(), None, 0);
            return Err(err);
        }
    };
    // Waiting for bridge-agent to come back is not the gateway's own time.
    let pre_dispatch = started.elapsed().saturating_sub(calling.elapsed());
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

/// Refuses a request that cannot fit the model's context (`CONTEXT_WINDOW`): its prompt tokens
/// plus the output it asks for (or `DEFAULT_MAX_TOKENS`), with OpenAI's code and wording, so
/// that clients which trim or fall back on `context_length_exceeded` do so.
pub fn check_context(
    settings: &crate::config::Settings,
    payload: &Payload,
    prompt_tokens: u64,
    max_tokens: Option<u64>,
) -> Result<(), Error> {
    let window = settings.context_window;
    let output = max_tokens.unwrap_or(settings.default_max_tokens);
    let total = prompt_tokens.saturating_add(output);
    if total <= window {
        return Ok(());
    }
    metrics::counter!("gateway_context_length_exceeded_total").increment(1);
    let (param, message) = match payload {
        Payload::Chat { .. } => (
            "messages",
            format!(
                "This model's maximum context length is {window} tokens. However, your messages resulted in {total} tokens ({prompt_tokens} in the messages, {output} in the completion). Please reduce the length of the messages or completion."
            ),
        ),
        Payload::Completion { .. } => (
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

/// The caller of a generating route, authenticated before anything else, and the request body,
/// read within the body cap.
pub async fn caller_and_body(
    state: &Shared,
    headers: &axum::http::HeaderMap,
    peer: SocketAddr,
    body: Body,
) -> Result<(Principal, bytes::Bytes), Error> {
    let principal = crate::auth::authenticate(
        state,
        headers,
        peer.ip(),
        crate::auth::for_generation(state),
    )
    .await?;
    let body = read_body(body, state.settings.max_body_bytes).await?;
    Ok((principal, body))
}

/// Reads a request body up to `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        if is_length_limit(&err) {
            Error::BodyTooLarge { limit }
        } else {
            Error::invalid(format!("could not read the request body: {err}"), None)
        }
    })
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Takes one request and `reserved` tokens from the client's budgets, or explains the 429.
async fn admit(
    state: &AppState,
    client: &str,
    peer: SocketAddr,
    reserved: u64,
) -> Result<RateHeaders, Error> {
    let (rpm, tpm) = (state.rpm_spec(), state.tpm_spec());
    let (rpm_key, tpm_key) = (format!("rpm:{client}"), format!("tpm:{client}"));
    if reserved > state.settings.tpm {
        metrics::counter!("gateway_rate_limited_total", "kind" => "tokens").increment(1);
        audit_limit(state, peer, "tokens", reserved, state.settings.tpm);
        return Err(Error::RateLimited {
            kind: "tokens",
            message: format!(
                "this request needs {reserved} tokens (prompt plus max_tokens), more than the {} tokens per minute allowed; lower max_tokens or shorten the prompt",
                state.settings.tpm
            ),
            retry_after: Duration::from_secs(60),
            headers: None,
            retryable: false,
        });
    }
    let requests = state.store.take(&rpm_key, rpm, 1).await?;
    if !requests.allowed {
        let tokens = state.store.peek(&tpm_key, tpm).await?;
        metrics::counter!("gateway_rate_limited_total", "kind" => "requests").increment(1);
        audit_limit(
            state,
            peer,
            "requests",
            state.settings.rpm,
            state.settings.rpm,
        );
        return Err(Error::RateLimited {
            kind: "requests",
            message: format!(
                "rate limit reached: {} requests per minute (bursts of {}); try again in {}s",
                state.settings.rpm,
                state.settings.burst,
                crate::error::retry_after_secs(requests.retry_after)
            ),
            retry_after: requests.retry_after,
            headers: Some(headers_of(state, &requests, &tokens)),
            retryable: true,
        });
    }
    let tokens = state.store.take(&tpm_key, tpm, reserved).await?;
    if !tokens.allowed {
        // The request was not admitted, so it does not count against the request budget.
        state.store.adjust(&rpm_key, rpm, 1).await?;
        metrics::counter!("gateway_rate_limited_total", "kind" => "tokens").increment(1);
        let used = state.settings.tpm.saturating_sub(tokens.remaining);
        audit_limit(state, peer, "tokens", used, state.settings.tpm);
        return Err(Error::RateLimited {
            kind: "tokens",
            message: format!(
                "rate limit reached: {} tokens per minute; this request reserves {reserved}; try again in {}s",
                state.settings.tpm,
                crate::error::retry_after_secs(tokens.retry_after)
            ),
            retry_after: tokens.retry_after,
            headers: Some(headers_of(state, &requests, &tokens)),
            retryable: true,
        });
    }
    Ok(headers_of(state, &requests, &tokens))
}

fn headers_of(state: &AppState, requests: &Take, tokens: &Take) -> RateHeaders {
    RateHeaders {
        limit_requests: state.settings.rpm,
        remaining_requests: requests.remaining,
        reset_requests: requests.reset_after,
        limit_tokens: state.settings.tpm,
        remaining_tokens: tokens.remaining,
        reset_tokens: tokens.reset_after,
    }
}

fn audit_limit(state: &AppState, peer: SocketAddr, kind: &str, current: u64, limit: u64) {
    state.audit.record(
        "rate_limit_exceeded",
        json!({"client_ip": peer.ip().to_string(), "limit_type": kind, "current": current, "limit": limit}),
    );
}

/// Maps a failed result from bridge-agent or the agent to the client's error.
pub fn agent_error(err: &ErrorBody) -> Error {
    use axum::http::StatusCode;
    let (status, retry_after) = match err.code.as_str() {
        codes::AGENT_UNAVAILABLE => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(5)),
        ),
        codes::SHUTTING_DOWN => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(1)),
        ),
        codes::REQUEST_TIMEOUT | codes::RESPONSE_TIMEOUT => (StatusCode::GATEWAY_TIMEOUT, None),
        codes::REQUEST_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, None),
        _ => (StatusCode::BAD_GATEWAY, None),
    };
    Error::Agent {
        status,
        code: err.code.clone(),
        message: err.message.clone(),
        retry_after,
    }
}

pub fn unix_seconds() -> u64 {
    crate::store::now_ms() / 1000
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

    fn chat() -> Payload {
        Payload::Chat {
            messages: vec![json!({"role": "user", "content": "hello"})],
            parameters: Map::new(),
        }
    }

    #[test]
    fn a_request_that_cannot_fit_gets_openais_error() {
        let s = settings(2000);
        assert!(
            check_context(&s, &chat(), 900, Some(1100)).is_ok(),
            "exactly the window fits"
        );
        let err = check_context(&s, &chat(), 900, Some(1101)).unwrap_err();
        let body = err.body();
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(
            body["error"]["message"],
            "This model's maximum context length is 2000 tokens. However, your messages resulted in 2001 tokens (900 in the messages, 1101 in the completion). Please reduce the length of the messages or completion."
        );
        // Without max_tokens the default output (1024) counts.
        assert!(check_context(&s, &chat(), 977, None).is_err());
        let completion = Payload::Completion {
            prompt: "x".into(),
            suffix: None,
            system: None,
            parameters: Map::new(),
        };
        let err = check_context(&s, &completion, 1900, Some(300)).unwrap_err();
        assert_eq!(err.body()["error"]["param"], "prompt");
        assert!(err
            .to_string()
            .contains("your prompt resulted in 2200 tokens"));
    }

    #[tokio::test]
    async fn large_prompts_are_counted_off_the_worker_threads_to_the_same_figure() {
        // Small prompts are counted inline, large ones on the blocking pool: the same figure.
        for words in [10, 20_000] {
            let text = vec!["token"; words].join(" ");
            let messages: Vec<Value> = vec![json!({"role": "user", "content": text})];
            let direct = crate::tokens::count_prompt(&messages, None);
            let (payload, counted) = crate::tokens::count_payload(Payload::Chat {
                messages: messages.clone(),
                parameters: Map::new(),
            })
            .await
            .unwrap();
            assert_eq!(counted, direct);
            assert!(matches!(payload, Payload::Chat { messages: m, .. } if m == messages));
        }
        let answer = "word ".repeat(10_000);
        let direct = crate::tokens::count_text(&answer);
        assert!(direct >= 10_000);
        assert_eq!(crate::tokens::count_answer(answer).await, direct);
    }
}
