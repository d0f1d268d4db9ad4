//! Read-back probe for the conformance suite (feature `testing`): a queue per topic, declared
//! before publishing (the default exchange routes to it by name), consumed with `basic.get`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use publisher_core::testing::{BadEvent, Intent, Probe, Received, unique_name, url_addr};
use publisher_core::{Error, ErrorKind, Event, Result, async_trait};

use crate::BACKEND;
use crate::mapping::event_from_delivery;

/// RabbitMQ's default `max_message_size` (128 MiB since 3.8).
const RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

fn probe_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Other, BACKEND, "probe failed").with_source(e)
}

/// A lapin connection and channel for declaring, reading and deleting queues.
#[derive(Debug)]
pub struct QueueClient {
    /// The connection.
    pub conn: Connection,
    /// A channel on it.
    pub channel: Channel,
}

impl QueueClient {
    /// Connects to `url`.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(probe_error)?;
        let channel = conn.create_channel().await.map_err(probe_error)?;
        Ok(Self { conn, channel })
    }

    /// Declares a (non-exclusive, non-durable) queue with `args`.
    ///
    /// # Errors
    /// When the broker refuses.
    pub async fn declare_queue(&self, name: &str, args: FieldTable) -> Result<()> {
        self.channel
            .queue_declare(name.into(), QueueDeclareOptions::default(), args)
            .await
            .map(|_| ())
            .map_err(probe_error)
    }

    /// Declares a durable queue (its persistent messages survive a broker restart).
    ///
    /// # Errors
    /// When the broker refuses.
    pub async fn declare_durable_queue(&self, name: &str) -> Result<()> {
        self.declare_durable_queue_with(name, FieldTable::default())
            .await
    }

    /// Declares a durable queue with `args` (`x-queue-type: quorum` for a quorum queue).
    ///
    /// # Errors
    /// When the broker refuses.
    pub async fn declare_durable_queue_with(&self, name: &str, args: FieldTable) -> Result<()> {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map(|_| ())
            .map_err(probe_error)
    }

    /// Deletes a queue (ignoring errors: it may be gone).
    pub async fn delete_queue(&self, name: &str) {
        let _ = self
            .channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }

    /// Takes everything now in `queue` (acknowledged) as events.
    ///
    /// # Errors
    /// When the broker refuses or a message does not decode.
    pub async fn drain(&self, queue: &str) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .map_err(probe_error)?
        {
            let d = &msg.delivery;
            out.push(event_from_delivery(
                d.routing_key.as_str(),
                &d.properties,
                &d.data,
            )?);
        }
        Ok(out)
    }

    /// Messages ready in `queue`.
    ///
    /// # Errors
    /// When the queue does not exist.
    pub async fn message_count(&self, queue: &str) -> Result<u32> {
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
            .map(|q| q.message_count())
            .map_err(probe_error)
    }
}

/// The queues a [`QueueProbe`] declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueKind {
    Transient,
    Durable,
    Quorum,
}

/// Declares a queue per topic and reads it back; publishers must use the default exchange.
#[derive(Debug)]
pub struct QueueProbe {
    url: String,
    kind: QueueKind,
    client: tokio::sync::Mutex<Option<Arc<QueueClient>>>,
    received: Mutex<HashMap<String, Vec<Received>>>,
}

impl QueueProbe {
    /// A probe on the RabbitMQ at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            kind: QueueKind::Transient,
            client: tokio::sync::Mutex::new(None),
            received: Mutex::default(),
        }
    }

    /// A probe whose queues are durable (for brokers the test restarts).
    pub fn durable(url: impl Into<String>) -> Self {
        Self {
            kind: QueueKind::Durable,
            ..Self::new(url)
        }
    }

    /// A probe whose queues are quorum queues (replicated over a cluster's nodes).
    pub fn quorum(url: impl Into<String>) -> Self {
        Self {
            kind: QueueKind::Quorum,
            ..Self::new(url)
        }
    }

    /// The probe's own client (connected again if the broker dropped it, as a restart does).
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached.
    pub async fn client(&self) -> Result<Arc<QueueClient>> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref()
            && c.conn.status().connected()
            && c.channel.status().connected()
        {
            return Ok(c.clone());
        }
        let fresh = Arc::new(QueueClient::connect(&self.url).await?);
        *client = Some(fresh.clone());
        Ok(fresh)
    }
}

#[async_trait]
impl Probe for QueueProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        let name = unique_name(&format!("publisher-test.{hint}"));
        let client = self.client().await?;
        match self.kind {
            QueueKind::Transient => client.declare_queue(&name, FieldTable::default()).await?,
            QueueKind::Durable => client.declare_durable_queue(&name).await?,
            QueueKind::Quorum => {
                let mut args = FieldTable::default();
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
                client.declare_durable_queue_with(&name, args).await?;
            }
        }
        Ok(name)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let fresh = self.client().await?.drain(topic).await?;
            let got = {
                let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Unroutable: a routing key no queue is bound to (the publisher's `mandatory` default
    /// makes RabbitMQ return it: `Rejected`). Oversized: one byte over RabbitMQ's default
    /// `max_message_size` (128 MiB), to be refused before sending (`InvalidEvent`). Invalid: an
    /// empty topic.
    fn bad_event(&self, intent: Intent, _topic: &str, n: usize) -> Option<BadEvent> {
        match intent {
            Intent::Unroutable => Some(BadEvent {
                event: Event::text(
                    unique_name("publisher-test.unroutable"),
                    format!("unroutable {n} {}", publisher_core::Uuid::now_v7()),
                ),
                expect: ErrorKind::Rejected,
            }),
            Intent::Oversized => Some(BadEvent {
                event: Event::new(
                    unique_name("publisher-test.oversized"),
                    vec![b'x'; RABBITMQ_DEFAULT_MAX_MESSAGE_SIZE + 1],
                ),
                expect: ErrorKind::InvalidEvent,
            }),
            _ => publisher_core::testing::invalid_event(intent, n),
        }
    }

    fn broker_addr(&self) -> Option<std::net::SocketAddr> {
        url_addr(&self.url, 5672)
    }

    async fn cleanup(&self, topic: &str) {
        if let Ok(client) = self.client().await {
            client.delete_queue(topic).await;
        }
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }
}
