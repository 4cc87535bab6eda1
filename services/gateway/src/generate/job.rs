//! What a route hands the preamble: one request for the agent, parsed and checked in its own API's
//! terms, with what every API asks for in common.
use provider_shared::bridge::{Payload, RawJson};
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
    pub prompt: Prompt,
    pub ask: Ask,
    pub scopes: Vec<String>,
    /// `chatcmpl-`, `cmpl-`, …: the id's prefix in the client's API.
    pub id_prefix: &'static str,
}

/// The prompt as the gateway reads it: decoded, for validation and counting its tokens. It is
/// encoded once, into the [`Payload`] that travels as those bytes to mcp-bridge
/// ([`Prompt::encode`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A chat: the client's messages and its generation parameters, unchanged.
    Chat {
        messages: Vec<Value>,
        parameters: Map<String, Value>,
    },
    /// A text completion (fill-in-the-middle): see [`Payload::Completion`].
    Completion {
        prompt: String,
        suffix: Option<String>,
        system: Option<String>,
        parameters: Map<String, Value>,
    },
}

/// A prompt encoded for the agent.
#[derive(Debug)]
pub struct Encoded {
    pub payload: Payload,
    /// SHA-256 of the prompt, for the audit log (never the prompt itself): a chat's messages as
    /// encoded in the payload, a completion's texts each ended by a NUL.
    pub sha256: String,
}

impl Prompt {
    /// Bytes of its text (a chat's messages and tools; a completion's prompt, suffix and
    /// system): what decides whether its count and its encoding run on the blocking pool.
    pub fn text_bytes(&self) -> usize {
        use crate::tokens::text_bytes;
        match self {
            Prompt::Chat {
                messages,
                parameters,
            } => {
                messages.iter().map(text_bytes).sum::<usize>()
                    + parameters.get("tools").map_or(0, text_bytes)
            }
            Prompt::Completion {
                prompt,
                suffix,
                system,
                ..
            } => {
                prompt.len()
                    + suffix.as_ref().map_or(0, String::len)
                    + system.as_ref().map_or(0, String::len)
            }
        }
    }

    /// `chat` or `completion`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Prompt::Chat { .. } => "chat",
            Prompt::Completion { .. } => "completion",
        }
    }

    pub fn parameters_mut(&mut self) -> &mut Map<String, Value> {
        match self {
            Prompt::Chat { parameters, .. } | Prompt::Completion { parameters, .. } => parameters,
        }
    }

    /// Encodes the prompt, once: the payload holds the JSON text from here to mcp-bridge, and a
    /// chat's audit digest is taken over that same text (serde_json's compact encoding, as the
    /// digest always was).
    pub fn encode(self) -> Result<Encoded, serde_json::Error> {
        match self {
            Prompt::Chat {
                messages,
                parameters,
            } => {
                let messages = RawJson::encode(&messages)?;
                Ok(Encoded {
                    sha256: digest::sha256_hex(messages.get().as_bytes()),
                    payload: Payload::Chat {
                        messages,
                        parameters: RawJson::encode(&parameters)?,
                    },
                })
            }
            Prompt::Completion {
                prompt,
                suffix,
                system,
                parameters,
            } => {
                let mut hashed = String::new();
                for text in [Some(&prompt), suffix.as_ref(), system.as_ref()]
                    .iter()
                    .flatten()
                {
                    hashed.push_str(text);
                    hashed.push('\0');
                }
                Ok(Encoded {
                    sha256: digest::sha256_hex(hashed.as_bytes()),
                    payload: Payload::Completion {
                        prompt,
                        suffix,
                        system,
                        parameters: RawJson::encode(&parameters)?,
                    },
                })
            }
        }
    }
}

impl Job {
    /// A chat for the agent, as every chat-shaped API sends it, with the `tools` scope when its
    /// parameters carry tools.
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
            prompt: Prompt::Chat {
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
        Self {
            prompt: Prompt::Completion {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chat_is_encoded_once_and_its_digest_is_that_of_its_messages_text() {
        let messages = vec![json!({"role": "user", "content": "hé \"quoted\"", "n": 0.1})];
        let encoded = Prompt::Chat {
            messages: messages.clone(),
            parameters: Map::from_iter([("stream".into(), json!(true))]),
        }
        .encode()
        .unwrap();
        // The digest the audit log always had: of the messages' compact JSON.
        assert_eq!(encoded.sha256, digest::sha256_hex_json(&messages));
        let Payload::Chat {
            messages: raw,
            parameters,
        } = &encoded.payload
        else {
            panic!("not a chat")
        };
        assert_eq!(raw.get(), serde_json::to_string(&messages).unwrap());
        assert_eq!(parameters.get(), r#"{"stream":true}"#);
        // The encoding is canonical: decoding and encoding it again gives the same bytes, which
        // mcp-bridge's conversation digests rely on (docs/ARCHITECTURE.md).
        let again: Vec<Value> = raw.parse().unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), raw.get());
    }
}
