//! The event every publisher takes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Content type set by [`Event::json`].
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type set by [`Event::text`].
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// One event: an id, a topic, an optional key, headers, payload bytes, a timestamp and an
/// optional content type.
///
/// The topic names where the event goes (a Redis stream or channel, a Kafka topic, an AMQP
/// routing key). The key orders events (Kafka partitions by it) and is carried as metadata
/// elsewhere. The id is a UUIDv7 unless set, so ids sort by creation time.
///
/// ```
/// use publisher_core::Event;
///
/// let event = Event::text("orders.created", "order 42")
///     .with_key("customer-7")
///     .with_header("source", "checkout");
/// assert_eq!(event.topic(), "orders.created");
/// assert_eq!(event.payload().as_ref(), b"order 42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    id: Uuid,
    topic: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    payload: Bytes,
    timestamp: SystemTime,
    content_type: Option<String>,
}

impl Event {
    /// An event carrying raw bytes, with no content type.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic: topic.into(),
            key: None,
            headers: BTreeMap::new(),
            payload: payload.into(),
            timestamp: SystemTime::now(),
            content_type: None,
        }
    }

    /// An event carrying UTF-8 text, content type `text/plain; charset=utf-8`.
    pub fn text(topic: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(topic, text.into()).with_content_type(CONTENT_TYPE_TEXT)
    }

    /// An event carrying `value` serialised as JSON, content type `application/json`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidEvent`](crate::ErrorKind::InvalidEvent) naming `payload` when the
    /// value cannot be serialised.
    pub fn json<T: serde::Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            Error::invalid_event("core", "payload", "cannot serialise payload as JSON")
                .with_source(e)
        })?;
        Ok(Self::new(topic, bytes).with_content_type(CONTENT_TYPE_JSON))
    }

    /// Replaces the id (by default a fresh UUIDv7).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds or replaces a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: BTreeMap<String, String>) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the timestamp (by default the time of creation).
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Consumes the event, keeping its topic.
    pub fn into_topic(self) -> String {
        self.topic
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The headers, sorted by name.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The timestamp.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// The timestamp in milliseconds since the Unix epoch (0 for times before it).
    pub fn timestamp_millis(&self) -> i64 {
        self.timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// The content type, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// Checks what every backend requires: a non-empty topic and non-empty header names.
    /// Backends call this before their own checks.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidEvent`](crate::ErrorKind::InvalidEvent) naming `topic` or
    /// `headers`.
    pub fn validate(&self, backend: &'static str) -> Result<()> {
        if self.topic.is_empty() {
            return Err(Error::invalid_event(
                backend,
                "topic",
                "topic must not be empty",
            ));
        }
        if self.headers.keys().any(String::is_empty) {
            return Err(Error::invalid_event(
                backend,
                "headers",
                "header names must not be empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn ids_are_v7_and_unique() {
        let a = Event::new("t", "x");
        let b = Event::new("t", "x");
        assert_eq!(a.id().get_version_num(), 7);
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn json_sets_content_type() {
        let e = Event::json("t", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(e.content_type(), Some(CONTENT_TYPE_JSON));
        assert_eq!(e.payload().as_ref(), br#"{"a":1}"#);
    }

    #[test]
    fn empty_topic_names_the_field() {
        let err = Event::new("", "x").validate("memory").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidEvent);
        assert_eq!(err.field(), Some("topic"));
        let err = Event::new("t", "x")
            .with_header("", "v")
            .validate("memory")
            .unwrap_err();
        assert_eq!(err.field(), Some("headers"));
    }
}
