//! [`Lifecycle`]: the close gate.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Event;
use crate::batch::BatchResults;
use crate::error::{Error, ErrorKind, Result};
use crate::outcome::{BatchOutcome, CloseReport};

/// Extra time in-flight publishes get to observe their abandonment, and background tasks get to
/// stop, once the close deadline has passed.
const GRACE: Duration = Duration::from_secs(1);

type CloseFuture = Shared<BoxFuture<'static, Result<CloseReport>>>;

/// What a backend's teardown is told when it runs.
#[derive(Debug, Clone, Copy)]
pub struct Teardown {
    /// When the close should be over; the teardown is cut off at this point (plus a short grace).
    pub deadline: Instant,
    /// Events in flight that the drain gave up on (they return `OutcomeUnknown` to their
    /// callers). For a backend whose teardown ends its in-flight publishes
    /// ([`Backend::bounds_itself`](crate::Backend::bounds_itself)), the teardown runs before
    /// they stopped, and this counts every event still in flight (an upper bound).
    pub abandoned_in_flight: usize,
}

impl Teardown {
    /// The time left until [`Teardown::deadline`] (zero if passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The top bit of [`Inner::state`]: closing has started. The other bits count events in
/// flight (a publish is one, a batch its length). One atomic, so admitting and finishing a
/// publish takes no lock.
const CLOSING: usize = 1 << (usize::BITS - 1);

#[derive(Debug)]
struct Inner {
    backend: &'static str,
    close_timeout: Duration,
    /// [`CLOSING`] and the in-flight count.
    state: AtomicUsize,
    idle: Notify,
    /// Cancelled when the drain deadline passes: in-flight publishes stop and fail.
    abandon: CancellationToken,
    /// Set with `abandon`: read before every poll of a publish (the token's own flag takes a
    /// lock).
    abandoned: AtomicBool,
    /// The backend bounds every publish itself and its teardown ends whatever is still in
    /// flight (see [`Backend::bounds_itself`](crate::Backend::bounds_itself)): its publishes
    /// register no watch on the close deadline, so close does not wait for them to notice it.
    teardown_ends_in_flight: AtomicBool,
    /// Events whose publish returned `OutcomeUnknown` because the drain gave up on them.
    abandoned_events: AtomicUsize,
    /// Held while a given-up publish counts its events and leaves the gate, and while close
    /// reads both counts: an event is counted either as given up or as still in flight, never
    /// both. Only the close path and given-up publishes take it.
    giving_up: std::sync::Mutex<()>,
    /// Cancelled when closing (or dropped): background tasks stop.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    close: OnceLock<CloseFuture>,
}

impl Inner {
    fn in_flight(&self) -> usize {
        self.state.load(Ordering::Acquire) & !CLOSING
    }

    /// Starts closing (refusing new publishes); returns what was in flight at that moment.
    fn start_closing(&self) -> usize {
        self.state.fetch_or(CLOSING, Ordering::AcqRel) & !CLOSING
    }

    /// Counts `events` more in flight, unless closing has started.
    fn admit(&self, events: usize) -> Result<()> {
        // Compare-and-swap, so that a refused batch never shows in the in-flight count.
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & CLOSING != 0 {
                return Err(Error::closed(self.backend));
            }
            match self.state.compare_exchange_weak(
                state,
                state + events,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => state = actual,
            }
        }
    }

    /// Marks `n` events finished, waking the drain when they were the last ones.
    fn exit(&self, n: usize) {
        if n == 0 {
            return;
        }
        if self.state.fetch_sub(n, Ordering::AcqRel) == CLOSING | n {
            self.idle.notify_waiters();
        }
    }

    /// Makes every in-flight publish stop at its next wake-up with `OutcomeUnknown`.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.abandon.cancel();
    }

    /// Waits until nothing is in flight or `deadline` passes; returns what is still in flight.
    async fn wait_idle(&self, deadline: Instant) -> usize {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight();
            }
        }
    }

    /// Gives abandoned publishes [`GRACE`] to notice and stop.
    async fn wait_grace(&self) {
        let remaining = self.wait_idle(Instant::now() + GRACE).await;
        if remaining > 0 {
            tracing::warn!(
                backend = self.backend,
                remaining,
                "in-flight publishes did not stop within the grace period"
            );
        }
    }

    /// Events given up on: counted by the publishes themselves as they gave up (a batch counts
    /// only its unconfirmed events), plus those that have not stopped yet (they give up when
    /// next polled), read together so that none is counted twice.
    fn count_abandoned(&self) -> usize {
        let _counting = self.giving_up.lock().unwrap_or_else(|p| p.into_inner());
        self.abandoned_events.load(Ordering::Acquire) + self.in_flight()
    }

    async fn close<F, Fut>(self: Arc<Self>, teardown: F) -> Result<CloseReport>
    where
        F: FnOnce(Teardown) -> Fut,
        Fut: Future<Output = Result<usize>>,
    {
        let start = Instant::now();
        let deadline = start + self.close_timeout;
        let at_start = self.start_closing();
        tracing::debug!(
            backend = self.backend,
            in_flight = at_start,
            "closing publisher"
        );

        let remaining = self.wait_idle(deadline).await;
        let gave_up = remaining > 0;
        // Publishes that watch the deadline stop as soon as it is given up on; those of a
        // backend whose teardown ends them stop when the teardown runs.
        let ends_in_flight = self.teardown_ends_in_flight.load(Ordering::Acquire);
        if gave_up {
            tracing::warn!(
                backend = self.backend,
                in_flight = remaining,
                "close deadline passed with events in flight; abandoning them (outcome unknown)"
            );
            self.abandon();
            if !ends_in_flight {
                self.wait_grace().await;
            }
        }

        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline.max(Instant::now()) + GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                backend = self.backend,
                tasks = self.tasks.len(),
                "background tasks did not stop within the close deadline"
            );
        }

        // What the teardown is told the gate counts already: once the publishes stopped, the
        // exact count; before (a backend whose teardown ends them), an upper bound (every event
        // still in flight), counted again below.
        let mut abandoned_in_flight = if gave_up { self.count_abandoned() } else { 0 };
        let ctx = Teardown {
            deadline,
            abandoned_in_flight,
        };
        let limit = deadline.max(Instant::now()) + GRACE;
        let extra = match tokio::time::timeout_at(limit, teardown(ctx)).await {
            Ok(Ok(extra)) => extra,
            Ok(Err(e)) => {
                tracing::warn!(backend = self.backend, error = %e, "publisher teardown failed");
                return Err(e);
            }
            Err(_) => {
                return Err(Error::timeout(
                    self.backend,
                    "close teardown",
                    self.close_timeout + GRACE,
                ));
            }
        };
        if gave_up && ends_in_flight {
            // The teardown woke them: each now ends, counting only what the broker did not
            // confirm (a batch's confirmed events, a publish that completed just before, are
            // not abandoned).
            self.wait_grace().await;
            abandoned_in_flight = self.count_abandoned();
        }
        let report = CloseReport {
            drained: at_start.saturating_sub(abandoned_in_flight),
            abandoned: abandoned_in_flight + extra,
            elapsed: start.elapsed(),
        };
        tracing::debug!(backend = self.backend, %report, "publisher closed");
        Ok(report)
    }
}

/// The close gate every publisher runs behind (through [`Gated`](crate::Gated)).
///
/// A [`Lifecycle`] owns, once for all backends: the closed flag; the entry of each in-flight
/// publish, refused with [`ErrorKind::Closed`] once closing starts; the
/// drain of in-flight publishes with a deadline, after which what is still unconfirmed fails
/// with [`ErrorKind::OutcomeUnknown`] (it may have reached the broker) and is counted, event by
/// event, in the [`CloseReport`]; the backend's background tasks (a
/// [`TaskTracker`] and a [`CancellationToken`]); and a once-only close whose [`CloseReport`]
/// every concurrent or later caller receives. Backends supply only their teardown.
///
/// Dropping a `Lifecycle` whose close never started logs one warning, cancels the background
/// tasks and makes in-flight publishes fail with `OutcomeUnknown`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> publisher_core::Result<()> {
/// use std::time::Duration;
/// use publisher_core::Lifecycle;
///
/// let lifecycle = Lifecycle::new("example", Duration::from_secs(5));
/// let n = lifecycle.run(Duration::from_secs(1), "publish", async { Ok(42) }).await?;
/// assert_eq!(n, 42);
/// let report = lifecycle.close(|_| async { Ok(0) }).await?;
/// assert_eq!(report.abandoned, 0);
/// assert!(lifecycle.run(Duration::from_secs(1), "publish", async { Ok(1) }).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

/// Proof that a publish (of one event, or a batch of several) was admitted by the gate;
/// dropping it marks its events finished.
#[derive(Debug)]
#[must_use = "the publish counts as in flight only while this guard lives"]
pub struct InFlight {
    inner: Arc<Inner>,
    events: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.exit(self.events);
    }
}

impl Lifecycle {
    /// A gate for `backend` whose close drains in-flight publishes for at most `close_timeout`.
    pub fn new(backend: &'static str, close_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                close_timeout,
                state: AtomicUsize::new(0),
                idle: Notify::new(),
                abandon: CancellationToken::new(),
                abandoned: AtomicBool::new(false),
                teardown_ends_in_flight: AtomicBool::new(false),
                abandoned_events: AtomicUsize::new(0),
                giving_up: std::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                close: OnceLock::new(),
            }),
        }
    }

    /// Declares that the backend bounds every publish itself and that its teardown ends every
    /// publish still in flight ([`Gated`](crate::Gated) sets it from
    /// [`Backend::bounds_itself`](crate::Backend::bounds_itself)): close then does not wait a
    /// grace period for them after the deadline, it runs the teardown at once.
    pub(crate) fn set_teardown_ends_in_flight(&self, yes: bool) {
        self.inner
            .teardown_ends_in_flight
            .store(yes, Ordering::Release);
    }

    /// The backend name this gate reports in its errors.
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// Whether closing has started (publishes are refused from then on).
    pub fn is_closed(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & CLOSING != 0
    }

    /// How many events are in flight (a publish counts one, a batch its length).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    /// Admits one publish of one event.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once closing has started.
    pub fn enter(&self) -> Result<InFlight> {
        self.enter_events(1)
    }

    /// Admits one publish of `events` events (a batch).
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once closing has started.
    pub fn enter_events(&self, events: usize) -> Result<InFlight> {
        self.inner.admit(events)?;
        Ok(InFlight {
            inner: self.inner.clone(),
            events,
        })
    }

    /// Runs one publish through the gate: admitted or refused with `Closed`, bounded by
    /// `timeout`, and stopped if the close deadline passes while it is still in flight.
    ///
    /// A publish that times out or is abandoned at the close deadline fails with
    /// [`ErrorKind::OutcomeUnknown`] (its bytes may have left); once abandoned it is not polled
    /// again, so nothing starts sending after the close deadline.
    ///
    /// The returned future is `fut` plus a few words: it holds `fut` once, and registers its
    /// timer and its watch on the close deadline only if `fut` is still pending after its
    /// first poll (a buffered console write never touches them).
    ///
    /// # Cancel safety
    /// Dropping the returned future drops `fut` and releases the gate.
    pub fn run<'a, T, Fut>(
        &'a self,
        timeout: Duration,
        what: &'a str,
        fut: Fut,
    ) -> impl Future<Output = Result<T>> + 'a
    where
        Fut: Future<Output = Result<T>> + 'a,
    {
        self.run_timed(Some(timeout), what, fut)
    }

    /// As [`Lifecycle::run`]; without a timer of the gate's own when `timeout` is `None` (a
    /// backend that bounds every publish itself, see
    /// [`Backend::bounds_itself`](crate::Backend::bounds_itself)).
    pub(crate) fn run_timed<'a, T, Fut>(
        &'a self,
        timeout: Option<Duration>,
        what: &'a str,
        fut: Fut,
    ) -> impl Future<Output = Result<T>> + 'a
    where
        Fut: Future<Output = Result<T>> + 'a,
    {
        Gate::new(self, None, timeout, what, fut, || 1)
    }

    /// Runs one batch through the gate like [`Lifecycle::run`]; `fut` records each event's
    /// result in `results` as the broker confirms it.
    ///
    /// The outcome keeps every result already recorded, whatever happens to the batch as a
    /// whole: when it times out or is abandoned, only the events without a result get
    /// `OutcomeUnknown`. When `fut` fails as a whole (or the gate refuses the batch), each
    /// event without a result gets `check`'s error if it has one, so that a bad event is still
    /// reported as such, and the batch's error otherwise.
    pub async fn run_batch<Fut>(
        &self,
        timeout: Duration,
        what: &str,
        events: &[Event],
        results: &BatchResults,
        check: impl Fn(&Event) -> Result<()>,
        fut: Fut,
    ) -> BatchOutcome
    where
        Fut: Future<Output = Result<()>>,
    {
        self.run_batch_timed(Some(timeout), what, events, results, check, fut)
            .await
    }

    /// As [`Lifecycle::run_batch`], with the timer as in [`Lifecycle::run_timed`].
    pub(crate) async fn run_batch_timed<Fut>(
        &self,
        timeout: Option<Duration>,
        what: &str,
        events: &[Event],
        results: &BatchResults,
        check: impl Fn(&Event) -> Result<()>,
        fut: Fut,
    ) -> BatchOutcome
    where
        Fut: Future<Output = Result<()>>,
    {
        debug_assert_eq!(events.len(), results.len());
        let failure = match self.inner.admit(events.len()) {
            Ok(()) => {
                let unconfirmed = || {
                    events
                        .iter()
                        .zip(results.iter())
                        .filter(|(e, r)| r.is_none() && check(e).is_ok())
                        .count()
                };
                Gate::new(self, Some(events.len()), timeout, what, fut, unconfirmed)
                    .await
                    .err()
            }
            Err(e) => Some(e),
        };
        results.to_outcome(events, |event| match &failure {
            Some(e) => check(event).and(Err(e.clone())),
            // A backend bug, but the event may have been sent: never say it was not.
            None => Err(Error::outcome_unknown(
                self.inner.backend,
                "the backend returned no result for this event of the batch",
            )),
        })
    }

    /// A token cancelled when closing starts or the publisher is dropped; background tasks
    /// should stop when it fires.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    /// Spawns a background task that is cancelled on close and on drop, and that close waits
    /// for (bounded by the close deadline).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = fut => {}
            }
        })
    }

    /// Number of background tasks still alive.
    pub fn background_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Closes once: refuses new publishes, drains in-flight ones until the close timeout,
    /// abandons the rest (they fail with `OutcomeUnknown`), stops background tasks, then runs
    /// `teardown` exactly once. `teardown` returns how many further messages it could not
    /// deliver (for example a producer queue purged at the deadline); they are added to
    /// [`CloseReport::abandoned`].
    ///
    /// Every caller, concurrent or later, gets the first close's outcome; later callers'
    /// `teardown` is dropped unused. The close runs in a spawned task, so cancelling a caller
    /// does not interrupt it.
    ///
    /// # Errors
    /// The teardown's error, or [`ErrorKind::Timeout`] if the teardown overran the deadline.
    pub async fn close<F, Fut>(&self, teardown: F) -> Result<CloseReport>
    where
        F: FnOnce(Teardown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<usize>> + Send + 'static,
    {
        let fut = self
            .inner
            .close
            .get_or_init(|| {
                let inner = self.inner.clone();
                let backend = inner.backend;
                let handle = tokio::spawn(inner.close(teardown));
                async move {
                    handle.await.unwrap_or_else(|e| {
                        Err(Error::new(ErrorKind::Other, backend, "close task failed")
                            .with_source(e))
                    })
                }
                .boxed()
                .shared()
            })
            .clone();
        fut.await
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if self.inner.close.get().is_some() {
            return;
        }
        let in_flight = self.inner.start_closing();
        tracing::warn!(
            backend = self.inner.backend,
            in_flight,
            "publisher dropped without close(): background tasks cancelled, unconfirmed publishes \
             fail with OutcomeUnknown; call close() to drain in-flight publishes"
        );
        self.inner.abandon();
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
    }
}

pin_project_lite::pin_project! {
    /// One publish (or batch) in the gate: see [`Lifecycle::run`]. A hand-written future, so
    /// that `fut` is stored once and the timer and abandonment watch only when needed: every
    /// publish future is this large, and thousands may be in flight.
    struct Gate<'a, Fut, U> {
        lifecycle: &'a Lifecycle,
        // Set by the first poll (which admits a publish that was not admitted yet).
        started: bool,
        // Events this publish counts in flight (zero before it is admitted and once it ended);
        // released when it ends or is dropped. A count, not an [`InFlight`]: no reference
        // count to take and release per publish.
        events: usize,
        // The gate's own bound; `None` when the backend bounds every publish itself. Such a
        // publish has no watch on the close deadline either: the backend's teardown ends it
        // (see `Backend::bounds_itself`), and the abandonment flag is still read before every
        // poll.
        timeout: Option<Duration>,
        what: &'a str,
        // How many events are still waiting for the broker when the publish is abandoned.
        unconfirmed: U,
        #[pin]
        fut: Fut,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        #[pin]
        abandoned: Option<tokio_util::sync::WaitForCancellationFuture<'a>>,
    }
    impl<Fut, U> PinnedDrop for Gate<'_, Fut, U> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let events = std::mem::take(this.events);
            if events > 0 {
                this.lifecycle.inner.exit(events);
            }
        }
    }
}

impl<'a, T, Fut, U> Gate<'a, Fut, U>
where
    Fut: Future<Output = Result<T>>,
    U: Fn() -> usize,
{
    /// `admitted`: how many events the caller already admitted (a batch, possibly empty);
    /// `None`: the first poll admits one (a publish).
    fn new(
        lifecycle: &'a Lifecycle,
        admitted: Option<usize>,
        timeout: Option<Duration>,
        what: &'a str,
        fut: Fut,
        unconfirmed: U,
    ) -> Self {
        Self {
            lifecycle,
            started: admitted.is_some(),
            events: admitted.unwrap_or(0),
            timeout,
            what,
            unconfirmed,
            fut,
            timer: None,
            abandoned: None,
        }
    }
}

impl<T, Fut, U> Future for Gate<'_, Fut, U>
where
    Fut: Future<Output = Result<T>>,
    U: Fn() -> usize,
{
    type Output = Result<T>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<T>> {
        let mut this = self.project();
        let lifecycle: &Lifecycle = this.lifecycle;
        let inner = &*lifecycle.inner;
        if !*this.started {
            *this.started = true;
            match inner.admit(1) {
                Ok(()) => *this.events = 1,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let give_up = |events: &mut usize, unconfirmed: &U, what: &str| {
            let _counting = inner.giving_up.lock().unwrap_or_else(|p| p.into_inner());
            inner
                .abandoned_events
                .fetch_add(unconfirmed(), Ordering::AcqRel);
            inner.exit(std::mem::take(events));
            Poll::Ready(Err(Error::outcome_unknown(
                inner.backend,
                format!(
                    "{what} abandoned: the close deadline passed before the broker confirmed \
                     (the broker may or may not have it)"
                ),
            )))
        };
        let timed_out = |what: &str, timeout: Duration| {
            Poll::Ready(Err(Error::outcome_unknown(
                inner.backend,
                format!(
                    "{what} timed out after {} before the broker confirmed (the broker may \
                     or may not have it)",
                    humantime::format_duration(timeout)
                ),
            )))
        };
        // The publish is polled first and once per wake-up: polling a pending client future
        // again for nothing (as `select!` after a first poll would) costs real work in some
        // clients (lapin registers a new listener on every poll). Abandonment is checked before
        // every poll, so an abandoned publish never sends more; so is an elapsed timeout.
        if inner.abandoned.load(Ordering::Acquire) {
            return give_up(this.events, this.unconfirmed, this.what);
        }
        if let Some(timeout) = *this.timeout
            && this
                .timer
                .as_ref()
                .as_pin_ref()
                .is_some_and(|t| t.is_elapsed())
        {
            return timed_out(this.what, timeout);
        }
        if let Poll::Ready(r) = this.fut.poll(cx) {
            inner.exit(std::mem::take(this.events));
            return Poll::Ready(r);
        }
        let Some(timeout) = *this.timeout else {
            // A backend that bounds itself: its teardown ends what is still in flight.
            return Poll::Pending;
        };
        if this.abandoned.is_none() {
            this.abandoned.set(Some(inner.abandon.cancelled()));
        }
        if let Some(abandoned) = this.abandoned.as_pin_mut()
            && abandoned.poll(cx).is_ready()
        {
            return give_up(this.events, this.unconfirmed, this.what);
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(timeout)));
        }
        if let Some(timer) = this.timer.as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            return timed_out(this.what, timeout);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn refuses_after_close_and_reports_once() {
        let lc = Lifecycle::new("t", Duration::from_secs(1));
        let teardowns = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        let lc = Arc::new(lc);
        for _ in 0..16 {
            let lc = lc.clone();
            let teardowns = teardowns.clone();
            handles.push(tokio::spawn(async move {
                lc.close(move |_| async move {
                    teardowns.fetch_add(1, Ordering::SeqCst);
                    Ok(0)
                })
                .await
            }));
        }
        let mut reports = Vec::new();
        for h in handles {
            reports.push(h.await.unwrap().unwrap());
        }
        assert!(reports.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(teardowns.load(Ordering::SeqCst), 1);
        let again = lc.close(|_| async { Ok(99) }).await.unwrap();
        assert_eq!(again, reports[0]);
        let err = lc.enter().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
    }

    #[tokio::test]
    async fn drains_in_flight_before_teardown() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_secs(5)));
        let torn_down = Arc::new(AtomicUsize::new(0));
        let mut pubs = Vec::new();
        for _ in 0..10 {
            let lc = lc.clone();
            let torn_down = torn_down.clone();
            pubs.push(tokio::spawn(async move {
                lc.run(Duration::from_secs(5), "publish", async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // The teardown must not have run while we were in flight.
                    assert_eq!(torn_down.load(Ordering::SeqCst), 0);
                    Ok(())
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(lc.in_flight(), 10);
        let td = torn_down.clone();
        let report = lc
            .close(move |_| async move {
                td.fetch_add(1, Ordering::SeqCst);
                Ok(0)
            })
            .await
            .unwrap();
        assert_eq!(report.drained, 10);
        assert_eq!(report.abandoned, 0);
        for p in pubs {
            p.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn abandons_at_deadline_and_never_reports_ok() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_millis(100)));
        let lc2 = lc.clone();
        let stuck = tokio::spawn(async move {
            lc2.run(Duration::from_secs(30), "publish", async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                Ok(())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = lc.close(|_| async { Ok(2) }).await.unwrap();
        assert_eq!(report.drained, 0);
        assert_eq!(report.abandoned, 3);
        let err = stuck.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        assert!(report.elapsed < Duration::from_secs(2));
    }

    /// A backend that bounds itself: its publishes register no watch on the close deadline,
    /// and close runs the teardown as soon as the deadline passes (no grace wait); the
    /// teardown wakes the stuck publish, which then gives up, unpolled, as abandoned.
    #[tokio::test]
    async fn a_self_bounded_publish_is_ended_by_the_teardown() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_millis(100)));
        lc.set_teardown_ends_in_flight(true);
        let (wake, woken) = tokio::sync::oneshot::channel::<()>();
        let polls = Arc::new(AtomicUsize::new(0));
        let (lc2, polls2) = (lc.clone(), polls.clone());
        let stuck = tokio::spawn(async move {
            // Woken by the teardown only (a client's purged queue).
            let mut woken = woken;
            let pending = std::future::poll_fn(move |cx| {
                polls2.fetch_add(1, Ordering::SeqCst);
                let _ = std::pin::Pin::new(&mut woken).poll(cx);
                Poll::<Result<()>>::Pending
            });
            lc2.run_timed(None, "publish", pending).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = lc
            .close(move |td| async move {
                assert_eq!(td.abandoned_in_flight, 1);
                let _ = wake.send(());
                Ok(0)
            })
            .await
            .unwrap();
        assert_eq!(report.abandoned, 1);
        assert_eq!(report.drained, 0);
        // The deadline (100 ms), not the deadline plus the grace period (1 s).
        assert!(report.elapsed < GRACE, "{:?}", report.elapsed);
        let err = stuck.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        assert!(err.to_string().contains("abandoned"), "{err}");
        // Polled once at the start, never after the teardown woke it.
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(lc.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_publishes_and_close_leave_the_count_at_zero() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_secs(5)));
        let admitted_after_close = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (lc, late) = (lc.clone(), admitted_after_close.clone());
            tasks.push(tokio::spawn(async move {
                let mut ok = 0usize;
                loop {
                    let r = lc
                        .run(Duration::from_secs(1), "publish", async {
                            tokio::time::sleep(Duration::from_micros(50)).await;
                            Ok(())
                        })
                        .await;
                    match r {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::Closed);
                            // Once refused, always refused.
                            if lc.enter().is_ok() {
                                late.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            return ok;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let report = lc.close(|_| async { Ok(0) }).await.unwrap();
        assert_eq!(report.abandoned, 0);
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert!(total > 0);
        assert_eq!(
            admitted_after_close.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert_eq!(lc.in_flight(), 0);
        assert!(lc.is_closed());
    }

    #[tokio::test]
    async fn publish_timeout_is_typed() {
        let lc = Lifecycle::new("t", Duration::from_secs(1));
        let err = lc
            .run(Duration::from_millis(20), "publish", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        assert!(err.is_retryable());
        assert_eq!(lc.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_without_close_cancels_background_tasks() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let baseline = metrics.num_alive_tasks();
        let lc = Lifecycle::new("t", Duration::from_secs(1));
        let token = lc.shutdown_token();
        for _ in 0..3 {
            lc.spawn(std::future::pending());
        }
        assert_eq!(metrics.num_alive_tasks(), baseline + 3);
        drop(lc);
        assert!(token.is_cancelled());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > baseline {
            assert!(std::time::Instant::now() < deadline, "tasks leaked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn drop_without_close_warns_once_and_close_does_not() {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            drop(Lifecycle::new("dropped", Duration::from_secs(1)));
            let closed = Lifecycle::new("closed", Duration::from_secs(1));
            rt.block_on(closed.close(|_| async { Ok(0) })).unwrap();
            drop(closed);
        });
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{logs}");
        assert!(warnings[0].contains("dropped without close"), "{logs}");
        assert!(warnings[0].contains("backend=\"dropped\""), "{logs}");
    }

    fn events(n: usize) -> Vec<Event> {
        (0..n).map(|i| Event::text("t", i.to_string())).collect()
    }

    #[tokio::test]
    async fn a_batch_that_times_out_keeps_the_results_already_known() {
        let lc = Lifecycle::new("t", Duration::from_secs(1));
        let events = events(3);
        let results = BatchResults::new(3);
        let outcome = lc
            .run_batch(
                Duration::from_millis(50),
                "batch",
                &events,
                &results,
                |_| Ok(()),
                async {
                    results.set(0, Ok(crate::Position::Sequence(1)));
                    results.set(1, Err(Error::new(ErrorKind::Rejected, "t", "nack")));
                    std::future::pending::<()>().await;
                    Ok(())
                },
            )
            .await;
        let r = outcome.results();
        assert_eq!(r[0].as_ref().unwrap().event_id, events[0].id());
        assert_eq!(r[1].as_ref().unwrap_err().kind(), ErrorKind::Rejected);
        assert_eq!(r[2].as_ref().unwrap_err().kind(), ErrorKind::OutcomeUnknown);
        assert_eq!(lc.in_flight(), 0);
    }

    /// As above, for a backend whose teardown ends what is in flight: the report is counted
    /// once the teardown woke the batch, so the events it confirmed are drained, not abandoned.
    #[tokio::test]
    async fn a_self_bounded_batch_counts_only_its_unconfirmed_events() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_millis(100)));
        lc.set_teardown_ends_in_flight(true);
        let (wake, woken) = tokio::sync::oneshot::channel::<()>();
        let batch = {
            let lc = lc.clone();
            tokio::spawn(async move {
                let events = events(10);
                let results = BatchResults::new(10);
                lc.run_batch_timed(None, "batch", &events, &results, |_| Ok(()), async {
                    for i in 0..4 {
                        results.set(i, Ok(crate::Position::None));
                    }
                    let _ = woken.await;
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = lc
            .close(move |td| async move {
                assert_eq!(
                    td.abandoned_in_flight, 10,
                    "an upper bound before they stop"
                );
                let _ = wake.send(());
                Ok(0)
            })
            .await
            .unwrap();
        assert_eq!(report.abandoned, 6, "{report}");
        assert_eq!(report.drained, 4, "{report}");
        let outcome = batch.await.unwrap();
        assert_eq!(outcome.succeeded(), 4);
        assert_eq!(lc.in_flight(), 0);
    }

    /// An empty batch counts nothing in flight while it runs, nor after.
    #[tokio::test]
    async fn an_empty_batch_counts_no_event() {
        let lc = Lifecycle::new("t", Duration::from_secs(1));
        let results = BatchResults::new(0);
        let outcome = lc
            .run_batch(
                Duration::from_secs(1),
                "batch",
                &[],
                &results,
                |_| Ok(()),
                async {
                    assert_eq!(lc.in_flight(), 0);
                    Ok(())
                },
            )
            .await;
        assert_eq!(outcome.len(), 0);
        assert_eq!(lc.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_batch_counts_its_unconfirmed_events() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_millis(100)));
        let batch = {
            let lc = lc.clone();
            tokio::spawn(async move {
                let events = events(1000);
                let results = BatchResults::new(1000);
                lc.run_batch(
                    Duration::from_secs(30),
                    "batch",
                    &events,
                    &results,
                    |_| Ok(()),
                    async {
                        for i in 0..400 {
                            results.set(i, Ok(crate::Position::None));
                        }
                        std::future::pending::<()>().await;
                        Ok(())
                    },
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(lc.in_flight(), 1000, "a batch counts its events");
        let report = lc.close(|_| async { Ok(0) }).await.unwrap();
        assert_eq!(report.abandoned, 600, "{report}");
        assert_eq!(report.drained, 400, "{report}");
        let outcome = batch.await.unwrap();
        assert_eq!(outcome.succeeded(), 400);
        assert!(
            outcome
                .errors()
                .all(|(_, e)| e.kind() == ErrorKind::OutcomeUnknown)
        );
    }

    #[tokio::test]
    async fn an_abandoned_publish_is_never_polled_again() {
        let lc = Arc::new(Lifecycle::new("t", Duration::from_millis(50)));
        let polls = Arc::new(AtomicUsize::new(0));
        let stuck = {
            let (lc, polls) = (lc.clone(), polls.clone());
            tokio::spawn(async move {
                lc.run(
                    Duration::from_secs(30),
                    "publish",
                    std::future::poll_fn(|cx| {
                        polls.fetch_add(1, Ordering::SeqCst);
                        // Wakes itself at once: a publish that would go on sending.
                        cx.waker().wake_by_ref();
                        Poll::<Result<()>>::Pending
                    }),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let report = lc.close(|_| async { Ok(0) }).await.unwrap();
        assert_eq!(report.abandoned, 1);
        let err = stuck.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        let after = polls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(polls.load(Ordering::SeqCst), after);
    }

    #[tokio::test]
    async fn close_stops_background_tasks_before_teardown() {
        let lc = Lifecycle::new("t", Duration::from_secs(1));
        lc.spawn(std::future::pending());
        assert_eq!(lc.background_tasks(), 1);
        lc.close(|_| async { Ok(0) }).await.unwrap();
        assert_eq!(lc.background_tasks(), 0);
    }
}
