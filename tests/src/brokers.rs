//! Finding a broker for each backend, by the rule every test of the workspace follows
//! (`publisher_core::testing::find_broker`): the environment variable (it must answer), then
//! the local default port, then testcontainers where a Docker engine answers (feature
//! `testcontainers`), then an embedded broker where one exists (Kafka: librdkafka's
//! in-process mock cluster), else skip with one line (a failure under CI).

use std::fmt;

use publisher_core::testing::Broker;

/// A backend that needs a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Redis.
    Redis,
    /// RabbitMQ.
    Amqp,
    /// Kafka.
    Kafka,
    /// NATS JetStream.
    Nats,
}

impl Backend {
    /// The broker the workspace's rule looks for.
    pub fn broker(self) -> Broker {
        match self {
            Backend::Redis => Broker::Redis,
            Backend::Amqp => Broker::RabbitMq,
            Backend::Kafka => Broker::Kafka,
            Backend::Nats => Broker::Nats,
        }
    }

    /// Where the broker is when nothing says otherwise.
    pub fn local_default(self) -> &'static str {
        self.broker().local_default()
    }

    /// The environment variable that points at a running broker.
    pub fn env_var(self) -> &'static str {
        self.broker().var()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "redis",
            Backend::Amqp => "amqp",
            Backend::Kafka => "kafka",
            Backend::Nats => "nats",
        })
    }
}

/// A reachable broker: how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The backend.
    pub backend: Backend,
    /// The address in the backend's own terms: a `redis://` or `amqp://` URL, or Kafka
    /// `host:port[,…]` brokers.
    pub address: String,
}

impl Endpoint {
    /// The URL `publisher::from_url` takes for this broker.
    pub fn url(&self) -> String {
        match self.backend {
            Backend::Kafka => format!("kafka://{}", self.address),
            _ => self.address.clone(),
        }
    }
}

pub use publisher_core::testing::is_ci;

/// The broker for `backend`, or `None` (after saying why, once) when there is none.
///
/// # Panics
/// Under `CI=true` when there is no broker (CI must never pass without one), and when the
/// backend's variable is set but nothing answers there.
pub async fn endpoint(backend: Backend) -> Option<Endpoint> {
    let address = match publisher_core::testing::find_broker(backend.broker()) {
        Ok(address) => address,
        // Kafka's embedded default (outside CI: it panics there without a broker).
        Err(_) if backend == Backend::Kafka => publisher_kafka::testing::test_brokers(),
        Err(why) => {
            publisher_core::testing::skip(&backend.to_string(), backend.env_var(), &why);
            return None;
        }
    };
    Some(Endpoint { backend, address })
}
