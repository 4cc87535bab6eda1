//! Checks a request against the rules in docs/http-api.md ("Validation"). Content is never
//! altered or truncated: a request either passes as sent or gets a 400 naming the field and what
//! it accepts. Unknown fields pass through to the agent untouched, as OpenAI-compatible servers
//! accept them.
//!
//! The rules for a message list, roles, content, tools and sampling parameters are written once
//! here and used by the OpenAI routes and by Ollama's `/api/chat` and `/api/generate`
//! (`ollama/`); the Responses and Messages APIs use the same field checks on their own shapes.
//! A [`Dialect`] says how each API spells and places the fields, so that an error names the
//! field as the client sent it (`temperature` for OpenAI, `options.temperature` for Ollama);
//! each API renders the error in its own shape.
//!
//! - `fields.rs`: one field at a time (a number in a range, a flag, the model, the body as an
//!   object) and how a refusal describes what was sent, never quoting prompt text.
//! - `sampling.rs`: the [`Dialect`]s and the sampling parameters (ranges, token cap, `stop`).
//! - `messages.rs`: a message list, `tools`.
//! - `openai.rs`: OpenAI's chat and completions bodies, whole.
use serde_json::{Map, Value};

use crate::error::Error;

mod fields;
mod messages;
mod openai;
#[cfg(test)]
mod props;
mod sampling;
#[cfg(test)]
mod tests;

pub use fields::{
    bool_field, bool_or, describe, int_in, invalid, kind_of, model_of, number_in, object_of, quoted,
};
pub use messages::{messages, tools, tools_as_chat};
pub use openai::{chat, check_no_logprobs, completion, ChatRequest, CompletionRequest};
pub use sampling::{sampling, Dialect, Sampling, OLLAMA, OPENAI};

/// What the gateway's settings add to the rules. A message's size is not among them: the
/// context window bounds it, in tokens, once the prompt is counted (`generate/preamble.rs`).
pub struct Limits {
    /// `MAX_TOKENS_LIMIT`, when set: the most output a request may ask for. Unset, any whole
    /// number of at least 1 passes here and the context window decides.
    pub max_tokens: Option<u64>,
}

impl Limits {
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self {
            max_tokens: settings.max_tokens_limit,
        }
    }
}

/// The answer's token cap named `key`, if given: a whole number of at least 1, at most
/// `MAX_TOKENS_LIMIT` when that is set.
pub fn token_cap(
    obj: &Map<String, Value>,
    key: &str,
    limits: &Limits,
) -> Result<Option<u64>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && limits.max_tokens.is_none_or(|max| n <= max) => Ok(Some(n)),
            _ => Err(invalid(
                key,
                format!("expected {}, got {}", cap_range(limits), describe(v)),
            )),
        },
    }
}

fn cap_range(limits: &Limits) -> String {
    match limits.max_tokens {
        Some(max) => format!("a whole number from 1 to {max} (LOCAL_PROVIDER_MAX_TOKENS_LIMIT)"),
        None => "a whole number of at least 1".to_owned(),
    }
}
