//! What NATS JetStream adds to the contract: a retried publish is stored once (the event id
//! travels as `Nats-Msg-Id`), a subject no stream captures is refused, credentials are checked
//! and never shown.

mod support;

use std::time::Duration;

use publisher_core::testing::unique_name;
use publisher_core::{ErrorKind, Event, Position, Publisher, Timeouts};
use publisher_nats::testing::{connect, create_stream, read_stream, stream_name};
use publisher_nats::{NatsConfig, NatsPublisher};

#[tokio::test]
async fn a_retried_publish_is_stored_once_and_its_receipt_says_duplicate() {
    if support::missing() {
        return;
    }
    let url = support::nats_url();
    let js = connect(&url).await.unwrap();
    let subject = unique_name("publisher-test.dup");
    create_stream(&js, &subject).await.unwrap();
    let publisher = NatsPublisher::from_url(&url).await.unwrap();
    let event = Event::text(subject.clone(), "once");
    let first = publisher.publish(event.clone()).await.unwrap();
    let again = publisher.publish(event.clone()).await.unwrap();
    let (
        Position::Stream {
            sequence: s1,
            duplicate: d1,
            stream,
        },
        Position::Stream {
            sequence: s2,
            duplicate: d2,
            ..
        },
    ) = (&first.position, &again.position)
    else {
        panic!("not stream positions: {first:?} {again:?}");
    };
    assert_eq!(stream, &stream_name(&subject));
    assert!(!d1 && *d2, "{first:?} {again:?}");
    assert_eq!(s1, s2);
    let held = read_stream(&js, &subject).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id(), event.id());
    publisher.close().await.unwrap();
    let _ = js.delete_stream(stream_name(&subject)).await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_rejected_and_others_go_on() {
    if support::missing() {
        return;
    }
    let url = support::nats_url();
    let js = connect(&url).await.unwrap();
    let subject = unique_name("publisher-test.routed");
    create_stream(&js, &subject).await.unwrap();
    let publisher = NatsPublisher::from_url(&url).await.unwrap();
    let nowhere = unique_name("publisher-test.nowhere");
    let outcome = publisher
        .publish_batch(vec![
            Event::text(subject.clone(), "a"),
            Event::text(nowhere.clone(), "lost"),
            Event::text(subject.clone(), "b"),
        ])
        .await;
    let results = outcome.into_results();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let e = results[1].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(e.message().contains(&nowhere), "{e}");
    assert_eq!(read_stream(&js, &subject).await.unwrap().len(), 2);
    publisher.close().await.unwrap();
    let _ = js.delete_stream(stream_name(&subject)).await;
}

#[tokio::test]
async fn refused_credentials_are_rejected_without_showing_the_password() {
    let Some(server) = own_server_with_user().await else {
        return;
    };
    let url = format!("nats://alice:wrong-pw-9931@127.0.0.1:{}", server.port);
    let e = NatsPublisher::from_url(&url).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Rejected | ErrorKind::Connect),
        "{e}"
    );
    assert!(!format!("{e} {e:?}").contains("wrong-pw-9931"), "{e:?}");
    let ok = format!("nats://alice:right-pw@127.0.0.1:{}", server.port);
    let p = NatsPublisher::from_url(&ok).await.unwrap();
    assert!(p.health().await.is_healthy());
    assert!(!format!("{p:?}").contains("right-pw"));
    p.close().await.unwrap();
}

#[tokio::test]
async fn health_says_where_and_a_dead_server_fails_fast() {
    let port = publisher_core::testing::free_port();
    let cfg = NatsConfig {
        timeouts: Timeouts::default().with_connect(Duration::from_secs(2)),
        ..NatsConfig::from_url(&format!("nats://u:pw-1@127.0.0.1:{port}")).unwrap()
    };
    let started = std::time::Instant::now();
    let e = NatsPublisher::builder()
        .config(cfg)
        .build()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(!e.to_string().contains("pw-1"), "{e}");
}

/// A `nats-server` of the test's own that wants user `alice` with password `right-pw`.
async fn own_server_with_user() -> Option<AuthServer> {
    if std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !publisher_core::testing::is_ci(),
            "nats-server is not installed"
        );
        return None;
    }
    let port = publisher_core::testing::free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
        .args(["--user", "alice", "--pass", "right-pw"])
        .arg("-sd")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let server = AuthServer {
        child,
        port,
        _dir: dir,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(server)
}

/// Killed (and its store removed) on drop.
struct AuthServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stream of its own (a unique subject) and a publisher with `permits` PubAcks in flight
/// (`max_ack_inflight`).
async fn with_ack_permits(
    hint: &str,
    permits: usize,
) -> (async_nats::jetstream::Context, String, NatsPublisher) {
    let url = support::nats_url();
    let js = connect(&url).await.unwrap();
    let subject = unique_name(hint);
    create_stream(&js, &subject).await.unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let publisher = NatsPublisher::from_url(&format!("{url}{separator}max_ack_inflight={permits}"))
        .await
        .unwrap();
    (js, subject, publisher)
}

/// A batch larger than `max_ack_inflight` (the client's permits for PubAcks in flight) is sent
/// in rounds that fit: every event confirmed and stored, none waiting forever for a permit.
#[tokio::test]
async fn a_batch_larger_than_max_ack_inflight_goes_through() {
    if support::missing() {
        return;
    }
    let (js, subject, publisher) = with_ack_permits("publisher-test.inflight", 4).await;
    let events: Vec<Event> = (0..25)
        .map(|i| Event::text(subject.clone(), format!("{i}")))
        .collect();
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        publisher.publish_batch(events.clone()),
    )
    .await
    .expect("the batch finished")
    .into_results();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let held: Vec<_> = read_stream(&js, &subject)
        .await
        .unwrap()
        .iter()
        .map(Event::id)
        .collect();
    assert_eq!(held, events.iter().map(Event::id).collect::<Vec<_>>());
    publisher.close().await.unwrap();
    let _ = js.delete_stream(stream_name(&subject)).await;
}

/// Two batches at once, each larger than half the permits: each reads its own PubAcks when no
/// permit is free, instead of both waiting for the other's permits until the publish timeout
/// (every event then unknown although JetStream stored it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_do_not_wait_for_each_others_permits() {
    if support::missing() {
        return;
    }
    let (js, subject, publisher) = with_ack_permits("publisher-test.permits", 20).await;
    let publisher = std::sync::Arc::new(publisher);
    let batch = |n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| Event::text(subject.clone(), format!("{i}")))
            .collect()
    };
    let started = std::time::Instant::now();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (p, events) = (publisher.clone(), batch(15));
            tokio::spawn(async move { p.publish_batch(events).await.into_results() })
        })
        .collect();
    for run in runs {
        let results = run.await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    // Well under the publish timeout (5 s by default), which a wait for permits would reach.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(read_stream(&js, &subject).await.unwrap().len(), 60);
    publisher.close().await.unwrap();
    let _ = js.delete_stream(stream_name(&subject)).await;
}
