//! [`NatsPublisher`].

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::{Context, ContextBuilder};
use publisher_core::backend::Checked;
use publisher_core::{
    Backend, BatchResults, Error, Event, Gated, Health, Lifecycle, Position, Result, Teardown,
};

use crate::BACKEND;
use crate::config::NatsConfig;
use crate::error::{from_connect, no_ack, not_sent};
use crate::mapping::{headers, validate};

/// Publishes to NATS JetStream through one async-nats client (one connection, which async-nats
/// reconnects by itself).
///
/// `publish` returns Ok only once JetStream's PubAck arrived: the receipt carries the stream,
/// the sequence and whether JetStream took the event as a duplicate of one it already held
/// (same event id within the stream's duplicate window: stored once). Publishes from one
/// publisher are sent in order on one connection, so a stream stores them in publish order.
pub type NatsPublisher = Gated<NatsBackend>;

/// The NATS JetStream [`Backend`]: the client, its JetStream context and the config.
pub struct NatsBackend {
    config: NatsConfig,
    /// The server, password or token hidden, for messages.
    endpoint: String,
    client: async_nats::Client,
    jetstream: Context,
    /// The server's `max_payload`, from its INFO at connect (1 MiB when it gave none).
    max_payload: usize,
    /// A client the caller lent is never drained or closed by us.
    lent: bool,
}

/// Builds a [`NatsPublisher`]. Setters never fail; [`NatsPublisherBuilder::build`] validates
/// everything at once and connects.
#[derive(Debug, Default)]
pub struct NatsPublisherBuilder {
    config: NatsConfig,
    client: Option<async_nats::Client>,
}

impl NatsPublisherBuilder {
    /// Starts from `config`.
    pub fn config(mut self, config: NatsConfig) -> Self {
        self.config = config;
        self
    }

    /// The server URL (see [`NatsConfig::url`]).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into().into();
        self
    }

    /// The timeouts.
    pub fn timeouts(mut self, timeouts: publisher_core::Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Publishes through a client the caller owns: it is never drained or closed by us.
    pub fn client(mut self, client: async_nats::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Validates and connects (bounded by the connect timeout).
    ///
    /// # Errors
    /// `Config` naming the field at fault; `Connect`, `Timeout` or `Rejected` (credentials
    /// refused) when the server cannot be used.
    pub async fn build(self) -> Result<NatsPublisher> {
        let config = self.config;
        config.validate()?;
        let endpoint = config.url.to_string();
        let (client, lent) = match self.client {
            Some(client) => (client, true),
            None => {
                let (options, address) = config.connect_options().await?;
                let connect = options.connect(address.as_str());
                let client = tokio::time::timeout(config.timeouts.connect, connect)
                    .await
                    .map_err(|_| {
                        Error::timeout(
                            BACKEND,
                            &format!("connecting to NATS at {endpoint}"),
                            config.timeouts.connect,
                        )
                    })?
                    .map_err(|e| from_connect(e, &endpoint))?;
                (client, false)
            }
        };
        let jetstream = ContextBuilder::new()
            .timeout(config.timeouts.publish)
            .ack_timeout(config.timeouts.publish)
            .max_ack_inflight(config.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let max_payload = match client.server_info().max_payload {
            0 => 1024 * 1024,
            n => n,
        };
        // The gate exists once connected: a publisher that could not be built was never open.
        let lifecycle = Lifecycle::new(BACKEND, config.timeouts.close);
        let backend = NatsBackend {
            config,
            endpoint,
            client,
            jetstream,
            max_payload,
            lent,
        };
        Ok(Gated::from_parts(backend, lifecycle))
    }
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NatsBackend {
    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Hands the message to the client (it is then sent, now or on reconnection) and returns
    /// the wait for its PubAck.
    async fn send(
        &self,
        event: &Event,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture> {
        self.jetstream
            .publish_with_headers(
                event.topic().to_owned(),
                headers(event),
                event.payload().clone(),
            )
            .await
            .map_err(not_sent)
    }

    /// Sends a batch's messages in order and awaits their PubAcks (see `publish_batch`).
    async fn send_batch(&self, events: &[Event], results: &BatchResults) {
        // Sent in order, one after the other, then the PubAcks awaited together; at most
        // `max_ack_inflight` at a time, since each holds one of the client's permits until its
        // PubAck is read (sending more before awaiting would wait for a permit forever).
        let room = self.config.max_ack_inflight.max(1);
        let mut pending = Vec::with_capacity(events.len().min(room));
        for (i, event) in results.pending(events) {
            // No permit free (another batch, or concurrent publishes, hold the rest) while this
            // batch holds some for PubAcks it has not read: read those first, so that two
            // batches never wait for each other's permits until the timeout. The send given up
            // was waiting for a permit or for room in the command queue: nothing was sent.
            let first = {
                let mut send = std::pin::pin!(self.send(&event));
                match poll_once(send.as_mut()).await {
                    Poll::Ready(sent) => Some(sent),
                    Poll::Pending if pending.is_empty() => Some(send.await),
                    Poll::Pending => None,
                }
            };
            let sent = match first {
                Some(sent) => sent,
                None => {
                    self.await_acks(events, results, std::mem::take(&mut pending))
                        .await;
                    self.send(&event).await
                }
            };
            match sent {
                Ok(ack) => pending.push((i, ack)),
                Err(e) => results.set(i, Err(e)),
            }
            if pending.len() == room {
                self.await_acks(events, results, std::mem::take(&mut pending))
                    .await;
            }
        }
        self.await_acks(events, results, pending).await;
    }

    /// Awaits the PubAcks of `pending` together, recording each event's result.
    async fn await_acks(
        &self,
        events: &[Event],
        results: &BatchResults,
        pending: Vec<(usize, async_nats::jetstream::context::PublishAckFuture)>,
    ) {
        let acks = pending.into_iter().map(|(i, ack)| async move {
            results.set(i, self.acked(ack, events[i].topic()).await);
        });
        futures::future::join_all(acks).await;
    }

    async fn acked(
        &self,
        ack: async_nats::jetstream::context::PublishAckFuture,
        subject: &str,
    ) -> Result<Position> {
        let ack = ack.await.map_err(|e| no_ack(e, subject))?;
        Ok(Position::Stream {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Polls `fut` once, with this task's waker: its output if it is ready at once, `Pending`
/// otherwise (it can then be polled again, or dropped).
async fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

impl Backend for NatsBackend {
    type Config = NatsConfig;
    type Builder = NatsPublisherBuilder;

    const NAME: &'static str = BACKEND;

    fn publish_timeout(&self) -> Duration {
        self.config.timeouts.publish
    }

    fn check(&self, event: &Event) -> Result<()> {
        validate(event, self.max_payload)
    }

    /// async-nats bounds the send into its command queue and the PubAck wait, each by the
    /// publish timeout (the context's `timeout`). A send that does not finish at once (no ack
    /// permit free, the command queue full) is the slow path: the publish as a whole is then
    /// bounded by the publish timeout from its start. The client's drain at close ends every
    /// PubAck still awaited.
    fn bounds_itself(&self) -> bool {
        true
    }

    async fn publish(&self, event: Checked<'_>) -> Result<Position> {
        let event = event.event();
        let started = tokio::time::Instant::now();
        let mut send = std::pin::pin!(self.send(event));
        let ack = match poll_once(send.as_mut()).await {
            Poll::Ready(ack) => ack?,
            Poll::Pending => {
                // Boxed: rare, and its timer would make every publish's future larger.
                let until = started + self.publish_timeout();
                let rest = async { self.acked(send.await?, event.topic()).await };
                return match Box::pin(tokio::time::timeout_at(until, rest)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::outcome_unknown(
                        BACKEND,
                        format!(
                            "no PubAck within the publish timeout ({:?}); the message may or \
                             may not be stored",
                            self.publish_timeout()
                        ),
                    )),
                };
            }
        };
        self.acked(ack, event.topic()).await
    }

    async fn publish_batch(&self, events: &[Event], results: &BatchResults) -> Result<()> {
        // Bounded as a whole (each send and each PubAck wait is bounded by async-nats, but
        // not their sum): what has no result by then is unknown.
        let until = tokio::time::Instant::now() + self.publish_timeout();
        match tokio::time::timeout_at(until, self.send_batch(events, results)).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::outcome_unknown(
                BACKEND,
                format!(
                    "the batch did not finish within the publish timeout ({:?}); its \
                     unconfirmed messages may or may not be stored",
                    self.publish_timeout()
                ),
            )),
        }
    }
    async fn health(&self) -> Health {
        if self.client.connection_state() != State::Connected {
            return Health::unhealthy(
                BACKEND,
                format!("not connected to NATS at {}", self.endpoint),
            );
        }
        let timeout = self.config.timeouts.health;
        let started = Instant::now();
        // JetStream's account info request: answered only where JetStream is enabled for us.
        let ask = self.client.request("$JS.API.INFO", bytes::Bytes::new());
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(reply)) => {
                let text = String::from_utf8_lossy(&reply.payload);
                if text.contains("\"error\"") {
                    Health::unhealthy(
                        BACKEND,
                        format!("JetStream at {} refused: {text}", self.endpoint),
                    )
                } else {
                    Health::healthy(BACKEND, Some(started.elapsed()), "JetStream answered")
                }
            }
            Ok(Err(e)) => Health::unhealthy(
                BACKEND,
                format!("JetStream at {} did not answer: {e}", self.endpoint),
            ),
            Err(_) => Health::unhealthy(
                BACKEND,
                format!(
                    "no JetStream answer from {} within the health timeout ({timeout:?})",
                    self.endpoint
                ),
            ),
        }
    }

    async fn teardown(self: Arc<Self>, td: Teardown) -> Result<usize> {
        if self.lent {
            return Ok(0);
        }
        let limit = td.remaining().max(Duration::from_millis(100));
        // Drain: what the client holds is written, then the connection closes.
        match tokio::time::timeout(limit, self.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(backend = BACKEND, error = %e, "draining the NATS client")
            }
            Err(_) => tracing::warn!(backend = BACKEND, "draining the NATS client timed out"),
        }
        Ok(0)
    }

    fn config_from_url(url: &str) -> Result<NatsConfig> {
        NatsConfig::from_url(url)
    }

    async fn connect(config: NatsConfig) -> Result<NatsPublisher> {
        NatsPublisherBuilder::default().config(config).build().await
    }
}
