//! The read-back probe for the conformance suite (feature `testing`): one JetStream stream per
//! test subject, read back message by message with the stream's own API.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use publisher_core::testing::{
    BadEvent, Intent, Probe, Received, invalid_event, unique_name, url_addr,
};
use publisher_core::{Error, ErrorKind, Event, Result, Uuid, async_trait};

use crate::BACKEND;
use crate::mapping::event_from_message;

fn probe_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Other, BACKEND, format!("probe: {what}: {e}"))
}

/// The stream that captures `subject` in the probe's scheme (a stream name has no `.`).
pub fn stream_name(subject: &str) -> String {
    subject.replace(['.', '*', '>', ' '], "_")
}

/// A JetStream context on the server at `url`.
///
/// # Errors
/// When the server cannot be reached.
pub async fn connect(url: &str) -> Result<jetstream::Context> {
    let (options, address) = crate::NatsConfig::from_url(url)?.connect_options().await?;
    let client = options
        .connect(address.as_str())
        .await
        .map_err(|e| probe_error("connecting", e))?;
    Ok(jetstream::new(client))
}

/// Creates a file-stored stream capturing exactly `subject`.
///
/// # Errors
/// When JetStream refuses.
pub async fn create_stream(js: &jetstream::Context, subject: &str) -> Result<()> {
    js.create_stream(stream::Config {
        name: stream_name(subject),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| probe_error("creating a stream", e))?;
    Ok(())
}

/// Every message the stream capturing `subject` holds, as events.
///
/// # Errors
/// When the stream cannot be read or a message does not decode.
pub async fn read_stream(js: &jetstream::Context, subject: &str) -> Result<Vec<Event>> {
    let mut stream = js
        .get_stream(stream_name(subject))
        .await
        .map_err(|e| probe_error("opening the stream", e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| probe_error("stream info", e))?
        .state
        .clone();
    let mut events = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return Ok(events);
    }
    for seq in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(seq).await {
            Ok(m) => events.push(event_from_message(
                m.subject.as_str(),
                Some(&m.headers),
                &m.payload,
            )?),
            // A deleted sequence (none here, but the API allows gaps).
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(probe_error("reading a message", e)),
        }
    }
    Ok(events)
}

/// Reads back through JetStream; one stream per test subject, deleted at cleanup.
#[derive(Debug, Clone)]
pub struct StreamProbe {
    url: String,
}

impl StreamProbe {
    /// A probe on the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }
}

#[async_trait]
impl Probe for StreamProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        let subject = unique_name(&format!("publisher-test.{hint}"));
        create_stream(&connect(&self.url).await?, &subject).await?;
        Ok(subject)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let js = connect(&self.url).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = read_stream(&js, topic).await?;
            if events.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(events.iter().map(Received::from).collect());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cleanup(&self, topic: &str) {
        if let Ok(js) = connect(&self.url).await {
            let _ = js.delete_stream(stream_name(topic)).await;
        }
    }

    /// Unroutable: a subject no stream captures (`Rejected`). Oversized: over the server's
    /// default `max_payload` of 1 MiB (`InvalidEvent`, refused before sending).
    fn bad_event(&self, intent: Intent, _topic: &str, n: usize) -> Option<BadEvent> {
        match intent {
            Intent::Unroutable => Some(BadEvent {
                event: Event::text(
                    format!("publisher-test.nostream.{}", Uuid::now_v7().simple()),
                    format!("unroutable {n}"),
                ),
                expect: ErrorKind::Rejected,
            }),
            Intent::Oversized => Some(BadEvent {
                event: Event::new(_topic, vec![b'x'; 2 * 1024 * 1024]),
                expect: ErrorKind::InvalidEvent,
            }),
            other => invalid_event(other, n),
        }
    }

    fn broker_addr(&self) -> Option<std::net::SocketAddr> {
        url_addr(&self.url, 4222)
    }
}
