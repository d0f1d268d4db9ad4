//! [`RedisPublisher`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use publisher_core::backend::Checked;
use publisher_core::envelope;
use publisher_core::{
    Backend, BatchResults, Error, ErrorKind, Event, Gated, Health, Lifecycle, Position,
    RedactedUrl, Result, Teardown,
};
use redis::{AsyncConnectionConfig, Client, RedisResult};

use crate::BACKEND;
use crate::config::{Mode, PubsubFormat, RedisConfig};
use crate::error::{from_command, from_redis};
use crate::mapping::{add_stream_fields, stream_entry_size};
use crate::pool::{ClusterSource, Conn, Endpoint, Owned, Pool, RedisManager, Source};
use crate::topology::{self, Kind, Scheme};

/// Publishes to Redis streams (`XADD`, the default) or pub/sub channels (`PUBLISH`) through a
/// bounded connection pool.
///
/// `publish` returns Ok only after Redis replied to the command: the stream entry id in stream
/// mode, the number of subscribers that received it in pub/sub mode.
pub type RedisPublisher = Gated<RedisBackend>;

/// The Redis [`Backend`]: the connection source (a shared multiplexed connection, or a pool
/// the caller lent) and the config.
#[derive(Debug)]
pub struct RedisBackend {
    config: RedisConfig,
    source: Source,
    last_health: Mutex<Option<Health>>,
}

/// Builds a [`RedisPublisher`]. Setters never fail; [`RedisPublisherBuilder::build`] validates
/// everything at once.
#[derive(Debug, Default)]
pub struct RedisPublisherBuilder {
    config: RedisConfig,
    pool: Option<deadpool_redis::Pool>,
}

impl RedisPublisherBuilder {
    /// Starts from `config`.
    pub fn config(mut self, config: RedisConfig) -> Self {
        self.config = config;
        self
    }

    /// The Redis URL (see [`RedisConfig::from_url`] for its query parameters, which are applied
    /// when building with `RedisPublisher::from_url`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = RedactedUrl::new(url);
        self
    }

    /// Stream or pub/sub.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Trims streams to about `maxlen` entries.
    pub fn maxlen(mut self, maxlen: u64) -> Self {
        self.config.maxlen = Some(maxlen);
        self
    }

    /// The pool configuration.
    pub fn pool_config(mut self, pool: publisher_core::PoolConfig) -> Self {
        self.config.pool = pool;
        self
    }

    /// The timeouts.
    pub fn timeouts(mut self, timeouts: publisher_core::Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Publishes through a deadpool-redis pool the caller owns, instead of opening one. The URL
    /// and pool size of the config are then unused, and `close` never closes this pool.
    pub fn lend_pool(mut self, pool: deadpool_redis::Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Validates and builds. Connections open lazily on first use; call
    /// [`Publisher::health`](publisher_core::Publisher::health) to check the server is reachable.
    ///
    /// Needs no runtime unless `health_interval` is set (its monitor is a Tokio task); it never
    /// panics outside one.
    ///
    /// # Errors
    /// `Config` naming the field at fault, and `health_interval` when it is set outside a Tokio
    /// runtime.
    pub fn build(self) -> Result<RedisPublisher> {
        let config = self.config;
        config.validate()?;
        if config.health_interval.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                BACKEND,
                "health_interval",
                "the background health check runs on Tokio: build the publisher inside a \
                 Tokio runtime, or leave health_interval unset",
            ));
        }
        let invalid = |e: redis::RedisError| {
            Error::config(
                BACKEND,
                "url",
                format!("invalid Redis URL `{}`: {:?}", config.url, e.kind()),
            )
        };
        let scheme = Scheme::of(config.url.expose()).unwrap_or(Scheme {
            kind: Kind::Single,
            tls: false,
        });
        let source = match (self.pool, scheme.kind) {
            (Some(pool), _) => Source::Lent(pool),
            (None, Kind::Cluster) => {
                let hosts = topology::hosts(config.url.expose(), scheme)?;
                let client =
                    topology::cluster_client(&hosts, config.timeouts.connect).map_err(invalid)?;
                Source::Cluster(Box::new(ClusterSource::new(client)))
            }
            (None, kind) => {
                let endpoint = if kind == Kind::Sentinel {
                    let hosts = topology::hosts(config.url.expose(), scheme)?;
                    Endpoint::Sentinel(tokio::sync::Mutex::new(
                        topology::sentinel_client(&hosts, scheme).map_err(invalid)?,
                    ))
                } else {
                    Endpoint::Node(Client::open(config.url.expose()).map_err(invalid)?)
                };
                let conn_config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.timeouts.connect))
                    // Every command runs inside the close gate's publish (or health) timeout,
                    // which also covers the pool wait: a second timer per command would only
                    // cost time.
                    .set_response_timeout(None);
                let pool = Pool::builder(RedisManager::new(endpoint, conn_config))
                    .max_size(config.pool.max_size)
                    // Last in, first out: a publish takes the connection the previous one just
                    // gave back, so publishes pipeline on as few connections as the load needs
                    // instead of spreading thinly over all of them.
                    .queue_mode(deadpool::managed::QueueMode::Lifo)
                    .wait_timeout(Some(config.pool.wait_timeout))
                    .create_timeout(Some(
                        config.pool.create_timeout.min(config.timeouts.connect),
                    ))
                    .recycle_timeout(Some(config.pool.recycle_timeout))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| {
                        Error::config(BACKEND, "pool", format!("cannot build the pool: {e}"))
                    })?;
                Source::Owned(Owned::new(pool))
            }
        };
        let lifecycle = Lifecycle::new(BACKEND, config.timeouts.close);
        let inner = Arc::new(RedisBackend {
            config,
            source,
            last_health: Mutex::new(None),
        });
        if let Some(interval) = inner.config.health_interval {
            let monitor = inner.clone();
            lifecycle.spawn(async move { monitor.monitor(interval).await });
        }
        Ok(Gated::from_parts(inner, lifecycle))
    }
}

impl RedisBackend {
    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The last report of the background health monitor (`health_interval`), if it ran.
    pub fn last_health(&self) -> Option<Health> {
        self.last_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn check(&self, event: &Event) -> Result<()> {
        event.validate(BACKEND)?;
        let limit = self.config.max_payload_bytes;
        if event.payload().len() > limit {
            return Err(Error::invalid_event(
                BACKEND,
                "payload",
                format!(
                    "payload of {} bytes exceeds max_payload_bytes ({limit})",
                    event.payload().len()
                ),
            ));
        }
        Ok(())
    }

    fn command(&self, event: &Event) -> redis::Cmd {
        match self.config.mode {
            Mode::Stream => {
                // Sized up front: growing the buffer argument by argument reallocates several
                // times for every command.
                let (args, bytes) = stream_entry_size(event);
                let mut cmd = redis::Cmd::with_capacity(6 + args, 64 + bytes);
                cmd.arg("XADD");
                cmd.arg(event.topic());
                if let Some(n) = self.config.maxlen {
                    cmd.arg("MAXLEN").arg("~").arg(n);
                }
                cmd.arg("*");
                add_stream_fields(&mut cmd, event);
                cmd
            }
            Mode::Pubsub => {
                let mut cmd = redis::Cmd::with_capacity(3, 320 + stream_entry_size(event).1);
                cmd.arg("PUBLISH");
                cmd.arg(event.topic());
                match self.config.pubsub_format {
                    PubsubFormat::Envelope => {
                        let mut buf = Vec::with_capacity(256 + event.payload().len());
                        envelope::encode(event, &mut buf);
                        cmd.arg(buf);
                    }
                    PubsubFormat::Payload => {
                        cmd.arg(event.payload().as_ref());
                    }
                }
                cmd
            }
        }
    }

    /// Turns Redis's reply to one command into the event's position.
    fn position(&self, event: &Event, reply: RedisResult<redis::Value>) -> Result<Position> {
        let value = reply.map_err(from_command)?;
        let position = match self.config.mode {
            Mode::Stream => Position::StreamEntry(
                redis::from_redis_value::<String>(value).map_err(|e| from_redis(e.into()))?,
            ),
            Mode::Pubsub => {
                let n: u64 = redis::from_redis_value(value).map_err(|e| from_redis(e.into()))?;
                if n < self.config.min_receivers {
                    return Err(Error::new(
                        ErrorKind::Rejected,
                        BACKEND,
                        format!(
                            "channel `{}` has {n} subscriber(s), fewer than min_receivers ({})",
                            event.topic(),
                            self.config.min_receivers
                        ),
                    ));
                }
                Position::Receivers(n)
            }
        };
        Ok(position)
    }

    fn wait_command(&self) -> redis::Cmd {
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.config.wait_replicas)
            .arg(self.config.wait_timeout.as_millis().max(1) as u64);
        wait
    }

    /// Sends `pipe` (errors kept per command) on a pooled connection, which is dropped when it
    /// or a reply says the connection is unusable.
    async fn run(&self, pipe: &redis::Pipeline) -> Result<Vec<RedisResult<redis::Value>>> {
        let mut conn = self.source.get(&self.config.pool).await?;
        let replies = pipe
            .query_async::<Vec<RedisResult<redis::Value>>>(&mut conn)
            .await;
        match &replies {
            Err(e) if broken(e) => conn.discard(),
            Ok(replies) if replies.iter().any(|r| r.as_ref().is_err_and(broken)) => {
                conn.discard();
            }
            _ => conn.touch(),
        }
        replies.map_err(from_command)
    }

    /// Sends one event's command (with `WAIT` when asked) and reads its position.
    async fn publish_once(&self, event: &Event) -> Result<Position> {
        let cmd = self.command(event);
        if self.config.wait_replicas > 0 {
            return self.publish_waiting(event, cmd).await;
        }
        let mut conn = self.source.get(&self.config.pool).await?;
        let reply = cmd.query_async::<redis::Value>(&mut conn).await;
        match &reply {
            Err(e) if broken(e) => conn.discard(),
            _ => conn.touch(),
        }
        self.position(event, reply)
    }

    /// One event to a cluster: sent again, after a pause, while Redis answers that it did not
    /// run it (the slot moved, `MOVED`/`ASK`; the cluster is changing, `TRYAGAIN`,
    /// `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`; no connection to the slot's node) and half the
    /// publish timeout has not passed; then that answer is the publish's error. redis-rs reads
    /// the slot map again on a redirect, so the next attempt goes to the slot's new master. A
    /// command that may have run (a connection lost after it was written) is never sent again:
    /// its outcome is unknown.
    async fn publish_in_cluster(&self, event: &Event) -> Result<Position> {
        let started = Instant::now();
        let give_up = self.config.timeouts.publish / 2;
        let waited = self.config.wait_replicas > 0;
        let mut pause = Duration::from_millis(20);
        loop {
            let mut outcome = self.publish_once(event).await;
            // `ASK`: the slot is moving and this key is already on the node named; that node
            // takes the command after `ASKING` (redis-rs's retries, which would send it, are
            // off: see `topology::cluster_client`).
            if let Err(e) = &outcome
                && let Some(addr) = asked_to(e)
            {
                outcome = self.publish_asking(event, &addr).await;
            }
            match &outcome {
                Err(e) if not_run(e, waited) && started.elapsed() + pause < give_up => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                _ => return outcome,
            }
        }
    }

    /// Sends `ASKING` and the event's command (with `WAIT` when asked) to the node at `addr`
    /// (`host:port`, from an `ASK` redirection), in one pipeline on that node's connection.
    async fn publish_asking(&self, event: &Event, addr: &str) -> Result<Position> {
        use redis::cluster_routing::SingleNodeRoutingInfo;
        let Some((host, port)) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
        else {
            return Err(Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                "Redis redirected the command (ASK) to an address that does not read as host:port",
            ));
        };
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING");
        pipe.add_command(self.command(event));
        let waiting = self.config.wait_replicas > 0;
        if waiting {
            pipe.add_command(self.wait_command());
        }
        let count = pipe.len();
        let mut conn = self.source.get(&self.config.pool).await?;
        let Some(cluster) = conn.cluster() else {
            return Err(Error::new(
                ErrorKind::Other,
                BACKEND,
                "ASK outside a cluster",
            ));
        };
        let replies = cluster
            .route_pipeline(
                pipe,
                0,
                count,
                SingleNodeRoutingInfo::ByAddress { host, port },
            )
            .await
            .map_err(from_command)?;
        if replies.len() != count {
            return Err(short_pipeline(replies.len(), count));
        }
        let mut replies = replies.into_iter().skip(1).map(|v| match v {
            redis::Value::ServerError(e) => Err(redis::RedisError::from(e)),
            v => Ok(v),
        });
        let added = replies.next().ok_or_else(|| short_pipeline(0, count))?;
        let position = self.position(event, added)?;
        if let Some(waited) = replies.next() {
            self.replicated(waited)?;
        }
        Ok(position)
    }

    /// `XADD` then `WAIT`, pipelined on one connection: `WAIT` counts the replicas that hold
    /// every write this connection made before it, so this entry among them.
    async fn publish_waiting(&self, event: &Event, cmd: redis::Cmd) -> Result<Position> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.add_command(cmd).add_command(self.wait_command());
        let replies = self.run(&pipe).await?;
        let [added, waited] =
            <[_; 2]>::try_from(replies).map_err(|r| short_pipeline(r.len(), 2))?;
        let position = self.position(event, added)?;
        self.replicated(waited)?;
        Ok(position)
    }

    /// Reads `WAIT`'s reply: fewer replicas than asked leaves the outcome unknown (the primary
    /// holds the entry; whether it survives a failover is not known).
    fn replicated(&self, reply: RedisResult<redis::Value>) -> Result<()> {
        let wanted = u64::from(self.config.wait_replicas);
        let reply = reply.map_err(|e| {
            Error::outcome_unknown(
                BACKEND,
                format!("the entry was added but WAIT for {wanted} replica(s) failed: {e}"),
            )
        })?;
        let acked: u64 = redis::from_redis_value(reply).map_err(|e| {
            Error::outcome_unknown(
                BACKEND,
                format!("the entry was added but WAIT answered oddly: {e}"),
            )
        })?;
        if acked < wanted {
            return Err(Error::outcome_unknown(
                BACKEND,
                format!(
                    "the entry is on the primary but only {acked} of {wanted} replica(s) \
                     acknowledged it within wait_timeout ({:?})",
                    self.config.wait_timeout
                ),
            ));
        }
        Ok(())
    }

    async fn ping(&self) -> Health {
        let started = Instant::now();
        let check = async {
            let mut conn = self.source.get(&self.config.pool).await?;
            if conn.is_cluster() {
                return cluster_state(conn).await;
            }
            let pong = redis::cmd("PING").query_async::<String>(&mut conn).await;
            match &pong {
                Err(e) if broken(e) => conn.discard(),
                _ => conn.touch(),
            }
            pong.map_err(from_redis)
        };
        match tokio::time::timeout(self.config.timeouts.health, check).await {
            Ok(Ok(pong)) => Health::healthy(BACKEND, Some(started.elapsed()), pong),
            Ok(Err(e)) => Health::unhealthy(BACKEND, e.to_string()),
            Err(_) => Health::unhealthy(
                BACKEND,
                format!(
                    "no PONG within the health timeout ({:?})",
                    self.config.timeouts.health
                ),
            ),
        }
    }

    async fn monitor(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let health = self.ping().await;
            let mut last = self.last_health.lock().unwrap_or_else(|p| p.into_inner());
            let changed = last.as_ref().is_none_or(|l| l.status != health.status);
            if changed {
                if health.is_healthy() {
                    tracing::info!(backend = BACKEND, %health, "Redis health changed");
                } else {
                    tracing::warn!(backend = BACKEND, %health, "Redis health changed");
                }
            }
            *last = Some(health);
        }
    }
}

/// A pipeline answered with `got` replies to `sent` commands: which command ran is unknown.
fn short_pipeline(got: usize, sent: usize) -> Error {
    Error::outcome_unknown(
        BACKEND,
        format!("Redis answered {got} replies to {sent} pipelined commands"),
    )
}

/// Whether Redis answered without running the command (so sending it again cannot make a
/// second entry): a cluster's redirection or refusal while it changes, or no connection to
/// the node. After `XADD` + `WAIT` (`waited`), redis-rs reports the first reply that needs
/// action, which may be `WAIT`'s own `LOADING` or `MASTERDOWN` after the `XADD` ran: only the
/// answers `WAIT` (which has no key) never gets count then.
fn not_run(e: &Error, waited: bool) -> bool {
    let Some(redis) =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<redis::RedisError>())
    else {
        return false;
    };
    redis.is_connection_refusal()
        || redis.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            redis.code(),
            Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN")
        )
        || !waited && matches!(redis.code(), Some("MASTERDOWN" | "LOADING"))
}

/// The node an `ASK` redirection names (`host:port`), if `e` is one.
fn asked_to(e: &Error) -> Option<String> {
    let redis = std::error::Error::source(e).and_then(|s| s.downcast_ref::<redis::RedisError>())?;
    match redis.code() {
        Some("ASK") => redis.redirect_node().map(|(addr, _)| addr.to_owned()),
        _ => None,
    }
}

/// A cluster's health: `CLUSTER INFO` from every master, each of which must say
/// `cluster_state:ok` (a node that sees a slot without a reachable master says `fail`).
async fn cluster_state(mut conn: Conn) -> Result<String> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let Some(cluster) = conn.cluster() else {
        return Err(Error::new(
            ErrorKind::Other,
            BACKEND,
            "not a cluster connection",
        ));
    };
    let mut info = redis::cmd("CLUSTER");
    info.arg("INFO");
    let replies = cluster
        .route_command(
            info,
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await;
    let replies = match replies {
        Ok(redis::Value::Map(replies)) => replies,
        Ok(other) => vec![(redis::Value::Nil, other)],
        Err(e) => {
            if broken(&e) {
                conn.discard();
            }
            return Err(from_redis(e));
        }
    };
    let mut failing = Vec::new();
    // The masters serving slots, by the nodes' own count: redis-rs skips a master it has no
    // connection to, so fewer replies than this is a master missing.
    let mut size = 0;
    for (node, reply) in &replies {
        let node: String = redis::from_redis_value_ref(node).unwrap_or_else(|_| "a node".into());
        let text: String = redis::from_redis_value_ref(reply).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == "cluster_state:ok") {
            failing.push(node);
        }
        let said = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("cluster_size:"))
            .and_then(|n| n.parse::<usize>().ok());
        size = size.max(said.unwrap_or(0));
    }
    if replies.len() < size {
        return Err(Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            format!(
                "{} of the cluster's {size} masters answered CLUSTER INFO",
                replies.len()
            ),
        ));
    }
    if failing.is_empty() {
        Ok(format!(
            "cluster_state:ok on every master ({})",
            replies.len()
        ))
    } else {
        Err(Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            format!(
                "cluster_state is not ok on {} of {} master(s): {}",
                failing.len(),
                replies.len(),
                failing.join(", ")
            ),
        ))
    }
}

/// Whether the connection must be replaced: it failed, or it leads to a server that no longer
/// takes writes (`READONLY`: a primary demoted to replica by a failover; `MASTERDOWN`), so
/// that the next publish connects again (through the URL's name or proxy, to the new primary).
fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

impl Backend for RedisBackend {
    type Config = RedisConfig;
    type Builder = RedisPublisherBuilder;

    const NAME: &'static str = BACKEND;

    fn publish_timeout(&self) -> Duration {
        self.config.timeouts.publish
    }

    fn check(&self, event: &Event) -> Result<()> {
        RedisBackend::check(self, event)
    }

    async fn publish(&self, event: Checked<'_>) -> Result<Position> {
        let event = event.event();
        if let Source::Cluster(_) = self.source {
            return self.publish_in_cluster(event).await;
        }
        self.publish_once(event).await
    }

    async fn publish_batch(&self, events: &[Event], results: &BatchResults) -> Result<()> {
        let pending: Vec<usize> = results.pending(events).map(|(i, _)| i).collect();
        if let Source::Cluster(_) = self.source {
            // One pipeline per stream (one key, so one slot and one node, in order), all at
            // once. A stream with one event is sent as a single publish, which is sent again
            // when Redis answered without running it.
            let mut streams: HashMap<&str, Vec<usize>> = HashMap::new();
            for i in pending {
                streams.entry(events[i].topic()).or_default().push(i);
            }
            let sends = streams.into_values().map(|sent| async move {
                match sent[..] {
                    [i] => results.set(i, self.publish_in_cluster(&events[i]).await),
                    _ => self.publish_pipelined(events, sent, results).await,
                }
            });
            futures::future::join_all(sends).await;
            return Ok(());
        }
        if !pending.is_empty() {
            self.publish_pipelined(events, pending, results).await;
        }
        Ok(())
    }

    async fn health(&self) -> Health {
        self.ping().await
    }

    async fn teardown(self: Arc<Self>, _: Teardown) -> Result<usize> {
        self.source.close_if_owned();
        Ok(0)
    }

    fn config_from_url(url: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(url)
    }

    async fn connect(config: RedisConfig) -> Result<RedisPublisher> {
        RedisPublisherBuilder::default().config(config).build()
    }
}

impl RedisBackend {
    /// Sends the events `sent` of `events` in one pipeline (with one `WAIT` after them when
    /// asked) and records each one's result.
    async fn publish_pipelined(&self, events: &[Event], sent: Vec<usize>, results: &BatchResults) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &i in &sent {
            pipe.add_command(self.command(&events[i]));
        }
        let waiting = self.config.wait_replicas > 0;
        if waiting {
            pipe.add_command(self.wait_command());
        }
        let mut replies = match self.run(&pipe).await {
            Ok(replies) => replies,
            Err(e) => {
                // redis-rs answers a cluster pipeline with one error when any of its replies
                // redirects or refuses: the commands before it may have run.
                let e = if not_run(&e, waiting) && matches!(self.source, Source::Cluster(_)) {
                    Error::outcome_unknown(
                        BACKEND,
                        "the cluster redirected or refused part of a pipeline; which of its \
                         commands ran is unknown",
                    )
                    .with_source(e)
                } else {
                    e
                };
                for i in sent {
                    results.set(i, Err(e.clone()));
                }
                return;
            }
        };
        let expected = sent.len() + usize::from(waiting);
        if replies.len() != expected {
            let e = short_pipeline(replies.len(), expected);
            for i in sent {
                results.set(i, Err(e.clone()));
            }
            return;
        }
        let replicated = match replies.pop() {
            Some(reply) if waiting => self.replicated(reply),
            Some(reply) => {
                replies.push(reply);
                Ok(())
            }
            None => Ok(()),
        };
        for (i, reply) in sent.into_iter().zip(replies) {
            let outcome = self.position(&events[i], reply);
            results.set(i, outcome.and_then(|p| replicated.clone().map(|()| p)));
        }
    }
}
