//! Spool throughput and latency: `concurrency` tasks publish single events through a spool
//! (fsync per group commit) for `events` events in all, with the broker down (Redis on a port
//! nothing listens on: the relay only retries) or up (`--up`: the in-memory publisher, so the
//! relay delivers and deletes beside the writes). Prints events/s, publish latency p50/p99, and
//! this disk's fsync latency (a 4 KiB write + fdatasync) for comparison.
//!
//! `cargo run --release -p publisher-outbox --example spool_throughput -- [events] [concurrency] [--up]`

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use publisher_core::{Event, MemoryPublisher, Publisher};
use publisher_outbox::{SpoolConfig, with_spool};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn fsync_latency(dir: &std::path::Path) -> Duration {
    let mut f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [7u8; 4096];
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    percentile(&times, 0.5)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let up = args.iter().any(|a| a == "--up");
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let events = numbers.first().copied().unwrap_or(200_000);
    let concurrency = numbers.get(1).copied().unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let fsync = fsync_latency(dir.path());
    let inner: Arc<dyn Publisher> = if up {
        Arc::new(MemoryPublisher::builder().build().unwrap())
    } else {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        publisher::from_url_arc(&format!("redis://127.0.0.1:{port}"))
            .await
            .unwrap()
    };
    let spool = Arc::new(
        with_spool(inner, SpoolConfig::new(dir.path().join("spool")))
            .await
            .unwrap(),
    );
    let payload = "x".repeat(200);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let spool = spool.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (t..events).step_by(concurrency) {
                    let event =
                        Event::text("bench", payload.clone()).with_key(format!("k{}", i % 100));
                    let t = Instant::now();
                    spool.publish(event).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(events);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    println!(
        "spool {}: events {events}, concurrency {concurrency}, {:.0} events/s, publish p50 {:?} p99 {:?}; this disk's fsync (4 KiB write + fdatasync) p50 {fsync:?}",
        if up {
            "broker up (memory)"
        } else {
            "broker down"
        },
        events as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    if up {
        let left = spool.wait_delivered(Duration::from_secs(120)).await;
        println!("delivered all: {}", left.pending == 0);
    }
    spool.close().await.unwrap();
}
