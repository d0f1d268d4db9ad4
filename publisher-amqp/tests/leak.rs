//! 500 create/publish/close cycles leave RabbitMQ's connection and channel counts and our file
//! descriptors where they started. Closed publishers are kept alive until the counts are
//! checked, so it is `close`, not drop, that must release everything.

mod support;

use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use publisher_amqp::{AmqpConfig, AmqpPublisher};
use publisher_core::testing::unique_name;
use publisher_core::{Event, Publisher};
use support::{Client, amqp_url, rabbitmqctl};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (connections named `name`, all channels) as RabbitMQ reports them, when rabbitmqctl works.
fn broker_counts(name: &str) -> Option<(usize, usize)> {
    let conns = rabbitmqctl(&["-q", "list_connections", "name", "client_properties"])?;
    let channels = rabbitmqctl(&["-q", "list_channels", "name"])?;
    let ours = conns.lines().filter(|l| l.contains(name)).count();
    Some((
        ours,
        channels.lines().filter(|l| !l.trim().is_empty()).count(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_cycles_leak_no_connection_channel_or_descriptor() {
    if support::missing() {
        return;
    }
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.leak");
    client.declare_queue(&queue, FieldTable::default()).await;
    let name = unique_name("publisher-leak");
    let mut cfg = AmqpConfig::from_url(&amqp_url()).unwrap();
    cfg.connection_name = name.clone();

    let warm = AmqpPublisher::builder()
        .config(cfg.clone())
        .build()
        .await
        .unwrap();
    warm.publish(Event::text(queue.clone(), "warm"))
        .await
        .unwrap();
    warm.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let fds_before = open_fds();
    let broker_before = broker_counts(&name);
    if broker_before.is_none() {
        eprintln!("rabbitmqctl unavailable: checking descriptors only");
    }
    let mut closed = Vec::with_capacity(500);
    for i in 0..500 {
        let p = AmqpPublisher::builder()
            .config(cfg.clone())
            .build()
            .await
            .unwrap();
        p.publish(Event::text(queue.clone(), i.to_string()))
            .await
            .unwrap();
        assert!(p.close().await.unwrap().is_clean());
        closed.push(p);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fds = open_fds();
        let broker = broker_counts(&name);
        let broker_ok = match (broker_before, broker) {
            (Some((c0, ch0)), Some((c, ch))) => c <= c0 && ch <= ch0,
            _ => true,
        };
        if fds <= fds_before && broker_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leak: fds {fds_before} -> {fds}, broker (connections, channels) {broker_before:?} -> {broker:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.message_count(&queue).await, 501);
    drop(closed);
    client.delete_queue(&queue).await;
}
