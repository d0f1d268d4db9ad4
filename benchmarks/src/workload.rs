//! Workloads, and the two ways of running them: raw client and `Box<dyn Publisher>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use publisher::{Bytes, Event, Publisher};

/// What to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `count` single publishes, `concurrency` in flight.
    Single {
        /// Publishes in flight.
        concurrency: usize,
        /// Events in total.
        count: u64,
    },
    /// `batches` calls of `publish_batch` with `size` events each, one at a time.
    Batch {
        /// Events per batch.
        size: usize,
        /// Batches in total.
        batches: u64,
    },
}

impl Workload {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            Workload::Single { concurrency, .. } => format!("single c={concurrency}"),
            Workload::Batch { size, .. } => format!("batch {size}"),
        }
    }

    /// Events one run publishes.
    pub fn events(&self) -> u64 {
        match *self {
            Workload::Single { count, .. } => count,
            Workload::Batch { size, batches } => size as u64 * batches,
        }
    }
}

/// One way of publishing: the raw client or ours.
pub trait Sink: Send + Sync {
    /// Publishes one event with the same delivery guarantee as ours.
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>>;
    /// Publishes `n` events as one batch and waits for all confirmations.
    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Ours: every publish goes through a `dyn Publisher` built by `publisher::from_url`.
pub struct Ours(pub Arc<dyn Publisher>);

impl Sink for Ours {
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .publish(Event::new(topic, payload))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let events = (0..n).map(|_| Event::new(topic, payload.clone())).collect();
            let outcome = self.0.publish_batch(events).await;
            match outcome.errors().next() {
                None => Ok(()),
                Some((_, e)) => Err(e.to_string()),
            }
        })
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Events published.
    pub events: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency of each operation (a publish, or a whole batch).
    pub latencies: Vec<Duration>,
}

impl Sample {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p` quantile of the operation latencies.
    pub fn quantile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() - 1) as f64 * p).round() as usize]
    }
}

/// Runs `workload` through `sink`; the first error aborts the run.
pub async fn run(
    sink: Arc<dyn Sink>,
    topic: &str,
    payload: Bytes,
    workload: Workload,
) -> Result<Sample, String> {
    let started = Instant::now();
    let latencies = match workload {
        Workload::Single { concurrency, count } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (sink, next, payload, topic) = (
                    sink.clone(),
                    next.clone(),
                    payload.clone(),
                    topic.to_owned(),
                );
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        let t = Instant::now();
                        sink.one(&topic, payload.clone()).await?;
                        lat.push(t.elapsed());
                    }
                    Ok::<_, String>(lat)
                });
            }
            let mut all = Vec::with_capacity(count as usize);
            while let Some(r) = tasks.join_next().await {
                all.extend(r.map_err(|e| e.to_string())??);
            }
            all
        }
        Workload::Batch { size, batches } => {
            let mut all = Vec::with_capacity(batches as usize);
            for _ in 0..batches {
                let t = Instant::now();
                sink.batch(topic, payload.clone(), size).await?;
                all.push(t.elapsed());
            }
            all
        }
    };
    Ok(Sample {
        events: workload.events(),
        elapsed: started.elapsed(),
        latencies,
    })
}
