//! Cross-backend scenarios on every broker: a 10,000-event workload read back intact by the
//! broker's own client, close during load losing no acknowledged event, and 50 publishers
//! opened and closed concurrently.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use publisher::{ErrorKind, Event, Publisher};
use publisher_core::testing::{Harness, Probe};
use publisher_integration::{ProbeHarness, suites};

const READ_TIMEOUT: Duration = Duration::from_secs(120);

fn event(topic: &str, i: usize) -> Event {
    Event::json(topic, &serde_json_value(i))
        .unwrap()
        .with_key(format!("key-{}", i % 16))
        .with_header("x-workload", "10k")
        .with_header("x-index", i.to_string())
}

fn serde_json_value(i: usize) -> impl serde::Serialize {
    #[derive(serde::Serialize)]
    struct Body {
        n: usize,
        text: &'static str,
    }
    Body {
        n: i,
        text: "workload ✓",
    }
}

async fn ten_thousand_round_trip<P: Probe>(suite: ProbeHarness<P>) {
    let topic = suite.topic("workload").await.unwrap();
    let publisher: Arc<dyn Publisher> = Arc::from(suite.publisher().await.unwrap());
    let events: Vec<Event> = (0..10_000).map(|i| event(&topic, i)).collect();
    let sent: HashMap<_, _> = events.iter().map(|e| (e.id(), e.clone())).collect();
    // 20 batches of 500, four in flight at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in events.chunks(500) {
        let (p, chunk) = (publisher.clone(), chunk.to_vec());
        tasks.spawn(async move { p.publish_batch(chunk).await });
        if tasks.len() >= 4 {
            let outcome = tasks.join_next().await.unwrap().unwrap();
            assert!(outcome.is_all_ok(), "{:?}", outcome.errors().next());
        }
    }
    while let Some(outcome) = tasks.join_next().await {
        let outcome = outcome.unwrap();
        assert!(outcome.is_all_ok(), "{:?}", outcome.errors().next());
    }
    let got = suite.read(&topic, 10_000, READ_TIMEOUT).await.unwrap();
    assert_eq!(got.len(), 10_000, "read back {} of 10000", got.len());
    let mut seen = HashSet::new();
    for r in &got {
        let id = r.id.expect("id carried");
        assert!(seen.insert(id), "{id} arrived twice");
        let e = &sent[&id];
        assert_eq!(r.key.as_deref(), e.key());
        assert_eq!(&r.headers, e.headers());
        assert_eq!(&r.payload, e.payload());
    }
    publisher.close().await.unwrap();
    suite.cleanup(&topic).await;
}

async fn close_during_load<P: Probe>(suite: ProbeHarness<P>) {
    let topic = suite.topic("close-load").await.unwrap();
    let publisher: Arc<dyn Publisher> = Arc::from(suite.publisher().await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let (p, e) = (publisher.clone(), event(&topic, i));
        tasks.spawn(async move {
            let id = e.id();
            (id, p.publish(e).await)
        });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = publisher.close().await.unwrap();
    let mut ok = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let (id, r) = r.unwrap();
        match r {
            Ok(_) => {
                ok.insert(id);
            }
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::Closed | ErrorKind::OutcomeUnknown),
                "{e:?}"
            ),
        }
    }
    let got: HashSet<_> = suite
        .read(&topic, ok.len(), READ_TIMEOUT)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.unwrap())
        .collect();
    for id in &ok {
        assert!(
            got.contains(id),
            "acknowledged {id} lost at close ({report})"
        );
    }
    suite.cleanup(&topic).await;
}

async fn fifty_publishers<P: Probe + 'static>(suite: ProbeHarness<P>) {
    let topic = suite.topic("fifty").await.unwrap();
    let suite = Arc::new(suite);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (s, t) = (suite.clone(), topic.clone());
        tasks.spawn(async move {
            let p = s.publisher().await.unwrap();
            p.publish(event(&t, i)).await.unwrap();
            let report = p.close().await.unwrap();
            assert!(report.is_clean());
            assert!(p.is_closed());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let got = suite.read(&topic, 50, READ_TIMEOUT).await.unwrap();
    assert_eq!(got.len(), 50);
    suite.cleanup(&topic).await;
}

macro_rules! scenarios {
    ($($backend:ident),*) => {
        $(
            mod $backend {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ten_thousand_events_read_back_intact() {
                    let Some(s) = suites::$backend().await else { return };
                    ten_thousand_round_trip(s).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn close_during_load_loses_no_acknowledged_event() {
                    let Some(s) = suites::$backend().await else { return };
                    close_during_load(s).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn fifty_publishers_open_and_close_concurrently() {
                    let Some(s) = suites::$backend().await else { return };
                    fifty_publishers(s).await;
                }
            }
        )*
    };
}

scenarios!(redis_stream, amqp, kafka, nats);
