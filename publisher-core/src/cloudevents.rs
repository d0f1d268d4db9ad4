//! CloudEvents 1.0 (feature `cloudevents`): an [`Event`] as a CloudEvent and back.
//!
//! | CloudEvent attribute | [`Event`] |
//! |---|---|
//! | `specversion` | always `1.0` |
//! | `id` | [`Event::id`] (the UUID's text) |
//! | `source` | [`CloudEventAttributes::source`] (required by the spec, not carried by an event) |
//! | `type` | [`CloudEventAttributes::event_type`], or the topic when unset |
//! | `time` | [`Event::timestamp`] (RFC 3339, milliseconds) |
//! | `datacontenttype` | [`Event::content_type`] |
//! | `partitionkey` (the Partitioning extension) | [`Event::key`] |
//! | other extensions | [`Event::headers`]: a header name must be a valid extension name (`a-z`, `0-9`, at most 20 characters) and not one of the attributes above |
//! | `data` / `data_base64` | the payload: `data` as JSON when the content type is JSON and the payload parses, `data` as a string for other UTF-8 text, `data_base64` for other bytes |
//!
//! Structured mode ([`CloudEvent::to_json`], content type [`STRUCTURED_CONTENT_TYPE`]) writes the
//! whole CloudEvent as one JSON object; [`CloudEvent::from_json`] reads one back (from any
//! CloudEvents 1.0 producer: unknown extensions become headers, values of other JSON types
//! their JSON text).

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Error, Event, Result};

const BACKEND: &str = "cloudevents";

/// The content type of a CloudEvent in structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The extension that carries the event's key (CloudEvents' Partitioning extension).
pub const PARTITION_KEY: &str = "partitionkey";

/// The attributes a CloudEvent needs that an [`Event`] does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventAttributes {
    /// `source`: a URI-reference naming the context the event happened in
    /// (`https://orders.example.com`, `/orders/eu`). Required, non-empty.
    pub source: String,
    /// `type`: `com.example.order.created`. Default: the event's topic.
    pub event_type: Option<String>,
}

impl CloudEventAttributes {
    /// `source` with the default type (the topic).
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            event_type: None,
        }
    }

    /// Sets `type`.
    #[must_use]
    pub fn with_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }
}

/// The attributes CloudEvents defines; a header may not take their names.
const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
    PARTITION_KEY,
];

/// A CloudEvent 1.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub event_type: String,
    /// `time`, RFC 3339.
    pub time: Option<String>,
    /// `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `dataschema`.
    pub dataschema: Option<String>,
    /// Extension attributes, `partitionkey` among them, as strings.
    pub extensions: BTreeMap<String, String>,
    /// The data, as bytes.
    pub data: Bytes,
}

/// Whether `name` is a valid CloudEvents attribute name: `a-z` and `0-9`, 1 to 20 characters.
pub fn valid_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl CloudEvent {
    /// `event` as a CloudEvent with `attributes`.
    ///
    /// # Errors
    /// `InvalidEvent` naming `headers.<name>` for a header that is not a valid extension name
    /// or takes a CloudEvents attribute's name, and `source` for an empty source.
    pub fn from_event(event: &Event, attributes: &CloudEventAttributes) -> Result<Self> {
        if attributes.source.is_empty() {
            return Err(Error::invalid_event(
                BACKEND,
                "source",
                "a CloudEvent needs a non-empty source",
            ));
        }
        let mut extensions = BTreeMap::new();
        for (name, value) in event.headers() {
            if !valid_name(name) || RESERVED.contains(&name.as_str()) {
                return Err(Error::invalid_event(
                    BACKEND,
                    format!("headers.{name}"),
                    "a header becomes a CloudEvents extension: its name must be a-z and 0-9, at \
                     most 20 characters, and not a CloudEvents attribute's",
                ));
            }
            extensions.insert(name.clone(), value.clone());
        }
        if let Some(key) = event.key() {
            extensions.insert(PARTITION_KEY.to_owned(), key.to_owned());
        }
        Ok(Self {
            id: event.id().to_string(),
            source: attributes.source.clone(),
            event_type: attributes
                .event_type
                .clone()
                .unwrap_or_else(|| event.topic().to_owned()),
            time: Some(humantime::format_rfc3339_millis(event.timestamp()).to_string()),
            datacontenttype: event.content_type().map(str::to_owned),
            subject: None,
            dataschema: None,
            extensions,
            data: event.payload().clone(),
        })
    }

    /// The event on `topic` this CloudEvent carries: its id when `id` is a UUID (a new one
    /// otherwise, the original kept in the header `ceid`), `time` as the timestamp,
    /// `datacontenttype`, `partitionkey` as the key, other extensions as headers.
    ///
    /// # Errors
    /// `InvalidEvent` naming `time` when it is not RFC 3339.
    pub fn into_event(self, topic: impl Into<String>) -> Result<Event> {
        let mut event = Event::new(topic, self.data);
        let mut headers = self.extensions;
        match Uuid::parse_str(&self.id) {
            Ok(id) => event = event.with_id(id),
            Err(_) => {
                headers.insert("ceid".to_owned(), self.id);
            }
        }
        if let Some(time) = &self.time {
            let at: SystemTime = humantime::parse_rfc3339_weak(time).map_err(|_| {
                Error::invalid_event(BACKEND, "time", "the CloudEvent's time is not RFC 3339")
            })?;
            event = event.with_timestamp(at);
        }
        if let Some(ct) = self.datacontenttype {
            event = event.with_content_type(ct);
        }
        if let Some(key) = headers.remove(PARTITION_KEY) {
            event = event.with_key(key);
        }
        Ok(event.with_headers(headers))
    }

    fn json_data(&self) -> bool {
        json_type(self.datacontenttype.as_deref())
    }

    /// Structured mode: the CloudEvent as one JSON object (`application/cloudevents+json`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut object = Map::new();
        object.insert("specversion".into(), "1.0".into());
        object.insert("id".into(), self.id.clone().into());
        object.insert("source".into(), self.source.clone().into());
        object.insert("type".into(), self.event_type.clone().into());
        for (name, value) in [
            ("time", &self.time),
            ("datacontenttype", &self.datacontenttype),
            ("subject", &self.subject),
            ("dataschema", &self.dataschema),
        ] {
            if let Some(v) = value {
                object.insert(name.into(), v.clone().into());
            }
        }
        for (name, value) in &self.extensions {
            object.insert(name.clone(), value.clone().into());
        }
        let json = self
            .json_data()
            .then(|| serde_json::from_slice::<Value>(&self.data).ok())
            .flatten();
        match (json, std::str::from_utf8(&self.data)) {
            (Some(value), _) => {
                object.insert("data".into(), value);
            }
            (None, Ok(text)) if !self.json_data() => {
                object.insert("data".into(), text.into());
            }
            _ if self.data.is_empty() => {}
            _ => {
                object.insert("data_base64".into(), BASE64.encode(&self.data).into());
            }
        }
        serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
    }

    /// Reads a CloudEvent in structured mode.
    ///
    /// # Errors
    /// `InvalidEvent` naming the attribute that is missing or malformed (`specversion` other
    /// than `1.0`, `id`, `source`, `type`, `data_base64`), or `payload` when the bytes are not
    /// a JSON object.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(Error::invalid_event(
                BACKEND,
                "payload",
                "a structured CloudEvent is one JSON object",
            ));
        };
        let mut text = |name: &'static str| -> Result<Option<String>> {
            match object.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(Error::invalid_event(
                    BACKEND,
                    name,
                    "a CloudEvents context attribute is a string here",
                )),
            }
        };
        let required = |name: &'static str, v: Option<String>| {
            v.filter(|s| !s.is_empty()).ok_or_else(|| {
                Error::invalid_event(BACKEND, name, "a CloudEvent needs this attribute")
            })
        };
        let specversion = required("specversion", text("specversion")?)?;
        if specversion != "1.0" {
            return Err(Error::invalid_event(
                BACKEND,
                "specversion",
                "only CloudEvents 1.0 is read",
            ));
        }
        let id = required("id", text("id")?)?;
        let source = required("source", text("source")?)?;
        let event_type = required("type", text("type")?)?;
        let time = text("time")?;
        let datacontenttype = text("datacontenttype")?;
        let subject = text("subject")?;
        let dataschema = text("dataschema")?;
        let data_value = object.remove("data").filter(|v| !v.is_null());
        let data_base64 = object.remove("data_base64").filter(|v| !v.is_null());
        let data = match (data_value, data_base64) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_event(
                    BACKEND,
                    "data_base64",
                    "a CloudEvent carries data or data_base64, not both",
                ));
            }
            (None, Some(Value::String(b64))) => {
                Bytes::from(BASE64.decode(b64).map_err(|_| {
                    Error::invalid_event(BACKEND, "data_base64", "not valid base64")
                })?)
            }
            (None, Some(_)) => {
                return Err(Error::invalid_event(
                    BACKEND,
                    "data_base64",
                    "data_base64 is a base64 string",
                ));
            }
            (None, None) => Bytes::new(),
            (Some(Value::String(s)), None) if !json_type(datacontenttype.as_deref()) => {
                Bytes::from(s)
            }
            (Some(value), None) => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
        };
        let extensions = object
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (name, value)
            })
            .collect();
        Ok(Self {
            id,
            source,
            event_type,
            time,
            datacontenttype,
            subject,
            dataschema,
            extensions,
            data,
        })
    }
}

/// Whether `ct` (none counts as JSON, as the spec says) is a JSON media type.
fn json_type(ct: Option<&str>) -> bool {
    ct.is_none_or(|ct| {
        let ct = ct.split(';').next().unwrap_or("").trim();
        ct == "application/json" || ct.ends_with("+json") || ct == "text/json"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn attrs() -> CloudEventAttributes {
        CloudEventAttributes::new("/orders/eu").with_type("com.example.order.created")
    }

    #[test]
    fn an_event_round_trips_through_structured_json() {
        for event in [
            Event::json("orders", &serde_json::json!({"n": 1, "text": "ü"})).unwrap(),
            Event::text("orders", "plain text ✓"),
            Event::new("orders", vec![0u8, 159, 146, 150]),
        ] {
            let event = event
                .with_key("customer-7")
                .with_header("tenant", "acme")
                .with_header("traceparent", "00-abc-def-01");
            let ce = CloudEvent::from_event(&event, &attrs()).unwrap();
            let json = ce.to_json();
            let value: Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(value["specversion"], "1.0");
            assert_eq!(value["id"], event.id().to_string());
            assert_eq!(value["source"], "/orders/eu");
            assert_eq!(value["type"], "com.example.order.created");
            assert_eq!(value["partitionkey"], "customer-7");
            assert_eq!(value["tenant"], "acme");
            let back = CloudEvent::from_json(&json)
                .unwrap()
                .into_event("orders")
                .unwrap();
            assert_eq!(back.id(), event.id());
            assert_eq!(back.key(), event.key());
            assert_eq!(back.headers(), event.headers());
            assert_eq!(back.content_type(), event.content_type());
            assert_eq!(back.timestamp_millis(), event.timestamp_millis());
            // JSON data is carried as JSON (its bytes may be re-serialized), other data as is.
            if event.content_type() == Some(crate::CONTENT_TYPE_JSON) {
                let a: Value = serde_json::from_slice(back.payload()).unwrap();
                let b: Value = serde_json::from_slice(event.payload()).unwrap();
                assert_eq!(a, b);
                assert!(value["data"].is_object());
            } else {
                assert_eq!(back.payload(), event.payload());
            }
        }
    }

    #[test]
    fn bad_headers_and_attributes_name_the_field() {
        for name in [
            "Tenant",
            "trace-id",
            "id",
            "partitionkey",
            "averyveryverylongname1",
        ] {
            let e = CloudEvent::from_event(&Event::text("t", "x").with_header(name, "v"), &attrs())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEvent);
            assert_eq!(e.field(), Some(format!("headers.{name}").as_str()), "{e}");
        }
        let e = CloudEvent::from_event(&Event::text("t", "x"), &CloudEventAttributes::new(""))
            .unwrap_err();
        assert_eq!(e.field(), Some("source"));
        for (json, field) in [
            (r#"{"id":"1","source":"s","type":"t"}"#, "specversion"),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                "specversion",
            ),
            (r#"{"specversion":"1.0","source":"s","type":"t"}"#, "id"),
            (r#"{"specversion":"1.0","id":"1","type":"t"}"#, "source"),
            (r#"{"specversion":"1.0","id":"1","source":"s"}"#, "type"),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}"#,
                "data_base64",
            ),
            ("[1]", "payload"),
        ] {
            let e = CloudEvent::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{json}: {e}");
        }
    }

    #[test]
    fn a_foreign_cloudevent_is_read() {
        let json = br#"{"specversion":"1.0","id":"A234-1234","source":"https://x.example",
            "type":"com.example.thing","time":"2026-12-02T10:00:00Z","comexampleext":5,
            "datacontenttype":"text/plain","data":"hello"}"#;
        let event = CloudEvent::from_json(json)
            .unwrap()
            .into_event("things")
            .unwrap();
        assert_eq!(event.payload_str(), Some("hello"));
        assert_eq!(event.headers()["ceid"], "A234-1234");
        assert_eq!(event.headers()["comexampleext"], "5");
        assert_eq!(event.content_type(), Some("text/plain"));
    }
}
