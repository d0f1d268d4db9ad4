//! [`ConsolePublisher`].

use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use publisher_core::backend::Checked;
use publisher_core::{
    Backend, BatchResults, Error, ErrorKind, Event, Gated, Health, Lifecycle, Position, Result,
    Teardown, Timeouts,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;

use crate::BACKEND;
use crate::config::{ConsoleConfig, FlushPolicy, Format, Target};
use crate::line::{encode_json, encode_text};

type Sink = Box<dyn AsyncWrite + Send + Unpin>;

const BUFFER: usize = 64 * 1024;
/// Encoded lines waiting beyond this and publishes wait for the output (bounded memory).
const MAX_PENDING: usize = 16 * BUFFER;

struct Output {
    writer: Sink,
    /// Shut down at close (a file we opened); stdout, stderr and lent writers are only flushed.
    owned: bool,
    /// The buffer being written; swapped with the pending one.
    spare: Vec<u8>,
}

fn io_error(e: std::io::Error) -> Error {
    let broken = e.kind() == std::io::ErrorKind::BrokenPipe;
    let msg = if broken {
        "console output is closed (broken pipe)"
    } else {
        "writing to the console output failed"
    };
    Error::new(ErrorKind::Unavailable, BACKEND, msg)
        .with_retryable(!broken)
        .with_source(e)
}

/// Writes one line per event to stdout, stderr, a file or any [`AsyncWrite`].
///
/// `publish` returns Ok once the line is written and, with [`FlushPolicy::Event`] (the default),
/// flushed. A closed output (broken pipe) is an [`ErrorKind::Unavailable`] error, never a panic.
/// A write that stalls past the publish timeout fails with `Timeout`, and the output then
/// refuses further writes rather than risk interleaving a partial line.
pub type ConsolePublisher = Gated<ConsoleBackend>;

/// The console [`Backend`]: the output, the lines waiting for it, and the format.
pub struct ConsoleBackend {
    target: String,
    text: bool,
    color: bool,
    flush: FlushPolicy,
    timeouts: Timeouts,
    /// Encoded lines not yet handed to the output. A plain mutex, never held across an await:
    /// concurrent publishes append without queueing behind a write.
    pending: Arc<std::sync::Mutex<Pending>>,
    output: Arc<Mutex<Option<Output>>>,
    seq: AtomicU64,
    /// Writes of a full buffer under [`FlushPolicy::Batch`], run beside the publishes (see
    /// [`Due`]); the teardown waits for them.
    writes: TaskTracker,
}

/// Whether a publish's line makes the buffer due for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Not yet.
    No,
    /// The line filled the buffer past [`BUFFER`]: one write of it starts (beside the
    /// publishes under [`FlushPolicy::Batch`]; no publish waits for it).
    Filled,
    /// [`MAX_PENDING`] lines wait: the output is slower than the publishes, which wait for it.
    Full,
}

impl fmt::Debug for ConsoleBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleBackend")
            .field("target", &self.target)
            .field("format", &if self.text { "text" } else { "json" })
            .field("flush", &self.flush)
            .finish()
    }
}

/// Builds a [`ConsolePublisher`]. Setters never fail; [`ConsolePublisherBuilder::build`]
/// validates and opens the target.
#[derive(Default)]
pub struct ConsolePublisherBuilder {
    config: ConsoleConfig,
    writer: Option<(Sink, bool)>,
}

impl fmt::Debug for ConsolePublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsolePublisherBuilder")
            .field("config", &self.config)
            .field("writer", &self.writer.as_ref().map(|_| "<lent writer>"))
            .finish()
    }
}

impl ConsolePublisherBuilder {
    /// Starts from `config`.
    pub fn config(mut self, config: ConsoleConfig) -> Self {
        self.config = config;
        self
    }
    /// Where to write (ignored when [`writer`](Self::writer) is set).
    pub fn target(mut self, target: Target) -> Self {
        self.config.target = target;
        self
    }
    /// The line format.
    pub fn format(mut self, format: Format) -> Self {
        self.config.format = format;
        self
    }
    /// The flush policy.
    pub fn flush(mut self, flush: FlushPolicy) -> Self {
        self.config.flush = flush;
        self
    }
    /// ANSI colours in the text format.
    pub fn color(mut self, color: bool) -> Self {
        self.config.color = Some(color);
        self
    }
    /// The timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }
    /// Writes to `writer` instead of the target. The writer is flushed at close but not shut
    /// down: it is the caller's. [`Format::Auto`] picks JSON for it.
    pub fn writer(mut self, writer: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        self.writer = Some((Box::new(writer), false));
        self
    }

    /// Validates the configuration and opens the target.
    ///
    /// # Errors
    /// `Config` naming the invalid field; `Unavailable` when the file cannot be opened.
    pub fn build(self) -> Result<ConsolePublisher> {
        let cfg = self.config;
        cfg.validate()?;
        let (sink, terminal, owned, target): (Sink, bool, bool, String) = match self.writer {
            Some((w, terminal)) => (w, terminal, false, "writer".into()),
            None => match &cfg.target {
                Target::Stdout => (
                    Box::new(tokio::io::stdout()),
                    std::io::stdout().is_terminal(),
                    false,
                    "stdout".into(),
                ),
                Target::Stderr => (
                    Box::new(tokio::io::stderr()),
                    std::io::stderr().is_terminal(),
                    false,
                    "stderr".into(),
                ),
                Target::File(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Unavailable,
                                BACKEND,
                                format!("cannot open {} for writing", path.display()),
                            )
                            .with_field("target")
                            .with_source(e)
                        })?;
                    (
                        Box::new(tokio::fs::File::from_std(file)),
                        false,
                        true,
                        path.display().to_string(),
                    )
                }
            },
        };
        let text = match cfg.format {
            Format::Auto => terminal,
            Format::Json => false,
            Format::Text => true,
        };
        let color = cfg
            .color
            .unwrap_or_else(|| terminal && std::env::var_os("NO_COLOR").is_none());
        let backend = ConsoleBackend {
            target,
            text,
            color,
            flush: cfg.flush,
            timeouts: cfg.timeouts,
            pending: Arc::new(std::sync::Mutex::new(Pending {
                buf: Vec::with_capacity(BUFFER),
                lines: 0,
                broken: false,
                unflushed: 0,
            })),
            output: Arc::new(Mutex::new(Some(Output {
                writer: sink,
                owned,
                spare: Vec::with_capacity(BUFFER),
            }))),
            seq: AtomicU64::new(0),
            writes: TaskTracker::new(),
        };
        Ok(Gated::from_parts(
            backend,
            Lifecycle::new(BACKEND, cfg.timeouts.close),
        ))
    }
}

impl ConsoleBackend {
    fn encode(&self, event: &Event, out: &mut Vec<u8>) -> Result<()> {
        if self.text {
            encode_text(event, self.color, out)
        } else {
            encode_json(event, out);
            Ok(())
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes one event onto the pending lines; a failed encoding leaves nothing behind.
    fn encode_into(&self, pending: &mut Pending, event: &Event) -> Result<()> {
        if pending.broken {
            return Err(refused());
        }
        let before = pending.buf.len();
        match self.encode(event, &mut pending.buf) {
            Ok(()) => {
                pending.lines += 1;
                Ok(())
            }
            Err(e) => {
                pending.buf.truncate(before);
                Err(e)
            }
        }
    }

    /// Appends one event's line; says whether the buffer is due for writing (see [`Due`]).
    fn append(&self, event: &Event) -> Result<Due> {
        let mut pending = self.pending();
        let before = pending.buf.len();
        self.encode_into(&mut pending, event)?;
        let after = pending.buf.len();
        Ok(if after >= MAX_PENDING {
            Due::Full
        } else if before < BUFFER && after >= BUFFER {
            Due::Filled
        } else {
            Due::No
        })
    }

    /// Writes the full buffer beside the publishes, bounded by the publish timeout: a write
    /// that fails or stalls marks the output broken (later publishes are refused, and close
    /// counts the lines it could not write).
    fn write_behind(&self) {
        let (output, pending) = (self.output.clone(), self.pending.clone());
        let limit = self.timeouts.publish;
        self.writes.spawn(async move {
            // Only the write is timed: waiting for the lock behind another write (each one
            // bounded) is not the output stalling.
            let mut guard = output.lock().await;
            match tokio::time::timeout(limit, write_locked(&mut guard, &pending, false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(backend = BACKEND, error = %e, "console write failed");
                }
                Err(_) => tracing::warn!(
                    backend = BACKEND,
                    ?limit,
                    "console write stalled past the publish timeout"
                ),
            }
        });
    }

    /// Appends the lines of a batch's events still without a result under one lock
    /// acquisition; one result per event appended.
    fn append_all(&self, events: &[Event], results: &BatchResults) -> Vec<(usize, Result<()>)> {
        let mut pending = self.pending();
        results
            .pending(events)
            .map(|(i, e)| (i, self.encode_into(&mut pending, &e)))
            .collect()
    }

    /// Writes everything pending (in the order it was appended) and flushes if asked.
    async fn drain(&self, flush: bool) -> Result<()> {
        drain(&self.output, &self.pending, flush).await
    }

    fn position(&self) -> Position {
        Position::Sequence(self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Encoded lines waiting for the output, and how many there are.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    lines: usize,
    /// A write failed or was given up (set by [`BreakOnDrop`]): the output may hold a partial
    /// line, so nothing is written to it and no line is taken any more.
    broken: bool,
    /// Lines handed to the writer since its last successful flush: if the output breaks, or
    /// close cannot finish writing, these may never have reached it. Kept here, not under the
    /// output's lock, so that a close that cannot take that lock can still count them.
    unflushed: usize,
}

/// The error of a publish refused because an earlier write failed or stalled.
fn refused() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        BACKEND,
        "an earlier write to the console output failed or stalled; refusing to write more",
    )
    .with_retryable(false)
}

/// Marks the pending lines broken when dropped armed: a write that failed, or whose publish
/// was cancelled (timed out) while it was under way.
struct BreakOnDrop<'a> {
    pending: &'a std::sync::Mutex<Pending>,
    armed: bool,
}

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .broken = true;
        }
    }
}

/// Takes the pending lines under the output lock (so whoever writes, writes in append order)
/// and writes them; flushes if asked. Without `flush`, this is a drain of a full buffer: if
/// another publish wrote the lines while this one waited for the lock, there is nothing to do
/// (so concurrent publishes do not follow one large write with many small ones).
async fn drain(
    output: &Mutex<Option<Output>>,
    pending: &std::sync::Mutex<Pending>,
    flush: bool,
) -> Result<()> {
    let mut guard = output.lock().await;
    write_locked(&mut guard, pending, flush).await
}

/// [`drain`] once the output's lock is held.
async fn write_locked(
    output: &mut Option<Output>,
    pending: &std::sync::Mutex<Pending>,
    flush: bool,
) -> Result<()> {
    let out = output.as_mut().ok_or_else(|| Error::closed(BACKEND))?;
    let lock_pending = || pending.lock().unwrap_or_else(|p| p.into_inner());
    {
        // Swap buffers so both keep their capacity: no allocation in the steady state.
        let mut p = lock_pending();
        if p.broken {
            return Err(refused());
        }
        if !flush && p.buf.len() < BUFFER {
            return Ok(());
        }
        out.spare.clear();
        std::mem::swap(&mut out.spare, &mut p.buf);
        p.unflushed += std::mem::take(&mut p.lines);
    }
    let mut breaks = BreakOnDrop {
        pending,
        armed: true,
    };
    if !out.spare.is_empty() {
        let Output { writer, spare, .. } = &mut *out;
        writer.write_all(spare).await.map_err(io_error)?;
    }
    if flush {
        out.writer.flush().await.map_err(io_error)?;
        lock_pending().unflushed = 0;
    }
    breaks.armed = false;
    Ok(())
}

impl Backend for ConsoleBackend {
    type Config = ConsoleConfig;
    type Builder = ConsolePublisherBuilder;

    const NAME: &'static str = BACKEND;

    fn publish_timeout(&self) -> Duration {
        self.timeouts.publish
    }

    fn check(&self, event: &Event) -> Result<()> {
        event.validate(BACKEND)?;
        if self.text && event.payload_str().is_none() {
            return Err(Error::invalid_event(
                BACKEND,
                "payload",
                "payload is not UTF-8 and cannot be shown in text format (use format=json)",
            ));
        }
        Ok(())
    }

    async fn publish(&self, event: Checked<'_>) -> Result<Position> {
        let event = event.event();
        let due = self.append(event)?;
        let flush = self.flush == FlushPolicy::Event;
        if !flush && due == Due::Filled {
            self.write_behind();
        } else if flush || due == Due::Full {
            // Boxed: with `FlushPolicy::Batch` most publishes never write, and the write's
            // state would make every publish's future larger.
            Box::pin(self.drain(flush)).await?;
        }
        Ok(self.position())
    }

    async fn publish_batch(&self, events: &[Event], results: &BatchResults) -> Result<()> {
        let mut any = false;
        for (i, r) in self.append_all(events, results) {
            match r {
                Ok(()) => any = true,
                Err(e) => results.set(i, Err(e)),
            }
        }
        if any {
            self.drain(true).await?;
        }
        results.set_rest(|_| Ok(self.position()));
        Ok(())
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        match tokio::time::timeout(self.timeouts.health, self.output.lock()).await {
            Ok(guard) => match guard.as_ref() {
                Some(_) if !self.pending().broken => Health::healthy(
                    BACKEND,
                    Some(started.elapsed()),
                    format!("writing to {}", self.target),
                ),
                Some(_) => Health::unhealthy(BACKEND, "an earlier write failed or stalled"),
                None => Health::closed(BACKEND),
            },
            Err(_) => Health::unhealthy(
                BACKEND,
                format!(
                    "output busy for more than {:?} (stalled pipe?)",
                    self.timeouts.health
                ),
            ),
        }
    }

    async fn teardown(self: Arc<Self>, td: Teardown) -> Result<usize> {
        let (output, pending) = (&self.output, &self.pending);
        let limit = td.remaining().max(Duration::from_millis(100));
        let until = tokio::time::Instant::now() + limit;
        // What was not confirmed written (and flushed) when the close must end.
        let left = || {
            let p = pending.lock().unwrap_or_else(|p| p.into_inner());
            p.unflushed + p.lines
        };
        // The writes under way first (each bounded by the publish timeout), then the rest.
        self.writes.close();
        let _ = tokio::time::timeout_at(until, self.writes.wait()).await;
        let Ok(written) = tokio::time::timeout_at(until, drain(output, pending, true)).await else {
            tracing::warn!(
                backend = BACKEND,
                "close: the output did not take the last lines in time"
            );
            return Ok(left());
        };
        let Ok(mut guard) = tokio::time::timeout_at(until, output.lock()).await else {
            return Ok(left());
        };
        if let Some(mut out) = guard.take() {
            if written.is_ok() && out.owned {
                match tokio::time::timeout_at(until, out.writer.shutdown()).await {
                    Ok(r) => r.map_err(io_error)?,
                    Err(_) => return Ok(left()),
                }
            }
            if pending.lock().unwrap_or_else(|p| p.into_inner()).broken || written.is_err() {
                // The output is broken: unflushed and pending lines may never have reached it.
                return Ok(left());
            }
        }
        written.map(|()| 0)
    }

    fn config_from_url(url: &str) -> Result<ConsoleConfig> {
        ConsoleConfig::from_url(url)
    }

    async fn connect(config: ConsoleConfig) -> Result<ConsolePublisher> {
        ConsolePublisherBuilder::default().config(config).build()
    }
}
