#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
pub mod mapping;
mod publisher;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::NatsConfig;
pub use publisher::{NatsBackend, NatsPublisher, NatsPublisherBuilder};

/// Re-exported so that callers use the same version.
pub use async_nats;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "nats";

/// The URL schemes this backend opens.
pub(crate) const SCHEMES: &[&str] = &["nats", "tls"];
