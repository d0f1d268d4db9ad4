#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
pub mod mapping;
mod pool;
mod publisher;
#[cfg(feature = "testing")]
pub mod testing;
mod topology;

pub use config::{Mode, PubsubFormat, REDIS_MAX_BULK, RedisConfig};
pub use publisher::{RedisBackend, RedisPublisher, RedisPublisherBuilder};
pub use topology::{AnyConnection, Kind};

/// Re-exported so that lent pools use the same version.
pub use deadpool_redis;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "redis";
