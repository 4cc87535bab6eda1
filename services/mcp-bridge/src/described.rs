//! What `wait_for_request` returns for a request it hands out, as JSON text: the hand-out's
//! terms, then the payload's own fields. The messages and parameters are written as the text
//! they came as from the gateway (never decoded and encoded again); a delta writes the messages
//! it hands, each its own text.
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use provider_shared::bridge::Payload;

/// JSON text of a tool's result.
pub type Json = Box<RawValue>;

/// `value` as JSON text. Encoding these values cannot fail (every key is a string); if it did,
/// the result would be `null`.
pub fn json_text<T: Serialize + ?Sized>(value: &T) -> Json {
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

/// The hand-out's terms, as `describe` decided them.
#[derive(Serialize)]
pub struct Terms<'a> {
    pub status: &'static str,
    pub request_id: &'a str,
    pub lease_id: &'a str,
    pub lease_seconds: f64,
    pub attempt: u32,
    pub session_id: Option<&'a str>,
    pub stream: bool,
    pub answer_with: &'static str,
}

/// A hand-out's JSON: its terms, the payload's fields, and what was planned of the conversation.
#[derive(Serialize)]
struct Described<'a> {
    #[serde(flatten)]
    terms: Terms<'a>,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a RawValue>,
    parameters: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suffix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    #[serde(flatten)]
    conversation: Map<String, Value>,
}

/// The hand-out of `payload` under `terms`: its messages whole, or only `handed` (the messages
/// of a delta, as JSON text) when given.
pub fn describe(
    terms: Terms<'_>,
    payload: &Payload,
    handed: Option<&RawValue>,
    conversation: Map<String, Value>,
) -> Json {
    let mut out = Described {
        terms,
        kind: payload.kind(),
        messages: payload.messages().map(|m| handed.unwrap_or(m.raw())),
        parameters: payload.parameters().raw(),
        prompt: None,
        suffix: None,
        system: None,
        conversation,
    };
    if let Payload::Completion {
        prompt,
        suffix,
        system,
        ..
    } = payload
    {
        out.prompt = Some(prompt);
        out.suffix = suffix.as_deref();
        out.system = system.as_deref();
    }
    json_text(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use provider_shared::bridge::RawJson;
    use serde_json::json;

    fn terms() -> Terms<'static> {
        Terms {
            status: "request",
            request_id: "r1",
            lease_id: "lease-1",
            lease_seconds: 60.0,
            attempt: 1,
            session_id: None,
            stream: true,
            answer_with: "text",
        }
    }

    #[test]
    fn the_prompt_is_written_as_the_bytes_it_came_as() {
        // Bytes no encoder of decoded values would write: they reach the agent all the same.
        let messages = r#"[{"content":"caf\u00e9",  "role":"user","n":1.0}]"#;
        let parameters = r#"{"stream":true,"tools":[{"z":1,"a":2}]}"#;
        let payload = Payload::Chat {
            messages: RawJson::from_text(messages.into()).unwrap(),
            parameters: RawJson::from_text(parameters.into()).unwrap(),
        };
        let conversation = Map::from_iter([("messages_from".into(), json!(0))]);
        let text = describe(terms(), &payload, None, conversation);
        assert!(
            text.get().contains(&format!(r#""messages":{messages}"#)),
            "{text}"
        );
        assert!(
            text.get()
                .contains(&format!(r#""parameters":{parameters}"#)),
            "{text}"
        );
        let v: Value = serde_json::from_str(text.get()).unwrap();
        assert_eq!(v["status"], "request");
        assert_eq!(v["kind"], "chat");
        assert_eq!(v["messages_from"], 0);
        assert_eq!(v["messages"][0]["content"], "café");
        // A delta hands only the messages given.
        let items = payload.messages().unwrap().items().unwrap();
        let handed = json_text(&items[1..]);
        let v: Value =
            serde_json::from_str(describe(terms(), &payload, Some(&handed), Map::new()).get())
                .unwrap();
        assert_eq!(v["messages"], json!([]));
    }

    #[test]
    fn a_completion_has_its_texts_and_no_messages() {
        let payload = Payload::Completion {
            prompt: "fn main() {".into(),
            suffix: None,
            system: Some("code".into()),
            parameters: RawJson::from_text("{}".into()).unwrap(),
        };
        let v: Value =
            serde_json::from_str(describe(terms(), &payload, None, Map::new()).get()).unwrap();
        assert_eq!(v["kind"], "completion");
        assert_eq!(v["prompt"], "fn main() {");
        assert_eq!(v["system"], "code");
        assert!(v.get("suffix").is_none() && v.get("messages").is_none());
    }
}
