//! Bad input gives typed errors naming the field, never a panic, and sends nothing.

mod support;

use publisher_core::{ErrorKind, Event, Publisher};
use publisher_kafka::KafkaPublisher;
use support::{brokers, config};

#[tokio::test]
async fn invalid_topic_names_and_oversized_records_are_refused_locally() {
    let mut cfg = config(&brokers());
    cfg.max_message_bytes = 2000;
    let publisher = KafkaPublisher::builder().config(cfg).build().unwrap();
    for topic in [
        String::new(),
        "t".repeat(250),
        ".".into(),
        "..".into(),
        "has space".into(),
        "slash/topic".into(),
        "ümlaut".into(),
    ] {
        let err = publisher
            .publish(Event::text(topic.clone(), "x"))
            .await
            .expect_err(&topic);
        assert_eq!(err.kind(), ErrorKind::InvalidEvent, "{topic:?}: {err}");
        assert_eq!(err.field(), Some("topic"), "{topic:?}: {err}");
    }
    publisher
        .publish(Event::text("t".repeat(249), "x"))
        .await
        .map(|_| ())
        .or_else(|e| {
            // A 249-character name passes local validation; the broker may still refuse to
            // auto-create it, which is its right.
            assert_ne!(e.kind(), ErrorKind::InvalidEvent, "{e}");
            Ok::<_, ()>(())
        })
        .unwrap();
    let err = publisher
        .publish(Event::new("fine", vec![0u8; 3000]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidEvent);
    assert_eq!(err.field(), Some("payload"));
    assert!(err.message().contains("2000"), "{err}");
    let err = publisher
        .publish(Event::text("fine", "x").with_header("x-publisher-id", "spoof"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("headers"));
    let outcome = publisher
        .publish_batch(vec![Event::text("bad topic", "x")])
        .await;
    assert_eq!(
        outcome.results()[0].as_ref().unwrap_err().field(),
        Some("topic")
    );
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn malformed_urls_and_contradictions_are_config_errors() {
    for (url, field) in [
        ("kafka:/broken", "url"),
        ("kafka://", "brokers"),
        ("kafka://h:9092?acks=1", "acks"),
        ("kafka://h:9092?message_timeout_ms=0", "message_timeout"),
        ("kafka://h:9092?message_timeout_ms=20000", "message_timeout"),
        ("kafka://h:9092?compression=lzma", "compression"),
        ("kafka://h:9092?max_message_bytes=5", "max_message_bytes"),
    ] {
        let err = KafkaPublisher::from_url(url).await.expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        assert_eq!(err.field(), Some(field), "{url}: {err}");
    }
}

#[tokio::test]
async fn unknown_librdkafka_property_is_a_config_error_at_build() {
    let err = KafkaPublisher::from_url("kafka://127.0.0.1:9092?no.such.property=1")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.field(), Some("properties"));
    assert!(err.message().contains("no.such.property"), "{err}");
}

#[tokio::test]
async fn sasl_password_never_shows_even_when_librdkafka_refuses_the_config() {
    let err = KafkaPublisher::from_url(
        "kafka://127.0.0.1:9092?sasl.password=hunter2&security.protocol=bogus",
    )
    .await
    .unwrap_err();
    assert_eq!(err.field(), Some("properties"));
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}
