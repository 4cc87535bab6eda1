//! How frames are named in logs: their type, request id and size, never their contents (a frame
//! may carry a prompt or an answer, which no log may hold).
use std::fmt;

use serde::Serialize;

/// What a log line may say of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSummary {
    /// The frame's `type`.
    pub kind: String,
    /// The request it belongs to, when it names one.
    pub id: Option<String>,
    /// Its size as JSON text.
    pub bytes: usize,
}

impl FrameSummary {
    /// Summarises any frame that serialises to a JSON object with `type` (and maybe `id`).
    pub fn of(frame: &impl Serialize) -> Self {
        let value = serde_json::to_value(frame).unwrap_or_default();
        let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            kind: text("type").unwrap_or_else(|| "unknown".to_owned()),
            id: text("id"),
            bytes: value.to_string().len(),
        }
    }
}

/// A decoding error's message without the values it quotes: serde names an offending string in
/// full (`invalid type: string "…", expected u64`), and in a frame that string may be a prompt.
pub fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in message.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    quoted = false;
                    out.push_str("…\"");
                }
                _ => escaped = false,
            }
        } else {
            if c == '"' {
                quoted = true;
            }
            out.push(c);
        }
    }
    if quoted {
        out.push('…');
    }
    out
}

impl fmt::Display for FrameSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(id) = &self.id {
            write!(f, " id={id}")?;
        }
        write!(f, " ({} bytes)", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::{BridgeFrame, ModelInvoke, ModelMeta, Payload};
    use serde_json::json;

    #[test]
    fn decoding_errors_lose_the_values_they_quote() {
        let err = serde_json::from_str::<u64>(r#""my \"secret\" prompt""#).unwrap_err();
        assert!(err.to_string().contains("secret"), "serde quotes it: {err}");
        let clean = without_values(&err.to_string());
        assert!(
            !clean.contains("secret") && clean.contains("expected u64"),
            "{clean}"
        );
        assert_eq!(without_values("missing field `id`"), "missing field `id`");
        assert_eq!(without_values(r#"cut "off"#), r#"cut "…"#);
    }

    #[test]
    fn names_type_id_and_size_but_no_content() {
        let frame = BridgeFrame::ModelInvoke(ModelInvoke {
            id: "chatcmpl-1".into(),
            session_id: None,
            model_meta: ModelMeta {
                provider: "p".into(),
                label: "l".into(),
                requested_scopes: vec![],
            },
            payload: Payload::Chat {
                messages: crate::bridge::RawJson::encode(&json!([
                    {"role": "user", "content": "my secret prompt"}
                ]))
                .unwrap(),
                parameters: crate::bridge::RawJson::encode(&json!({})).unwrap(),
            },
        });
        let summary = FrameSummary::of(&frame);
        let line = summary.to_string();
        assert!(line.starts_with("model_invoke id=chatcmpl-1 ("), "{line}");
        assert_eq!(summary.bytes, frame.to_text().len());
        assert!(!line.contains("secret"), "{line}");
        let ping = FrameSummary::of(&BridgeFrame::Ping { ts: 1 });
        assert_eq!((ping.kind.as_str(), ping.id), ("ping", None));
    }
}
