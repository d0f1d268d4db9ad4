#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
pub mod mapping;
mod publisher;
#[cfg(feature = "testing")]
pub mod testing;
mod topics;

pub use config::{Acks, Compression, KafkaConfig};
pub use publisher::{KafkaBackend, KafkaPublisher, KafkaPublisherBuilder};

/// Re-exported so that callers name the same version.
pub use rdkafka;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "kafka";
