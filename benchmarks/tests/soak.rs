//! The short soak (10,000 events, 200 create/publish/close cycles, 20,000 given-up publishes)
//! on every backend whose broker
//! answers, one backend at a time: open descriptors, live tokio tasks and broker-side connections return to their
//! warm-up values.

use std::time::Duration;

use publisher_benchmarks::soak::Soak;
use publisher_benchmarks::target::{Backend, Target};

async fn short_soak(backend: Backend) {
    let dir = std::env::temp_dir().join(publisher_core::testing::unique_name("publisher-soak"));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(target) = Target::find(backend, &dir) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{backend}: no broker under CI=true"
        );
        return;
    };
    let soak = Soak::new(target).await.unwrap();
    let report = soak
        .run(10_000, 200, 20_000, Duration::from_secs(20))
        .await
        .unwrap();
    soak.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
    publisher_benchmarks::soak::print(&report);
    assert!(report.end.fds <= report.warm.fds, "{report:?}");
    assert!(report.end.tasks <= report.warm.tasks, "{report:?}");
    if let (Some(w), Some(e)) = (
        report.warm.broker_connections,
        report.end.broker_connections,
    ) {
        assert!(e <= w, "broker connections {w} -> {e}");
    }
}

/// One test, backends in turn: descriptors and RSS are process-wide, so parallel soaks would
/// measure each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak_returns_to_baseline_on_every_backend() {
    for backend in [
        Backend::Console,
        Backend::Redis,
        Backend::Amqp,
        Backend::Kafka,
    ] {
        short_soak(backend).await;
    }
}
