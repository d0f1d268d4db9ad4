//! The line formats: JSON lines (the lossless [`envelope`](publisher_core::envelope) of
//! publisher-core, one per line) and text (for people).

use std::fmt::Write as _;

use publisher_core::{Error, Event, Result};

pub use publisher_core::envelope::{Encoding, Envelope, encode as encode_json};

use crate::BACKEND;

fn rfc3339(t: std::time::SystemTime) -> String {
    let t = t.max(std::time::SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Appends `event` as one readable text line to `out`.
///
/// # Errors
/// `InvalidEvent` naming `payload` when the payload is not UTF-8 (use the JSON format, which
/// base64-encodes such payloads).
pub fn encode_text(event: &Event, color: bool, out: &mut Vec<u8>) -> Result<()> {
    let payload = event.payload_str().ok_or_else(|| {
        Error::invalid_event(
            BACKEND,
            "payload",
            "payload is not UTF-8 and cannot be shown in text format (use format=json)",
        )
    })?;
    let (dim, cyan, reset) = if color {
        ("\x1b[2m", "\x1b[36m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut s = String::with_capacity(64 + payload.len());
    let _ = write!(
        s,
        "{dim}{}{reset} {cyan}{}{reset}",
        rfc3339(event.timestamp()),
        event.topic()
    );
    if let Some(key) = event.key() {
        let _ = write!(s, " key={key}");
    }
    for (k, v) in event.headers() {
        let _ = write!(s, " {k}={v}");
    }
    let _ = write!(s, " {dim}id={}{reset} ", event.id());
    // Keep one event on one line.
    for ch in payload.chars() {
        match ch {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s.push('\n');
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_refuses_binary_naming_payload() {
        let mut out = Vec::new();
        let err = encode_text(&Event::new("t", vec![0xffu8]), false, &mut out).unwrap_err();
        assert_eq!(err.field(), Some("payload"));
        encode_text(
            &Event::text("orders", "a\nb").with_key("k"),
            false,
            &mut out,
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(" orders key=k "), "{s}");
        assert!(s.ends_with("a\\nb\n"), "{s}");
    }
}
