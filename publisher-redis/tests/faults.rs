//! Faults against a private `redis-server` (never the shared one): a crash and restart
//! mid-stream, a paused server, an exhausted pool.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use publisher_core::{ErrorKind, Event, PoolConfig, Publisher, Timeouts};
use publisher_redis::{Mode, RedisConfig, RedisPublisher};
use support::{RedisServer, client_conn, config, read_stream, redis_url};

fn tight_timeouts() -> Timeouts {
    Timeouts::default()
        .with_connect(Duration::from_millis(500))
        .with_publish(Duration::from_secs(1))
        .with_close(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_fails_typed_then_recovers_and_keeps_every_acknowledged_entry() {
    let mut server = RedisServer::start().await;
    let mut cfg = config(&server.url(), Mode::Stream);
    cfg.timeouts = tight_timeouts();
    cfg.pool = PoolConfig::default()
        .with_max_size(4)
        .with_wait_timeout(Duration::from_millis(500))
        .with_create_timeout(Duration::from_millis(500))
        .with_recycle_timeout(Duration::from_millis(500));
    let publisher = Arc::new(RedisPublisher::builder().config(cfg).build().unwrap());
    let topic = publisher_core::testing::unique_name("publisher-test.restart");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = publisher.clone();
    let t = topic.clone();
    let s = stop.clone();
    let publishing = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let mut i = 0u64;
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            let event = Event::text(t.clone(), format!("event {i}"));
            let id = event.id();
            let started = Instant::now();
            let r = p.publish(event).await;
            outcomes.push((id, started.elapsed(), r));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        outcomes
    });

    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcomes = publishing.await.unwrap();

    let first_err = outcomes
        .iter()
        .position(|(_, _, r)| r.is_err())
        .expect("publishes must fail while Redis is down");
    assert!(first_err > 0, "publishes before the crash must succeed");
    let last_err = outcomes.iter().rposition(|(_, _, r)| r.is_err()).unwrap();
    assert!(
        outcomes[last_err + 1..]
            .iter()
            .filter(|(_, _, r)| r.is_ok())
            .count()
            > 10,
        "publishes must succeed again after the restart without recreating the publisher"
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
                "untyped failure while down: {e:?}"
            );
            assert!(e.is_retryable(), "{e}");
            assert!(
                *elapsed < Duration::from_millis(1500),
                "a failure took {elapsed:?}, over the 1 s publish timeout"
            );
        }
    }

    let mut conn = client_conn(&server.url()).await;
    let stored: std::collections::HashSet<_> = read_stream(&mut conn, &topic)
        .await
        .iter()
        .map(|e| e.id())
        .collect();
    for (id, _, r) in &outcomes {
        if r.is_ok() {
            assert!(
                stored.contains(id),
                "acknowledged event {id} lost in the restart"
            );
        }
    }
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn paused_server_gives_timeout_within_the_bound() {
    let server = RedisServer::start().await;
    let mut cfg = config(&server.url(), Mode::Stream);
    cfg.timeouts = tight_timeouts().with_publish(Duration::from_millis(300));
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    publisher
        .publish(Event::text("paused", "warm"))
        .await
        .unwrap();

    let mut admin = client_conn(&server.url()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let err = publisher
        .publish(Event::text("paused", "stuck"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(elapsed < Duration::from_millis(800), "took {elapsed:?}");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn exhausted_lent_pool_gives_unavailable_within_the_wait_timeout_and_is_not_closed() {
    if support::missing() {
        return;
    }
    let pool = deadpool_redis::Config::from_url(redis_url())
        .builder()
        .unwrap()
        .max_size(1)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .unwrap();
    let mut cfg = config(&redis_url(), Mode::Stream);
    cfg.pool = cfg.pool.with_wait_timeout(Duration::from_millis(200));
    let publisher = RedisPublisher::builder()
        .config(cfg)
        .lend_pool(pool.clone())
        .build()
        .unwrap();
    let topic = publisher_core::testing::unique_name("publisher-test.pool");

    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = publisher
        .publish(Event::text(topic.clone(), "waits"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert_eq!(err.field(), Some("pool.wait_timeout"));
    assert!(started.elapsed() < Duration::from_millis(700));
    drop(held);

    publisher
        .publish(Event::text(topic.clone(), "flows"))
        .await
        .unwrap();
    publisher.close().await.unwrap();
    assert!(!pool.is_closed(), "a lent pool must never be closed by us");
    let mut conn = pool.get().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&topic)
        .query_async(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_pool_multiplexes_concurrent_publishes_on_one_connection() {
    let server = RedisServer::start().await;
    // A pool of 16: a burst of 64 publishes on a cold publisher still opens one connection.
    let cfg = config(&server.url(), Mode::Stream);
    assert_eq!(cfg.pool.max_size, 16);
    let publisher = Arc::new(RedisPublisher::builder().config(cfg).build().unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let p = publisher.clone();
        tasks.spawn(async move { p.publish(Event::text("multiplexed", i.to_string())).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    // One pooled connection carried all 64 (CLIENT LIST: it and the asking connection).
    assert_eq!(support::client_count(&server.url()).await, 1);
    let mut conn = client_conn(&server.url()).await;
    assert_eq!(read_stream(&mut conn, "multiplexed").await.len(), 64);
    publisher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_connection_broken_while_idle_is_replaced_before_the_next_publish() {
    let mut server = RedisServer::start().await;
    let mut cfg = config(&server.url(), Mode::Stream);
    cfg.timeouts = tight_timeouts();
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    publisher
        .publish(Event::text("idle", "before"))
        .await
        .unwrap();

    server.kill();
    server.restart().await;
    // Idle for over a second: the shared connection is checked (PING) before it is used
    // again, fails, and is replaced, so the publish succeeds instead of failing on it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let event = Event::text("idle", "after");
    let id = event.id();
    publisher.publish(event).await.unwrap();

    let mut conn = client_conn(&server.url()).await;
    let stored: Vec<_> = read_stream(&mut conn, "idle").await;
    assert!(stored.iter().any(|e| e.id() == id), "{stored:?}");
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn health_monitor_runs_in_background_and_stops_on_close() {
    let server = RedisServer::start().await;
    let mut cfg = config(&server.url(), Mode::Stream);
    cfg.health_interval = Some(Duration::from_millis(50));
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while publisher.get_ref().last_health().is_none() {
        assert!(Instant::now() < deadline, "monitor never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(publisher.get_ref().last_health().unwrap().is_healthy());
    let health = publisher.health().await;
    assert!(health.is_healthy());
    assert!(health.latency.is_some());
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn health_of_an_unreachable_server_is_unhealthy_and_bounded() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&format!("redis://127.0.0.1:{port}"), Mode::Stream);
    cfg.timeouts = tight_timeouts().with_health(Duration::from_millis(500));
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    let started = Instant::now();
    let health = publisher.health().await;
    assert!(!health.is_healthy());
    assert!(started.elapsed() < Duration::from_secs(1));
    let err = publisher.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    publisher.close().await.unwrap();
}

/// A failover behind a stable address: the primary is demoted (`REPLICAOF`), the replica
/// promoted, and the address (a proxy standing in for a name or virtual IP) now leads to the new
/// primary. The shared connection still leads to the old one, whose `READONLY` replies must be
/// typed, retryable, never Ok, and drop the connection, so that the publisher recovers within a
/// few publishes, without being rebuilt. Every acknowledged entry is on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_readonly_replies_drop_the_connection_and_publishing_recovers() {
    let old = RedisServer::start().await;
    let new = RedisServer::start().await;
    let addr = |s: &RedisServer| -> std::net::SocketAddr {
        format!("127.0.0.1:{}", s.port).parse().unwrap()
    };
    let proxy = publisher_core::testing::FaultProxy::start(addr(&old)).await;
    let url = format!("redis://{}", proxy.addr);
    let publisher = RedisPublisher::builder()
        .config(config(&url, Mode::Stream))
        .build()
        .unwrap();
    let stream = publisher_core::testing::unique_name("publisher-test.failover");
    publisher
        .publish(Event::text(stream.clone(), "before"))
        .await
        .unwrap();

    // The new primary replicates the old one, then takes over; the old one follows it.
    let mut new_conn = client_conn(&new.url()).await;
    let mut old_conn = client_conn(&old.url()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(old.port)
        .query_async(&mut new_conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_stream(&mut new_conn, &stream).await.is_empty() {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut new_conn)
        .await
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port)
        .query_async(&mut old_conn)
        .await
        .unwrap();
    proxy.set_upstream(addr(&new));

    let mut acknowledged = vec!["before".to_owned()];
    let mut failures = 0;
    for i in 0..20 {
        let payload = format!("after {i}");
        match publisher
            .publish(Event::text(stream.clone(), payload.clone()))
            .await
        {
            Ok(_) => acknowledged.push(payload),
            Err(e) => {
                failures += 1;
                assert!(e.is_retryable(), "{e}");
                assert!(
                    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Connect),
                    "{e}"
                );
            }
        }
    }
    assert!(
        failures <= 3,
        "{failures} of 20 publishes failed: the connection to the demoted primary was kept"
    );
    let on_new: Vec<String> = read_stream(&mut new_conn, &stream)
        .await
        .iter()
        .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
        .collect();
    for payload in &acknowledged {
        assert!(
            on_new.contains(payload),
            "acknowledged `{payload}` is not on the new primary"
        );
    }
    publisher.close().await.unwrap();
}

/// `wait_replicas`: Ok only once a replica holds the entry; with the replica gone, the publish
/// says "outcome unknown" (the primary has it) instead of Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_confirms_only_what_a_replica_holds() {
    let primary = RedisServer::start().await;
    let mut replica = RedisServer::start().await;
    let mut primary_conn = client_conn(&primary.url()).await;
    let mut replica_conn = client_conn(&replica.url()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query_async(&mut replica_conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut primary_conn)
            .await
            .unwrap();
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never came online: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("{}?wait_replicas=1&wait_timeout=300ms", primary.url());
    let publisher = RedisPublisher::builder()
        .config(RedisConfig {
            timeouts: Timeouts::default().with_publish(Duration::from_secs(3)),
            ..config(&url, Mode::Stream)
        })
        .build()
        .unwrap();
    let stream = publisher_core::testing::unique_name("publisher-test.wait");
    publisher
        .publish(Event::text(stream.clone(), "one"))
        .await
        .unwrap();
    let batch = publisher
        .publish_batch(vec![
            Event::text(stream.clone(), "two"),
            Event::text(stream.clone(), "three"),
        ])
        .await;
    assert!(batch.is_all_ok(), "{batch:?}");
    // Acknowledged means on the replica already: read there, no waiting.
    assert_eq!(
        payloads(read_stream(&mut replica_conn, &stream).await),
        ["one", "two", "three"]
    );

    replica.kill();
    let e = publisher
        .publish(Event::text(stream.clone(), "four"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert!(
        e.is_retryable() && e.message().contains("0 of 1 replica"),
        "{e}"
    );
    let batch = publisher
        .publish_batch(vec![
            Event::text(stream.clone(), "five"),
            Event::text(stream.clone(), "six"),
        ])
        .await;
    for r in batch.results() {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    }
    // The primary holds what it could not get replicated: "unknown", not "not sent".
    assert_eq!(
        payloads(read_stream(&mut primary_conn, &stream).await),
        ["one", "two", "three", "four", "five", "six"]
    );
    publisher.close().await.unwrap();
}

fn payloads(events: Vec<Event>) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
        .collect()
}
