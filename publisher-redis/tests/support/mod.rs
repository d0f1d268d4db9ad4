//! Shared test support: where Redis is, a private `redis-server` for fault tests, and the
//! conformance harnesses (stream and pub/sub) that read back with Redis's own commands.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use publisher_core::envelope::Envelope;
use publisher_core::testing::{Capabilities, Harness, Received, unique_name};
use publisher_core::{Publisher, Result, async_trait};
use publisher_redis::mapping::event_from_stream_fields;
use publisher_redis::{Mode, RedisConfig, RedisPublisher};
use redis::AsyncCommands;

/// The shared Redis the tests use: `PUBLISHER_TEST_REDIS_URL` or the local default.
pub fn redis_url() -> String {
    std::env::var("PUBLISHER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub async fn client_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}"))
}

/// Reads a whole stream back with XRANGE and decodes each entry.
pub async fn xrange(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<publisher_core::Event> {
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let fields: HashMap<String, Vec<u8>> = entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect();
            event_from_stream_fields(key, &fields).unwrap()
        })
        .collect()
}

/// A private `redis-server` on a free port, with an append-only file fsynced on every write so
/// that a kill -9 keeps every acknowledged entry. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut s = Self {
            port: free_port(),
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
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
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

/// Reads back streams with XRANGE.
pub struct StreamHarness {
    url: String,
}

pub async fn stream_harness() -> StreamHarness {
    StreamHarness { url: redis_url() }
}

pub fn config(url: &str, mode: Mode) -> RedisConfig {
    RedisConfig {
        mode,
        ..RedisConfig::from_url(url).unwrap()
    }
}

#[async_trait]
impl Harness for StreamHarness {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(
            RedisPublisher::builder()
                .config(config(&self.url, Mode::Stream))
                .build()?,
        ))
    }

    async fn topic(&self, hint: &str) -> Result<String> {
        Ok(unique_name(&format!("publisher-test.{hint}")))
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let mut conn = client_conn(&self.url).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = xrange(&mut conn, topic).await;
            if events.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(events.iter().map(Received::from).collect());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cleanup(&self, topic: &str) {
        let mut conn = client_conn(&self.url).await;
        let _: () = conn.del(topic).await.unwrap();
    }
}

/// Subscribes before publishing and collects messages in the background.
pub struct PubsubHarness {
    url: String,
    received: Arc<Mutex<HashMap<String, Vec<Received>>>>,
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

pub async fn pubsub_harness() -> PubsubHarness {
    PubsubHarness {
        url: redis_url(),
        received: Arc::default(),
        tasks: Mutex::default(),
    }
}

#[async_trait]
impl Harness for PubsubHarness {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(
            RedisPublisher::builder()
                .config(config(&self.url, Mode::Pubsub))
                .build()?,
        ))
    }

    async fn topic(&self, hint: &str) -> Result<String> {
        let topic = unique_name(&format!("publisher-test.{hint}"));
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(&topic).await.unwrap();
        let mut messages = pubsub.into_on_message();
        let received = self.received.clone();
        let t = topic.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let event = Envelope::parse(msg.get_payload_bytes())
                    .and_then(Envelope::into_event)
                    .expect("pub/sub message is an envelope");
                received
                    .lock()
                    .unwrap()
                    .entry(t.clone())
                    .or_default()
                    .push(Received::from(&event));
            }
        });
        self.tasks.lock().unwrap().insert(topic.clone(), task);
        Ok(topic)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self
                .received
                .lock()
                .unwrap()
                .get(topic)
                .cloned()
                .unwrap_or_default();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cleanup(&self, topic: &str) {
        if let Some(task) = self.tasks.lock().unwrap().remove(topic) {
            task.abort();
        }
        self.received.lock().unwrap().remove(topic);
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
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
