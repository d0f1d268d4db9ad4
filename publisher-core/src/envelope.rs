//! The JSON envelope: one event as one line of JSON, lossless.
//!
//! Used by the console backend's JSON lines and by backends whose wire carries one opaque
//! message (Redis pub/sub). Fields: `id`, `topic`, `key`, `timestamp` (RFC 3339, milliseconds),
//! `content_type`, `headers`, `encoding` and `payload`. `encoding` is `json` when the payload is
//! single-line JSON with a JSON content type (embedded verbatim), `utf8` for other text (a JSON
//! string), `base64` for other bytes. [`Envelope::parse`] reads it back and
//! [`Envelope::into_event`] restores the event.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{Error, Event, Result};

const BACKEND: &str = "envelope";

/// How the payload is written in a JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// The payload is JSON and written as is (a JSON content type, valid JSON, single line).
    Json,
    /// The payload is UTF-8 text, written as a JSON string.
    Utf8,
    /// Any other bytes, written as a standard base64 string.
    Base64,
}

/// One envelope read back: the same fields [`encode`] writes.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// Event id.
    pub id: Uuid,
    /// Topic.
    pub topic: String,
    /// Key.
    #[serde(default)]
    pub key: Option<String>,
    /// RFC 3339 timestamp with milliseconds.
    pub timestamp: String,
    /// Content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How `payload` is written.
    pub encoding: Encoding,
    /// The payload as written.
    pub payload: Box<RawValue>,
}

impl Envelope {
    /// Parses one envelope (a trailing newline is allowed).
    ///
    /// # Errors
    /// `InvalidEvent` naming `envelope` when it is not an envelope [`encode`] wrote.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid_event(BACKEND, "envelope", "not a JSON event envelope").with_source(e)
        })
    }

    /// The event this envelope carries, with its id, key, headers, content type, timestamp
    /// (to the millisecond) and payload.
    ///
    /// # Errors
    /// `InvalidEvent` naming `payload` or `timestamp` when they do not decode.
    pub fn into_event(self) -> Result<Event> {
        let payload = self.payload_bytes()?;
        let timestamp = parse_timestamp(&self.timestamp)?;
        let mut event = Event::new(self.topic, payload)
            .with_id(self.id)
            .with_headers(self.headers)
            .with_timestamp(timestamp);
        if let Some(key) = self.key {
            event = event.with_key(key);
        }
        if let Some(ct) = self.content_type {
            event = event.with_content_type(ct);
        }
        Ok(event)
    }

    /// The payload bytes, decoded per [`Envelope::encoding`].
    ///
    /// # Errors
    /// `InvalidEvent` naming `payload` when it does not decode.
    pub fn payload_bytes(&self) -> Result<Bytes> {
        let bad = |msg: &'static str| Error::invalid_event(BACKEND, "payload", msg);
        match self.encoding {
            Encoding::Json => Ok(Bytes::copy_from_slice(self.payload.get().as_bytes())),
            Encoding::Utf8 => serde_json::from_str::<String>(self.payload.get())
                .map(Bytes::from)
                .map_err(|e| bad("utf8 payload is not a JSON string").with_source(e)),
            Encoding::Base64 => {
                let s: String = serde_json::from_str(self.payload.get())
                    .map_err(|e| bad("base64 payload is not a JSON string").with_source(e))?;
                BASE64
                    .decode(s)
                    .map(Bytes::from)
                    .map_err(|e| bad("payload is not valid base64").with_source(e))
            }
        }
    }
}

/// Times before the epoch are clamped to it: humantime cannot format them.
fn clamp(t: SystemTime) -> SystemTime {
    t.max(SystemTime::UNIX_EPOCH)
}

fn is_json_type(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let base = ct.split(';').next().unwrap_or("").trim();
        base == "application/json" || base.ends_with("+json")
    })
}

/// The payload as it goes into a line.
enum Payload<'a> {
    /// Valid single-line JSON, embedded as is.
    Raw(&'a str),
    /// A string to write as a JSON string.
    Str(std::borrow::Cow<'a, str>),
}

/// How `event`'s payload is written: embedded JSON, a UTF-8 string, or base64.
fn payload(event: &Event) -> (Encoding, Payload<'_>) {
    let bytes = event.payload();
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let json = is_json_type(event.content_type())
                && !text.contains('\n')
                && serde_json::from_str::<&RawValue>(text).is_ok();
            if json {
                (Encoding::Json, Payload::Raw(text))
            } else {
                (Encoding::Utf8, Payload::Str(text.into()))
            }
        }
        Err(_) => (Encoding::Base64, Payload::Str(BASE64.encode(bytes).into())),
    }
}

/// Whether serde_json would escape any byte of `s` (control characters, `"` and `\`).
/// Written as a fold, without early exit, so the compiler vectorises it.
fn needs_escape(s: &[u8]) -> bool {
    s.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends `s` as a JSON string, exactly as serde_json writes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("serialising to a Vec cannot fail");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Appends `event` as one JSON line (with the trailing newline) to `out`.
///
/// The line is what serde_json writes for the fields in the order of the module docs (absent
/// key, content type and empty headers left out), written directly: strings that need no
/// escaping, the common case, are copied as they are.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    use std::io::Write as _;

    let (encoding, payload) = payload(event);
    out.reserve(192 + event.topic().len() + event.payload().len());
    out.extend_from_slice(b"{\"id\":\"");
    let mut id = Uuid::encode_buffer();
    out.extend_from_slice(event.id().hyphenated().encode_lower(&mut id).as_bytes());
    out.extend_from_slice(b"\",\"topic\":");
    json_str(out, event.topic());
    if let Some(key) = event.key() {
        out.extend_from_slice(b",\"key\":");
        json_str(out, key);
    }
    out.extend_from_slice(b",\"timestamp\":\"");
    write!(
        out,
        "{}",
        humantime::format_rfc3339_millis(clamp(event.timestamp()))
    )
    .expect("writing to a Vec cannot fail");
    out.push(b'"');
    if let Some(ct) = event.content_type() {
        out.extend_from_slice(b",\"content_type\":");
        json_str(out, ct);
    }
    if !event.headers().is_empty() {
        out.extend_from_slice(b",\"headers\":{");
        for (i, (name, value)) in event.headers().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, name);
            out.push(b':');
            json_str(out, value);
        }
        out.push(b'}');
    }
    out.extend_from_slice(match encoding {
        Encoding::Json => b",\"encoding\":\"json\",\"payload\":",
        Encoding::Utf8 => b",\"encoding\":\"utf8\",\"payload\":",
        Encoding::Base64 => b",\"encoding\":\"base64\",\"payload\":",
    });
    match payload {
        Payload::Raw(raw) => out.extend_from_slice(raw.as_bytes()),
        Payload::Str(s) => json_str(out, &s),
    }
    out.extend_from_slice(b"}\n");
}

/// Parses the timestamp of a JSON line.
///
/// # Errors
/// `InvalidEvent` naming `timestamp`.
pub fn parse_timestamp(s: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339(s).map_err(|e| {
        Error::invalid_event(BACKEND, "timestamp", "not an RFC 3339 timestamp").with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Serialize)]
    #[serde(untagged)]
    enum PayloadOut<'a> {
        Raw(&'a RawValue),
        Str(std::borrow::Cow<'a, str>),
    }

    #[derive(Serialize)]
    struct LineOut<'a> {
        id: Uuid,
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        timestamp: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        content_type: Option<&'a str>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: &'a BTreeMap<String, String>,
        encoding: Encoding,
        payload: PayloadOut<'a>,
    }

    /// What the envelope was before `encode` wrote it by hand: serde_json over a struct.
    fn serde_line(event: &Event) -> Vec<u8> {
        let (encoding, payload) = super::payload(event);
        let line = LineOut {
            id: event.id(),
            topic: event.topic(),
            key: event.key(),
            timestamp: humantime::format_rfc3339_millis(clamp(event.timestamp())).to_string(),
            content_type: event.content_type(),
            headers: event.headers(),
            encoding,
            payload: match &payload {
                Payload::Raw(raw) => PayloadOut::Raw(serde_json::from_str(raw).unwrap()),
                Payload::Str(s) => PayloadOut::Str(s.clone()),
            },
        };
        let mut out = serde_json::to_vec(&line).unwrap();
        out.push(b'\n');
        out
    }

    #[test]
    fn hand_written_line_is_byte_for_byte_what_serde_json_writes() {
        let nasty = "q\"uote \\ back\u{1}\u{1f}\t\n\r \u{7f} é 😀 </script>";
        let events = [
            Event::new("orders", vec![b'x'; 256]),
            Event::text(nasty, nasty)
                .with_key(nasty)
                .with_header(nasty, nasty)
                .with_header("a", "")
                .with_content_type(nasty),
            Event::new("t", r#"{"b":1,"a":[1,2]}"#).with_content_type("application/json"),
            Event::new("t", "{\n \"a\": 1}").with_content_type("application/json"),
            Event::new("t", vec![0u8, 255, 128]),
            Event::new("t", "").with_timestamp(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
        ];
        for event in &events {
            let mut ours = Vec::new();
            encode(event, &mut ours);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde_line(event))
            );
            roundtrip(event);
        }
    }

    fn roundtrip(event: &Event) -> Envelope {
        let mut out = Vec::new();
        encode(event, &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let parsed = Envelope::parse(&out).unwrap();
        let back = parsed.clone().into_event().unwrap();
        assert_eq!(back.payload(), event.payload());
        assert_eq!(back.headers(), event.headers());
        assert_eq!(back.key(), event.key());
        assert_eq!(parsed.payload_bytes().unwrap(), event.payload());
        assert_eq!(parsed.id, event.id());
        parsed
    }

    #[test]
    fn json_payload_is_embedded_verbatim() {
        let e = Event::new("t", r#"{"b":1,"a":[1,2]}"#).with_content_type("application/json");
        let l = roundtrip(&e);
        assert_eq!(l.encoding, Encoding::Json);
        assert_eq!(l.payload.get(), r#"{"b":1,"a":[1,2]}"#);
    }

    #[test]
    fn multi_line_json_and_text_and_binary_roundtrip() {
        let pretty = Event::new("t", "{\n  \"a\": 1\n}").with_content_type("application/json");
        assert_eq!(roundtrip(&pretty).encoding, Encoding::Utf8);
        let text = Event::text("t", "héllo \"world\"\n");
        assert_eq!(roundtrip(&text).encoding, Encoding::Utf8);
        let bin = Event::new("t", vec![0u8, 255, 128]);
        assert_eq!(roundtrip(&bin).encoding, Encoding::Base64);
        let invalid_json = Event::new("t", "{nope").with_content_type("application/json");
        assert_eq!(roundtrip(&invalid_json).encoding, Encoding::Utf8);
    }

    #[test]
    fn timestamp_roundtrips_to_the_millisecond() {
        let e = Event::text("t", "x");
        let l = roundtrip(&e);
        let ts = parse_timestamp(&l.timestamp).unwrap();
        let diff = e
            .timestamp()
            .duration_since(ts)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(1));
    }
}
