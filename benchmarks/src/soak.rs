//! Memory and resource soak: many events, then many create/publish/close cycles; RSS, open
//! descriptors, live tokio tasks and broker-side connections before and after. A third phase
//! gives up on many publishes early (cancelled or timed out) through one long-lived publisher,
//! and measures RSS with that publisher still open: what a given-up publish leaves behind (an
//! AMQP confirm nobody awaits) must not pile up.

use std::time::{Duration, Instant};

use publisher::{Event, Publisher};
use serde::Serialize;

use crate::target::{Backend, Target};

/// Resource usage at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Open file descriptors of this process.
    pub fds: usize,
    /// Live tokio tasks of the current runtime.
    pub tasks: usize,
    /// Connections the broker sees from this soak, when it can be asked.
    pub broker_connections: Option<usize>,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A soak against one target, with a name that identifies its broker connections.
#[derive(Debug)]
pub struct Soak {
    target: Target,
    tag: String,
    topic: String,
}

/// What a soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Backend name.
    pub backend: String,
    /// Before anything.
    pub start: Usage,
    /// After a warm-up (one publisher, 1,000 events, 10 cycles).
    pub warm: Usage,
    /// At the end, once connections settled.
    pub end: Usage,
    /// Events published.
    pub events: u64,
    /// Create/publish/close cycles.
    pub cycles: u64,
    /// Publishes given up early through one open publisher.
    pub dropped: u64,
    /// How many of those were cancelled before they completed (the rest completed in time).
    pub dropped_cancelled: u64,
    /// That publisher's process RSS after its warm-up (a fifth as many given-up publishes,
    /// at least 10,000), KiB.
    pub dropped_warm_rss_kib: u64,
    /// The same after all of them, the publisher still open, KiB.
    pub dropped_end_rss_kib: u64,
    /// How long it took.
    pub elapsed_s: f64,
}

impl SoakReport {
    /// RSS growth after warm-up, KiB.
    pub fn rss_growth_kib(&self) -> i64 {
        self.end.rss_kib as i64 - self.warm.rss_kib as i64
    }

    /// RSS growth over the given-up publishes, KiB (publisher still open).
    pub fn dropped_rss_growth_kib(&self) -> i64 {
        self.dropped_end_rss_kib as i64 - self.dropped_warm_rss_kib as i64
    }

    /// Whether descriptors, tasks and broker connections are back to their warm-up values.
    pub fn counts_returned(&self) -> bool {
        self.end.fds <= self.warm.fds
            && self.end.tasks <= self.warm.tasks
            && match (self.warm.broker_connections, self.end.broker_connections) {
                (Some(w), Some(e)) => e <= w,
                _ => true,
            }
    }
}

impl Soak {
    /// Prepares a topic (stream, queue, Kafka topic or file) on `target`.
    ///
    /// # Errors
    /// When the broker refuses.
    pub async fn new(target: Target) -> Result<Self, String> {
        let tag = publisher_core::testing::unique_name("publisher-soak");
        let topic = tag.clone();
        match target.backend {
            Backend::Amqp => {
                let client = publisher_amqp::testing::QueueClient::connect(&target.address)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut args = lapin::types::FieldTable::default();
                // Bounded, so a million persistent messages do not fill the broker's memory.
                args.insert(
                    "x-max-length".into(),
                    lapin::types::AMQPValue::LongInt(10_000),
                );
                client
                    .declare_queue(&topic, args)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Backend::Kafka => publisher_kafka::testing::create_topic(&target.address, &topic, 3)
                .await
                .map_err(|e| e.to_string())?,
            Backend::Nats => {
                let js = publisher_nats::testing::connect(&target.address)
                    .await
                    .map_err(|e| e.to_string())?;
                publisher_nats::testing::create_stream(&js, &topic)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Backend::Redis | Backend::Console => {}
        }
        Ok(Self { target, tag, topic })
    }

    fn url(&self) -> String {
        let base = self.target.url();
        let sep = if base.contains('?') { '&' } else { '?' };
        match self.target.backend {
            Backend::Redis => format!("{base}{sep}maxlen=10000"),
            Backend::Amqp => format!("{base}{sep}connection_name={}", self.tag),
            Backend::Kafka => format!("{base}{sep}client.id={}", self.tag),
            Backend::Nats => format!("{base}{sep}connection_name={}", self.tag),
            Backend::Console => base,
        }
    }

    async fn broker_connections(&self) -> Option<usize> {
        match self.target.backend {
            Backend::Redis => {
                let mut conn = publisher_redis::testing::connect(&self.target.address)
                    .await
                    .ok()?;
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                // Every client but the one asking.
                Some(list.lines().count().saturating_sub(1))
            }
            Backend::Amqp => {
                let out = std::process::Command::new("rabbitmqctl")
                    .args(["-q", "list_connections", "client_properties"])
                    .output()
                    .ok()?;
                out.status.success().then(|| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains(&self.tag))
                        .count()
                })
            }
            // Kafka, NATS and console connections are this process's descriptors.
            Backend::Kafka | Backend::Nats | Backend::Console => None,
        }
    }

    async fn usage(&self) -> Usage {
        Usage {
            rss_kib: rss_kib(),
            fds: fds(),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            broker_connections: self.broker_connections().await,
        }
    }

    async fn open(&self) -> Result<Box<dyn Publisher>, String> {
        publisher::from_url(&self.url())
            .await
            .map_err(|e| e.to_string())
    }

    async fn cycles(&self, n: u64) -> Result<(), String> {
        for i in 0..n {
            let p = self.open().await?;
            p.publish(Event::text(self.topic.clone(), i.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            p.close().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn events(&self, n: u64, size: usize) -> Result<(), String> {
        let p = self.open().await?;
        let payload = publisher::Bytes::from(vec![b'x'; size]);
        let mut left = n;
        while left > 0 {
            let k = left.min(1000) as usize;
            let events = (0..k)
                .map(|_| Event::new(self.topic.clone(), payload.clone()))
                .collect();
            let outcome = p.publish_batch(events).await;
            if let Some((_, e)) = outcome.errors().next() {
                return Err(e.to_string());
            }
            left -= k as u64;
        }
        p.close().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `n` publishes at concurrency 64, each inside a timeout of 0.1 to 1 ms, so that most are
    /// cancelled while their confirm is pending (and some while being sent). Returns how many
    /// were cancelled.
    async fn given_up(&self, p: &dyn Publisher, n: u64) -> u64 {
        use futures::StreamExt;
        let payload = publisher::Bytes::from(vec![b'x'; 256]);
        futures::stream::iter(0..n)
            .map(|i| {
                let e = Event::new(self.topic.clone(), payload.clone());
                let limit = Duration::from_micros(100 + (i % 10) * 100);
                async move { u64::from(tokio::time::timeout(limit, p.publish(e)).await.is_err()) }
            })
            .buffer_unordered(64)
            .fold(0, |n, cancelled| async move { n + cancelled })
            .await
    }

    /// Given-up publishes through one publisher: RSS after a warm-up of a fifth of `n` (at
    /// least 10,000: buffers, channels and allocator pools reach their working size) and after
    /// `n` more, measured with the publisher open once the broker answered what was in flight.
    async fn dropped(&self, n: u64) -> Result<(u64, u64, u64), String> {
        let p = self.open().await?;
        let quiet = Duration::from_secs(2);
        self.given_up(p.as_ref(), (n / 5).max(10_000)).await;
        tokio::time::sleep(quiet).await;
        let warm = rss_kib();
        // In five steps, RSS after each: a leak grows step by step, an allocator settles.
        let mut cancelled = 0;
        let mut left = n;
        while left > 0 {
            let step = left.min(n.div_ceil(5));
            cancelled += self.given_up(p.as_ref(), step).await;
            left -= step;
            println!("  given up {:>8} of {n}: rss {} KiB", n - left, rss_kib());
        }
        tokio::time::sleep(quiet).await;
        let end = rss_kib();
        // Still usable after all that.
        p.publish(Event::text(self.topic.clone(), "after"))
            .await
            .map_err(|e| e.to_string())?;
        p.close().await.map_err(|e| e.to_string())?;
        Ok((cancelled, warm, end))
    }

    /// Runs the soak: `events` events through one publisher, then `cycles` create/publish/close
    /// cycles, then `dropped` given-up publishes through one publisher; waits up to `settle`
    /// for connections and tasks to wind down.
    ///
    /// # Errors
    /// The first publish error.
    pub async fn run(
        &self,
        events: u64,
        cycles: u64,
        dropped: u64,
        settle: Duration,
    ) -> Result<SoakReport, String> {
        let started = Instant::now();
        let start = self.usage().await;
        self.events(1000, 256).await?;
        self.cycles(10).await?;
        let warm = self.settled(start, settle).await;
        self.events(events, 256).await?;
        self.cycles(cycles).await?;
        let end = self.settled(warm, settle).await;
        // A console write cancelled half-way leaves half a line: the console publisher then
        // refuses every later write by design, so the phase means nothing there.
        let dropped = if self.target.backend == Backend::Console {
            0
        } else {
            dropped
        };
        let (dropped_cancelled, dropped_warm_rss_kib, dropped_end_rss_kib) = if dropped > 0 {
            self.dropped(dropped).await?
        } else {
            (0, 0, 0)
        };
        Ok(SoakReport {
            backend: self.target.backend.to_string(),
            start,
            warm,
            end,
            events,
            cycles,
            dropped,
            dropped_cancelled,
            dropped_warm_rss_kib,
            dropped_end_rss_kib,
            elapsed_s: started.elapsed().as_secs_f64(),
        })
    }

    /// Usage once fds, tasks and broker connections are back to `baseline` or `settle` passed.
    async fn settled(&self, baseline: Usage, settle: Duration) -> Usage {
        let deadline = Instant::now() + settle;
        loop {
            let u = self.usage().await;
            let back = u.fds <= baseline.fds
                && u.tasks <= baseline.tasks
                && match (baseline.broker_connections, u.broker_connections) {
                    (Some(b), Some(n)) => n <= b,
                    _ => true,
                };
            if back || Instant::now() >= deadline {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes the topic.
    pub async fn cleanup(&self) {
        match self.target.backend {
            Backend::Redis => {
                if let Ok(mut c) = publisher_redis::testing::connect(&self.target.address).await {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(&self.topic).query_async(&mut c).await;
                }
            }
            Backend::Amqp => {
                if let Ok(c) =
                    publisher_amqp::testing::QueueClient::connect(&self.target.address).await
                {
                    c.delete_queue(&self.topic).await;
                }
            }
            Backend::Kafka => {
                publisher_kafka::testing::delete_topic(&self.target.address, &self.topic).await;
            }
            Backend::Nats => {
                if let Ok(js) = publisher_nats::testing::connect(&self.target.address).await {
                    let _ = js
                        .delete_stream(publisher_nats::testing::stream_name(&self.topic))
                        .await;
                }
            }
            Backend::Console => {
                let _ = std::fs::remove_file(&self.target.address);
            }
        }
    }
}

/// Prints a soak report.
pub fn print(r: &SoakReport) {
    println!(
        "{:<8} {:>9} events {:>6} cycles in {:>6.1}s",
        r.backend, r.events, r.cycles, r.elapsed_s
    );
    for (label, u) in [("start", r.start), ("warm", r.warm), ("end", r.end)] {
        println!(
            "  {label:<6} rss {:>8} KiB  fds {:>5}  tasks {:>4}  broker connections {}",
            u.rss_kib,
            u.fds,
            u.tasks,
            u.broker_connections.map_or("n/a".into(), |n| n.to_string())
        );
    }
    println!(
        "  rss growth after warm-up: {} KiB (target <= 2048); counts back to warm-up: {}",
        r.rss_growth_kib(),
        r.counts_returned()
    );
    if r.dropped > 0 {
        println!(
            "  given up: {} publishes ({} cancelled before completing) through one open \
             publisher: rss {} -> {} KiB, growth {} KiB (target <= 2048)",
            r.dropped,
            r.dropped_cancelled,
            r.dropped_warm_rss_kib,
            r.dropped_end_rss_kib,
            r.dropped_rss_growth_kib()
        );
    }
}
