//! `publisher-bench`: overhead against the raw clients (`run`) and a resource soak (`soak`).
//!
//! `cargo run --release -p publisher-benchmarks -- run` measures every backend whose broker
//! answers (same environment variables as the tests), alternating raw and ours A B A B.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use publisher::Bytes;
use publisher_benchmarks::raw::{RawAmqp, RawConsole, RawKafka, RawNats, RawRedis};
use publisher_benchmarks::report::{self, Row};
use publisher_benchmarks::soak::{self, Soak};
use publisher_benchmarks::target::{Backend, Target};
use publisher_benchmarks::workload::{self, Ours, Sample, Sink, Workload};

#[derive(Debug, Parser)]
#[command(name = "publisher-bench", about)]
struct Cli {
    /// Backends to measure (default: every one whose broker answers).
    #[arg(long, value_enum, value_delimiter = ',', global = true)]
    backend: Vec<Backend>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Raw client vs `Box<dyn Publisher>`, side by side.
    Run {
        /// Repetitions of each pair (the ratio reported is their median).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Single publishes per run at concurrency 1 (four times as many at higher ones, twenty
        /// times at the ceiling, 1,024 in flight or more).
        #[arg(long, default_value_t = 5_000)]
        count: u64,
        /// Batches per run of 1,000 events (as many events in batches of other sizes, at least
        /// three batches).
        #[arg(long, default_value_t = 20)]
        batches: u64,
        /// Concurrencies of the single-publish workloads (0 for none); 4,096 is the ceiling
        /// workload.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 4096])]
        concurrency: Vec<usize>,
        /// Events per batch of the batch workloads (0 for none); 10,000 is the ceiling
        /// workload.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
        batch_size: Vec<usize>,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Multiplexed connections the raw Redis client spreads its publishes over (ours uses
        /// one): measures whether one connection is the limit.
        #[arg(long, default_value_t = 1)]
        raw_redis_connections: usize,
    },
    /// Many events, then many create/publish/close cycles; resource usage before and after.
    Soak {
        /// Events through one publisher.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Create/publish/close cycles.
        #[arg(long, default_value_t = 10_000)]
        cycles: u64,
        /// Publishes given up early (cancelled by a 0.1 to 1 ms timeout) through one publisher.
        #[arg(long, default_value_t = 1_000_000)]
        dropped: u64,
    },
}

async fn raw_sink(t: &Target, redis_connections: usize) -> Result<Arc<dyn Sink>, String> {
    Ok(match t.backend {
        Backend::Console => Arc::new(RawConsole::open(&format!("{}.raw", t.address))?),
        Backend::Redis => Arc::new(RawRedis::connect(&t.address, redis_connections).await?),
        Backend::Amqp => Arc::new(RawAmqp::connect(&t.address).await?),
        Backend::Kafka => Arc::new(RawKafka::new(&t.address)?),
        Backend::Nats => Arc::new(RawNats::connect(&t.address).await?),
    })
}

/// A topic both sides publish to, created where the broker needs it.
async fn prepare(t: &Target) -> Result<String, String> {
    let topic = publisher_core::testing::unique_name("publisher-bench");
    match t.backend {
        Backend::Amqp => {
            let c = publisher_amqp::testing::QueueClient::connect(&t.address)
                .await
                .map_err(|e| e.to_string())?;
            c.declare_queue(&topic, Default::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        Backend::Kafka => publisher_kafka::testing::create_topic(&t.address, &topic, 3)
            .await
            .map_err(|e| e.to_string())?,
        Backend::Nats => nats_stream(&t.address, &topic).await?,
        _ => {}
    }
    Ok(topic)
}

/// Empties what a run left behind, so the broker's memory does not skew the next run.
async fn drain(t: &Target, topic: &str) {
    match t.backend {
        Backend::Redis => {
            if let Ok(mut c) = publisher_redis::testing::connect(&t.address).await {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(topic).query_async(&mut c).await;
            }
        }
        Backend::Amqp => {
            if let Ok(c) = publisher_amqp::testing::QueueClient::connect(&t.address).await {
                let _ = c
                    .channel
                    .queue_purge(topic.into(), Default::default())
                    .await;
            }
        }
        Backend::Console => {
            let _ = std::fs::remove_file(&t.address);
            let _ = std::fs::remove_file(format!("{}.raw", t.address));
        }
        Backend::Kafka => {}
        Backend::Nats => {
            if let Ok(js) = publisher_nats::testing::connect(&t.address).await
                && let Ok(stream) = js
                    .get_stream(publisher_nats::testing::stream_name(topic))
                    .await
            {
                let _ = stream.purge().await;
            }
        }
    }
}

async fn cleanup(t: &Target, topic: &str) {
    drain(t, topic).await;
    match t.backend {
        Backend::Amqp => {
            if let Ok(c) = publisher_amqp::testing::QueueClient::connect(&t.address).await {
                c.delete_queue(topic).await;
            }
        }
        Backend::Kafka => publisher_kafka::testing::delete_topic(&t.address, topic).await,
        Backend::Nats => {
            if let Ok(js) = publisher_nats::testing::connect(&t.address).await {
                let _ = js
                    .delete_stream(publisher_nats::testing::stream_name(topic))
                    .await;
            }
        }
        _ => {}
    }
}

/// A stream capturing `topic` (the subject both sides publish to).
async fn nats_stream(address: &str, topic: &str) -> Result<(), String> {
    let js = publisher_nats::testing::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    publisher_nats::testing::create_stream(&js, topic)
        .await
        .map_err(|e| e.to_string())
}

async fn measure(
    t: &Target,
    reps: usize,
    workloads: &[Workload],
    size: usize,
    redis_connections: usize,
) -> Result<Vec<Row>, String> {
    let payload = Bytes::from(vec![b'x'; size]);
    let topic = prepare(t).await?;
    let raw = raw_sink(t, redis_connections).await?;
    let publisher: Arc<dyn publisher::Publisher> = publisher::from_url_arc(&t.url())
        .await
        .map_err(|e| e.to_string())?;
    let ours: Arc<dyn Sink> = Arc::new(Ours(publisher.clone()));
    // One untimed warm-up of each, so connections, pools and topics exist.
    let warm = Workload::Single {
        concurrency: 4,
        count: 200,
    };
    workload::run(raw.clone(), &topic, payload.clone(), warm).await?;
    workload::run(ours.clone(), &topic, payload.clone(), warm).await?;
    let mut rows = Vec::new();
    for w in workloads {
        let (mut raw_s, mut ours_s): (Vec<Sample>, Vec<Sample>) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            // Alternate which goes first, A B B A …, to cancel drift within a pair too.
            let order: [&Arc<dyn Sink>; 2] = if rep % 2 == 0 {
                [&raw, &ours]
            } else {
                [&ours, &raw]
            };
            for (i, sink) in order.into_iter().enumerate() {
                drain(t, &topic).await;
                let s = workload::run(sink.clone(), &topic, payload.clone(), *w).await?;
                let is_raw = (rep % 2 == 0) == (i == 0);
                if is_raw {
                    raw_s.push(s)
                } else {
                    ours_s.push(s)
                }
            }
        }
        let row = Row::new(&t.backend.to_string(), &w.label(), &raw_s, &ours_s);
        eprintln!(
            "{} {}: ours/raw {:.3}",
            row.backend,
            row.workload,
            row.ratio()
        );
        rows.push(row);
    }
    publisher.close().await.map_err(|e| e.to_string())?;
    cleanup(t, &topic).await;
    Ok(rows)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let dir = std::env::temp_dir().join(publisher_core::testing::unique_name("publisher-bench"));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let backends = if cli.backend.is_empty() {
        vec![
            Backend::Console,
            Backend::Redis,
            Backend::Amqp,
            Backend::Kafka,
            Backend::Nats,
        ]
    } else {
        cli.backend.clone()
    };
    let targets: Vec<Target> = backends
        .iter()
        .filter_map(|b| Target::find(*b, &dir))
        .collect();
    let code = match cli.command {
        Command::Run {
            reps,
            count,
            batches,
            concurrency,
            batch_size,
            size,
            json,
            raw_redis_connections,
        } => {
            let singles = concurrency
                .iter()
                .filter(|c| **c > 0)
                .map(|&c| Workload::Single {
                    concurrency: c,
                    // More events when more are in flight, so each run lasts about as long.
                    count: match c {
                        1 => count,
                        2..1024 => count * 4,
                        _ => count * 20,
                    },
                });
            let batched = batch_size
                .iter()
                .filter(|n| **n > 0)
                .map(|&n| Workload::Batch {
                    size: n,
                    batches: (batches * 1000 / n as u64).max(3),
                });
            let workloads: Vec<Workload> = singles.chain(batched).collect();
            let mut rows = Vec::new();
            let mut failed = false;
            for t in &targets {
                match measure(t, reps, &workloads, size, raw_redis_connections).await {
                    Ok(r) => rows.extend(r),
                    Err(e) => {
                        eprintln!("{}: {e}", t.backend);
                        failed = true;
                    }
                }
            }
            report::print(&rows);
            let checks = report::checks(&rows);
            println!();
            for c in &checks {
                println!(
                    "[{}] {}: {}",
                    if c.met { "met" } else { "MISSED" },
                    c.target,
                    c.measured
                );
            }
            if let Some(path) = json {
                let doc = serde_json::json!({ "rows": rows, "checks": checks, "reps": reps, "size": size });
                std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json"))
                    .expect("write json");
                eprintln!("wrote {}", path.display());
            }
            i32::from(failed)
        }
        Command::Soak {
            events,
            cycles,
            dropped,
        } if targets.len() > 1 => {
            // RSS is the process's: after one backend's soak the allocator keeps (or returns)
            // memory the next backend's baseline would be measured against. Each backend is
            // soaked in a process of its own.
            let mut failed = false;
            for t in &targets {
                let status = std::process::Command::new(
                    std::env::current_exe().expect("the benchmark's own path"),
                )
                .args(["--backend", &t.backend.to_string(), "soak"])
                .args([
                    "--events",
                    &events.to_string(),
                    "--cycles",
                    &cycles.to_string(),
                    "--dropped",
                    &dropped.to_string(),
                ])
                .status();
                failed |= !status.is_ok_and(|s| s.success());
            }
            i32::from(failed)
        }
        Command::Soak {
            events,
            cycles,
            dropped,
        } => {
            let mut failed = false;
            for t in targets {
                let s = match Soak::new(t.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("{}: {e}", t.backend);
                        failed = true;
                        continue;
                    }
                };
                match s
                    .run(events, cycles, dropped, Duration::from_secs(20))
                    .await
                {
                    Ok(r) => {
                        soak::print(&r);
                        failed |= !r.counts_returned()
                            || r.rss_growth_kib() > 2048
                            || r.dropped_rss_growth_kib() > 2048;
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", t.backend);
                        failed = true;
                    }
                }
                s.cleanup().await;
            }
            i32::from(failed)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(code);
}
