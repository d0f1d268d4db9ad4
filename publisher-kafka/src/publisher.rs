//! [`KafkaPublisher`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use publisher_core::backend::Checked;
use publisher_core::{
    Backend, BatchResults, Error, ErrorKind, Event, Gated, Health, Lifecycle, Position, Result,
    Teardown,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer, PurgeConfig};
use rdkafka::util::Timeout;

use crate::BACKEND;
use crate::config::KafkaConfig;
use crate::error::from_kafka;
use crate::mapping::{record, validate};
use crate::topics::KnownTopics;

/// A name no Kafka broker accepts (a space is not a legal topic character), asked for by
/// `health` before any topic is known: the answer lists the brokers, and no broker creates it.
const HEALTH_TOPIC: &str = "publisher health check";

/// Publishes to Kafka through one shared rdkafka `FutureProducer`.
///
/// `publish` returns Ok only when the delivery report says the broker acknowledged the record
/// (with `acks=all`, the default, every in-sync replica): the receipt carries partition and
/// offset. With idempotence (the default) producer retries neither duplicate nor reorder
/// records, so events with the same key arrive in publish order.
pub type KafkaPublisher = Gated<KafkaBackend>;

/// The Kafka [`Backend`]: the producer, the topics the broker confirmed and the config.
pub struct KafkaBackend {
    config: KafkaConfig,
    /// Taken at close, so that librdkafka's threads and connections end with the close, not
    /// with the last reference to the publisher.
    producer: Mutex<Option<FutureProducer>>,
    /// Topics the broker confirmed exist.
    topics: KnownTopics,
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaBackend {
    /// Dropping librdkafka's producer joins its threads and destroys its handle (100 to 600 ms
    /// of blocking): done on the blocking pool, never on an async worker.
    fn drop(&mut self) {
        let producer = self
            .producer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(producer) = producer {
            drop_off_runtime(producer);
        }
    }
}

/// Drops a producer on the blocking pool when inside a runtime (rdkafka's drop joins its
/// threads), here otherwise.
fn drop_off_runtime(producer: FutureProducer) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(move || drop(producer));
    }
}

/// Builds a [`KafkaPublisher`]. Setters never fail; [`KafkaPublisherBuilder::build`] validates
/// everything at once.
#[derive(Debug, Default)]
pub struct KafkaPublisherBuilder {
    config: KafkaConfig,
}

impl KafkaPublisherBuilder {
    /// Starts from `config`.
    pub fn config(mut self, config: KafkaConfig) -> Self {
        self.config = config;
        self
    }

    /// The bootstrap brokers, `host:port[,host:port…]`.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.config.brokers = brokers.into();
        self
    }

    /// Sets a librdkafka property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.properties.insert(name.into(), value.into());
        self
    }

    /// The timeouts.
    pub fn timeouts(mut self, timeouts: publisher_core::Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Validates and creates the producer (no network round trip yet: call
    /// [`Publisher::health`](publisher_core::Publisher::health) to check the brokers are reachable).
    ///
    /// # Errors
    /// `Config` naming the field at fault, including librdkafka's refusal of an unknown or
    /// invalid property.
    pub fn build(self) -> Result<KafkaPublisher> {
        let config = self.config;
        config.validate()?;
        let producer: FutureProducer = config
            .client_config()
            .create()
            .map_err(|e| from_kafka(e, config.max_message_bytes))?;
        let lifecycle = Lifecycle::new(BACKEND, config.timeouts.close);
        let backend = KafkaBackend {
            config,
            producer: Mutex::new(Some(producer)),
            topics: KnownTopics::default(),
        };
        Ok(Gated::from_parts(backend, lifecycle))
    }
}

impl KafkaBackend {
    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }
}

/// A publish (or batch) whose slow start (a topic lookup, a full queue) left its delivery
/// reports too little of the publish timeout.
fn late(timeout: Duration) -> Error {
    Error::outcome_unknown(
        BACKEND,
        format!(
            "no delivery report within the publish timeout ({timeout:?}); the record may or \
             may not have been written"
        ),
    )
}

/// A delivery report's error: the record was handed to librdkafka, which may have sent it
/// (and retried it) before giving up, so a transport or availability failure does not mean the
/// broker lacks it.
fn delivery_error(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Connect | ErrorKind::Unavailable | ErrorKind::Timeout => Error::outcome_unknown(
            BACKEND,
            format!("{} (the record may have been written)", e.message()),
        )
        .with_source(e),
        _ => e,
    }
}

impl KafkaBackend {
    /// The delivery report's outcome. A failure may mean the producer itself is broken for
    /// good: a fatal librdkafka error, an idempotent producer the broker fences or whose
    /// sequence it lost, or an unknown broker error (after records timed out, librdkafka must bump its epoch; a broker that
    /// refuses the bump fences every later record). The producer is then replaced, and the
    /// record's outcome is unknown.
    fn delivered(
        &self,
        producer: &FutureProducer,
        r: rdkafka::producer::future_producer::OwnedDeliveryResult,
    ) -> Result<Position> {
        match r {
            Ok(d) => Ok(Position::Partition {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => {
                let code = e.rdkafka_error_code();
                let e = from_kafka(e, self.max());
                match self.replace_if_broken(producer, code) {
                    Some(broken) => Err(Error::outcome_unknown(
                        BACKEND,
                        format!(
                            "the producer is unusable ({broken}) and was replaced; the record \
                             may or may not have been written"
                        ),
                    )
                    .with_source(e)),
                    None => Err(delivery_error(e)),
                }
            }
        }
    }

    /// Replaces `failed` (if it is still the current producer) when it is broken for good;
    /// returns why. Concurrent failures of one producer replace it once.
    fn replace_if_broken(
        &self,
        failed: &FutureProducer,
        code: Option<RDKafkaErrorCode>,
    ) -> Option<String> {
        let broken = match failed.client().fatal_error() {
            Some((code, reason)) => format!("fatal {code:?}: {reason}"),
            None => match code? {
                c @ (RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
                // A broker's unexpected error (tansu answers this way, forever, to an
                // idempotent producer whose epoch librdkafka bumped after timeouts): whether the
                // record was written is unknown, and a fresh producer is the way out.
                | RDKafkaErrorCode::Unknown) => format!("{c:?}"),
                _ => return None,
            },
        };
        let mut slot = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = slot.as_ref() else {
            // Taken by close: nothing to replace, but the record's outcome is still unknown.
            return Some(broken);
        };
        if current.client().native_ptr() != failed.client().native_ptr() {
            // Already replaced by another failed publish.
            return Some(broken);
        }
        tracing::error!(backend = BACKEND, error = %broken, "Kafka producer unusable: replacing it");
        match self.config.client_config().create::<FutureProducer>() {
            Ok(new) => {
                // Its queued records fail with their own reports; dropping it blocks.
                if let Some(old) = slot.replace(new) {
                    drop_off_runtime(old);
                }
            }
            Err(e) => {
                tracing::error!(backend = BACKEND, error = %e, "cannot create a new Kafka producer");
            }
        }
        Some(broken)
    }

    fn producer(&self) -> Result<FutureProducer> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::closed(BACKEND))
    }

    fn max(&self) -> usize {
        self.config.max_message_bytes
    }

    /// Looks `topic` up (see [`KnownTopics::check`]) until `deadline` at the latest, however
    /// many publishes queue for the same topic's lookup: nothing is sent when it times out.
    async fn look_up(
        &self,
        producer: &FutureProducer,
        topic: &str,
        deadline: Instant,
    ) -> Result<()> {
        let until = tokio::time::Instant::from_std(deadline);
        let check = self.topics.check(producer, topic, self.topic_wait());
        tokio::time::timeout_at(until, check)
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    BACKEND,
                    &format!("looking up topic `{topic}` (nothing was sent)"),
                    self.publish_timeout(),
                ))
            })
    }

    /// How long to wait for a topic's metadata before sending anyway.
    fn topic_wait(&self) -> Duration {
        self.config
            .request_timeout
            .min(self.config.timeouts.publish / 2)
    }

    /// Enqueues one (validated) record, waiting (bounded by `deadline`) while the local queue
    /// is full.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
        event: &Event,
        deadline: Instant,
    ) -> Result<DeliveryFuture> {
        let mut record = record(event);
        loop {
            match producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(from_kafka(e, self.max())),
            }
        }
    }

    /// Flushes until `limit`, purges what is left (counting it), and drops the producer, which
    /// ends librdkafka's threads and broker connections.
    async fn teardown(&self, limit: Duration, already_counted: usize) -> Result<usize> {
        let Some(producer) = self
            .producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(0);
        };
        let left = tokio::task::spawn_blocking(move || {
            let flushed = producer.flush(Timeout::After(limit));
            // Once a flush succeeded, every record has its delivery report; the producer's
            // queue count also counts protocol requests (a metadata refresh, a reconnect to an
            // unreachable broker), which are not records the close failed to deliver.
            let left = match flushed {
                Ok(()) => 0,
                Err(_) => producer.in_flight_count().max(0) as usize,
            };
            if left > 0 {
                tracing::warn!(
                    backend = BACKEND,
                    left,
                    "flush did not finish by the close deadline; purging the rest"
                );
                producer.purge(PurgeConfig::default().queue().inflight());
                let _ = producer.flush(Timeout::After(Duration::from_millis(100)));
            }
            drop(producer);
            left
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, BACKEND, "close task failed").with_source(e))?;
        Ok(left.saturating_sub(already_counted))
    }
}

impl Backend for KafkaBackend {
    type Config = KafkaConfig;
    type Builder = KafkaPublisherBuilder;

    const NAME: &'static str = BACKEND;

    fn publish_timeout(&self) -> Duration {
        self.config.timeouts.publish
    }

    /// librdkafka reports every record within `message_timeout`, which the config keeps at
    /// least a second (librdkafka's scan interval) below the publish timeout; a full local
    /// queue is waited for until the publish timeout, and a topic lookup too. So the gate adds
    /// no timer of its own to every publish.
    fn bounds_itself(&self) -> bool {
        true
    }

    fn check(&self, event: &Event) -> Result<()> {
        validate(event, self.max())
    }

    async fn publish(&self, event: Checked<'_>) -> Result<Position> {
        let event = event.event();
        let producer = self.producer()?;
        // The slow paths (a topic's first lookup, a full local queue) are boxed: every publish
        // future is as large as its largest state, and thousands may be in flight. A publish
        // that took one is bounded by the publish timeout from its start as a whole; one that
        // did not is handed to librdkafka at once, which reports within `message_timeout`.
        let mut slow: Option<Instant> = None;
        let mut deadline = || *slow.get_or_insert_with(|| Instant::now() + self.publish_timeout());
        if !self.topics.is_known(event.topic()) {
            Box::pin(self.look_up(&producer, event.topic(), deadline())).await?;
        }
        let delivery = match producer.send_result(record(event)) {
            Ok(delivery) => delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Box::pin(self.enqueue(&producer, event, deadline())).await?
            }
            Err((e, _)) => return Err(from_kafka(e, self.max())),
        };
        let report = match slow {
            None => delivery.await,
            Some(deadline) => {
                let until = tokio::time::Instant::from_std(deadline);
                match Box::pin(tokio::time::timeout_at(until, delivery)).await {
                    Ok(report) => report,
                    Err(_) => return Err(late(self.publish_timeout())),
                }
            }
        };
        match report {
            Ok(r) => self.delivered(&producer, r),
            Err(_canceled) => Err(from_kafka(KafkaError::Canceled, self.max())),
        }
    }

    async fn publish_batch(&self, events: &[Event], results: &BatchResults) -> Result<()> {
        let producer = self.producer()?;
        let deadline = Instant::now() + self.config.timeouts.publish;
        let mut pending = Vec::with_capacity(events.len());
        // Each distinct topic looked up once, all at the same time: one slow topic does not
        // hold the others' events back.
        let mut topics: Vec<&str> = results
            .pending(events)
            .map(|(_, e)| e.event().topic())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let looked_up =
            futures::future::join_all(topics.iter().map(|t| self.look_up(&producer, t, deadline)))
                .await;
        let topic_ok: std::collections::HashMap<&str, Result<()>> =
            topics.into_iter().zip(looked_up).collect();
        for (i, event) in results.pending(events) {
            if let Some(Err(e)) = topic_ok.get(event.topic()).cloned() {
                results.set(i, Err(e));
                continue;
            }
            match self.enqueue(&producer, &event, deadline).await {
                Ok(future) => pending.push((i, future)),
                Err(e) => results.set(i, Err(e)),
            }
        }
        let producer = &producer;
        let reports = pending.into_iter().map(|(i, future)| async move {
            let r = match future.await {
                Ok(r) => self.delivered(producer, r),
                Err(_canceled) => Err(from_kafka(KafkaError::Canceled, self.max())),
            };
            results.set(i, r);
        });
        // The batch as a whole ends by the publish timeout from its start (its lookups and
        // a full queue may have taken part of it).
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, futures::future::join_all(reports)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(late(self.publish_timeout())),
        }
    }

    async fn health(&self) -> Health {
        let producer = match self.producer() {
            Ok(p) => p,
            Err(_) => return Health::closed(BACKEND),
        };
        let timeout = self.config.timeouts.health;
        let started = Instant::now();
        // Metadata of one topic (one we publish to, or a name no broker creates), never of
        // every topic of the cluster: the answer lists the brokers either way.
        let topic = self
            .topics
            .any_known()
            .unwrap_or_else(|| HEALTH_TOPIC.to_owned());
        let fetch = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .map(|m| m.brokers().len())
        });
        match tokio::time::timeout(timeout + Duration::from_millis(200), fetch).await {
            Ok(Ok(Ok(brokers))) => Health::healthy(
                BACKEND,
                Some(started.elapsed()),
                format!("{brokers} broker(s)"),
            ),
            Ok(Ok(Err(e))) => Health::unhealthy(BACKEND, format!("metadata request failed: {e}")),
            Ok(Err(e)) => Health::unhealthy(BACKEND, format!("health task failed: {e}")),
            Err(_) => Health::unhealthy(
                BACKEND,
                format!("no metadata within the health timeout ({timeout:?})"),
            ),
        }
    }

    async fn teardown(self: Arc<Self>, td: Teardown) -> Result<usize> {
        let limit = td.remaining().max(Duration::from_millis(100));
        KafkaBackend::teardown(&self, limit, td.abandoned_in_flight).await
    }

    fn config_from_url(url: &str) -> Result<KafkaConfig> {
        KafkaConfig::from_url(url)
    }

    async fn connect(config: KafkaConfig) -> Result<KafkaPublisher> {
        KafkaPublisherBuilder::default().config(config).build()
    }
}
