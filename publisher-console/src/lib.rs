#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod capture;
mod config;
pub mod line;
mod publisher;

pub use capture::CaptureBuffer;
pub use config::{ConsoleConfig, FlushPolicy, Format, Target};
pub use publisher::{ConsoleBackend, ConsolePublisher, ConsolePublisherBuilder};

/// The backend name in errors, health reports and receipts.
pub const BACKEND: &str = "console";
