//! Checks a chat request against the rules in the README ("The HTTP API"). Content is never altered or truncated: a
//! request either passes as sent or gets a 400 naming the field and what it accepts. Unknown
//! fields pass through to the agent untouched, as OpenAI-compatible servers accept them.
use serde_json::{Map, Value};

use crate::error::Error;

pub struct Limits<'a> {
    pub model: &'a str,
    pub max_tokens: u64,
    pub max_content_bytes: usize,
}

impl<'a> Limits<'a> {
    pub fn of(settings: &'a crate::config::Settings) -> Self {
        Self {
            model: &settings.model_name,
            max_tokens: settings.max_tokens_limit,
            max_content_bytes: settings.max_content_bytes,
        }
    }
}

/// A chat request that passed validation.
#[derive(Debug)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    pub tools: Option<Value>,
    /// Every field but `model` and `messages`, exactly as sent.
    pub parameters: Map<String, Value>,
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

pub fn invalid(param: &str, message: String) -> Error {
    Error::invalid(format!("{param}: {message}"), Some(param.to_owned()))
}

pub fn describe(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 40 {
        let mut end = 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}

pub fn number_in(obj: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<(), Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(()),
            _ => Err(invalid(
                key,
                format!("expected a number from {lo} to {hi}, got {}", describe(v)),
            )),
        },
    }
}

pub fn int_in(obj: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(
                key,
                format!(
                    "expected a whole number from {lo} to {hi}, got {}",
                    describe(v)
                ),
            )),
        },
    }
}

pub fn bool_field(obj: &Map<String, Value>, key: &str) -> Result<bool, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(
            key,
            format!("expected true or false, got {}", describe(v)),
        )),
    }
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn chat(body: &[u8], limits: &Limits<'_>) -> Result<ChatRequest, Error> {
    let mut obj = object_of(body)?;
    check_model(&obj, limits.model)?;

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
                format!("expected an array of messages, got {}", describe(&v)),
            ))
        }
        None => return Err(invalid("messages", "required".into())),
    };
    for (i, message) in messages.iter().enumerate() {
        check_message(i, message, limits.max_content_bytes)?;
    }

    let common = check_common(&obj, limits)?;
    check_no_logprobs(&obj)?;
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                let name = tool.pointer("/function/name").and_then(Value::as_str);
                if tool.get("type").and_then(Value::as_str) != Some("function") || name.is_none() {
                    return Err(invalid(
                        &format!("tools[{i}]"),
                        "expected {\"type\": \"function\", \"function\": {\"name\": …}}".into(),
                    ));
                }
            }
            Some(Value::Array(tools.clone()))
        }
        Some(v) => {
            return Err(invalid(
                "tools",
                format!("expected an array, got {}", describe(v)),
            ))
        }
    };
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
        messages,
        stream: common.stream,
        include_usage: common.include_usage,
        max_tokens: common.max_tokens,
        tools,
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
    pub prompt: String,
    pub suffix: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    /// Every field but `model`, `prompt` and `suffix`, exactly as sent.
    pub parameters: Map<String, Value>,
}

/// `tools` of another API in chat's shape, each converted by `chat_tool` (given its index): `None`
/// when absent, null or empty; a 400 naming `tools` when it is not an array.
pub fn tools_as_chat(
    obj: &Map<String, Value>,
    chat_tool: impl Fn(usize, &Value) -> Result<Value, Error>,
) -> Result<Option<Value>, Error> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.is_empty() => Ok(None),
        Some(Value::Array(items)) => Ok(Some(Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, t)| chat_tool(i, t))
                .collect::<Result<_, _>>()?,
        ))),
        Some(v) => Err(invalid(
            "tools",
            format!("expected an array, got {}", describe(v)),
        )),
    }
}

/// Parses and checks a `/v1/completions` body.
pub fn completion(body: &[u8], limits: &Limits<'_>) -> Result<CompletionRequest, Error> {
    let mut obj = object_of(body)?;
    check_model(&obj, limits.model)?;
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
    for (field, text) in [("prompt", Some(&prompt)), ("suffix", suffix.as_ref())] {
        check_size(field, text.map_or(0, String::len), limits.max_content_bytes)?;
    }
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

pub fn object_of(body: &[u8]) -> Result<Map<String, Value>, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(Error::invalid(
            "the request body must be a JSON object",
            None,
        )),
    }
}

pub fn check_model(obj: &Map<String, Value>, model: &str) -> Result<(), Error> {
    match obj.get("model") {
        Some(Value::String(m)) if model_matches(m, model) => Ok(()),
        Some(Value::String(m)) => Err(Error::InvalidRequest {
            message: format!("model: the model `{m}` does not exist here; use `{model}`"),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }),
        Some(v) => Err(invalid(
            "model",
            format!("expected a string, got {}", describe(v)),
        )),
        None => Err(invalid("model", format!("required; use `{model}`"))),
    }
}

/// Refuses a text larger than one message may carry; never cuts it.
pub fn check_size(param: &str, size: usize, max: usize) -> Result<(), Error> {
    if size > max {
        return Err(Error::InvalidRequest {
            message: format!(
                "{param}: {size} bytes is more than the {max} bytes one message may carry"
            ),
            param: Some(param.to_owned()),
            code: Some("content_too_large"),
        });
    }
    Ok(())
}

/// Sampling parameters, `n`, streaming options and `stop`: the same for chat and completions.
fn check_common(obj: &Map<String, Value>, limits: &Limits<'_>) -> Result<Common, Error> {
    let max_completion = int_in(obj, "max_completion_tokens", 1, limits.max_tokens)?;
    let max_tokens = int_in(obj, "max_tokens", 1, limits.max_tokens)?;
    number_in(obj, "temperature", 0.0, 2.0)?;
    number_in(obj, "top_p", 0.0, 1.0)?;
    number_in(obj, "presence_penalty", -2.0, 2.0)?;
    number_in(obj, "frequency_penalty", -2.0, 2.0)?;
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
    check_stop(obj)?;
    Ok(Common {
        stream,
        include_usage,
        max_tokens: max_completion.or(max_tokens),
    })
}

/// The configured name, also as `name:latest` the way Ollama-style clients write it.
pub fn model_matches(requested: &str, configured: &str) -> bool {
    requested == configured
        || requested
            .strip_suffix(":latest")
            .is_some_and(|base| base == configured)
}

fn check_stop(obj: &Map<String, Value>) -> Result<(), Error> {
    match obj.get("stop") {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if items.len() <= 4 && items.iter().all(Value::is_string) => {
            Ok(())
        }
        Some(v) => Err(invalid(
            "stop",
            format!("expected a string or up to 4 strings, got {}", describe(v)),
        )),
    }
}

fn check_message(i: usize, message: &Value, max_content: usize) -> Result<(), Error> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = message else {
        return Err(invalid(
            &at,
            format!("expected an object, got {}", describe(message)),
        ));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
        Some(v) => {
            return Err(invalid(
                &format!("{at}.role"),
                format!(
                    "expected one of system, developer, user, assistant, tool, got {}",
                    describe(v)
                ),
            ))
        }
        None => return Err(invalid(&format!("{at}.role"), "required".into())),
    };
    let content_at = format!("{at}.content");
    let size = match m.get("content") {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                if part.get("type").and_then(Value::as_str).is_none() {
                    return Err(invalid(
                        &format!("{content_at}[{j}]"),
                        "expected a content part with a \"type\"".into(),
                    ));
                }
            }
            parts
                .iter()
                .map(|p| match p.get("text") {
                    Some(Value::String(t)) => t.len(),
                    _ => p.to_string().len(),
                })
                .sum()
        }
        None | Some(Value::Null) if role == "assistant" => 0,
        None | Some(Value::Null) => {
            return Err(invalid(&content_at, "required for this role".into()))
        }
        Some(v) => {
            return Err(invalid(
                &content_at,
                format!(
                    "expected a string or an array of content parts, got {}",
                    describe(v)
                ),
            ))
        }
    };
    check_size(&content_at, size, max_content)?;
    if role == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
        return Err(invalid(
            &format!("{at}.tool_call_id"),
            "required (a string) for tool messages".into(),
        ));
    }
    if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
        if !calls.is_array() {
            return Err(invalid(
                &format!("{at}.tool_calls"),
                "expected an array".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const LIMITS: Limits<'static> = Limits {
        model: "cursor-agent-local",
        max_tokens: 8192,
        max_content_bytes: 100,
    };

    fn check(body: Value) -> Result<ChatRequest, Error> {
        chat(body.to_string().as_bytes(), &LIMITS)
    }

    fn param_of(body: Value) -> String {
        match check(body).unwrap_err() {
            Error::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn base() -> Value {
        json!({"model": "cursor-agent-local", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut b = base();
        b[key] = value;
        b
    }

    #[test]
    fn void_minimal_body_passes_and_unknown_fields_pass_through() {
        let req = check(with("stream", json!(true))).unwrap();
        assert!(req.stream && !req.include_usage && req.max_tokens.is_none());
        let req = check(with("x_vendor", json!({"a": 1}))).unwrap();
        assert_eq!(req.parameters["x_vendor"], json!({"a": 1}));
        assert!(!req.parameters.contains_key("model"));
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(param_of(with("model", json!("gpt-4"))), "model");
        assert_eq!(param_of(with("messages", json!([]))), "messages");
        assert_eq!(param_of(with("max_tokens", json!(0))), "max_tokens");
        assert_eq!(param_of(with("max_tokens", json!(8193))), "max_tokens");
        assert_eq!(
            param_of(with("max_completion_tokens", json!(9000))),
            "max_completion_tokens"
        );
        assert_eq!(param_of(with("temperature", json!(2.5))), "temperature");
        assert_eq!(param_of(with("top_p", json!(-0.1))), "top_p");
        assert_eq!(
            param_of(with("presence_penalty", json!(3))),
            "presence_penalty"
        );
        assert_eq!(
            param_of(with("frequency_penalty", json!(-2.1))),
            "frequency_penalty"
        );
        assert_eq!(param_of(with("n", json!(2))), "n");
        assert_eq!(
            param_of(with("stream_options", json!({"include_usage": true}))),
            "stream_options"
        );
        assert_eq!(
            param_of(with("messages", json!([{"role": "robot", "content": "x"}]))),
            "messages[0].role"
        );
        assert_eq!(
            param_of(with(
                "messages",
                json!([{"role": "user", "content": "x".repeat(101)}])
            )),
            "messages[0].content"
        );
        assert_eq!(
            param_of(with("messages", json!([{"role": "tool", "content": "x"}]))),
            "messages[0].tool_call_id"
        );
        assert_eq!(
            param_of(with("tools", json!([{"type": "function"}]))),
            "tools[0]"
        );
    }

    #[test]
    fn tool_history_and_content_parts_are_accepted() {
        let req = check(with(
            "messages",
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ]),
        ))
        .unwrap();
        assert_eq!(req.messages.len(), 4);
        assert_eq!(req.messages[2]["tool_calls"][0]["id"], "c1");
    }

    #[test]
    fn content_at_the_limit_passes_unaltered() {
        let text = "é".repeat(50);
        let req = check(with("messages", json!([{"role": "user", "content": text}]))).unwrap();
        assert_eq!(req.messages[0]["content"], json!(text));
    }

    #[test]
    fn not_json_and_not_object() {
        assert!(chat(b"{", &LIMITS)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(chat(b"[]", &LIMITS)
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
    }

    #[test]
    fn logprobs_are_refused_by_name() {
        assert_eq!(param_of(with("logprobs", json!(true))), "logprobs");
        assert_eq!(param_of(with("top_logprobs", json!(3))), "top_logprobs");
        assert!(check(with("logprobs", json!(false))).is_ok());
        assert_eq!(param_of(with("n", json!(2))), "n");
    }
}
