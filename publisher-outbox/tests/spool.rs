//! The spool in front of the in-memory publisher (faults on demand) and a Redis that is down.

use std::sync::Arc;
use std::time::Duration;

use publisher_core::testing::free_port;
use publisher_core::{ErrorKind, Event, MemoryPublisher, Position, Publisher};
use publisher_outbox::{RelayConfig, Spool, SpoolConfig, with_spool};

fn config(dir: &std::path::Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.close_timeout = Duration::from_secs(2);
    c.relay = RelayConfig {
        idle_poll: Duration::from_millis(10),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        close_timeout: Duration::from_millis(300),
        ..RelayConfig::default()
    };
    c
}

fn memory() -> Arc<MemoryPublisher> {
    Arc::new(MemoryPublisher::builder().build().unwrap())
}

/// A publisher whose broker is down: Redis on a port nothing listens on.
async fn down() -> Arc<dyn Publisher> {
    publisher::from_url_arc(&format!("redis://127.0.0.1:{}", free_port()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_then_delivered_in_order_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let memory = memory();
    let spool = with_spool(memory.clone(), config(dir.path()))
        .await
        .unwrap();
    let events: Vec<Event> = (0..300)
        .map(|i| Event::text("orders", format!("{i}")).with_key(format!("k{}", i % 7)))
        .collect();
    let mut sequences = Vec::new();
    // Singles and a batch, side by side.
    let (singles, batch) = events.split_at(100);
    let singles = futures::future::join_all(singles.iter().cloned().map(|e| spool.publish(e)));
    let (singles, batch) = tokio::join!(singles, spool.publish_batch(batch.to_vec()));
    for r in singles.into_iter().chain(batch.into_results()) {
        match r.unwrap().position {
            Position::Spooled { sequence } => sequences.push(sequence),
            other => panic!("not spooled: {other:?}"),
        }
    }
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences.len(), 300, "one sequence per event");
    let left = spool.wait_delivered(Duration::from_secs(20)).await;
    assert_eq!(left.pending, 0);
    let report = spool.close().await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert_eq!(spool.relay_report().unwrap().left.unwrap().pending, 0);
    let stored = memory.get_ref().store().events_for("orders");
    assert_eq!(stored.len(), 300);
    for k in 0..7 {
        let key = format!("k{k}");
        let want: Vec<_> = stored
            .iter()
            .filter(|e| e.key() == Some(&key))
            .map(Event::id)
            .collect();
        // Within a key, the order the publishes were spooled in: singles were awaited
        // concurrently, so compare with the spool's own order (the relay's), by payload number
        // for the batch part, which was spooled in one commit in input order.
        let batch_part: Vec<_> = events[100..]
            .iter()
            .filter(|e| e.key() == Some(&key))
            .map(Event::id)
            .collect();
        let got_batch: Vec<_> = want
            .iter()
            .copied()
            .filter(|id| batch_part.contains(id))
            .collect();
        assert_eq!(got_batch, batch_part, "key {key}");
    }
    assert!(
        spool
            .publish(Event::text("orders", "late"))
            .await
            .unwrap_err()
            .kind()
            == ErrorKind::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_across_a_restart_while_the_broker_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let spool = with_spool(down().await, config(dir.path())).await.unwrap();
    let events: Vec<Event> = (0..50).map(|i| Event::text("t", format!("{i}"))).collect();
    for e in &events {
        spool.publish(e.clone()).await.unwrap();
    }
    // One process per spool.
    let e = with_spool(memory(), config(dir.path())).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(spool.relay_counts().retries > 0);
    assert_eq!(spool.backlog().pending, 50);
    let started = tokio::time::Instant::now();
    spool.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let left = spool.relay_report().unwrap().left.unwrap();
    assert_eq!(left.pending, 50, "left for the next start");
    drop(spool);

    // The next start delivers them, with their ids.
    let memory = memory();
    let spool = with_spool(memory.clone(), config(dir.path()))
        .await
        .unwrap();
    assert_eq!(spool.backlog().pending, 50);
    assert_eq!(
        spool.wait_delivered(Duration::from_secs(20)).await.pending,
        0
    );
    spool.close().await.unwrap();
    // Events without a key have no order to keep: the same set, each once.
    let mut got: Vec<_> = memory
        .get_ref()
        .store()
        .events_for("t")
        .iter()
        .map(Event::id)
        .collect();
    let mut want: Vec<_> = events.iter().map(Event::id).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_is_unavailable_never_a_silent_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_bytes = 4_000;
    let spool = with_spool(down().await, c).await.unwrap();
    let mut ok = 0;
    let mut full = None;
    for i in 0..100 {
        match spool
            .publish(Event::text("t", format!("event {i:04}")))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let full = full.expect("the spool filled up");
    assert_eq!(full.kind(), ErrorKind::Unavailable);
    assert!(full.message().contains("max_bytes"), "{full}");
    assert!(ok > 0);
    assert_eq!(spool.backlog().pending, ok, "every accepted event kept");
    assert!(spool.used_bytes() <= 4_000);
    // A batch that does not fit is refused whole, each event with the same error.
    let outcome = spool
        .publish_batch(vec![Event::text("t", "a"), Event::text("", "bad")])
        .await
        .into_results();
    assert_eq!(
        outcome[0].as_ref().unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    let bad = outcome[1].as_ref().unwrap_err();
    assert_eq!(
        (bad.kind(), bad.field()),
        (ErrorKind::InvalidEvent, Some("topic"))
    );
    spool.close().await.unwrap();
}

#[tokio::test]
async fn bad_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (field, c) in [
        ("dir", SpoolConfig::new("")),
        (
            "max_bytes",
            SpoolConfig {
                max_bytes: 0,
                ..SpoolConfig::new(dir.path())
            },
        ),
        (
            "publish_timeout",
            SpoolConfig {
                publish_timeout: Duration::ZERO,
                ..SpoolConfig::new(dir.path())
            },
        ),
    ] {
        let e = Spool::open(memory(), c).await.unwrap_err();
        assert_eq!((e.kind(), e.field()), (ErrorKind::Config, Some(field)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_the_spool_is_invalid_alone_and_close_is_concurrent_safe() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_bytes = 2_000;
    let memory = memory();
    let spool = with_spool(memory.clone(), c.clone()).await.unwrap();
    let huge = Event::text("t", "x".repeat(5_000));
    let e = spool.publish(huge.clone()).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidEvent, Some("payload"))
    );
    assert!(!e.is_retryable());
    // In a batch, only the huge one fails.
    let results = spool
        .publish_batch(vec![Event::text("t", "small"), huge])
        .await
        .into_results();
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().unwrap_err().kind(),
        ErrorKind::InvalidEvent
    );
    assert_eq!(
        spool.wait_delivered(Duration::from_secs(10)).await.pending,
        0
    );
    let (a, b) = tokio::join!(spool.close(), spool.close());
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(memory.get_ref().store().events_for("t").len(), 1);
    drop(spool);
    // The same process may open it again at once.
    let again = with_spool(memory.clone(), c).await.unwrap();
    assert_eq!(again.backlog().pending, 0);
    again.close().await.unwrap();
}
