//! How an [`Event`] maps onto a Kafka record, and back.
//!
//! | event | record |
//! |---|---|
//! | topic | topic |
//! | key | key (records with the same key go to the same partition, in order) |
//! | id | header `x-publisher-id` |
//! | content type | header `x-publisher-content-type` |
//! | headers | headers (header names starting with `x-publisher-` are reserved) |
//! | timestamp | record timestamp (create time, ms) |
//! | payload | value, unchanged |

use std::time::{Duration, SystemTime};

use publisher_core::{Error, Event, Result, Uuid};
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::BACKEND;

/// Header carrying the event id.
pub const HEADER_ID: &str = "x-publisher-id";
/// Header carrying the content type.
pub const HEADER_CONTENT_TYPE: &str = "x-publisher-content-type";
const RESERVED_PREFIX: &str = "x-publisher-";
/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Whether `b` is a byte Kafka allows in a topic name: `[A-Za-z0-9._-]`. Branch-free, so that
/// [`legal_topic`] compiles to vector compares: it runs on every publish.
#[inline]
fn legal_byte(b: u8) -> bool {
    let digit = b.wrapping_sub(b'0') < 10;
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    digit | letter | (b == b'.') | (b == b'_') | (b == b'-')
}

/// Whether every byte of `topic` is legal (all of them read, no early exit: that vectorizes).
fn legal_topic(topic: &str) -> bool {
    topic.bytes().fold(true, |ok, b| ok & legal_byte(b))
}

/// Checks the topic name as the broker would, the header names, and the size against
/// `max_bytes` (`message.max.bytes`).
pub(crate) fn validate(event: &Event, max_bytes: usize) -> Result<()> {
    event.validate(BACKEND)?;
    let topic = event.topic();
    let bad_topic = |why: String| Err(Error::invalid_event(BACKEND, "topic", why));
    if topic.len() > MAX_TOPIC_LEN {
        return bad_topic(format!(
            "topic names are at most {MAX_TOPIC_LEN} characters, got {}",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return bad_topic(format!("`{topic}` is not a valid topic name"));
    }
    if !legal_topic(topic)
        && let Some(c) = topic
            .chars()
            .find(|c| !(c.is_ascii() && legal_byte(*c as u8)))
    {
        return bad_topic(format!(
            "topic `{topic}` contains {c:?}; Kafka allows only [A-Za-z0-9._-]"
        ));
    }
    if let Some(name) = event
        .headers()
        .keys()
        .find(|k| k.starts_with(RESERVED_PREFIX))
    {
        return Err(Error::invalid_event(
            BACKEND,
            "headers",
            format!("header `{name}`: names starting with `{RESERVED_PREFIX}` are reserved"),
        ));
    }
    let size = event.payload().len()
        + event.key().map_or(0, str::len)
        + event
            .headers()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > max_bytes {
        return Err(Error::invalid_event(
            BACKEND,
            "payload",
            format!("the record is {size} bytes, over message.max.bytes ({max_bytes})"),
        ));
    }
    Ok(())
}

/// The record for `event` (call [`validate`] first).
pub(crate) fn record(event: &Event) -> FutureRecord<'_, str, [u8]> {
    let mut record = FutureRecord::to(event.topic())
        .payload(event.payload().as_ref())
        .headers(headers(event))
        .timestamp(event.timestamp_millis());
    if let Some(key) = event.key() {
        record = record.key(key);
    }
    record
}

/// The record headers for `event`. librdkafka copies header values, so the id is encoded on
/// the stack.
fn headers(event: &Event) -> OwnedHeaders {
    let mut buf = Uuid::encode_buffer();
    let id = event.id().hyphenated().encode_lower(&mut buf);
    let mut h = OwnedHeaders::new_with_capacity(event.headers().len() + 2).insert(Header {
        key: HEADER_ID,
        value: Some(id.as_bytes()),
    });
    if let Some(ct) = event.content_type() {
        h = h.insert(Header {
            key: HEADER_CONTENT_TYPE,
            value: Some(ct.as_bytes()),
        });
    }
    for (k, v) in event.headers() {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// Rebuilds an event from a consumed record (what a consumer of the topic does).
///
/// # Errors
/// `InvalidEvent` naming the header or field that is malformed.
pub fn event_from_message(msg: &BorrowedMessage<'_>) -> Result<Event> {
    let mut event = Event::new(msg.topic(), msg.payload().unwrap_or_default().to_vec());
    if let Some(key) = msg.key() {
        let key = std::str::from_utf8(key)
            .map_err(|_| Error::invalid_event(BACKEND, "key", "key is not UTF-8"))?;
        event = event.with_key(key);
    }
    if let Some(ms) = msg.timestamp().to_millis() {
        event =
            event.with_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    }
    let mut headers = std::collections::BTreeMap::new();
    if let Some(hs) = msg.headers() {
        for h in hs.iter() {
            let value = std::str::from_utf8(h.value.unwrap_or_default())
                .map_err(|_| Error::invalid_event(BACKEND, "headers", "header is not UTF-8"))?;
            match h.key {
                HEADER_ID => {
                    let id = Uuid::parse_str(value).map_err(|e| {
                        Error::invalid_event(BACKEND, HEADER_ID, "not a UUID").with_source(e)
                    })?;
                    event = event.with_id(id);
                }
                HEADER_CONTENT_TYPE => event = event.with_content_type(value),
                name => {
                    headers.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }
    Ok(event.with_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_bytes_are_exactly_kafkas() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
            assert_eq!(legal_byte(b), expected, "byte {b:#04x}");
        }
        assert!(legal_topic("orders.v1_EU-2"));
        assert!(!legal_topic("orders v1"));
        assert!(!legal_topic("ordérs"));
        assert!(!legal_topic("a/b"));
    }
}
