//! The raw clients, each used the best idiomatic way under the same delivery guarantee as
//! ours: redis-rs multiplexed connection (XADD), rdkafka `FutureProducer` awaiting delivery
//! reports, lapin confirm-mode channel awaiting confirms, `BufWriter` + serde_json for the
//! console.
//!
//! Each raw publish carries what a hand-rolled event publisher would: a UUIDv7 event id and a
//! timestamp beside the payload, under the names our mapping uses (Kafka's id header, AMQP's
//! millisecond timestamp header), so the comparison measures the abstraction, not extra bytes.

use std::io::Write;
use std::sync::Mutex;

use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use publisher::Bytes;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::workload::Sink;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn id() -> String {
    publisher::Uuid::now_v7().hyphenated().to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// redis-rs: multiplexed connections (one unless `--raw-redis-connections` says more, to
/// measure whether spreading publishes over several helps), `XADD topic * payload <bytes>`;
/// batches pipelined.
pub struct RawRedis {
    connections: Vec<redis::aio::MultiplexedConnection>,
    next: std::sync::atomic::AtomicUsize,
}

impl RawRedis {
    /// Opens `connections` multiplexed connections (at least one).
    pub async fn connect(url: &str, connections: usize) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(err)?;
        let mut all = Vec::new();
        for _ in 0..connections.max(1) {
            all.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(err)?,
            );
        }
        Ok(Self {
            connections: all,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The next connection, round robin.
    fn connection(&self) -> redis::aio::MultiplexedConnection {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connections[i % self.connections.len()].clone()
    }
}

impl Sink for RawRedis {
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.connection();
            redis::cmd("XADD")
                .arg(topic)
                .arg("*")
                .arg("id")
                .arg(id())
                .arg("timestamp")
                .arg(now_ms())
                .arg("payload")
                .arg(payload.as_ref())
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.connection();
            let mut pipe = redis::pipe();
            for _ in 0..n {
                pipe.cmd("XADD")
                    .arg(topic)
                    .arg("*")
                    .arg("id")
                    .arg(id())
                    .arg("timestamp")
                    .arg(now_ms())
                    .arg("payload")
                    .arg(payload.as_ref());
            }
            pipe.query_async::<Vec<String>>(&mut conn)
                .await
                .map(|_| ())
                .map_err(err)
        })
    }
}

/// rdkafka: one `FutureProducer` with our defaults (acks=all, idempotence, linger 5 ms).
pub struct RawKafka(pub FutureProducer);

impl RawKafka {
    /// Creates the producer.
    pub fn new(brokers: &str) -> Result<Self, String> {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "8000")
            .create()
            .map(Self)
            .map_err(err)
    }
}

impl Sink for RawKafka {
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let id = id();
            let record = FutureRecord::<(), [u8]>::to(topic)
                .payload(payload.as_ref())
                .headers(OwnedHeaders::new().insert(Header {
                    key: publisher_kafka::mapping::HEADER_ID,
                    value: Some(id.as_bytes()),
                }))
                .timestamp(now_ms());
            self.0
                .send(record, Timeout::After(std::time::Duration::from_secs(10)))
                .await
                .map(|_| ())
                .map_err(|(e, _)| err(e))
        })
    }

    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut pending = Vec::with_capacity(n);
            let ids: Vec<String> = (0..n).map(|_| id()).collect();
            for id in &ids {
                let mut record = FutureRecord::<(), [u8]>::to(topic)
                    .payload(payload.as_ref())
                    .headers(OwnedHeaders::new().insert(Header {
                        key: publisher_kafka::mapping::HEADER_ID,
                        value: Some(id.as_bytes()),
                    }))
                    .timestamp(now_ms());
                loop {
                    match self.0.send_result(record) {
                        Ok(f) => {
                            pending.push(f);
                            break;
                        }
                        Err((_, back)) => {
                            record = back;
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                }
            }
            for r in futures::future::join_all(pending).await {
                r.map_err(err)?.map_err(|(e, _)| err(e))?;
            }
            Ok(())
        })
    }
}

/// lapin: one confirm-mode channel, persistent mandatory publishes to the default exchange.
pub struct RawAmqp {
    _conn: Connection,
    channel: Channel,
}

impl RawAmqp {
    /// Connects and opens a confirm-mode channel.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(err)?;
        let channel = conn.create_channel().await.map_err(err)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        Ok(Self {
            _conn: conn,
            channel,
        })
    }

    async fn send(&self, topic: &str, payload: &[u8]) -> Result<lapin::PublisherConfirm, String> {
        self.channel
            .basic_publish(
                "".into(),
                topic.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                BasicProperties::default()
                    .with_headers(timestamp_ms_header())
                    .with_delivery_mode(2)
                    .with_message_id(id().into())
                    .with_timestamp((now_ms() / 1000) as u64),
            )
            .await
            .map_err(err)
    }
}

/// AMQP's `timestamp` property holds whole seconds; an event publisher that keeps milliseconds
/// (ours does) carries them in a header, which RabbitMQ parses for every message. The raw
/// publish carries the same header, so both sides cost the broker the same.
fn timestamp_ms_header() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        publisher_amqp::mapping::HEADER_TIMESTAMP_MS.into(),
        AMQPValue::LongLongInt(now_ms()),
    );
    headers
}

fn confirmed(c: Confirmation) -> Result<(), String> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("not confirmed: {other:?}")),
    }
}

impl Sink for RawAmqp {
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let confirm = self.send(topic, &payload).await?;
            confirmed(confirm.await.map_err(err)?)
        })
    }

    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut pending = Vec::with_capacity(n);
            for _ in 0..n {
                pending.push(self.send(topic, &payload).await?);
            }
            for c in futures::future::join_all(pending).await {
                confirmed(c.map_err(err)?)?;
            }
            Ok(())
        })
    }
}

#[derive(serde::Serialize)]
struct Line<'a> {
    id: publisher::Uuid,
    topic: &'a str,
    timestamp: String,
    payload: &'a str,
}

/// `BufWriter<File>` + serde_json: one JSON line per event; a batch is flushed once.
pub struct RawConsole(pub Mutex<std::io::BufWriter<std::fs::File>>);

impl RawConsole {
    /// Opens `path` for appending.
    pub fn open(path: &str) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(Self(Mutex::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            file,
        ))))
    }

    fn write(&self, topic: &str, payload: &[u8], n: usize, flush: bool) -> Result<(), String> {
        let text = std::str::from_utf8(payload).map_err(err)?;
        let mut w = self.0.lock().map_err(err)?;
        for _ in 0..n {
            let line = Line {
                id: publisher::Uuid::now_v7(),
                topic,
                timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
                payload: text,
            };
            serde_json::to_writer(&mut *w, &line).map_err(err)?;
            w.write_all(b"\n").map_err(err)?;
        }
        if flush {
            w.flush().map_err(err)?;
        }
        Ok(())
    }
}

impl Sink for RawConsole {
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.write(topic, &payload, 1, false) })
    }

    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.write(topic, &payload, n, true) })
    }
}

/// async-nats: one client and JetStream context (acks awaited; `Nats-Msg-Id` carries the id);
/// batches sent in order, then every PubAck awaited at once.
pub struct RawNats(pub async_nats::jetstream::Context);

impl RawNats {
    /// Connects.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let client = async_nats::connect(url.trim_start_matches("nats://"))
            .await
            .map_err(err)?;
        // The same room for PubAcks in flight as ours (publisher-nats's max_ack_inflight
        // default): async-nats's own default of 5,000 makes a batch of 10,000 that sends
        // everything before awaiting wait forever for a permit.
        Ok(Self(
            async_nats::jetstream::ContextBuilder::new()
                .max_ack_inflight(10_000)
                .backpressure_on_inflight(true)
                .build(client),
        ))
    }

    fn headers() -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(publisher_nats::mapping::HEADER_ID, id().as_str());
        h.insert(
            publisher_nats::mapping::HEADER_TIMESTAMP,
            now_ms().to_string().as_str(),
        );
        h
    }
}

impl Sink for RawNats {
    fn one<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .publish_with_headers(topic.to_owned(), Self::headers(), payload)
                .await
                .map_err(err)?
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn batch<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        n: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(n);
            for _ in 0..n {
                acks.push(
                    self.0
                        .publish_with_headers(topic.to_owned(), Self::headers(), payload.clone())
                        .await
                        .map_err(err)?,
                );
            }
            for r in futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await {
                r.map_err(err)?;
            }
            Ok(())
        })
    }
}
