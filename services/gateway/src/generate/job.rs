//! What a route hands the preamble: one request for the agent, parsed and checked in its own API's
//! terms, with what every API asks for in common.
use provider_shared::bridge::Payload;
use provider_shared::digest;
use serde_json::{Map, Value};

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
