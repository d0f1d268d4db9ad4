//! How an [`Event`] maps onto a stream entry or a pub/sub message, and back.
//!
//! Stream entries (`XADD <topic> * field value …`) carry these fields:
//!
//! | field | value |
//! |---|---|
//! | `id` | the event id (UUID, hyphenated) |
//! | `key` | the key, when set |
//! | `content_type` | the content type, when set |
//! | `timestamp` | milliseconds since the Unix epoch |
//! | `h.<name>` | one field per header |
//! | `payload` | the payload bytes, unchanged |
//!
//! Pub/sub messages carry the JSON envelope of `publisher_core::envelope` (or, with
//! `format=payload`, the payload bytes alone).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use publisher_core::{Error, Event, Result, Uuid};

use crate::BACKEND;

/// Field holding the event id.
pub const FIELD_ID: &str = "id";
/// Field holding the key.
pub const FIELD_KEY: &str = "key";
/// Field holding the content type.
pub const FIELD_CONTENT_TYPE: &str = "content_type";
/// Field holding the timestamp in milliseconds.
pub const FIELD_TIMESTAMP: &str = "timestamp";
/// Field holding the payload.
pub const FIELD_PAYLOAD: &str = "payload";
/// Prefix of header fields.
pub const HEADER_PREFIX: &str = "h.";

/// How many arguments and about how many bytes [`add_stream_fields`] appends for `event`.
pub(crate) fn stream_entry_size(event: &Event) -> (usize, usize) {
    let headers: usize = event
        .headers()
        .iter()
        .map(|(k, v)| HEADER_PREFIX.len() + k.len() + v.len())
        .sum();
    let key = event.key().map_or(0, |k| FIELD_KEY.len() + k.len());
    let ct = event
        .content_type()
        .map_or(0, |c| FIELD_CONTENT_TYPE.len() + c.len());
    let args = 2 * (3 + usize::from(key > 0) + usize::from(ct > 0) + event.headers().len());
    // id, timestamp and payload fields with their values (a UUID is 36 bytes, a timestamp 13).
    let fixed = 2 + 36 + 9 + 20 + 7;
    (
        args,
        event.topic().len() + event.payload().len() + headers + key + ct + fixed,
    )
}

/// Appends the fields of `event` to an `XADD` command.
pub(crate) fn add_stream_fields(cmd: &mut redis::Cmd, event: &Event) {
    let mut id = Uuid::encode_buffer();
    cmd.arg(FIELD_ID)
        .arg(&*event.id().hyphenated().encode_lower(&mut id));
    if let Some(key) = event.key() {
        cmd.arg(FIELD_KEY).arg(key);
    }
    if let Some(ct) = event.content_type() {
        cmd.arg(FIELD_CONTENT_TYPE).arg(ct);
    }
    cmd.arg(FIELD_TIMESTAMP).arg(event.timestamp_millis());
    for (name, value) in event.headers() {
        cmd.arg(format!("{HEADER_PREFIX}{name}")).arg(value);
    }
    cmd.arg(FIELD_PAYLOAD).arg(event.payload().as_ref());
}

/// Rebuilds an event from the fields of a stream entry read from `topic` (what a consumer of
/// the stream does).
///
/// # Errors
/// `InvalidEvent` naming the field that is missing or malformed.
pub fn event_from_stream_fields(topic: &str, fields: &HashMap<String, Vec<u8>>) -> Result<Event> {
    let text = |name: &'static str| -> Result<Option<String>> {
        fields
            .get(name)
            .map(|v| {
                String::from_utf8(v.clone())
                    .map_err(|_| Error::invalid_event(BACKEND, name, "field is not UTF-8"))
            })
            .transpose()
    };
    let payload = fields
        .get(FIELD_PAYLOAD)
        .ok_or_else(|| Error::invalid_event(BACKEND, FIELD_PAYLOAD, "entry has no payload"))?;
    let mut event = Event::new(topic, payload.clone());
    if let Some(id) = text(FIELD_ID)? {
        let id = Uuid::parse_str(&id)
            .map_err(|e| Error::invalid_event(BACKEND, FIELD_ID, "not a UUID").with_source(e))?;
        event = event.with_id(id);
    }
    if let Some(key) = text(FIELD_KEY)? {
        event = event.with_key(key);
    }
    if let Some(ct) = text(FIELD_CONTENT_TYPE)? {
        event = event.with_content_type(ct);
    }
    if let Some(ms) = text(FIELD_TIMESTAMP)? {
        let ms: u64 = ms.parse().map_err(|_| {
            Error::invalid_event(BACKEND, FIELD_TIMESTAMP, "not a number of milliseconds")
        })?;
        event = event.with_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in fields {
        if let Some(h) = name.strip_prefix(HEADER_PREFIX) {
            let value = String::from_utf8(value.clone())
                .map_err(|_| Error::invalid_event(BACKEND, "headers", "header is not UTF-8"))?;
            headers.insert(h.to_owned(), value);
        }
    }
    Ok(event.with_headers(headers))
}
