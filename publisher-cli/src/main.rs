//! `evpub`: publish JSON lines, benchmark, and health-check any publisher backend.
#![forbid(unsafe_code)]

mod attempts;
mod bench;
mod health;
mod input;
mod logs;
mod progress;
mod receipts;
mod send;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use publisher::Publisher;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Publish events to Redis, RabbitMQ, Kafka, NATS JetStream or the console from the command line.
#[derive(Debug, Parser)]
#[command(name = "evpub", version, about)]
struct Cli {
    /// Where to publish: console://stdout, console://stderr, console:///file, memory://,
    /// redis://…, rediss://…, redis+cluster://h1:p1,h2:p2,…,
    /// redis+sentinel://s1:p1,s2:p2,…/master, amqp://…, amqps://…, kafka://host:port,… (several brokers),
    /// nats://…, tls://…. A password in it is never printed.
    #[arg(
        long,
        global = true,
        env = "PUBLISHER_URL",
        hide_env_values = true,
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
    Health(health::HealthArgs),
}

/// `--url`'s help: the schemes this build opens (from the facade's registry), with examples.
fn url_help() -> String {
    let schemes: Vec<String> = publisher::enabled_schemes()
        .iter()
        .map(|s| format!("{s}://"))
        .collect();
    format!(
        "Where to publish, one of {} (console://stdout, console:///path/file, \
         kafka://host:port,host:port). A password in it is never printed",
        schemes.join(", ")
    )
}

/// The endpoint as evpub names it in its output: the URL with its password hidden.
pub fn endpoint(url: &str) -> String {
    publisher::config::redact_url(url)
}

async fn open(url: &str) -> Result<Box<dyn Publisher>, i32> {
    publisher::from_url(url).await.map_err(|e| {
        eprintln!("evpub: {}: {e}", endpoint(url));
        2
    })
}

#[tokio::main]
async fn main() {
    let folded = logs::init();
    // The schemes come from the facade's registry, so the help lists exactly what this build
    // can open.
    let matches = Cli::command()
        .mut_arg("url", |arg| arg.help(url_help()))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let code = match cli.command {
        Command::Send(args) => match open(&cli.url).await {
            Ok(p) => send::run(p, &endpoint(&cli.url), args).await,
            Err(code) => code,
        },
        Command::Bench(args) => match open(&cli.url).await {
            Ok(p) => bench::run(p, args).await,
            Err(code) => code,
        },
        Command::Health(args) => health::run(&cli.url, args).await,
    };
    folded.report();
    std::process::exit(code);
}
