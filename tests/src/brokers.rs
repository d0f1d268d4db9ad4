//! Finding a broker for each backend, by the rule every test of the workspace follows
//! (`publisher_core::testing::configured_or_local`): the environment variable (it must
//! answer), then the local default port, then testcontainers where a Docker engine answers,
//! then an embedded broker where one exists (Kafka: librdkafka's in-process mock cluster),
//! else skip with one line (a failure under CI).

use std::fmt;

/// A backend that needs a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Redis.
    Redis,
    /// RabbitMQ.
    Amqp,
    /// Kafka.
    Kafka,
}

impl Backend {
    /// Where the broker is when nothing says otherwise.
    pub fn local_default(self) -> &'static str {
        match self {
            Backend::Redis => "redis://127.0.0.1:6379",
            Backend::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Backend::Kafka => "127.0.0.1:9092",
        }
    }

    /// The environment variable that points at a running broker.
    pub fn env_var(self) -> &'static str {
        match self {
            Backend::Redis => "PUBLISHER_TEST_REDIS_URL",
            Backend::Amqp => "PUBLISHER_TEST_AMQP_URL",
            Backend::Kafka => "PUBLISHER_TEST_KAFKA_BROKERS",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "redis",
            Backend::Amqp => "amqp",
            Backend::Kafka => "kafka",
        })
    }
}

/// A reachable broker: how to reach it, and (with testcontainers) the container that lives as
/// long as this value.
pub struct Endpoint {
    /// The backend.
    pub backend: Backend,
    /// The address in the backend's own terms: a `redis://` or `amqp://` URL, or Kafka
    /// `host:port[,…]` brokers.
    pub address: String,
    #[allow(dead_code)]
    container: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("backend", &self.backend)
            .field("address", &self.address)
            .field("container", &self.container.is_some())
            .finish()
    }
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
    let name = backend.to_string();
    if let Some(address) = publisher_core::testing::configured_or_local(
        &name,
        backend.env_var(),
        backend.local_default(),
    ) {
        return Some(Endpoint {
            backend,
            address,
            container: None,
        });
    }
    let reason = match containers::start(backend).await {
        Ok(endpoint) => return Some(endpoint),
        Err(reason) => reason,
    };
    if backend == Backend::Kafka && !is_ci() {
        return Some(Endpoint {
            backend,
            address: publisher_kafka::testing::test_brokers(),
            container: None,
        });
    }
    publisher_core::testing::skip(
        &name,
        backend.env_var(),
        &format!(
            "nothing answers at {} and {reason}",
            backend.local_default()
        ),
    );
    None
}

#[cfg(not(feature = "testcontainers"))]
mod containers {
    use super::{Backend, Endpoint};

    pub(super) async fn start(_: Backend) -> Result<Endpoint, String> {
        Err("the `testcontainers` feature is off".into())
    }
}

#[cfg(feature = "testcontainers")]
mod containers {
    use testcontainers::runners::AsyncRunner;
    use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
    use testcontainers_modules::rabbitmq::RabbitMq;
    use testcontainers_modules::redis::{REDIS_PORT, Redis};

    use super::{Backend, Endpoint};

    fn no_docker(e: impl std::fmt::Display) -> String {
        format!("no Docker engine answered ({e})")
    }

    pub(super) async fn start(backend: Backend) -> Result<Endpoint, String> {
        let (address, container): (String, Box<dyn std::any::Any + Send + Sync>) = match backend {
            Backend::Redis => {
                let c = Redis::default().start().await.map_err(no_docker)?;
                let port = c.get_host_port_ipv4(REDIS_PORT).await.map_err(no_docker)?;
                (format!("redis://127.0.0.1:{port}"), Box::new(c))
            }
            Backend::Amqp => {
                let c = RabbitMq::default().start().await.map_err(no_docker)?;
                let port = c.get_host_port_ipv4(5672).await.map_err(no_docker)?;
                (
                    format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
                    Box::new(c),
                )
            }
            Backend::Kafka => {
                let c = Kafka::default().start().await.map_err(no_docker)?;
                let port = c.get_host_port_ipv4(KAFKA_PORT).await.map_err(no_docker)?;
                (format!("127.0.0.1:{port}"), Box::new(c))
            }
        };
        Ok(Endpoint {
            backend,
            address,
            container: Some(container),
        })
    }
}
