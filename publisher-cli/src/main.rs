//! `evpub`: publish JSON lines, benchmark, and health-check any publisher backend.
#![forbid(unsafe_code)]

mod bench;
mod input;
mod send;

use clap::{Parser, Subcommand};
use publisher::Publisher;

/// Publish events to Redis, RabbitMQ or the console from the command line.
#[derive(Debug, Parser)]
#[command(name = "evpub", version, about)]
struct Cli {
    /// Where to publish: console://stdout, console://stderr, console:///file, memory://,
    /// redis://…, amqp://…
    #[arg(
        long,
        global = true,
        env = "PUBLISHER_URL",
        default_value = "console://stdout"
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish JSON lines from FILE or standard input; one summary line at the end.
    /// Exit code 0 only if every event was acknowledged.
    Send(send::SendArgs),
    /// Publish synthetic events and print events/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Print the backend's health; exit code 1 when unhealthy.
    Health,
}

async fn open(url: &str) -> Result<Box<dyn Publisher>, i32> {
    publisher::from_url(url).await.map_err(|e| {
        eprintln!("evpub: {e}");
        2
    })
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVPUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
                // lapin logs every returned message with its payload: never in our output.
                .add_directive(
                    publisher::amqp::HIDE_RETURNED_PAYLOADS
                        .parse()
                        .expect("a valid directive"),
                ),
        )
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Send(args) => match open(&cli.url).await {
            Ok(p) => send::run(p, args).await,
            Err(code) => code,
        },
        Command::Bench(args) => match open(&cli.url).await {
            Ok(p) => bench::run(p, args).await,
            Err(code) => code,
        },
        Command::Health => match open(&cli.url).await {
            Ok(p) => {
                let health = p.health().await;
                println!("{health}");
                let _ = p.close().await;
                i32::from(!health.is_healthy())
            }
            Err(code) => code,
        },
    };
    std::process::exit(code);
}
