//! Shared test support: where RabbitMQ is, the conformance harness that reads back by consuming
//! a queue with lapin, and a TCP fault proxy.
#![allow(dead_code)]

pub mod proxy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use publisher_amqp::mapping::event_from_delivery;
use publisher_amqp::{AmqpConfig, AmqpPublisher};
use publisher_core::testing::{Harness, Received, unique_name};
use publisher_core::{Publisher, Result, async_trait};
use tokio::sync::OnceCell;

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

/// A test's own lapin connection and channel, for declaring and reading queues.
pub struct Client {
    pub conn: Connection,
    pub channel: Channel,
}

impl Client {
    pub async fn connect() -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("cannot reach RabbitMQ (set PUBLISHER_TEST_AMQP_URL)");
        let channel = conn.create_channel().await.unwrap();
        Self { conn, channel }
    }

    pub async fn declare_queue(&self, name: &str, args: FieldTable) {
        self.channel
            .queue_declare(name.into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap();
    }

    pub async fn delete_queue(&self, name: &str) {
        let _ = self
            .channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }

    /// Takes everything currently in `queue` (acknowledging it) as events.
    pub async fn drain(&self, queue: &str) -> Vec<publisher_core::Event> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let d = &msg.delivery;
            out.push(event_from_delivery(d.routing_key.as_str(), &d.properties, &d.data).unwrap());
        }
        out
    }

    pub async fn message_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }
}

/// Publishes to the default exchange (routing key = queue name) and reads back with basic.get.
pub struct QueueHarness {
    client: OnceCell<Client>,
    received: Mutex<HashMap<String, Vec<Received>>>,
}

pub async fn harness() -> QueueHarness {
    QueueHarness {
        client: OnceCell::new(),
        received: Mutex::default(),
    }
}

impl QueueHarness {
    async fn client(&self) -> &Client {
        self.client.get_or_init(Client::connect).await
    }
}

#[async_trait]
impl Harness for QueueHarness {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(
            AmqpPublisher::builder()
                .config(AmqpConfig::from_url(&amqp_url())?)
                .build()
                .await?,
        ))
    }

    async fn topic(&self, hint: &str) -> Result<String> {
        let name = unique_name(&format!("publisher-test.{hint}"));
        self.client()
            .await
            .declare_queue(&name, FieldTable::default())
            .await;
        Ok(name)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let fresh = self.client().await.drain(topic).await;
            let got = {
                let mut received = self.received.lock().unwrap();
                let all = received.entry(topic.to_owned()).or_default();
                all.extend(fresh.iter().map(Received::from));
                all.clone()
            };
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cleanup(&self, topic: &str) {
        self.client().await.delete_queue(topic).await;
        self.received.lock().unwrap().remove(topic);
    }
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
