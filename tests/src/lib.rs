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
mod suite;

pub use brokers::{Backend, Endpoint, endpoint};
pub use publisher_core::testing::{FaultProxy, ProxyMode};
pub use suite::Suite;

/// Ready-made suites, one per backend, each `None` when its broker is missing (see
/// [`endpoint`]).
pub mod suites {
    use publisher_amqp::testing::QueueProbe;
    use publisher_kafka::testing::TopicProbe;
    use publisher_redis::testing::{PubsubProbe, StreamProbe};

    use crate::console_probe::FileProbe;
    use crate::{Backend, Suite, endpoint};

    fn with_param(url: &str, param: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{param}")
    }

    /// Redis streams.
    pub async fn redis_stream() -> Option<Suite<StreamProbe>> {
        let ep = endpoint(Backend::Redis).await?;
        let url = with_param(&ep.url(), "mode=stream");
        Some(Suite::new(
            StreamProbe::new(ep.address.clone()),
            url,
            Some(ep),
        ))
    }

    /// Redis pub/sub.
    pub async fn redis_pubsub() -> Option<Suite<PubsubProbe>> {
        let ep = endpoint(Backend::Redis).await?;
        let url = with_param(&ep.url(), "mode=pubsub");
        Some(Suite::new(
            PubsubProbe::new(ep.address.clone()),
            url,
            Some(ep),
        ))
    }

    /// RabbitMQ through the default exchange, read back from a queue per topic.
    pub async fn amqp() -> Option<Suite<QueueProbe>> {
        let ep = endpoint(Backend::Amqp).await?;
        let url = ep.url();
        Some(Suite::new(
            QueueProbe::new(ep.address.clone()),
            url,
            Some(ep),
        ))
    }

    /// Kafka, read back with an rdkafka consumer.
    pub async fn kafka() -> Option<Suite<TopicProbe>> {
        let ep = endpoint(Backend::Kafka).await?;
        let url = ep.url();
        Some(Suite::new(
            TopicProbe::new(ep.address.clone()),
            url,
            Some(ep),
        ))
    }

    /// NATS JetStream, read back from a stream per subject.
    pub async fn nats() -> Option<Suite<publisher_nats::testing::StreamProbe>> {
        let ep = endpoint(Backend::Nats).await?;
        let url = ep.url();
        Some(Suite::new(
            publisher_nats::testing::StreamProbe::new(ep.address.clone()),
            url,
            Some(ep),
        ))
    }

    /// The console writing JSON lines to a file.
    pub async fn console() -> Option<Suite<FileProbe>> {
        let probe = FileProbe::new();
        let url = probe.url();
        Some(Suite::new(probe, url, None))
    }
}
