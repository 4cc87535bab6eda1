//! OpenAI's chat and completions bodies, whole: the shared rules, then what only they have.
use serde_json::{Map, Value};

use crate::error::Error;

use super::{
    bool_field, describe, int_in, invalid, kind_of, messages, model_of, object_of, sampling, tools,
    Limits, OPENAI,
};

/// A chat request that passed validation.
#[derive(Debug)]
pub struct ChatRequest {
    /// The model name as sent (resolved by the preamble).
    pub model: String,
    pub messages: Vec<Value>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// Every field but `model` and `messages`, exactly as sent.
    pub parameters: Map<String, Value>,
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn chat(body: &[u8], limits: &Limits) -> Result<ChatRequest, Error> {
    let mut obj = object_of(body)?;
    let model = model_of(&obj)?;

    let messages = match obj.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "messages",
                "must contain at least one message".into(),
            ))
        }
        Some(v) => {
            return Err(invalid(
                "messages",
                format!("expected an array of messages, got {}", kind_of(&v)),
            ))
        }
        None => return Err(invalid("messages", "required".into())),
    };
    self::messages(&OPENAI, &messages)?;

    let common = check_common(&obj, limits)?;
    check_no_logprobs(&obj)?;
    tools(&obj)?;
    match obj.get("tool_choice") {
        None | Some(Value::Null | Value::String(_) | Value::Object(_)) => {}
        Some(v) => {
            return Err(invalid(
                "tool_choice",
                format!(
                    "expected \"none\", \"auto\", \"required\" or an object, got {}",
                    describe(v)
                ),
            ))
        }
    }

    obj.remove("model");
    Ok(ChatRequest {
        model,
        messages,
        stream: common.stream,
        include_usage: common.include_usage,
        max_tokens: common.max_tokens,
        parameters: obj,
    })
}

/// Refuses `logprobs` and `top_logprobs`: the agent has no token probabilities to give, and a
/// client that asked for them must not get `null` as if that were the answer.
pub fn check_no_logprobs(obj: &Map<String, Value>) -> Result<(), Error> {
    if obj
        .get("logprobs")
        .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
    {
        return Err(invalid(
            "logprobs",
            "log probabilities are not available from this model; leave logprobs out or false"
                .into(),
        ));
    }
    if obj
        .get("top_logprobs")
        .is_some_and(|v| !v.is_null() && v != &Value::from(0))
    {
        return Err(invalid(
            "top_logprobs",
            "log probabilities are not available from this model; leave top_logprobs out".into(),
        ));
    }
    Ok(())
}

/// A legacy (fill-in-the-middle) completion request that passed validation.
#[derive(Debug)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: String,
    pub suffix: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    /// Every field but `model`, `prompt` and `suffix`, exactly as sent.
    pub parameters: Map<String, Value>,
}

/// Parses and checks a `/v1/completions` body.
pub fn completion(body: &[u8], limits: &Limits) -> Result<CompletionRequest, Error> {
    let mut obj = object_of(body)?;
    let model = model_of(&obj)?;
    let prompt = match obj.remove("prompt") {
        Some(Value::String(p)) => p,
        Some(Value::Array(mut items)) if items.len() == 1 && items[0].is_string() => {
            match items.pop() {
                Some(Value::String(p)) => p,
                _ => String::new(),
            }
        }
        Some(Value::Array(items)) if items.len() > 1 => {
            return Err(invalid(
                "prompt",
                format!("one prompt per request is supported, got {}", items.len()),
            ))
        }
        Some(v) => {
            return Err(invalid(
                "prompt",
                format!("expected a string, got {}", describe(&v)),
            ))
        }
        None => return Err(invalid("prompt", "required".into())),
    };
    let suffix = match obj.remove("suffix") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            return Err(invalid(
                "suffix",
                format!("expected a string, got {}", describe(&v)),
            ))
        }
    };
    let common = check_common(&obj, limits)?;
    if bool_field(&obj, "echo")? {
        return Err(invalid(
            "echo",
            "echoing the prompt is not supported".into(),
        ));
    }
    if let Some(best_of) = int_in(&obj, "best_of", 1, u64::MAX)? {
        if best_of != 1 {
            return Err(invalid(
                "best_of",
                format!("only 1 is supported, got {best_of}"),
            ));
        }
    }
    if obj
        .get("logprobs")
        .is_some_and(|v| !v.is_null() && v != &Value::from(0))
    {
        return Err(invalid(
            "logprobs",
            "log probabilities are not available from this model".into(),
        ));
    }
    obj.remove("model");
    Ok(CompletionRequest {
        model,
        prompt,
        suffix,
        stream: common.stream,
        include_usage: common.include_usage,
        max_tokens: common.max_tokens,
        parameters: obj,
    })
}

/// What chat and completion requests share.
struct Common {
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
}

/// Sampling parameters, `n`, streaming options and `stop`: the same for chat and completions.
fn check_common(obj: &Map<String, Value>, limits: &Limits) -> Result<Common, Error> {
    let sampling = sampling(&OPENAI, obj, limits)?;
    if let Some(n) = int_in(obj, "n", 1, u64::MAX)? {
        if n != 1 {
            return Err(invalid("n", format!("only 1 choice is supported, got {n}")));
        }
    }
    let stream = bool_field(obj, "stream")?;
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(opts)) => {
            if !stream {
                return Err(invalid(
                    "stream_options",
                    "only allowed when stream is true".into(),
                ));
            }
            bool_field(opts, "include_usage").map_err(|_| {
                invalid(
                    "stream_options.include_usage",
                    "expected true or false".into(),
                )
            })?
        }
        Some(v) => {
            return Err(invalid(
                "stream_options",
                format!("expected an object, got {}", describe(v)),
            ))
        }
    };
    Ok(Common {
        stream,
        include_usage,
        max_tokens: sampling.max_tokens,
    })
}
