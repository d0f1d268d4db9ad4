//! The connection (ours, reconnected on demand, or lent by the caller) and the deadpool pool of
//! confirm-mode channels opened on it, each with its confirm tracker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::options::ConfirmSelectOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ConnectionStatus};
use publisher_core::{Error, ErrorKind, Result};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::confirms::Confirms;
use crate::error::from_lapin;
use crate::transport::OwnedConnection;

/// Where the connection comes from.
pub(crate) enum Link {
    /// Ours: opened from the URI, reopened when it drops, closed at close.
    Owned {
        /// One per node listed in the URL, tried in turn.
        uris: Vec<AMQPUri>,
        /// The node to try first: the one connected to last, or after a loss the next one.
        next: AtomicUsize,
        name: String,
        connect_timeout: Duration,
        current: Mutex<Option<OwnedConnection>>,
        /// Set by [`Link::close`]: no connection is opened after it (a health check racing
        /// the close would otherwise leave one open until the publisher is dropped).
        closed: AtomicBool,
    },
    /// The caller's: used as is, never closed or replaced by us.
    Lent(Arc<Connection>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Owned { name, .. } => write!(f, "Owned({name})"),
            Link::Lent(_) => f.write_str("Lent"),
        }
    }
}

impl Link {
    pub(crate) fn owned(uris: Vec<AMQPUri>, name: String, connect_timeout: Duration) -> Self {
        Link::Owned {
            uris,
            next: AtomicUsize::new(0),
            name,
            connect_timeout,
            current: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// A connected connection: the current one, or (owned only) a new one when it dropped.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        match self {
            Link::Lent(c) => {
                if c.status().connected() {
                    Ok(c.clone())
                } else {
                    Err(Error::new(
                        ErrorKind::Connect,
                        BACKEND,
                        "the lent AMQP connection is not connected (reconnecting it is the \
                         caller's job)",
                    ))
                }
            }
            Link::Owned {
                uris,
                next,
                name,
                connect_timeout,
                current,
                closed,
            } => {
                let mut current = current.lock().await;
                if closed.load(Ordering::Acquire) {
                    return Err(Error::closed(BACKEND));
                }
                if let Some(c) = current.as_ref()
                    && c.connection.status().connected()
                {
                    return Ok(c.connection.clone());
                }
                let lost = current.is_some();
                if lost && uris.len() > 1 {
                    // The node we were on went away: the others first, it last.
                    next.store(
                        (next.load(Ordering::Relaxed) + 1) % uris.len(),
                        Ordering::Relaxed,
                    );
                }
                let first = next.load(Ordering::Relaxed);
                let mut last_error = None;
                for k in 0..uris.len() {
                    let i = (first + k) % uris.len();
                    let props =
                        ConnectionProperties::default().with_connection_name(name.as_str().into());
                    let opened = tokio::time::timeout(
                        *connect_timeout,
                        OwnedConnection::open(uris[i].clone(), props),
                    )
                    .await
                    .map_err(|_| {
                        Error::timeout(BACKEND, "connecting to RabbitMQ", *connect_timeout)
                    })
                    .and_then(|r| r.map_err(from_lapin));
                    match opened {
                        Ok(owned) => {
                            let conn = owned.connection.clone();
                            if lost || i != first {
                                tracing::info!(
                                    backend = BACKEND,
                                    connection = %name,
                                    node = i,
                                    of = uris.len(),
                                    "connected to RabbitMQ node {} of the URL's {}",
                                    i + 1,
                                    uris.len()
                                );
                            }
                            next.store(i, Ordering::Relaxed);
                            *current = Some(owned);
                            return Ok(conn);
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
                Err(last_error.unwrap_or_else(|| {
                    Error::new(ErrorKind::Config, BACKEND, "the URL lists no host")
                }))
            }
        }
    }

    /// Closes our connection (never a lent one). Closing an already closed connection is fine.
    pub(crate) async fn close(&self, limit: Duration) {
        let Link::Owned {
            current, closed, ..
        } = self
        else {
            return;
        };
        closed.store(true, Ordering::Release);
        let Some(owned) = current.lock().await.take() else {
            return;
        };
        let status = owned.connection.status();
        if !status.connected() {
            return;
        }
        if status.blocked() {
            // lapin writes nothing while RabbitMQ blocks the connection, `connection.close`
            // included: it would leave when the alarm clears. End the connection now.
            tracing::warn!(
                backend = BACKEND,
                "RabbitMQ is blocking the connection (memory or disk alarm): closing its socket \
                 without the AMQP close"
            );
            owned.socket.cut();
            return;
        }
        let closing = owned.connection.close(200, "publisher closed".into());
        match tokio::time::timeout(limit, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(backend = BACKEND, error = %e, "closing the AMQP connection")
            }
            Err(_) => {
                tracing::warn!(
                    backend = BACKEND,
                    "closing the AMQP connection timed out: closing its socket"
                );
                owned.socket.cut();
            }
        }
    }
}

/// A confirm-mode channel and the tracker that matches its confirms (and returns) to their
/// publishes.
#[derive(Debug, Clone)]
pub struct ConfirmChannel {
    pub(crate) channel: Channel,
    pub(crate) confirms: Arc<Confirms>,
    /// The state of the channel's connection: `blocked` while RabbitMQ refuses publishes (a
    /// memory or disk alarm, `connection.blocked`).
    pub(crate) connection: ConnectionStatus,
}

/// Opens confirm-mode channels on the publisher's connection and checks them before reuse.
#[derive(Debug)]
pub struct ChannelManager {
    pub(crate) link: Arc<Link>,
    /// Stops the channels' confirm trackers when the publisher closes or is dropped.
    pub(crate) shutdown: CancellationToken,
    /// Publishes are mandatory (returns are to be matched).
    pub(crate) mandatory: bool,
}

impl managed::Manager for ChannelManager {
    type Type = ConfirmChannel;
    type Error = Error;

    async fn create(&self) -> Result<ConfirmChannel> {
        let conn = self.link.connection().await?;
        let channel = conn.create_channel().await.map_err(from_lapin)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(from_lapin)?;
        Ok(ConfirmChannel {
            connection: conn.status().clone(),
            channel: channel.clone(),
            confirms: Arc::new(Confirms::spawn(
                channel.clone(),
                self.mandatory,
                self.shutdown.clone(),
            )),
        })
    }

    async fn recycle(&self, channel: &mut ConfirmChannel, _: &Metrics) -> RecycleResult<Error> {
        // A channel closed by the broker (or on a dropped connection) is replaced.
        if channel.channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel is no longer open"))
        }
    }
}

/// The pool of confirm-mode channels.
pub type ChannelPool = managed::Pool<ChannelManager>;
