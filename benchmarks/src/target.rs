//! Which backends to measure and where their brokers are (same variables as the tests).

use std::fmt;

/// A backend under measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// JSON lines to a file.
    Console,
    /// Redis streams.
    Redis,
    /// RabbitMQ with publisher confirms.
    Amqp,
    /// Kafka with acks=all.
    Kafka,
    /// NATS JetStream, PubAcks awaited.
    Nats,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Console => "console",
            Backend::Redis => "redis",
            Backend::Amqp => "amqp",
            Backend::Kafka => "kafka",
            Backend::Nats => "nats",
        })
    }
}

/// Where a backend's broker is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The backend.
    pub backend: Backend,
    /// Redis/AMQP URL, Kafka brokers, or the console output file.
    pub address: String,
}

impl Target {
    /// The broker for `backend` by the tests' rule (`publisher_core::testing::find_broker`:
    /// the variable, which must answer, else the local default, else a container with
    /// `publisher-core/testcontainers`), or `None` (said on stderr) when there is none: a
    /// benchmark against an embedded mock would measure the mock.
    ///
    /// # Panics
    /// When the backend's variable is set and nothing answers there.
    pub fn find(backend: Backend, dir: &std::path::Path) -> Option<Target> {
        use publisher_core::testing::Broker;
        let broker = match backend {
            Backend::Console => {
                return Some(Target {
                    backend,
                    address: dir.join("bench.jsonl").display().to_string(),
                });
            }
            Backend::Redis => Broker::Redis,
            Backend::Amqp => Broker::RabbitMq,
            Backend::Kafka => Broker::Kafka,
            Backend::Nats => Broker::Nats,
        };
        match publisher_core::testing::find_broker(broker) {
            Ok(address) => Some(Target { backend, address }),
            Err(why) => {
                eprintln!("{backend}: {why} ({}); skipped", broker.var());
                None
            }
        }
    }

    /// The `publisher::from_url` URL for this target.
    pub fn url(&self) -> String {
        match self.backend {
            Backend::Console => format!("console://{}?format=json&flush=batch", self.address),
            Backend::Redis => {
                let sep = if self.address.contains('?') { '&' } else { '?' };
                format!("{}{sep}mode=stream", self.address)
            }
            Backend::Amqp => self.address.clone(),
            Backend::Kafka => format!("kafka://{}", self.address),
            Backend::Nats => self.address.clone(),
        }
    }
}
