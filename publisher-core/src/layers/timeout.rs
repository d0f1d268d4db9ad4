//! [`Timeout`]: bounds each publish.

use std::time::Duration;

use async_trait::async_trait;

use super::forward_lifecycle;
use crate::config::check_timeout;
use crate::{BatchOutcome, Error, Event, Publisher, Receipt, Result};

/// Bounds each `publish` and each `publish_batch` by a timeout. An elapsed timeout is an
/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error, retryable; the inner publish is
/// dropped (see the cancel-safety note on [`Publisher::publish`]: the event may still arrive).
#[derive(Debug)]
pub struct Timeout<P> {
    inner: P,
    timeout: Duration,
}

impl<P: Publisher> Timeout<P> {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// `Config` naming `timeout` when it is zero or over an hour.
    pub fn new(inner: P, timeout: Duration) -> Result<Self> {
        check_timeout(inner.backend(), "timeout", timeout)?;
        Ok(Self { inner, timeout })
    }

    /// The wrapped publisher.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Timeout<P> {
    forward_lifecycle!();

    async fn publish(&self, event: Event) -> Result<Receipt> {
        tokio::time::timeout(self.timeout, self.inner.publish(event))
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    self.inner.backend(),
                    "publish",
                    self.timeout,
                ))
            })
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let n = events.len();
        match tokio::time::timeout(self.timeout, self.inner.publish_batch(events)).await {
            Ok(outcome) => outcome,
            Err(_) => BatchOutcome::all_failed(
                n,
                &Error::timeout(self.inner.backend(), "publish batch", self.timeout),
            ),
        }
    }
}
