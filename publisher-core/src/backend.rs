//! [`Backend`] and [`gated_publisher!`](crate::gated_publisher): the broker-specific half of a
//! publisher, and the macro that puts it behind the [`Lifecycle`](crate::Lifecycle) gate.
//!
//! A backend crate keeps a struct with two fields, `inner: Arc<B>` (its [`Backend`]) and
//! `lifecycle: Lifecycle`, and writes `publisher_core::gated_publisher!(MyPublisher);`. The
//! macro implements [`Publisher`](crate::Publisher) once for all of them: every publish and
//! batch runs through the gate with the backend's publish timeout, `health` of a closed
//! publisher is unhealthy without asking the broker, and `close` runs the backend's teardown
//! once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{BatchResults, Event, Health, Position, Result, Teardown};

/// What a broker backend supplies; the gate supplies everything else.
///
/// Implementations may write these methods as `async fn`. The trait is used only through
/// [`gated_publisher!`](crate::gated_publisher), never as a trait object, so its futures are
/// not boxed: a publish costs one allocation (the [`Publisher`](crate::Publisher) future), not
/// two.
pub trait Backend: Send + Sync + 'static {
    /// The backend's name (`redis`, `amqp`, `kafka`, …).
    fn name(&self) -> &'static str;

    /// Bound of one publish or batch, from the backend's config.
    fn publish_timeout(&self) -> Duration;

    /// Checks an event without sending it (used to keep per-event errors per event when a
    /// whole batch fails).
    ///
    /// # Errors
    /// `InvalidEvent` naming the field.
    fn check(&self, event: &Event) -> Result<()>;

    /// Publishes one event and waits for the broker's confirmation; returns where the broker
    /// put it (the gate turns it into the [`Receipt`](crate::Receipt), taking the event's topic
    /// without a copy).
    ///
    /// # Errors
    /// As [`Publisher::publish`](crate::Publisher::publish).
    fn publish(&self, event: &Event) -> impl Future<Output = Result<Position>> + Send;

    /// Publishes a batch, recording each event's result in `results` (by index, in the order
    /// of `events`) as soon as the broker answers for it: a result recorded before the batch
    /// times out or is abandoned is kept, the others get `OutcomeUnknown` from the gate.
    ///
    /// # Errors
    /// When the batch could not be sent at all: every event without a recorded result gets
    /// this error (or its own [`Backend::check`] error). The error must say `OutcomeUnknown`
    /// if any of those events may have reached the broker.
    fn publish_batch(
        &self,
        events: &[Event],
        results: &BatchResults,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Checks the broker, bounded by the health timeout.
    fn health(&self) -> impl Future<Output = Health> + Send;

    /// Releases connections after the drain; returns what it could not deliver.
    ///
    /// # Errors
    /// When tearing down failed.
    fn teardown(
        self: Arc<Self>,
        teardown: Teardown,
    ) -> impl Future<Output = Result<usize>> + Send + 'static;
}

/// Implements [`Publisher`](crate::Publisher) for a struct with fields `inner: Arc<B>` where
/// `B: Backend`, and `lifecycle: Lifecycle`. See the [module docs](crate::backend).
#[macro_export]
macro_rules! gated_publisher {
    ($ty:ty) => {
        #[$crate::async_trait]
        impl $crate::Publisher for $ty {
            fn backend(&self) -> &'static str {
                $crate::backend::Backend::name(&*self.inner)
            }

            async fn publish(&self, event: $crate::Event) -> $crate::Result<$crate::Receipt> {
                let inner = &*self.inner;
                let position = self
                    .lifecycle
                    .run(
                        $crate::backend::Backend::publish_timeout(inner),
                        "publish",
                        $crate::backend::Backend::publish(inner, &event),
                    )
                    .await?;
                Ok($crate::Receipt::from_event(event, position))
            }

            async fn publish_batch(&self, events: Vec<$crate::Event>) -> $crate::BatchOutcome {
                let inner = &*self.inner;
                let results = $crate::BatchResults::new(events.len());
                self.lifecycle
                    .run_batch(
                        $crate::backend::Backend::publish_timeout(inner),
                        "batch publish",
                        &events,
                        &results,
                        |e| $crate::backend::Backend::check(inner, e),
                        $crate::backend::Backend::publish_batch(inner, &events, &results),
                    )
                    .await
            }

            async fn health(&self) -> $crate::Health {
                if self.lifecycle.is_closed() {
                    return $crate::Health::closed($crate::backend::Backend::name(&*self.inner));
                }
                $crate::backend::Backend::health(&*self.inner).await
            }

            async fn close(&self) -> $crate::Result<$crate::CloseReport> {
                let inner = ::std::sync::Arc::clone(&self.inner);
                self.lifecycle
                    .close(move |td| $crate::backend::Backend::teardown(inner, td))
                    .await
            }

            fn is_closed(&self) -> bool {
                self.lifecycle.is_closed()
            }
        }
    };
}

/// What a backend crate's `open(url)` returns: the publisher its URL describes, boxed. The
/// facade (`publisher::from_url`) registers each backend by its schemes and this function.
pub type Opening<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Box<dyn crate::Publisher>>> + Send + 'a>>;
