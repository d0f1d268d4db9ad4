//! Support for the cross-backend integration suite: where each broker is (one place), a
//! read-back probe for every backend, and the fault proxy.
//!
//! Brokers are found in this order:
//! 1. Environment: `PUBLISHER_TEST_REDIS_URL`, `PUBLISHER_TEST_AMQP_URL`,
//!    `PUBLISHER_TEST_KAFKA_BROKERS` point at running brokers.
//! 2. testcontainers (feature `testcontainers`): when no URL is given and a Docker engine
//!    answers, the suite starts its own container and removes it afterwards.
//! 3. Neither: the backend is reported as skipped with the reason. Under `CI=true` a skipped
//!    backend is a failure, so CI can never go green without having talked to a broker.
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

    /// The console writing JSON lines to a file.
    pub async fn console() -> Option<Suite<FileProbe>> {
        let probe = FileProbe::new();
        let url = probe.url();
        Some(Suite::new(probe, url, None))
    }
}
