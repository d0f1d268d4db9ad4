//! [`Backend`] and [`gated_publisher!`](crate::gated_publisher): the broker-specific half of a
//! publisher, and the macro that puts it behind the [`Lifecycle`](crate::Lifecycle) gate.
//!
//! A backend crate keeps a struct with two fields, `inner: Arc<B>` (its [`Backend`]) and
//! `lifecycle: Lifecycle`, and writes `publisher_core::gated_publisher!(MyPublisher);`. The
//! macro implements [`Publisher`](crate::Publisher) once for all of them: every publish and
//! batch runs through the gate with the backend's publish timeout, `health` of a closed
//! publisher is unhealthy without asking the broker, and `close` runs the backend's teardown
//! once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Event, Health, Receipt, Result, Teardown};

/// What a broker backend supplies; the gate supplies everything else.
#[async_trait]
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

    /// Publishes one event and waits for the broker's confirmation.
    ///
    /// # Errors
    /// As [`Publisher::publish`](crate::Publisher::publish).
    async fn publish(&self, event: &Event) -> Result<Receipt>;

    /// Publishes a batch: one result per event, or an error for the whole batch.
    ///
    /// # Errors
    /// When the batch could not be sent at all.
    async fn publish_batch(&self, events: &[Event]) -> Result<Vec<Result<Receipt>>>;

    /// Checks the broker, bounded by the health timeout.
    async fn health(&self) -> Health;

    /// Releases connections after the drain; returns what it could not deliver.
    ///
    /// # Errors
    /// When tearing down failed.
    async fn teardown(self: Arc<Self>, teardown: Teardown) -> Result<usize>;
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
                self.lifecycle
                    .run(
                        $crate::backend::Backend::publish_timeout(inner),
                        "publish",
                        $crate::backend::Backend::publish(inner, &event),
                    )
                    .await
            }

            async fn publish_batch(&self, events: Vec<$crate::Event>) -> $crate::BatchOutcome {
                let inner = &*self.inner;
                self.lifecycle
                    .run_batch(
                        $crate::backend::Backend::publish_timeout(inner),
                        "batch publish",
                        &events,
                        |e| $crate::backend::Backend::check(inner, e),
                        $crate::backend::Backend::publish_batch(inner, &events),
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
