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
mod transport;

pub use config::{AmqpConfig, ExchangeDeclare, ExchangeKind, MAX_SHORT_STRING};
pub use publisher::{AmqpBackend, AmqpPublisher, AmqpPublisherBuilder};

/// Re-exported so that lent connections use the same version.
pub use lapin;

/// A `tracing` filter directive that silences lapin's log of returned messages.
///
/// lapin logs every message RabbitMQ returns (unroutable under `mandatory`, our default) at
/// `WARN` with its body and headers, from its own I/O thread: no library can filter that for
/// the application. Add this directive to your subscriber's filter so that payloads stay out of
/// your logs (`evpub` does); the publish's own error still says what was returned and why
/// (reply code and text, exchange and routing key, never the body).
///
/// With `tracing-subscriber`'s `EnvFilter`:
///
/// ```text
/// EnvFilter::new("info").add_directive(publisher_amqp::HIDE_RETURNED_PAYLOADS.parse()?)
/// RUST_LOG=info,lapin::returned_messages=off
/// ```
pub const HIDE_RETURNED_PAYLOADS: &str = "lapin::returned_messages=off";

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "amqp";
