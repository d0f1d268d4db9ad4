//! Faults through the TCP fault proxy, for Redis and RabbitMQ, with publishers built by the
//! facade: a stalled connection gives `Timeout` within the publish timeout; a cut gives typed
//! errors, then recovery once traffic flows again; added latency is tolerated.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use publisher::{ErrorKind, Event, PoolConfig, Publisher, PublisherConfig, Timeouts};
use publisher_core::testing::Probe;
use publisher_integration::{Broker, FaultProxy, ProxyMode, endpoint};

fn addr_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).unwrap();
    let host = u.host_str().unwrap().trim_matches(['[', ']']).to_owned();
    let port = u.port().unwrap();
    (host.as_str(), port)
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}

fn via(url: &str, proxy: &FaultProxy) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_ip_host(proxy.addr.ip()).unwrap();
    u.set_port(Some(proxy.addr.port())).unwrap();
    u.to_string()
}

fn timeouts() -> Timeouts {
    Timeouts::default()
        .with_connect(Duration::from_millis(500))
        .with_publish(Duration::from_millis(500))
        .with_close(Duration::from_secs(3))
}

fn pool() -> PoolConfig {
    PoolConfig::default()
        .with_max_size(4)
        .with_wait_timeout(Duration::from_millis(300))
        .with_create_timeout(Duration::from_millis(500))
        .with_recycle_timeout(Duration::from_millis(300))
}

async fn build(backend: Broker, url: String) -> Box<dyn Publisher> {
    let config = match backend {
        Broker::Redis => PublisherConfig::Redis(publisher::redis::RedisConfig {
            timeouts: timeouts(),
            pool: pool(),
            ..publisher::redis::RedisConfig::from_url(&url).unwrap()
        }),
        Broker::RabbitMq => PublisherConfig::Amqp(publisher::amqp::AmqpConfig {
            timeouts: timeouts(),
            pool: pool(),
            heartbeat: Duration::from_secs(2),
            ..publisher::amqp::AmqpConfig::from_url(&url).unwrap()
        }),
        _ => unreachable!("the other brokers' faults run in their own crates' history suites"),
    };
    config.build().await.unwrap()
}

async fn probe_for(backend: Broker, address: &str) -> Box<dyn Probe> {
    match backend {
        Broker::Redis => Box::new(publisher_redis::testing::StreamProbe::new(address)),
        Broker::RabbitMq => Box::new(publisher_amqp::testing::QueueProbe::new(address)),
        _ => unreachable!(),
    }
}

async fn stall_gives_timeout(backend: Broker) {
    let Some(ep) = endpoint(backend).await else {
        return;
    };
    let proxy = FaultProxy::start(addr_of(&ep.address)).await;
    let probe = probe_for(backend, &ep.address).await;
    let topic = probe.topic("stall").await.unwrap();
    let publisher = build(backend, via(&ep.url(), &proxy)).await;
    publisher
        .publish(Event::text(topic.clone(), "warm"))
        .await
        .unwrap();

    proxy.set(ProxyMode::Stall);
    let started = Instant::now();
    let err = publisher
        .publish(Event::text(topic.clone(), "stuck"))
        .await
        .expect_err("nothing can be confirmed through a stalled connection");
    assert_eq!(
        err.kind(),
        ErrorKind::OutcomeUnknown,
        "{backend:?}: {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );

    proxy.set(ProxyMode::Pass);
    let _ = publisher.close().await;
    probe.cleanup(&topic).await;
}

async fn cut_then_recover(backend: Broker) {
    let Some(ep) = endpoint(backend).await else {
        return;
    };
    let proxy = FaultProxy::start(addr_of(&ep.address)).await;
    let probe = probe_for(backend, &ep.address).await;
    let topic = probe.topic("cut").await.unwrap();
    let publisher = build(backend, via(&ep.url(), &proxy)).await;
    let first = Event::text(topic.clone(), "before");
    publisher.publish(first.clone()).await.unwrap();

    proxy.set(ProxyMode::Refuse);
    proxy.cut();
    let started = Instant::now();
    let err = publisher
        .publish(Event::text(topic.clone(), "during"))
        .await
        .expect_err("publishing through a cut connection must fail");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::OutcomeUnknown
        ),
        "{backend:?}: {err:?}"
    );
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));

    proxy.set(ProxyMode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = Event::text(topic.clone(), "after");
    loop {
        match publisher.publish(after.clone()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{backend:?} never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let got = probe
        .read(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let ids: Vec<_> = got.iter().map(|r| r.id.unwrap()).collect();
    assert!(
        ids.contains(&first.id()) && ids.contains(&after.id()),
        "{backend:?}: {ids:?}"
    );
    publisher.close().await.unwrap();
    probe.cleanup(&topic).await;
}

async fn latency_is_tolerated(backend: Broker) {
    let Some(ep) = endpoint(backend).await else {
        return;
    };
    let proxy = FaultProxy::start(addr_of(&ep.address)).await;
    let probe = probe_for(backend, &ep.address).await;
    let topic = probe.topic("latency").await.unwrap();
    let publisher = build(backend, via(&ep.url(), &proxy)).await;
    publisher
        .publish(Event::text(topic.clone(), "warm"))
        .await
        .unwrap();
    proxy.set(ProxyMode::Latency(Duration::from_millis(50)));
    let started = Instant::now();
    publisher
        .publish(Event::text(topic.clone(), "slow but fine"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    proxy.set(ProxyMode::Pass);
    publisher.close().await.unwrap();
    probe.cleanup(&topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stall_gives_timeout() {
    stall_gives_timeout(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_stall_gives_timeout() {
    stall_gives_timeout(Broker::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_then_recover() {
    cut_then_recover(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_cut_then_recover() {
    cut_then_recover(Broker::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_latency_is_tolerated() {
    latency_is_tolerated(Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_latency_is_tolerated() {
    latency_is_tolerated(Broker::RabbitMq).await;
}
