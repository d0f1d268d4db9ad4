//! [`MemoryPublisher`]: an in-process publisher for tests, with injectable failures.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::config::Timeouts;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::health::Health;
use crate::lifecycle::Lifecycle;
use crate::outcome::{CloseReport, Position, Receipt};
use crate::publisher::Publisher;

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

/// A fault the [`MemoryPublisher`] injects into its publishes.
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

/// A publisher that stores events in a [`MemoryStore`], runs through the same lifecycle as every
/// real backend, and can be told to fail, nack or delay. It passes the whole conformance suite,
/// so it stands in for a broker in users' own tests.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> publisher_core::Result<()> {
/// use publisher_core::{ErrorKind, Event, MemoryPublisher, Publisher};
///
/// let publisher = MemoryPublisher::new();
/// publisher.fail_next(1, ErrorKind::Unavailable);
/// assert!(publisher.publish(Event::text("t", "first")).await.is_err());
/// publisher.publish(Event::text("t", "second")).await?;
/// assert_eq!(publisher.store().len(), 1);
/// publisher.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryPublisher {
    store: MemoryStore,
    timeouts: Timeouts,
    faults: Mutex<Faults>,
    lifecycle: Lifecycle,
}

/// Builds a [`MemoryPublisher`]; setters never fail, [`MemoryPublisherBuilder::build`] validates.
#[derive(Debug, Default, Clone)]
pub struct MemoryPublisherBuilder {
    store: Option<MemoryStore>,
    timeouts: Timeouts,
}

impl MemoryPublisherBuilder {
    /// The store to write to (default: a fresh one).
    pub fn store(mut self, store: MemoryStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The timeouts (default: [`Timeouts::default`]).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// `Config` naming the invalid timeout.
    pub fn build(self) -> Result<MemoryPublisher> {
        self.timeouts.validate(BACKEND)?;
        Ok(MemoryPublisher {
            store: self.store.unwrap_or_default(),
            timeouts: self.timeouts,
            faults: Mutex::default(),
            lifecycle: Lifecycle::new(BACKEND, self.timeouts.close),
        })
    }
}

impl Default for MemoryPublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryPublisher {
    /// A publisher with a fresh store and default timeouts.
    pub fn new() -> Self {
        Self::builder().build().expect("default config is valid")
    }

    /// A builder.
    pub fn builder() -> MemoryPublisherBuilder {
        MemoryPublisherBuilder::default()
    }

    /// The store this publisher writes to.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Every publish from now on fails with `fault` (until [`MemoryPublisher::clear_faults`]).
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

    async fn publish_inner(&self, event: Event) -> Result<Receipt> {
        event.validate(BACKEND)?;
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
            Some(Fault::Fail(kind)) => {
                return Err(Error::new(kind, BACKEND, "injected failure"));
            }
            Some(Fault::Nack) => {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    BACKEND,
                    "injected nack: the broker refused the event",
                ));
            }
            None => {}
        }
        let receipt = Receipt {
            event_id: event.id(),
            topic: event.topic().to_owned(),
            position: Position::None,
        };
        let seq = self.store.push(event);
        Ok(Receipt {
            position: Position::Sequence(seq),
            ..receipt
        })
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        self.lifecycle
            .run(self.timeouts.publish, "publish", self.publish_inner(event))
            .await
    }

    async fn health(&self) -> Health {
        if self.is_closed() {
            return Health::closed(BACKEND);
        }
        Health::healthy(BACKEND, Some(Duration::ZERO), "in memory")
    }

    async fn close(&self) -> Result<CloseReport> {
        self.lifecycle.close(|_| async { Ok(0) }).await
    }

    fn is_closed(&self) -> bool {
        self.lifecycle.is_closed()
    }
}
