//! 1,000 create/publish/close cycles leave Redis's client count and our file descriptors where
//! they started. Runs against a private server so other tests cannot disturb the counts.

mod support;

use std::time::{Duration, Instant};

use publisher_core::{Event, Publisher};
use publisher_redis::{Mode, RedisPublisher};
use support::{RedisServer, client_count, config, open_fds};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_cycles_leak_no_connection_or_descriptor() {
    let server = RedisServer::start().await;
    let url = server.url();
    // Warm up once so lazily opened process-wide descriptors are in the baseline.
    let p = RedisPublisher::builder()
        .config(config(&url, Mode::Stream))
        .build()
        .unwrap();
    p.publish(Event::text("leak", "warm")).await.unwrap();
    p.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let clients_before = client_count(&url).await;
    let fds_before = open_fds();
    // Closed publishers are kept alive until the counts are checked: it is `close`, not drop,
    // that must release their connections.
    let mut closed = Vec::with_capacity(1000);
    for i in 0..1000 {
        let p = RedisPublisher::builder()
            .config(config(&url, Mode::Stream))
            .build()
            .unwrap();
        p.publish(Event::text("leak", i.to_string())).await.unwrap();
        let report = p.close().await.unwrap();
        assert!(report.is_clean());
        closed.push(p);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (clients, fds) = (client_count(&url).await, open_fds());
        if clients <= clients_before && fds <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leak: clients {clients_before} -> {clients}, fds {fds_before} -> {fds}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(closed);
}
