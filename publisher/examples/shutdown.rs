//! An application that publishes domain events through a `Box<dyn Publisher>` chosen at run
//! time, and shuts down gracefully on Ctrl-C: stop producing, close (draining in-flight
//! publishes), print the close report.
//!
//! `cargo run -p publisher --example shutdown -- console://stdout`
//! `cargo run -p publisher --features redis --example shutdown -- redis://127.0.0.1:6379`

use std::time::Duration;

use publisher::{Event, Publisher};
use serde_json::json;

#[tokio::main]
async fn main() -> publisher::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PUBLISHER_URL").ok())
        .unwrap_or_else(|| "console://stdout".into());
    let publisher: Box<dyn Publisher> = publisher::from_url(&url).await?;
    eprintln!(
        "publishing to {url} ({}); Ctrl-C to stop",
        publisher.backend()
    );

    let mut order_id = 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                order_id += 1;
                let event = Event::json("orders.created", &json!({ "order_id": order_id }))?
                    .with_key(format!("customer-{}", order_id % 5));
                if let Err(e) = publisher.publish(event).await {
                    eprintln!("order {order_id} not published: {e}");
                }
            }
        }
    }
    let report = publisher.close().await?;
    eprintln!("shut down: {report}");
    Ok(())
}
