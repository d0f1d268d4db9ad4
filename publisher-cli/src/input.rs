//! Turning JSON lines into events.

use std::borrow::Cow;
use std::collections::BTreeMap;

use publisher::{Event, Uuid};
use serde_json::value::RawValue;

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

/// The event carrying `payload` (a JSON text as written on the line): a JSON string is sent as
/// its UTF-8 text, any other value as JSON, exactly as written.
fn payload_event(topic: String, payload: &RawValue) -> Result<Event, String> {
    let raw = payload.get();
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        // A string the parser already validated: without escapes it is its own text.
        let text = if inner.contains('\\') {
            serde_json::from_str(raw).map_err(|e| e.to_string())?
        } else {
            inner.to_owned()
        };
        Ok(Event::text(topic, text))
    } else {
        Event::json(topic, payload).map_err(|e| e.to_string())
    }
}

/// A field that must be a string when present (`null` counts as absent).
fn string_field(obj: &BTreeMap<String, &RawValue>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
            .map_err(|_| format!("`{name}` must be a string, got {}", raw.get())),
    }
}

/// Parses one line (1-based number `line`): an envelope
/// `{"topic", "key", "headers", "payload", "id", "content_type"}` (it must have `payload`), or
/// any other JSON value, which becomes the payload on `default_topic`. String payloads are sent
/// as UTF-8 text, other values as JSON as written. The payload is never parsed into a tree:
/// the line is validated once and the payload's text taken as is.
pub fn parse_line(
    text: &str,
    line: usize,
    default_topic: Option<&str>,
) -> Result<Event, LineError> {
    // The usual line, a well-formed envelope, in one pass with nothing copied but what the
    // event keeps; anything else (a plain value, a field of the wrong type) takes the path that
    // says exactly what is wrong.
    if let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text)
        && let Some(event) = envelope.into_event(default_topic)
    {
        return Ok(event);
    }
    parse_line_slowly(text, line, default_topic)
}

/// A well-formed envelope, borrowed from the line where it has no escapes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content_type: Option<Cow<'a, str>>,
}

impl Envelope<'_> {
    /// The event, or `None` when the slow path must say what is wrong.
    fn into_event(self, default_topic: Option<&str>) -> Option<Event> {
        let topic = match self.topic {
            Some(t) => t.into_owned(),
            None => default_topic?.to_owned(),
        };
        if topic.is_empty() {
            return None;
        }
        let mut event = payload_event(topic, self.payload).ok()?;
        if let Some(key) = self.key {
            event = event.with_key(key.into_owned());
        }
        if let Some(ct) = self.content_type {
            event = event.with_content_type(ct.into_owned());
        }
        if let Some(id) = self.id {
            event = event.with_id(Uuid::parse_str(&id).ok()?);
        }
        if let Some(headers) = self.headers {
            event = event.with_headers(headers);
        }
        Some(event)
    }
}

fn parse_line_slowly(
    text: &str,
    line: usize,
    default_topic: Option<&str>,
) -> Result<Event, LineError> {
    let err = |message: String| LineError { line, message };
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let no_topic = || err("no topic: the line has no `topic` and --topic is not set".to_owned());
    let envelope = if value.get().starts_with('{') {
        serde_json::from_str::<BTreeMap<String, &RawValue>>(value.get())
            .ok()
            .filter(|obj| {
                obj.contains_key("payload")
                    && obj.keys().all(|k| ENVELOPE_KEYS.contains(&k.as_str()))
            })
    } else {
        None
    };
    let Some(obj) = envelope else {
        let topic = default_topic.ok_or_else(no_topic)?.to_owned();
        return payload_event(topic, value).map_err(err);
    };
    let topic = match string_field(&obj, "topic").map_err(err)? {
        Some(t) => t,
        None => default_topic.ok_or_else(no_topic)?.to_owned(),
    };
    if topic.is_empty() {
        return Err(err("`topic` must not be empty".to_owned()));
    }
    let mut event = payload_event(topic, obj["payload"]).map_err(err)?;
    if let Some(key) = string_field(&obj, "key").map_err(err)? {
        event = event.with_key(key);
    }
    if let Some(ct) = string_field(&obj, "content_type").map_err(err)? {
        event = event.with_content_type(ct);
    }
    if let Some(id) = string_field(&obj, "id").map_err(err)? {
        let id = Uuid::parse_str(&id).map_err(|e| err(format!("`id` is not a UUID: {e}")))?;
        event = event.with_id(id);
    }
    if let Some(raw) = obj.get("headers") {
        match serde_json::from_str::<Option<BTreeMap<String, &RawValue>>>(raw.get()) {
            Ok(None) => {}
            Ok(Some(h)) => {
                let mut headers = BTreeMap::new();
                for (k, v) in h {
                    let v: String = serde_json::from_str(v.get()).map_err(|_| {
                        err(format!("header `{k}` must be a string, got {}", v.get()))
                    })?;
                    headers.insert(k, v);
                }
                event = event.with_headers(headers);
            }
            Err(_) => {
                return Err(err(format!(
                    "`headers` must be an object, got {}",
                    raw.get()
                )));
            }
        }
    }
    Ok(event)
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
    fn payloads_are_sent_as_written_and_both_paths_agree() {
        let line = r#"{"topic":"t","key":"k\u00e9","payload":{"a": [1, 2]},"headers":{"h":"v"}}"#;
        let fast = parse_line(line, 1, None).unwrap();
        let slow = parse_line_slowly(line, 1, None).unwrap();
        assert_eq!(fast.payload().as_ref(), br#"{"a": [1, 2]}"#);
        assert_eq!(fast.key(), Some("k\u{e9}"));
        assert_eq!(
            (
                fast.topic(),
                fast.key(),
                fast.headers(),
                fast.payload(),
                fast.content_type()
            ),
            (
                slow.topic(),
                slow.key(),
                slow.headers(),
                slow.payload(),
                slow.content_type()
            )
        );
        // An object that is not an envelope is a payload, whole.
        let e = parse_line(r#"{"payload":1,"extra":2}"#, 2, Some("t")).unwrap();
        assert_eq!(e.payload().as_ref(), br#"{"payload":1,"extra":2}"#);
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
