//! [`Retry`]: exponential backoff with jitter for retryable failures.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Layer;
use crate::config::check_timeout;
use crate::{BatchOutcome, Error, Event, Publisher, Receipt, Result};

/// How [`Retry`] retries. Every field has a documented default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// First delay. Default: 50 ms.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Largest delay. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Growth factor of the delay. Default: 2.
    pub factor: f32,
    /// Retries after the first attempt. Default: 5.
    pub max_retries: usize,
    /// Random jitter on each delay (up to one more delay), so that publishers that failed
    /// together do not retry together. Default: true.
    pub jitter: bool,
    /// Total time from the first attempt until the last retry may start, sleeps included.
    /// Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            factor: 2.0,
            max_retries: 5,
            jitter: true,
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Checks every field.
    ///
    /// # Errors
    /// `Config` naming the field at fault.
    pub fn validate(&self, backend: &'static str) -> Result<()> {
        check_timeout(backend, "retry.min_delay", self.min_delay)?;
        check_timeout(backend, "retry.max_delay", self.max_delay)?;
        check_timeout(backend, "retry.deadline", self.deadline)?;
        if self.max_delay < self.min_delay {
            return Err(Error::config(
                backend,
                "retry.max_delay",
                "must not be below retry.min_delay",
            ));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(Error::config(
                backend,
                "retry.factor",
                "must be a finite number of at least 1",
            ));
        }
        Ok(())
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let mut b = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_max_times(self.max_retries);
        if self.jitter {
            b = b.with_jitter();
        }
        b.build()
    }
}

/// Retries retryable failures ([`Error::is_retryable`]: timeouts, lost connections, an
/// exhausted pool) with exponential backoff and jitter, within the policy's total deadline.
/// `Rejected`, `Config`, `InvalidEvent` and `Closed` are never retried.
///
/// Retrying makes delivery at-least-once: an attempt that timed out may have reached the
/// broker, so a retried event can arrive twice. Consumers should deduplicate by event id.
/// Put [`Timeout`](super::Timeout) inside the retry to bound each attempt.
#[derive(Debug)]
pub struct Retry<P> {
    inner: P,
    policy: RetryPolicy,
}

impl<P: Publisher> Retry<P> {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// `Config` naming the invalid policy field.
    pub fn new(inner: P, policy: RetryPolicy) -> Result<Self> {
        policy.validate(inner.backend())?;
        Ok(Self { inner, policy })
    }

    /// The next delay, if one is left and it ends before the deadline.
    fn next_delay(
        backoff: &mut impl Iterator<Item = Duration>,
        deadline: Instant,
    ) -> Option<Duration> {
        backoff.next().filter(|d| Instant::now() + *d < deadline)
    }
}

impl<P: Publisher> Layer for Retry<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let deadline = Instant::now() + self.policy.deadline;
        let mut backoff = self.policy.backoff();
        let mut attempt = 1;
        let mut maybe_sent = false;
        loop {
            let err = match self.inner.publish(event.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) if !e.is_retryable() => return Err(given_up(e, attempt, maybe_sent)),
                Err(e) => e,
            };
            maybe_sent |= err.is_outcome_unknown();
            let Some(delay) = Self::next_delay(&mut backoff, deadline) else {
                tracing::debug!(backend = self.inner.backend(), attempt, error = %err, "giving up");
                return Err(given_up(err, attempt, maybe_sent));
            };
            tracing::debug!(backend = self.inner.backend(), attempt, ?delay, error = %err, "retrying publish");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let deadline = Instant::now() + self.policy.deadline;
        let mut backoff = self.policy.backoff();
        let mut results = self
            .inner
            .publish_batch(events.clone())
            .await
            .into_results();
        let mut attempts = vec![1usize; events.len()];
        let mut maybe_sent: Vec<bool> = results
            .iter()
            .map(|r| r.as_ref().is_err_and(Error::is_outcome_unknown))
            .collect();
        loop {
            let pending: Vec<usize> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.as_ref().is_err_and(Error::is_retryable))
                .map(|(i, _)| i)
                .collect();
            if pending.is_empty() {
                break;
            }
            let Some(delay) = Self::next_delay(&mut backoff, deadline) else {
                break;
            };
            tokio::time::sleep(delay).await;
            let retry: Vec<Event> = pending.iter().map(|&i| events[i].clone()).collect();
            let again = self.inner.publish_batch(retry).await.into_results();
            for (i, r) in pending.into_iter().zip(again) {
                attempts[i] += 1;
                maybe_sent[i] |= r.as_ref().is_err_and(Error::is_outcome_unknown);
                results[i] = r;
            }
        }
        BatchOutcome::new(
            results
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.map_err(|e| given_up(e, attempts[i], maybe_sent[i])))
                .collect(),
        )
    }
}

/// The error of an event this layer gave up on: no longer retryable (so that a retry layer
/// stacked above does not multiply the attempts), and `OutcomeUnknown` whenever an earlier
/// attempt may have reached the broker, whatever the last attempt said.
fn given_up(last: Error, attempts: usize, maybe_sent: bool) -> Error {
    if !maybe_sent && !last.is_retryable() {
        // Never worth retrying: the error stands as the backend said it.
        return last;
    }
    if maybe_sent && !last.is_outcome_unknown() {
        return Error::outcome_unknown(
            last.backend(),
            format!(
                "gave up after {attempts} attempts; an earlier attempt may have reached the \
                 broker (last: {})",
                last.message()
            ),
        )
        .with_retryable(false)
        .with_source(last);
    }
    last.with_retryable(false)
}
