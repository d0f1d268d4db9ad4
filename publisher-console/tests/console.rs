//! Console-specific behaviour: real files, real broken pipes, stalled writers, flush policy,
//! text format and bad input.

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use publisher_console::{
    CaptureBuffer, ConsoleConfig, ConsolePublisher, FlushPolicy, Format, Target,
};
use publisher_core::envelope::Envelope;
use publisher_core::{ErrorKind, Event, Publisher, Timeouts};
use tokio::io::AsyncWrite;

#[tokio::test]
async fn file_target_receives_every_line_and_is_flushed_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let p = ConsolePublisher::from_url(&format!("console://{}?flush=batch", path.display()))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        let e = Event::json("orders", &serde_json::json!({ "i": i })).unwrap();
        ids.push(e.id());
        p.publish(e).await.unwrap();
    }
    let report = p.close().await.unwrap();
    assert!(report.is_clean());
    let mut s = String::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    let read: Vec<_> = s
        .lines()
        .map(|l| Envelope::parse(l.as_bytes()).unwrap().id)
        .collect();
    assert_eq!(read, ids);
}

#[tokio::test]
async fn flush_policy_event_flushes_every_publish_batch_policy_once_per_batch() {
    let out = CaptureBuffer::new();
    let p = ConsolePublisher::builder()
        .writer(out.clone())
        .format(Format::Json)
        .build()
        .unwrap();
    for _ in 0..3 {
        p.publish(Event::text("t", "x")).await.unwrap();
    }
    assert_eq!(out.flushes(), 3);
    assert_eq!(out.lines().len(), 3);

    let out = CaptureBuffer::new();
    let p = ConsolePublisher::builder()
        .writer(out.clone())
        .format(Format::Json)
        .flush(FlushPolicy::Batch)
        .build()
        .unwrap();
    p.publish(Event::text("t", "buffered")).await.unwrap();
    assert_eq!(
        out.lines().len(),
        0,
        "batch policy must not flush single publishes"
    );
    let outcome = p
        .publish_batch((0..10).map(|i| Event::text("t", i.to_string())).collect())
        .await;
    assert!(outcome.is_all_ok());
    assert_eq!(out.flushes(), 1);
    assert_eq!(out.lines().len(), 11);
    p.close().await.unwrap();
}

#[tokio::test]
async fn closed_pipe_is_a_typed_error_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
    let p = ConsolePublisher::builder()
        .writer(tokio::fs::File::from_std(file))
        .format(Format::Json)
        .build()
        .unwrap();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("broken pipe"), "{err}");
    assert!(!err.is_retryable());
    // Close still succeeds, and reports the line it could not deliver.
    let report = p.close().await.unwrap();
    assert_eq!(report.abandoned, 1, "{report}");
}

#[tokio::test]
async fn broken_capture_fails_batch_events_individually() {
    let out = CaptureBuffer::new();
    let p = ConsolePublisher::builder()
        .writer(out.clone())
        .format(Format::Json)
        .build()
        .unwrap();
    out.break_pipe();
    let outcome = p
        .publish_batch(vec![Event::text("t", "a"), Event::text("t", "b")])
        .await;
    assert_eq!(outcome.failed(), 2);
    for (_, e) in outcome.errors() {
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}

/// A writer that never accepts a byte, like a pipe nobody reads.
struct Stalled;
impl AsyncWrite for Stalled {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn stalled_output_times_out_within_the_bound_and_close_is_bounded() {
    let timeouts = Timeouts::default()
        .with_publish(Duration::from_millis(200))
        .with_close(Duration::from_millis(300));
    let p = ConsolePublisher::builder()
        .writer(Stalled)
        .format(Format::Json)
        .timeouts(timeouts)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = p.publish(Event::text("t", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The output may now hold a partial line: later writes are refused, not interleaved.
    let err = p.publish(Event::text("t", "y")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!p.health().await.is_healthy());
    let started = Instant::now();
    let _ = p.close().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn text_format_writes_readable_lines_and_refuses_binary() {
    let out = CaptureBuffer::new();
    let p = ConsolePublisher::builder()
        .writer(out.clone())
        .format(Format::Text)
        .color(false)
        .build()
        .unwrap();
    p.publish(Event::text("orders.created", "order 42").with_key("c7"))
        .await
        .unwrap();
    let err = p
        .publish(Event::new("orders.created", vec![0xffu8, 0xfe]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidEvent);
    assert_eq!(err.field(), Some("payload"));
    p.close().await.unwrap();
    let lines = out.lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("orders.created key=c7"), "{}", lines[0]);
    assert!(lines[0].ends_with("order 42"), "{}", lines[0]);
}

#[tokio::test]
async fn bad_config_is_typed_and_names_the_field() {
    let cfg = ConsoleConfig {
        timeouts: Timeouts::default().with_publish(Duration::ZERO),
        ..Default::default()
    };
    let err = ConsolePublisher::builder().config(cfg).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.field(), Some("timeouts.publish"));

    let err = ConsolePublisher::builder()
        .target(Target::File("/nonexistent-dir/x/y.jsonl".into()))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), Some("target"));

    let err = ConsolePublisher::from_url("console://stdout?flush=sometimes")
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("flush"));
}

#[tokio::test]
async fn lent_writer_is_flushed_not_shut_down() {
    let out = CaptureBuffer::new();
    let p = ConsolePublisher::builder()
        .writer(out.clone())
        .format(Format::Json)
        .flush(FlushPolicy::Batch)
        .build()
        .unwrap();
    p.publish(Event::text("t", "x")).await.unwrap();
    p.close().await.unwrap();
    assert_eq!(out.lines().len(), 1, "close must flush buffered lines");
    // Still writable by its owner afterwards.
    use tokio::io::AsyncWriteExt;
    let mut w = out.clone();
    w.write_all(b"owner\n").await.unwrap();
}

/// JSON lines to `writer` with `flush=batch`.
fn batch_json(
    writer: impl AsyncWrite + Send + Unpin + 'static,
    timeouts: Timeouts,
) -> ConsolePublisher {
    ConsolePublisher::builder()
        .writer(writer)
        .format(Format::Json)
        .flush(FlushPolicy::Batch)
        .timeouts(timeouts)
        .build()
        .unwrap()
}

/// Publish and close timeouts, in milliseconds.
fn timeouts(publish_ms: u64, close_ms: u64) -> Timeouts {
    Timeouts::default()
        .with_publish(Duration::from_millis(publish_ms))
        .with_close(Duration::from_millis(close_ms))
}

/// A writer that accepts nothing until released, then everything (a slow disk, a reader that
/// catches up late).
#[derive(Clone, Default)]
struct Held {
    released: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waker: std::sync::Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}
impl Held {
    fn release(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
    fn ready(&self, cx: &mut Context<'_>) -> bool {
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }
}
impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.ready(cx) {
            return Poll::Pending;
        }
        self.bytes
            .fetch_add(buf.len(), std::sync::atomic::Ordering::SeqCst);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.ready(cx) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// With `flush=batch`, the publish whose line fills the buffer writes it; the others do not
/// queue behind that write (they return once their line is buffered), until the lines waiting
/// reach the bound (1 MiB), where they wait for the output too. Nothing is lost: every line is
/// written once the output accepts bytes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_flush_publishes_do_not_queue_behind_a_slow_write() {
    let out = Held::default();
    let p = std::sync::Arc::new(batch_json(out.clone(), Timeouts::default()));
    let payload = "x".repeat(1000);
    // About 1.4 MB of lines while the output accepts nothing.
    let total = 1200;
    let mut tasks = Vec::new();
    for _ in 0..total {
        let (p, payload) = (p.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            p.publish(Event::text("t", payload)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = tasks.iter().filter(|t| t.is_finished()).count();
    // Lines of about 1.15 KB: the first 64 KiB go to the held write, about 900 more fill the
    // bound, and one publish per 64 KiB waits (it writes them); the rest wait for the output.
    assert!(
        done > 700,
        "publishes queued behind the write: {done} of {total} returned"
    );
    assert!(
        total - done > 100,
        "the lines waiting are not bounded: {done} returned"
    );
    out.release();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let report = p.close().await.unwrap();
    assert_eq!(report.abandoned, 0);
    let written = out.bytes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(written > total * 1000, "{written} bytes for {total} lines");
}

/// Once a write failed or stalled past the publish timeout, later publishes are refused, even
/// with `flush=batch` where they would only have been buffered: never Ok for a line that
/// cannot be written.
#[tokio::test]
async fn after_a_stalled_write_buffered_publishes_are_refused() {
    let p = batch_json(Stalled, timeouts(200, 300));
    let payload = "x".repeat(1000);
    let mut oks = 0;
    // Buffered until the write behind them stalls past the publish timeout, or until the lines
    // waiting reach their bound (1 MiB) and a publish waits for the stalled output itself.
    let err = loop {
        match p.publish(Event::text("t", payload.clone())).await {
            Ok(_) => oks += 1,
            Err(e) => break e,
        }
        assert!(oks < 2000, "the lines waiting are not bounded");
    };
    assert!(
        matches!(
            err.kind(),
            ErrorKind::OutcomeUnknown | ErrorKind::Unavailable
        ),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = p.publish(Event::text("t", "y")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let outcome = p
        .publish_batch(vec![Event::text("t", "a"), Event::text("t", "b")])
        .await;
    assert_eq!(outcome.failed(), 2);
    // What was buffered and never written is reported, not silently dropped.
    let report = p.close().await.unwrap();
    assert!(report.abandoned >= oks, "{report} for {oks} buffered lines");
}

/// A close while a write is held by the output (a paused reader): bounded, and it reports every
/// line the output did not take, rather than failing with a timeout that counts nothing.
#[tokio::test]
async fn close_during_a_held_write_reports_the_lines_it_could_not_write() {
    let out = Held::default();
    let p = batch_json(out.clone(), timeouts(5000, 300));
    let payload = "x".repeat(1000);
    for _ in 0..100 {
        // Over 64 KiB: a write starts beside the publishes, and the output holds it.
        p.publish(Event::text("t", payload.clone())).await.unwrap();
    }
    let started = Instant::now();
    let report = p.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.abandoned, 100, "{report}");
    assert_eq!(out.bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
}
