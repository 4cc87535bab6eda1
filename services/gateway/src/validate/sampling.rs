//! Where the APIs differ ([`Dialect`]), and the sampling parameters every API checks alike.
use serde_json::{Map, Value};

use crate::error::Error;

use super::{cap_range, describe, invalid, Limits};

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
