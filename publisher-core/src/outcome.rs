//! What a publish, a batch and a close report back.

use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};

/// Where the broker put an acknowledged event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Position {
    /// The backend has no position to report (console, memory).
    None,
    /// A Redis stream entry id (`1700000000000-0`).
    StreamEntry(String),
    /// A Redis pub/sub publish: how many subscribers received it.
    Receivers(u64),
    /// A Kafka partition and offset.
    Partition {
        /// The partition.
        partition: i32,
        /// The offset within the partition.
        offset: i64,
    },
    /// A delivery tag. Reserved: the AMQP backend reports [`Position::None`], since a delivery
    /// tag only numbers a message on one channel and says nothing about where it is stored.
    DeliveryTag(u64),
    /// A sequence number assigned by the publisher (memory, console).
    Sequence(u64),
    /// A stream and the sequence it gave the event (NATS JetStream). `duplicate`: the stream
    /// already held an event with this id (within its duplicate window) and stored nothing
    /// new; `sequence` is then the earlier copy's.
    Stream {
        /// The stream's name.
        stream: String,
        /// The event's sequence in the stream.
        sequence: u64,
        /// Whether the stream took it as a duplicate.
        duplicate: bool,
    },
    /// Durably in a local spool (`publisher-outbox`'s `Spool`) at this sequence: not yet
    /// confirmed by the broker, which its relay delivers to later.
    Spooled {
        /// The event's sequence in the spool.
        sequence: u64,
    },
}

/// Proof that the broker confirmed one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id of the confirmed event.
    pub event_id: Uuid,
    /// The topic it was published to.
    pub topic: String,
    /// Where the broker put it.
    pub position: Position,
}

impl Receipt {
    /// A receipt for `event` at `position`, taking the topic from the event (no copy).
    pub fn from_event(event: crate::Event, position: Position) -> Self {
        let event_id = event.id();
        Self {
            event_id,
            topic: event.into_topic(),
            position,
        }
    }

    /// A receipt for `event` at `position`.
    pub fn new(event: &crate::Event, position: Position) -> Self {
        Self {
            event_id: event.id(),
            topic: event.topic().to_owned(),
            position,
        }
    }
}

/// One result per event of a batch, in the order the events were given.
///
/// A failure of one event never hides the results of the others.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    results: Vec<Result<Receipt>>,
}

impl BatchOutcome {
    /// Wraps per-event results (in input order).
    pub fn new(results: Vec<Result<Receipt>>) -> Self {
        Self { results }
    }

    /// The same error for each of `n` events (used when the whole batch could not be sent).
    pub fn all_failed(n: usize, error: &Error) -> Self {
        Self {
            results: (0..n).map(|_| Err(error.clone())).collect(),
        }
    }

    /// The per-event results, in input order.
    pub fn results(&self) -> &[Result<Receipt>] {
        &self.results
    }

    /// Consumes the outcome into its per-event results.
    pub fn into_results(self) -> Vec<Result<Receipt>> {
        self.results
    }

    /// How many events were confirmed.
    pub fn succeeded(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }

    /// How many events failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.succeeded()
    }

    /// Number of events in the batch.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Whether every event was confirmed.
    pub fn is_all_ok(&self) -> bool {
        self.results.iter().all(Result::is_ok)
    }

    /// The errors with the index of the event each belongs to.
    pub fn errors(&self) -> impl Iterator<Item = (usize, &Error)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    }
}

/// What `close` achieved. Every caller of `close`, concurrent or later, receives the same report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloseReport {
    /// Publishes that were in flight when close began and finished (Ok or Err) before the
    /// deadline.
    pub drained: usize,
    /// Publishes (or queued messages, for backends with a local queue) that had not finished by
    /// the close deadline; each of them returned an error to its caller, none returned Ok.
    pub abandoned: usize,
    /// How long the close took.
    pub elapsed: Duration,
}

impl CloseReport {
    /// Whether everything in flight was drained.
    pub fn is_clean(&self) -> bool {
        self.abandoned == 0
    }
}

impl std::fmt::Display for CloseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "closed in {:.1?}: {} drained, {} abandoned",
            self.elapsed, self.drained, self.abandoned
        )
    }
}
