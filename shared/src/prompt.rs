//! The prompt of a request as it travels the chain: its messages and parameters are JSON text,
//! encoded once by the gateway and carried as those bytes through bridge-agent to mcp-bridge,
//! never decoded into a tree on the way (docs/ARCHITECTURE.md, "Fixed costs per chat").
//!
//! The wire format is the one docs/PROTOCOL.md gives for `payload`, byte for byte: an object
//! tagged by `kind`. serde's own internally tagged enums buffer the object before decoding it,
//! and raw JSON cannot be read back from that buffer, so [`Payload`] decodes its fields in any
//! order itself (`kind` first or not).
use std::fmt;
use std::io;
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// JSON text carried as it came, shared between holders: cloning it copies no bytes.
///
/// An `Arc` of the boxed text, not an `Arc<RawValue>`: decoding makes the box (one copy of the
/// bytes out of the frame), and an `Arc<RawValue>` would copy them once more into the `Arc`.
#[derive(Clone)]
pub struct RawJson(Arc<Box<RawValue>>);

impl RawJson {
    /// `value` encoded as compact JSON (serde_json's encoding, the same as `to_string`).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|raw| Self(Arc::new(raw)))
    }

    /// Checked JSON text, taken as it is (whitespace and all).
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(|raw| Self(Arc::new(raw)))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// Bytes of JSON text.
    pub fn len(&self) -> usize {
        self.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.get().is_empty()
    }

    /// Decodes the text: only where the prompt is read (counting, sampling, tests).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    /// The items of a JSON array, each its own text borrowed from this one (not decoded).
    pub fn items(&self) -> Result<Vec<&RawValue>, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    /// Whether both hold the same bytes in memory (not merely equal text).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    fn starts_with(&self, c: char) -> bool {
        self.get().starts_with(c)
    }
}

impl PartialEq for RawJson {
    /// Equal text: the prompt is compared as the bytes that travel.
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|raw| Self(Arc::new(raw)))
    }
}

/// What is asked of the agent, by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// A chat: the client's messages (a JSON array), unchanged, and its generation parameters
    /// (a JSON object: `max_tokens`, `temperature`, `top_p`, `stream`, `tools`, `tool_choice`,
    /// …), unchanged.
    Chat {
        messages: RawJson,
        parameters: RawJson,
    },
    /// A text completion, usually fill-in-the-middle for autocomplete: the text before the cursor
    /// (`prompt`), the text after it (`suffix`, when given) and an optional `system` instruction.
    /// The agent answers with the text that goes between them, nothing else.
    Completion {
        prompt: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suffix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        parameters: RawJson,
    },
}

impl Payload {
    /// `chat` or `completion`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Chat { .. } => "chat",
            Payload::Completion { .. } => "completion",
        }
    }

    pub fn parameters(&self) -> &RawJson {
        match self {
            Payload::Chat { parameters, .. } | Payload::Completion { parameters, .. } => parameters,
        }
    }

    /// A chat's messages; none for a completion.
    pub fn messages(&self) -> Option<&RawJson> {
        match self {
            Payload::Chat { messages, .. } => Some(messages),
            Payload::Completion { .. } => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Kind,
    Messages,
    Parameters,
    Prompt,
    Suffix,
    System,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Chat,
    Completion,
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PayloadVisitor)
    }
}

struct PayloadVisitor;

/// Sets a field once, as serde's derived decoders do.
fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::duplicate_field(name));
    }
    Ok(())
}

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a payload object with a `kind`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut kind = None;
        let (mut messages, mut parameters) = (None, None);
        // A completion's texts are small; held decoded until `kind` says whether they count.
        let (mut prompt, mut suffix, mut system) = (None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Kind => once(&mut kind, "kind", map.next_value::<Kind>()?)?,
                Field::Messages => once(&mut messages, "messages", map.next_value::<RawJson>()?)?,
                Field::Parameters => {
                    once(&mut parameters, "parameters", map.next_value::<RawJson>()?)?
                }
                Field::Prompt => once(&mut prompt, "prompt", map.next_value::<Value>()?)?,
                Field::Suffix => once(&mut suffix, "suffix", map.next_value::<Value>()?)?,
                Field::System => once(&mut system, "system", map.next_value::<Value>()?)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let parameters = parameters.ok_or_else(|| de::Error::missing_field("parameters"))?;
        if !parameters.starts_with('{') {
            return Err(de::Error::invalid_type(
                de::Unexpected::Other("JSON other than an object"),
                &"a map of parameters",
            ));
        }
        match kind.ok_or_else(|| de::Error::missing_field("kind"))? {
            Kind::Chat => {
                let messages = messages.ok_or_else(|| de::Error::missing_field("messages"))?;
                if !messages.starts_with('[') {
                    return Err(de::Error::invalid_type(
                        de::Unexpected::Other("JSON other than an array"),
                        &"a sequence of messages",
                    ));
                }
                Ok(Payload::Chat {
                    messages,
                    parameters,
                })
            }
            Kind::Completion => {
                let text = |value: Option<Value>| match value {
                    None | Some(Value::Null) => Ok(None),
                    Some(value) => String::deserialize(value)
                        .map(Some)
                        .map_err(de::Error::custom),
                };
                Ok(Payload::Completion {
                    prompt: text(prompt)?.ok_or_else(|| de::Error::missing_field("prompt"))?,
                    suffix: text(suffix)?,
                    system: text(system)?,
                    parameters,
                })
            }
        }
    }
}

/// Counts what is written, keeping nothing: the length of an encoding without making it. Raw
/// JSON is written as one slice, so counting it costs nothing per byte.
#[derive(Default)]
pub struct Counter(pub u64);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of `value` encoded as compact JSON, without encoding it into memory.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> u64 {
    let mut counter = Counter::default();
    // Writing into a counter cannot fail; a value that cannot be serialised counts what was written.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn chat(messages: &str, parameters: &str) -> Payload {
        Payload::Chat {
            messages: RawJson::from_text(messages.into()).unwrap(),
            parameters: RawJson::from_text(parameters.into()).unwrap(),
        }
    }

    #[test]
    fn the_payload_keeps_the_wire_format_of_a_tagged_enum() {
        let payload = chat(r#"[{"role":"user","content":"hi"}]"#, r#"{"stream":true}"#);
        assert_eq!(
            serde_json::to_string(&payload).unwrap(),
            r#"{"kind":"chat","messages":[{"role":"user","content":"hi"}],"parameters":{"stream":true}}"#
        );
        // What serde's own tagged enum of decoded values wrote, for any payload.
        #[derive(Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum Before {
            Completion {
                prompt: String,
                #[serde(skip_serializing_if = "Option::is_none")]
                suffix: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                system: Option<String>,
                parameters: serde_json::Map<String, Value>,
            },
        }
        let before = Before::Completion {
            prompt: "p".into(),
            suffix: Some("s".into()),
            system: None,
            parameters: serde_json::Map::from_iter([("x".into(), json!(1.5))]),
        };
        let now = Payload::Completion {
            prompt: "p".into(),
            suffix: Some("s".into()),
            system: None,
            parameters: RawJson::encode(&json!({"x": 1.5})).unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&now).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
    }

    #[test]
    fn a_payload_decodes_with_kind_anywhere_and_keeps_its_bytes() {
        let messages = r#"[ {"content": "h\u00e9", "role":"user", "n": 1.0} ]"#;
        for text in [
            format!(r#"{{"kind":"chat","messages":{messages},"parameters":{{}}}}"#),
            format!(r#"{{"messages":{messages},"parameters":{{}},"extra":[1],"kind":"chat"}}"#),
        ] {
            let payload: Payload = serde_json::from_str(&text).unwrap();
            assert_eq!(payload.messages().unwrap().get(), messages.trim());
            // Through a decoded tree too (a frame whose `type` comes late holds it so).
            let value: Value = serde_json::from_str(&text).unwrap();
            let again: Payload = serde_json::from_value(value).unwrap();
            assert_eq!(again.kind(), "chat");
        }
        let completion: Payload = serde_json::from_str(
            r#"{"parameters":{"a":1},"suffix":null,"prompt":"p","kind":"completion","messages":5}"#,
        )
        .unwrap();
        assert_eq!(
            completion,
            Payload::Completion {
                prompt: "p".into(),
                suffix: None,
                system: None,
                parameters: RawJson::from_text(r#"{"a":1}"#.into()).unwrap(),
            }
        );
    }

    #[test]
    fn a_malformed_payload_is_refused() {
        for (text, why) in [
            (
                r#"{"kind":"chat","parameters":{}}"#,
                "missing field `messages`",
            ),
            (
                r#"{"kind":"chat","messages":{},"parameters":{}}"#,
                "sequence",
            ),
            (r#"{"kind":"chat","messages":[],"parameters":[]}"#, "map"),
            (
                r#"{"kind":"other","messages":[],"parameters":{}}"#,
                "unknown variant",
            ),
            (r#"{"messages":[],"parameters":{}}"#, "missing field `kind`"),
            (
                r#"{"kind":"completion","parameters":{}}"#,
                "missing field `prompt`",
            ),
            (
                r#"{"kind":"completion","prompt":1,"parameters":{}}"#,
                "invalid type",
            ),
            (
                r#"{"kind":"chat","kind":"chat","messages":[],"parameters":{}}"#,
                "duplicate",
            ),
            (
                r#"{"kind":"chat","messages":[,],"parameters":{}}"#,
                "expected value",
            ),
        ] {
            let err = serde_json::from_str::<Payload>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn clones_share_the_text_and_lengths_are_counted_without_encoding() {
        let payload = chat(r#"[{"role":"user","content":"hi"}]"#, "{}");
        let copy = payload.clone();
        assert!(RawJson::ptr_eq(
            payload.messages().unwrap(),
            copy.messages().unwrap()
        ));
        assert_eq!(
            encoded_len(&payload),
            serde_json::to_string(&payload).unwrap().len() as u64
        );
        let items = payload.messages().unwrap().items().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].get(), r#"{"role":"user","content":"hi"}"#);
    }
}
