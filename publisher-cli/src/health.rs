//! `evpub health`: can the endpoint be reached? A line, or JSON objects for scripts and
//! readiness probes.

use publisher::{Health, Publisher};
use serde_json::json;

use crate::endpoint;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Print one JSON object per check (`open`, then `broker`) instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `health`; returns the process exit code: 0 healthy (or degraded), 1 unhealthy, 2 when
/// the publisher could not even be opened.
pub async fn run(url: &str, args: HealthArgs) -> i32 {
    let endpoint = endpoint(url);
    let publisher: Box<dyn Publisher> = match publisher::from_url(url).await {
        Ok(p) => {
            if args.json {
                println!(
                    "{}",
                    json!({"check": "open", "endpoint": endpoint, "ok": true})
                );
            }
            p
        }
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    json!({
                        "check": "open",
                        "endpoint": endpoint,
                        "ok": false,
                        "error": {"kind": e.kind().as_str(), "message": e.to_string()},
                    })
                );
            } else {
                eprintln!("evpub: {endpoint}: {e}");
            }
            return 2;
        }
    };
    let health = publisher.health().await;
    if args.json {
        println!("{}", broker_check(&health, &endpoint));
    } else {
        println!("{health} ({endpoint})");
    }
    let _ = publisher.close().await;
    i32::from(!health.is_healthy())
}

fn broker_check(health: &Health, endpoint: &str) -> serde_json::Value {
    json!({
        "check": "broker",
        "endpoint": endpoint,
        "backend": health.backend,
        "ok": health.is_healthy(),
        "status": health.status.to_string(),
        "latency_ms": health.latency.map(|l| l.as_secs_f64() * 1e3),
        "detail": health.detail,
    })
}
