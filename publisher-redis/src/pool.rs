//! The connection pool: deadpool over redis-rs multiplexed connections, or a pool the caller
//! lent in.

use std::ops::DerefMut;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use publisher_core::{PoolConfig, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use crate::error::from_pool;

/// Pooled connections idle for longer than this are checked with a PING before reuse.
const VERIFY_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens and checks redis-rs multiplexed connections with our connect and response timeouts.
pub struct RedisManager {
    client: Client,
    config: AsyncConnectionConfig,
    pings: AtomicUsize,
}

impl std::fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the connection info, password included: never print it.
        f.debug_struct("RedisManager").finish_non_exhaustive()
    }
}

impl RedisManager {
    pub(crate) fn new(client: Client, config: AsyncConnectionConfig) -> Self {
        Self {
            client,
            config,
            pings: AtomicUsize::new(0),
        }
    }
}

/// A pooled multiplexed connection and the flag publishers raise when it failed at the
/// connection level.
#[derive(Clone)]
pub struct PooledConnection {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish()
    }
}

impl managed::Manager for RedisManager {
    type Type = PooledConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<PooledConnection, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(PooledConnection {
            conn,
            broken: Arc::default(),
        })
    }

    async fn recycle(
        &self,
        pooled: &mut PooledConnection,
        metrics: &Metrics,
    ) -> RecycleResult<RedisError> {
        if pooled.broken.load(Ordering::Relaxed) {
            return Err(RecycleError::message("the connection failed; replacing it"));
        }
        let conn = &mut pooled.conn;
        // A connection that was in use a moment ago is handed out again without a round trip
        // (publishers discard a connection that failed at the connection level, see
        // `Conn::discard`); one idle for longer is checked with a PING, so connections broken
        // while idle (a Redis restart) are replaced before anyone publishes on them.
        if metrics.last_used() < VERIFY_IDLE_AFTER {
            return Ok(());
        }
        let n = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let echoed: String = redis::cmd("PING").arg(&n).query_async(conn).await?;
        if echoed == n {
            Ok(())
        } else {
            Err(RecycleError::message("PING answered with the wrong value"))
        }
    }
}

/// The pool type this crate builds.
pub type Pool = managed::Pool<RedisManager>;

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// Ours: closed at close.
    Owned(Pool),
    /// The caller's: never closed by us.
    Lent(deadpool_redis::Pool),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, status) = match self {
            Source::Owned(p) => ("owned", p.status()),
            Source::Lent(p) => ("lent", p.status()),
        };
        f.debug_struct("Pool")
            .field("kind", &kind)
            .field("size", &status.size)
            .field("available", &status.available)
            .field("max_size", &status.max_size)
            .finish()
    }
}

/// A connection to publish on.
///
/// Our own pooled connections are multiplexed: the pool slot is returned at once and this clone
/// carries the command, so many publishes share one connection concurrently (the pool's size
/// is the number of connections, not a cap on publishes in flight). A lent pool's connection
/// is held for the command, as its owner may expect.
pub(crate) enum Conn {
    Shared(PooledConnection),
    Lent(deadpool_redis::Connection),
}

impl Conn {
    /// Marks a connection that failed at the connection level, so the pool replaces it.
    pub(crate) fn discard(self) {
        match self {
            Conn::Shared(p) => p.broken.store(true, Ordering::Relaxed),
            Conn::Lent(c) => drop(deadpool_redis::Connection::take(c)),
        }
    }

    pub(crate) fn get(&mut self) -> &mut MultiplexedConnection {
        match self {
            Conn::Shared(p) => &mut p.conn,
            Conn::Lent(c) => c.deref_mut(),
        }
    }
}

impl Source {
    /// A connection, waiting at most the pool's wait timeout.
    pub(crate) async fn get(&self, cfg: &PoolConfig) -> Result<Conn> {
        let timeouts = managed::Timeouts {
            wait: Some(cfg.wait_timeout),
            create: Some(cfg.create_timeout),
            recycle: Some(cfg.recycle_timeout),
        };
        match self {
            Source::Owned(p) => {
                let slot = p.timeout_get(&timeouts).await.map_err(from_pool)?;
                Ok(Conn::Shared((*slot).clone()))
            }
            Source::Lent(p) => p
                .timeout_get(&timeouts)
                .await
                .map(Conn::Lent)
                .map_err(from_pool),
        }
    }

    pub(crate) fn close_if_owned(&self) {
        if let Source::Owned(p) = self {
            p.close();
        }
    }
}
