//! History checking (feature `testing`): drive publishes, record what each call returned, read
//! the broker back with its own client, and check every outcome against what the broker holds,
//! in the spirit of Jepsen.
//!
//! A scenario builds its events ([`Intent`] says what each is meant to be), publishes them
//! (singly at some concurrency, or in batches), and records one [`Record`] per event. A
//! [`History`] is then checked against what the probe read back ([`History::check`]):
//!
//! - every event whose publish returned Ok is at the broker (else *lost*), carrying its own
//!   payload, headers and key (else *misattributed*: an Ok for A must not stand for B's message);
//! - every event that failed with a kind meaning "nothing was sent" (every kind but
//!   [`ErrorKind::OutcomeUnknown`]) is absent (else a *phantom*);
//! - every event meant to fail failed with its documented kind, and only it (else *wrong kind*);
//!   a good event fails only where the scenario injects faults, and then only with a kind a
//!   fault explains (else *wrongly failed*);
//! - copies of one event are counted (*duplicates*); they are allowed only for events whose
//!   outcome was unknown.
//!
//! Each checked history prints one line: events, ok, found, lost, misattributed, wrongly
//! failed, wrong kind, phantoms, unknown, duplicates.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use uuid::Uuid;

use crate::testing::Received;
use crate::{Error, ErrorKind, Event, Publisher};

/// What an event of a history was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Intent {
    /// A good event: confirmed and at the broker, unless the scenario injects faults.
    Good,
    /// Addressed where nothing takes it (an AMQP routing key no queue is bound to).
    Unroutable,
    /// Larger than the broker (or the backend's configured limit) takes.
    Oversized,
    /// Invalid for every backend (an empty topic).
    Invalid,
}

impl Intent {
    /// The lower-case name used in scenario lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Good => "good",
            Intent::Unroutable => "unroutable",
            Intent::Oversized => "oversized",
            Intent::Invalid => "invalid",
        }
    }
}

/// An event meant to fail, and the kind its publish must fail with.
#[derive(Debug, Clone)]
pub struct BadEvent {
    /// The event.
    pub event: Event,
    /// The documented kind of its failure.
    pub expect: ErrorKind,
}

/// One event of a history: what it was, what it was meant to be, and what its publish returned.
#[derive(Debug, Clone)]
pub struct Record {
    /// The event as published.
    pub event: Event,
    /// What it was meant to be.
    pub intent: Intent,
    /// For events meant to fail, the kind they must fail with.
    pub expect: Option<ErrorKind>,
    /// What the publish returned for it (`None`: the call never returned, a bug of the driver).
    pub outcome: Option<Result<(), Error>>,
}

/// What a scenario allows good events to suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// Nothing is injected: every good event must be confirmed.
    None,
    /// Faults are injected: a good event may fail, but only with a kind a fault explains
    /// (`OutcomeUnknown`, `Timeout`, `Connect`, `Unavailable`, `Closed`).
    Injected,
}

/// The events of one scenario and what each publish returned.
#[derive(Debug, Clone)]
pub struct History {
    /// The scenario's name, printed in its line.
    pub scenario: String,
    /// One record per event, in the order the scenario built them.
    pub records: Vec<Record>,
    /// What good events may suffer.
    pub faults: Faults,
}

/// The checked history: counts, and a description of each violation found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The scenario's name.
    pub scenario: String,
    /// Events published.
    pub events: usize,
    /// Publishes that returned Ok.
    pub ok: usize,
    /// Distinct events found at the broker.
    pub found: usize,
    /// Ok events not at the broker.
    pub lost: usize,
    /// Messages at the broker that carry another event's id, or whose payload, key or headers
    /// differ from the event their id names, or whose id nobody published.
    pub misattributed: usize,
    /// Good events that failed where nothing explains it.
    pub wrongly_failed: usize,
    /// Events meant to fail that returned Ok or another kind than documented.
    pub wrong_kind: usize,
    /// Events reported with a kind meaning "nothing was sent" that are at the broker.
    pub phantoms: usize,
    /// Events whose outcome was reported unknown.
    pub unknown: usize,
    /// Extra copies at the broker (all events).
    pub duplicates: usize,
    /// Extra copies of events whose outcome was not unknown.
    pub unexplained_duplicates: usize,
    /// The first violations found, described (at most 20).
    pub violations: Vec<String>,
}

impl Verdict {
    /// Whether the history holds: nothing lost, misattributed, wrongly failed, of the wrong
    /// kind, phantom, or duplicated without an unknown outcome.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.misattributed == 0
            && self.wrongly_failed == 0
            && self.wrong_kind == 0
            && self.phantoms == 0
            && self.unexplained_duplicates == 0
    }

    /// Panics with the scenario line and the violations unless the history holds.
    ///
    /// # Panics
    /// When [`Verdict::holds`] is false.
    pub fn assert_holds(&self) {
        assert!(
            self.holds(),
            "history does not hold: {self}\n  {}",
            self.violations.join("\n  ")
        );
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: events {}, ok {}, found {}, lost {}, misattributed {}, wrongly failed {}, \
             wrong kind {}, phantoms {}, unknown {}, duplicates {} ({} unexplained)",
            self.scenario,
            self.events,
            self.ok,
            self.found,
            self.lost,
            self.misattributed,
            self.wrongly_failed,
            self.wrong_kind,
            self.phantoms,
            self.unknown,
            self.duplicates,
            self.unexplained_duplicates
        )
    }
}

fn fault_explains(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::OutcomeUnknown
            | ErrorKind::Timeout
            | ErrorKind::Connect
            | ErrorKind::Unavailable
            | ErrorKind::Closed
    )
}

fn same_message(sent: &Event, got: &Received, check_key: bool, check_headers: bool) -> bool {
    got.payload == *sent.payload()
        && (!check_key || got.key.as_deref() == sent.key())
        && (!check_headers || &got.headers == sent.headers())
}

impl History {
    /// Checks the history against `received`, what the broker holds on the scenario's topic.
    /// `check_key` and `check_headers` say whether the backend carries them.
    pub fn check(&self, received: &[Received], check_key: bool, check_headers: bool) -> Verdict {
        let mut v = Verdict {
            scenario: self.scenario.clone(),
            events: self.records.len(),
            ..Verdict::default()
        };
        let by_id: HashMap<Uuid, usize> = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.event.id(), i))
            .collect();
        let by_payload: HashMap<&[u8], usize> = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.event.payload().as_ref(), i))
            .collect();
        let mut copies = vec![0usize; self.records.len()];
        for got in received {
            // The id names the event the broker holds; backends that drop ids are matched by
            // payload (every scenario payload is unique).
            let index = match got.id {
                Some(id) => by_id.get(&id).copied(),
                None => by_payload.get(got.payload.as_ref()).copied(),
            };
            let Some(index) = index else {
                v.misattributed += 1;
                v.violation(format!(
                    "a message nobody published is at the broker (id {:?})",
                    got.id
                ));
                continue;
            };
            let sent = &self.records[index].event;
            if !same_message(sent, got, check_key, check_headers) {
                v.misattributed += 1;
                v.violation(format!(
                    "the message with id {} does not carry that event's payload, key or headers",
                    sent.id()
                ));
                continue;
            }
            copies[index] += 1;
        }
        for (record, &n) in self.records.iter().zip(&copies) {
            let id = record.event.id();
            let intent = record.intent.as_str();
            if n > 0 {
                v.found += 1;
            }
            let unknown = matches!(&record.outcome, Some(Err(e)) if e.is_outcome_unknown());
            if n > 1 {
                v.duplicates += n - 1;
                if !unknown {
                    v.unexplained_duplicates += n - 1;
                    v.violation(format!(
                        "{intent} event {id} is at the broker {n} times, reported {:?}",
                        record.outcome
                    ));
                }
            }
            match &record.outcome {
                None => {
                    v.wrongly_failed += 1;
                    v.violation(format!("{intent} event {id}: the publish never returned"));
                }
                Some(Ok(())) => {
                    v.ok += 1;
                    if record.intent != Intent::Good {
                        v.wrong_kind += 1;
                        v.violation(format!(
                            "{intent} event {id} returned Ok (expected {:?})",
                            record.expect
                        ));
                    } else if n == 0 {
                        v.lost += 1;
                        v.violation(format!(
                            "good event {id} returned Ok but is not at the broker"
                        ));
                    }
                }
                Some(Err(e)) => {
                    if unknown {
                        v.unknown += 1;
                    } else if n > 0 {
                        v.phantoms += 1;
                        v.violation(format!(
                            "{intent} event {id} failed with `{}` (nothing sent) but is at the \
                             broker: {e}",
                            e.kind()
                        ));
                    }
                    match (record.intent, record.expect) {
                        (Intent::Good, _) => {
                            if self.faults == Faults::None || !fault_explains(e.kind()) {
                                v.wrongly_failed += 1;
                                v.violation(format!("good event {id} failed: {e}"));
                            }
                        }
                        (_, Some(expect)) if e.kind() == expect => {}
                        // A fault may reach a bad event before its own failure does.
                        (_, _) if self.faults == Faults::Injected && fault_explains(e.kind()) => {}
                        (_, expect) => {
                            v.wrong_kind += 1;
                            v.violation(format!(
                                "{intent} event {id} failed with `{}`, expected {expect:?}: {e}",
                                e.kind()
                            ));
                        }
                    }
                }
            }
        }
        v
    }
}

/// Publishes `records`' events one call each, `concurrency` at a time, on `publisher`,
/// recording each outcome. Calls `on_ok` with the count of Oks so far after each Ok (scenarios
/// use it to inject a fault once enough events are through); a task whose publish failed waits
/// `pause_after_error` before its next one (so that a load spans an outage instead of failing
/// through it at once).
pub async fn publish_each(
    publisher: Arc<dyn Publisher>,
    records: &mut [Record],
    concurrency: usize,
    on_ok: Arc<dyn Fn(usize) + Send + Sync>,
    pause_after_error: std::time::Duration,
) {
    let events: Arc<Vec<Event>> = Arc::new(records.iter().map(|r| r.event.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let oks = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (publisher, events, next, oks, on_ok) = (
            publisher.clone(),
            events.clone(),
            next.clone(),
            oks.clone(),
            on_ok.clone(),
        );
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(event) = events.get(i) else {
                    return done;
                };
                let r = publisher.publish(event.clone()).await;
                match &r {
                    Ok(receipt) => {
                        assert_eq!(
                            receipt.event_id,
                            event.id(),
                            "the receipt names another event"
                        );
                        on_ok(oks.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                    Err(_) if !pause_after_error.is_zero() => {
                        tokio::time::sleep(pause_after_error).await;
                    }
                    Err(_) => {}
                }
                done.push((i, r.map(|_| ())));
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        for (i, r) in done.expect("publishing task panicked") {
            records[i].outcome = Some(r);
        }
    }
}

/// Publishes `records`' events in batches of `batch_size`, `concurrency` batches at a time,
/// recording each event's outcome.
pub async fn publish_batches(
    publisher: Arc<dyn Publisher>,
    records: &mut [Record],
    batch_size: usize,
    concurrency: usize,
) {
    let batches: Vec<(usize, Vec<Event>)> = records
        .chunks(batch_size.max(1))
        .enumerate()
        .map(|(b, chunk)| {
            (
                b * batch_size.max(1),
                chunk.iter().map(|r| r.event.clone()).collect(),
            )
        })
        .collect();
    let batches = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (publisher, batches) = (publisher.clone(), batches.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = batches.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((start, events)) = next else {
                    return done;
                };
                let ids: Vec<Uuid> = events.iter().map(Event::id).collect();
                let outcome = publisher.publish_batch(events).await;
                assert_eq!(outcome.len(), ids.len(), "one result per event");
                for (k, (r, id)) in outcome.into_results().into_iter().zip(ids).enumerate() {
                    if let Ok(receipt) = &r {
                        assert_eq!(receipt.event_id, id, "a batch receipt names another event");
                    }
                    done.push((start + k, r.map(|_| ())));
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        for (i, r) in done.expect("publishing task panicked") {
            records[i].outcome = Some(r);
        }
    }
}
