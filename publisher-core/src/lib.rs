#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
mod batch;
#[cfg(feature = "cloudevents")]
pub mod cloudevents;
pub mod config;
pub mod envelope;
mod error;
mod event;
mod gated;
mod guard;
mod health;
pub mod layers;
mod lifecycle;
mod memory;
mod outcome;
mod publisher;
mod shared;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
mod testing_brokers;
#[cfg(feature = "testing")]
mod testing_history;
#[cfg(feature = "testing")]
mod testing_proxy;
mod url_options;

pub use backend::Backend;
pub use batch::BatchResults;
pub use config::{PoolConfig, Timeouts};
pub use error::{Error, ErrorKind, Result};
pub use event::{CONTENT_TYPE_JSON, CONTENT_TYPE_TEXT, Event};
pub use gated::Gated;
pub use guard::{CloseGuard, scoped};
pub use health::{Health, HealthStatus};
pub use lifecycle::{InFlight, Lifecycle, Teardown};
pub use memory::{
    Fault, MemoryBackend, MemoryConfig, MemoryPublisher, MemoryPublisherBuilder, MemoryStore,
};
pub use outcome::{BatchOutcome, CloseReport, Position, Receipt};
pub use publisher::Publisher;
pub use shared::SharedHandle;
pub use url_options::{RedactedUrl, Secret, UrlOptions};

/// Re-exported so that backends and users name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use uuid::Uuid;

#[cfg(test)]
mod assertions {
    fn send_sync<T: Send + Sync>() {}
    #[test]
    fn public_types_are_send_sync() {
        send_sync::<crate::Error>();
        send_sync::<crate::Event>();
        send_sync::<crate::Lifecycle>();
        send_sync::<crate::MemoryPublisher>();
        send_sync::<crate::BatchOutcome>();
    }
}
