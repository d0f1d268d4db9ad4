//! Faults the real broker cannot be told to make, on librdkafka's in-process mock cluster:
//! a broker going down and up mid-stream, and injected retriable produce errors.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use publisher_core::{ErrorKind, Event, Publisher, Timeouts};
use publisher_kafka::{KafkaConfig, KafkaPublisher};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::consume;

fn mock_config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        message_timeout: Duration::from_millis(2000),
        timeouts: Timeouts::default()
            .with_publish(Duration::from_secs(4))
            .with_close(Duration::from_secs(5)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_fails_typed_within_the_timeout_then_recovers() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("faults", 1, 1).unwrap();
    let publisher = Arc::new(
        KafkaPublisher::builder()
            .config(mock_config(&bootstrap))
            .build()
            .unwrap(),
    );
    // The mock cluster takes a moment to serve the idempotent producer's first request.
    let deadline = Instant::now() + Duration::from_secs(15);
    while publisher
        .publish(Event::text("faults", "warm-up"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "mock cluster never accepted a record"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (publisher.clone(), stop.clone());
    let publishing = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let mut i = 0;
        while !s.load(Ordering::SeqCst) {
            let e = Event::text("faults", format!("{i}")).with_key("k");
            let id = e.id();
            let started = Instant::now();
            let r = p.publish(e).await;
            outcomes.push((id, started.elapsed(), r));
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outcomes
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = publishing.await.unwrap();

    let first_err = outcomes
        .iter()
        .position(|(_, _, r)| r.is_err())
        .expect("publishes must fail while the broker is down");
    assert!(first_err > 0);
    let last_err = outcomes.iter().rposition(|(_, _, r)| r.is_err()).unwrap();
    assert!(
        outcomes[last_err + 1..].len() > 10,
        "publishes must succeed again after the broker is back"
    );
    for (_, elapsed, r) in &outcomes {
        if let Err(e) = r {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Timeout
                        | ErrorKind::Connect
                        | ErrorKind::Unavailable
                        | ErrorKind::OutcomeUnknown
                ),
                "untyped failure: {e:?}"
            );
            assert!(e.is_retryable(), "{e}");
            // Bounded by the 4 s publish timeout (plus scheduling slack).
            assert!(*elapsed < Duration::from_millis(4500), "took {elapsed:?}");
        }
    }
    let ok: Vec<_> = outcomes
        .iter()
        .filter(|(_, _, r)| r.is_ok())
        .map(|(id, _, _)| *id)
        .collect();
    let read: HashSet<_> = consume(&bootstrap, "faults", ok.len(), Duration::from_secs(20))
        .await
        .iter()
        .map(|e| e.id())
        .collect();
    for id in &ok {
        assert!(read.contains(id), "acknowledged event {id} lost");
    }
    publisher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_are_retried_without_duplicates_or_gaps() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("retries", 1, 1).unwrap();
    let mut cfg = mock_config(&bootstrap);
    cfg.message_timeout = Duration::from_secs(8);
    cfg.timeouts = cfg.timeouts.with_publish(Duration::from_secs(10));
    let publisher = KafkaPublisher::builder().config(cfg).build().unwrap();
    // The first produce requests fail with a retriable error; the idempotent producer retries.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 5],
    );
    let events: Vec<Event> = (0..200)
        .map(|i| Event::text("retries", i.to_string()).with_key("same-key"))
        .collect();
    let outcome = publisher.publish_batch(events).await;
    assert!(outcome.is_all_ok(), "{:?}", outcome.errors().next());
    let read = consume(&bootstrap, "retries", 200, Duration::from_secs(20)).await;
    let payloads: Vec<i64> = read
        .iter()
        .map(|e| std::str::from_utf8(e.payload()).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        payloads,
        (0..200).collect::<Vec<_>>(),
        "duplicates, gaps or reordering"
    );
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_broker_health_is_unhealthy_and_bounded() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = mock_config(&format!("127.0.0.1:{port}"));
    cfg.timeouts = cfg.timeouts.with_health(Duration::from_millis(500));
    let publisher = KafkaPublisher::builder().config(cfg).build().unwrap();
    let started = Instant::now();
    let health = publisher.health().await;
    assert!(!health.is_healthy(), "{health}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let started = Instant::now();
    let err = publisher.publish(Event::text("t", "x")).await.unwrap_err();
    // librdkafka cannot say whether a timed-out record left: outcome unknown.
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::OutcomeUnknown
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(4500));
    let report = publisher.close().await.unwrap();
    // If the publish timeout fired before librdkafka's message timeout, the record was still
    // queued at close: it is purged and reported, never delivered silently.
    // (A first publish to a topic looks the topic up first: unreachable brokers fail it with
    // `Connect` before anything is queued.)
    let still_queued =
        usize::from(err.kind() != ErrorKind::Connect && !err.message().contains("message_timeout"));
    assert_eq!(report.abandoned, still_queued, "{report} after {err}");
}

/// A topic that does not exist, on a broker that does not create topics on demand: the publish
/// fails at once with `Rejected` naming the topic (not a retryable timeout after
/// `message_timeout`), other topics are unaffected, and once the topic exists it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_fails_fast_by_name_and_alone() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("present", 1, 1).unwrap();
    let mut cfg = mock_config(&bootstrap);
    // The client side of "auto-creation off": its metadata requests do not ask for creation.
    cfg.properties
        .insert("allow.auto.create.topics".into(), "false".into());
    let publisher = KafkaPublisher::builder().config(cfg).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while publisher
        .publish(Event::text("present", "warm-up"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "mock cluster never accepted a record"
        );
    }

    let started = Instant::now();
    let e = publisher
        .publish(Event::text("absent", "x"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(!e.is_retryable() && !e.is_outcome_unknown(), "{e}");
    assert_eq!(e.field(), Some("topic"));
    assert!(e.message().contains("`absent`"), "{e}");

    let batch = publisher
        .publish_batch(vec![
            Event::text("present", "a"),
            Event::text("absent", "b"),
            Event::text("present", "c"),
        ])
        .await;
    let kinds: Vec<_> = batch
        .results()
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    assert_eq!(kinds, [None, Some(ErrorKind::Rejected), None], "{batch:?}");

    // Not remembered as missing for long: a second after the last refusal, it is looked up
    // again, and once created it is published to.
    cluster.create_topic("absent", 1, 1).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publisher
        .publish(Event::text("absent", "now it exists"))
        .await
        .unwrap();
    let got = consume(&bootstrap, "absent", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    publisher.close().await.unwrap();
}

/// A broker that fences the idempotent producer (`PRODUCER_FENCED`, as tansu does when
/// librdkafka bumps its epoch after timeouts) leaves librdkafka's producer failing every later
/// record: the publisher replaces it, reports the fenced record as outcome unknown, and the
/// next publishes succeed without a new publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_replaced_and_publishing_continues() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("fenced", 1, 1).unwrap();
    let publisher = KafkaPublisher::builder()
        .config(mock_config(&bootstrap))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while publisher
        .publish(Event::text("fenced", "warm-up"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "mock cluster never accepted a record"
        );
    }
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 3],
    );
    let e = publisher
        .publish(Event::text("fenced", "fenced"))
        .await
        .unwrap_err();
    assert!(e.is_outcome_unknown(), "{e}");
    assert!(e.message().contains("replaced"), "{e}");
    let mut ok = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ok < 10 {
        match publisher
            .publish(Event::text("fenced", format!("after {ok}")))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.is_outcome_unknown(), "{e}");
                assert!(Instant::now() < deadline, "never recovered: {e}");
            }
        }
    }
    publisher.close().await.unwrap();
}
