//! Confirm semantics: a nack and an unroutable return are `Rejected`, never Ok.

mod support;

use lapin::types::{AMQPValue, FieldTable};
use publisher_amqp::{AmqpConfig, AmqpPublisher};
use publisher_core::testing::unique_name;
use publisher_core::{ErrorKind, Event, Publisher};
use support::{Client, amqp_url};

#[tokio::test]
async fn full_queue_with_reject_publish_nacks_the_second_message() {
    if support::missing() {
        return;
    }
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.nack");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    client.declare_queue(&queue, args).await;

    let publisher = AmqpPublisher::from_url(&amqp_url()).await.unwrap();
    publisher
        .publish(Event::text(queue.clone(), "first"))
        .await
        .expect("first fits");
    let err = publisher
        .publish(Event::text(queue.clone(), "second"))
        .await
        .expect_err("a nack must never be Ok");
    // A full queue refusing publishes is a "try later": retryable, and nothing was stored.
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.message().contains("nack"), "{err}");
    assert!(err.is_retryable());

    // In a batch, the nacked events fail alone.
    client.drain(&queue).await;
    let outcome = publisher
        .publish_batch(vec![
            Event::text(queue.clone(), "a"),
            Event::text(queue.clone(), "b"),
        ])
        .await;
    assert!(outcome.results()[0].is_ok());
    assert_eq!(
        outcome.results()[1].as_ref().unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    let got = client.drain(&queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().as_ref(), b"a");

    publisher.close().await.unwrap();
    client.delete_queue(&queue).await;
}

#[tokio::test]
async fn unroutable_mandatory_message_is_rejected_naming_exchange_and_routing_key() {
    if support::missing() {
        return;
    }
    let publisher = AmqpPublisher::from_url(&amqp_url()).await.unwrap();
    let nowhere = unique_name("publisher-test.nowhere");
    let err = publisher
        .publish(Event::text(nowhere.clone(), "lost?"))
        .await
        .expect_err("an unroutable message must never be Ok");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
    assert!(err.message().contains("unroutable"), "{err}");
    assert!(err.message().contains(&nowhere), "{err}");
    assert!(err.message().contains("exchange ``"), "{err}");
    // The channel stays usable: a routable publish right after succeeds.
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.routable");
    client.declare_queue(&queue, FieldTable::default()).await;
    publisher
        .publish(Event::text(queue.clone(), "found"))
        .await
        .unwrap();
    assert_eq!(client.message_count(&queue).await, 1);
    publisher.close().await.unwrap();
    client.delete_queue(&queue).await;
}

#[tokio::test]
async fn declared_topic_exchange_routes_by_pattern() {
    if support::missing() {
        return;
    }
    let client = Client::connect().await;
    let exchange = unique_name("publisher-test.exchange");
    let queue = unique_name("publisher-test.bound");
    let mut cfg = AmqpConfig::from_url(&format!(
        "{}?exchange={exchange}&exchange_type=topic&exchange_durable=false",
        amqp_url()
    ))
    .unwrap();
    cfg.connection_name = "publisher-test-exchange".into();
    let publisher = AmqpPublisher::builder().config(cfg).build().await.unwrap();
    client.declare_queue(&queue, FieldTable::default()).await;
    client
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "orders.*".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publisher
        .publish(Event::text("orders.created", "routed").with_key("k1"))
        .await
        .unwrap();
    let err = publisher
        .publish(Event::text("payments.done", "unbound"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    let got = client.drain(&queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key(), Some("k1"));
    assert_eq!(got[0].topic(), "orders.created");
    publisher.close().await.unwrap();
    client.delete_queue(&queue).await;
    let _ = client
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

#[tokio::test]
async fn missing_exchange_is_rejected_and_the_pool_recovers() {
    if support::missing() {
        return;
    }
    let exchange = unique_name("publisher-test.missing");
    let publisher = AmqpPublisher::builder()
        .config(AmqpConfig::from_url(&format!("{}?exchange={exchange}", amqp_url())).unwrap())
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        let err = publisher
            .publish(Event::text("any", "x"))
            .await
            .expect_err("publishing to a missing exchange must fail");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
        assert!(
            err.to_string().contains("404") || err.to_string().contains("NOT_FOUND"),
            "{err}"
        );
    }
    publisher.close().await.unwrap();
}

/// 100,000 events, half routable and half unroutable (mandatory), interleaved: 50,000 single
/// publishes with 1,024 in flight, then 50,000 in batches of 1,000. Every outcome must be the
/// event's own (history-checked against the queue): however RabbitMQ coalesces its acks, a
/// return never lands on a neighbour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_are_matched_to_their_own_publish_over_100_000_events() {
    if support::missing() {
        return;
    }
    use std::sync::Arc;
    use std::time::Duration;

    use publisher_core::testing::{
        Faults, Harness, History, Intent, Record, publish_batches, publish_each,
    };

    let Some(harness) = support::harness().await else {
        return;
    };
    for batched in [false, true] {
        let topic = harness.topic("attribution").await.unwrap();
        let p: Arc<dyn Publisher> = Arc::from(harness.publisher().await.unwrap());
        let mut records: Vec<Record> = (0..50_000)
            .map(|i| {
                if i % 2 == 1 {
                    let bad = harness
                        .bad_event(Intent::Unroutable, &topic, i)
                        .expect("amqp makes unroutable events");
                    Record {
                        event: bad.event,
                        intent: Intent::Unroutable,
                        expect: Some(bad.expect),
                        outcome: None,
                    }
                } else {
                    Record {
                        event: Event::text(topic.clone(), format!("routable {i}"))
                            .with_key(format!("k{}", i % 7)),
                        intent: Intent::Good,
                        expect: None,
                        outcome: None,
                    }
                }
            })
            .collect();
        let scenario = if batched {
            publish_batches(p.clone(), &mut records, 1_000, 2).await;
            "amqp 50,000 mixed in batches of 1,000"
        } else {
            publish_each(
                p.clone(),
                &mut records,
                1_024,
                Arc::new(|_| {}),
                Duration::ZERO,
            )
            .await;
            "amqp 50,000 mixed singles, c=1024"
        };
        let ok = records
            .iter()
            .filter(|r| matches!(r.outcome, Some(Ok(()))))
            .count();
        let got = harness
            .read(&topic, ok, Duration::from_secs(60))
            .await
            .unwrap();
        let verdict = History {
            scenario: scenario.into(),
            records,
            faults: Faults::None,
        }
        .check(&got, true, true);
        println!("history {verdict}");
        p.close().await.unwrap();
        harness.cleanup(&topic).await;
        verdict.assert_holds();
        assert_eq!(verdict.ok, 25_000);
    }
}
