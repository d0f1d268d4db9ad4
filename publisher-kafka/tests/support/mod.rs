//! Shared test support: where Kafka is, and the conformance harness built from the crate's
//! `testing` probe.
#![allow(dead_code)]

use std::time::Duration;

use publisher_core::testing::ProbeHarness;
use publisher_core::{Event, Publisher};
use publisher_kafka::testing::TopicProbe;
use publisher_kafka::{KafkaConfig, KafkaPublisher};

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

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    publisher_kafka::testing::create_topic(brokers, topic, partitions)
        .await
        .unwrap_or_else(|e| panic!("cannot create {topic} on {brokers}: {e}"));
}

pub async fn delete_topic(brokers: &str, topic: &str) {
    publisher_kafka::testing::delete_topic(brokers, topic).await;
}

pub async fn consume(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Event> {
    publisher_kafka::testing::consume(brokers, topic, n, timeout)
        .await
        .unwrap()
}

pub async fn harness() -> ProbeHarness<TopicProbe> {
    ProbeHarness::new(TopicProbe::new(brokers()), || {
        std::future::ready(
            KafkaPublisher::builder()
                .config(config(&brokers()))
                .build()
                .map(|p| Box::new(p) as Box<dyn Publisher>),
        )
    })
}
