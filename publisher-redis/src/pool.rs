//! The connection pool: deadpool over redis-rs multiplexed connections, or a pool the caller
//! lent in.

use std::ops::DerefMut;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use publisher_core::{PoolConfig, Result, SharedHandle};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Client, RedisError, RedisFuture, Value};

use crate::error::{from_pool, from_redis};

/// Pooled connections idle for longer than this are checked with a PING before reuse.
const VERIFY_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Opens and checks redis-rs multiplexed connections with our connect and response timeouts.
pub struct RedisManager {
    endpoint: Endpoint,
    config: AsyncConnectionConfig,
    pings: AtomicUsize,
}

/// Where a new connection goes.
pub(crate) enum Endpoint {
    /// The URL's one server.
    Node(Client),
    /// The master the sentinels name at the time of connecting: asked again for every new
    /// connection, so a connection replaced after a failover (the old master answers
    /// `READONLY` or is gone) goes to the new master.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl std::fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the connection info, password included: never print it.
        f.debug_struct("RedisManager").finish_non_exhaustive()
    }
}

impl RedisManager {
    pub(crate) fn new(endpoint: Endpoint, config: AsyncConnectionConfig) -> Self {
        Self {
            endpoint,
            config,
            pings: AtomicUsize::new(0),
        }
    }
}

/// A pooled multiplexed connection, the flag publishers raise when it failed at the connection
/// level, and when it last answered.
#[derive(Clone)]
pub struct PooledConnection {
    conn: MultiplexedConnection,
    health: Arc<ConnHealth>,
}

struct ConnHealth {
    broken: AtomicBool,
    opened: Instant,
    /// Milliseconds after `opened` of the last reply.
    replied_ms: AtomicU64,
}

impl PooledConnection {
    fn new(conn: MultiplexedConnection) -> Self {
        Self {
            conn,
            health: Arc::new(ConnHealth {
                broken: AtomicBool::new(false),
                opened: Instant::now(),
                replied_ms: AtomicU64::new(0),
            }),
        }
    }

    fn is_broken(&self) -> bool {
        self.health.broken.load(Ordering::Relaxed)
    }

    fn since_opened(&self) -> u64 {
        u64::try_from(self.health.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long since the connection last answered.
    fn idle(&self) -> Duration {
        let replied = self.health.replied_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.since_opened().saturating_sub(replied))
    }

    /// Usable without a check: not broken and answered within [`VERIFY_IDLE_AFTER`].
    fn is_fresh(&self) -> bool {
        !self.is_broken() && self.idle() < VERIFY_IDLE_AFTER
    }

    /// Records that the server answered.
    fn touch(&self) {
        self.health
            .replied_ms
            .store(self.since_opened(), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("broken", &self.is_broken())
            .field("idle", &self.idle())
            .finish()
    }
}

impl managed::Manager for RedisManager {
    type Type = PooledConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<PooledConnection, RedisError> {
        let conn = match &self.endpoint {
            Endpoint::Node(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?
            }
            Endpoint::Sentinel(sentinels) => {
                sentinels
                    .lock()
                    .await
                    .get_async_connection_with_config(&self.config)
                    .await?
            }
        };
        Ok(PooledConnection::new(conn))
    }

    async fn recycle(
        &self,
        pooled: &mut PooledConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        if pooled.is_broken() {
            return Err(RecycleError::message("the connection failed; replacing it"));
        }
        // A connection that answered a moment ago is handed out again without a round trip
        // (publishers discard a connection that failed at the connection level, see
        // `Conn::discard`); one idle for longer is checked with a PING, so connections broken
        // while idle (a Redis restart) are replaced before anyone publishes on them. Its own
        // record of replies is what counts: publishes use the shared connection without
        // checking it out, so the pool's last-use time is stale.
        if pooled.idle() < VERIFY_IDLE_AFTER {
            return Ok(());
        }
        let n = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let echoed: String = redis::cmd("PING")
            .arg(&n)
            .query_async(&mut pooled.conn)
            .await?;
        if echoed == n {
            pooled.touch();
            Ok(())
        } else {
            Err(RecycleError::message("PING answered with the wrong value"))
        }
    }
}

/// The pool type this crate builds.
pub type Pool = managed::Pool<RedisManager>;

/// Where connections come from.
pub(crate) enum Source {
    /// Ours: closed at close.
    Owned(Owned),
    /// The caller's: never closed by us.
    Lent(deadpool_redis::Pool),
    /// A Redis Cluster: one cluster connection (itself a multiplexed connection per node),
    /// closed at close.
    Cluster(Box<ClusterSource>),
}

/// The cluster connection publishes share, made on first use. redis-rs's cluster connection
/// reconnects to a node that failed and reads the slot map again on its own (with its retries
/// off, see `topology::cluster_client`, it still does), so it is never replaced.
pub(crate) struct ClusterSource {
    client: ClusterClient,
    shared: SharedHandle<ClusterHandle>,
    closed: AtomicBool,
}

impl ClusterSource {
    pub(crate) fn new(client: ClusterClient) -> Self {
        Self {
            client,
            shared: SharedHandle::new(),
            closed: AtomicBool::new(false),
        }
    }

    async fn get(&self) -> Result<ClusterHandle> {
        let handle = self
            .shared
            .get_or_replace(ClusterHandle::usable, || async {
                if self.closed.load(Ordering::Acquire) {
                    return Err(publisher_core::Error::closed(crate::BACKEND));
                }
                let conn = self
                    .client
                    .get_async_connection()
                    .await
                    .map_err(from_redis)?;
                Ok(ClusterHandle { conn })
            })
            .await?;
        // A connection made while close ran: close took the slot before it was stored, so it
        // is taken here (whichever of the two comes last lets go of it).
        if self.closed.load(Ordering::Acquire) {
            self.shared.take();
            return Err(publisher_core::Error::closed(crate::BACKEND));
        }
        Ok(handle)
    }
}

/// The shared cluster connection.
#[derive(Clone)]
pub(crate) struct ClusterHandle {
    conn: ClusterConnection,
}

impl ClusterHandle {
    /// Always: one node's failure is not the cluster connection's (see [`ClusterSource`]).
    fn usable(&self) -> bool {
        true
    }
}

/// Our pool, and the connection publishes share while it is fresh.
///
/// A multiplexed connection pipelines every command sent on it, so publishes share one
/// connection (the one the pool handed out last) rather than spreading over several; they go
/// back to the pool, which checks and replaces connections, only when that connection failed
/// or has been idle for a while. Taking the shared connection is a lock and a clone, not a
/// pool checkout.
pub(crate) struct Owned {
    pool: Pool,
    shared: SharedHandle<PooledConnection>,
}

impl Owned {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            shared: SharedHandle::new(),
        }
    }

    fn fresh(&self) -> Option<PooledConnection> {
        self.shared.usable(PooledConnection::is_fresh)
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, status) = match self {
            Source::Owned(o) => ("owned", o.pool.status()),
            Source::Lent(p) => ("lent", p.status()),
            Source::Cluster(_) => {
                return f.debug_struct("Pool").field("kind", &"cluster").finish();
            }
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
/// Our own pooled connections are multiplexed: publishes share the current connection (see
/// [`Owned`]) and this clone carries the command, so many publishes pipeline on one connection
/// concurrently (`pool.max_size` bounds the connections opened, not the publishes in flight).
/// A lent pool's connection is held for the command, as its owner may expect.
pub(crate) enum Conn {
    Shared(PooledConnection),
    Lent(deadpool_redis::Connection),
    Cluster(ClusterHandle),
}

impl Conn {
    /// Marks a connection that failed at the connection level, so the pool replaces it.
    pub(crate) fn discard(self) {
        match self {
            Conn::Shared(p) => p.health.broken.store(true, Ordering::Relaxed),
            Conn::Lent(c) => drop(deadpool_redis::Connection::take(c)),
            // One node's failure is not the cluster connection's: redis-rs reconnects to that
            // node and reads the slot map again by itself.
            Conn::Cluster(_) => {}
        }
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// The cluster connection, to route a command to chosen nodes.
    pub(crate) fn cluster(&mut self) -> Option<&mut ClusterConnection> {
        match self {
            Conn::Cluster(c) => Some(&mut c.conn),
            _ => None,
        }
    }

    /// Records that the server answered on this connection.
    pub(crate) fn touch(&self) {
        if let Conn::Shared(p) = self {
            p.touch();
        }
    }
}

/// Commands and pipelines go to the connection a [`Conn`] holds (a cluster connection routes
/// them by their key's hash slot).
impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Shared(p) => p.conn.req_packed_command(cmd),
            Conn::Lent(c) => c.deref_mut().req_packed_command(cmd),
            Conn::Cluster(c) => c.conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Shared(p) => p.conn.req_packed_commands(cmd, offset, count),
            Conn::Lent(c) => c.deref_mut().req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Shared(p) => p.conn.get_db(),
            Conn::Lent(c) => c.get_db(),
            Conn::Cluster(c) => c.conn.get_db(),
        }
    }
}

impl Source {
    /// A connection: the shared one while it is fresh, otherwise one from the pool, waiting at
    /// most the pool's wait timeout.
    pub(crate) async fn get(&self, cfg: &PoolConfig) -> Result<Conn> {
        match self {
            Source::Owned(o) => {
                if let Some(c) = o.fresh() {
                    return Ok(Conn::Shared(c));
                }
            }
            Source::Cluster(c) => {
                if let Some(h) = c.shared.usable(ClusterHandle::usable) {
                    return Ok(Conn::Cluster(h));
                }
                return Box::pin(c.get()).await.map(Conn::Cluster);
            }
            Source::Lent(_) => {}
        }
        // The pool's futures are large (they hold connection setup): boxed, so that only this
        // path pays for them and every publish's future stays small.
        Box::pin(self.checkout(cfg)).await
    }

    async fn checkout(&self, cfg: &PoolConfig) -> Result<Conn> {
        let timeouts = managed::Timeouts {
            wait: Some(cfg.wait_timeout),
            create: Some(cfg.create_timeout),
            recycle: Some(cfg.recycle_timeout),
        };
        match self {
            Source::Owned(o) => o
                .shared
                .get_or_replace(PooledConnection::is_fresh, || async {
                    let slot = o.pool.timeout_get(&timeouts).await.map_err(from_pool)?;
                    Ok((*slot).clone())
                })
                .await
                .map(Conn::Shared),
            Source::Lent(p) => p
                .timeout_get(&timeouts)
                .await
                .map(Conn::Lent)
                .map_err(from_pool),
            Source::Cluster(c) => c.get().await.map(Conn::Cluster),
        }
    }

    /// Closes our pool and lets go of the shared connection (a lent pool is left alone).
    pub(crate) fn close_if_owned(&self) {
        match self {
            Source::Owned(o) => {
                o.shared.take();
                o.pool.close();
            }
            Source::Cluster(c) => {
                c.closed.store(true, Ordering::Release);
                // The last clone's drop ends the connection's task; publishes that still hold
                // one finish (or time out) first.
                c.shared.take();
            }
            Source::Lent(_) => {}
        }
    }
}
