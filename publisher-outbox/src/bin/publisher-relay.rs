//! `publisher-relay`: an outbox relay as a process. Reads the outbox table of `--database` and
//! publishes through `--url` until SIGINT or SIGTERM, then closes within its close timeout and
//! prints what it delivered and what is left.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use publisher_outbox::sqlx::postgres::PgPoolOptions;
use publisher_outbox::{PgOutbox, Relay, RelayConfig};

#[derive(Parser)]
#[command(name = "publisher-relay", about, version)]
struct Cli {
    /// The PostgreSQL database holding the outbox (its password is never printed).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database: String,
    /// Where to publish: any URL `publisher::from_url` accepts (its secrets are never printed).
    #[arg(long, env = "PUBLISHER_URL", hide_env_values = true)]
    url: String,
    /// The outbox table.
    #[arg(long, default_value = publisher_outbox::DEFAULT_TABLE)]
    table: String,
    /// Create the table if it does not exist.
    #[arg(long)]
    migrate: bool,
    /// Entries claimed per round.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// How long closing may let the round in progress finish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    close_timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("publisher-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cli.database)
        .await
        // sqlx's connect errors do not carry the URL.
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let outbox = PgOutbox::new(pool)
        .with_table(&cli.table)
        .map_err(|e| e.to_string())?;
    if cli.migrate {
        outbox.migrate().await.map_err(|e| e.to_string())?;
    }
    let publisher = publisher::from_url_arc(&cli.url)
        .await
        .map_err(|e| e.to_string())?;
    let config = RelayConfig {
        batch: cli.batch,
        close_timeout: cli.close_timeout,
        ..RelayConfig::default()
    };
    let relay = Relay::start(outbox, publisher.clone(), config).map_err(|e| e.to_string())?;
    eprintln!(
        "publisher-relay: relaying table {} through {}",
        cli.table,
        publisher.backend()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
    let stopped_early = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = term.recv() => false,
        () = relay.stopped() => true,
    };
    let report = relay.close().await;
    relay.source().pool().close().await;
    let closed = publisher.close().await;
    let left = report.left.map_or_else(
        || "unknown (the database did not answer)".to_owned(),
        |b| format!("{} pending, {} dead", b.pending, b.dead),
    );
    eprintln!(
        "publisher-relay: delivered {}, retries {}, dead {}, left {left}{}",
        report.counts.delivered,
        report.counts.retries,
        report.counts.dead,
        if report.cut_off {
            " (the last round was cut off)"
        } else {
            ""
        }
    );
    if stopped_early {
        return Err("the relay stopped by itself (its publisher was closed)".to_owned());
    }
    closed.map(|_| ()).map_err(|e| e.to_string())
}
