//! Bad input gives typed errors naming the field, never a panic, and sends nothing.

mod support;

use publisher_core::{ErrorKind, Event, Publisher};
use publisher_redis::{Mode, RedisConfig, RedisPublisher};
use redis::AsyncCommands;
use support::{client_conn, config, redis_url};

#[tokio::test]
async fn malformed_urls_wrong_schemes_and_unknown_modes_are_config_errors() {
    let cases = [
        ("redis://[::1", "url"),
        ("redis:/nohost", "url"),
        ("amqp://localhost", "url"),
        ("redis://localhost?mode=fanout", "mode"),
        ("redis://localhost?maxlen=-3", "maxlen"),
        ("redis://localhost?maxlen=0", "maxlen"),
        ("redis://localhost?max_payload_bytes=0", "max_payload_bytes"),
        ("redis://localhost?pool_max_size=0", "pool.max_size"),
        ("redis://localhost?max_len=10", "url"),
    ];
    for (url, field) in cases {
        let err = RedisPublisher::from_url(url).await.expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        assert_eq!(err.field(), Some(field), "{url}: {err}");
    }
    #[cfg(not(feature = "tls"))]
    {
        let err = RedisPublisher::from_url("rediss://localhost")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }
}

#[test]
fn building_outside_a_runtime_never_panics() {
    if support::missing() {
        return;
    }
    // No Tokio runtime on this thread: a health monitor cannot start, and says so.
    let built = |url: &str| {
        RedisPublisher::builder()
            .config(RedisConfig::from_url(url).unwrap())
            .build()
    };
    let err = built("redis://127.0.0.1:6379?health_interval=1s").unwrap_err();
    assert_eq!(err.field(), Some("health_interval"), "{err}");
    assert!(err.message().contains("Tokio runtime"), "{err}");
    // Without one, the publisher builds here and publishes once a runtime runs it.
    let publisher = built(&redis_url()).unwrap();
    let topic = publisher_core::testing::unique_name("publisher-test.no-runtime");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        publisher
            .publish(Event::new(topic.as_str(), "built outside"))
            .await
            .unwrap();
        let mut conn = client_conn(&redis_url()).await;
        let n: usize = conn.xlen(&topic).await.unwrap();
        assert_eq!(n, 1);
        let _: () = conn.del(&topic).await.unwrap();
        publisher.close().await.unwrap();
    });
}

#[tokio::test]
async fn wrongtype_key_is_rejected_alone_in_a_batch() {
    if support::missing() {
        return;
    }
    let topic = publisher_core::testing::unique_name("publisher-test.wrongtype");
    let good = publisher_core::testing::unique_name("publisher-test.good");
    let mut conn = client_conn(&redis_url()).await;
    let _: () = conn.set(&topic, "a plain string").await.unwrap();

    let publisher = RedisPublisher::builder()
        .config(config(&redis_url(), Mode::Stream))
        .build()
        .unwrap();
    let err = publisher
        .publish(Event::text(topic.clone(), "x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(!err.is_retryable());

    let outcome = publisher
        .publish_batch(vec![
            Event::text(good.clone(), "1"),
            Event::text(topic.clone(), "2"),
            Event::text(good.clone(), "3"),
        ])
        .await;
    assert!(outcome.results()[0].is_ok());
    assert_eq!(
        outcome.results()[1].as_ref().unwrap_err().kind(),
        ErrorKind::Rejected
    );
    assert!(outcome.results()[2].is_ok());
    let len: usize = conn.xlen(&good).await.unwrap();
    assert_eq!(len, 2);
    publisher.close().await.unwrap();
    let _: () = conn.del(&[&topic, &good]).await.unwrap();
}

#[tokio::test]
async fn oversized_payload_is_refused_locally_naming_the_limit() {
    if support::missing() {
        return;
    }
    let topic = publisher_core::testing::unique_name("publisher-test.oversized");
    let mut cfg = config(&redis_url(), Mode::Stream);
    cfg.max_payload_bytes = 1024;
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    let err = publisher
        .publish(Event::new(topic.clone(), vec![7u8; 2048]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidEvent);
    assert_eq!(err.field(), Some("payload"));
    assert!(err.message().contains("1024"), "{err}");
    publisher
        .publish(Event::new(topic.clone(), vec![7u8; 1024]))
        .await
        .unwrap();
    let mut conn = client_conn(&redis_url()).await;
    let len: usize = conn.xlen(&topic).await.unwrap();
    assert_eq!(len, 1, "only the payload within the limit reaches Redis");
    publisher.close().await.unwrap();
    let _: () = conn.del(&topic).await.unwrap();
}

#[tokio::test]
async fn maxlen_trims_the_stream() {
    if support::missing() {
        return;
    }
    let topic = publisher_core::testing::unique_name("publisher-test.maxlen");
    let mut cfg = config(&redis_url(), Mode::Stream);
    cfg.maxlen = Some(10);
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    let outcome = publisher
        .publish_batch(
            (0..1000)
                .map(|i| Event::text(topic.clone(), i.to_string()))
                .collect(),
        )
        .await;
    assert!(outcome.is_all_ok());
    let mut conn = client_conn(&redis_url()).await;
    let len: usize = conn.xlen(&topic).await.unwrap();
    // `~` trims by whole macro nodes: far below 1000, at least 10.
    assert!((10..1000).contains(&len), "XLEN {len}");
    publisher.close().await.unwrap();
    let _: () = conn.del(&topic).await.unwrap();
}

#[tokio::test]
async fn pubsub_min_receivers_rejects_unheard_messages() {
    if support::missing() {
        return;
    }
    let mut cfg = config(&redis_url(), Mode::Pubsub);
    cfg.min_receivers = 1;
    let publisher = RedisPublisher::builder().config(cfg).build().unwrap();
    let err = publisher
        .publish(Event::text(
            publisher_core::testing::unique_name("publisher-test.nobody"),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.message().contains("min_receivers"), "{err}");
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_a_connect_error_without_the_password() {
    if support::missing() {
        return;
    }
    let url = redis_url().replace("redis://", "redis://nobody:hunter2@");
    let publisher = RedisPublisher::from_url(&url).await.unwrap();
    let err = publisher.publish(Event::text("t", "x")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Connect), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    assert!(!format!("{publisher:?}").contains("hunter2"));
    publisher.close().await.unwrap();
}
