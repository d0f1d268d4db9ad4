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

pub use config::{Mode, PubsubFormat, REDIS_MAX_BULK, RedisConfig};
pub use pool::{Pool, RedisManager};
pub use publisher::{RedisPublisher, RedisPublisherBuilder};

/// Re-exported so that lent pools use the same version.
pub use deadpool_redis;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "redis";

/// The URL schemes this backend opens (`rediss` with feature `tls`).
pub const SCHEMES: &[&str] = &["redis", "rediss"];

/// Opens the publisher a `redis://` or `rediss://` URL describes: this backend's registration
/// in the facade (`publisher::from_url`).
pub fn open(url: &str) -> publisher_core::backend::Opening<'_> {
    Box::pin(async move {
        Ok(Box::new(RedisPublisher::from_url(url)?) as Box<dyn publisher_core::Publisher>)
    })
}
