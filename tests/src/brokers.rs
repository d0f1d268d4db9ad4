//! Finding a broker for each backend, by the rule every test of the workspace follows
//! (`publisher_core::testing::find_broker`): the environment variable (it must answer), then
//! the local default port, then testcontainers where a Docker engine answers (feature
//! `testcontainers`), then an embedded broker where one exists (Kafka: librdkafka's
//! in-process mock cluster), else skip with one line (a failure under CI).

pub use publisher_core::testing::Broker;

/// A reachable broker: how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The broker.
    pub broker: Broker,
    /// The address in the backend's own terms: a `redis://` or `amqp://` URL, or Kafka
    /// `host:port[,…]` brokers.
    pub address: String,
}

impl Endpoint {
    /// The URL `publisher::from_url` takes for this broker.
    pub fn url(&self) -> String {
        match self.broker {
            Broker::Kafka => format!("kafka://{}", self.address),
            _ => self.address.clone(),
        }
    }
}

pub use publisher_core::testing::is_ci;

/// The address of `broker`, or `None` (after saying why, once) when there is none.
///
/// # Panics
/// Under `CI=true` when there is no broker (CI must never pass without one), and when the
/// backend's variable is set but nothing answers there.
pub async fn endpoint(broker: Broker) -> Option<Endpoint> {
    let address = match publisher_core::testing::find_broker(broker) {
        Ok(address) => address,
        // Kafka's embedded default (outside CI: it panics there without a broker).
        Err(_) if broker == Broker::Kafka => publisher_kafka::testing::test_brokers(),
        Err(why) => {
            publisher_core::testing::skip(broker.name(), broker.var(), &why);
            return None;
        }
    };
    Some(Endpoint { broker, address })
}
