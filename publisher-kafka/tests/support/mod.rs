//! Shared test support: where Kafka is, topic creation, read-back with an rdkafka consumer, and
//! the conformance harness.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use publisher_core::testing::{Harness, Received, unique_name};
use publisher_core::{Event, Publisher, Result, async_trait};
use publisher_kafka::mapping::event_from_message;
use publisher_kafka::{KafkaConfig, KafkaPublisher};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker the tests use: `PUBLISHER_TEST_KAFKA_BROKERS` or the local default (tansu in CI).
pub fn brokers() -> String {
    std::env::var("PUBLISHER_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        ..Default::default()
    }
}

/// Creates `topic` with `partitions` partitions and waits until its metadata shows them.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {topic} on {brokers}: {e}"));
    for r in results {
        if let Err((name, code)) = r {
            panic!("creating topic {name} failed: {code:?}");
        }
    }
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = consumer_config(&brokers).create().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(m) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(2))
                && m.topics().first().is_some_and(|t| {
                    t.error().is_none() && t.partitions().len() == partitions as usize
                })
            {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

pub async fn delete_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
}

fn consumer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", unique_name("publisher-test-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    c
}

/// Reads `topic` from the beginning of every partition with an rdkafka consumer until it holds
/// `n` events or `timeout` passes. Events come back in partition order.
pub async fn consume(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Event> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = consumer_config(&brokers).create().unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => out.push(event_from_message(&msg).unwrap()),
                Some(Err(e)) => panic!("consumer error: {e}"),
                None => {}
            }
        }
        // Anything already fetched beyond `n` is read too, so duplicates would show.
        while let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
            out.push(event_from_message(&msg).unwrap());
        }
        out
    })
    .await
    .unwrap()
}

pub struct KafkaHarness {
    brokers: String,
}

pub async fn harness() -> KafkaHarness {
    KafkaHarness { brokers: brokers() }
}

#[async_trait]
impl Harness for KafkaHarness {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(
            KafkaPublisher::builder()
                .config(config(&self.brokers))
                .build()?,
        ))
    }

    async fn topic(&self, hint: &str) -> Result<String> {
        let topic = unique_name(&format!("publisher-test.{hint}"));
        create_topic(&self.brokers, &topic, 3).await;
        Ok(topic)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(consume(&self.brokers, topic, n, timeout)
            .await
            .iter()
            .map(Received::from)
            .collect())
    }

    async fn cleanup(&self, topic: &str) {
        delete_topic(&self.brokers, topic).await;
    }
}
