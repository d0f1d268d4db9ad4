//! Turning JSON lines into events.

use std::collections::BTreeMap;

use publisher::{Event, Uuid};
use serde_json::{Map, Value};

/// Keys an envelope line may have; it must have `payload`.
const ENVELOPE_KEYS: &[&str] = &["topic", "key", "headers", "payload", "id", "content_type"];

/// Why a line could not become an event.
#[derive(Debug)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn payload_event(topic: String, payload: Value) -> Result<Event, String> {
    match payload {
        Value::String(s) => Ok(Event::text(topic, s)),
        other => Event::json(topic, &other).map_err(|e| e.to_string()),
    }
}

fn is_envelope(obj: &Map<String, Value>) -> bool {
    obj.contains_key("payload") && obj.keys().all(|k| ENVELOPE_KEYS.contains(&k.as_str()))
}

fn string_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{name}` must be a string, got {other}")),
    }
}

/// Parses one line (1-based number `line`): an envelope
/// `{"topic", "key", "headers", "payload", "id", "content_type"}` (it must have `payload`), or
/// any other JSON value, which becomes the payload on `default_topic`. String payloads are sent
/// as UTF-8 text, other values as JSON.
pub fn parse_line(
    text: &str,
    line: usize,
    default_topic: Option<&str>,
) -> Result<Event, LineError> {
    let err = |message: String| LineError { line, message };
    let value: Value = serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let no_topic = || err("no topic: the line has no `topic` and --topic is not set".to_owned());
    match value {
        Value::Object(obj) if is_envelope(&obj) => {
            let topic = match string_field(&obj, "topic").map_err(err)? {
                Some(t) => t,
                None => default_topic.ok_or_else(no_topic)?.to_owned(),
            };
            if topic.is_empty() {
                return Err(err("`topic` must not be empty".to_owned()));
            }
            let mut obj = obj;
            let payload = obj.remove("payload").unwrap_or(Value::Null);
            let mut event = payload_event(topic, payload).map_err(err)?;
            if let Some(key) = string_field(&obj, "key").map_err(err)? {
                event = event.with_key(key);
            }
            if let Some(ct) = string_field(&obj, "content_type").map_err(err)? {
                event = event.with_content_type(ct);
            }
            if let Some(id) = string_field(&obj, "id").map_err(err)? {
                let id =
                    Uuid::parse_str(&id).map_err(|e| err(format!("`id` is not a UUID: {e}")))?;
                event = event.with_id(id);
            }
            match obj.get("headers") {
                None | Some(Value::Null) => {}
                Some(Value::Object(h)) => {
                    let mut headers = BTreeMap::new();
                    for (k, v) in h {
                        let Value::String(v) = v else {
                            return Err(err(format!("header `{k}` must be a string, got {v}")));
                        };
                        headers.insert(k.clone(), v.clone());
                    }
                    event = event.with_headers(headers);
                }
                Some(other) => {
                    return Err(err(format!("`headers` must be an object, got {other}")));
                }
            }
            Ok(event)
        }
        other => {
            let topic = default_topic.ok_or_else(no_topic)?.to_owned();
            payload_event(topic, other).map_err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_plain_values() {
        let e = parse_line(
            r#"{"topic":"orders","key":"k","headers":{"a":"1"},"payload":{"n":1}}"#,
            1,
            None,
        )
        .unwrap();
        assert_eq!(e.topic(), "orders");
        assert_eq!(e.key(), Some("k"));
        assert_eq!(e.headers()["a"], "1");
        assert_eq!(e.payload().as_ref(), br#"{"n":1}"#);
        let e = parse_line(r#"{"user":7}"#, 2, Some("users")).unwrap();
        assert_eq!(e.topic(), "users");
        assert_eq!(e.payload().as_ref(), br#"{"user":7}"#);
        let e = parse_line(r#""hello""#, 3, Some("t")).unwrap();
        assert_eq!(e.payload().as_ref(), b"hello");
        let e = parse_line(r#"{"payload":1}"#, 4, Some("fallback")).unwrap();
        assert_eq!(e.topic(), "fallback");
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        let e = parse_line("{nope", 7, Some("t")).unwrap_err();
        assert_eq!(e.line, 7);
        assert!(e.to_string().starts_with("line 7: invalid JSON"), "{e}");
        let e = parse_line(r#"{"a":1}"#, 8, None).unwrap_err();
        assert!(e.message.contains("no topic"), "{e}");
        let e = parse_line(r#"{"topic":"t","payload":1,"headers":{"a":2}}"#, 9, None).unwrap_err();
        assert!(e.message.contains("header `a`"), "{e}");
        let e = parse_line(r#"{"topic":5,"payload":1}"#, 10, None).unwrap_err();
        assert!(e.message.contains("`topic` must be a string"), "{e}");
    }
}
