//! [`MemoryPublisher`]: an in-process publisher for tests, with injectable failures; and
//! [`MemoryBackend`], the worked example of a [`Backend`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::Checked;
use crate::config::Timeouts;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::health::Health;
use crate::lifecycle::{Lifecycle, Teardown};
use crate::outcome::Position;
use crate::{Backend, Gated, UrlOptions};

const BACKEND: &str = "memory";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where memory publishers put their events: a broker in a `Vec`. Clones share the same
/// events, so a test can hand one store to several publishers and read it back afterwards.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    events: Mutex<Vec<Event>>,
    appended: Notify,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, event: Event) -> u64 {
        let seq = {
            let mut events = lock(&self.inner.events);
            events.push(event);
            events.len() as u64
        };
        self.inner.appended.notify_waiters();
        seq
    }

    /// Every event stored so far, in the order they were confirmed.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.inner.events).clone()
    }

    /// The events stored for `topic`.
    pub fn events_for(&self, topic: &str) -> Vec<Event> {
        lock(&self.inner.events)
            .iter()
            .filter(|e| e.topic() == topic)
            .cloned()
            .collect()
    }

    /// How many events are stored.
    pub fn len(&self) -> usize {
        lock(&self.inner.events).len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `topic` holds at least `n` events or `timeout` passes; returns what it holds.
    pub async fn wait_for(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let events = self.events_for(topic);
            if events.len() >= n {
                return events;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.events_for(topic);
            }
        }
    }
}

/// A fault the [`MemoryBackend`] injects into its publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with an error of this kind.
    Fail(ErrorKind),
    /// Refuse as a broker nack would: `Rejected`.
    Nack,
}

#[derive(Debug, Default)]
struct Faults {
    always: Option<Fault>,
    next: Vec<Fault>,
    delay: Duration,
}

/// How a [`MemoryPublisher`] is built: the timeouts (deserializable, so `[memory]` in the
/// facade's TOML is a memory publisher with default timeouts).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The timeouts (default: [`Timeouts::default`]).
    pub timeouts: Timeouts,
}

/// An in-process publisher that stores events in a [`MemoryStore`], runs through the same gate
/// as every real backend, and can be told to fail, nack or delay. It passes the whole
/// conformance suite, so it stands in for a broker in users' own tests.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> publisher_core::Result<()> {
/// use publisher_core::{ErrorKind, Event, MemoryPublisher, Publisher};
///
/// let publisher = MemoryPublisher::new();
/// publisher.get_ref().fail_next(1, ErrorKind::Unavailable);
/// assert!(publisher.publish(Event::text("t", "first")).await.is_err());
/// publisher.publish(Event::text("t", "second")).await?;
/// assert_eq!(publisher.get_ref().store().len(), 1);
/// publisher.close().await?;
/// # Ok(()) }
/// ```
pub type MemoryPublisher = Gated<MemoryBackend>;

/// The memory [`Backend`]: the smallest complete backend, and the example a backend author
/// copies. Its state is what a broker backend's would be (here a store instead of a
/// connection); the gate does everything else.
#[derive(Debug)]
pub struct MemoryBackend {
    store: MemoryStore,
    timeouts: Timeouts,
    faults: Mutex<Faults>,
}

/// Builds a [`MemoryPublisher`]; setters never fail, [`MemoryPublisherBuilder::build`] validates.
#[derive(Debug, Default, Clone)]
pub struct MemoryPublisherBuilder {
    store: Option<MemoryStore>,
    config: MemoryConfig,
}

impl MemoryPublisherBuilder {
    /// The store to write to (default: a fresh one).
    pub fn store(mut self, store: MemoryStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The timeouts (default: [`Timeouts::default`]).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// `Config` naming the invalid timeout.
    pub fn build(self) -> Result<MemoryPublisher> {
        let timeouts = self.config.timeouts;
        timeouts.validate(BACKEND)?;
        let backend = MemoryBackend {
            store: self.store.unwrap_or_default(),
            timeouts,
            faults: Mutex::default(),
        };
        Ok(Gated::from_parts(
            backend,
            Lifecycle::new(BACKEND, timeouts.close),
        ))
    }
}

impl MemoryPublisher {
    /// A publisher with a fresh store and default timeouts.
    pub fn new() -> Self {
        Self::builder().build().expect("default config is valid")
    }
}

impl Default for MemoryPublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// The store this publisher writes to.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Every publish from now on fails with `fault` (until [`MemoryBackend::clear_faults`]).
    pub fn set_fault(&self, fault: Option<Fault>) {
        lock(&self.faults).always = fault;
    }

    /// The next `n` publishes fail with an error of `kind`.
    pub fn fail_next(&self, n: usize, kind: ErrorKind) {
        lock(&self.faults)
            .next
            .extend(std::iter::repeat_n(Fault::Fail(kind), n));
    }

    /// Every publish waits `delay` before it is stored (bounded by the publish timeout).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.faults).delay = delay;
    }

    /// Removes every injected fault and delay.
    pub fn clear_faults(&self) {
        *lock(&self.faults) = Faults::default();
    }

    fn take_fault(&self) -> (Option<Fault>, Duration) {
        let mut f = lock(&self.faults);
        let fault = if f.next.is_empty() {
            f.always
        } else {
            Some(f.next.remove(0))
        };
        (fault, f.delay)
    }
}

impl Backend for MemoryBackend {
    type Config = MemoryConfig;
    type Builder = MemoryPublisherBuilder;

    const NAME: &'static str = BACKEND;

    fn publish_timeout(&self) -> Duration {
        self.timeouts.publish
    }

    fn check(&self, event: &Event) -> Result<()> {
        event.validate(BACKEND)
    }

    async fn publish(&self, event: Checked<'_>) -> Result<Position> {
        let event = event.event();
        let (fault, delay) = self.take_fault();
        if delay.is_zero() {
            // A broker answers later, never within the call: a publish stays in flight across
            // at least one wake-up, as it would with a real broker (close-under-load tests
            // depend on it).
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(delay).await;
        }
        match fault {
            Some(Fault::Fail(kind)) => Err(Error::new(kind, BACKEND, "injected failure")),
            Some(Fault::Nack) => Err(Error::new(
                ErrorKind::Rejected,
                BACKEND,
                "injected nack: the broker refused the event",
            )),
            None => Ok(Position::Sequence(self.store.push(event.clone()))),
        }
    }

    async fn health(&self) -> Health {
        Health::healthy(BACKEND, Some(Duration::ZERO), "in memory")
    }

    async fn teardown(self: Arc<Self>, _: Teardown) -> Result<usize> {
        Ok(0)
    }

    /// `memory://`: a fresh store and default timeouts (the URL takes no parameters).
    fn config_from_url(url: &str) -> Result<MemoryConfig> {
        let (base, options) = UrlOptions::split(BACKEND, url)?;
        if !base.eq_ignore_ascii_case("memory://") {
            return Err(Error::config(BACKEND, "url", "expected `memory://`"));
        }
        options.finish(&[])?;
        Ok(MemoryConfig::default())
    }

    async fn connect(config: MemoryConfig) -> Result<MemoryPublisher> {
        MemoryPublisher::builder().timeouts(config.timeouts).build()
    }
}
