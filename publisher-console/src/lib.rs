#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod capture;
mod config;
pub mod line;
mod publisher;

pub use capture::CaptureBuffer;
pub use config::{ConsoleConfig, FlushPolicy, Format, Target};
pub use publisher::{ConsolePublisher, ConsolePublisherBuilder};

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "console";

/// The URL schemes this backend opens.
pub const SCHEMES: &[&str] = &["console"];

/// Opens the publisher a `console://` URL describes: this backend's registration in the
/// facade (`publisher::from_url`).
pub fn open(url: &str) -> publisher_core::backend::Opening<'_> {
    Box::pin(async move {
        Ok(Box::new(ConsolePublisher::from_url(url)?) as Box<dyn publisher_core::Publisher>)
    })
}
