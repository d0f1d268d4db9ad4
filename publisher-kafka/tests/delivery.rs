//! Against the real broker: per-key ordering, close under load, receipts.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use publisher_core::testing::unique_name;
use publisher_core::{ErrorKind, Event, Position, Publisher};
use publisher_kafka::KafkaPublisher;
use support::{brokers, config, consume, create_topic, delete_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_ten_keys_arrive_in_publish_order_per_key() {
    let b = brokers();
    let topic = unique_name("publisher-test.order");
    create_topic(&b, &topic, 4).await;
    let publisher = Arc::new(
        KafkaPublisher::builder()
            .config(config(&b))
            .build()
            .unwrap(),
    );
    // Publish concurrently across keys, sequentially within each key, as an ordered producer
    // would; batches keep the per-key order too.
    let mut tasks = tokio::task::JoinSet::new();
    for key in 0..10 {
        let (p, t) = (publisher.clone(), topic.clone());
        tasks.spawn(async move {
            for chunk in 0..10 {
                let events: Vec<Event> = (0..100)
                    .map(|i| {
                        Event::text(t.clone(), (chunk * 100 + i).to_string())
                            .with_key(format!("key-{key}"))
                    })
                    .collect();
                let outcome = p.publish_batch(events).await;
                assert!(outcome.is_all_ok(), "{:?}", outcome.errors().next());
                for r in outcome.results() {
                    assert!(matches!(
                        r.as_ref().unwrap().position,
                        Position::Partition { .. }
                    ));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let events = consume(&b, &topic, 10_000, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 10_000, "read back {}", events.len());
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut ids = HashSet::new();
    for e in &events {
        assert!(ids.insert(e.id()), "duplicate {}", e.id());
        let n: i64 = std::str::from_utf8(e.payload()).unwrap().parse().unwrap();
        let key = e.key().unwrap().to_owned();
        if let Some(prev) = last.insert(key.clone(), n) {
            assert_eq!(n, prev + 1, "{key}: {n} after {prev}");
        }
    }
    publisher.close().await.unwrap();
    delete_topic(&b, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_under_load_loses_no_acknowledged_event_and_counts_match() {
    let b = brokers();
    let topic = unique_name("publisher-test.close-load");
    create_topic(&b, &topic, 3).await;
    let publisher = Arc::new(
        KafkaPublisher::builder()
            .config(config(&b))
            .build()
            .unwrap(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        let (p, t) = (publisher.clone(), topic.clone());
        tasks.spawn(async move {
            let e = Event::text(t, i.to_string());
            let id = e.id();
            (id, p.publish(e).await)
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = publisher.close().await.unwrap();
    let mut ok = HashSet::new();
    let mut closed = 0;
    while let Some(r) = tasks.join_next().await {
        let (id, r) = r.unwrap();
        match r {
            Ok(_) => {
                ok.insert(id);
            }
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Closed | ErrorKind::OutcomeUnknown),
                    "{e:?}"
                );
                closed += 1;
            }
        }
    }
    assert_eq!(ok.len() + closed, 10_000);
    assert!(!ok.is_empty());
    assert_eq!(report.abandoned, 0, "{report}");
    // Every publish admitted before close was drained: those are the Ok ones (plus any that
    // had already finished before close began).
    assert!(report.drained <= ok.len(), "{report} with {} ok", ok.len());
    let read: HashSet<_> = consume(&b, &topic, ok.len(), Duration::from_secs(60))
        .await
        .iter()
        .map(|e| e.id())
        .collect();
    for id in &ok {
        assert!(
            read.contains(id),
            "acknowledged event {id} is not in the topic"
        );
    }
    assert_eq!(
        read.len(),
        ok.len(),
        "refused publishes must not reach the topic"
    );
    delete_topic(&b, &topic).await;
}

/// `health` asks for one topic's metadata (never every topic's): before any publish, a name no
/// broker creates; after, a topic it publishes to. Neither creates a topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_for_one_topic_and_creates_none() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let b = brokers();
    let topics = |b: String| async move {
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("allow.auto.create.topics", "false")
                .create()
                .unwrap();
            let m = c.fetch_metadata(None, Duration::from_secs(5)).unwrap();
            m.topics()
                .iter()
                .map(|t| t.name().to_owned())
                .collect::<HashSet<_>>()
        })
        .await
        .unwrap()
    };
    let before = topics(b.clone()).await;
    // The producer's defaults (it asks brokers to create the topics it looks up), not the
    // tests' `config`, which turns that off.
    let publisher = KafkaPublisher::builder()
        .config(publisher_kafka::KafkaConfig {
            brokers: b.clone(),
            ..Default::default()
        })
        .build()
        .unwrap();
    let health = publisher.health().await;
    assert!(health.is_healthy(), "{health}");
    if support::on_mock() {
        // The mock cluster creates any topic it is asked about, whatever its name.
        publisher_core::testing::notice(
            "kafka: health creating no topic is not shown on the mock cluster (it creates any \
             name asked for)",
        );
        publisher.close().await.unwrap();
        return;
    }
    let topic = unique_name("publisher-test.health");
    create_topic(&b, &topic, 1).await;
    publisher
        .publish(Event::text(topic.clone(), "x"))
        .await
        .unwrap();
    let health = publisher.health().await;
    assert!(health.is_healthy(), "{health}");
    let after = topics(b.clone()).await;
    // Other tests of this binary create topics meanwhile: only names of ours count.
    let created: Vec<_> = after
        .difference(&before)
        .filter(|t| !t.starts_with("publisher-test."))
        .collect();
    assert!(created.is_empty(), "health created {created:?}");
    assert!(!after.contains("publisher health check"), "{after:?}");
    publisher.close().await.unwrap();
    delete_topic(&b, &topic).await;
}
