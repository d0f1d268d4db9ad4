//! Bad input gives typed errors naming the field, never a panic; IP literal hosts are honoured.

mod support;

use std::time::Duration;

use publisher_amqp::{AmqpConfig, AmqpPublisher};
use publisher_core::{ErrorKind, Event, Publisher};
use support::amqp_url;

#[test]
fn malformed_urls_and_bad_parameters_are_config_errors() {
    let cases = [
        ("amqp://[::1", "url"),
        ("redis://localhost", "url"),
        (
            "amqp://localhost?exchange_type=fanfare&exchange=x",
            "declare_exchange.kind",
        ),
        ("amqp://localhost?heartbeat=soon", "heartbeat"),
        ("amqp://localhost?mandatory=maybe", "mandatory"),
        ("amqp://localhost?prefetch=10", "url"),
        (
            "amqp://localhost?max_message_bytes=lots",
            "max_message_bytes",
        ),
    ];
    for (url, field) in cases {
        let err = AmqpConfig::from_url(url)
            .and_then(|c| c.validate().map(|()| c))
            .expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        assert_eq!(err.field(), Some(field), "{url}: {err}");
    }
    let validate = |url: &str| AmqpConfig::from_url(url).unwrap().validate().unwrap_err();
    for bad in ["0", "536870913"] {
        let err = validate(&format!("amqp://localhost?max_message_bytes={bad}"));
        assert_eq!(err.field(), Some("max_message_bytes"), "{bad}: {err}");
    }
    let err = validate("amqp://localhost?heartbeat=0");
    assert_eq!(err.field(), Some("heartbeat"));
    assert!(err.message().contains("disables heartbeats"), "{err}");
    assert_eq!(
        validate("amqp://localhost?heartbeat=70000").field(),
        Some("heartbeat")
    );
    assert_eq!(
        validate("amqp://localhost?exchange_type=topic").field(),
        Some("declare_exchange")
    );
    assert_eq!(
        validate("amqp://localhost?pool_max_size=0").field(),
        Some("pool.max_size")
    );
    #[cfg(not(feature = "tls"))]
    {
        let err = AmqpConfig::from_url("amqps://localhost").unwrap_err();
        assert!(err.message().contains("`tls` feature"), "{err}");
    }
}

#[test]
fn password_never_shows() {
    let cfg = AmqpConfig::from_url("amqp://user:s3cret@localhost:5672/vh").unwrap();
    assert!(!format!("{cfg:?}").contains("s3cret"));
    assert!(!cfg.to_string().contains("s3cret"));
    let err = AmqpConfig::from_url("amqp://user:s3cret@local host/").unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cret"));
}

#[tokio::test]
async fn wrong_password_is_a_connect_error_without_the_password() {
    if support::missing() {
        return;
    }
    let url = amqp_url().replace("guest:guest@", "guest:hunter2@");
    let err = AmqpPublisher::from_url(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn oversized_routing_key_and_header_names_are_refused_naming_the_field() {
    if support::missing() {
        return;
    }
    let publisher = AmqpPublisher::from_url(&amqp_url()).await.unwrap();
    let err = publisher
        .publish(Event::text("r".repeat(256), "x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidEvent);
    assert_eq!(err.field(), Some("topic"));
    let err = publisher
        .publish(Event::text("t", "x").with_header("h".repeat(256), "v"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("headers"));
    let err = publisher
        .publish(Event::text("t", "x").with_header("x-publisher-key", "spoof"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("headers"));
    let outcome = publisher
        .publish_batch(vec![Event::text("r".repeat(300), "x")])
        .await;
    assert_eq!(
        outcome.results()[0].as_ref().unwrap_err().field(),
        Some("topic")
    );
    publisher.close().await.unwrap();
}

/// Connects to `host` (an IP literal) where only our listener listens, and checks the
/// connection arrives there rather than at `localhost`.
async fn connects_to_literal(bind: &str, url_host: &str) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .is_ok()
    });
    let mut cfg =
        AmqpConfig::from_url(&format!("amqp://guest:guest@{url_host}:{port}/%2f")).unwrap();
    cfg.timeouts = cfg.timeouts.with_connect(Duration::from_millis(500));
    // Our listener never speaks AMQP, so the build fails; what matters is where it connected.
    let err = AmqpPublisher::builder()
        .config(cfg)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connect),
        "{err:?}"
    );
    assert!(
        accepted.await.unwrap(),
        "no connection reached {url_host}:{port}"
    );
}

#[tokio::test]
async fn ipv6_literal_host_connects_to_that_host() {
    connects_to_literal("[::1]:0", "[::1]").await;
}

#[tokio::test]
async fn ipv4_literal_host_connects_to_that_host_not_localhost() {
    connects_to_literal("127.0.0.2:0", "127.0.0.2").await;
}

/// A payload over `max_message_bytes` is refused before anything is sent (RabbitMQ would close
/// the channel on it, failing its neighbours), naming the field; its neighbours go through.
#[tokio::test]
async fn oversized_payload_is_refused_before_sending() {
    if support::missing() {
        return;
    }
    let client = support::Client::connect().await;
    let queue = publisher_core::testing::unique_name("publisher-test.oversized");
    client
        .declare_queue(&queue, lapin::types::FieldTable::default())
        .await;
    let mut config = AmqpConfig::from_url(&format!("{}?max_message_bytes=16", amqp_url())).unwrap();
    config.timeouts = config.timeouts.with_publish(Duration::from_secs(5));
    let publisher = AmqpPublisher::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let outcome = publisher
        .publish_batch(vec![
            Event::text(queue.clone(), "small"),
            Event::text(queue.clone(), "x".repeat(17)),
            Event::text(queue.clone(), "small too"),
        ])
        .await;
    let err = outcome.results()[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidEvent, "{err}");
    assert_eq!(err.field(), Some("payload"));
    assert!(outcome.results()[0].is_ok() && outcome.results()[2].is_ok());
    let got = client.drain(&queue).await;
    assert_eq!(got.len(), 2, "only the two small events reach the queue");
    publisher.close().await.unwrap();
    client.delete_queue(&queue).await;
}
