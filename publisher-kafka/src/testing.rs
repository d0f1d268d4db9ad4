//! Read-back probe for the conformance suite (feature `testing`): topics created with the admin
//! API before publishing, read from the beginning of every partition with an rdkafka consumer.

use std::time::{Duration, Instant};

use publisher_core::testing::{BadEvent, Intent, Probe, Received, unique_name};
use publisher_core::{Error, ErrorKind, Event, Result, async_trait};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::BACKEND;
use crate::mapping::event_from_message;

fn probe_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Other, BACKEND, msg.into())
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| probe_error(format!("admin client: {e}")))
}

fn consumer(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("publisher-test-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| probe_error(format!("consumer: {e}")))
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits until its metadata
/// shows them.
///
/// # Errors
/// When the broker refuses or the topic does not appear within 15 s.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin(brokers)?
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| probe_error(format!("creating topic {topic}: {e}")))?;
    for r in results {
        r.map_err(|(name, code)| probe_error(format!("creating topic {name}: {code:?}")))?;
    }
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&brokers)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(m) = c.fetch_metadata(Some(&topic), Duration::from_secs(2))
                && m.topics().first().is_some_and(|t| {
                    t.error().is_none() && t.partitions().len() == partitions as usize
                })
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(probe_error(format!("topic {topic} never appeared")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .map_err(|e| probe_error(format!("probe task: {e}")))?
}

/// Deletes `topic` (ignoring errors).
pub async fn delete_topic(brokers: &str, topic: &str) {
    if let Ok(a) = admin(brokers) {
        let _ = a.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// Reads `topic` from the beginning of every partition until it holds `n` events or `timeout`
/// passes, then whatever else is already there (so duplicates show). In partition order.
///
/// # Errors
/// When the topic cannot be read or a record does not decode.
pub async fn consume(
    brokers: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Event>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&brokers)?;
        let metadata = c
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| probe_error(format!("metadata of {topic}: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .map_err(|e| probe_error(e.to_string()))?;
            }
        }
        c.assign(&tpl).map_err(|e| probe_error(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => out.push(event_from_message(&msg)?),
                Some(Err(e)) => return Err(probe_error(format!("consumer: {e}"))),
                None => {}
            }
        }
        while let Some(Ok(msg)) = c.poll(Duration::from_millis(200)) {
            out.push(event_from_message(&msg)?);
        }
        Ok(out)
    })
    .await
    .map_err(|e| probe_error(format!("probe task: {e}")))?
}

/// Creates a topic (3 partitions) per scenario and reads it back with a consumer.
#[derive(Debug, Clone)]
pub struct TopicProbe {
    brokers: String,
    unroutable: bool,
}

impl TopicProbe {
    /// A probe on the brokers `host:port[,…]`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            unroutable: false,
        }
    }

    /// The publishers under test create no topics (`allow.auto.create.topics=false`, or a
    /// broker with auto-creation off): events to a topic that does not exist are the
    /// unroutable ones of the history scenarios.
    #[must_use]
    pub fn with_unroutable_topics(mut self) -> Self {
        self.unroutable = true;
        self
    }
}

#[async_trait]
impl Probe for TopicProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        let topic = unique_name(&format!("publisher-test.{hint}"));
        create_topic(&self.brokers, &topic, 3).await?;
        Ok(topic)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(consume(&self.brokers, topic, n, timeout)
            .await?
            .iter()
            .map(Received::from)
            .collect())
    }

    async fn cleanup(&self, topic: &str) {
        delete_topic(&self.brokers, topic).await;
    }

    /// Oversized: one byte over the default `max_message_bytes`, refused before sending
    /// (`InvalidEvent`). Invalid: an empty topic. Unroutable (only
    /// [`with_unroutable_topics`](Self::with_unroutable_topics)): a topic that does not exist,
    /// `Rejected`.
    fn bad_event(&self, intent: Intent, topic: &str, n: usize) -> Option<BadEvent> {
        match intent {
            Intent::Unroutable if self.unroutable => Some(BadEvent {
                event: Event::text(format!("{topic}.absent"), format!("unroutable {n}")),
                expect: ErrorKind::Rejected,
            }),
            Intent::Oversized => Some(BadEvent {
                event: Event::new(
                    topic.to_owned(),
                    vec![b'x'; crate::KafkaConfig::default().max_message_bytes + 1],
                ),
                expect: ErrorKind::InvalidEvent,
            }),
            _ => publisher_core::testing::invalid_event(intent, n),
        }
    }
}
