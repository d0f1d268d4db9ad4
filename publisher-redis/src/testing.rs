//! Read-back probes for the conformance suite (feature `testing`): streams with `XRANGE`,
//! pub/sub with a `SUBSCRIBE` connection opened before publishing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use publisher_core::envelope::Envelope;
use publisher_core::testing::{Probe, Received, unique_name, url_addr};
use publisher_core::{Error, ErrorKind, Event, Result, async_trait};

use crate::BACKEND;
use crate::mapping::event_from_stream_fields;
use crate::topology::{self, AnyConnection, Kind, Scheme};

fn probe_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Other, BACKEND, "probe failed").with_source(e)
}

/// A connection for reading back, by the same URL forms as the publisher's: one node, a
/// cluster (redis-rs's cluster connection with its own retries: reads may be sent twice), or
/// the master the sentinels name.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn connect(url: &str) -> Result<AnyConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    let scheme = Scheme::of(url)
        .ok_or_else(|| Error::new(ErrorKind::Config, BACKEND, "probe: not a Redis URL"))?;
    match scheme.kind {
        Kind::Single => redis::Client::open(url)
            .map_err(probe_error)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map(AnyConnection::Node)
            .map_err(probe_error),
        Kind::Cluster => {
            let hosts = topology::hosts(url, scheme)?;
            redis::cluster::ClusterClient::builder(hosts.nodes)
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(Duration::from_secs(30))
                .build()
                .map_err(probe_error)?
                .get_async_connection()
                .await
                .map(AnyConnection::Cluster)
                .map_err(probe_error)
        }
        Kind::Sentinel => {
            let hosts = topology::hosts(url, scheme)?;
            topology::sentinel_client(&hosts, scheme)
                .map_err(probe_error)?
                .get_async_connection_with_config(&config)
                .await
                .map(AnyConnection::Node)
                .map_err(probe_error)
        }
    }
}

/// Reads a whole stream with `XRANGE`, a thousand entries at a time, and decodes every entry.
///
/// # Errors
/// When the command fails or an entry does not decode.
pub async fn xrange(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
) -> Result<Vec<Event>> {
    let mut entries = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(probe_error)?;
        let Some(last) = reply.ids.last() else { break };
        start = format!("({}", last.id);
        let page = reply.ids.len();
        entries.extend(reply.ids);
        if page < 1000 {
            break;
        }
    }
    entries
        .into_iter()
        .map(|entry| {
            let fields: HashMap<String, Vec<u8>> = entry
                .map
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        k,
                        redis::from_redis_value::<Vec<u8>>(v).map_err(probe_error)?,
                    ))
                })
                .collect::<Result<_>>()?;
            event_from_stream_fields(key, &fields)
        })
        .collect()
}

/// Reads back streams with `XRANGE`; deletes them at cleanup.
#[derive(Debug, Clone)]
pub struct StreamProbe {
    url: String,
}

impl StreamProbe {
    /// A probe on the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }
}

#[async_trait]
impl Probe for StreamProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        Ok(unique_name(&format!("publisher-test.{hint}")))
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let mut conn = connect(&self.url).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = xrange(&mut conn, topic).await?;
            if events.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(events.iter().map(Received::from).collect());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn broker_addr(&self) -> Option<std::net::SocketAddr> {
        url_addr(&self.url, 6379)
    }

    async fn cleanup(&self, topic: &str) {
        if let Ok(mut conn) = connect(&self.url).await {
            let _: redis::RedisResult<()> =
                redis::cmd("DEL").arg(topic).query_async(&mut conn).await;
        }
    }
}

/// Subscribes to each topic before the suite publishes to it and collects the envelopes in
/// the background; unsubscribes at cleanup.
#[derive(Debug)]
pub struct PubsubProbe {
    url: String,
    received: Arc<Mutex<HashMap<String, Vec<Received>>>>,
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl PubsubProbe {
    /// A probe on the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            received: Arc::default(),
            tasks: Mutex::default(),
        }
    }
}

impl Drop for PubsubProbe {
    fn drop(&mut self) {
        for (_, t) in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            t.abort();
        }
    }
}

#[async_trait]
impl Probe for PubsubProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        let topic = unique_name(&format!("publisher-test.{hint}"));
        let client = redis::Client::open(self.url.as_str()).map_err(probe_error)?;
        let mut pubsub = client.get_async_pubsub().await.map_err(probe_error)?;
        pubsub.subscribe(&topic).await.map_err(probe_error)?;
        let mut messages = pubsub.into_on_message();
        let received = self.received.clone();
        let t = topic.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let Ok(event) =
                    Envelope::parse(msg.get_payload_bytes()).and_then(Envelope::into_event)
                else {
                    continue;
                };
                received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(t.clone())
                    .or_default()
                    .push(Received::from(&event));
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), task);
        Ok(topic)
    }

    fn broker_addr(&self) -> Option<std::net::SocketAddr> {
        url_addr(&self.url, 6379)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self
                .received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
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
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic)
        {
            task.abort();
        }
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }
}
