//! Publishes the JSON lines of a file (default `examples/events.jsonl`) to stdout through the
//! console backend. A line is an envelope `{"topic", "key", "headers", "payload"}`; any other
//! JSON value becomes the payload on topic `events`.
//!
//! `cargo run -p publisher-console --example send -- examples/events.jsonl`

use std::collections::BTreeMap;

use publisher_console::ConsolePublisher;
use publisher_core::{Error, ErrorKind, Event, Publisher};

fn event_from_line(line: &str, n: usize) -> Result<Event, Error> {
    let bad = |msg: String| Error::invalid_event("example", "line", msg);
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("line {n}: invalid JSON: {e}")))?;
    match value {
        serde_json::Value::Object(mut obj) if obj.contains_key("topic") => {
            let topic = obj
                .remove("topic")
                .and_then(|t| t.as_str().map(str::to_owned))
                .ok_or_else(|| bad(format!("line {n}: `topic` must be a string")))?;
            let payload = obj.remove("payload").unwrap_or(serde_json::Value::Null);
            let mut event = Event::json(topic, &payload)?;
            if let Some(key) = obj.get("key").and_then(|k| k.as_str()) {
                event = event.with_key(key);
            }
            if let Some(headers) = obj.get("headers") {
                let headers: BTreeMap<String, String> = serde_json::from_value(headers.clone())
                    .map_err(|e| bad(format!("line {n}: `headers`: {e}")))?;
                event = event.with_headers(headers);
            }
            Ok(event)
        }
        other => Event::json("events", &other),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/events.jsonl".into());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::new(ErrorKind::Config, "example", format!("cannot read {path}")).with_source(e)
    })?;
    let events = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| event_from_line(l, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let publisher = ConsolePublisher::stdout()?;
    let outcome = publisher.publish_batch(events).await;
    let report = publisher.close().await?;
    eprintln!(
        "published {}, failed {}; {report}",
        outcome.succeeded(),
        outcome.failed()
    );
    for (i, e) in outcome.errors() {
        eprintln!("event {}: {e}", i + 1);
    }
    if outcome.is_all_ok() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
