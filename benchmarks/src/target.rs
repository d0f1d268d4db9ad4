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
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Console => "console",
            Backend::Redis => "redis",
            Backend::Amqp => "amqp",
            Backend::Kafka => "kafka",
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
    /// The broker for `backend` by the tests' rule (`publisher_core::testing::configured_or_local`:
    /// the variable, which must answer, else the local default), or `None` when nothing
    /// answers.
    ///
    /// # Panics
    /// When the backend's variable is set and nothing answers there.
    pub fn find(backend: Backend, dir: &std::path::Path) -> Option<Target> {
        let (var, default) = match backend {
            Backend::Console => {
                return Some(Target {
                    backend,
                    address: dir.join("bench.jsonl").display().to_string(),
                });
            }
            Backend::Redis => ("PUBLISHER_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            Backend::Amqp => (
                "PUBLISHER_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            Backend::Kafka => ("PUBLISHER_TEST_KAFKA_BROKERS", "127.0.0.1:9092"),
        };
        // The workspace's one rule: the variable (which must answer), else the local default.
        match publisher_core::testing::configured_or_local(&backend.to_string(), var, default) {
            Some(address) => Some(Target { backend, address }),
            None => {
                eprintln!("{backend}: nothing answers at {default} ({var}); skipped");
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
        }
    }
}
