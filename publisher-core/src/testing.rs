//! The conformance suite every backend runs (feature `testing`).
//!
//! A backend's `tests/conformance.rs` implements [`Harness`] (how to open a publisher, prepare a
//! topic, and read back what reached the broker with the broker's own client) and expands
//! [`conformance_tests!`](crate::conformance_tests) to get one `#[tokio::test]` per scenario.
//! A third-party backend can run the same suite.
//!
//! ```ignore
//! struct MyHarness { /* broker client for read-back */ }
//! #[async_trait::async_trait]
//! impl publisher_core::testing::Harness for MyHarness { /* … */ }
//! async fn harness() -> MyHarness { MyHarness { /* … */ } }
//! publisher_core::conformance_tests!(harness);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

pub use crate::testing_proxy::{FaultProxy, Mode as ProxyMode};

use crate::{
    ErrorKind, Event, HealthStatus, MemoryPublisher, MemoryStore, Publisher, Result, Timeouts,
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
}

/// Opens a new publisher for the suite.
pub type PublisherFactory =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<Box<dyn Publisher>>> + Send + Sync>;

/// A [`Harness`] made of a [`Probe`] and a function that opens publishers.
pub struct ProbeHarness<P> {
    probe: P,
    factory: PublisherFactory,
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
        }
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

/// Close while 100 publishes are in flight: every publish that returned Ok is at the broker,
/// the others failed with a typed error, and nothing arrives twice.
pub async fn close_during_publishes_loses_nothing(h: &dyn Harness) {
    let topic = h.topic("close-in-flight").await.expect("topic");
    let p: Arc<dyn Publisher> = Arc::from(publisher(h).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let p = p.clone();
        let event = sample_event(&topic, i);
        tasks.spawn(async move { (event.payload().clone(), p.publish(event).await) });
    }
    tokio::task::yield_now().await;
    let report = p.close().await.expect("close");
    let mut ok = HashSet::new();
    let mut all = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let (payload, r) = r.expect("task");
        all.insert(payload.clone());
        match r {
            Ok(_) => {
                ok.insert(payload);
            }
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::Closed | ErrorKind::Timeout),
                "unexpected error kind at close: {e}"
            ),
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

/// Runs every scenario in turn.
pub async fn run_all(h: &dyn Harness) {
    publish_and_read_back(h).await;
    batch_results_per_event(h).await;
    concurrent_publishes_all_delivered(h).await;
    close_is_idempotent_and_concurrent(h).await;
    publish_after_close_is_closed(h).await;
    close_during_publishes_loses_nothing(h).await;
    health_reflects_state(h).await;
    invalid_event_is_typed(h).await;
    drop_without_close_leaves_no_task(h).await;
}

/// Expands to one `#[tokio::test]` per conformance scenario. The argument is an async function
/// (or a path to one) returning something that implements [`Harness`]. The calling crate needs
/// `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            publish_and_read_back,
            batch_results_per_event,
            concurrent_publishes_all_delivered,
            close_is_idempotent_and_concurrent,
            publish_after_close_is_closed,
            close_during_publishes_loses_nothing,
            health_reflects_state,
            invalid_event_is_typed,
            drop_without_close_leaves_no_task
        );
    };
    (@each $make:path; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $make().await;
                $crate::testing::$scenario(&harness).await;
            }
        )*
    };
}

/// A [`Harness`] over [`MemoryPublisher`]s sharing one [`MemoryStore`]: the reference for what
/// the suite expects, and the base for testing wrappers.
#[derive(Debug, Clone, Default)]
pub struct MemoryHarness {
    /// The store every publisher of this harness writes to.
    pub store: MemoryStore,
    /// The timeouts of the publishers.
    pub timeouts: Timeouts,
}

impl MemoryHarness {
    /// A memory publisher writing to this harness's store.
    pub fn memory_publisher(&self) -> MemoryPublisher {
        MemoryPublisher::builder()
            .store(self.store.clone())
            .timeouts(self.timeouts)
            .build()
            .expect("valid memory config")
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.memory_publisher()))
    }

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

/// A [`Harness`] over memory publishers wrapped by a layer (or a stack of layers): runs the
/// whole suite through the wrapper, reading back from the shared [`MemoryStore`].
pub struct LayerHarness {
    memory: MemoryHarness,
    wrap: Box<dyn Fn(MemoryPublisher) -> Box<dyn Publisher> + Send + Sync>,
}

impl std::fmt::Debug for LayerHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerHarness")
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl LayerHarness {
    /// Wraps each memory publisher with `wrap`.
    pub fn new(
        wrap: impl Fn(MemoryPublisher) -> Box<dyn Publisher> + Send + Sync + 'static,
    ) -> Self {
        Self {
            memory: MemoryHarness::default(),
            wrap: Box::new(wrap),
        }
    }
}

#[async_trait]
impl Harness for LayerHarness {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok((self.wrap)(self.memory.memory_publisher()))
    }

    async fn topic(&self, hint: &str) -> Result<String> {
        self.memory.topic(hint).await
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.memory.read(topic, n, timeout).await
    }

    async fn cleanup(&self, topic: &str) {
        self.memory.cleanup(topic).await;
    }
}
