//! [`PublisherConfig`]: any backend, described in TOML or environment variables.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use publisher_core::{Error, MemoryPublisher, Publisher, Result};
use serde::{Deserialize, Serialize};

use crate::from_url::FACADE;

/// Which backend to build and how. One table (or environment prefix) per backend:
///
/// ```toml
/// [redis]
/// url = "redis://127.0.0.1:6379"
/// mode = "stream"
/// pool = { max_size = 8, wait_timeout = "2s" }
/// timeouts = { publish = "5s" }
/// ```
///
/// or, from the environment, `PUBLISHER__REDIS__URL=redis://127.0.0.1:6379` and
/// `PUBLISHER__REDIS__POOL__MAX_SIZE=8`. `url = "…"` alone (or `PUBLISHER__URL`) defers to
/// [`from_url`](crate::from_url).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PublisherConfig {
    /// A URL for [`from_url`](crate::from_url).
    Url(String),
    /// The in-memory publisher.
    Memory {},
    /// The console backend.
    #[cfg(feature = "console")]
    Console(publisher_console::ConsoleConfig),
    /// The Redis backend.
    #[cfg(feature = "redis")]
    Redis(publisher_redis::RedisConfig),
    /// The RabbitMQ backend.
    #[cfg(feature = "amqp")]
    Amqp(publisher_amqp::AmqpConfig),
    /// The Kafka backend.
    #[cfg(feature = "kafka")]
    Kafka(publisher_kafka::KafkaConfig),
    /// The NATS JetStream backend.
    #[cfg(feature = "nats")]
    Nats(publisher_nats::NatsConfig),
}

/// Every backend's config redacts its own secrets; a raw URL shows with its password hidden.
impl std::fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublisherConfig::Url(url) => f
                .debug_tuple("Url")
                .field(&publisher_core::config::redact_url(url))
                .finish(),
            PublisherConfig::Memory {} => f.write_str("Memory"),
            #[cfg(feature = "console")]
            PublisherConfig::Console(c) => f.debug_tuple("Console").field(c).finish(),
            #[cfg(feature = "redis")]
            PublisherConfig::Redis(c) => f.debug_tuple("Redis").field(c).finish(),
            #[cfg(feature = "amqp")]
            PublisherConfig::Amqp(c) => f.debug_tuple("Amqp").field(c).finish(),
            #[cfg(feature = "kafka")]
            PublisherConfig::Kafka(c) => f.debug_tuple("Kafka").field(c).finish(),
            #[cfg(feature = "nats")]
            PublisherConfig::Nats(c) => f.debug_tuple("Nats").field(c).finish(),
        }
    }
}

fn figment_error(e: figment::Error) -> Error {
    let field = e
        .path
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(".");
    let err = Error::config(
        FACADE,
        if field.is_empty() {
            "config".to_owned()
        } else {
            field
        },
        e.to_string(),
    );
    err.with_source(e)
}

impl PublisherConfig {
    /// Reads a TOML file, then lets `PUBLISHER__…` environment variables override it.
    ///
    /// # Errors
    /// `Config` naming the field at fault (or `config` when no backend is described).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::extract(
            Figment::new()
                .merge(Toml::file_exact(path.as_ref()))
                .merge(Env::prefixed("PUBLISHER__").split("__")),
        )
    }

    /// Reads `PUBLISHER__…` environment variables only.
    ///
    /// # Errors
    /// As [`PublisherConfig::load`].
    pub fn from_env() -> Result<Self> {
        Self::extract(Figment::new().merge(Env::prefixed("PUBLISHER__").split("__")))
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// As [`PublisherConfig::load`].
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::extract(Figment::new().merge(Toml::string(text)))
    }

    fn extract(figment: Figment) -> Result<Self> {
        figment.extract().map_err(figment_error)
    }

    /// Builds the publisher this configuration describes.
    ///
    /// # Errors
    /// The backend's build errors.
    pub async fn build(self) -> Result<Box<dyn Publisher>> {
        match self {
            PublisherConfig::Url(url) => crate::from_url(&url).await,
            PublisherConfig::Memory {} => Ok(Box::new(MemoryPublisher::new())),
            #[cfg(feature = "console")]
            PublisherConfig::Console(c) => Ok(Box::new(
                publisher_console::ConsolePublisher::builder()
                    .config(c)
                    .build()?,
            )),
            #[cfg(feature = "redis")]
            PublisherConfig::Redis(c) => Ok(Box::new(
                publisher_redis::RedisPublisher::builder()
                    .config(c)
                    .build()?,
            )),
            #[cfg(feature = "amqp")]
            PublisherConfig::Amqp(c) => Ok(Box::new(
                publisher_amqp::AmqpPublisher::builder()
                    .config(c)
                    .build()
                    .await?,
            )),
            #[cfg(feature = "kafka")]
            PublisherConfig::Kafka(c) => Ok(Box::new(
                publisher_kafka::KafkaPublisher::builder()
                    .config(c)
                    .build()?,
            )),
            #[cfg(feature = "nats")]
            PublisherConfig::Nats(c) => Ok(Box::new(
                publisher_nats::NatsPublisher::builder()
                    .config(c)
                    .build()
                    .await?,
            )),
        }
    }
}
