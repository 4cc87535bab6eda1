//! One field at a time, and how a refusal describes what the client sent.
use serde_json::{Map, Value};

use crate::error::Error;

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
