//! [`Relay`]: a tracked background task that delivers durable entries through a
//! [`Publisher`], in order per key, until they are confirmed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use publisher_core::{Error, ErrorKind, Event, Publisher, Result};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NAME;

/// One durable entry a [`Source`] hands the relay. Its `Debug` shows the event's id and
/// topic, never its payload or headers.
pub struct Entry {
    /// The entry's place in the source's order; unique within the source.
    pub seq: i64,
    /// Deliveries tried before this one.
    pub attempts: u32,
    /// The event, or why the stored entry could not be read back (it is then dead-lettered).
    pub event: Result<Event>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Entry");
        d.field("seq", &self.seq).field("attempts", &self.attempts);
        match &self.event {
            Ok(e) => d.field("id", &e.id()).field("topic", &e.topic()),
            Err(e) => d.field("unreadable", &e.kind()),
        };
        d.finish()
    }
}

/// What became of an entry the relay tried.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// The broker confirmed it: the source forgets it.
    Delivered,
    /// Not confirmed (the broker is unreachable, or the outcome is unknown): tried again
    /// `after` this long.
    Retry {
        /// The wait before the next try.
        after: Duration,
        /// The error's kind.
        kind: ErrorKind,
        /// The error's kind and message (never the payload).
        error: String,
    },
    /// Refused for good (an event the broker rejects, an entry that cannot be read): kept,
    /// marked dead, and no longer holding its key's later entries back.
    Dead {
        /// The error's kind and message (never the payload).
        error: String,
    },
}

/// How many entries wait, and for how long the oldest has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries not yet delivered (dead ones not counted).
    pub pending: u64,
    /// Age of the oldest pending entry.
    pub oldest_age: Option<Duration>,
    /// Entries dead-lettered (refused for good), kept for an operator to look at.
    pub dead: u64,
}

/// Where a relay reads its entries from: a durable, ordered store.
///
/// # Behavior
/// - `claim` hands out up to `max` entries in the source's order, holding them (against other
///   relays on the same store) until the claim is settled or dropped. An entry is handed out
///   only when no earlier pending entry of the same key is held elsewhere or waiting for a
///   retry, so a key's entries are delivered in order however many relays run.
/// - `settle` records every outcome of one claim at once and releases it; a claim dropped
///   unsettled (the relay cancelled or killed) changes nothing, and its entries are handed out
///   again.
pub trait Source: Send + Sync + 'static {
    /// What holds a claim's entries until it is settled (a database transaction).
    type Claim: Send + 'static;

    /// Up to `max` entries, oldest first.
    fn claim(&self, max: usize) -> impl Future<Output = Result<(Self::Claim, Vec<Entry>)>> + Send;

    /// Records the outcomes (entries not listed are left as they were) and releases the claim.
    fn settle(
        &self,
        claim: Self::Claim,
        settled: Vec<(i64, Settled)>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The store's backlog.
    fn backlog(&self) -> impl Future<Output = Result<Backlog>> + Send;
}

/// How a [`Relay`] works. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Entries claimed per round. Default 256.
    pub batch: usize,
    /// Keys published at the same time within a round (a key's own entries go one after the
    /// other). Default 64.
    pub concurrency: usize,
    /// How long an idle relay waits before looking for new entries. Default 100 ms.
    pub idle_poll: Duration,
    /// First retry delay of an entry, doubled per attempt (with jitter). Default 100 ms.
    pub min_backoff: Duration,
    /// Longest retry delay (jitter included). Default 30 s.
    pub max_backoff: Duration,
    /// How long `close` lets the round in progress finish before cutting it off (its entries
    /// are then delivered by the next relay to run). Default 10 s.
    pub close_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            concurrency: 64,
            idle_poll: Duration::from_millis(100),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let field =
            |name: &'static str, why: &str| Err(Error::config(NAME, name, format!("{name} {why}")));
        if self.batch == 0 {
            return field("batch", "must be at least 1");
        }
        if self.concurrency == 0 {
            return field("concurrency", "must be at least 1");
        }
        if self.idle_poll.is_zero() {
            return field("idle_poll", "must be above zero");
        }
        if self.min_backoff.is_zero() {
            return field("min_backoff", "must be above zero");
        }
        if self.max_backoff < self.min_backoff {
            return field("max_backoff", "must be at least min_backoff");
        }
        if self.close_timeout.is_zero() {
            return field("close_timeout", "must be above zero");
        }
        Ok(())
    }

    /// The wait before an entry's next try, after `attempts` failed ones.
    fn backoff(&self, attempts: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.min(64) as usize)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// What a relay has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Entries the broker confirmed (each once, by this relay).
    pub delivered: u64,
    /// Failed tries that will be tried again.
    pub retries: u64,
    /// Entries dead-lettered.
    pub dead: u64,
}

/// What [`Relay::close`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayReport {
    /// What the relay did over its life.
    pub counts: RelayCounts,
    /// Whether the round in progress at close was cut off by the close timeout (its entries
    /// stay in the store; any the broker had confirmed are delivered again by the next relay).
    pub cut_off: bool,
    /// The store's backlog after the relay stopped: what the next relay to run delivers.
    /// `None` when the store did not answer.
    pub left: Option<Backlog>,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retries: AtomicU64,
    dead: AtomicU64,
}

impl Counters {
    fn get(&self) -> RelayCounts {
        RelayCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

struct Shared<S> {
    source: S,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    counts: Counters,
}

/// Delivers a [`Source`]'s entries through a [`Publisher`] in a background task.
///
/// # Behavior
/// - An entry is marked delivered only on the publisher's `Ok` (the broker's confirmation).
/// - A retryable error, `OutcomeUnknown` included, is tried again after a growing delay (the
///   entry keeps its event id, so a broker that drops duplicates by id drops the copy: see the
///   crate docs for what a consumer may see twice per backend). A key's later entries wait
///   for it.
/// - A refusal of the event itself (`Rejected`, `InvalidEvent`, an unreadable entry)
///   dead-letters the entry; every other error is retried: it stays in the store, counted in [`Backlog::dead`], and its key moves on.
/// - The store being down is waited out with the same growing delay; nothing is lost.
/// - `close` stops claiming, lets the round in progress finish within `close_timeout`, cuts
///   it off after that (its entries stay in the store), and reports what is left; it is
///   idempotent and safe to call concurrently. Dropping an unclosed relay warns and stops the
///   task at its next step; nothing is lost either way, and nothing is marked delivered that
///   the broker did not confirm.
/// - The relay does not close the publisher it was given.
pub struct Relay<S: Source> {
    shared: Arc<Shared<S>>,
    tracker: TaskTracker,
    /// Stops claiming new rounds.
    stop: CancellationToken,
    /// Cuts the round in progress off.
    cut: CancellationToken,
    cut_off: Arc<AtomicBool>,
    report: tokio::sync::OnceCell<RelayReport>,
}

impl<S: Source> fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("publisher", &self.shared.publisher.backend())
            .field("config", &self.shared.config)
            .field("counts", &self.shared.counts.get())
            .field("closed", &self.stop.is_cancelled())
            .finish()
    }
}

impl<S: Source> Relay<S> {
    /// Starts relaying `source` through `publisher` (on the current Tokio runtime).
    ///
    /// # Errors
    /// `Config` naming the field of `config` at fault.
    pub fn start(source: S, publisher: Arc<dyn Publisher>, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        let shared = Arc::new(Shared {
            source,
            publisher,
            config,
            counts: Counters::default(),
        });
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let cut = CancellationToken::new();
        let cut_off = Arc::new(AtomicBool::new(false));
        tracker.spawn(run(
            shared.clone(),
            stop.clone(),
            cut.clone(),
            cut_off.clone(),
        ));
        tracker.close();
        Ok(Self {
            shared,
            tracker,
            stop,
            cut,
            cut_off,
            report: tokio::sync::OnceCell::new(),
        })
    }

    /// What the relay has done so far.
    pub fn counts(&self) -> RelayCounts {
        self.shared.counts.get()
    }

    /// The store's backlog: entries pending, the oldest's age, entries dead.
    ///
    /// # Errors
    /// The store's, when it cannot be read.
    pub async fn backlog(&self) -> Result<Backlog> {
        self.shared.source.backlog().await
    }

    /// The source the relay reads.
    pub fn source(&self) -> &S {
        &self.shared.source
    }

    /// Stops the relay: see the type's `# Behavior`.
    pub async fn close(&self) -> RelayReport {
        self.report
            .get_or_init(|| async {
                self.stop.cancel();
                let timeout = self.shared.config.close_timeout;
                if tokio::time::timeout(timeout, self.tracker.wait())
                    .await
                    .is_err()
                {
                    self.cut.cancel();
                    // The cut round drops its claim at its next step: bounded as well.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
                }
                let left = tokio::time::timeout(timeout, self.shared.source.backlog())
                    .await
                    .ok()
                    .and_then(|r| r.ok());
                RelayReport {
                    counts: self.shared.counts.get(),
                    cut_off: self.cut_off.load(Ordering::Relaxed),
                    left,
                }
            })
            .await
            .clone()
    }

    /// Whether `close` has started.
    pub fn is_closed(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether the relay's task is still running (it stops on close, on drop, and when its
    /// publisher turns out closed).
    pub fn is_running(&self) -> bool {
        !self.tracker.is_empty()
    }

    /// Waits until the relay's task has stopped (see [`Relay::is_running`]).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }
}

impl<S: Source> Drop for Relay<S> {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            tracing::warn!(
                relay = NAME,
                "relay dropped without close: stopping it; entries not yet confirmed stay in the \
                 store for the next relay"
            );
        }
        self.stop.cancel();
        self.cut.cancel();
    }
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    claimed: usize,
    progressed: bool,
    publisher_closed: bool,
}

async fn run<S: Source>(
    shared: Arc<Shared<S>>,
    stop: CancellationToken,
    cut: CancellationToken,
    cut_off: Arc<AtomicBool>,
) {
    // Rounds in a row that failed as a whole (the store down).
    let mut failures: u32 = 0;
    while !stop.is_cancelled() {
        let round = tokio::select! {
            biased;
            () = cut.cancelled() => {
                cut_off.store(true, Ordering::Relaxed);
                return;
            }
            r = shared.round() => r,
        };
        let wait = match round {
            Ok(r) if r.publisher_closed => {
                tracing::warn!(
                    relay = NAME,
                    "the relay's publisher was closed: the relay stops"
                );
                return;
            }
            Ok(r) if r.claimed == 0 => {
                failures = 0;
                shared.config.idle_poll
            }
            Ok(r) if r.progressed => {
                failures = 0;
                continue;
            }
            // Every entry tried waits for its own retry now, so the next claim hands out
            // others (or nothing): no need to hold the other keys back.
            Ok(_) => {
                failures = 0;
                shared.config.idle_poll
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(relay = NAME, error = %e, "the relay cannot read its store; trying again");
                shared.config.backoff(failures - 1)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl<S: Source> Shared<S> {
    /// Claims entries, publishes them (keys side by side, each key's entries in order) and
    /// settles them.
    async fn round(&self) -> Result<Round> {
        let (claim, entries) = self.source.claim(self.config.batch).await?;
        let mut round = Round {
            claimed: entries.len(),
            ..Round::default()
        };
        if entries.is_empty() {
            self.source.settle(claim, Vec::new()).await?;
            return Ok(round);
        }
        let mut groups: Vec<Vec<Entry>> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for entry in entries {
            let key = entry.event.as_ref().ok().and_then(Event::key);
            match key {
                Some(k) => match by_key.get(k) {
                    Some(&i) => groups[i].push(entry),
                    None => {
                        by_key.insert(k.to_owned(), groups.len());
                        groups.push(vec![entry]);
                    }
                },
                None => groups.push(vec![entry]),
            }
        }
        let outcomes: Vec<(Vec<(i64, Settled)>, bool)> = futures::stream::iter(groups)
            .map(|group| self.deliver(group))
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut settled = Vec::with_capacity(round.claimed);
        for (group, closed) in outcomes {
            round.publisher_closed |= closed;
            round.progressed |= group
                .iter()
                .any(|(_, s)| !matches!(s, Settled::Retry { .. }));
            settled.extend(group);
        }
        let delivered = settled
            .iter()
            .filter(|(_, s)| *s == Settled::Delivered)
            .count();
        if let Err(e) = self.source.settle(claim, settled).await {
            if delivered > 0 {
                tracing::warn!(
                    relay = NAME,
                    delivered,
                    error = %e,
                    "confirmed entries could not be marked delivered: they will be published again"
                );
            }
            return Err(e);
        }
        self.counts
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        Ok(round)
    }

    /// One key's entries, in order, stopping at the first that must be retried (the rest wait
    /// for it). Returns the outcomes and whether the publisher turned out closed.
    async fn deliver(&self, group: Vec<Entry>) -> (Vec<(i64, Settled)>, bool) {
        let mut settled = Vec::with_capacity(group.len());
        for entry in group {
            let event = match entry.event {
                Ok(event) => event,
                Err(e) => {
                    self.counts.dead.fetch_add(1, Ordering::Relaxed);
                    settled.push((
                        entry.seq,
                        Settled::Dead {
                            error: describe(&e),
                        },
                    ));
                    continue;
                }
            };
            match self.publisher.publish(event).await {
                Ok(_) => settled.push((entry.seq, Settled::Delivered)),
                Err(e) if e.kind() == ErrorKind::Closed => return (settled, true),
                Err(e) if !matches!(e.kind(), ErrorKind::Rejected | ErrorKind::InvalidEvent) => {
                    // Retryable, or not known to be refused for good (`Other`, `Config`): an
                    // entry is dead-lettered only on a refusal of the event itself.
                    self.counts.retries.fetch_add(1, Ordering::Relaxed);
                    let after = self.config.backoff(entry.attempts);
                    tracing::debug!(relay = NAME, seq = entry.seq, error = %e, ?after, "retrying later");
                    settled.push((
                        entry.seq,
                        Settled::Retry {
                            after,
                            kind: e.kind(),
                            error: describe(&e),
                        },
                    ));
                    break;
                }
                Err(e) => {
                    self.counts.dead.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(relay = NAME, seq = entry.seq, error = %e, "entry refused for good: dead-lettered");
                    settled.push((
                        entry.seq,
                        Settled::Dead {
                            error: describe(&e),
                        },
                    ));
                }
            }
        }
        (settled, false)
    }
}

/// An error as stored beside a failed entry: kind and message, which never hold a payload.
fn describe(e: &Error) -> String {
    format!("{}: {}", e.kind().as_str(), e.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let bad = RelayConfig {
            batch: 0,
            ..RelayConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.field(), Some("batch"));
        let bad = RelayConfig {
            max_backoff: Duration::from_millis(1),
            ..RelayConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field(), Some("max_backoff"));
        RelayConfig::default().validate().unwrap();
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let c = RelayConfig {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..RelayConfig::default()
        };
        // Jitter adds up to the delay itself; never past max_backoff.
        assert!(c.backoff(0) >= Duration::from_millis(100));
        assert!(c.backoff(0) <= Duration::from_millis(200));
        assert!(c.backoff(3) >= Duration::from_millis(800));
        for attempts in [10, 63, 64, u32::MAX] {
            assert!(c.backoff(attempts) <= Duration::from_secs(2), "{attempts}");
        }
    }
}
