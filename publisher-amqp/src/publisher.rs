//! [`AmqpPublisher`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::Runtime;
use lapin::Connection;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use publisher_core::backend::Checked;
use publisher_core::{
    Backend, BatchResults, Error, ErrorKind, Event, Gated, Health, Lifecycle, Position, Result,
    SharedHandle, Teardown,
};

use crate::BACKEND;
use crate::channels::{ChannelManager, ChannelPool, ConfirmChannel, Link};
use crate::config::AmqpConfig;
use crate::confirms::Outcome;
use crate::error::{confirm_lost, from_lapin, from_pool};
use crate::mapping::{properties, validate};

/// Publishes to a RabbitMQ exchange over a pool of confirm-mode channels.
///
/// `publish` returns Ok only after RabbitMQ confirmed the message (basic.ack) and did not return
/// it as unroutable. A return is [`ErrorKind::Rejected`] and a nack [`ErrorKind::Unavailable`]
/// (retryable: RabbitMQ did not store it, say a full queue that rejects publishes), for the
/// message it is about
/// only (returns are matched to publishes by the event id, whatever the ack pattern); a confirm
/// that does not come within the publish timeout, or is lost with its channel, is
/// [`ErrorKind::OutcomeUnknown`]. Payloads over `max_message_bytes` are refused before sending.
pub type AmqpPublisher = Gated<AmqpBackend>;

/// The RabbitMQ [`Backend`]: the connection, its confirm channels and the config.
#[derive(Debug)]
pub struct AmqpBackend {
    config: AmqpConfig,
    exchange: ShortString,
    link: Arc<Link>,
    pool: ChannelPool,
    /// The channel the pool handed out last, shared by publishes while it is open, replaced
    /// by one publish at a time when it closed.
    current: SharedHandle<Arc<ConfirmChannel>>,
}

/// Builds an [`AmqpPublisher`]. Setters never fail; [`AmqpPublisherBuilder::build`] validates
/// everything at once, connects and declares the exchange if asked to.
#[derive(Default)]
pub struct AmqpPublisherBuilder {
    config: AmqpConfig,
    connection: Option<Arc<Connection>>,
}

impl std::fmt::Debug for AmqpPublisherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisherBuilder")
            .field("config", &self.config)
            .field("lent_connection", &self.connection.is_some())
            .finish()
    }
}

impl AmqpPublisherBuilder {
    /// Starts from `config`.
    pub fn config(mut self, config: AmqpConfig) -> Self {
        self.config = config;
        self
    }

    /// The exchange to publish to.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.config.exchange = exchange.into();
        self
    }

    /// Publishes on a connection the caller owns. It is never closed by us, and if it drops,
    /// reconnecting it is the caller's job (publishes fail with `Connect` meanwhile).
    pub fn lend_connection(mut self, connection: Arc<Connection>) -> Self {
        self.connection = Some(connection);
        self
    }

    /// Validates, connects (bounded by the connect timeout) and declares the exchange when
    /// configured.
    ///
    /// # Errors
    /// `Config` naming the field at fault; `Connect` or `Timeout` when RabbitMQ cannot be
    /// reached; `Rejected` when the exchange declaration is refused.
    pub async fn build(self) -> Result<AmqpPublisher> {
        let config = self.config;
        config.validate()?;
        let exchange = ShortString::try_new(config.exchange.clone())
            .map_err(|_| Error::config(BACKEND, "exchange", "at most 255 bytes"))?;
        let link = Arc::new(match self.connection {
            Some(conn) => Link::Lent(conn),
            None => Link::owned(
                config.uris()?,
                config.connection_name.clone(),
                config.timeouts.connect,
            ),
        });
        // Connect (and declare) before the gate exists: a publisher that could not be built
        // was never open, so there is nothing to close and nothing to warn about.
        let conn = link.connection().await?;
        if let Some(declare) = config.declare_exchange {
            let setup = async {
                let channel = conn.create_channel().await.map_err(from_lapin)?;
                channel
                    .exchange_declare(
                        exchange.clone(),
                        declare.kind.to_lapin(),
                        ExchangeDeclareOptions {
                            durable: declare.durable,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(from_lapin)?;
                let _ = channel.close(200, "declared".into()).await;
                Ok::<_, Error>(())
            };
            tokio::time::timeout(config.timeouts.connect, setup)
                .await
                .map_err(|_| {
                    Error::timeout(BACKEND, "declaring the exchange", config.timeouts.connect)
                })??;
        }
        let lifecycle = Lifecycle::new(BACKEND, config.timeouts.close);
        let pool = ChannelPool::builder(ChannelManager {
            link: link.clone(),
            shutdown: lifecycle.shutdown_token(),
            mandatory: config.mandatory,
        })
        .max_size(config.pool.max_size)
        .wait_timeout(Some(config.pool.wait_timeout))
        .create_timeout(Some(
            config.pool.create_timeout.max(config.timeouts.connect),
        ))
        .recycle_timeout(Some(config.pool.recycle_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::config(BACKEND, "pool", format!("cannot build the pool: {e}")))?;

        let backend = AmqpBackend {
            config,
            exchange,
            link,
            pool,
            current: SharedHandle::new(),
        };
        Ok(Gated::from_parts(backend, lifecycle))
    }
}

impl AmqpBackend {
    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }
}

/// `basic_publish` failed: lapin had not written the message when its channel or connection
/// failed (it resolves a publish once its frames are written), so RabbitMQ does not hold it,
/// whatever error closed the channel (another message's refusal included): retryable.
///
/// `Connect` when the connection itself is gone; `Unavailable` when only the channel closed,
/// even when RabbitMQ closed it with an access refusal (403) meant for another message.
fn not_sent(e: lapin::Error) -> Error {
    let kind = if crate::error::connection_lost(&e) {
        ErrorKind::Connect
    } else {
        ErrorKind::Unavailable
    };
    let cause = from_lapin(e);
    Error::new(
        kind,
        BACKEND,
        format!(
            "the message was not sent: its channel closed first ({}); retry",
            cause.message()
        ),
    )
    .with_source(cause)
}

/// Whether publishes may go on `channel` (the broker has not closed it).
fn is_open(channel: &Arc<ConfirmChannel>) -> bool {
    channel.channel.status().connected()
}

/// RabbitMQ sent `connection.blocked`.
fn blocked() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        BACKEND,
        "RabbitMQ is refusing publishes on this connection (connection.blocked: a memory or \
         disk alarm); nothing was sent, try again later",
    )
}

impl AmqpBackend {
    fn pool_timeouts(&self) -> deadpool::managed::Timeouts {
        deadpool::managed::Timeouts {
            wait: Some(self.config.pool.wait_timeout),
            create: Some(
                self.config
                    .pool
                    .create_timeout
                    .max(self.config.timeouts.connect),
            ),
            recycle: Some(self.config.pool.recycle_timeout),
        }
    }

    /// The shared channel, if it is still open.
    fn open_channel(&self) -> Option<Arc<ConfirmChannel>> {
        self.current.usable(is_open)
    }

    /// A confirm-mode channel. lapin channels take concurrent publishes, so publishes share
    /// the channel the pool handed out last while it is open, instead of queueing for channels
    /// (`pool.max_size` bounds the channels opened, not the publishes in flight); the pool,
    /// which opens and checks channels, is asked only when that channel closed.
    async fn channel(&self) -> Result<Arc<ConfirmChannel>> {
        if let Some(c) = self.open_channel() {
            return Ok(c);
        }
        // The pool's futures are large (they hold connecting and opening a channel): boxed, so
        // that only this path pays for them and every publish's future stays small.
        Box::pin(self.checkout()).await
    }

    async fn checkout(&self) -> Result<Arc<ConfirmChannel>> {
        self.current
            .get_or_replace(is_open, || async {
                let slot = self
                    .pool
                    .timeout_get(&self.pool_timeouts())
                    .await
                    .map_err(from_pool)?;
                // Shared behind one Arc: a lapin channel's own clone copies a dozen handles.
                Ok(Arc::new((*slot).clone()))
            })
            .await
    }

    /// Sends one message and hands its confirm to the channel's tracker; the receiver gets the
    /// broker's answer for this message.
    async fn send(
        &self,
        channel: &ConfirmChannel,
        event: &Event,
    ) -> Result<tokio::sync::oneshot::Receiver<Outcome>> {
        let (routing_key, props) = properties(event, self.config.persistent)?;
        if channel.connection.blocked() {
            // lapin writes nothing while blocked: the message would sit in its queue and go
            // out when the alarm clears, long after this publish gave up.
            return Err(blocked());
        }
        let (ticket, confirm) = channel
            .confirms
            .ordered(channel.channel.basic_publish(
                self.exchange.clone(),
                routing_key,
                BasicPublishOptions {
                    mandatory: self.config.mandatory,
                    ..Default::default()
                },
                event.payload(),
                props,
            ))
            .await;
        let confirm = confirm.map_err(not_sent)?;
        Ok(channel.confirms.track(ticket, event.id(), confirm))
    }

    fn confirmed(
        &self,
        event: &Event,
        outcome: std::result::Result<Outcome, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<Position> {
        match outcome {
            Ok(Outcome::Acked) => Ok(Position::None),
            Ok(Outcome::Returned { code, text }) => Err(Error::new(
                ErrorKind::Rejected,
                BACKEND,
                format!(
                    "returned by RabbitMQ as unroutable: exchange `{}` has no queue for routing \
                     key `{}` ({code} {text})",
                    self.config.exchange,
                    event.topic(),
                ),
            )),
            // RabbitMQ nacks what it could not store now (a full queue with
            // `x-overflow=reject-publish`, an internal error): not stored, worth retrying later.
            Ok(Outcome::Nacked) => Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!(
                    "RabbitMQ nacked the message (exchange `{}`, routing key `{}`): not stored, \
                     try again later",
                    self.config.exchange,
                    event.topic()
                ),
            )),
            Ok(Outcome::Lost(e)) => Err(confirm_lost(e, event.topic())),
            Ok(Outcome::Undecided) => Err(Error::outcome_unknown(
                BACKEND,
                "RabbitMQ acked the message, but its channel closed (or the publisher did) \
                 before a return for it could be ruled out",
            )),
            Err(_) => Err(Error::outcome_unknown(
                BACKEND,
                "the channel's confirm tracker stopped before RabbitMQ answered for the message",
            )),
        }
    }

    async fn teardown(&self, remaining: Duration) {
        let limit = remaining.max(Duration::from_millis(200));
        self.current.take();
        let removed = self.pool.retain(|_, _| false).removed;
        self.pool.close();
        // A blocked connection writes nothing, channel.close included: closing the connection
        // (its socket, then) closes its channels.
        let closing = removed
            .into_iter()
            .filter(|c| c.channel.status().connected() && !c.connection.blocked())
            .map(|c| async move {
                let _ =
                    tokio::time::timeout(limit, c.channel.close(200, "publisher closed".into()))
                        .await;
            });
        futures::future::join_all(closing).await;
        self.link.close(limit).await;
    }
}

impl Backend for AmqpBackend {
    type Config = AmqpConfig;
    type Builder = AmqpPublisherBuilder;

    const NAME: &'static str = BACKEND;

    fn publish_timeout(&self) -> Duration {
        self.config.timeouts.publish
    }

    fn check(&self, event: &Event) -> Result<()> {
        validate(event, self.config.max_message_bytes)
    }

    async fn publish(&self, event: Checked<'_>) -> Result<Position> {
        let event = event.event();
        let channel = self.channel().await?;
        let outcome = self.send(&channel, event).await?;
        self.confirmed(event, outcome.await)
    }

    async fn publish_batch(&self, events: &[Event], results: &BatchResults) -> Result<()> {
        let valid: Vec<usize> = results.pending(events).map(|(i, _)| i).collect();
        if valid.is_empty() {
            return Ok(());
        }
        let channel = self.channel().await?;
        let mut outcomes = Vec::with_capacity(valid.len());
        for i in valid {
            match self.send(&channel, &events[i]).await {
                Ok(outcome) => outcomes.push((i, outcome)),
                Err(e) => results.set(i, Err(e)),
            }
        }
        let outcomes = outcomes.into_iter().map(|(i, outcome)| async move {
            results.set(i, self.confirmed(&events[i], outcome.await));
        });
        futures::future::join_all(outcomes).await;
        Ok(())
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let check = async {
            // Reconnects a dropped connection of ours (bounded by the connect timeout), so an
            // idle publisher reports healthy again once RabbitMQ is back, without a publish.
            let conn = self.link.connection().await?;
            if conn.status().blocked() {
                return Err(blocked());
            }
            let channel = conn.create_channel().await.map_err(from_lapin)?;
            let _ = channel.close(200, "health check".into()).await;
            Ok(())
        };
        match tokio::time::timeout(self.config.timeouts.health, check).await {
            Ok(Ok(())) => Health::healthy(
                BACKEND,
                Some(started.elapsed()),
                "connected; channel opened",
            ),
            Ok(Err(e)) => Health::unhealthy(BACKEND, e.to_string()),
            Err(_) => Health::unhealthy(
                BACKEND,
                format!(
                    "could not open a channel within the health timeout ({:?})",
                    self.config.timeouts.health
                ),
            ),
        }
    }

    async fn teardown(self: Arc<Self>, td: Teardown) -> Result<usize> {
        AmqpBackend::teardown(&self, td.remaining()).await;
        Ok(0)
    }

    fn config_from_url(url: &str) -> Result<AmqpConfig> {
        AmqpConfig::from_url(url)
    }

    async fn connect(config: AmqpConfig) -> Result<AmqpPublisher> {
        AmqpPublisherBuilder::default().config(config).build().await
    }
}
