//! [`ConcurrencyLimit`]: at most N publishes in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::Layer;
use crate::config::check_timeout;
use crate::{BatchOutcome, Error, ErrorKind, Event, Publisher, Receipt, Result};

/// Allows at most `max` publishes (a batch counts as one) in flight through the inner
/// publisher. A publish that finds no free slot within `wait` fails with
/// [`ErrorKind::Unavailable`], retryable.
#[derive(Debug)]
pub struct ConcurrencyLimit<P> {
    inner: P,
    slots: Arc<Semaphore>,
    max: usize,
    wait: Duration,
}

impl<P: Publisher> ConcurrencyLimit<P> {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// `Config` naming `max` (zero or above the semaphore's limit) or `wait`.
    pub fn new(inner: P, max: usize, wait: Duration) -> Result<Self> {
        if max == 0 || max > Semaphore::MAX_PERMITS {
            return Err(Error::config(
                inner.backend(),
                "max",
                "the concurrency limit must be at least 1",
            ));
        }
        check_timeout(inner.backend(), "wait", wait)?;
        Ok(Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            wait,
        })
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        match tokio::time::timeout(self.wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Error::closed(self.inner.backend())),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                self.inner.backend(),
                format!(
                    "all {} publish slots stayed busy for {:?}",
                    self.max, self.wait
                ),
            )),
        }
    }
}

impl<P: Publisher> Layer for ConcurrencyLimit<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let _slot = self.slot().await?;
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        match self.slot().await {
            Ok(_slot) => self.inner.publish_batch(events).await,
            Err(e) => BatchOutcome::all_failed(events.len(), &e),
        }
    }
}
