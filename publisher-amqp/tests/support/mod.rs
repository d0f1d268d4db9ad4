//! Shared test support: where RabbitMQ is, the conformance harness that reads back by consuming
//! a queue with lapin, and a TCP fault proxy.
#![allow(dead_code)]

use std::sync::Arc;

use lapin::types::FieldTable;
use publisher_amqp::testing::{QueueClient, QueueProbe};
use publisher_amqp::{AmqpConfig, AmqpPublisher};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use publisher_core::Publisher;
use publisher_core::testing::{Broker, Harness, OwnBroker, OwnCluster, ProbeHarness};

/// The shared RabbitMQ by the workspace's rule (`publisher_core::testing::find_broker`), or
/// `None` (said once; a failure under CI).
pub fn amqp() -> Option<String> {
    let broker = Broker::RabbitMq;
    publisher_core::testing::find_broker(broker)
        .inspect_err(|why| publisher_core::testing::skip("amqp", broker.var(), why))
        .ok()
}

/// Whether the tests have no RabbitMQ (they then return at once: see [`amqp`]).
pub fn missing() -> bool {
    amqp().is_none()
}

/// The shared RabbitMQ's URL (tests that call it checked [`missing`] first).
pub fn amqp_url() -> String {
    amqp().expect("no RabbitMQ: the test should have checked support::missing()")
}

/// The broker's address, for proxies.
pub fn amqp_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&amqp_url()).unwrap();
    let host = url.host_str().unwrap().trim_matches(['[', ']']);
    let port = url.port().unwrap_or(5672);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .unwrap()
        .next()
        .unwrap()
}

/// `amqp_url()` with the host and port replaced by `addr`.
pub fn url_via(addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_ip_host(addr.ip()).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.to_string()
}

/// A test's own lapin connection and channel, for declaring and reading queues; panics on
/// failure, as a test helper should.
pub struct Client(pub QueueClient);

impl std::ops::Deref for Client {
    type Target = QueueClient;
    fn deref(&self) -> &QueueClient {
        &self.0
    }
}

impl Client {
    pub async fn connect() -> Self {
        Self(
            QueueClient::connect(&amqp_url())
                .await
                .expect("cannot reach RabbitMQ (set PUBLISHER_TEST_AMQP_URL)"),
        )
    }

    pub async fn declare_queue(&self, name: &str, args: FieldTable) {
        self.0.declare_queue(name, args).await.unwrap();
    }

    pub async fn drain(&self, queue: &str) -> Vec<publisher_core::Event> {
        self.0.drain(queue).await.unwrap()
    }

    pub async fn message_count(&self, queue: &str) -> u32 {
        self.0.message_count(queue).await.unwrap()
    }
}

pub async fn harness() -> Option<ProbeHarness<QueueProbe>> {
    let url = amqp()?;
    Some(harness_on(url))
}

fn harness_on(url: String) -> ProbeHarness<QueueProbe> {
    ProbeHarness::new(QueueProbe::new(url), || async {
        Ok(Box::new(
            AmqpPublisher::builder()
                .config(AmqpConfig::from_url(&amqp_url())?)
                .build()
                .await?,
        ) as Box<dyn Publisher>)
    })
    .with_via(|addr, timeouts| async move {
        let mut config = AmqpConfig::from_url(&url_via(addr))?;
        config.timeouts = timeouts;
        Ok(Box::new(AmqpPublisher::builder().config(config).build().await?) as Box<dyn Publisher>)
    })
    .with_own_broker(|| async {
        let node = RabbitNode::start().await?;
        let url = node.url();
        let open_url = url.clone();
        let harness = ProbeHarness::new(QueueProbe::durable(url), move || {
            let url = open_url.clone();
            async move {
                Ok(Box::new(
                    AmqpPublisher::builder()
                        .config(AmqpConfig::from_url(&url)?)
                        .build()
                        .await?,
                ) as Box<dyn Publisher>)
            }
        });
        Some(Box::new(OwnRabbit {
            node: tokio::sync::Mutex::new(node),
            harness,
        }) as Box<dyn OwnBroker>)
    })
    .with_own_cluster(|| async {
        OwnRabbitCluster::start()
            .await
            .map(|c| Box::new(c) as Box<dyn OwnCluster>)
    })
}

/// A RabbitMQ node of the test's own (its own node name, ports and data directory), for the
/// restart scenario. Killed (SIGKILL) and its directory removed on drop.
pub struct RabbitNode {
    pub name: String,
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitNode {
    /// Starts a node; `None` (saying why) when `rabbitmq-server` is not installed here.
    pub async fn start() -> Option<Self> {
        // Looked up on PATH, never run: `rabbitmq-server --help` starts a node when none runs.
        let installed = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("rabbitmq-server").is_file())
        });
        if !installed {
            println!("rabbitmq-server is not installed: no RabbitMQ node of the test's own");
            return None;
        }
        let id = publisher_core::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("publisher-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].").unwrap();
        // rabbitmq-server drops to the `rabbitmq` user when started as root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let mut node = Self {
            name: format!("publisher-test-{}@localhost", &id[id.len() - 12..]),
            port: publisher_core::testing::free_port(),
            dist_port: publisher_core::testing::free_port(),
            dir,
            child: None,
        };
        node.spawn().await;
        Some(node)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn spawn(&mut self) {
        let d = &self.dir;
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_MNESIA_DIR", d.join("mnesia").join("node"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("none"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("none.config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        self.await_started().await;
    }

    /// Waits (at most 90 s) until the node accepts an AMQP connection.
    pub async fn await_started(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            // Each attempt bounded: a connection the node accepts while it is still booting
            // can go unanswered, and lapin's handshake would wait for it forever.
            let url = self.url();
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                publisher_amqp::testing::QueueClient::connect(&url),
            );
            if matches!(attempt.await, Ok(Ok(_))) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the test's RabbitMQ node did not start within 90 s (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `rabbitmqctl` against this node, panicking when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.name])
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the node hard (SIGKILL to the Erlang VM), as a crash would.
    pub fn kill(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The restart scenario's broker: a [`RabbitNode`], durable queues, persistent messages.
pub struct OwnRabbit {
    node: tokio::sync::Mutex<RabbitNode>,
    harness: ProbeHarness<QueueProbe>,
}

#[publisher_core::async_trait]
impl OwnBroker for OwnRabbit {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    async fn restart(&self, down: Duration) {
        let mut node = self.node.lock().await;
        node.kill();
        tokio::time::sleep(down).await;
        node.spawn().await;
    }
}

/// Three [`RabbitNode`]s joined in one cluster (the second and third joined to the first).
pub struct RabbitCluster {
    nodes: tokio::sync::Mutex<Vec<RabbitNode>>,
    urls: Vec<String>,
}

impl RabbitCluster {
    /// Starts and joins three nodes; `None` (saying why) when RabbitMQ is not installed here.
    pub async fn start() -> Option<Self> {
        let first = RabbitNode::start().await?;
        let mut nodes = vec![first];
        for _ in 0..2 {
            let node = RabbitNode::start().await?;
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", &nodes[0].name]);
            node.ctl(&["start_app"]);
            node.await_started().await;
            nodes.push(node);
        }
        let status = nodes[0].ctl(&["cluster_status"]);
        for n in &nodes {
            assert!(
                status.contains(&n.name),
                "{} is not in the cluster: {status}",
                n.name
            );
        }
        let urls = nodes.iter().map(RabbitNode::url).collect();
        Some(Self {
            nodes: tokio::sync::Mutex::new(nodes),
            urls,
        })
    }

    /// `amqp://guest:guest@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/%2f`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .urls
            .iter()
            .map(|u| {
                let addr = url::Url::parse(u).expect("node url");
                format!("127.0.0.1:{}", addr.port().expect("port"))
            })
            .collect();
        format!("amqp://guest:guest@{}/%2f", hosts.join(","))
    }

    /// The `i`th node's own URL.
    pub fn node_url(&self, i: usize) -> String {
        self.urls[i].clone()
    }

    /// Kills node `i` hard (SIGKILL).
    pub async fn kill(&self, i: usize) {
        self.nodes.lock().await[i].kill();
    }
}

/// A three-node cluster for the node failure scenario: publishers list the three nodes (and
/// connect to the first), quorum queues declared through the third, which the probe reads;
/// the first node is killed.
pub struct OwnRabbitCluster {
    cluster: RabbitCluster,
    harness: ProbeHarness<QueueProbe>,
}

impl OwnRabbitCluster {
    pub async fn start() -> Option<Self> {
        let cluster = RabbitCluster::start().await?;
        let url = cluster.url();
        let harness = ProbeHarness::new(QueueProbe::quorum(cluster.node_url(2)), move || {
            let url = url.clone();
            async move {
                Ok(Box::new(
                    AmqpPublisher::builder()
                        .config(AmqpConfig::from_url(&url)?)
                        .build()
                        .await?,
                ) as Box<dyn Publisher>)
            }
        });
        Some(Self { cluster, harness })
    }
}

#[publisher_core::async_trait]
impl OwnCluster for OwnRabbitCluster {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    fn describe(&self) -> String {
        "cluster of 3 nodes (URL lists the 3), quorum queue, the node the publisher is \
         connected to killed"
            .into()
    }

    async fn fail_node(&self, _topic: &str) {
        self.cluster.kill(0).await;
    }
}

/// Runs `rabbitmqctl` when it is available (a local broker); `None` otherwise.
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn shared_counter() -> Arc<std::sync::atomic::AtomicUsize> {
    Arc::default()
}
