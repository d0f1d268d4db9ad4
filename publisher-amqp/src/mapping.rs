//! How an [`Event`] maps onto an AMQP message, and back.
//!
//! | event | AMQP |
//! |---|---|
//! | topic | routing key |
//! | id | `message_id` property |
//! | content type | `content_type` property |
//! | timestamp | `timestamp` property (seconds) and header `x-publisher-timestamp-ms` |
//! | key | header `x-publisher-key` |
//! | headers | message headers (long strings) |
//! | payload | body, unchanged |
//!
//! Messages are persistent (`delivery_mode` 2) unless configured otherwise. Headers whose name
//! starts with `x-publisher-` are reserved for this mapping.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use publisher_core::{Error, Event, Result, Uuid};

use crate::BACKEND;
use crate::config::MAX_SHORT_STRING;

/// Header carrying the event key.
pub const HEADER_KEY: &str = "x-publisher-key";
/// Header carrying the timestamp in milliseconds.
pub const HEADER_TIMESTAMP_MS: &str = "x-publisher-timestamp-ms";
const RESERVED_PREFIX: &str = "x-publisher-";

fn short(field: &'static str, s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        Error::invalid_event(
            BACKEND,
            field,
            format!(
                "`{}…` is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                s.chars().take(16).collect::<String>(),
                s.len()
            ),
        )
    })
}

/// Checks what AMQP can carry: a routing key and header names of at most 255 bytes, no
/// reserved header names.
pub(crate) fn validate(event: &Event, max_message_bytes: usize) -> Result<()> {
    event.validate(BACKEND)?;
    if event.payload().len() > max_message_bytes {
        return Err(Error::invalid_event(
            BACKEND,
            "payload",
            format!(
                "{} bytes is over max_message_bytes ({max_message_bytes}); RabbitMQ would close \
                 the channel on it",
                event.payload().len()
            ),
        ));
    }
    short("topic", event.topic())?;
    for name in event.headers().keys() {
        short("headers", name)?;
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid_event(
                BACKEND,
                "headers",
                format!("header `{name}`: names starting with `{RESERVED_PREFIX}` are reserved"),
            ));
        }
    }
    Ok(())
}

/// The routing key and properties for `event` (call [`validate`] first).
pub(crate) fn properties(
    event: &Event,
    persistent: bool,
) -> Result<(ShortString, BasicProperties)> {
    let routing_key = short("topic", event.topic())?;
    let mut headers = FieldTable::default();
    for (k, v) in event.headers() {
        headers.insert(
            short("headers", k)?,
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    if let Some(key) = event.key() {
        headers.insert(
            HEADER_KEY.into(),
            AMQPValue::LongString(LongString::from(key.as_bytes().to_vec())),
        );
    }
    headers.insert(
        HEADER_TIMESTAMP_MS.into(),
        AMQPValue::LongLongInt(event.timestamp_millis()),
    );
    let mut props = BasicProperties::default()
        .with_message_id(event.id().hyphenated().to_string().into())
        .with_timestamp((event.timestamp_millis() / 1000).max(0) as u64)
        .with_headers(headers)
        .with_delivery_mode(if persistent { 2 } else { 1 });
    if let Some(ct) = event.content_type() {
        props = props.with_content_type(short("content_type", ct)?);
    }
    Ok((routing_key, props))
}

fn value_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Rebuilds an event from a delivered message (what a consumer of the queue does).
///
/// # Errors
/// `InvalidEvent` naming the property that is malformed.
pub fn event_from_delivery(
    routing_key: &str,
    props: &BasicProperties,
    body: &[u8],
) -> Result<Event> {
    let mut event = Event::new(routing_key, body.to_vec());
    if let Some(id) = props.message_id() {
        let id = Uuid::parse_str(id.as_str()).map_err(|e| {
            Error::invalid_event(BACKEND, "message_id", "not a UUID").with_source(e)
        })?;
        event = event.with_id(id);
    }
    if let Some(ct) = props.content_type() {
        event = event.with_content_type(ct.as_str());
    }
    let mut headers = BTreeMap::new();
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            match k.as_str() {
                HEADER_KEY => {
                    if let Some(key) = value_string(v) {
                        event = event.with_key(key);
                    }
                }
                HEADER_TIMESTAMP_MS => {
                    if let AMQPValue::LongLongInt(ms) = v {
                        event = event.with_timestamp(
                            SystemTime::UNIX_EPOCH + Duration::from_millis((*ms).max(0) as u64),
                        );
                    }
                }
                name => {
                    if let Some(s) = value_string(v) {
                        headers.insert(name.to_owned(), s);
                    }
                }
            }
        }
    }
    Ok(event.with_headers(headers))
}
