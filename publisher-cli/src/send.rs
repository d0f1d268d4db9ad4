//! `evpub send`: JSON lines in, events out, one summary line at the end.
//!
//! Lines are read as a stream (never the whole file) and handed to lanes; a key always goes to
//! the same lane, so events with the same key are published in input order. A lane publishes
//! what is waiting for it as one batch (up to `--max-batch`), which every backend sends in
//! order on one connection, channel or producer: many publishes are in flight per lane while
//! the order per key is kept, and a lane is as fast as the client's own batching.

use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use publisher::{Event, Publisher, Uuid};
use publisher_outbox::SpoolConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::attempts::{self, MaybeSent};
use crate::input::parse_line;
use crate::progress::Progress;
use crate::receipts::{Outcome, Receipts};

/// What to do with a line that is not valid input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Report it and stop (default): nothing after it is read.
    Fail,
    /// Report it, skip it, go on; the exit code is still 1.
    Skip,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// JSON-lines file to publish (default: standard input).
    pub file: Option<PathBuf>,
    /// Topic for lines that are not envelopes (or envelopes without `topic`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Lanes publishing at once; events with the same key go to the same lane and keep their
    /// order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,
    /// Most events a lane publishes in one batch when input is waiting (1: one at a time).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// What to do with a line that is not valid input.
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    pub on_error: OnError,
    /// Retry failures that may succeed later (a broker restarting, a lost connection, a
    /// timeout) with exponential backoff, from 100 ms up to 2 s between attempts, for at most
    /// `--retry-for` per line. A line retried after an attempt whose outcome was unknown may
    /// reach the broker twice (same event id): the summary counts them and `--receipts` marks
    /// them.
    #[arg(long)]
    pub retry: bool,
    /// With `--retry`: how long one line may be retried.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
    /// Write one JSON line per input line to FILE: line number, event id, ok or the error's
    /// kind and message, and where the broker put it.
    #[arg(long, value_name = "FILE")]
    pub receipts: Option<PathBuf>,
    /// Spool events durably in DIR (a local, crash-safe store) and deliver them from there:
    /// an event counts as published once it is on disk, so the input can be sent while the
    /// broker is down. What an earlier run left in DIR is delivered first. One evpub at a time
    /// per DIR.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// With `--spool`: how long to wait, after the input, for the spool to be delivered to the
    /// broker; what is still spooled then stays in DIR for the next run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub spool_wait: Duration,
}

/// Lines parsed for one lane, handed over together (one wake-up per chunk, not per line).
type Chunk = Vec<(usize, Event)>;

/// Most lines in a chunk. A chunk is also handed over whenever the reader is about to wait for
/// more input, so that a slow producer's lines are not held back.
const CHUNK: usize = 128;

#[derive(Default)]
struct Counts {
    published: AtomicU64,
    failed: AtomicU64,
    maybe_twice: AtomicU64,
    not_sent: AtomicU64,
}

/// One lane's share of the work.
struct Lane {
    publisher: Arc<dyn Publisher>,
    counts: Arc<Counts>,
    progress: Progress,
    receipts: Receipts,
    /// Set under `--retry` only.
    maybe_sent: Option<MaybeSent>,
    stop: CancellationToken,
    endpoint: Arc<str>,
    max_batch: usize,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Chunk>) {
        let mut queue: VecDeque<(usize, Event)> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match rx.recv().await {
                    Some(chunk) => queue.extend(chunk),
                    None => return,
                }
            }
            while queue.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(chunk) => queue.extend(chunk),
                    Err(_) => break,
                }
            }
            let n = queue.len().min(self.max_batch);
            if self.stop.is_cancelled() {
                for (line, event) in queue.drain(..n) {
                    self.counts.not_sent.fetch_add(1, Ordering::Relaxed);
                    let outcome = Outcome::NotSent;
                    self.receipts.record(line, Some(event.id()), &outcome).await;
                }
                continue;
            }
            let (lines, mut events): (Vec<usize>, Vec<Event>) = queue.drain(..n).unzip();
            let ids: Vec<Uuid> = events.iter().map(Event::id).collect();
            let results = if events.len() == 1 {
                vec![self.publisher.publish(events.remove(0)).await]
            } else {
                self.publisher.publish_batch(events).await.into_results()
            };
            for ((line, id), result) in lines.into_iter().zip(ids).zip(results) {
                let maybe_duplicate = self.maybe_sent.as_ref().is_some_and(|m| m.take(&id));
                let outcome = match result {
                    Ok(receipt) => {
                        self.counts.published.fetch_add(1, Ordering::Relaxed);
                        if maybe_duplicate {
                            self.counts.maybe_twice.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Published {
                            position: receipt.position,
                            maybe_duplicate,
                        }
                    }
                    Err(e) => {
                        self.counts.failed.fetch_add(1, Ordering::Relaxed);
                        self.progress.say(format!(
                            "line {line}: not published ({}): {e}",
                            self.endpoint
                        ));
                        Outcome::Failed(e)
                    }
                };
                self.receipts.record(line, Some(id), &outcome).await;
                self.progress.done();
            }
        }
    }
}

/// Hands every lane its parsed lines. Returns false when the lanes are gone (they never stop
/// before their channel closes, so only after a panic). Ctrl-C while waiting for a full lane
/// marks the run interrupted; the lines still go, and the lane records them as not sent.
async fn hand_over(
    senders: &[mpsc::Sender<Chunk>],
    pending: &mut [Chunk],
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
    interrupted: &CancellationToken,
) -> bool {
    for (tx, chunk) in senders.iter().zip(pending.iter_mut()) {
        if chunk.is_empty() {
            continue;
        }
        let permit = loop {
            tokio::select! {
                _ = ctrl_c.as_mut(), if !interrupted.is_cancelled() => interrupted.cancel(),
                permit = tx.reserve() => break permit,
            }
        };
        match permit {
            Ok(permit) => permit.send(std::mem::take(chunk)),
            Err(_) => return false,
        }
    }
    true
}

/// Runs `send`; returns the process exit code.
pub async fn run(publisher: Box<dyn Publisher>, endpoint: &str, args: SendArgs) -> i32 {
    let (reader, total): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = match &args.file {
        Some(path) => match tokio::fs::File::open(path).await {
            Ok(f) => {
                let len = f.metadata().await.ok().map(|m| m.len());
                (Box::new(f), len)
            }
            Err(e) => {
                eprintln!("evpub: cannot read {}: {e}", path.display());
                let _ = publisher.close().await;
                return 1;
            }
        },
        None => (Box::new(tokio::io::stdin()), None),
    };
    let (receipts, receipts_writer) = match &args.receipts {
        Some(path) => match Receipts::to_file(path).await {
            Ok((r, w)) => (r, Some(w)),
            Err(e) => {
                eprintln!("evpub: cannot write receipts to {}: {e}", path.display());
                let _ = publisher.close().await;
                return 1;
            }
        },
        None => (Receipts::none(), None),
    };
    let maybe_sent = MaybeSent::default();
    let mut publisher: Arc<dyn Publisher> = Arc::from(publisher);
    let mut spool = None;
    if let Some(dir) = &args.spool {
        match publisher_outbox::with_spool(publisher.clone(), SpoolConfig::new(dir)).await {
            Ok(s) => {
                let s = Arc::new(s);
                let backlog = s.backlog();
                if backlog.pending > 0 {
                    eprintln!(
                        "evpub: spool {}: {} events from an earlier run, delivering them first",
                        dir.display(),
                        backlog.pending
                    );
                }
                publisher = s.clone();
                spool = Some(s);
            }
            Err(e) => {
                eprintln!("evpub: --spool {}: {e}", dir.display());
                let _ = publisher.close().await;
                return 2;
            }
        }
    }
    if args.retry {
        publisher = match attempts::with_retry(
            publisher.clone(),
            attempts::policy(args.retry_for),
            maybe_sent.clone(),
        ) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("evpub: --retry-for: {e}");
                let _ = publisher.close().await;
                return 2;
            }
        };
    }
    let progress = Progress::new(total);
    let counts = Arc::new(Counts::default());
    let interrupted = CancellationToken::new();
    let started = Instant::now();
    let endpoint: Arc<str> = Arc::from(endpoint);

    let lanes = usize::from(args.concurrency);
    let max_batch = args.max_batch as usize;
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..lanes {
        // Room for the next batch while one is in flight.
        let (tx, rx) = mpsc::channel::<Chunk>(2 * max_batch.div_ceil(CHUNK) + 2);
        senders.push(tx);
        let lane = Lane {
            publisher: publisher.clone(),
            counts: counts.clone(),
            progress: progress.clone(),
            receipts: receipts.clone(),
            maybe_sent: args.retry.then(|| maybe_sent.clone()),
            stop: interrupted.clone(),
            endpoint: endpoint.clone(),
            max_batch,
        };
        workers.spawn(lane.run(rx));
    }

    let mut input = BufReader::with_capacity(256 * 1024, reader);
    let mut text = String::new();
    let mut line_no = 0usize;
    let mut skipped = 0u64;
    let mut fatal = false;
    let mut next_lane = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut pending: Vec<Chunk> = (0..lanes).map(|_| Vec::new()).collect();
    let mut bytes_read = 0u64;
    loop {
        if interrupted.is_cancelled() {
            break;
        }
        if input.buffer().is_empty() {
            // The next read may wait: hand over what is parsed first.
            progress.read(std::mem::take(&mut bytes_read));
            if !hand_over(&senders, &mut pending, &mut ctrl_c, &interrupted).await {
                break;
            }
        }
        text.clear();
        let read = tokio::select! {
            _ = &mut ctrl_c => {
                interrupted.cancel();
                break;
            }
            read = input.read_line(&mut text) => read,
        };
        match read {
            Ok(0) => break,
            Ok(n) => bytes_read += n as u64,
            Err(e) => {
                progress.say(format!(
                    "evpub: reading input failed after line {line_no}: {e}"
                ));
                fatal = true;
                break;
            }
        }
        line_no += 1;
        if text.trim().is_empty() {
            continue;
        }
        let event = match parse_line(
            text.trim_end_matches(['\n', '\r']),
            line_no,
            args.topic.as_deref(),
        ) {
            Ok(event) => event,
            Err(e) => {
                progress.say(e.to_string());
                progress.done();
                receipts
                    .record(line_no, None, &Outcome::Invalid(e.message.clone()))
                    .await;
                match args.on_error {
                    OnError::Skip => {
                        skipped += 1;
                        continue;
                    }
                    OnError::Fail => {
                        fatal = true;
                        break;
                    }
                }
            }
        };
        let lane = match event.key() {
            Some(key) => {
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % lanes as u64) as usize
            }
            None => {
                next_lane = (next_lane + 1) % lanes;
                next_lane
            }
        };
        pending[lane].push((line_no, event));
        if pending[lane].len() >= CHUNK
            && !hand_over(&senders, &mut pending, &mut ctrl_c, &interrupted).await
        {
            break;
        }
    }
    // What was read before the end (or an interruption, or a fatal line) goes to the lanes,
    // which publish it, or record it as not sent when interrupted.
    progress.read(bytes_read);
    hand_over(&senders, &mut pending, &mut ctrl_c, &interrupted).await;
    drop(senders);
    loop {
        tokio::select! {
            _ = &mut ctrl_c, if !interrupted.is_cancelled() => interrupted.cancel(),
            next = workers.join_next() => if next.is_none() { break },
        }
    }
    progress.finish();
    if let Some(spool) = &spool
        && !interrupted.is_cancelled()
    {
        let waiting = spool.backlog().pending;
        if waiting > 0 {
            eprintln!(
                "evpub: waiting up to {} for {waiting} spooled events to reach {endpoint}",
                humantime::format_duration(args.spool_wait)
            );
            tokio::select! {
                _ = &mut ctrl_c => interrupted.cancel(),
                _ = spool.wait_delivered(args.spool_wait) => {}
            }
        }
    }
    let close = publisher.close().await;
    drop(receipts);
    let receipts_ok = match receipts_writer {
        Some(w) => match w.await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                eprintln!("evpub: writing receipts failed: {e}");
                false
            }
            Err(e) => {
                eprintln!("evpub: writing receipts failed: {e}");
                false
            }
        },
        None => true,
    };
    let elapsed = started.elapsed();
    let published = counts.published.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let maybe_twice = counts.maybe_twice.load(Ordering::Relaxed);
    let not_sent = counts.not_sent.load(Ordering::Relaxed);
    let rate = published as f64 / elapsed.as_secs_f64().max(1e-9);
    let verb = if spool.is_some() {
        "spooled"
    } else {
        "published"
    };
    let mut summary = format!(
        "{verb} {published}, failed {failed}, skipped {skipped}, elapsed {elapsed:.2?}, {rate:.0} events/s ({endpoint})"
    );
    if maybe_twice > 0 {
        summary.push_str(&format!(
            "; {maybe_twice} of them possibly twice (an earlier attempt's outcome was unknown)"
        ));
    }
    if let (Some(spool), Some(dir)) = (&spool, &args.spool) {
        let delivered = spool.relay_counts().delivered;
        let left = spool
            .relay_report()
            .and_then(|r| r.left)
            .unwrap_or_else(|| spool.backlog());
        summary.push_str(&format!(
            "; spool {}: delivered {delivered} this run, left {} (the next `evpub send --spool` \
             delivers them), dead {}",
            dir.display(),
            left.pending,
            left.dead
        ));
    }
    if interrupted.is_cancelled() {
        summary = format!("interrupted: {summary}, not sent {not_sent}");
    }
    eprintln!("{summary}");
    match &close {
        Ok(report) if interrupted.is_cancelled() || !report.is_clean() => {
            eprintln!("close: {report}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("close failed ({endpoint}): {e}"),
    }
    if interrupted.is_cancelled() {
        130
    } else if failed == 0
        && skipped == 0
        && !fatal
        && close.is_ok()
        && receipts_ok
        // An event the broker refused from the spool is a failure too.
        && spool.as_ref().is_none_or(|s| s.relay_counts().dead == 0)
    {
        0
    } else {
        1
    }
}
