//! The conformance suite every backend runs (feature `testing`).
//!
//! A backend's `tests/conformance.rs` implements [`Harness`] (how to open a publisher, prepare a
//! topic, and read back what reached the broker with the broker's own client) and expands
//! [`conformance_tests!`](crate::conformance_tests) to get one `#[tokio::test]` per scenario.
//! A third-party backend can run the same suite.
//!
//! Beside the conformance scenarios, the `history_*` scenarios record what every publish
//! returned and check it against what the broker holds ([`History`], [`Verdict`]): mixed good
//! and bad events at concurrency 1, 64 and 1,024 and in batches, one oversized event among
//! small ones, a connection cut, a stall past the publish timeout, a close deadline passing
//! with publishes in flight, a broker restart, and a node of a cluster failing. Each prints one
//! line per run (`history <backend> …: events, ok, found, lost, …`). A harness says which it
//! cannot carry through [`Harness::bad_event`], [`Harness::broker_addr`],
//! [`Harness::own_broker`] and [`Harness::own_cluster`].
//!
//! ```ignore
//! struct MyHarness { /* broker client for read-back */ }
//! #[async_trait::async_trait]
//! impl publisher_core::testing::Harness for MyHarness { /* … */ }
//! async fn harness() -> MyHarness { MyHarness { /* … */ } }
//! publisher_core::conformance_tests!(harness);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

pub use crate::testing_brokers::{
    Broker, answers, configured_or_local, find_broker, is_ci, notice, report_skips, skip,
};
pub use crate::testing_history::{
    BadEvent, Faults, History, Intent, Record, Verdict, publish_batches, publish_each,
};
pub use crate::testing_proxy::{FaultProxy, Mode as ProxyMode};

use crate::{
    Error, ErrorKind, Event, HealthStatus, MemoryPublisher, MemoryStore, Publisher, Result,
    Timeouts,
};

/// What the backend under test can carry and how generous the suite should be.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Capabilities {
    /// The event id reaches the consumer.
    pub preserves_id: bool,
    /// The key reaches the consumer.
    pub preserves_key: bool,
    /// Headers reach the consumer.
    pub preserves_headers: bool,
    /// The content type reaches the consumer.
    pub preserves_content_type: bool,
    /// How long the probe waits for events to arrive.
    pub read_timeout: Duration,
    /// Publishes in flight at once in the concurrency scenario.
    pub concurrency: usize,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            preserves_id: true,
            preserves_key: true,
            preserves_headers: true,
            preserves_content_type: true,
            read_timeout: Duration::from_secs(15),
            concurrency: 1000,
        }
    }
}

/// One event as the broker's own client read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The event id, when the backend carries it.
    pub id: Option<Uuid>,
    /// The key, when the backend carries it.
    pub key: Option<String>,
    /// The headers (without the backend's own metadata fields).
    pub headers: BTreeMap<String, String>,
    /// The payload bytes.
    pub payload: Bytes,
    /// The content type, when the backend carries it.
    pub content_type: Option<String>,
}

impl From<&Event> for Received {
    fn from(e: &Event) -> Self {
        Self {
            id: Some(e.id()),
            key: e.key().map(str::to_owned),
            headers: e.headers().clone(),
            payload: e.payload().clone(),
            content_type: e.content_type().map(str::to_owned),
        }
    }
}

/// How the suite talks to a backend under test.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new, open publisher.
    async fn publisher(&self) -> Result<Box<dyn Publisher>>;

    /// A topic unique to this run, prepared so that events published to it can be read back
    /// (a queue bound, a subscription opened, a topic created).
    async fn topic(&self, hint: &str) -> Result<String>;

    /// Reads what reached the broker on `topic`, waiting until it holds at least `n` events or
    /// `timeout` passes, and returns everything read (possibly more than `n`).
    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>>;

    /// Removes what [`Harness::topic`] created.
    async fn cleanup(&self, topic: &str);

    /// What the backend can carry.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// An event meant to fail as `intent` says, numbered `n`, for a history whose good events
    /// go to `topic`; `None` when the backend cannot make one (scenarios then leave that intent
    /// out, saying so). The default makes [`Intent::Invalid`] events only.
    fn bad_event(&self, intent: Intent, topic: &str, n: usize) -> Option<BadEvent> {
        let _ = topic;
        invalid_event(intent, n)
    }

    /// Where the broker listens, for the fault scenarios that put a [`FaultProxy`] before it;
    /// `None` (the default) when the backend has no connection to cut.
    fn broker_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// A new publisher that reaches the broker through `addr` (a proxy before
    /// [`Harness::broker_addr`]) with `timeouts`.
    async fn publisher_via(
        &self,
        addr: SocketAddr,
        timeouts: Timeouts,
    ) -> Result<Box<dyn Publisher>> {
        let _ = (addr, timeouts);
        Err(Error::new(
            ErrorKind::Other,
            "testing",
            "this harness cannot open a publisher through a proxy",
        ))
    }

    /// A broker of the test's own (a process on a free port, never a shared service) that the
    /// restart scenario may stop and start; `None` (the default) when the backend cannot start
    /// one here.
    async fn own_broker(&self) -> Option<Box<dyn OwnBroker>> {
        None
    }

    /// A broker of the test's own for the connection fault scenarios when the harness has no
    /// [`Harness::broker_addr`] (one whose [`OwnBroker::proxy`] its clients go through); it
    /// need not keep data across restarts. Default: [`Harness::own_broker`].
    async fn proxied_broker(&self) -> Option<Box<dyn OwnBroker>> {
        self.own_broker().await
    }

    /// The `n`th kind of cluster of the test's own (several broker processes on free ports)
    /// for the node failure scenario, started now; `None` past the last (the default: none).
    async fn own_cluster(&self, n: usize) -> Option<Box<dyn OwnCluster>> {
        let _ = n;
        None
    }
}

/// A cluster of the test's own, of which one node can fail (see [`history_node_failure`]).
#[async_trait]
pub trait OwnCluster: Send + Sync {
    /// Publishers (reaching the cluster the way a user would: every node listed, or a
    /// bootstrap list) and probe on this cluster.
    fn harness(&self) -> &dyn Harness;

    /// What fails, for the scenario's line (`cluster of 6, a master killed, its replica
    /// promoted`).
    fn describe(&self) -> String;

    /// Makes one node fail as a crash would (the one that holds `topic`'s events, where
    /// that is known), and returns once the cluster has noticed (a replica promoted, a
    /// leader moved), or after the test's own bound.
    async fn fail_node(&self, topic: &str);

    /// Whether the backend promises no duplicate across this failure (Kafka's idempotent
    /// producer): the scenario then fails on any copy, explained or not. Default: false.
    fn no_duplicates(&self) -> bool {
        false
    }
}

/// What a [`conformance_tests!`](crate::conformance_tests) harness function returns: a
/// harness, or `None` when its broker is missing (each test then returns, after
/// [`skip`] said why once).
pub trait MaybeHarness {
    /// The harness.
    type Harness: Harness;
    /// The harness, if there is one.
    fn into_harness(self) -> Option<Self::Harness>;
}

impl<H: Harness> MaybeHarness for H {
    type Harness = H;
    fn into_harness(self) -> Option<H> {
        Some(self)
    }
}

impl<H: Harness> MaybeHarness for Option<H> {
    type Harness = H;
    fn into_harness(self) -> Option<H> {
        self
    }
}

/// A broker a test started for itself, with a harness that publishes to and reads from it.
#[async_trait]
pub trait OwnBroker: Send + Sync {
    /// Publishers and probe on this broker.
    fn harness(&self) -> &dyn Harness;

    /// Stops the broker as a crash would, keeps it down for `down`, and starts it again on
    /// the same address with what it had made durable.
    async fn restart(&self, down: Duration);

    /// A proxy every client of this broker goes through, because the broker advertises it as
    /// its own address (Kafka clients connect where the broker's metadata tells them, so a
    /// proxy put before the bootstrap address alone would be bypassed). The connection fault
    /// scenarios use it when the harness has no [`Harness::broker_addr`]. Default: none.
    fn proxy(&self) -> Option<Arc<FaultProxy>> {
        None
    }

    /// Whether the broker keeps what it acknowledged across [`OwnBroker::restart`]; the
    /// restart scenario is not carried by one that does not (a broker storing in memory).
    /// Default: true.
    fn durable(&self) -> bool {
        true
    }
}

/// The default [`Harness::bad_event`]: an [`Intent::Invalid`] event (an empty topic, which
/// every backend refuses with `InvalidEvent`), nothing for other intents.
pub fn invalid_event(intent: Intent, n: usize) -> Option<BadEvent> {
    (intent == Intent::Invalid).then(|| BadEvent {
        event: Event::text("", format!("invalid {n} {}", Uuid::now_v7())),
        expect: ErrorKind::InvalidEvent,
    })
}

/// The broker-specific half of a [`Harness`]: prepares topics and reads back with the broker's
/// own client. Pair it with any way of opening publishers in a [`ProbeHarness`], so that the
/// same probe proves a backend built directly and one built through a facade.
#[async_trait]
pub trait Probe: Send + Sync {
    /// As [`Harness::topic`].
    async fn topic(&self, hint: &str) -> Result<String>;
    /// As [`Harness::read`].
    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>>;
    /// As [`Harness::cleanup`].
    async fn cleanup(&self, topic: &str);
    /// As [`Harness::capabilities`].
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// As [`Harness::bad_event`].
    fn bad_event(&self, intent: Intent, topic: &str, n: usize) -> Option<BadEvent> {
        let _ = topic;
        invalid_event(intent, n)
    }
    /// As [`Harness::broker_addr`].
    fn broker_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// Opens a new publisher for the suite.
pub type PublisherFactory =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<Box<dyn Publisher>>> + Send + Sync>;

/// Opens a new publisher through an address, with timeouts (see [`Harness::publisher_via`]).
pub type ViaFactory = Box<
    dyn Fn(SocketAddr, Timeouts) -> futures::future::BoxFuture<'static, Result<Box<dyn Publisher>>>
        + Send
        + Sync,
>;

/// Starts a broker of the test's own (see [`Harness::own_broker`]).
pub type OwnBrokerFactory =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Option<Box<dyn OwnBroker>>> + Send + Sync>;

/// Starts a cluster of the test's own (see [`ProbeHarness::with_own_cluster`]).
pub type OwnClusterFactory =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Option<Box<dyn OwnCluster>>> + Send + Sync>;

/// A [`Harness`] made of a [`Probe`] and a function that opens publishers.
pub struct ProbeHarness<P> {
    probe: P,
    factory: PublisherFactory,
    via: Option<ViaFactory>,
    own: Option<OwnBrokerFactory>,
    proxied: Option<OwnBrokerFactory>,
    clusters: Vec<OwnClusterFactory>,
}

impl<P> std::fmt::Debug for ProbeHarness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeHarness").finish_non_exhaustive()
    }
}

impl<P: Probe> ProbeHarness<P> {
    /// Reads back with `probe`, opens publishers with `open`.
    pub fn new<F, Fut>(probe: P, open: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Box<dyn Publisher>>> + Send + 'static,
    {
        use futures::FutureExt;
        Self {
            probe,
            factory: Box::new(move || open().boxed()),
            via: None,
            own: None,
            proxied: None,
            clusters: Vec::new(),
        }
    }

    /// Opens publishers through an address for the fault scenarios.
    pub fn with_via<F, Fut>(mut self, open: F) -> Self
    where
        F: Fn(SocketAddr, Timeouts) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Box<dyn Publisher>>> + Send + 'static,
    {
        use futures::FutureExt;
        self.via = Some(Box::new(move |addr, timeouts| open(addr, timeouts).boxed()));
        self
    }

    /// Starts brokers of the test's own for the restart scenario.
    pub fn with_own_broker<F, Fut>(mut self, start: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Box<dyn OwnBroker>>> + Send + 'static,
    {
        use futures::FutureExt;
        self.own = Some(Box::new(move || start().boxed()));
        self
    }

    /// Starts brokers of the test's own for the connection fault scenarios (see
    /// [`Harness::proxied_broker`]).
    pub fn with_proxied_broker<F, Fut>(mut self, start: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Box<dyn OwnBroker>>> + Send + 'static,
    {
        use futures::FutureExt;
        self.proxied = Some(Box::new(move || start().boxed()));
        self
    }

    /// Starts clusters of the test's own for the node failure scenario; call once per kind
    /// of cluster (they are started one after the other, each when its turn comes).
    pub fn with_own_cluster<F, Fut>(mut self, start: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Box<dyn OwnCluster>>> + Send + 'static,
    {
        use futures::FutureExt;
        self.clusters.push(Box::new(move || start().boxed()));
        self
    }

    /// The probe.
    pub fn probe(&self) -> &P {
        &self.probe
    }
}

#[async_trait]
impl<P: Probe> Harness for ProbeHarness<P> {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        (self.factory)().await
    }
    async fn topic(&self, hint: &str) -> Result<String> {
        self.probe.topic(hint).await
    }
    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.probe.read(topic, n, timeout).await
    }
    async fn cleanup(&self, topic: &str) {
        self.probe.cleanup(topic).await;
    }
    fn capabilities(&self) -> Capabilities {
        self.probe.capabilities()
    }
    fn bad_event(&self, intent: Intent, topic: &str, n: usize) -> Option<BadEvent> {
        self.probe.bad_event(intent, topic, n)
    }
    fn broker_addr(&self) -> Option<SocketAddr> {
        self.via.as_ref().and(self.probe.broker_addr())
    }
    async fn publisher_via(
        &self,
        addr: SocketAddr,
        timeouts: Timeouts,
    ) -> Result<Box<dyn Publisher>> {
        match &self.via {
            Some(open) => open(addr, timeouts).await,
            None => Err(Error::new(
                ErrorKind::Other,
                "testing",
                "this harness cannot open a publisher through a proxy",
            )),
        }
    }
    async fn own_broker(&self) -> Option<Box<dyn OwnBroker>> {
        match &self.own {
            Some(start) => start().await,
            None => None,
        }
    }
    async fn proxied_broker(&self) -> Option<Box<dyn OwnBroker>> {
        match &self.proxied {
            Some(start) => start().await,
            None => self.own_broker().await,
        }
    }
    async fn own_cluster(&self, n: usize) -> Option<Box<dyn OwnCluster>> {
        match self.clusters.get(n) {
            Some(start) => start().await,
            None => None,
        }
    }
}

/// The socket address a broker URL names (`redis://h:6379`, `amqp://u:p@h/%2f`), with
/// `default_port` when the URL has none; `None` when it does not parse or resolve.
pub fn url_addr(url: &str, default_port: u16) -> Option<SocketAddr> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = url.port().unwrap_or(default_port);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()?
        .next()
}

/// `url` with its host and port replaced by `addr` (to reach a broker through a proxy).
pub fn url_via(url: &str, addr: SocketAddr) -> Option<String> {
    let mut url = url::Url::parse(url).ok()?;
    url.set_ip_host(addr.ip()).ok()?;
    url.set_port(Some(addr.port())).ok()?;
    Some(url.to_string())
}

/// A free TCP port on 127.0.0.1 (for a broker a test starts of its own).
///
/// # Panics
/// When no local port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a local port")
        .port()
}

/// A topic name unique to this process and call: `{prefix}.{uuid}` (valid for every backend).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}.{}", Uuid::now_v7().simple())
}

fn sample_event(topic: &str, i: usize) -> Event {
    Event::json(
        topic,
        &serde_json::json!({ "n": i, "text": "conformance ✓" }),
    )
    .expect("json")
    .with_key(format!("key-{}", i % 7))
    .with_header("x-scenario", "conformance")
    .with_header("x-index", i.to_string())
}

async fn publisher(h: &dyn Harness) -> Box<dyn Publisher> {
    h.publisher()
        .await
        .expect("harness could not open a publisher")
}

async fn read(h: &dyn Harness, topic: &str, n: usize) -> Vec<Received> {
    h.read(topic, n, h.capabilities().read_timeout)
        .await
        .expect("probe could not read back")
}

fn assert_matches(caps: &Capabilities, sent: &Event, got: &Received) {
    assert_eq!(got.payload, *sent.payload(), "payload changed in transit");
    if caps.preserves_id {
        assert_eq!(got.id, Some(sent.id()), "event id changed in transit");
    }
    if caps.preserves_key {
        assert_eq!(got.key.as_deref(), sent.key(), "key changed in transit");
    }
    if caps.preserves_headers {
        assert_eq!(&got.headers, sent.headers(), "headers changed in transit");
    }
    if caps.preserves_content_type {
        assert_eq!(
            got.content_type.as_deref(),
            sent.content_type(),
            "content type changed in transit"
        );
    }
}

/// Publish one event and read it back with id, key, headers, content type and payload intact;
/// the receipt names the event.
pub async fn publish_and_read_back(h: &dyn Harness) {
    let caps = h.capabilities();
    let topic = h.topic("read-back").await.expect("topic");
    let p = publisher(h).await;
    let event = sample_event(&topic, 1);
    let receipt = p.publish(event.clone()).await.expect("publish");
    assert_eq!(receipt.event_id, event.id());
    assert_eq!(receipt.topic, topic);
    let got = read(h, &topic, 1).await;
    assert_eq!(got.len(), 1, "expected exactly one event, read {got:?}");
    assert_matches(&caps, &event, &got[0]);
    // Raw bytes that are not UTF-8 survive too.
    let raw = Event::new(topic.clone(), vec![0u8, 159, 146, 150, 255]);
    p.publish(raw.clone()).await.expect("publish raw bytes");
    let got = read(h, &topic, 2).await;
    assert!(
        got.iter().any(|r| r.payload == *raw.payload()),
        "binary payload not read back intact"
    );
    p.close().await.expect("close");
    h.cleanup(&topic).await;
}

/// A batch returns one result per event in input order; an invalid event in the middle fails
/// alone (naming the field) and every other event arrives.
pub async fn batch_results_per_event(h: &dyn Harness) {
    let caps = h.capabilities();
    let topic = h.topic("batch").await.expect("topic");
    let p = publisher(h).await;
    let mut events: Vec<Event> = (0..20).map(|i| sample_event(&topic, i)).collect();
    events.insert(10, Event::text("", "no topic"));
    let outcome = p.publish_batch(events.clone()).await;
    assert_eq!(outcome.len(), 21);
    for (i, (r, e)) in outcome.results().iter().zip(&events).enumerate() {
        if i == 10 {
            let err = r.as_ref().expect_err("empty topic must fail");
            assert_eq!(err.kind(), ErrorKind::InvalidEvent, "{err}");
            assert_eq!(err.field(), Some("topic"));
        } else {
            let receipt = r
                .as_ref()
                .unwrap_or_else(|e| panic!("event {i} failed: {e}"));
            assert_eq!(receipt.event_id, e.id(), "result {i} is not for event {i}");
        }
    }
    assert_eq!(outcome.succeeded(), 20);
    let got = read(h, &topic, 20).await;
    assert_eq!(got.len(), 20, "read back {} of 20", got.len());
    for sent in events.iter().filter(|e| !e.topic().is_empty()) {
        let r = got
            .iter()
            .find(|r| r.payload == *sent.payload())
            .unwrap_or_else(|| panic!("event {} not read back", sent.id()));
        assert_matches(&caps, sent, r);
    }
    let empty = p.publish_batch(Vec::new()).await;
    assert!(empty.is_empty());
    p.close().await.expect("close");
    h.cleanup(&topic).await;
}

/// Many concurrent publishes: every one is acknowledged and each arrives exactly once.
pub async fn concurrent_publishes_all_delivered(h: &dyn Harness) {
    let n = h.capabilities().concurrency;
    let topic = h.topic("concurrent").await.expect("topic");
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let p = p.clone();
        let event = sample_event(&topic, i);
        tasks.spawn(async move { (event.payload().clone(), p.publish(event).await) });
    }
    let mut sent = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let (payload, r) = r.expect("task");
        r.unwrap_or_else(|e| panic!("concurrent publish failed: {e}"));
        sent.insert(payload);
    }
    let got = read(h, &topic, n).await;
    assert_eq!(got.len(), n, "read back {} of {n}", got.len());
    let got: HashSet<Bytes> = got.into_iter().map(|r| r.payload).collect();
    assert_eq!(got.len(), n, "duplicates read back");
    assert_eq!(got, sent, "read back differs from what was acknowledged");
    p.close().await.expect("close");
    h.cleanup(&topic).await;
}

/// `close` twice and from 16 tasks at once: all get the same report, no error.
pub async fn close_is_idempotent_and_concurrent(h: &dyn Harness) {
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let p = p.clone();
        tasks.spawn(async move { p.close().await });
    }
    let mut reports = Vec::new();
    while let Some(r) = tasks.join_next().await {
        reports.push(r.expect("task").expect("close"));
    }
    assert!(
        reports.windows(2).all(|w| w[0] == w[1]),
        "concurrent closes got different reports: {reports:?}"
    );
    let again = p.close().await.expect("second close must be Ok");
    assert_eq!(again, reports[0]);
    assert!(p.is_closed());
}

/// After `close`, `publish` and `publish_batch` fail with `Closed` and `health` is unhealthy.
pub async fn publish_after_close_is_closed(h: &dyn Harness) {
    let topic = h.topic("after-close").await.expect("topic");
    let p = publisher(h).await;
    p.close().await.expect("close");
    let err = p
        .publish(sample_event(&topic, 0))
        .await
        .expect_err("publish after close must fail");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(!err.is_retryable());
    let outcome = p
        .publish_batch(vec![sample_event(&topic, 1), sample_event(&topic, 2)])
        .await;
    assert_eq!(outcome.len(), 2);
    for (_, e) in outcome.errors() {
        assert_eq!(e.kind(), ErrorKind::Closed);
    }
    assert_eq!(outcome.failed(), 2);
    assert_eq!(p.health().await.status, HealthStatus::Unhealthy);
    let got = h
        .read(&topic, 1, Duration::from_millis(500))
        .await
        .expect("read");
    assert!(got.is_empty(), "a refused publish reached the broker");
    h.cleanup(&topic).await;
}

/// Close while publishes are in flight (a steady load from 100 tasks, closed once 50 were
/// acknowledged): every publish that returned Ok is at the broker, the others failed with a
/// typed error, nothing arrives twice, and the close report proves something was in flight when
/// close began (the load is retried a few times until it was).
pub async fn close_during_publishes_loses_nothing(h: &dyn Harness) {
    for attempt in 1..=5 {
        if close_under_load(h).await {
            return;
        }
        eprintln!(
            "close_during_publishes_loses_nothing: nothing was in flight at close (attempt {attempt}), again"
        );
    }
    panic!(
        "in 5 attempts, close never began while a publish was in flight: the scenario proves nothing"
    );
}

/// One attempt of [`close_during_publishes_loses_nothing`]; whether something was in flight.
async fn close_under_load(h: &dyn Harness) -> bool {
    let topic = h.topic("close-in-flight").await.expect("topic");
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..100 {
        let (p, topic, acknowledged, enough) = (
            p.clone(),
            topic.clone(),
            acknowledged.clone(),
            enough.clone(),
        );
        tasks.spawn(async move {
            let mut results = Vec::new();
            for i in 0.. {
                let event = sample_event(&topic, t * 1_000_000 + i);
                let payload = event.payload().clone();
                let r = p.publish(event).await;
                let refused = matches!(&r, Err(e) if e.kind() == ErrorKind::Closed);
                if r.is_ok()
                    && acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 50
                {
                    enough.notify_one();
                }
                results.push((payload, r));
                if refused || results.len() > 10_000 {
                    break;
                }
            }
            results
        });
    }
    tokio::time::timeout(Duration::from_secs(30), enough.notified())
        .await
        .expect("50 publishes were not acknowledged within 30 s");
    let report = p.close().await.expect("close");
    let mut ok = HashSet::new();
    let mut all = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        for (payload, r) in r.expect("task") {
            all.insert(payload.clone());
            match r {
                Ok(_) => {
                    ok.insert(payload);
                }
                Err(e) => assert!(
                    matches!(e.kind(), ErrorKind::Closed | ErrorKind::OutcomeUnknown),
                    "unexpected error kind at close: {e}"
                ),
            }
        }
    }
    let got = read(h, &topic, ok.len()).await;
    let got_set: HashSet<Bytes> = got.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got_set.len(), got.len(), "an event arrived twice");
    for payload in &ok {
        assert!(
            got_set.contains(payload),
            "an acknowledged event was lost at close"
        );
    }
    assert!(got_set.is_subset(&all), "an event nobody published arrived");
    assert_eq!(
        report.abandoned, 0,
        "nothing should be abandoned with the default close timeout: {report}"
    );
    h.cleanup(&topic).await;
    report.drained > 0
}

/// `health` is healthy while open, bounded, and unhealthy after close.
pub async fn health_reflects_state(h: &dyn Harness) {
    let p = publisher(h).await;
    let health = p.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health}");
    assert_eq!(health.backend, p.backend());
    p.close().await.expect("close");
    assert_eq!(p.health().await.status, HealthStatus::Unhealthy);
}

/// Invalid events fail with `InvalidEvent` naming the field, and nothing is sent.
pub async fn invalid_event_is_typed(h: &dyn Harness) {
    let p = publisher(h).await;
    let err = p
        .publish(Event::text("", "x"))
        .await
        .expect_err("empty topic must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidEvent);
    assert_eq!(err.field(), Some("topic"));
    assert_eq!(err.backend(), p.backend());
    p.close().await.expect("close");
}

/// Dropping a publisher that was not closed leaves no tokio task behind (counted with the
/// runtime's metrics).
pub async fn drop_without_close_leaves_no_task(h: &dyn Harness) {
    let topic = h.topic("drop").await.expect("topic");
    let metrics = tokio::runtime::Handle::current().metrics();
    // Let tasks from earlier steps settle before taking the baseline.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = metrics.num_alive_tasks();
    let p = publisher(h).await;
    p.publish(sample_event(&topic, 0)).await.expect("publish");
    let _ = p.health().await;
    drop(p);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive = metrics.num_alive_tasks();
        if alive <= baseline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} task(s) left behind after dropping the publisher",
            alive - baseline
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.cleanup(&topic).await;
}

/// The event a history scenario publishes as number `n`: a unique payload, a key and headers,
/// so that a message at the broker can be told apart from every other.
fn history_event(topic: &str, scenario: &str, n: usize) -> Event {
    Event::json(
        topic,
        &serde_json::json!({ "history": scenario, "n": n, "text": "history ✓" }),
    )
    .expect("json")
    .with_key(format!("key-{}", n % 7))
    .with_header("x-history", scenario)
    .with_header("x-n", n.to_string())
}

/// `n` events for `topic`: every `every`-th one (from the second) meant to fail, cycling over
/// the intents of `bad` the backend can make; the others good.
fn plan(
    h: &dyn Harness,
    topic: &str,
    scenario: &str,
    n: usize,
    bad: &[Intent],
    every: usize,
) -> Vec<Record> {
    let mut cycle = bad.iter().cycle();
    let mut bad_made = 0;
    (0..n)
        .map(|i| {
            if every > 0 && !bad.is_empty() && i % every == every - 1 {
                for _ in 0..bad.len() {
                    let intent = *cycle.next().expect("cycle");
                    if let Some(b) = h.bad_event(intent, topic, i) {
                        bad_made += 1;
                        return Record {
                            event: b.event,
                            intent,
                            expect: Some(b.expect),
                            outcome: None,
                        };
                    }
                }
            }
            Record {
                event: history_event(topic, scenario, i),
                intent: Intent::Good,
                expect: None,
                outcome: None,
            }
        })
        .collect()
}

/// Reads back `topic` and checks `history` against it; prints the scenario's line.
async fn check_history(h: &dyn Harness, history: &History, topic: &str) -> Verdict {
    let caps = h.capabilities();
    let ok = history
        .records
        .iter()
        .filter(|r| r.intent == Intent::Good && matches!(r.outcome, Some(Ok(()))))
        .count();
    let mut got = read(h, topic, ok).await;
    // Then give late arrivals a moment (a failed event that still arrives is a phantom, a copy
    // a duplicate): read again until everything that could be there is, or a second passes.
    let could_be_there = history
        .records
        .iter()
        .filter(|r| r.event.topic() == topic)
        .count();
    if got.len() < could_be_there {
        got = h
            .read(topic, could_be_there, Duration::from_secs(1))
            .await
            .expect("probe could not read back");
    }
    let verdict = history.check(&got, caps.preserves_key, caps.preserves_headers);
    println!("history {verdict}");
    verdict
}

/// Checks `records` as the history of `scenario` against what `topic` holds, closes the
/// publisher (a second close is harmless), cleans up, asserts that the history holds, and
/// returns its verdict.
async fn conclude(
    h: &dyn Harness,
    p: &dyn Publisher,
    topic: &str,
    scenario: String,
    records: Vec<Record>,
    faults: Faults,
) -> Verdict {
    let history = History {
        scenario,
        records,
        faults,
    };
    let verdict = check_history(h, &history, topic).await;
    p.close().await.expect("close");
    h.cleanup(topic).await;
    verdict.assert_holds();
    verdict
}

/// A publisher whose connections pass a [`FaultProxy`], and the harness that reads what it
/// published (the suite's own, or that of a broker of the scenario's own).
struct Proxied<'h> {
    proxy: Arc<FaultProxy>,
    publisher: Arc<dyn Publisher>,
    /// Kept alive (its broker runs) for the scenario's length.
    own: Option<Arc<dyn OwnBroker>>,
    suite: &'h dyn Harness,
}

impl Proxied<'_> {
    fn harness(&self) -> &dyn Harness {
        self.own.as_ref().map_or(self.suite, |o| o.harness())
    }
}

/// A [`FaultProxy`] before the broker (the harness's [`Harness::broker_addr`], or the proxy of
/// a broker of its own that advertises it) and a publisher through it with the given publish
/// and close timeouts; `None` (saying so) when the harness has no connection to proxy.
async fn through_proxy<'h>(
    h: &'h dyn Harness,
    scenario: &str,
    publish: Duration,
    close: Duration,
) -> Option<Proxied<'h>> {
    let timeouts = Timeouts {
        publish,
        close,
        ..Timeouts::default()
    };
    if let Some(upstream) = h.broker_addr() {
        let proxy = Arc::new(FaultProxy::start(upstream).await);
        let p = h
            .publisher_via(proxy.addr, timeouts)
            .await
            .expect("publisher through the proxy");
        return Some(Proxied {
            proxy,
            publisher: Arc::from(p),
            own: None,
            suite: h,
        });
    }
    let own: Option<Arc<dyn OwnBroker>> = h.proxied_broker().await.map(Arc::from);
    let Some((own, proxy)) = own.and_then(|o| o.proxy().map(|p| (o, p))) else {
        not_carried(h, scenario, "no connection a proxy can stand in");
        return None;
    };
    let p = own
        .harness()
        .publisher_via(proxy.addr, timeouts)
        .await
        .expect("publisher through the proxy");
    Some(Proxied {
        proxy,
        publisher: Arc::from(p),
        own: Some(own),
        suite: h,
    })
}

fn intents_line(h: &dyn Harness, topic: &str, bad: &[Intent]) -> String {
    let made: Vec<&str> = bad
        .iter()
        .filter(|i| h.bad_event(**i, topic, 0).is_some())
        .map(|i| i.as_str())
        .collect();
    let missing: Vec<&str> = bad
        .iter()
        .filter(|i| h.bad_event(**i, topic, 0).is_none())
        .map(|i| i.as_str())
        .collect();
    if missing.is_empty() {
        format!("good+{}", made.join("+"))
    } else {
        format!(
            "good+{} (not carried: {})",
            made.join("+"),
            missing.join(", ")
        )
    }
}

fn not_carried(h: &dyn Harness, scenario: &str, why: &str) {
    let _ = h;
    println!("history {scenario}: not carried by this backend ({why})");
}

const MIXED: &[Intent] = &[Intent::Unroutable, Intent::Invalid];

async fn mixed_singles(h: &dyn Harness, concurrency: usize, n: usize) {
    let topic = h.topic("history").await.expect("topic");
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let scenario = format!(
        "{} single c={concurrency} {}",
        p.backend(),
        intents_line(h, &topic, MIXED)
    );
    let mut records = plan(h, &topic, &scenario, n, MIXED, 2);
    publish_each(
        p.clone(),
        &mut records,
        concurrency,
        Arc::new(|_| {}),
        Duration::ZERO,
    )
    .await;
    conclude(h, &*p, &topic, scenario, records, Faults::None).await;
}

/// History: 200 single publishes, one at a time, alternating good events and events meant to
/// fail (unroutable where the backend has routing, invalid everywhere).
pub async fn history_mixed_c1(h: &dyn Harness) {
    mixed_singles(h, 1, 200).await;
}

/// History: 2,000 single publishes, 64 in flight, alternating good and bad events.
pub async fn history_mixed_c64(h: &dyn Harness) {
    mixed_singles(h, 64, 2_000).await;
}

/// History: 4,096 single publishes, 1,024 in flight, alternating good and bad events.
pub async fn history_mixed_c1024(h: &dyn Harness) {
    mixed_singles(h, 1024, 4_096).await;
}

/// History: 4,000 events in batches of 500, two batches in flight, alternating good and bad
/// events inside each batch.
pub async fn history_mixed_batches(h: &dyn Harness) {
    let topic = h.topic("history-batch").await.expect("topic");
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let scenario = format!(
        "{} batches of 500 {}",
        p.backend(),
        intents_line(h, &topic, MIXED)
    );
    let mut records = plan(h, &topic, &scenario, 4_000, MIXED, 2);
    publish_batches(p.clone(), &mut records, 500, 2).await;
    conclude(h, &*p, &topic, scenario, records, Faults::None).await;
}

/// History: one oversized event among 300 small ones, 64 in flight: it alone fails, with its
/// documented kind; every neighbour is confirmed and at the broker.
pub async fn history_oversized_among_small(h: &dyn Harness) {
    let topic = h.topic("history-oversized").await.expect("topic");
    let Some(oversized) = h.bad_event(Intent::Oversized, &topic, 150) else {
        not_carried(h, "oversized among small", "no size limit to exceed");
        h.cleanup(&topic).await;
        return;
    };
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let scenario = format!("{} one oversized among 300, c=64", p.backend());
    let mut records = plan(h, &topic, &scenario, 301, &[], 0);
    records[150] = Record {
        event: oversized.event,
        intent: Intent::Oversized,
        expect: Some(oversized.expect),
        outcome: None,
    };
    publish_each(
        p.clone(),
        &mut records,
        64,
        Arc::new(|_| {}),
        Duration::ZERO,
    )
    .await;
    conclude(h, &*p, &topic, scenario, records, Faults::None).await;
}

/// Publishes good events to `topic` until one is confirmed (the publisher recovered), for at
/// most 60 s; adds each attempt to `records`, so the history checks them too.
async fn assert_recovers(p: &dyn Publisher, topic: &str, records: &mut Vec<Record>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = history_event(topic, "recovery", records.len());
        let r = p.publish(event.clone()).await;
        let ok = r.is_ok();
        let last = r.as_ref().err().cloned();
        records.push(Record {
            event,
            intent: Intent::Good,
            expect: None,
            outcome: Some(r.map(|_| ())),
        });
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher did not recover within 60 s: {}",
            last.expect("an error")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// History under a network cut: 3,000 good events, 64 in flight, through a [`FaultProxy`]
/// that drops every connection after 500 and after 1,500 acknowledgements. Failures must be
/// typed and explained by the fault, nothing acknowledged may be lost, nothing reported
/// "not sent" may be at the broker, and the publisher recovers by itself.
pub async fn history_connection_cut(h: &dyn Harness) {
    let Some(px) = through_proxy(
        h,
        "connection cut",
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    else {
        return;
    };
    let (proxy, p, h) = (px.proxy.clone(), px.publisher.clone(), px.harness());
    let topic = h.topic("history-cut").await.expect("topic");
    let scenario = format!("{} connection cut twice, c=64", p.backend());
    let mut records = plan(h, &topic, &scenario, 3_000, &[], 0);
    let cutter = proxy.clone();
    let on_ok = Arc::new(move |ok: usize| {
        if ok == 500 || ok == 1_500 {
            cutter.cut();
        }
    });
    publish_each(p.clone(), &mut records, 64, on_ok, Duration::ZERO).await;
    assert_recovers(&*p, &topic, &mut records).await;
    conclude(h, &*p, &topic, scenario, records, Faults::Injected).await;
}

/// History under a stall longer than the publish timeout: 2,000 good events, 64 in flight,
/// publish timeout 1 s, the proxy holding every byte for 2.5 s after 300 acknowledgements.
/// Publishes caught in the stall must fail with `OutcomeUnknown` (their bytes left), never a
/// "not sent" kind for an event the broker then holds; the publisher recovers.
pub async fn history_stall_past_publish_timeout(h: &dyn Harness) {
    let Some(px) = through_proxy(
        h,
        "stall past the publish timeout",
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .await
    else {
        return;
    };
    let (proxy, p, h) = (px.proxy.clone(), px.publisher.clone(), px.harness());
    let topic = h.topic("history-stall").await.expect("topic");
    let scenario = format!(
        "{} stall 2.5 s past a 1 s publish timeout, c=64",
        p.backend()
    );
    let mut records = plan(h, &topic, &scenario, 2_000, &[], 0);
    let staller = proxy.clone();
    let on_ok = Arc::new(move |ok: usize| {
        if ok == 300 {
            staller.set(ProxyMode::Stall);
            let staller = staller.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                staller.set(ProxyMode::Pass);
            });
        }
    });
    publish_each(p.clone(), &mut records, 64, on_ok, Duration::ZERO).await;
    proxy.set(ProxyMode::Pass);
    assert_recovers(&*p, &topic, &mut records).await;
    let unknown = records_unknown(&records);
    conclude(h, &*p, &topic, scenario, records, Faults::Injected).await;
    assert!(
        unknown > 0,
        "no publish was caught in the stall: the scenario proves nothing"
    );
}

fn records_unknown(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| matches!(&r.outcome, Some(Err(e)) if e.is_outcome_unknown()))
        .count()
}

/// History of a close whose deadline passes while publishes are in flight: 50 events
/// confirmed, then the proxy stalls, 200 single publishes and a batch of 100 start, and close
/// (deadline 500 ms) gives up on them. Each must fail with `OutcomeUnknown` (their bytes left)
/// and the close report must count every one of those events as abandoned.
pub async fn history_close_deadline_in_flight(h: &dyn Harness) {
    let Some(px) = through_proxy(
        h,
        "close deadline with publishes in flight",
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await
    else {
        return;
    };
    let (proxy, p, h) = (px.proxy.clone(), px.publisher.clone(), px.harness());
    let topic = h.topic("history-close").await.expect("topic");
    let scenario = format!(
        "{} close deadline passes with 300 events in flight",
        p.backend()
    );
    let mut before = plan(h, &topic, &scenario, 350, &[], 0);
    let mut stalled = before.split_off(50);
    let mut batch = stalled.split_off(200);
    publish_each(p.clone(), &mut before, 8, Arc::new(|_| {}), Duration::ZERO).await;
    proxy.set(ProxyMode::Stall);
    let singles = {
        let p = p.clone();
        tokio::spawn(async move {
            publish_each(p, &mut stalled, 200, Arc::new(|_| {}), Duration::ZERO).await;
            stalled
        })
    };
    let batched = {
        let p = p.clone();
        tokio::spawn(async move {
            publish_batches(p, &mut batch, 100, 1).await;
            batch
        })
    };
    // Time for every one of them to be admitted and send (on a loaded machine too).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = p.close().await.expect("close");
    let mut records = before;
    records.extend(singles.await.expect("single publishes"));
    records.extend(batched.await.expect("batch publish"));
    proxy.set(ProxyMode::Pass);
    let unknown = records_unknown(&records);
    conclude(h, &*p, &topic, scenario, records, Faults::Injected).await;
    assert!(
        unknown > 0,
        "nothing was in flight at the close deadline: the scenario proves nothing"
    );
    assert_eq!(
        report.abandoned, unknown,
        "the close report must count each abandoned event once ({report})"
    );
}

/// History across a broker restart: 3,000 good events, 16 in flight, to a broker of the
/// test's own that is killed after 1,000 acknowledgements and started again a second later.
/// Nothing acknowledged is lost (the broker persists what it acknowledged), failures are typed
/// and explained, and the publisher recovers without being rebuilt.
pub async fn history_broker_restart(h: &dyn Harness) {
    let Some(own) = h.own_broker().await else {
        not_carried(h, "broker restart", "cannot start a broker of its own here");
        return;
    };
    let own: Arc<dyn OwnBroker> = Arc::from(own);
    if !own.durable() {
        not_carried(
            h,
            "broker restart",
            "its broker of its own keeps nothing across a restart",
        );
        return;
    }
    let oh = own.harness();
    let topic = oh.topic("history-restart").await.expect("topic");
    let p: Arc<dyn Publisher> = Arc::from(publisher(oh).await);
    let scenario = format!("{} broker killed and restarted, c=16", p.backend());
    let restarting = own.clone();
    across_fault(oh, p, &topic, scenario, async move {
        restarting.restart(Duration::from_secs(1)).await;
    })
    .await;
}

/// History across the failure of one node of a cluster of the test's own, once per kind of
/// cluster the harness can start ([`Harness::own_cluster`]): a Redis Cluster master killed and
/// its replica promoted, a sentinel-watched master killed, a RabbitMQ node stopped, a Kafka
/// partition leader's broker taken down. 3,000 good events, 16 in flight, the node failing
/// after 1,000 acknowledgements: nothing acknowledged is lost, failures are typed and
/// explained, and the publisher carries on without being rebuilt.
pub async fn history_node_failure(h: &dyn Harness) {
    let mut started = 0;
    while let Some(cluster) = h.own_cluster(started).await {
        started += 1;
        let cluster: Arc<dyn OwnCluster> = Arc::from(cluster);
        let oh = cluster.harness();
        let topic = oh.topic("history-failover").await.expect("topic");
        let p: Arc<dyn Publisher> = Arc::from(publisher(oh).await);
        let scenario = format!("{} {}, c=16", p.backend(), cluster.describe());
        let (failing, failing_topic) = (cluster.clone(), topic.clone());
        let verdict = across_fault(oh, p, &topic, scenario, async move {
            let started = tokio::time::Instant::now();
            failing.fail_node(&failing_topic).await;
            println!(
                "history node failure: the cluster noticed in {:?}",
                started.elapsed()
            );
        })
        .await;
        if cluster.no_duplicates() {
            assert_eq!(
                verdict.duplicates, 0,
                "duplicates across the failure: {verdict}"
            );
        }
    }
    if started == 0 {
        not_carried(h, "node failure", "cannot start a cluster of its own here");
    }
}

/// 3,000 good events to `topic`, 16 in flight, `fault` started after the 1,000th
/// acknowledgement and awaited; then the publisher must recover, and the history hold.
async fn across_fault(
    oh: &dyn Harness,
    p: Arc<dyn Publisher>,
    topic: &str,
    scenario: String,
    fault: impl std::future::Future<Output = ()> + Send + 'static,
) -> Verdict {
    let mut records = plan(oh, topic, &scenario, 3_000, &[], 0);
    let fault = std::sync::Mutex::new(Some(fault));
    let started = Arc::new(std::sync::Mutex::new(None));
    let handle = started.clone();
    // The longest time without an acknowledgement from the fault on: the pause it caused.
    let pause = Arc::new(std::sync::Mutex::new((
        None::<std::time::Instant>,
        Duration::ZERO,
    )));
    let pauses = pause.clone();
    let on_ok = Arc::new(move |ok: usize| {
        if ok >= 1_000 {
            let now = std::time::Instant::now();
            let mut p = pauses.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = p.0 {
                p.1 = p.1.max(now - last);
            }
            p.0 = Some(now);
        }
        if ok == 1_000
            && let Some(fault) = fault.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            *handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::spawn(fault));
        }
    });
    publish_each(
        p.clone(),
        &mut records,
        16,
        on_ok,
        Duration::from_millis(500),
    )
    .await;
    let fault = started.lock().unwrap_or_else(|p| p.into_inner()).take();
    fault
        .expect("the fault was never started")
        .await
        .expect("the fault panicked");
    assert_recovers(&*p, topic, &mut records).await;
    let longest = pause.lock().unwrap_or_else(|p| p.into_inner()).1;
    println!(
        "history {scenario}: longest pause between acknowledgements after the fault {longest:?}"
    );
    conclude(oh, &*p, topic, scenario, records, Faults::Injected).await
}

/// Runs every scenario in turn.
pub async fn run_all(h: &dyn Harness) {
    macro_rules! run {
        ($scenario:ident) => {
            $scenario(h).await;
        };
    }
    crate::for_each_scenario!(all: run);
}

/// The scenario list, once: calls the macro `$callback!(scenario)` for each scenario of the
/// suite, in order. `conformance:` lists the conformance scenarios, `history:` the history
/// ones, `all:` both. [`run_all`], [`conformance_tests!`](crate::conformance_tests) and the
/// facade's suite in `tests/` all expand it, so a scenario added here runs everywhere.
///
/// ```ignore
/// macro_rules! show { ($s:ident) => { println!("{}", stringify!($s)); }; }
/// publisher_core::for_each_scenario!(conformance: show);
/// ```
#[macro_export]
macro_rules! for_each_scenario {
    (conformance: $callback:ident) => {
        $callback!(publish_and_read_back);
        $callback!(batch_results_per_event);
        $callback!(concurrent_publishes_all_delivered);
        $callback!(close_is_idempotent_and_concurrent);
        $callback!(publish_after_close_is_closed);
        $callback!(close_during_publishes_loses_nothing);
        $callback!(health_reflects_state);
        $callback!(invalid_event_is_typed);
        $callback!(drop_without_close_leaves_no_task);
    };
    (history: $callback:ident) => {
        $callback!(history_mixed_c1);
        $callback!(history_mixed_c64);
        $callback!(history_mixed_c1024);
        $callback!(history_mixed_batches);
        $callback!(history_oversized_among_small);
        $callback!(history_connection_cut);
        $callback!(history_stall_past_publish_timeout);
        $callback!(history_close_deadline_in_flight);
        $callback!(history_broker_restart);
        $callback!(history_node_failure);
    };
    (all: $callback:ident) => {
        $crate::for_each_scenario!(conformance: $callback);
        $crate::for_each_scenario!(history: $callback);
    };
}

/// Expands to one `#[tokio::test]` per scenario (conformance and history). The argument is an
/// async function (or a path to one) returning something that implements [`Harness`]. The
/// calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// Scenarios a backend is known to fail are listed after `ignore` with the reason (naming the
/// issue that fixes them); they are generated `#[ignore = reason]`, so `cargo test -- --ignored`
/// still runs them:
///
/// ```ignore
/// publisher_core::conformance_tests!(support::harness; ignore {
///     history_mixed_c64 = "issue 14: returns are attributed to the wrong publish",
/// });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!($make; ignore {});
    };
    ($make:path; ignore { $($ignored:ident = $why:literal),* $(,)? }) => {
        $crate::conformance_tests!(@dollar ($) $make; [$($ignored = $why),*]);
    };
    (@dollar ($d:tt) $make:path; [$($ignored:ident = $why:literal),*]) => {
        macro_rules! __publisher_scenario {
            $(
                ($ignored) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = $why]
                    async fn $ignored() {
                        let Some(harness) = $crate::testing::MaybeHarness::into_harness($make().await) else {
                            return;
                        };
                        $crate::testing::$ignored(&harness).await;
                    }
                };
            )*
            ($d scenario:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d scenario() {
                    let Some(harness) = $crate::testing::MaybeHarness::into_harness($make().await) else {
                        return;
                    };
                    $crate::testing::$d scenario(&harness).await;
                }
            };
        }
        $crate::for_each_scenario!(all: __publisher_scenario);
    };
}

/// The memory backend's [`Probe`]: reads back from a [`MemoryStore`] the publishers write to.
/// [`memory_harness`] and [`layer_harness`] pair it with memory publishers.
#[derive(Debug, Clone, Default)]
pub struct MemoryProbe {
    /// The store the publishers write to.
    pub store: MemoryStore,
}

#[async_trait]
impl Probe for MemoryProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        Ok(unique_name(&format!("conformance.{hint}")))
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(self
            .store
            .wait_for(topic, n, timeout)
            .await
            .iter()
            .map(Received::from)
            .collect())
    }

    async fn cleanup(&self, _topic: &str) {}
}

/// The suite's reference: memory publishers sharing one store, read back from it.
pub fn memory_harness() -> ProbeHarness<MemoryProbe> {
    layer_harness(|p| Box::new(p))
}

/// Memory publishers wrapped by a layer (or a stack of layers), so that the whole suite runs
/// through the wrapper, read back from the shared store.
pub fn layer_harness(
    wrap: impl Fn(MemoryPublisher) -> Box<dyn Publisher> + Send + Sync + 'static,
) -> ProbeHarness<MemoryProbe> {
    let probe = MemoryProbe::default();
    let store = probe.store.clone();
    ProbeHarness::new(probe, move || {
        let publisher = MemoryPublisher::builder().store(store.clone()).build();
        let wrapped = publisher.map(&wrap);
        async move { wrapped }
    })
}
