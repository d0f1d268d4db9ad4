//! Faults through a TCP proxy in front of the shared RabbitMQ, so that only this test's
//! connection is disturbed: cut, stall, refuse; then recovery without a new publisher.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use publisher_amqp::{AmqpConfig, AmqpPublisher};
use publisher_core::testing::unique_name;
use publisher_core::testing::{FaultProxy, ProxyMode as Mode};
use publisher_core::{ErrorKind, Event, PoolConfig, Publisher, Timeouts};
use support::{Client, amqp_addr, url_via};

async fn publisher_via(proxy: &FaultProxy, publish: Duration) -> AmqpPublisher {
    let mut cfg = AmqpConfig::from_url(&url_via(proxy.addr)).unwrap();
    cfg.heartbeat = Duration::from_secs(2);
    cfg.timeouts = Timeouts::default()
        .with_connect(Duration::from_secs(1))
        .with_publish(publish)
        .with_close(Duration::from_secs(3));
    cfg.pool = PoolConfig::default()
        .with_max_size(4)
        .with_wait_timeout(Duration::from_millis(500))
        .with_create_timeout(Duration::from_secs(1))
        .with_recycle_timeout(Duration::from_millis(500));
    AmqpPublisher::builder().config(cfg).build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_fails_typed_then_recovers_and_keeps_every_confirmed_message() {
    let proxy = FaultProxy::start(amqp_addr()).await;
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.cut");
    client.declare_queue(&queue, FieldTable::default()).await;
    let publisher = Arc::new(publisher_via(&proxy, Duration::from_secs(1)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (p, q, s) = (publisher.clone(), queue.clone(), stop.clone());
    let publishing = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let mut i = 0;
        while !s.load(Ordering::SeqCst) {
            let event = Event::text(q.clone(), format!("event {i}"));
            let id = event.id();
            let started = Instant::now();
            let r = p.publish(event).await;
            outcomes.push((id, started.elapsed(), r));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        outcomes
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Mode::Refuse);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.set(Mode::Pass);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = publishing.await.unwrap();

    let first_err = outcomes
        .iter()
        .position(|(_, _, r)| r.is_err())
        .expect("publishes must fail while the connection is cut");
    assert!(first_err > 0);
    let last_err = outcomes.iter().rposition(|(_, _, r)| r.is_err()).unwrap();
    assert!(
        outcomes[last_err + 1..].len() > 10,
        "publishes must succeed again without recreating the publisher"
    );
    for (_, elapsed, r) in &outcomes {
        if let Err(e) = r {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Connect
                        | ErrorKind::Timeout
                        | ErrorKind::Unavailable
                        | ErrorKind::OutcomeUnknown
                ),
                "untyped failure: {e:?}"
            );
            assert!(*elapsed < Duration::from_millis(2500), "took {elapsed:?}");
        }
    }
    let stored: std::collections::HashSet<_> =
        client.drain(&queue).await.iter().map(|e| e.id()).collect();
    for (id, _, r) in &outcomes {
        if r.is_ok() {
            assert!(
                stored.contains(id),
                "confirmed message {id} is not in the queue"
            );
        }
    }
    publisher.close().await.unwrap();
    client.delete_queue(&queue).await;
}

#[tokio::test]
async fn stalled_connection_gives_timeout_within_the_bound() {
    let proxy = FaultProxy::start(amqp_addr()).await;
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.stall");
    client.declare_queue(&queue, FieldTable::default()).await;
    let publisher = publisher_via(&proxy, Duration::from_millis(500)).await;
    publisher
        .publish(Event::text(queue.clone(), "warm"))
        .await
        .unwrap();
    proxy.set(Mode::Stall);
    let started = Instant::now();
    let err = publisher
        .publish(Event::text(queue.clone(), "stuck"))
        .await
        .expect_err("no confirm can arrive through a stalled connection");
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    // Close is bounded even though the connection is stalled.
    let started = Instant::now();
    let _ = publisher.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    proxy.set(Mode::Pass);
    client.delete_queue(&queue).await;
}

#[tokio::test]
async fn in_flight_confirm_on_a_dead_connection_fails_fast() {
    let proxy = FaultProxy::start(amqp_addr()).await;
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.dead");
    client.declare_queue(&queue, FieldTable::default()).await;
    let publisher = Arc::new(publisher_via(&proxy, Duration::from_secs(10)).await);
    publisher
        .publish(Event::text(queue.clone(), "warm"))
        .await
        .unwrap();
    proxy.set(Mode::Stall);
    let p = publisher.clone();
    let q = queue.clone();
    let pending = tokio::spawn(async move {
        let started = Instant::now();
        (
            p.publish(Event::text(q, "pending")).await,
            started.elapsed(),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    let (r, elapsed) = pending.await.unwrap();
    let err = r.expect_err("a confirm on a dead connection must not be Ok");
    // The message left before the cut: RabbitMQ may or may not have it.
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(err.is_retryable());
    assert!(
        elapsed < Duration::from_secs(3),
        "took {elapsed:?}: a dead connection must fail the confirm well before the 10 s publish timeout"
    );
    publisher.close().await.unwrap();
    client.delete_queue(&queue).await;
}

#[tokio::test]
async fn refused_connection_while_down_is_typed_and_health_is_unhealthy() {
    let proxy = FaultProxy::start(amqp_addr()).await;
    let publisher = publisher_via(&proxy, Duration::from_secs(1)).await;
    assert!(publisher.health().await.is_healthy());
    proxy.set(Mode::Refuse);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = publisher.health().await;
    assert!(!health.is_healthy(), "{health}");
    let err = publisher
        .publish(Event::text("anything", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::OutcomeUnknown
        ),
        "{err:?}"
    );
    publisher.close().await.unwrap();
}
