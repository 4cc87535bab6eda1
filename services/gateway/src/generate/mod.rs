//! The path every generating route shares (OpenAI chat and completions, the Responses and
//! Messages APIs, Ollama chat and generate): each route parses its own body into a [`Job`];
//! [`preamble`] authenticates, reads, admits and dispatches it in one order for all of them; the
//! agent's frames come back as [`drive::Piece`]s that each API renders in its own format.
use std::time::Duration;

use provider_shared::bridge::{codes, ErrorBody, Payload};
use provider_shared::digest;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::ratelimit::RateHeaders;

mod account;
pub mod body;
pub mod drive;
mod outbox;
pub mod overhead;
mod preamble;

pub use body::{read_body, SMALL_BODY_BYTES};
pub use drive::{Piece, Pieces};
pub use preamble::{arrive, arrive_as, check_context, Arrival};

/// What every request asks for, whatever its API calls the fields.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The model name as the client wrote it: resolved by the preamble, echoed in the answer.
    pub model: String,
    /// What the client capped the answer at, if anything.
    pub max_tokens: Option<u64>,
    pub stream: bool,
}

/// One request for the agent, parsed and checked by its route. Its model is resolved and its
/// prompt tokens counted by the preamble ([`Arrival::start`]).
pub struct Job {
    pub payload: Payload,
    pub ask: Ask,
    pub scopes: Vec<String>,
    /// SHA-256 of the prompt, for the audit log (never the prompt itself).
    pub prompt_sha256: String,
    /// `chatcmpl-`, `cmpl-`, …: the id's prefix in the client's API.
    pub id_prefix: &'static str,
}

impl Job {
    /// A chat for the agent, as every chat-shaped API sends it: the audit log's digest of the
    /// messages, and the `tools` scope when its parameters carry tools.
    pub fn chat(
        ask: Ask,
        messages: Vec<Value>,
        parameters: Map<String, Value>,
        id_prefix: &'static str,
    ) -> Self {
        let mut scopes = vec!["chat".to_owned()];
        if parameters.get("tools").is_some_and(|t| !t.is_null()) {
            scopes.push("tools".to_owned());
        }
        Self {
            prompt_sha256: digest::sha256_hex_json(&messages),
            payload: Payload::Chat {
                messages,
                parameters,
            },
            ask,
            scopes,
            id_prefix,
        }
    }

    /// A `completion` job (fill-in-the-middle): the text around the cursor, counted as the prompt.
    pub fn completion(
        ask: Ask,
        prompt: String,
        suffix: Option<String>,
        system: Option<String>,
        parameters: Map<String, Value>,
        id_prefix: &'static str,
    ) -> Self {
        let mut hashed = String::new();
        for text in [Some(&prompt), suffix.as_ref(), system.as_ref()]
            .iter()
            .flatten()
        {
            hashed.push_str(text);
            hashed.push('\0');
        }
        Self {
            prompt_sha256: digest::sha256_hex(hashed.as_bytes()),
            payload: Payload::Completion {
                prompt,
                suffix,
                system,
                parameters,
            },
            ask,
            scopes: vec!["completion".to_owned()],
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
