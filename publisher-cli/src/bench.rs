//! `evpub bench`: synthetic load against any URL; events/s and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use publisher::{Event, Publisher};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Events to publish.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Publishes (or batches) in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,
    /// Events per `publish_batch` call (1: single publishes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Topic to publish to.
    #[arg(long, default_value = "evpub.bench")]
    pub topic: String,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `bench`; returns the process exit code.
pub async fn run(publisher: Box<dyn Publisher>, args: BenchArgs) -> i32 {
    let publisher: Arc<dyn Publisher> = Arc::from(publisher);
    let payload = publisher::Bytes::from(vec![b'x'; args.size]);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::OnceLock::<String>::new());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (p, next, failed, payload, topic, first_error) = (
            publisher.clone(),
            next.clone(),
            failed.clone(),
            payload.clone(),
            args.topic.clone(),
            first_error.clone(),
        );
        let (count, batch) = (args.count, u64::from(args.batch));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= count {
                    break;
                }
                let n = batch.min(count - first);
                let t = Instant::now();
                if n == 1 && batch == 1 {
                    if p.publish(Event::new(topic.clone(), payload.clone()))
                        .await
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let events = (0..n)
                        .map(|_| Event::new(topic.clone(), payload.clone()))
                        .collect();
                    let outcome = p.publish_batch(events).await;
                    failed.fetch_add(outcome.failed() as u64, Ordering::Relaxed);
                    if let Some((_, e)) = outcome.errors().next() {
                        first_error.get_or_init(|| e.to_string());
                    }
                }
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    let close = publisher.close().await;
    latencies.sort();
    let failed = failed.load(Ordering::Relaxed);
    let ok = args.count - failed;
    let rate = ok as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": publisher.backend(),
                "count": args.count,
                "size": args.size,
                "concurrency": args.concurrency,
                "batch": args.batch,
                "failed": failed,
                "elapsed_s": elapsed.as_secs_f64(),
                "events_per_s": rate,
                "p50_us": p50.as_micros() as u64,
                "p99_us": p99.as_micros() as u64,
            })
        );
    } else {
        println!(
            "{:<9} {:>9} {:>7} {:>11} {:>7} {:>10} {:>12} {:>10} {:>10} {:>8}",
            "backend",
            "events",
            "size",
            "concurrency",
            "batch",
            "elapsed",
            "events/s",
            "p50",
            "p99",
            "failed"
        );
        println!(
            "{:<9} {:>9} {:>7} {:>11} {:>7} {:>10} {:>12.0} {:>10} {:>10} {:>8}",
            publisher.backend(),
            args.count,
            args.size,
            args.concurrency,
            args.batch,
            format!("{elapsed:.2?}"),
            rate,
            format!("{p50:.1?}"),
            format!("{p99:.1?}"),
            failed
        );
    }
    if let Some(e) = first_error.get() {
        eprintln!("first error: {e}");
    }
    if let Err(e) = close {
        eprintln!("close failed: {e}");
        return 1;
    }
    i32::from(failed > 0)
}
