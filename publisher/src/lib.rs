#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backends;
mod from_url;
mod publisher_config;

pub use from_url::{enabled_schemes, from_url, from_url_arc};
pub use publisher_config::PublisherConfig;
pub use publisher_core::*;

/// The console backend (feature `console`).
#[cfg(feature = "console")]
pub use publisher_console as console;

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub use publisher_redis as redis;

/// The RabbitMQ backend (feature `amqp`).
#[cfg(feature = "amqp")]
pub use publisher_amqp as amqp;

/// The Kafka backend (feature `kafka`).
#[cfg(feature = "kafka")]
pub use publisher_kafka as kafka;

/// The NATS JetStream backend (feature `nats`).
#[cfg(feature = "nats")]
pub use publisher_nats as nats;

/// The workspace README's example, compiled and run as a doctest.
#[cfg(all(doctest, feature = "console"))]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
