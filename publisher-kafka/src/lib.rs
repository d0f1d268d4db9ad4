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
pub use publisher::{KafkaPublisher, KafkaPublisherBuilder};

/// Re-exported so that callers name the same version.
pub use rdkafka;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "kafka";

/// The URL schemes this backend opens.
pub const SCHEMES: &[&str] = &["kafka"];

/// Opens the publisher a `kafka://` URL describes: this backend's registration in the facade
/// (`publisher::from_url`).
pub fn open(url: &str) -> publisher_core::backend::Opening<'_> {
    Box::pin(async move {
        Ok(Box::new(KafkaPublisher::from_url(url)?) as Box<dyn publisher_core::Publisher>)
    })
}
