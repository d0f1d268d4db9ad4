//! librdkafka runs its own threads; `close` (and a drop without close) must end them all.
//! One test in its own binary, since threads are counted process-wide.

mod support;

use std::time::{Duration, Instant};

use publisher_core::{Event, Publisher};
use publisher_kafka::KafkaPublisher;
use support::{brokers, config, create_topic, delete_topic};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn back_to(baseline: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads() > baseline {
        assert!(
            Instant::now() < deadline,
            "{what}: {} librdkafka thread(s) left behind",
            threads() - baseline
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_drop_leave_no_librdkafka_thread_behind() {
    let b = brokers();
    let topic = publisher_core::testing::unique_name("publisher-test.threads");
    create_topic(&b, &topic, 1).await;
    // Let the runtime's blocking pool settle: it is part of the baseline, not of the producer.
    let warm = KafkaPublisher::builder()
        .config(config(&b))
        .build()
        .unwrap();
    warm.publish(Event::text(topic.clone(), "warm"))
        .await
        .unwrap();
    warm.health().await;
    warm.close().await.unwrap();
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = threads();

    let p = KafkaPublisher::builder()
        .config(config(&b))
        .build()
        .unwrap();
    p.publish(Event::text(topic.clone(), "x")).await.unwrap();
    assert!(threads() > baseline, "librdkafka threads should be running");
    p.close().await.unwrap();
    // Still alive (not dropped), but closed: its threads must be gone.
    back_to(baseline, "after close").await;
    drop(p);

    let p = KafkaPublisher::builder()
        .config(config(&b))
        .build()
        .unwrap();
    p.publish(Event::text(topic.clone(), "y")).await.unwrap();
    // rdkafka's own drop blocks (it joins its threads: 40 ms against a local broker, 100 to
    // 600 ms against remote ones): it must happen off this async worker, so the drop itself
    // returns at once (about 50 µs here).
    let started = Instant::now();
    drop(p);
    let blocked = started.elapsed();
    assert!(
        blocked < Duration::from_millis(20),
        "dropping the publisher blocked the async worker for {blocked:?}"
    );
    back_to(baseline, "after drop without close").await;
    delete_topic(&b, &topic).await;
}
