//! `from_url` and `PublisherConfig` pick the right backend or say exactly what is missing.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use publisher::{ErrorKind, Event, Publisher, PublisherConfig};

#[tokio::test]
async fn memory_url_builds_a_working_publisher() {
    let p = publisher::from_url("memory://").await.unwrap();
    assert_eq!(p.backend(), "memory");
    p.publish(Event::text("t", "x")).await.unwrap();
    p.close().await.unwrap();
}

#[cfg(feature = "console")]
#[tokio::test]
async fn console_url_builds_a_working_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let p = publisher::from_url_arc(&format!("console://{}?format=json", path.display()))
        .await
        .unwrap();
    assert_eq!(p.backend(), "console");
    let event = Event::text("t", "hello");
    p.publish(event.clone()).await.unwrap();
    p.close().await.unwrap();
    let written = std::fs::read(&path).unwrap();
    let back = publisher::envelope::Envelope::parse(&written)
        .unwrap()
        .into_event()
        .unwrap();
    assert_eq!(back.id(), event.id());
}

#[tokio::test]
async fn unknown_scheme_lists_the_enabled_ones() {
    let err = publisher::from_url("mqtt://localhost:1883")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.field(), Some("url"));
    assert!(err.message().contains("unknown scheme `mqtt://`"), "{err}");
    assert!(err.message().contains("memory://"), "{err}");
    let err = publisher::from_url("just words").await.unwrap_err();
    assert_eq!(err.field(), Some("url"));
}

#[tokio::test]
async fn compiled_out_backend_names_its_feature() {
    // Which backends this test binary has depends on feature unification across the
    // workspace, so ask the library rather than `cfg!`.
    let enabled = publisher::enabled_schemes();
    for (url, scheme, feature) in [
        ("console://stdout?format=nope", "console", "console"),
        ("kafka://localhost:9092?acks=1", "kafka", "kafka"),
        ("redis://localhost?mode=nope", "redis", "redis"),
        ("rediss://localhost?mode=nope", "rediss", "redis-tls"),
        (
            "redis+cluster://h1:7000,h2:7001?mode=nope",
            "redis+cluster",
            "redis",
        ),
        (
            "rediss+cluster://h1:7000,h2:7001?mode=nope",
            "rediss+cluster",
            "redis-tls",
        ),
        (
            "redis+sentinel://s1,s2/master?mode=nope",
            "redis+sentinel",
            "redis",
        ),
        (
            "rediss+sentinel://s1,s2/master?mode=nope",
            "rediss+sentinel",
            "redis-tls",
        ),
        ("amqp://localhost?heartbeat=0", "amqp", "amqp"),
        ("amqps://localhost?heartbeat=0", "amqps", "amqp-tls"),
        ("nats://localhost?max_ack_inflight=0", "nats", "nats"),
        ("tls://localhost?max_ack_inflight=0", "tls", "nats"),
    ] {
        let err = publisher::from_url(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        if enabled.contains(&scheme) {
            // Enabled: the backend itself rejects the bad parameter.
            assert_ne!(err.backend(), "publisher", "{url}: {err}");
        } else {
            assert!(
                err.message().contains(&format!("feature `{feature}`")),
                "{url}: {err}"
            );
        }
    }
}

/// Every Redis form opens through the facade (connections open lazily: an address nobody
/// answers at is an unhealthy report, not a build error).
#[cfg(feature = "redis")]
#[tokio::test]
async fn every_redis_url_form_opens() {
    for url in [
        "redis://127.0.0.1:1",
        "redis+cluster://u:s3cret@127.0.0.1:1,[::1]:2",
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/1",
    ] {
        let p = publisher::from_url(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(p.backend(), "redis");
        assert!(!format!("{p:?}").contains("s3cret"));
        let health = p.health().await;
        assert!(!health.is_healthy(), "{url}: {health}");
        p.close().await.expect("close");
    }
}

#[cfg(feature = "console")]
#[test]
fn config_from_toml_and_environment() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "publisher.toml",
            r#"
                [console]
                target = "stderr"
                format = "json"
                timeouts = { publish = "2s" }
            "#,
        )?;
        let cfg = PublisherConfig::load("publisher.toml").unwrap();
        let PublisherConfig::Console(c) = &cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(c.timeouts.publish, std::time::Duration::from_secs(2));

        jail.clear_env();
        jail.set_env("PUBLISHER__URL", "memory://");
        assert_eq!(
            PublisherConfig::from_env().unwrap(),
            PublisherConfig::Url("memory://".into())
        );
        Ok(())
    });
}

#[cfg(feature = "redis")]
#[test]
fn redis_config_from_environment_with_nested_pool() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("PUBLISHER__REDIS__URL", "redis://cache:6379");
        jail.set_env("PUBLISHER__REDIS__POOL__MAX_SIZE", "8");
        jail.set_env("PUBLISHER__REDIS__TIMEOUTS__PUBLISH", "3s");
        let cfg = PublisherConfig::from_env().unwrap();
        let PublisherConfig::Redis(r) = cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(r.url, "redis://cache:6379");
        assert_eq!(r.pool.max_size, 8);
        assert_eq!(r.timeouts.publish, std::time::Duration::from_secs(3));
        Ok(())
    });
}

#[test]
fn bad_config_names_the_field() {
    if cfg!(feature = "console") {
        let err =
            PublisherConfig::from_toml("[console]\ntimeouts = { publish = \"soon\" }").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.field().unwrap().contains("timeouts"), "{err:?}");
    }
    let err = PublisherConfig::from_toml("").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn config_builds_the_backend_it_describes() {
    let cfg = PublisherConfig::from_toml("[memory]").unwrap();
    let p = cfg.build().await.unwrap();
    assert_eq!(p.backend(), "memory");
    p.close().await.unwrap();
}

#[test]
fn config_debug_never_shows_a_password() {
    let raw = PublisherConfig::Url("redis://user:s3cret-pw@127.0.0.1:6379/0".into());
    let shown = format!("{raw:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(shown.contains("user:***@127.0.0.1"), "{shown}");
    #[cfg(feature = "redis")]
    {
        let cfg = PublisherConfig::from_toml(
            "[redis]\nurl = \"redis://user:s3cret-pw@127.0.0.1:6379/0\"",
        )
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
}
