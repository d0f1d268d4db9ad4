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
//! Each layer is a [`Layer`] (it writes only what it changes) made a publisher by [`Layered`].
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

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::{BatchOutcome, CloseReport, Event, Health, Publisher, Receipt, Result};

/// Adds layers to any publisher (see the [module docs](self) for ordering).
pub trait PublisherExt: Publisher + Sized {
    /// Bounds each `publish` (and each `publish_batch`) by `timeout`.
    ///
    /// # Errors
    /// `Config` naming `timeout` when it is zero or over an hour.
    fn with_timeout(self, timeout: Duration) -> Result<Layered<Timeout<Self>>> {
        Timeout::new(self, timeout).map(Layered)
    }

    /// Retries retryable failures with exponential backoff and jitter (feature `retry`).
    ///
    /// # Errors
    /// `Config` naming the invalid policy field.
    #[cfg(feature = "retry")]
    fn with_retry(self, policy: RetryPolicy) -> Result<Layered<Retry<Self>>> {
        Retry::new(self, policy).map(Layered)
    }

    /// Allows at most `max` publishes in flight; a publish waits at most `wait` for a slot.
    ///
    /// # Errors
    /// `Config` naming `max` (zero) or `wait` (zero or over an hour).
    fn with_concurrency_limit(
        self,
        max: usize,
        wait: Duration,
    ) -> Result<Layered<ConcurrencyLimit<Self>>> {
        ConcurrencyLimit::new(self, max, wait).map(Layered)
    }

    /// Records counters and a latency histogram through the `metrics` facade (feature
    /// `metrics`).
    #[cfg(feature = "metrics")]
    fn with_metrics(self) -> Layered<Metrics<Self>> {
        Layered(Metrics::new(self))
    }

    /// Injects the current span's W3C `traceparent` into event headers (feature
    /// `opentelemetry`).
    #[cfg(feature = "opentelemetry")]
    fn with_trace_context(self) -> Layered<TraceContext<Self>> {
        Layered(TraceContext::new(self))
    }
}

impl<P: Publisher> PublisherExt for P {}

/// What a layer changes about the publisher it wraps; [`Layered`] makes it a [`Publisher`].
///
/// Every method a layer does not write forwards to [`Layer::inner`] unchanged, so a layer
/// writes only what it changes (most write `publish` and `publish_batch`; `Metrics` also
/// `close`). `backend` and `is_closed` always come from the inner publisher. Methods may be
/// written as `async fn`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> publisher_core::Result<()> {
/// use publisher_core::layers::{Layer, Layered};
/// use publisher_core::{Event, MemoryPublisher, Publisher, Receipt, Result};
///
/// /// Stamps every event with the service it came from.
/// #[derive(Debug)]
/// struct Origin<P>(P);
///
/// impl<P: Publisher> Layer for Origin<P> {
///     type Inner = P;
///     fn inner(&self) -> &P {
///         &self.0
///     }
///     async fn publish(&self, event: Event) -> Result<Receipt> {
///         self.0.publish(event.with_header("origin", "billing")).await
///     }
/// }
///
/// let publisher = Layered::new(Origin(MemoryPublisher::new()));
/// publisher.publish(Event::text("orders", "x")).await?;
/// let stored = publisher.get_ref().inner().get_ref().store().events();
/// assert_eq!(stored[0].headers()["origin"], "billing");
/// publisher.close().await?;
/// # Ok(()) }
/// ```
pub trait Layer: Debug + Send + Sync + 'static {
    /// The publisher this layer wraps.
    type Inner: Publisher;

    /// The wrapped publisher.
    fn inner(&self) -> &Self::Inner;

    /// As [`Publisher::publish`]; forwards by default.
    fn publish(&self, event: Event) -> impl Future<Output = Result<Receipt>> + Send {
        self.inner().publish(event)
    }

    /// As [`Publisher::publish_batch`]; forwards by default.
    fn publish_batch(&self, events: Vec<Event>) -> impl Future<Output = BatchOutcome> + Send {
        self.inner().publish_batch(events)
    }

    /// As [`Publisher::health`]; forwards by default.
    fn health(&self) -> impl Future<Output = Health> + Send {
        self.inner().health()
    }

    /// As [`Publisher::close`]; forwards by default.
    fn close(&self) -> impl Future<Output = Result<CloseReport>> + Send {
        self.inner().close()
    }
}

/// A [`Layer`] as a [`Publisher`]: what [`PublisherExt`]'s methods return.
pub struct Layered<L>(L);

impl<L: Layer> Layered<L> {
    /// Makes `layer` a publisher.
    pub fn new(layer: L) -> Self {
        Self(layer)
    }

    /// The layer.
    pub fn get_ref(&self) -> &L {
        &self.0
    }
}

impl<L: Debug> Debug for Layered<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait]
impl<L: Layer> Publisher for Layered<L> {
    fn backend(&self) -> &'static str {
        self.0.inner().backend()
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        self.0.publish(event).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        self.0.publish_batch(events).await
    }

    async fn health(&self) -> Health {
        self.0.health().await
    }

    async fn close(&self) -> Result<CloseReport> {
        self.0.close().await
    }

    fn is_closed(&self) -> bool {
        self.0.inner().is_closed()
    }
}
