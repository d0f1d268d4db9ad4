//! [`Backend`]: the broker-specific half of a publisher. [`Gated`] puts any backend behind
//! the [`Lifecycle`](crate::Lifecycle) gate and makes it a [`Publisher`].
//!
//! A backend crate writes one struct (its connections and config), implements [`Backend`] for
//! it, and names its publisher `pub type MyPublisher = Gated<MyBackend>;`. The memory backend
//! ([`MemoryBackend`](crate::MemoryBackend), `publisher-core/src/memory.rs`) is the smallest
//! complete example; copy it.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::{BatchResults, Event, Gated, Health, Position, Publisher, Result, Teardown};

/// What a broker backend supplies; the gate ([`Gated`]) supplies everything else: admission
/// and refusal after close, the publish timeout, the close deadline and drain, the check of
/// every event before it reaches [`Backend::publish`], receipts, and unhealthy-after-close.
///
/// Implementations may write the methods as `async fn`. The trait is used only through
/// [`Gated`], never as a trait object, so its futures are not boxed: a publish costs one
/// allocation (the [`Publisher`] future), not two.
pub trait Backend: Debug + Send + Sync + Sized + 'static {
    /// The backend's configuration: what [`Backend::connect`] takes, and what one table of the
    /// facade's `PublisherConfig` (TOML, environment) deserializes into.
    type Config: Debug + DeserializeOwned + Send + 'static;

    /// The backend's builder ([`Gated::builder`]): the config plus what a URL cannot say
    /// (clients the caller lends, writers, stores).
    type Builder: Default;

    /// The backend's name (`redis`, `amqp`, `kafka`, …) in errors, health reports and the
    /// facade's configuration.
    const NAME: &'static str;

    /// Bound of one publish or batch, from the backend's config.
    fn publish_timeout(&self) -> Duration;

    /// Whether every publish and batch of this backend ends, by the backend's own means, within
    /// [`Backend::publish_timeout`], with `OutcomeUnknown` when the broker did not confirm in
    /// time, and whether its [`Backend::teardown`] ends every publish still in flight (wakes
    /// it: a purged queue, a dropped client; a publish it cannot wake still ends within its
    /// publish timeout, with `OutcomeUnknown`, and is counted as abandoned). The gate then sets
    /// no timer of its own per publish and no watch on the close deadline (a registration and
    /// a removal each, per publish, which a client with its own per-message timeout already
    /// pays); it still reads the abandonment flag before every poll, so that nothing is sent
    /// after the close deadline, and close runs the teardown as soon as the deadline passes.
    /// Default: false, and the gate bounds and watches every publish.
    fn bounds_itself(&self) -> bool {
        false
    }

    /// Checks an event without sending it. The gate calls it once per event, before
    /// [`Backend::publish`] or [`Backend::publish_batch`] see the event, and again for the
    /// events of a batch that failed as a whole (so that a bad event is reported as such).
    ///
    /// # Errors
    /// `InvalidEvent` naming the field.
    fn check(&self, event: &Event) -> Result<()>;

    /// Publishes one event (already [checked](Backend::check)) and waits for the broker's
    /// confirmation; returns where the broker put it (the gate turns it into the
    /// [`Receipt`](crate::Receipt), taking the event's topic without a copy).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    fn publish(&self, event: Checked<'_>) -> impl Future<Output = Result<Position>> + Send;

    /// Publishes a batch, recording each event's result in `results` (by index, in the order
    /// of `events`) as soon as the broker answers for it: a result recorded before the batch
    /// times out or is abandoned is kept, the others get `OutcomeUnknown` from the gate.
    ///
    /// Events that failed the gate's check already hold their error: send only
    /// [`BatchResults::pending`]. The default publishes those one after the other.
    ///
    /// # Errors
    /// When the batch could not be sent at all: every event without a recorded result gets
    /// this error. The error must say `OutcomeUnknown` if any of those events may have reached
    /// the broker.
    fn publish_batch(
        &self,
        events: &[Event],
        results: &BatchResults,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            for (i, event) in results.pending(events) {
                results.set(i, self.publish(event).await);
            }
            Ok(())
        }
    }

    /// Checks the broker, bounded by the health timeout. Only called while the publisher is
    /// open.
    fn health(&self) -> impl Future<Output = Health> + Send;

    /// Releases connections after the drain; returns how many events it could not deliver.
    ///
    /// # Errors
    /// When tearing down failed.
    fn teardown(
        self: Arc<Self>,
        teardown: Teardown,
    ) -> impl Future<Output = Result<usize>> + Send + 'static;

    /// Parses one of the backend's URLs into its config.
    ///
    /// # Errors
    /// `Config` naming the URL parameter at fault.
    fn config_from_url(url: &str) -> Result<Self::Config>;

    /// Validates `config` and opens the publisher it describes (bounded by its connect
    /// timeout).
    ///
    /// # Errors
    /// `Config` naming the field at fault; the backend's connection errors.
    fn connect(config: Self::Config) -> impl Future<Output = Result<Gated<Self>>> + Send;
}

/// An event the gate has [checked](Backend::check): what [`Backend::publish`] takes. Only the
/// gate makes one, so a backend reached through [`Gated::get_ref`] cannot be made to publish
/// around the gate (unchecked, after close, or unbounded).
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a>(&'a Event);

impl<'a> Checked<'a> {
    pub(crate) fn new(event: &'a Event) -> Self {
        Self(event)
    }

    /// The event.
    pub fn event(self) -> &'a Event {
        self.0
    }
}

impl std::ops::Deref for Checked<'_> {
    type Target = Event;

    fn deref(&self) -> &Event {
        self.0
    }
}

/// What [`open`] returns: the publisher a URL describes, boxed. The facade
/// (`publisher::from_url`) registers each backend by its schemes and [`open`].
pub type Opening<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Box<dyn Publisher>>> + Send + 'a>>;

/// Opens backend `B` from one of its URLs, boxed: the facade's registry holds `open::<B>` per
/// scheme.
pub fn open<B: Backend>(url: &str) -> Opening<'_> {
    Box::pin(async move { Ok(Box::new(Gated::<B>::from_url(url).await?) as Box<dyn Publisher>) })
}

/// Opens backend `B` from its config, boxed (the facade's `PublisherConfig`).
pub fn open_config<B: Backend>(config: B::Config) -> Opening<'static> {
    Box::pin(async move { Ok(Box::new(B::connect(config).await?) as Box<dyn Publisher>) })
}
