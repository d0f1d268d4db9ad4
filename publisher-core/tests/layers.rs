//! Every layer passes the whole conformance suite over `MemoryPublisher`, plus its own tests
//! with injected failures and delays.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use publisher_core::layers::{ConcurrencyLimit, Layer, Layered, PublisherExt, RetryPolicy};
use publisher_core::{
    BatchOutcome, CloseReport, ErrorKind, Event, Fault, Health, MemoryPublisher, Publisher,
    Receipt, Result, async_trait,
};

fn policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}

mod timeout {
    async fn harness() -> publisher_core::testing::ProbeHarness<publisher_core::testing::MemoryProbe>
    {
        publisher_core::testing::layer_harness(|p| {
            Box::new(
                super::PublisherExt::with_timeout(p, std::time::Duration::from_secs(5)).unwrap(),
            )
        })
    }
    publisher_core::conformance_tests!(harness);
}

mod retry {
    async fn harness() -> publisher_core::testing::ProbeHarness<publisher_core::testing::MemoryProbe>
    {
        publisher_core::testing::layer_harness(|p| {
            Box::new(super::PublisherExt::with_retry(p, super::policy()).unwrap())
        })
    }
    publisher_core::conformance_tests!(harness);
}

mod limit {
    async fn harness() -> publisher_core::testing::ProbeHarness<publisher_core::testing::MemoryProbe>
    {
        publisher_core::testing::layer_harness(|p| {
            Box::new(
                super::PublisherExt::with_concurrency_limit(
                    p,
                    16,
                    std::time::Duration::from_secs(5),
                )
                .unwrap(),
            )
        })
    }
    publisher_core::conformance_tests!(harness);
}

mod metrics {
    async fn harness() -> publisher_core::testing::ProbeHarness<publisher_core::testing::MemoryProbe>
    {
        publisher_core::testing::layer_harness(|p| Box::new(super::PublisherExt::with_metrics(p)))
    }
    publisher_core::conformance_tests!(harness);
}

mod trace_context {
    async fn harness() -> publisher_core::testing::ProbeHarness<publisher_core::testing::MemoryProbe>
    {
        publisher_core::testing::layer_harness(|p| {
            Box::new(super::PublisherExt::with_trace_context(p))
        })
    }
    publisher_core::conformance_tests!(harness);
}

mod stacked {
    async fn harness() -> publisher_core::testing::ProbeHarness<publisher_core::testing::MemoryProbe>
    {
        publisher_core::testing::layer_harness(|p| {
            use super::PublisherExt;
            Box::new(
                p.with_timeout(std::time::Duration::from_secs(5))
                    .unwrap()
                    .with_retry(super::policy())
                    .unwrap()
                    .with_concurrency_limit(64, std::time::Duration::from_secs(5))
                    .unwrap()
                    .with_metrics()
                    .with_trace_context(),
            )
        })
    }
    publisher_core::conformance_tests!(harness);
}

#[tokio::test]
async fn timeout_bounds_a_slow_publish_and_is_retryable() {
    let inner = MemoryPublisher::new();
    inner.get_ref().set_delay(Duration::from_secs(5));
    let p = inner.with_timeout(Duration::from_millis(50)).unwrap();
    let started = Instant::now();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    // The inner publish was dropped mid-flight: the broker may or may not have it.
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(p.get_ref().inner().get_ref().store().is_empty());
    let err = MemoryPublisher::new()
        .with_timeout(Duration::ZERO)
        .unwrap_err();
    assert_eq!(err.field(), Some("timeout"));
}

#[tokio::test]
async fn retry_retries_retryable_failures_until_success() {
    let inner = MemoryPublisher::new();
    inner.get_ref().fail_next(3, ErrorKind::Unavailable);
    let store = inner.get_ref().store().clone();
    let p = inner.with_retry(policy()).unwrap();
    let receipt = p.publish(Event::text("t", "x")).await.unwrap();
    assert_eq!(store.len(), 1);
    assert_eq!(store.events()[0].id(), receipt.event_id);
}

#[tokio::test]
async fn retry_never_retries_rejected_config_invalid_or_closed() {
    for kind in [
        ErrorKind::Rejected,
        ErrorKind::Config,
        ErrorKind::InvalidEvent,
        ErrorKind::Closed,
    ] {
        let inner = Arc::new(MemoryPublisher::new());
        inner.get_ref().fail_next(1, kind);
        let p = inner.clone().with_retry(policy()).unwrap();
        let err = p.publish(Event::text("t", "x")).await.unwrap_err();
        assert_eq!(err.kind(), kind);
        // The second publish would have succeeded: it was never attempted.
        assert!(inner.get_ref().store().is_empty(), "{kind:?} was retried");
    }
}

#[tokio::test]
async fn retry_gives_up_after_max_retries_with_the_last_error() {
    let inner = Arc::new(MemoryPublisher::new());
    inner
        .get_ref()
        .set_fault(Some(Fault::Fail(ErrorKind::Connect)));
    let counting = Counting::new(inner.clone());
    let attempts = counting.publishes.clone();
    let p = counting
        .with_retry(RetryPolicy {
            max_retries: 3,
            ..policy()
        })
        .unwrap();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert!(
        !err.is_retryable(),
        "an error retry gave up on is no longer retryable"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 4, "1 attempt + 3 retries");
}

#[tokio::test]
async fn stacked_retries_do_not_multiply_attempts() {
    let inner = Arc::new(MemoryPublisher::new());
    inner
        .get_ref()
        .set_fault(Some(Fault::Fail(ErrorKind::Unavailable)));
    let counting = Counting::new(inner.clone());
    let attempts = counting.publishes.clone();
    let retry = RetryPolicy {
        max_retries: 2,
        ..policy()
    };
    let p = counting
        .with_retry(retry)
        .unwrap()
        .with_retry(retry)
        .unwrap();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "the outer retry must not retry what the inner one gave up on (3, not 9)"
    );
}

#[tokio::test]
async fn retry_after_an_unknown_outcome_never_reports_nothing_sent() {
    // First attempt: outcome unknown (the event may be at the broker); the later attempts say
    // "nothing sent". Giving up must still say the event may be at the broker.
    let inner = Arc::new(MemoryPublisher::new());
    inner.get_ref().fail_next(1, ErrorKind::OutcomeUnknown);
    inner.get_ref().fail_next(10, ErrorKind::Unavailable);
    let p = inner
        .clone()
        .with_retry(RetryPolicy {
            max_retries: 2,
            ..policy()
        })
        .unwrap();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(!err.is_retryable());
    // And a rejection after an unknown attempt is no proof that nothing was sent either.
    let inner = Arc::new(MemoryPublisher::new());
    inner.get_ref().fail_next(1, ErrorKind::OutcomeUnknown);
    inner.get_ref().fail_next(1, ErrorKind::Rejected);
    let p = inner.clone().with_retry(policy()).unwrap();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    // In a batch too.
    let inner = Arc::new(MemoryPublisher::new());
    inner.get_ref().fail_next(1, ErrorKind::OutcomeUnknown);
    inner.get_ref().fail_next(10, ErrorKind::Unavailable);
    let p = inner
        .clone()
        .with_retry(RetryPolicy {
            max_retries: 2,
            ..policy()
        })
        .unwrap();
    let outcome = p.publish_batch(vec![Event::text("t", "x")]).await;
    let err = outcome.results()[0].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn retry_honours_the_total_deadline() {
    let inner = MemoryPublisher::new();
    inner
        .get_ref()
        .set_fault(Some(Fault::Fail(ErrorKind::Timeout)));
    let p = inner
        .with_retry(RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(100),
            max_retries: 1000,
            jitter: false,
            deadline: Duration::from_millis(350),
            ..policy()
        })
        .unwrap();
    let started = Instant::now();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
}

#[tokio::test]
async fn retry_delays_grow_within_jitter_bounds() {
    // Without jitter the delays are exactly min, 2·min, 4·min; with jitter each delay is at
    // least the un-jittered one and at most twice it.
    let inner = MemoryPublisher::new();
    inner.get_ref().fail_next(3, ErrorKind::Unavailable);
    let p = inner
        .with_retry(RetryPolicy {
            min_delay: Duration::from_millis(40),
            max_delay: Duration::from_secs(1),
            jitter: true,
            ..policy()
        })
        .unwrap();
    let started = Instant::now();
    p.publish(Event::text("t", "x")).await.unwrap();
    let elapsed = started.elapsed();
    // 40 + 80 + 160 = 280 ms without jitter; up to 560 ms with it.
    assert!(elapsed >= Duration::from_millis(280), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");
}

#[tokio::test]
async fn retry_batch_retries_only_the_failed_retryable_events() {
    let inner = Arc::new(MemoryPublisher::new());
    let counting = Counting::new(inner.clone());
    let batches = counting.batches.clone();
    // The first two events of the first batch fail (retryable), the rest pass.
    inner.get_ref().fail_next(2, ErrorKind::Unavailable);
    let p = counting.with_retry(policy()).unwrap();
    let events: Vec<Event> = (0..5).map(|i| Event::text("t", i.to_string())).collect();
    let outcome = p.publish_batch(events.clone()).await;
    assert!(outcome.is_all_ok(), "{:?}", outcome.errors().next());
    for (r, e) in outcome.results().iter().zip(&events) {
        assert_eq!(r.as_ref().unwrap().event_id, e.id());
    }
    assert_eq!(inner.get_ref().store().len(), 5, "no event stored twice");
    assert_eq!(batches.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_is_never_exceeded_under_a_thousand_publishes() {
    let inner = MemoryPublisher::new();
    inner.get_ref().set_delay(Duration::from_millis(2));
    let counting = Counting::new(Arc::new(inner));
    let peak = counting.peak.clone();
    let limit = ConcurrencyLimit::new(counting, 8, Duration::from_secs(30)).unwrap();
    let p = Arc::new(Layered::new(limit));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let p = p.clone();
        tasks.spawn(async move { p.publish(Event::text("t", i.to_string())).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 8, "peak {peak} in flight");
    assert!(
        peak >= 2,
        "the limit should still allow concurrency, peak {peak}"
    );
    assert_eq!(p.get_ref().available(), 8);
}

#[tokio::test]
async fn concurrency_limit_wait_is_bounded_and_typed() {
    let inner = MemoryPublisher::new();
    inner.get_ref().set_delay(Duration::from_millis(500));
    let p = Arc::new(
        inner
            .with_concurrency_limit(1, Duration::from_millis(50))
            .unwrap(),
    );
    let p2 = p.clone();
    let holder = tokio::spawn(async move { p2.publish(Event::text("t", "holds")).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let err = p.publish(Event::text("t", "waits")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_millis(300));
    holder.await.unwrap().unwrap();
}

#[test]
fn metrics_are_recorded_with_backend_topic_and_kind_labels() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    ::metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let inner = MemoryPublisher::new();
            inner.get_ref().fail_next(1, ErrorKind::Rejected);
            let inner = Arc::new(inner);
            let p = Arc::new(inner.clone().with_metrics());
            assert!(p.publish(Event::text("orders", "nope")).await.is_err());
            p.publish(Event::text("orders", "12345")).await.unwrap();
            p.publish(Event::text("orders", "678")).await.unwrap();
            // One publish in flight when close begins; close is called three times.
            inner.get_ref().set_delay(Duration::from_millis(100));
            let slow = {
                let p = p.clone();
                tokio::spawn(async move { p.publish(Event::text("late", "9")).await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            for _ in 0..3 {
                assert_eq!(p.close().await.unwrap().drained, 1);
            }
            slow.await.unwrap().unwrap();
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("{name} {labels:?} not recorded: {snapshot:?}"))
    };
    use publisher_core::layers::metrics_names as names;
    assert_eq!(
        find(
            names::PUBLISHED,
            &[("backend", "memory"), ("topic", "orders")]
        ),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        find(names::BYTES, &[("topic", "orders")]),
        &DebugValue::Counter(8)
    );
    assert_eq!(
        find(names::FAILED, &[("topic", "orders"), ("kind", "rejected")]),
        &DebugValue::Counter(1)
    );
    match find(names::DURATION, &[("topic", "orders")]) {
        DebugValue::Histogram(v) => assert_eq!(v.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        find(names::IN_FLIGHT, &[("backend", "memory")]),
        &DebugValue::Gauge(0.0.into())
    );
    assert_eq!(
        find(names::CLOSE_DRAINED, &[("backend", "memory")]),
        &DebugValue::Counter(1),
        "a close is counted once however often it is called"
    );
}

#[tokio::test]
async fn trace_context_injects_the_current_span_as_traceparent() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let inner = MemoryPublisher::new();
    let store = inner.get_ref().store().clone();
    let p = inner.with_trace_context();
    let span = tracing::info_span!("checkout");
    let expected = {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        format!("00-{}-{}-01", sc.trace_id(), sc.span_id())
    };
    p.publish(Event::text("orders", "x").with_header("a", "1"))
        .instrument(span)
        .await
        .unwrap();
    let event = &store.events()[0];
    assert_eq!(event.headers()["traceparent"], expected);
    assert_eq!(event.headers()["a"], "1");
    // Outside any span nothing is injected.
    p.publish(Event::text("orders", "y")).await.unwrap();
    assert!(!store.events()[1].headers().contains_key("traceparent"));
}

#[tokio::test]
async fn close_propagates_once_through_every_layer() {
    let inner = Arc::new(MemoryPublisher::new());
    let counting = Counting::new(inner.clone());
    let closes = counting.closes.clone();
    let p = counting
        .with_timeout(Duration::from_secs(1))
        .unwrap()
        .with_retry(policy())
        .unwrap()
        .with_concurrency_limit(4, Duration::from_secs(1))
        .unwrap()
        .with_metrics()
        .with_trace_context();
    let report = p.close().await.unwrap();
    assert_eq!(closes.load(Ordering::SeqCst), 1);
    assert!(inner.is_closed() && p.is_closed());
    assert_eq!(p.close().await.unwrap(), report);
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "Closed is never retried");
    drop(p);
    assert_eq!(
        Arc::strong_count(&inner),
        1,
        "dropping the stack drops the inner publisher"
    );
}

/// Counts what reaches the inner publisher.
#[derive(Debug)]
struct Counting {
    inner: Arc<MemoryPublisher>,
    publishes: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    closes: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Counting {
    fn new(inner: Arc<MemoryPublisher>) -> Self {
        Self {
            inner,
            publishes: Arc::default(),
            batches: Arc::default(),
            closes: Arc::default(),
            in_flight: Arc::default(),
            peak: Arc::default(),
        }
    }
}

#[async_trait]
impl Publisher for Counting {
    fn backend(&self) -> &'static str {
        "counting"
    }
    async fn publish(&self, event: Event) -> Result<Receipt> {
        self.publishes.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let r = self.inner.publish(event).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }
    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut results = Vec::new();
        for e in events {
            results.push(self.inner.publish(e).await);
        }
        BatchOutcome::new(results)
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    async fn close(&self) -> Result<CloseReport> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.inner.close().await
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}
