//! `evpub send`: JSON lines in, events out, one summary line at the end.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use publisher::{Event, Publisher};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::input::parse_line;

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
    /// Publishes in flight at once; events with the same key keep their order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,
    /// What to do with a line that is not valid input.
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    pub on_error: OnError,
}

#[derive(Default)]
struct Counts {
    published: AtomicU64,
    failed: AtomicU64,
}

/// Runs `send`; returns the process exit code.
pub async fn run(publisher: Box<dyn Publisher>, args: SendArgs) -> i32 {
    let reader: Box<dyn AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => match tokio::fs::File::open(path).await {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("evpub: cannot read {}: {e}", path.display());
                let _ = publisher.close().await;
                return 1;
            }
        },
        None => Box::new(tokio::io::stdin()),
    };
    let total = match &args.file {
        Some(path) => std::fs::read(path)
            .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
            .ok(),
        None => None,
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let publisher: Arc<dyn Publisher> = Arc::from(publisher);
    let counts = Arc::new(Counts::default());
    let interrupted = CancellationToken::new();
    let started = Instant::now();

    // One lane per unit of concurrency; a key always maps to the same lane, so events with the
    // same key are published in input order.
    let lanes = usize::from(args.concurrency);
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..lanes {
        let (tx, mut rx) = mpsc::channel::<(usize, Event)>(64);
        senders.push(tx);
        let (p, counts, progress, stop) = (
            publisher.clone(),
            counts.clone(),
            progress.clone(),
            interrupted.clone(),
        );
        workers.spawn(async move {
            let mut not_sent = 0u64;
            while let Some((line, event)) = rx.recv().await {
                if stop.is_cancelled() {
                    not_sent += 1;
                    continue;
                }
                match p.publish(event).await {
                    Ok(_) => counts.published.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        progress.suspend(|| eprintln!("line {line}: not published: {e}"));
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                progress.inc(1);
            }
            not_sent
        });
    }

    let mut lines = BufReader::new(reader).lines();
    let mut line_no = 0usize;
    let mut skipped = 0u64;
    let mut fatal = false;
    let mut next_lane = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let line = tokio::select! {
            _ = &mut ctrl_c => {
                interrupted.cancel();
                break;
            }
            line = lines.next_line() => line,
        };
        let text = match line {
            Ok(Some(text)) => text,
            Ok(None) => break,
            Err(e) => {
                progress
                    .suspend(|| eprintln!("evpub: reading input failed after line {line_no}: {e}"));
                fatal = true;
                break;
            }
        };
        line_no += 1;
        if text.trim().is_empty() {
            continue;
        }
        let event = match parse_line(&text, line_no, args.topic.as_deref()) {
            Ok(event) => event,
            Err(e) => {
                progress.suspend(|| eprintln!("{e}"));
                progress.inc(1);
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
        let send = senders[lane].send((line_no, event));
        tokio::select! {
            _ = &mut ctrl_c => {
                interrupted.cancel();
                break;
            }
            r = send => if r.is_err() { break },
        }
    }
    drop(senders);
    let mut not_sent = 0;
    loop {
        tokio::select! {
            _ = &mut ctrl_c, if !interrupted.is_cancelled() => interrupted.cancel(),
            next = workers.join_next() => match next {
                Some(r) => not_sent += r.unwrap_or(0),
                None => break,
            },
        }
    }
    progress.finish_and_clear();
    let close = publisher.close().await;
    let elapsed = started.elapsed();
    let published = counts.published.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let rate = published as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut summary = format!(
        "published {published}, failed {failed}, skipped {skipped}, elapsed {elapsed:.2?}, {rate:.0} events/s"
    );
    if interrupted.is_cancelled() {
        summary = format!("interrupted: {summary}, not sent {not_sent}");
    }
    eprintln!("{summary}");
    match &close {
        Ok(report) if interrupted.is_cancelled() || !report.is_clean() => {
            eprintln!("close: {report}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("close failed: {e}"),
    }
    if interrupted.is_cancelled() {
        130
    } else if failed == 0 && skipped == 0 && !fatal && close.is_ok() {
        0
    } else {
        1
    }
}
