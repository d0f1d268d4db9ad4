#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod channels;
mod config;
mod confirms;
mod error;
pub mod mapping;
mod publisher;
#[cfg(feature = "testing")]
pub mod testing;

pub use channels::{ChannelManager, ChannelPool, ConfirmChannel};
pub use config::{AmqpConfig, ExchangeDeclare, ExchangeKind, MAX_SHORT_STRING};
pub use publisher::{AmqpPublisher, AmqpPublisherBuilder};

/// Re-exported so that lent connections use the same version.
pub use lapin;

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "amqp";
