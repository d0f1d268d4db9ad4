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
use support::{Client, RabbitNode, amqp_addr, url_via};

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
    if support::missing() {
        return;
    }
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
    if support::missing() {
        return;
    }
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
    if support::missing() {
        return;
    }
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

/// A publisher through `proxy`, healthy; then the proxy drops its connection and refuses new
/// ones, and health says so.
async fn healthy_then_refused(proxy: &FaultProxy) -> AmqpPublisher {
    let publisher = publisher_via(proxy, Duration::from_secs(1)).await;
    assert!(publisher.health().await.is_healthy());
    proxy.set(Mode::Refuse);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = publisher.health().await;
    assert!(!health.is_healthy(), "{health}");
    publisher
}

#[tokio::test]
async fn refused_connection_while_down_is_typed_and_health_is_unhealthy() {
    if support::missing() {
        return;
    }
    let proxy = FaultProxy::start(amqp_addr()).await;
    let publisher = healthy_then_refused(&proxy).await;
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

/// An idle publisher (nothing published since the broker came back) reports healthy again by
/// itself: health reconnects, it does not just read the state of a dead connection.
#[tokio::test]
async fn idle_publisher_reports_healthy_again_once_the_broker_is_back() {
    if support::missing() {
        return;
    }
    let proxy = FaultProxy::start(amqp_addr()).await;
    let publisher = healthy_then_refused(&proxy).await;
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = publisher.health().await;
        if health.is_healthy() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still unhealthy 10 s after the broker came back: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher.close().await.unwrap();
}

/// A memory alarm on a RabbitMQ node of the test's own (`connection.blocked`): publishes are
/// refused at once with `Unavailable` (nothing sent) or, when the block came while they were in
/// flight, end as outcome unknown within the publish timeout; health says so; close returns
/// within its bound; once the alarm clears, publishing resumes and no refused event shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_refuses_publishes_fast_and_every_wait_stays_bounded() {
    if support::missing() {
        return;
    }
    let Some(node) = RabbitNode::start().await else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no RabbitMQ node of the test's own under CI=true"
        );
        return;
    };
    let queue = unique_name("publisher-test.alarm");
    let client = publisher_amqp::testing::QueueClient::connect(&node.url())
        .await
        .unwrap();
    client
        .declare_queue(&queue, FieldTable::default())
        .await
        .unwrap();
    let open = |name: String| {
        let url = node.url();
        async move {
            let mut cfg = AmqpConfig::from_url(&url).unwrap();
            cfg.connection_name = name;
            cfg.timeouts = Timeouts::default()
                .with_publish(Duration::from_secs(1))
                .with_health(Duration::from_secs(1))
                .with_close(Duration::from_secs(2));
            AmqpPublisher::builder().config(cfg).build().await.unwrap()
        }
    };
    let names = ["publishing", "closed", "dropped"].map(|n| unique_name(&format!("alarm-{n}")));
    let publisher = open(names[0].clone()).await;
    let other = open(names[1].clone()).await;
    let dropped = open(names[2].clone()).await;
    // The connections RabbitMQ holds, by the name each publisher gave its own.
    let open_connections = || node.ctl(&["list_connections", "client_properties"]);
    for name in &names {
        assert!(
            open_connections().contains(name.as_str()),
            "{name} is not connected"
        );
    }
    assert_eq!(established_to(node.port), 4);
    publisher
        .publish(Event::text(queue.clone(), "before"))
        .await
        .unwrap();

    node.ctl(&["set_vm_memory_high_watermark", "0"]);
    let mut refused = until_blocked(&publisher, &queue).await;
    refused.extend(until_blocked(&other, &queue).await);
    refused.extend(until_blocked(&dropped, &queue).await);
    let health = publisher.health().await;
    assert!(!health.is_healthy(), "{health}");
    // Close while blocked: bounded by the close timeout, whatever lapin is waiting for.
    let started = Instant::now();
    let report = other.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "close during the alarm took {:?}: {report:?}",
        started.elapsed()
    );
    // Close released the connection, and so did dropping a publisher without close, while
    // the alarm is still on (lapin cannot write connection.close while blocked).
    drop(dropped);
    // Our side lets go at once: only the open publisher's and the read-back client's
    // connections are left established (they were four).
    let deadline = Instant::now() + Duration::from_secs(1);
    while established_to(node.port) != 2 {
        assert!(
            Instant::now() < deadline,
            "{} connections to the node are still established on our side",
            established_to(node.port)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And RabbitMQ, which reads nothing from a blocked connection, sees them gone while the
    // alarm is still on (it held them until the alarm cleared before).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = open_connections();
        if !held.contains(names[1].as_str()) && !held.contains(names[2].as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ still holds a closed or dropped publisher's connection during the alarm"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        open_connections().contains(names[0].as_str()),
        "the open publisher's connection went too"
    );

    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while publisher
        .publish(Event::text(queue.clone(), "after"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "publishing never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = client.drain(&queue).await.unwrap();
    let ids: std::collections::HashSet<_> = held.iter().map(|e| e.id()).collect();
    for id in &refused {
        assert!(
            !ids.contains(id),
            "an event refused as Unavailable reached the queue"
        );
    }
    assert!(held.iter().any(|e| e.payload().as_ref() == b"before"));
    assert!(held.iter().any(|e| e.payload().as_ref() == b"after"));
    publisher.close().await.unwrap();
}

/// TCP connections of this machine established to `port` (the client side of each: Linux's
/// socket tables, where the remote port is `port`).
fn established_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|row| {
                    let cols: Vec<&str> = row.split_whitespace().collect();
                    // local_address rem_address st: "0100007F:1F90 0100007F:D431 01"
                    cols.len() > 3
                        && cols[3] == "01"
                        && cols[2]
                            .rsplit_once(':')
                            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                            == Some(port)
                })
                .count()
        })
        .sum()
}

/// Publishes until the publisher refuses with `connection.blocked` (RabbitMQ blocks a
/// connection once it publishes during an alarm); every publish stays bounded. Returns the
/// refused events' ids.
async fn until_blocked(p: &AmqpPublisher, queue: &str) -> Vec<publisher_core::Uuid> {
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = Event::text(queue, format!("during {}", refused.len()));
        let id = e.id();
        let started = Instant::now();
        let r = p.publish(e).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a publish during the alarm took {:?}",
            started.elapsed()
        );
        match r {
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                assert!(e.message().contains("connection.blocked"), "{e}");
                refused.push(id);
                if refused.len() == 5 {
                    return refused;
                }
            }
            Err(e) => assert!(e.is_outcome_unknown(), "{e}"),
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the alarm never blocked the publisher"
        );
    }
}

/// Topic authorization (403 on a routing key) closes the channel: the refused event gets
/// `Rejected` naming its routing key, every other event in flight succeeds or has an unknown
/// outcome (never `Rejected`), everything acknowledged is in the queue, and publishing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_routing_key_fails_alone_and_the_channel_is_replaced() {
    let Some(node) = RabbitNode::start().await else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no RabbitMQ node of the test's own under CI=true"
        );
        return;
    };
    node.ctl(&["add_user", "limited", "limited-pw"]);
    node.ctl(&["set_permissions", "-p", "/", "limited", ".*", ".*", ".*"]);
    node.ctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        "limited",
        "amq.topic",
        "^allowed\\.",
        "^allowed\\.",
    ]);
    let queue = unique_name("publisher-test.topic-auth");
    let client = publisher_amqp::testing::QueueClient::connect(&node.url())
        .await
        .unwrap();
    client
        .declare_queue(&queue, FieldTable::default())
        .await
        .unwrap();
    client
        .channel
        .queue_bind(
            queue.as_str().into(),
            "amq.topic".into(),
            "allowed.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let url = node
        .url()
        .replace("guest:guest@", "limited:limited-pw@")
        .replace("/%2f", "/%2f?exchange=amq.topic");
    let publisher = Arc::new(AmqpPublisher::from_url(&url).await.unwrap());

    let events: Vec<Event> = (0..400)
        .map(|i| {
            let key = if i == 200 {
                "denied.key"
            } else {
                "allowed.key"
            };
            Event::text(key, format!("{i}"))
        })
        .collect();
    let denied_id = events[200].id();
    let outcomes = futures::future::join_all(events.iter().cloned().map(|e| {
        let p = publisher.clone();
        async move { (e.id(), p.publish(e).await) }
    }))
    .await;
    let mut acknowledged = std::collections::HashSet::new();
    for (id, r) in &outcomes {
        match r {
            Ok(_) => {
                assert_ne!(*id, denied_id, "the refused event was acknowledged");
                acknowledged.insert(*id);
            }
            Err(e) if *id == denied_id => {
                assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
                assert!(
                    e.message()
                        .contains("write access to routing key `denied.key` (403)"),
                    "{e}"
                );
            }
            Err(e) => assert!(
                e.is_outcome_unknown() || e.kind() == ErrorKind::Unavailable,
                "an innocent event got {e}"
            ),
        }
    }
    // Publishing goes on, on a new channel.
    publisher
        .publish(Event::text("allowed.key", "after"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held: std::collections::HashSet<_> = client
        .drain(&queue)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    assert!(!held.contains(&denied_id));
    for id in &acknowledged {
        assert!(held.contains(id), "an acknowledged event is missing");
    }
    publisher.close().await.unwrap();
}
