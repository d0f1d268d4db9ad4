//! How an [`Event`] maps onto a NATS message, and back.
//!
//! | event | message |
//! |---|---|
//! | topic | subject (a stream must capture it) |
//! | id | header `Nats-Msg-Id` (JetStream's duplicate detection) |
//! | key | header `Publisher-Key` |
//! | content type | header `Content-Type` |
//! | timestamp | header `Publisher-Timestamp` (ms since the epoch) |
//! | headers | headers (`Nats-…`, `Publisher-…` and `Content-Type` are reserved) |
//! | payload | payload, unchanged |

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use publisher_core::{Error, Event, Result, Uuid};

use crate::BACKEND;

/// Header carrying the event id; JetStream stores one message per id within the stream's
/// duplicate window.
pub const HEADER_ID: &str = "Nats-Msg-Id";
/// Header carrying the key.
pub const HEADER_KEY: &str = "Publisher-Key";
/// Header carrying the content type.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
/// Header carrying the timestamp (milliseconds since the Unix epoch).
pub const HEADER_TIMESTAMP: &str = "Publisher-Timestamp";

fn reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-") || lower.starts_with("publisher-") || lower == "content-type"
}

/// Whether `subject` is printable ASCII without wildcards or empty tokens: valid as it stands.
/// Branch-free over the bytes (it vectorizes); `false` sends the subject to the full checks.
fn plain_subject(subject: &str) -> bool {
    let b = subject.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    let graphic = b.iter().fold(true, |ok, &c| {
        ok & (c.wrapping_sub(0x21) < 0x5e) & (c != b'*') & (c != b'>')
    });
    let double_dot = b
        .windows(2)
        .fold(false, |seen, w| seen | (w[0] == b'.' && w[1] == b'.'));
    graphic && !double_dot && first != b'.' && last != b'.'
}

/// Checks the subject as the server would, the header names and values, and the size against
/// the server's `max_payload`.
pub(crate) fn validate(event: &Event, max_payload: usize) -> Result<()> {
    event.validate(BACKEND)?;
    let subject = event.topic();
    let bad_subject = |why: String| Err(Error::invalid_event(BACKEND, "topic", why));
    // Every publish checks its subject: the common one (printable ASCII, no wildcard, no empty
    // token) in one pass over the bytes, the rest char by char for the precise error.
    if !plain_subject(subject) {
        if let Some(c) = subject
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return bad_subject(format!("subject `{subject}` contains {c:?}"));
        }
        for token in subject.split('.') {
            if token.is_empty() {
                return bad_subject(format!(
                    "subject `{subject}` has an empty token (a leading, trailing or double `.`)"
                ));
            }
            if token == "*" || token == ">" {
                return bad_subject(format!(
                    "subject `{subject}` has the wildcard `{token}`: publishes need a literal \
                     subject"
                ));
            }
        }
    }
    for (name, value) in event.headers() {
        let bad_header = |why: String| Err(Error::invalid_event(BACKEND, "headers", why));
        if reserved(name) {
            return bad_header(format!(
                "header `{name}`: `Nats-…`, `Publisher-…` and `Content-Type` are reserved"
            ));
        }
        if name.is_empty() || name.chars().any(|c| !c.is_ascii_graphic() || c == ':') {
            return bad_header(format!(
                "header name `{}` must be printable ASCII without `:` or spaces",
                name.escape_debug()
            ));
        }
        if value.contains(['\r', '\n']) {
            return bad_header(format!("header `{name}`: the value contains a line break"));
        }
    }
    let size = subject.len()
        + event.payload().len()
        + event.key().map_or(0, str::len)
        + event
            .headers()
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
        + 128;
    if size > max_payload {
        return Err(Error::invalid_event(
            BACKEND,
            "payload",
            format!(
                "the message is about {size} bytes with its headers, over the server's \
                 max_payload ({max_payload})"
            ),
        ));
    }
    Ok(())
}

/// The headers of `event`'s message (call [`validate`] first).
pub(crate) fn headers(event: &Event) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut buf = Uuid::encode_buffer();
    h.insert(HEADER_ID, &*event.id().hyphenated().encode_lower(&mut buf));
    if let Some(key) = event.key() {
        h.insert(HEADER_KEY, key);
    }
    if let Some(ct) = event.content_type() {
        h.insert(HEADER_CONTENT_TYPE, ct);
    }
    h.insert(
        HEADER_TIMESTAMP,
        event.timestamp_millis().to_string().as_str(),
    );
    for (k, v) in event.headers() {
        h.insert(k.as_str(), v.as_str());
    }
    h
}

/// Rebuilds an event from a stored message (what a consumer of the stream does).
///
/// # Errors
/// `InvalidEvent` naming the header that is malformed.
pub fn event_from_message(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Event> {
    let mut event = Event::new(subject, payload.to_vec());
    let mut user = BTreeMap::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let Some(value) = values.first() else {
                continue;
            };
            let value = value.as_str();
            match name.as_ref() {
                HEADER_ID => {
                    let id = Uuid::parse_str(value).map_err(|e| {
                        Error::invalid_event(BACKEND, HEADER_ID, "not a UUID").with_source(e)
                    })?;
                    event = event.with_id(id);
                }
                HEADER_KEY => event = event.with_key(value),
                HEADER_CONTENT_TYPE => event = event.with_content_type(value),
                HEADER_TIMESTAMP => {
                    let ms: u64 = value.parse().map_err(|_| {
                        Error::invalid_event(BACKEND, HEADER_TIMESTAMP, "not a number")
                    })?;
                    event =
                        event.with_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
                }
                other => {
                    user.insert(other.to_owned(), value.to_owned());
                }
            }
        }
    }
    Ok(event.with_headers(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let event = Event::text("orders.created", "hi")
            .with_key("k")
            .with_headers(BTreeMap::from([("trace".to_owned(), "t1".to_owned())]));
        validate(&event, 1 << 20).unwrap();
        let back = event_from_message("orders.created", Some(&headers(&event)), b"hi").unwrap();
        assert_eq!(back.id(), event.id());
        assert_eq!(back.key(), Some("k"));
        assert_eq!(back.headers()["trace"], "t1");
        assert_eq!(back.content_type(), event.content_type());

        for (subject, field) in [("a..b", "topic"), ("a.*", "topic"), ("a b", "topic")] {
            let e = validate(&Event::text(subject, "x"), 1 << 20).unwrap_err();
            assert_eq!(e.field(), Some(field), "{subject}: {e}");
        }
        let e = validate(
            &Event::text("a", "x")
                .with_headers(BTreeMap::from([("Nats-Msg-Id".to_owned(), "x".to_owned())])),
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("headers"));
        let e = validate(&Event::new("a", vec![0u8; 2000]), 1024).unwrap_err();
        assert_eq!(e.field(), Some("payload"));
    }

    #[test]
    fn plain_subjects_are_exactly_the_simple_valid_ones() {
        for ok in ["orders", "orders.eu.v1", "a-b_c.D9", "x"] {
            assert!(plain_subject(ok), "{ok}");
        }
        // Not plain: each goes to the full checks (some of them are still valid there).
        for not in [
            "", ".a", "a.", "a..b", "a b", "a\tb", "a.*", "a.>", "a*b", "ünï", "a\u{7f}",
        ] {
            assert!(!plain_subject(not), "{not:?}");
        }
        // Every byte that is printable ASCII and not a wildcard or a dot is plain on its own.
        for b in 0..=255u8 {
            let s = [b];
            let Ok(s) = std::str::from_utf8(&s) else {
                continue;
            };
            let expected = b.is_ascii_graphic() && b != b'*' && b != b'>' && b != b'.';
            assert_eq!(plain_subject(s), expected, "byte {b:#04x}");
        }
    }
}
