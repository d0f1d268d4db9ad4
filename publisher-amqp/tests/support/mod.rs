//! Shared test support: where RabbitMQ is, the conformance harness that reads back by consuming
//! a queue with lapin, and a TCP fault proxy.
#![allow(dead_code)]

use std::sync::Arc;

use lapin::types::FieldTable;
use publisher_amqp::testing::{QueueClient, QueueProbe};
use publisher_amqp::{AmqpConfig, AmqpPublisher};
use publisher_core::Publisher;
use publisher_core::testing::ProbeHarness;

/// The shared RabbitMQ: `PUBLISHER_TEST_AMQP_URL` or the local default.
pub fn amqp_url() -> String {
    std::env::var("PUBLISHER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker's address, for proxies.
pub fn amqp_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&amqp_url()).unwrap();
    let host = url.host_str().unwrap().trim_matches(['[', ']']);
    let port = url.port().unwrap_or(5672);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .unwrap()
        .next()
        .unwrap()
}

/// `amqp_url()` with the host and port replaced by `addr`.
pub fn url_via(addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_ip_host(addr.ip()).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.to_string()
}

/// A test's own lapin connection and channel, for declaring and reading queues; panics on
/// failure, as a test helper should.
pub struct Client(pub QueueClient);

impl std::ops::Deref for Client {
    type Target = QueueClient;
    fn deref(&self) -> &QueueClient {
        &self.0
    }
}

impl Client {
    pub async fn connect() -> Self {
        Self(
            QueueClient::connect(&amqp_url())
                .await
                .expect("cannot reach RabbitMQ (set PUBLISHER_TEST_AMQP_URL)"),
        )
    }

    pub async fn declare_queue(&self, name: &str, args: FieldTable) {
        self.0.declare_queue(name, args).await.unwrap();
    }

    pub async fn drain(&self, queue: &str) -> Vec<publisher_core::Event> {
        self.0.drain(queue).await.unwrap()
    }

    pub async fn message_count(&self, queue: &str) -> u32 {
        self.0.message_count(queue).await.unwrap()
    }
}

pub async fn harness() -> ProbeHarness<QueueProbe> {
    ProbeHarness::new(QueueProbe::new(amqp_url()), || async {
        Ok(Box::new(
            AmqpPublisher::builder()
                .config(AmqpConfig::from_url(&amqp_url())?)
                .build()
                .await?,
        ) as Box<dyn Publisher>)
    })
    .with_via(|addr, timeouts| async move {
        let mut config = AmqpConfig::from_url(&url_via(addr))?;
        config.timeouts = timeouts;
        Ok(Box::new(AmqpPublisher::builder().config(config).build().await?) as Box<dyn Publisher>)
    })
}

/// Runs `rabbitmqctl` when it is available (a local broker); `None` otherwise.
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn shared_counter() -> Arc<std::sync::atomic::AtomicUsize> {
    Arc::default()
}
