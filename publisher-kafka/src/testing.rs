//! Read-back probe for the conformance suite (feature `testing`): topics created with the admin
//! API before publishing, read from the beginning of every partition with an rdkafka consumer.

use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use publisher_core::testing::{BadEvent, Broker, Intent, Probe, Received, unique_name};
use publisher_core::{Error, ErrorKind, Event, Result, async_trait};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::BACKEND;
use crate::mapping::event_from_message;

fn probe_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Other, BACKEND, msg.into())
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| probe_error(format!("admin client: {e}")))
}

fn consumer(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("publisher-test-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| probe_error(format!("consumer: {e}")))
}

/// librdkafka's in-process mock cluster (a real implementation of the Kafka protocol), started
/// once per process on first use and kept until the process exits: the tests' Kafka where no
/// broker answers. Topics are created through [`create_topic`] (the mock has no admin API).
#[derive(Debug)]
pub struct EmbeddedKafka {
    mock: MockKafka,
}

static EMBEDDED: OnceLock<EmbeddedKafka> = OnceLock::new();

impl EmbeddedKafka {
    /// The process's mock cluster (three brokers, topics with one replica), started on first
    /// call.
    ///
    /// # Panics
    /// When librdkafka cannot start it.
    pub fn get() -> &'static EmbeddedKafka {
        EMBEDDED.get_or_init(|| EmbeddedKafka {
            mock: MockKafka::start(3, 1),
        })
    }

    /// Its bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        self.mock.bootstrap()
    }

    /// Whether `brokers` is this process's mock cluster.
    pub fn is(brokers: &str) -> bool {
        EMBEDDED.get().is_some_and(|m| m.mock.bootstrap == brokers)
    }
}

/// What a [`MockKafka`]'s thread is asked to do.
enum MockRequest {
    Create(String, i32),
    Leader(String, i32, i32),
    Down(i32),
}

type MockReply = mpsc::Sender<std::result::Result<(), String>>;

/// Where a mock cluster's thread takes requests.
type MockRequests = mpsc::Sender<(MockRequest, MockReply)>;

/// The mock clusters of this process by bootstrap address, for [`create_topic`].
static MOCKS: Mutex<Vec<(String, MockRequests)>> = Mutex::new(Vec::new());

/// A mock cluster of librdkafka's (`brokers` brokers, topics created with `replication`
/// replicas) on a thread of its own, which serves topic creation and the faults a test asks
/// for (a partition's leader moved, a broker taken down). Ends when dropped.
#[derive(Debug)]
pub struct MockKafka {
    bootstrap: String,
}

impl MockKafka {
    /// Starts one.
    ///
    /// # Panics
    /// When librdkafka cannot start it.
    pub fn start(brokers: i32, replication: i32) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (requests, incoming) = mpsc::channel::<(MockRequest, MockReply)>();
        std::thread::Builder::new()
            .name("kafka-mock-cluster".into())
            .spawn(move || {
                let cluster = rdkafka::mocking::MockCluster::new(brokers)
                    .expect("librdkafka's mock cluster starts");
                let _ = ready_tx.send(cluster.bootstrap_servers());
                // Serves requests until every sender is gone (the registry's at drop).
                for (request, reply) in incoming {
                    let r = match request {
                        MockRequest::Create(topic, partitions) => {
                            cluster.create_topic(&topic, partitions, replication)
                        }
                        MockRequest::Leader(topic, partition, broker) => {
                            cluster.partition_leader(&topic, partition, Some(broker))
                        }
                        MockRequest::Down(broker) => cluster.broker_down(broker),
                    };
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                }
            })
            .expect("a thread for the mock cluster");
        let bootstrap = ready_rx.recv().expect("the mock cluster's address");
        MOCKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((bootstrap.clone(), requests));
        MockKafka { bootstrap }
    }

    /// Its bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Moves the leadership of `topic`'s `partition` to broker `broker` (ids from 1).
    ///
    /// # Errors
    /// When the mock refuses.
    pub fn move_leader(&self, topic: &str, partition: i32, broker: i32) -> Result<()> {
        ask_mock(
            &self.bootstrap,
            MockRequest::Leader(topic.into(), partition, broker),
        )
    }

    /// Takes broker `broker` down: its connections close and it accepts no more.
    ///
    /// # Errors
    /// When the mock refuses.
    pub fn broker_down(&self, broker: i32) -> Result<()> {
        ask_mock(&self.bootstrap, MockRequest::Down(broker))
    }

    /// Whether `brokers` is one of this process's mock clusters.
    pub fn is(brokers: &str) -> bool {
        MOCKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(b, _)| b == brokers)
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        MOCKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(b, _)| *b != self.bootstrap);
    }
}

fn ask_mock(bootstrap: &str, request: MockRequest) -> Result<()> {
    let sender = MOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(b, _)| b == bootstrap)
        .map(|(_, s)| s.clone())
        .ok_or_else(|| probe_error("the mock cluster is gone"))?;
    let (tx, rx) = mpsc::channel();
    sender
        .send((request, tx))
        .map_err(|_| probe_error("the mock cluster's thread is gone"))?;
    rx.recv()
        .map_err(|_| probe_error("the mock cluster's thread is gone"))?
        .map_err(|e| probe_error(format!("the mock cluster refused: {e}")))
}

/// The leader of each partition of `topic`, by the brokers' metadata.
///
/// # Errors
/// When the metadata cannot be read.
pub async fn leaders(brokers: &str, topic: &str) -> Result<Vec<(i32, i32)>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&brokers)?;
        let m = c
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| probe_error(format!("metadata of {topic}: {e}")))?;
        Ok(m.topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())))
            .collect())
    })
    .await
    .map_err(|e| probe_error(format!("probe task: {e}")))?
}

/// The variable that points the tests at a Kafka broker.
pub const BROKERS_VAR: &str = "PUBLISHER_TEST_KAFKA_BROKERS";

/// The tests' Kafka by the workspace's rule (`publisher_core::testing::find_broker`:
/// [`BROKERS_VAR`], which must answer, else `127.0.0.1:9092`, else a container with
/// `publisher-core/testcontainers`), else, outside CI, the process's [`EmbeddedKafka`] (said
/// once on the terminal), so that the Kafka suites run everywhere.
///
/// # Panics
/// Under CI with no broker, and when the variable points at nothing.
pub fn test_brokers() -> String {
    static FOUND: OnceLock<String> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let why = match publisher_core::testing::find_broker(Broker::Kafka) {
                Ok(brokers) => return brokers,
                Err(why) => why,
            };
            assert!(
                !publisher_core::testing::is_ci(),
                "no Kafka broker: {why}; under CI=true the tests need a real one \
                 (set {BROKERS_VAR})"
            );
            let embedded = EmbeddedKafka::get();
            publisher_core::testing::notice(&format!(
                "Kafka tests run on librdkafka's in-process mock cluster ({}): {why} (set \
                 {BROKERS_VAR} to use a broker)",
                embedded.bootstrap()
            ));
            embedded.bootstrap().to_owned()
        })
        .clone()
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits until its metadata
/// shows them.
///
/// # Errors
/// When the broker refuses or the topic does not appear within 15 s.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    if MockKafka::is(brokers) {
        ask_mock(brokers, MockRequest::Create(topic.to_owned(), partitions))?;
    } else {
        create_with_admin(brokers, topic, partitions).await?;
    }
    wait_for_partitions(brokers, topic, partitions).await
}

async fn create_with_admin(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin(brokers)?
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| probe_error(format!("creating topic {topic}: {e}")))?;
    for r in results {
        r.map_err(|(name, code)| probe_error(format!("creating topic {name}: {code:?}")))?;
    }
    Ok(())
}

async fn wait_for_partitions(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&brokers)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(m) = c.fetch_metadata(Some(&topic), Duration::from_secs(2))
                && m.topics().first().is_some_and(|t| {
                    t.error().is_none() && t.partitions().len() == partitions as usize
                })
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(probe_error(format!("topic {topic} never appeared")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .map_err(|e| probe_error(format!("probe task: {e}")))?
}

/// Deletes `topic` (ignoring errors).
pub async fn delete_topic(brokers: &str, topic: &str) {
    // The mock cluster has no admin API (an admin request would wait out its timeout); its
    // topics end with it.
    if MockKafka::is(brokers) {
        return;
    }
    if let Ok(a) = admin(brokers) {
        let _ = a.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// Reads `topic` from the beginning of every partition until it holds `n` events or `timeout`
/// passes, then whatever else is already there (so duplicates show). In partition order.
///
/// # Errors
/// When the topic cannot be read or a record does not decode.
pub async fn consume(
    brokers: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Event>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&brokers)?;
        let metadata = c
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| probe_error(format!("metadata of {topic}: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .map_err(|e| probe_error(e.to_string()))?;
            }
        }
        c.assign(&tpl).map_err(|e| probe_error(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => out.push(event_from_message(&msg)?),
                // A broker of the list that is down (the node failure scenario): the consumer
                // reads from the others.
                Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                    RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                ))) => {}
                Some(Err(e)) => return Err(probe_error(format!("consumer: {e}"))),
                None => {}
            }
        }
        let last = Instant::now() + Duration::from_secs(5);
        while Instant::now() < last {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => out.push(event_from_message(&msg)?),
                Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                    RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                ))) => {}
                _ => break,
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| probe_error(format!("probe task: {e}")))?
}

/// Creates a topic (3 partitions) per scenario and reads it back with a consumer.
#[derive(Debug, Clone)]
pub struct TopicProbe {
    brokers: String,
    unroutable: bool,
}

impl TopicProbe {
    /// A probe on the brokers `host:port[,…]`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            unroutable: false,
        }
    }

    /// The publishers under test create no topics (`allow.auto.create.topics=false`, or a
    /// broker with auto-creation off): events to a topic that does not exist are the
    /// unroutable ones of the history scenarios.
    #[must_use]
    pub fn with_unroutable_topics(mut self) -> Self {
        self.unroutable = true;
        self
    }
}

#[async_trait]
impl Probe for TopicProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        let topic = unique_name(&format!("publisher-test.{hint}"));
        create_topic(&self.brokers, &topic, 3).await?;
        Ok(topic)
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(consume(&self.brokers, topic, n, timeout)
            .await?
            .iter()
            .map(Received::from)
            .collect())
    }

    async fn cleanup(&self, topic: &str) {
        delete_topic(&self.brokers, topic).await;
    }

    /// Oversized: one byte over the default `max_message_bytes`, refused before sending
    /// (`InvalidEvent`). Invalid: an empty topic. Unroutable (only
    /// [`with_unroutable_topics`](Self::with_unroutable_topics)): a topic that does not exist,
    /// `Rejected`.
    fn bad_event(&self, intent: Intent, topic: &str, n: usize) -> Option<BadEvent> {
        match intent {
            Intent::Unroutable if self.unroutable => Some(BadEvent {
                event: Event::text(format!("{topic}.absent"), format!("unroutable {n}")),
                expect: ErrorKind::Rejected,
            }),
            Intent::Oversized => Some(BadEvent {
                event: Event::new(
                    topic.to_owned(),
                    vec![b'x'; crate::KafkaConfig::default().max_message_bytes + 1],
                ),
                expect: ErrorKind::InvalidEvent,
            }),
            _ => publisher_core::testing::invalid_event(intent, n),
        }
    }
}
