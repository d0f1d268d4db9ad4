//! [`Metrics`]: counters and a latency histogram through the `metrics` facade.

use std::time::Instant;

use super::Layer;
use crate::{BatchOutcome, CloseReport, Event, Publisher, Receipt, Result};

/// Events confirmed, labelled `backend`, `topic`.
pub const PUBLISHED: &str = "publisher_published_total";
/// Events that failed, labelled `backend`, `topic`, `kind`.
pub const FAILED: &str = "publisher_failed_total";
/// Payload bytes confirmed, labelled `backend`, `topic`.
pub const BYTES: &str = "publisher_published_bytes_total";
/// Publishes in flight (gauge), labelled `backend`.
pub const IN_FLIGHT: &str = "publisher_in_flight";
/// Publish latency in seconds (histogram; a batch is one observation), labelled `backend`,
/// `topic`.
pub const DURATION: &str = "publisher_publish_duration_seconds";
/// Publishes drained at close, labelled `backend`.
pub const CLOSE_DRAINED: &str = "publisher_close_drained_total";
/// Publishes or messages abandoned at close, labelled `backend`.
pub const CLOSE_ABANDONED: &str = "publisher_close_abandoned_total";

/// Records what passes through it with the `metrics` crate, so any recorder (Prometheus,
/// StatsD, …) the application installs sees it. See the constants of this module for the
/// names and labels.
#[derive(Debug)]
pub struct Metrics<P> {
    inner: P,
    /// Set by the first close whose report was counted: a report is the same for every
    /// caller of `close`, so it is counted once.
    close_counted: std::sync::atomic::AtomicBool,
}

struct InFlight(&'static str, f64);

impl InFlight {
    fn new(backend: &'static str, n: f64) -> Self {
        metrics::gauge!(IN_FLIGHT, "backend" => backend).increment(n);
        Self(backend, n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT, "backend" => self.0).decrement(self.1);
    }
}

impl<P: Publisher> Metrics<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            close_counted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(&self, topic: &str, bytes: usize, result: &Result<Receipt>) {
        let backend = self.inner.backend();
        match result {
            Ok(_) => {
                metrics::counter!(PUBLISHED, "backend" => backend, "topic" => topic.to_owned())
                    .increment(1);
                metrics::counter!(BYTES, "backend" => backend, "topic" => topic.to_owned())
                    .increment(bytes as u64);
            }
            Err(e) => metrics::counter!(
                FAILED,
                "backend" => backend,
                "topic" => topic.to_owned(),
                "kind" => e.kind().as_str()
            )
            .increment(1),
        }
    }
}

impl<P: Publisher> Layer for Metrics<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let backend = self.inner.backend();
        let topic = event.topic().to_owned();
        let bytes = event.payload().len();
        let _in_flight = InFlight::new(backend, 1.0);
        let started = Instant::now();
        let result = self.inner.publish(event).await;
        metrics::histogram!(DURATION, "backend" => backend, "topic" => topic.clone())
            .record(started.elapsed().as_secs_f64());
        self.record(&topic, bytes, &result);
        result
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let backend = self.inner.backend();
        let meta: Vec<(String, usize)> = events
            .iter()
            .map(|e| (e.topic().to_owned(), e.payload().len()))
            .collect();
        let _in_flight = InFlight::new(backend, 1.0);
        let started = Instant::now();
        let outcome = self.inner.publish_batch(events).await;
        let elapsed = started.elapsed().as_secs_f64();
        if let Some((topic, _)) = meta.first() {
            metrics::histogram!(DURATION, "backend" => backend, "topic" => topic.clone())
                .record(elapsed);
        }
        for ((topic, bytes), result) in meta.iter().zip(outcome.results()) {
            self.record(topic, *bytes, result);
        }
        outcome
    }

    async fn close(&self) -> Result<CloseReport> {
        let report = self.inner.close().await?;
        if self
            .close_counted
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(report);
        }
        let backend = self.inner.backend();
        metrics::counter!(CLOSE_DRAINED, "backend" => backend).increment(report.drained as u64);
        metrics::counter!(CLOSE_ABANDONED, "backend" => backend).increment(report.abandoned as u64);
        Ok(report)
    }
}
