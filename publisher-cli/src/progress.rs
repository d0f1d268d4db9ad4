//! The progress line of `evpub send`, on stderr when it is a terminal: events done and their
//! rate, and for a file the bytes read with an ETA.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// How often the events count and rate are redrawn.
const TICK: Duration = Duration::from_millis(250);

/// The progress display (hidden when stderr is not a terminal).
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Progress {
    /// A display for input of `total_bytes` (a file), or of unknown length (standard input).
    pub fn new(total_bytes: Option<u64>) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let (bar, template) = match total_bytes {
                Some(n) => (
                    ProgressBar::new(n),
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ETA {eta} {msg}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} [{elapsed_precise}] {msg}",
                ),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let progress = Self {
            bar,
            done: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
        };
        if !progress.bar.is_hidden() {
            tokio::spawn(progress.clone().tick());
        }
        progress
    }

    async fn tick(self) {
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let done = self.done.load(Ordering::Relaxed);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            self.bar.set_message(format!("{done} events, {rate:.0}/s"));
            self.bar.tick();
        }
    }

    /// `n` more bytes of input were read.
    pub fn read(&self, n: u64) {
        self.bar.inc(n);
    }

    /// One more line is done (published, failed or skipped).
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Prints `line` on stderr without tearing the progress line.
    pub fn say(&self, line: impl AsRef<str>) {
        self.bar.suspend(|| eprintln!("{}", line.as_ref()));
    }

    /// Removes the display.
    pub fn finish(&self) {
        self.stop.cancel();
        self.bar.finish_and_clear();
    }
}
