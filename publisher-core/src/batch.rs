//! [`BatchResults`]: where a backend records each event's result of a batch as the broker
//! answers, so that what is known survives a batch that times out or is abandoned.

use std::sync::OnceLock;

use crate::backend::Checked;
use crate::error::Result;
use crate::event::Event;
use crate::outcome::{BatchOutcome, Position, Receipt};

/// One slot per event of a batch, filled by the backend as each event's outcome becomes known
/// (see [`Backend::publish_batch`](crate::Backend::publish_batch)).
///
/// The slots live outside the batch's future: when the gate drops that future (publish timeout,
/// close deadline), every event whose result was recorded keeps it, and only the others get
/// the gate's error. A slot is written once; later writes are ignored.
#[derive(Debug)]
pub struct BatchResults {
    slots: Vec<OnceLock<Result<Position>>>,
}

impl BatchResults {
    /// Empty slots for a batch of `n` events (made by the gate only).
    pub(crate) fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Records the result of event `index` (the first result recorded for it stands).
    ///
    /// # Panics
    /// When `index` is out of range.
    pub fn set(&self, index: usize, result: Result<Position>) {
        let _ = self.slots[index].set(result);
    }

    /// Records the same result for every event that has none yet (`f` makes one per event).
    pub fn set_rest(&self, mut f: impl FnMut(usize) -> Result<Position>) {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.get().is_none() {
                let _ = slot.set(f(i));
            }
        }
    }

    /// The events of `events` that have no result yet, with their index: at the start of
    /// [`Backend::publish_batch`](crate::Backend::publish_batch), those that passed the gate's
    /// check, the ones to send.
    pub fn pending<'e>(
        &'e self,
        events: &'e [Event],
    ) -> impl Iterator<Item = (usize, Checked<'e>)> {
        debug_assert_eq!(events.len(), self.slots.len());
        self.slots
            .iter()
            .zip(events)
            .enumerate()
            .filter(|(_, (slot, _))| slot.get().is_none())
            .map(|(i, (_, event))| (i, Checked::new(event)))
    }

    /// Number of events in the batch.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The recorded results, `None` where the event has none yet.
    pub fn iter(&self) -> impl Iterator<Item = Option<&Result<Position>>> {
        self.slots.iter().map(OnceLock::get)
    }

    /// The outcome of the batch: each recorded result turned into a receipt for its event, and
    /// `missing(event)` for the events without one.
    pub(crate) fn to_outcome(
        &self,
        events: &[Event],
        missing: impl Fn(&Event) -> Result<Receipt>,
    ) -> BatchOutcome {
        BatchOutcome::new(
            self.slots
                .iter()
                .zip(events)
                .map(|(slot, event)| match slot.get() {
                    Some(Ok(position)) => Ok(Receipt::new(event, position.clone())),
                    Some(Err(e)) => Err(e.clone()),
                    None => missing(event),
                })
                .collect(),
        )
    }
}
