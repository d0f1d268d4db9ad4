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
pub use publisher::{NatsPublisher, NatsPublisherBuilder};

/// Re-exported so that callers use the same version.
pub use async_nats;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "nats";

/// The URL schemes this backend opens.
pub const SCHEMES: &[&str] = &["nats", "tls"];

/// Opens (and connects) the publisher a `nats://` or `tls://` URL describes: this backend's
/// registration in the facade (`publisher::from_url`).
pub fn open(url: &str) -> publisher_core::backend::Opening<'_> {
    Box::pin(async move {
        Ok(Box::new(NatsPublisher::from_url(url).await?) as Box<dyn publisher_core::Publisher>)
    })
}
