//! Cross-cutting behaviour as publishers wrapping publishers.
//!
//! Each layer is a [`Publisher`] around another, so they compose with every backend and with
//! each other. [`PublisherExt`] adds them in call order, innermost first:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> publisher_core::Result<()> {
//! use std::time::Duration;
//! use publisher_core::layers::PublisherExt;
//! use publisher_core::{Event, MemoryPublisher, Publisher};
//!
//! let publisher = MemoryPublisher::new()
//!     .with_timeout(Duration::from_secs(2))?          // each attempt bounded
//!     // .with_retry(RetryPolicy::default())?         // (feature `retry`) retries outside it
//!     .with_concurrency_limit(64, Duration::from_secs(5))?; // at most 64 in flight
//! publisher.publish(Event::text("orders", "order 42")).await?;
//! publisher.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Order matters
//! - `with_timeout(..).with_retry(..)` bounds each attempt and retries timed-out attempts; the
//!   other way round, one timeout would bound all attempts together (use the retry policy's
//!   `deadline` for that).
//! - A concurrency limit outside the retry counts a retrying publish as one slot while it
//!   retries; inside, each attempt takes and returns a slot.
//! - Metrics outermost observe what the application sees (after retries); innermost, what the
//!   broker sees (every attempt).
//!
//! `close`, `is_closed` and `health` pass through every layer to the inner publisher, once per
//! call; the inner publisher's own lifecycle makes close idempotent. Dropping the outermost
//! layer drops the inner publisher, with the inner publisher's drop behaviour.

mod limit;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "retry")]
mod retry;
mod timeout;
#[cfg(feature = "opentelemetry")]
mod trace;

pub use limit::ConcurrencyLimit;
#[cfg(feature = "metrics")]
pub use metrics::Metrics;
/// The metric names the [`Metrics`] layer records (feature `metrics`).
#[cfg(feature = "metrics")]
pub mod metrics_names {
    pub use super::metrics::{
        BYTES, CLOSE_ABANDONED, CLOSE_DRAINED, DURATION, FAILED, IN_FLIGHT, PUBLISHED,
    };
}
#[cfg(feature = "retry")]
pub use retry::{Retry, RetryPolicy};
pub use timeout::Timeout;
#[cfg(feature = "opentelemetry")]
pub use trace::TraceContext;

use std::time::Duration;

use crate::{Publisher, Result};

/// Adds layers to any publisher (see the [module docs](self) for ordering).
pub trait PublisherExt: Publisher + Sized {
    /// Bounds each `publish` (and each `publish_batch`) by `timeout`.
    ///
    /// # Errors
    /// `Config` naming `timeout` when it is zero or over an hour.
    fn with_timeout(self, timeout: Duration) -> Result<Timeout<Self>> {
        Timeout::new(self, timeout)
    }

    /// Retries retryable failures with exponential backoff and jitter (feature `retry`).
    ///
    /// # Errors
    /// `Config` naming the invalid policy field.
    #[cfg(feature = "retry")]
    fn with_retry(self, policy: RetryPolicy) -> Result<Retry<Self>> {
        Retry::new(self, policy)
    }

    /// Allows at most `max` publishes in flight; a publish waits at most `wait` for a slot.
    ///
    /// # Errors
    /// `Config` naming `max` (zero) or `wait` (zero or over an hour).
    fn with_concurrency_limit(self, max: usize, wait: Duration) -> Result<ConcurrencyLimit<Self>> {
        ConcurrencyLimit::new(self, max, wait)
    }

    /// Records counters and a latency histogram through the `metrics` facade (feature
    /// `metrics`).
    #[cfg(feature = "metrics")]
    fn with_metrics(self) -> Metrics<Self> {
        Metrics::new(self)
    }

    /// Injects the current span's W3C `traceparent` into event headers (feature
    /// `opentelemetry`).
    #[cfg(feature = "opentelemetry")]
    fn with_trace_context(self) -> TraceContext<Self> {
        TraceContext::new(self)
    }
}

impl<P: Publisher> PublisherExt for P {}

/// Forwards `health`, `close`, `is_closed` and `backend` to `self.inner`. Written in
/// `async_trait`'s expanded form, since the attribute cannot see into a macro call.
macro_rules! forward_lifecycle {
    () => {
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        fn health<'life0, 'async_trait>(
            &'life0 self,
        ) -> ::core::pin::Pin<
            Box<dyn ::core::future::Future<Output = $crate::Health> + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.health()
        }
        fn close<'life0, 'async_trait>(
            &'life0 self,
        ) -> ::core::pin::Pin<
            Box<
                dyn ::core::future::Future<Output = $crate::Result<$crate::CloseReport>>
                    + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.close()
        }
        fn is_closed(&self) -> bool {
            self.inner.is_closed()
        }
    };
}
pub(crate) use forward_lifecycle;
