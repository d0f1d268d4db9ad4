#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod postgres;
mod relay;
mod spool;

pub use postgres::{DEFAULT_TABLE, PgOutbox};
pub use relay::{Backlog, Entry, Relay, RelayConfig, RelayCounts, RelayReport, Settled, Source};
pub use spool::{SPOOL, Spool, SpoolConfig, SpoolSource, with_spool};

/// The name this crate's errors and logs carry.
pub const NAME: &str = "outbox";

/// Re-exported so that applications name the same sqlx as the outbox.
pub use sqlx;
