//! Decoding a `model_result` (`{"id", "status", "result" | "error"}`) field by field, without
//! serde's buffering: a derived `flatten` of the `status`-tagged [`Outcome`] reads the whole object
//! into a buffer before decoding it, which profiled as the largest single cost of bridge-agent's
//! frame handling (BENCHMARKS.md, "One thread per service"). Here `result` and `error` are decoded
//! straight into their types once `status` has named which one counts; one that comes before
//! `status` is held as a [`Value`] until then (never more than the frame, which each protocol
//! bounds). It accepts exactly what the derived decoding accepted: unknown fields are skipped,
//! and the body `status` does not name is not looked at.
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{ErrorBody, ModelResult, Outcome, ResultBody};

const STATUSES: &[&str] = &["ok", "error"];

impl<'de> Deserialize<'de> for ModelResult {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ResultVisitor)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Ok,
    Error,
}

/// A body met before `status` said whether it is the one that counts.
#[derive(Default)]
struct Early {
    result: Option<Value>,
    error: Option<Value>,
}

struct ResultVisitor;

impl<'de> Visitor<'de> for ResultVisitor {
    type Value = ModelResult;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a model_result object with `id`, `status` and `result` or `error`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelResult, A::Error> {
        let mut id: Option<String> = None;
        let mut status: Option<Status> = None;
        let mut early = Early::default();
        let mut outcome: Option<Outcome> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "id" => {
                    if id.is_some() {
                        return Err(de::Error::duplicate_field("id"));
                    }
                    id = Some(map.next_value()?);
                }
                "status" => {
                    if status.is_some() {
                        return Err(de::Error::duplicate_field("status"));
                    }
                    let named: std::borrow::Cow<'de, str> = map.next_value()?;
                    status = Some(match named.as_ref() {
                        "ok" => Status::Ok,
                        "error" => Status::Error,
                        other => return Err(de::Error::unknown_variant(other, STATUSES)),
                    });
                }
                "result" => match status {
                    Some(Status::Ok) => outcome = Some(ok(map.next_value()?, &outcome)?),
                    Some(Status::Error) => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    None => early.result = Some(map.next_value()?),
                },
                "error" => match status {
                    Some(Status::Error) => outcome = Some(failed(map.next_value()?, &outcome)?),
                    Some(Status::Ok) => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    None => early.error = Some(map.next_value()?),
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
        let status = status.ok_or_else(|| de::Error::missing_field("status"))?;
        let outcome = match (outcome, status) {
            (Some(outcome), _) => outcome,
            (None, Status::Ok) => match early.result {
                Some(v) => ok(
                    ResultBody::deserialize(v).map_err(de::Error::custom)?,
                    &None,
                )?,
                None => return Err(de::Error::missing_field("result")),
            },
            (None, Status::Error) => match early.error {
                Some(v) => failed(ErrorBody::deserialize(v).map_err(de::Error::custom)?, &None)?,
                None => return Err(de::Error::missing_field("error")),
            },
        };
        Ok(ModelResult { id, outcome })
    }
}

fn ok<E: de::Error>(result: ResultBody, before: &Option<Outcome>) -> Result<Outcome, E> {
    match before {
        Some(_) => Err(E::duplicate_field("result")),
        None => Ok(Outcome::Ok { result }),
    }
}

fn failed<E: de::Error>(error: ErrorBody, before: &Option<Outcome>) -> Result<Outcome, E> {
    match before {
        Some(_) => Err(E::duplicate_field("error")),
        None => Ok(Outcome::Error { error }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Serialize;
    use serde_json::json;

    /// The derived decoding this one replaces, kept to compare against.
    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Derived {
        id: String,
        #[serde(flatten)]
        outcome: Outcome,
    }

    fn both(text: &str) -> (Result<ModelResult, String>, Result<Derived, String>) {
        (
            serde_json::from_str::<ModelResult>(text).map_err(|e| e.to_string()),
            serde_json::from_str::<Derived>(text).map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn decodes_what_the_derived_decoding_did_in_any_field_order() {
        let ok = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        let err =
            json!({"code": "agent_timeout", "message": "no answer", "details": {"after_s": 90}});
        let inputs = [
            json!({"id": "r1", "status": "ok", "result": ok}).to_string(),
            format!(r#"{{"result": {ok}, "id": "r1", "status": "ok"}}"#),
            format!(r#"{{"status": "ok", "extra": [1, {{"a": 2}}], "result": {ok}, "id": "r1"}}"#),
            format!(r#"{{"id": "r2", "error": {err}, "status": "error"}}"#),
            format!(r#"{{"status": "error", "id": "r2", "error": {err}}}"#),
            // The body its status does not name is not looked at, whatever it holds.
            format!(r#"{{"id": "r3", "status": "ok", "result": {ok}, "error": null}}"#),
            format!(r#"{{"id": "r3", "error": 5, "status": "ok", "result": {ok}}}"#),
            format!(r#"{{"id": "r4", "result": "junk", "status": "error", "error": {err}}}"#),
        ];
        for text in &inputs {
            let (ours, derived) = both(text);
            let (ours, derived) = (ours.unwrap(), derived.unwrap());
            assert_eq!(
                (&ours.id, &ours.outcome),
                (&derived.id, &derived.outcome),
                "{text}"
            );
            // It encodes as before: `status` right after `id`.
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&derived).unwrap()
            );
        }
    }

    #[test]
    fn refuses_what_the_derived_decoding_refused_naming_the_field() {
        let cases = [
            (r#"{"status": "ok", "result": {}}"#, "missing field `id`"),
            (r#"{"id": "r", "result": {}}"#, "missing field `status`"),
            (r#"{"id": "r", "status": "ok"}"#, "missing field `result`"),
            (
                r#"{"id": "r", "status": "error", "result": {}}"#,
                "missing field `error`",
            ),
            (
                r#"{"id": "r", "status": "maybe", "result": {}}"#,
                "unknown variant `maybe`",
            ),
            (r#"{"id": 5, "status": "ok", "result": {}}"#, "invalid type"),
            (
                r#"{"id": "r", "status": "ok", "result": {"choices": 3}}"#,
                "invalid type",
            ),
            (
                r#"{"id": "r", "status": "error", "error": {"code": "x"}}"#,
                "missing field `message`",
            ),
            (r#"["r", "ok"]"#, "invalid type"),
        ];
        for (text, wanted) in cases {
            let (ours, derived) = both(text);
            let ours = ours.unwrap_err();
            assert!(derived.is_err(), "the derived decoding took {text}");
            assert!(ours.contains(wanted), "{text}: {ours}");
        }
    }

    #[test]
    fn a_body_before_status_is_checked_once_status_names_it() {
        let text = r#"{"id": "r", "result": {"choices": 3}, "status": "ok"}"#;
        let err = serde_json::from_str::<ModelResult>(text).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let ok =
            serde_json::from_value::<ModelResult>(json!({"id": "r", "status": "ok", "result": {}}));
        assert_eq!(
            ok.unwrap().outcome,
            Outcome::Ok {
                result: ResultBody::default()
            }
        );
    }
}
