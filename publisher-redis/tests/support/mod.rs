//! Shared test support: where Redis is, a private `redis-server` for fault tests, and the
//! conformance harnesses built from the crate's `testing` probes.
#![allow(dead_code)]

pub mod cluster;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::net::SocketAddr;

use publisher_core::testing::{Broker, Harness, OwnBroker, OwnCluster, ProbeHarness, url_via};
use publisher_core::{Publisher, Timeouts};
use publisher_redis::testing::{PubsubProbe, StreamProbe};
use publisher_redis::{Mode, RedisConfig, RedisPublisher};

pub use publisher_redis::testing::xrange;

/// The shared Redis by the workspace's rule (`publisher_core::testing::find_broker`), or
/// `None` (said once; a failure under CI).
pub fn redis() -> Option<String> {
    let broker = Broker::Redis;
    publisher_core::testing::find_broker(broker)
        .inspect_err(|why| publisher_core::testing::skip("redis", broker.var(), why))
        .ok()
}

/// Whether the tests have no Redis (they then return at once: see [`redis`]).
pub fn missing() -> bool {
    redis().is_none()
}

/// The shared Redis's URL (tests that call it checked [`missing`] first).
pub fn redis_url() -> String {
    redis().expect("no Redis: the test should have checked support::missing()")
}

pub async fn client_conn(url: &str) -> publisher_redis::AnyConnection {
    publisher_redis::testing::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}"))
}

/// Reads a whole stream back, panicking on failure.
pub async fn read_stream(
    conn: &mut publisher_redis::AnyConnection,
    key: &str,
) -> Vec<publisher_core::Event> {
    xrange(conn, key).await.unwrap()
}

/// A private `redis-server` on a free port, with an append-only file fsynced on every write so
/// that a kill -9 keeps every acknowledged entry. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut s = Self {
            port: publisher_core::testing::free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH for the fault tests");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = publisher_redis::testing::connect(&self.url()).await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn config(url: &str, mode: Mode) -> RedisConfig {
    RedisConfig {
        mode,
        ..RedisConfig::from_url(url).unwrap()
    }
}

fn open(mode: Mode) -> impl Fn() -> std::future::Ready<publisher_core::Result<Box<dyn Publisher>>> {
    move || {
        std::future::ready(
            RedisPublisher::builder()
                .config(config(&redis_url(), mode))
                .build()
                .map(|p| Box::new(p) as Box<dyn Publisher>),
        )
    }
}

/// Opens publishers in `mode` through `addr` (a fault proxy before the shared Redis).
fn open_via(
    mode: Mode,
) -> impl Fn(SocketAddr, Timeouts) -> std::future::Ready<publisher_core::Result<Box<dyn Publisher>>>
{
    move |addr, timeouts| {
        let url = url_via(&redis_url(), addr).expect("proxy url");
        std::future::ready(
            RedisPublisher::builder()
                .config(RedisConfig {
                    timeouts,
                    ..config(&url, mode)
                })
                .build()
                .map(|p| Box::new(p) as Box<dyn Publisher>),
        )
    }
}

pub async fn stream_harness() -> Option<ProbeHarness<StreamProbe>> {
    Some(
        ProbeHarness::new(StreamProbe::new(redis()?), open(Mode::Stream))
            .with_via(open_via(Mode::Stream))
            .with_own_broker(|| async {
                Some(Box::new(OwnRedis::start().await) as Box<dyn OwnBroker>)
            })
            .with_own_cluster(|| async {
                cluster::OwnRedisCluster::start()
                    .await
                    .map(|c| Box::new(c) as Box<dyn OwnCluster>)
            })
            .with_own_cluster(|| async {
                cluster::OwnSentineled::start()
                    .await
                    .map(|c| Box::new(c) as Box<dyn OwnCluster>)
            }),
    )
}

/// Pub/sub has no restart scenario: subscriptions end with the server, and what is published
/// while nobody listens is gone (at-most-once by design).
pub async fn pubsub_harness() -> Option<ProbeHarness<PubsubProbe>> {
    Some(
        ProbeHarness::new(PubsubProbe::new(redis()?), open(Mode::Pubsub))
            .with_via(open_via(Mode::Pubsub)),
    )
}

/// A private `redis-server` (append-only file fsynced on every write) for the history suite's
/// restart scenario, with a harness publishing to it and reading it back.
pub struct OwnRedis {
    server: tokio::sync::Mutex<RedisServer>,
    harness: ProbeHarness<StreamProbe>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let server = RedisServer::start().await;
        let url = server.url();
        let open_url = url.clone();
        let harness = ProbeHarness::new(StreamProbe::new(url), move || {
            std::future::ready(
                RedisPublisher::builder()
                    .config(config(&open_url, Mode::Stream))
                    .build()
                    .map(|p| Box::new(p) as Box<dyn Publisher>),
            )
        });
        Self {
            server: tokio::sync::Mutex::new(server),
            harness,
        }
    }
}

#[publisher_core::async_trait]
impl OwnBroker for OwnRedis {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    async fn restart(&self, down: Duration) {
        let mut server = self.server.lock().await;
        server.kill();
        tokio::time::sleep(down).await;
        server.spawn().await;
    }
}

/// Number of clients connected to the server at `url` (`CLIENT LIST` lines, ours excluded).
pub async fn client_count(url: &str) -> usize {
    let mut conn = client_conn(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines().count() - 1
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
