//! [`Timeout`]: bounds each publish.

use std::time::Duration;

use super::Layer;
use crate::config::check_timeout;
use crate::{BatchOutcome, Error, Event, Publisher, Receipt, Result};

/// Bounds each `publish` and each `publish_batch` by a timeout. An elapsed timeout is an
/// [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) error, retryable: the inner
/// publish is dropped (see the cancel-safety note on [`Publisher::publish`]) and the event may
/// still arrive. A batch cut off by this layer loses the results the backend already had; the
/// backend's own publish timeout (its gate) keeps them, so prefer it for batches.
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
}

impl<P: Publisher> Layer for Timeout<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        tokio::time::timeout(self.timeout, self.inner.publish(event))
            .await
            .unwrap_or_else(|_| Err(timed_out(self.inner.backend(), "publish", self.timeout)))
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let n = events.len();
        match tokio::time::timeout(self.timeout, self.inner.publish_batch(events)).await {
            Ok(outcome) => outcome,
            Err(_) => BatchOutcome::all_failed(
                n,
                &timed_out(self.inner.backend(), "publish batch", self.timeout),
            ),
        }
    }
}

fn timed_out(backend: &'static str, what: &str, after: Duration) -> Error {
    Error::outcome_unknown(
        backend,
        format!(
            "{what} timed out after {} (the broker may or may not have it)",
            humantime::format_duration(after)
        ),
    )
}
