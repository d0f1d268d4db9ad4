//! Support for the cross-backend integration suite: where each broker is (one place), a
//! read-back probe for every backend, and the fault proxy.
//!
//! Brokers are found by the workspace's one rule (`publisher_core::testing::find_broker`): the
//! variable (`PUBLISHER_TEST_REDIS_URL`, `PUBLISHER_TEST_AMQP_URL`,
//! `PUBLISHER_TEST_KAFKA_BROKERS`; it must answer), then the local default port, then a
//! container where a Docker engine answers (feature `testcontainers`; reused across runs), then
//! Kafka's embedded mock cluster outside CI; otherwise the backend is skipped with one line, and
//! under `CI=true` a skipped backend is a failure, so CI never goes green without its brokers.
#![forbid(unsafe_code)]

pub mod brokers;
pub mod console_probe;

pub use brokers::{Broker, Endpoint, endpoint};
pub use publisher_core::testing::{FaultProxy, ProbeHarness, ProxyMode};

/// Ready-made harnesses, one per backend: publishers from `publisher::from_url`, read back
/// with the backend's own probe; `None` when the broker is missing (see [`endpoint`]).
pub mod suites {
    use publisher_amqp::testing::QueueProbe;
    use publisher_core::testing::{Probe, ProbeHarness};
    use publisher_kafka::testing::TopicProbe;
    use publisher_nats::testing::StreamProbe as JetStreamProbe;
    use publisher_redis::testing::{PubsubProbe, StreamProbe};

    use crate::console_probe::FileProbe;
    use crate::{Broker, endpoint};

    /// Publishers opened by `publisher::from_url(url)`, read back with `probe`.
    pub fn through_facade<P: Probe>(probe: P, url: String) -> ProbeHarness<P> {
        ProbeHarness::new(probe, move || {
            let url = url.clone();
            async move { publisher::from_url(&url).await }
        })
    }

    /// The harness on `broker`: its probe made from the broker's address, the
    /// facade's URL with `param` added.
    async fn on<P: Probe>(
        broker: Broker,
        probe: impl FnOnce(String) -> P,
        param: &str,
    ) -> Option<ProbeHarness<P>> {
        let ep = endpoint(broker).await?;
        let url = match (param, ep.url()) {
            ("", url) => url,
            (param, url) if url.contains('?') => format!("{url}&{param}"),
            (param, url) => format!("{url}?{param}"),
        };
        Some(through_facade(probe(ep.address), url))
    }

    /// Redis streams.
    pub async fn redis_stream() -> Option<ProbeHarness<StreamProbe>> {
        on(Broker::Redis, StreamProbe::new, "mode=stream").await
    }

    /// Redis pub/sub.
    pub async fn redis_pubsub() -> Option<ProbeHarness<PubsubProbe>> {
        on(Broker::Redis, PubsubProbe::new, "mode=pubsub").await
    }

    /// RabbitMQ through the default exchange, read back from a queue per topic.
    pub async fn amqp() -> Option<ProbeHarness<QueueProbe>> {
        on(Broker::RabbitMq, QueueProbe::new, "").await
    }

    /// Kafka, read back with an rdkafka consumer.
    pub async fn kafka() -> Option<ProbeHarness<TopicProbe>> {
        on(Broker::Kafka, TopicProbe::new, "").await
    }

    /// NATS JetStream, read back from a stream per subject.
    pub async fn nats() -> Option<ProbeHarness<JetStreamProbe>> {
        on(Broker::Nats, JetStreamProbe::new, "").await
    }

    /// The console writing JSON lines to a file.
    pub async fn console() -> Option<ProbeHarness<FileProbe>> {
        let probe = FileProbe::new();
        let url = probe.url();
        Some(through_facade(probe, url))
    }
}
