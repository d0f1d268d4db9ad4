//! The [`Publisher`] trait.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::event::Event;
use crate::health::Health;
use crate::outcome::{BatchOutcome, CloseReport, Receipt};

/// Publishes events to one broker (or the console, or memory).
///
/// Implementations are cheap to share behind an `Arc` and object safe, so applications hold a
/// `Box<dyn Publisher>` chosen at run time. Every backend in this family runs the same
/// conformance suite (`publisher_core::testing`, feature `testing`) against a real broker.
///
/// # Behavior
/// - `publish` returns `Ok` only after the broker confirmed the event: a Redis reply, a Kafka
///   delivery report, an AMQP publisher confirm, a console line written and flushed per policy.
/// - A nack, an unroutable (returned) message, a delivery error or a timeout is an `Err`, never
///   `Ok`.
/// - An `Err` says whether the broker may hold the event: only
///   [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) means it may (the bytes
///   left and no confirmation came back); every other kind means it does not. One event's
///   failure never changes another event's outcome.
/// - Every wait is bounded: by the publish timeout for `publish` and `publish_batch`, the health
///   timeout for `health`, the close timeout for `close`.
/// - `publish_batch` returns one result per event, in input order; one failure never hides the
///   others' results.
/// - `publish` and `publish_batch` after `close` has started fail with
///   [`ErrorKind::Closed`](crate::ErrorKind::Closed) and send nothing.
/// - `close` refuses new publishes, drains in-flight ones until the close timeout, reports what
///   it could not deliver in [`CloseReport::abandoned`], counted in events (each of those
///   returned `OutcomeUnknown` to its caller; nothing is sent for them after the deadline), then
///   releases connections the publisher opened. Connections or clients the caller
///   lent in are never closed.
/// - `close` is idempotent and safe to call concurrently: every caller gets the first close's
///   outcome, and a second `close` returns it again rather than an error.
/// - `health` is cheap, side-effect free and bounded; a closed publisher is unhealthy.
/// - Dropping a publisher that was not closed logs one warning, cancels its background tasks and
///   leaves no task or connection behind; in-flight publishes fail with `OutcomeUnknown`.
///
/// # Outcome unknown, per backend
/// | backend | `OutcomeUnknown` when |
/// |---|---|
/// | every backend | the publish timeout passed, or the close deadline passed, before the broker confirmed (the gate's own errors) |
/// | redis | the connection was lost, or the response timeout passed, after the command was written |
/// | amqp | the channel or connection closed while the confirm was pending |
/// | kafka | a delivery report says the record timed out (`MessageTimedOut`, `RequestTimedOut`), was appended without enough replicas, was purged in flight, or could not reach a broker after librdkafka had it (transport or availability errors); or the producer went away before the report |
/// | console | a write or flush was cut off by the publish timeout (part of the line may be out) |
///
/// A batch that times out or is abandoned keeps every result already known; only its
/// unconfirmed events get `OutcomeUnknown`.
#[async_trait]
pub trait Publisher: Debug + Send + Sync + 'static {
    /// The backend's name: `redis`, `kafka`, `amqp`, `console`, `memory`, …
    fn backend(&self) -> &'static str;

    /// Publishes one event and waits for the broker's confirmation.
    ///
    /// # Errors
    /// `InvalidEvent` for an event this backend cannot carry (naming the field), `Closed` after
    /// `close`, `OutcomeUnknown` when it was sent and no confirmation came within the publish
    /// timeout (or the close deadline), `Rejected` when the broker refused it,
    /// `Connect`/`Unavailable`/`Timeout` when the broker could not be reached and nothing was
    /// sent.
    ///
    /// # Cancel safety
    /// Not cancel safe in the delivery sense: if the returned future is dropped before it
    /// completes, the event may or may not have reached the broker, and no confirmation will be
    /// reported. Dropping it never reports success and never leaks a pooled connection or gate
    /// entry. Treat a cancelled publish like a timeout: publish again if at-least-once is needed.
    async fn publish(&self, event: Event) -> Result<Receipt>;

    /// Publishes many events, using the broker's batching where it has one, and returns one
    /// result per event in input order.
    ///
    /// The default publishes the events one after the other.
    ///
    /// # Cancel safety
    /// As for [`Publisher::publish`], for every event of the batch.
    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(self.publish(event).await);
        }
        BatchOutcome::new(results)
    }

    /// Checks the broker can be reached, bounded by the health timeout. Never fails: an
    /// unreachable broker is an unhealthy report.
    async fn health(&self) -> Health;

    /// Closes the publisher: see the `# Behavior` section above.
    ///
    /// # Errors
    /// Only when tearing down the connections failed; the error is what every caller receives.
    async fn close(&self) -> Result<CloseReport>;

    /// Whether `close` has started.
    fn is_closed(&self) -> bool;
}

/// The future of a forwarded call: the inner publisher's own boxed future, handed through.
type Forwarded<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `Arc<P>` and `Box<P>` hand out the inner publisher's boxed future as it is, instead of
// boxing a second future that awaits it: one allocation per publish through
// `Arc<dyn Publisher>`, not two.
macro_rules! forward {
    ($ty:ty) => {
        #[async_trait]
        impl<P: Publisher + ?Sized> Publisher for $ty {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn publish<'a, 'b>(&'a self, event: Event) -> Forwarded<'b, Result<Receipt>>
            where
                'a: 'b,
                Self: 'b,
            {
                (**self).publish(event)
            }
            fn publish_batch<'a, 'b>(&'a self, events: Vec<Event>) -> Forwarded<'b, BatchOutcome>
            where
                'a: 'b,
                Self: 'b,
            {
                (**self).publish_batch(events)
            }
            fn health<'a, 'b>(&'a self) -> Forwarded<'b, Health>
            where
                'a: 'b,
                Self: 'b,
            {
                (**self).health()
            }
            fn close<'a, 'b>(&'a self) -> Forwarded<'b, Result<CloseReport>>
            where
                'a: 'b,
                Self: 'b,
            {
                (**self).close()
            }
            fn is_closed(&self) -> bool {
                (**self).is_closed()
            }
        }
    };
}

forward!(Arc<P>);
forward!(Box<P>);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_publisher<P: Publisher>() {}

    #[test]
    fn object_safe_and_forwarded() {
        assert_publisher::<Box<dyn Publisher>>();
        assert_publisher::<Arc<dyn Publisher>>();
        assert_publisher::<Arc<crate::MemoryPublisher>>();
    }
}
