//! Shared test support: where Kafka is, and the conformance harness built from the crate's
//! `testing` probe.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use publisher_core::testing::{FaultProxy, Harness, OwnBroker, OwnCluster, ProbeHarness};
use publisher_core::{Event, Publisher, Timeouts};
use publisher_kafka::testing::{MockKafka, TopicProbe};
use publisher_kafka::{KafkaConfig, KafkaPublisher};

/// The broker the tests use (see [`publisher_kafka::testing::test_brokers`]): the variable,
/// the local default, or librdkafka's in-process mock cluster.
pub fn brokers() -> String {
    publisher_kafka::testing::test_brokers()
}

/// Whether the tests run on the embedded mock cluster, which cannot show some of a real
/// broker's behaviour (it creates any topic asked for, whatever its name).
pub fn on_mock() -> bool {
    publisher_kafka::testing::EmbeddedKafka::is(&brokers())
}

/// The tests' publishers create no topics (tests create theirs), so that an event to a topic
/// that does not exist is refused at once, on any broker.
pub fn config(brokers: &str) -> KafkaConfig {
    let mut cfg = KafkaConfig {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    cfg.properties
        .insert("allow.auto.create.topics".into(), "false".into());
    cfg
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    publisher_kafka::testing::create_topic(brokers, topic, partitions)
        .await
        .unwrap_or_else(|e| panic!("cannot create {topic} on {brokers}: {e}"));
}

pub async fn delete_topic(brokers: &str, topic: &str) {
    publisher_kafka::testing::delete_topic(brokers, topic).await;
}

pub async fn consume(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Event> {
    publisher_kafka::testing::consume(brokers, topic, n, timeout)
        .await
        .unwrap()
}

pub async fn harness() -> ProbeHarness<TopicProbe> {
    ProbeHarness::new(TopicProbe::new(brokers()).with_unroutable_topics(), || {
        std::future::ready(
            KafkaPublisher::builder()
                .config(config(&brokers()))
                .build()
                .map(|p| Box::new(p) as Box<dyn Publisher>),
        )
    })
    .with_own_broker(|| async {
        let tansu = Tansu::start(true).await?;
        Some(Box::new(tansu) as Box<dyn OwnBroker>)
    })
    // The connection fault scenarios keep nothing across a restart: tansu in memory, which
    // also recovers from the stall (its SQLite storage answers every record of a producer
    // whose epoch librdkafka bumped with an unknown error, and times out those of a new one).
    .with_proxied_broker(|| async {
        let tansu = Tansu::start(false).await?;
        Some(Box::new(tansu) as Box<dyn OwnBroker>)
    })
    .with_own_cluster(|| async { Some(Box::new(OwnMockCluster::start()) as Box<dyn OwnCluster>) })
}

/// Three brokers of librdkafka's mock cluster, of the test's own, topics with three replicas,
/// published to through a bootstrap list of all three: the node failure scenario moves the
/// leadership of every partition of its topic to another broker, then takes down the broker
/// that led the first partition.
pub struct OwnMockCluster {
    mock: MockKafka,
    harness: ProbeHarness<TopicProbe>,
}

impl OwnMockCluster {
    pub fn start() -> Self {
        let mock = MockKafka::start(3, 3);
        // `host:port,host:port,host:port`: the bootstrap list a user of several brokers gives.
        let brokers = mock.bootstrap().to_owned();
        assert_eq!(brokers.split(',').count(), 3, "{brokers}");
        let open = brokers.clone();
        let harness = ProbeHarness::new(TopicProbe::new(brokers), move || {
            std::future::ready(
                KafkaPublisher::builder()
                    .config(config(&open))
                    .build()
                    .map(|p| Box::new(p) as Box<dyn Publisher>),
            )
        });
        Self { mock, harness }
    }
}

#[publisher_core::async_trait]
impl OwnCluster for OwnMockCluster {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    fn describe(&self) -> String {
        "mock cluster of 3 brokers (bootstrap list of 3), every partition's leader moved off \
         a broker, then that broker down"
            .into()
    }

    async fn fail_node(&self, topic: &str) {
        let leaders = publisher_kafka::testing::leaders(self.mock.bootstrap(), topic)
            .await
            .expect("leaders");
        let first = leaders
            .iter()
            .find(|(p, _)| *p == 0)
            .map(|(_, l)| *l)
            .expect("partition 0");
        for (partition, leader) in &leaders {
            // Another broker, never the one taken down next.
            let next = (1..=3)
                .find(|b| b != leader && *b != first)
                .expect("three brokers");
            self.mock
                .move_leader(topic, *partition, next)
                .expect("move the leader");
        }
        self.mock.broker_down(first).expect("broker down");
    }

    fn no_duplicates(&self) -> bool {
        true
    }
}

/// A publisher to `brokers` with the scenario's `timeouts`. librdkafka must report a record's
/// failure before the publish timeout (the config refuses a `message_timeout` closer than 1 s
/// to it), and a new idempotent producer's first record takes tansu about 0.6 s, so a publish
/// timeout under 2 s is raised to 2 s, with `message_timeout` 1 s.
fn publisher_with(brokers: &str, timeouts: Timeouts) -> publisher_core::Result<Box<dyn Publisher>> {
    let publish = timeouts.publish.max(Duration::from_secs(2));
    let cfg = KafkaConfig {
        message_timeout: (publish - Duration::from_secs(1)).min(Duration::from_secs(30)),
        timeouts: Timeouts {
            publish,
            ..timeouts
        },
        ..config(brokers)
    };
    Ok(Box::new(KafkaPublisher::builder().config(cfg).build()?))
}

/// A tansu broker of the test's own: a process on a free port, behind a [`FaultProxy`] that
/// it advertises as its address, so that every client connection (bootstrap and produce)
/// passes the proxy. Data in SQLite when this tansu has the `libsql` feature (it then survives
/// a kill -9), in memory otherwise. Killed and its directory removed on drop.
pub struct Tansu {
    port: u16,
    proxy: Arc<FaultProxy>,
    dir: tempfile::TempDir,
    durable: bool,
    child: tokio::sync::Mutex<Option<Child>>,
    harness: ProbeHarness<TopicProbe>,
}

fn tansu_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

impl Tansu {
    /// Starts one, keeping its data in SQLite when `durable` (and this tansu can); `None`
    /// (saying why) when tansu is not installed.
    pub async fn start(durable: bool) -> Option<Self> {
        let Some(bin) = tansu_binary() else {
            println!("tansu is not installed: no Kafka broker of the test's own");
            return None;
        };
        let placeholder: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let proxy = Arc::new(FaultProxy::start(placeholder).await);
        let port = publisher_core::testing::free_port();
        proxy.set_upstream(SocketAddr::from(([127, 0, 0, 1], port)));
        let dir = tempfile::tempdir().expect("temporary directory");
        // tansu reads the path of a sqlite:// URL relative to its working directory.
        let sqlite = "sqlite://tansu.db".to_owned();
        let advertised = proxy.addr.to_string();
        let harness = ProbeHarness::new(
            TopicProbe::new(advertised.clone()).with_unroutable_topics(),
            {
                let brokers = advertised.clone();
                move || std::future::ready(publisher_with(&brokers, Timeouts::default()))
            },
        )
        .with_via(|addr, timeouts| std::future::ready(publisher_with(&addr.to_string(), timeouts)));
        let mut tansu = Self {
            port,
            proxy,
            dir,
            durable: true,
            child: tokio::sync::Mutex::new(None),
            harness,
        };
        let started = if durable {
            tansu.spawn(&bin, &sqlite).await
        } else {
            tansu.durable = false;
            tansu.spawn(&bin, "memory://tansu/").await
        };
        let child = match started {
            Some(c) => c,
            None if !durable => return None,
            None => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "tansu cannot keep its data in SQLite under CI=true: install it with \
                     `cargo install tansu --locked --features dynostore,libsql`"
                );
                println!("tansu has no SQLite storage here: its own broker keeps data in memory");
                tansu.durable = false;
                tansu.spawn(&bin, "memory://tansu/").await?
            }
        };
        *tansu.child.get_mut() = Some(child);
        Some(tansu)
    }

    fn engine(&self) -> String {
        if self.durable {
            "sqlite://tansu.db".to_owned()
        } else {
            "memory://tansu/".to_owned()
        }
    }

    /// Starts the process and waits until its port answers; `None` when it exits first (a
    /// storage engine this tansu was built without, or a port taken meanwhile). Killed if
    /// this panics.
    async fn spawn(&self, bin: &PathBuf, engine: &str) -> Option<Child> {
        let child = Command::new(bin)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{}", self.port)])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", self.proxy.addr),
            ])
            .args(["--storage-engine", engine])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let mut guard = KillOnDrop(Some(child));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if guard.exited() {
                return None;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // Ours, not another process that took the port: still running a moment later.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return if guard.exited() { None } else { guard.0.take() };
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not start within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A child process killed when this is dropped (a panicking test included).
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.get_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[publisher_core::async_trait]
impl OwnBroker for Tansu {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    async fn restart(&self, down: Duration) {
        let mut child = self.child.lock().await;
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        tokio::time::sleep(down).await;
        let bin = tansu_binary().expect("tansu");
        *child = Some(
            self.spawn(&bin, &self.engine())
                .await
                .expect("tansu restarts"),
        );
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn proxy(&self) -> Option<Arc<FaultProxy>> {
        Some(self.proxy.clone())
    }
}
