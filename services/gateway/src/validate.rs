//! Checks a chat request against the rules in docs/http-api.md ("Validation"). Content is never altered or truncated: a
//! request either passes as sent or gets a 400 naming the field and what it accepts. Unknown
//! fields pass through to the agent untouched, as OpenAI-compatible servers accept them.
//!
//! The rules for a message list, roles, content, tools and sampling parameters are written once
//! here ([`messages`], [`tools`], [`sampling`]) and used by the OpenAI routes and by Ollama's
//! `/api/chat` and `/api/generate` (`ollama/`). A [`Dialect`] says how each API spells and
//! places the fields, so that an error names the field as the client sent it (`temperature` for
//! OpenAI, `options.temperature` for Ollama); each API renders the error in its own shape.
use serde_json::{Map, Value};

use crate::error::Error;

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

/// Where the APIs differ in what the shared rules check.
pub struct Dialect {
    /// The path of the object holding the sampling parameters, as the client writes it: empty
    /// for OpenAI (top level), `options.` for Ollama.
    pub options: &'static str,
    /// The keys of the answer's token cap, the first given one winning.
    pub max_tokens: &'static [&'static str],
    /// Values of the token cap meaning "no cap" (Ollama: -1 none, -2 fill the context).
    pub no_cap: &'static [i64],
    /// The most stop sequences accepted, when bounded.
    pub max_stops: Option<usize>,
    pub roles: &'static [&'static str],
    /// `content` may be an array of typed parts, not only a string.
    pub content_parts: bool,
    /// `content` may be left out for every role, not only for the assistant.
    pub content_optional: bool,
    /// Messages may carry `images`, base64 strings that count towards the content's size.
    pub images: bool,
    /// A `tool` message must name the call it answers; Ollama's are matched to calls by order.
    pub tool_call_id: bool,
}

pub const OPENAI: Dialect = Dialect {
    options: "",
    max_tokens: &["max_completion_tokens", "max_tokens"],
    no_cap: &[],
    max_stops: Some(4),
    roles: &[
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "function",
    ],
    content_parts: true,
    content_optional: false,
    images: false,
    tool_call_id: true,
};

pub const OLLAMA: Dialect = Dialect {
    options: "options.",
    max_tokens: &["num_predict"],
    no_cap: &[-1, -2],
    max_stops: None,
    roles: &["system", "user", "assistant", "tool"],
    content_parts: false,
    content_optional: true,
    images: true,
    tool_call_id: false,
};

/// Ranges of the numeric sampling parameters, the same in every API that has them.
const SAMPLING: &[(&str, f64, f64)] = &[
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
];

/// Sampling parameters that passed [`sampling`].
#[derive(Debug, Default)]
pub struct Sampling {
    /// The numeric parameters given, by their OpenAI names, within their ranges.
    pub numbers: Vec<(&'static str, f64)>,
    pub max_tokens: Option<u64>,
    /// The stop sequences, always as an array.
    pub stop: Option<Vec<Value>>,
}

pub fn invalid(param: &str, message: String) -> Error {
    Error::invalid(format!("{param}: {message}"), Some(param.to_owned()))
}

/// A value a client sent, for a refusal's message. Refusals are logged (`refusals.rs`), so the
/// description never quotes what could be prompt text: numbers, booleans and null as they are,
/// a string only when it is one short word (a role, a type, a mode), else its size; objects
/// and arrays by kind.
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Array(items) if items.len() == 1 => "an array of 1 item".to_owned(),
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::Object(_) => "an object".to_owned(),
        other => other.to_string(),
    }
}

/// A string a client sent, quoted when it is one short word, else described by its size.
pub fn quoted(s: &str) -> String {
    let word = s.len() <= 40 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if word {
        format!("{s:?}")
    } else {
        format!("a string of {} bytes", s.len())
    }
}

/// What kind of value `v` is, for a field that carries the prompt itself (`messages`, a
/// message, an input item), where not even one word is quoted.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        Value::Number(_) => "a number",
        Value::Bool(_) => "true or false",
        Value::Null => "null",
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
    bool_or(obj, key, false)
}

/// A true-or-false field, `default` when absent or null.
pub fn bool_or(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(
            key,
            format!("expected true or false, got {}", describe(v)),
        )),
    }
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

/// Checks `tools`: an array of `{"type": "function", "function": {"name": …}}`, the shape both
/// OpenAI's and Ollama's chats use; true when given (false when absent or null). The tools stay
/// where they are: nothing is copied to check them.
pub fn tools(obj: &Map<String, Value>) -> Result<bool, Error> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(false),
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
            Ok(true)
        }
        Some(v) => Err(invalid(
            "tools",
            format!("expected an array, got {}", describe(v)),
        )),
    }
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

/// `tools` of another API in chat's shape, each converted by `chat_tool` (given its index; `None`
/// leaves it out of the chat tools): `None` when absent, null or nothing is left; a 400 naming
/// `tools` when it is not an array.
pub fn tools_as_chat(
    obj: &Map<String, Value>,
    mut chat_tool: impl FnMut(usize, &Value) -> Result<Option<Value>, Error>,
) -> Result<Option<Value>, Error> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut chat = Vec::with_capacity(items.len());
            for (i, tool) in items.iter().enumerate() {
                chat.extend(chat_tool(i, tool)?);
            }
            Ok((!chat.is_empty()).then_some(Value::Array(chat)))
        }
        Some(v) => Err(invalid(
            "tools",
            format!("expected an array, got {}", describe(v)),
        )),
    }
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

/// The `model` a body names: a string is required; whether it is served is the preamble's
/// question (`models.rs`).
pub fn model_of(obj: &Map<String, Value>) -> Result<String, Error> {
    match obj.get("model") {
        Some(Value::String(m)) => Ok(m.clone()),
        Some(v) => Err(invalid(
            "model",
            format!("expected a string, got {}", describe(v)),
        )),
        None => Err(invalid("model", "required (a model name)".into())),
    }
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

/// Checks the sampling parameters in `params` (the request for OpenAI, its `options` for
/// Ollama): the numeric ranges of [`SAMPLING`], the token cap (at least 1, within
/// `MAX_TOKENS_LIMIT` when set), and the stop sequences.
pub fn sampling(
    dialect: &Dialect,
    params: &Map<String, Value>,
    limits: &Limits,
) -> Result<Sampling, Error> {
    let name = |key: &str| format!("{}{key}", dialect.options);
    let mut out = Sampling::default();
    for &(key, lo, hi) in SAMPLING {
        match params.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => out.numbers.push((key, x)),
                _ => {
                    return Err(invalid(
                        &name(key),
                        format!("expected a number from {lo} to {hi}, got {}", describe(v)),
                    ))
                }
            },
        }
    }
    for key in dialect.max_tokens {
        let cap = match params.get(*key) {
            None | Some(Value::Null) => None,
            Some(v) if v.as_i64().is_some_and(|n| dialect.no_cap.contains(&n)) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && limits.max_tokens.is_none_or(|max| n <= max) => Some(n),
                _ => {
                    let no_cap: String = dialect.no_cap.iter().map(|n| format!("{n}, ")).collect();
                    return Err(invalid(
                        &name(key),
                        format!(
                            "expected {no_cap}{}, got {}",
                            cap_range(limits),
                            describe(v)
                        ),
                    ));
                }
            },
        };
        out.max_tokens = out.max_tokens.or(cap);
    }
    out.stop = match params.get("stop") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(vec![Value::String(s.clone())]),
        Some(Value::Array(items))
            if items.iter().all(Value::is_string)
                && dialect.max_stops.is_none_or(|max| items.len() <= max) =>
        {
            Some(items.clone())
        }
        Some(v) => {
            let count = dialect
                .max_stops
                .map_or("strings".to_owned(), |max| format!("up to {max} strings"));
            return Err(invalid(
                &name("stop"),
                format!("expected a string or {count}, got {}", describe(v)),
            ));
        }
    };
    Ok(out)
}

/// Checks each message of a chat: an object with a known role, content of the accepted shape,
/// a tool result naming its call where the API asks for it, and tool calls as an array of named
/// functions. The messages are not changed, and their size is the context window's question.
pub fn messages(dialect: &Dialect, messages: &[Value]) -> Result<(), Error> {
    for (i, message) in messages.iter().enumerate() {
        check_message(dialect, i, message)?;
    }
    Ok(())
}

fn check_message(dialect: &Dialect, i: usize, message: &Value) -> Result<(), Error> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = message else {
        return Err(invalid(
            &at,
            format!("expected an object, got {}", kind_of(message)),
        ));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) if dialect.roles.contains(&r.as_str()) => r.as_str(),
        Some(v) => {
            return Err(invalid(
                &format!("{at}.role"),
                format!(
                    "expected one of {}, got {}",
                    dialect.roles.join(", "),
                    describe(v)
                ),
            ))
        }
        None => return Err(invalid(&format!("{at}.role"), "required".into())),
    };
    let content_at = format!("{at}.content");
    match m.get("content") {
        Some(Value::String(_)) => {}
        Some(Value::Array(parts)) if dialect.content_parts => {
            for (j, part) in parts.iter().enumerate() {
                if part.get("type").and_then(Value::as_str).is_none() {
                    return Err(invalid(
                        &format!("{content_at}[{j}]"),
                        "expected a content part with a \"type\"".into(),
                    ));
                }
            }
        }
        None | Some(Value::Null) if dialect.content_optional || role == "assistant" => {}
        None | Some(Value::Null) => {
            return Err(invalid(&content_at, "required for this role".into()))
        }
        Some(v) => {
            let shapes = if dialect.content_parts {
                "a string or an array of content parts"
            } else {
                "a string"
            };
            return Err(invalid(
                &content_at,
                format!("expected {shapes}, got {}", describe(v)),
            ));
        }
    };
    if dialect.images {
        match m.get("images") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (j, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        return Err(invalid(
                            &format!("{at}.images[{j}]"),
                            format!("expected a base64 string, got {}", describe(item)),
                        ));
                    }
                }
            }
            Some(v) => {
                return Err(invalid(
                    &format!("{at}.images"),
                    format!("expected an array of base64 strings, got {}", describe(v)),
                ))
            }
        }
    }
    if dialect.tool_call_id
        && role == "tool"
        && !m.get("tool_call_id").is_some_and(Value::is_string)
    {
        return Err(invalid(
            &format!("{at}.tool_call_id"),
            "required (a string) for tool messages".into(),
        ));
    }
    if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
        let Value::Array(calls) = calls else {
            return Err(invalid(
                &format!("{at}.tool_calls"),
                "expected an array".into(),
            ));
        };
        for (j, call) in calls.iter().enumerate() {
            if !call.pointer("/function/name").is_some_and(Value::is_string) {
                return Err(invalid(
                    &format!("{at}.tool_calls[{j}].function.name"),
                    "required (a string)".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// With `MAX_TOKENS_LIMIT=8192` set.
    const LIMITS: Limits = Limits {
        max_tokens: Some(8192),
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
        assert_eq!(param_of(with("model", json!(4))), "model");
        assert_eq!(check(with("model", json!("gpt-4"))).unwrap().model, "gpt-4");
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
    fn a_message_of_any_size_passes_unaltered() {
        // aider puts whole files in one message; the context window decides, in tokens.
        let text = "é".repeat(200_000);
        let req = check(with("messages", json!([{"role": "user", "content": text}]))).unwrap();
        assert_eq!(req.messages[0]["content"], json!(text));
    }

    #[test]
    fn without_max_tokens_limit_any_token_cap_passes_to_the_context_check() {
        let open = Limits { max_tokens: None };
        for n in [1, 32_000, 300_000] {
            let body = with("max_tokens", json!(n)).to_string();
            assert_eq!(chat(body.as_bytes(), &open).unwrap().max_tokens, Some(n));
        }
        let err = chat(with("max_tokens", json!(0)).to_string().as_bytes(), &open).unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_tokens: expected a whole number of at least 1, got 0"
        );
        let err = check(with("max_tokens", json!(32_000))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_tokens: expected a whole number from 1 to 8192 (LOCAL_PROVIDER_MAX_TOKENS_LIMIT), got 32000"
        );
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

    /// The same rule through both front ends: OpenAI's chat (`body` merged into a valid request)
    /// and Ollama's (`ollama` merged into a valid `/api/chat` body). Each returns the field the
    /// error names, or "" when the body passed.
    fn both(openai: Value, ollama: Value) -> (String, String) {
        fn merge(mut base: Value, extra: Value) -> Value {
            if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
                b.extend(e);
            }
            base
        }
        let param = |r: Result<(), Error>| match r {
            Ok(()) => String::new(),
            Err(Error::InvalidRequest { param, message, .. }) => {
                let param = param.unwrap_or_default();
                // Both APIs' messages start with the field, which is all Ollama's shape shows.
                assert!(message.starts_with(&format!("{param}: ")), "{message}");
                param
            }
            Err(other) => panic!("unexpected {other:?}"),
        };
        let open = check(merge(base(), openai)).map(drop);
        let mut body = merge(
            json!({"model": "cursor-agent-local", "messages": [{"role": "user", "content": "hi"}]}),
            ollama,
        );
        let olla =
            crate::ollama::chat::job("cursor-agent-local", body.as_object_mut().unwrap(), &LIMITS)
                .map(drop);
        (param(open), param(olla))
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    fn msgs(m: Value) -> Value {
        json!({"messages": [m]})
    }

    #[test]
    fn rule_messages_are_objects() {
        assert_eq!(
            both(msgs(json!("hi")), msgs(json!("hi"))),
            pair("messages[0]", "messages[0]")
        );
    }

    #[test]
    fn rule_role_is_one_the_api_knows() {
        let robot = msgs(json!({"role": "robot", "content": "x"}));
        assert_eq!(
            both(robot.clone(), robot),
            pair("messages[0].role", "messages[0].role")
        );
        let none = msgs(json!({"content": "x"}));
        assert_eq!(
            both(none.clone(), none),
            pair("messages[0].role", "messages[0].role")
        );
        // `developer` is OpenAI's alone.
        let dev = msgs(json!({"role": "developer", "content": "x"}));
        assert_eq!(both(dev.clone(), dev), pair("", "messages[0].role"));
    }

    #[test]
    fn rule_content_has_the_apis_shape() {
        let number = msgs(json!({"role": "user", "content": 5}));
        assert_eq!(
            both(number.clone(), number),
            pair("messages[0].content", "messages[0].content")
        );
        // Typed parts are OpenAI's; Ollama sends text and `images`.
        let parts = msgs(json!({"role": "user", "content": [{"type": "text", "text": "x"}]}));
        assert_eq!(both(parts.clone(), parts), pair("", "messages[0].content"));
        let untyped = msgs(json!({"role": "user", "content": [{"text": "x"}]}));
        assert_eq!(both(untyped, json!({})).0, "messages[0].content[0]");
        // A user message without content: OpenAI requires it, Ollama takes it as empty.
        let empty = msgs(json!({"role": "user"}));
        assert_eq!(both(empty.clone(), empty), pair("messages[0].content", ""));
    }

    #[test]
    fn rule_images_are_base64_strings() {
        let image = msgs(json!({"role": "user", "content": "x", "images": ["A".repeat(400_000)]}));
        assert_eq!(both(json!({}), image).1, "");
        let bad = msgs(json!({"role": "user", "content": "x", "images": [5]}));
        assert_eq!(both(json!({}), bad).1, "messages[0].images[0]");
    }

    #[test]
    fn rule_tool_results_name_their_call_where_the_api_asks() {
        let tool = msgs(json!({"role": "tool", "content": "sunny"}));
        assert_eq!(
            both(tool.clone(), tool),
            pair("messages[0].tool_call_id", "")
        );
    }

    #[test]
    fn rule_tool_calls_are_named_functions() {
        let not_array = msgs(json!({"role": "assistant", "content": "", "tool_calls": {}}));
        assert_eq!(
            both(not_array.clone(), not_array),
            pair("messages[0].tool_calls", "messages[0].tool_calls")
        );
        let nameless =
            msgs(json!({"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}));
        let at = "messages[0].tool_calls[0].function.name";
        assert_eq!(both(nameless.clone(), nameless), pair(at, at));
    }

    #[test]
    fn rule_tools_are_functions() {
        let bad = json!({"tools": [{"type": "function"}]});
        assert_eq!(both(bad.clone(), bad), pair("tools[0]", "tools[0]"));
        let not_array = json!({"tools": "f"});
        assert_eq!(both(not_array.clone(), not_array), pair("tools", "tools"));
        let good = json!({"tools": [{"type": "function", "function": {"name": "f"}}]});
        assert_eq!(both(good.clone(), good), pair("", ""));
    }

    #[test]
    fn rule_sampling_ranges() {
        for (key, bad, good) in [
            ("temperature", 2.5, 2.0),
            ("top_p", -0.1, 1.0),
            ("presence_penalty", 3.0, -2.0),
            ("frequency_penalty", -2.1, 2.0),
        ] {
            assert_eq!(
                both(json!({key: bad}), json!({"options": {key: bad}})),
                pair(key, &format!("options.{key}"))
            );
            assert_eq!(
                both(json!({key: good}), json!({"options": {key: good}})),
                pair("", "")
            );
        }
    }

    #[test]
    fn rule_token_cap_within_the_limit() {
        for n in [json!(0), json!(8193), json!("8")] {
            assert_eq!(
                both(
                    json!({"max_tokens": n}),
                    json!({"options": {"num_predict": n}})
                ),
                pair("max_tokens", "options.num_predict")
            );
        }
        assert_eq!(
            both(
                json!({"max_tokens": 8192}),
                json!({"options": {"num_predict": 8192}})
            ),
            pair("", "")
        );
        // Ollama's "no cap" values are Ollama's alone.
        assert_eq!(
            both(
                json!({"max_tokens": -1}),
                json!({"options": {"num_predict": -1}})
            ),
            pair("max_tokens", "")
        );
    }

    #[test]
    fn rule_stop_is_strings() {
        assert_eq!(
            both(json!({"stop": [1]}), json!({"options": {"stop": [1]}})),
            pair("stop", "options.stop")
        );
        let five = json!(["a", "b", "c", "d", "e"]);
        // OpenAI takes up to 4.
        assert_eq!(
            both(json!({"stop": five}), json!({"options": {"stop": five}})),
            pair("stop", "")
        );
        assert_eq!(
            both(json!({"stop": "x"}), json!({"options": {"stop": "x"}})),
            pair("", "")
        );
    }

    #[test]
    fn rule_stream_is_true_or_false() {
        assert_eq!(
            both(json!({"stream": "yes"}), json!({"stream": "yes"})),
            pair("stream", "stream")
        );
    }

    #[test]
    fn rule_no_log_probabilities() {
        for key in ["logprobs", "top_logprobs"] {
            let v = if key == "logprobs" {
                json!(true)
            } else {
                json!(2)
            };
            assert_eq!(both(json!({key: v}), json!({key: v})), pair(key, key));
        }
    }

    #[test]
    fn ollama_parameters_reach_the_agent_by_openai_names() {
        let mut body = json!({"model": "cursor-agent-local", "stream": false,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"temperature": 1, "num_predict": 64, "stop": "\n", "seed": 7},
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        let job =
            crate::ollama::chat::job("cursor-agent-local", body.as_object_mut().unwrap(), &LIMITS)
                .unwrap()
                .unwrap();
        assert!(!job.ask.stream);
        assert_eq!(job.ask.max_tokens, Some(64));
        assert_eq!(job.scopes, vec!["chat", "tools"]);
        let provider_shared::bridge::Payload::Chat { parameters, .. } = job.payload else {
            panic!("not a chat")
        };
        assert_eq!(parameters["temperature"], json!(1.0));
        assert_eq!(parameters["max_tokens"], 64);
        assert_eq!(parameters["stop"], json!(["\n"]));
        assert_eq!(parameters["seed"], 7);
        assert_eq!(parameters["tools"][0]["function"]["name"], "f");
        let mut empty = json!({"model": "cursor-agent-local", "messages": []});
        assert!(
            crate::ollama::chat::job("m", empty.as_object_mut().unwrap(), &LIMITS)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn refusal_messages_never_quote_prompt_text() {
        // Refusals are logged; whatever a client puts where it does not belong stays out.
        let secret = "the secret plan for tomorrow";
        let user = json!([{"role": "user", "content": "hi"}]);
        let chats = [
            json!({"model": "m", "messages": secret}),
            json!({"model": "m", "messages": [secret]}),
            json!({"model": "m", "messages": ["word"]}),
            json!({"model": "m", "messages": [{"role": secret, "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": {"text": secret}}]}),
            json!({"model": "m", "messages": user, "temperature": secret}),
            json!({"model": "m", "messages": user, "tool_choice": [secret]}),
            json!({"model": "m", "messages": user, "stop": [secret, 1]}),
            json!({"model": {"name": secret}, "messages": user}),
        ];
        for body in chats {
            let err = check(body.clone()).unwrap_err().to_string();
            assert!(
                !err.contains("secret") && !err.contains("word"),
                "{body} → {err}"
            );
        }
        let limits = Limits { max_tokens: None };
        for body in [
            json!({"model": "m", "input": [secret]}),
            json!({"model": "m", "input": [{"type": secret}]}),
            json!({"model": "m", "input": [{"role": secret, "content": "x"}]}),
            json!({"model": "m", "input": "x", "instructions": {"a": secret}}),
            json!({"model": "m", "input": "x", "tools": [{"type": secret}]}),
        ] {
            let err = crate::responses::convert::request(body.to_string().as_bytes(), &limits)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("secret"), "{body} → {err}");
        }
        for body in [
            json!({"model": "m", "max_tokens": 5, "messages": secret}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": secret, "content": "x"}]}),
            json!({"model": "m", "max_tokens": 5, "system": {"a": secret}, "messages": user}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": secret}]}]}),
        ] {
            let err = crate::anthropic::convert::request(
                body.as_object().unwrap(),
                &limits,
                crate::anthropic::convert::Purpose::Generate,
            )
            .unwrap_err()
            .to_string();
            assert!(!err.contains("secret"), "{body} → {err}");
        }
        // One word that names a value is quoted, so the message stays useful.
        assert_eq!(describe(&json!("robot")), "\"robot\"");
        assert_eq!(describe(&json!("two words")), "a string of 9 bytes");
        assert_eq!(describe(&json!({"a": 1})), "an object");
        assert_eq!(describe(&json!([1, 2])), "an array of 2 items");
        assert_eq!(describe(&json!(7)), "7");
    }

    #[test]
    fn logprobs_are_refused_by_name() {
        assert_eq!(param_of(with("logprobs", json!(true))), "logprobs");
        assert_eq!(param_of(with("top_logprobs", json!(3))), "top_logprobs");
        assert!(check(with("logprobs", json!(false))).is_ok());
        assert_eq!(param_of(with("n", json!(2))), "n");
    }
}
