//! [`Confirms`]: publisher confirms matched to their own messages, returns included.
//!
//! `basic.return` carries no delivery tag. lapin queues returned messages in arrival order and
//! hands the head of that queue to whichever confirm it completes next; a coalesced
//! `basic.ack(multiple)` completes several confirms in hash-map order. So the `Confirmation`
//! one publish receives may carry another publish's returned message, and a returned publish
//! may see a plain ack.
//!
//! What holds, and what this module builds on: RabbitMQ sends a message's `basic.return`
//! before the ack that covers it, and lapin completes confirms one after the other, popping at
//! most one returned message per completion. So when a publish's confirm completes without a
//! returned message, its own return (if it had one) went to a confirm completed *before* it.
//!
//! One task per channel owns every pending confirm of that channel and polls them as lapin
//! completes them (a `FuturesUnordered` runs woken futures in wake order), records every returned
//! message under its `message_id` (the event id), and decides an ack only once every confirm
//! that could have been completed before it has been seen: all those already handed to the
//! task have been polled, and no publish that began before the ack was seen is still between
//! `basic_publish` and handing its confirm over. A publish whose id was returned is
//! `Returned`, whoever received the message.
//!
//! The task also keeps confirms of publishes that gave up (timed out, cancelled) until the
//! broker answers, so lapin never stores them as dropped confirms.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::BACKEND;

/// What the broker said about one message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Confirmed (`basic.ack`) and not returned.
    Acked,
    /// Returned as unroutable (`basic.return`), with the broker's reply code and text.
    Returned { code: u16, text: String },
    /// Refused (`basic.nack`).
    Nacked,
    /// The confirm never came: the channel or connection closed while it was pending.
    Lost(lapin::Error),
    /// The broker acked it but the channel's tracker stopped (publisher closing) before every
    /// return could be matched: it may or may not have been routed.
    Undecided,
}

struct Sending {
    next: u64,
    /// Publishes between their ticket and handing their confirm to the task.
    open: BTreeSet<u64>,
}

struct Tracked {
    ticket: u64,
    id: Uuid,
    confirm: PublisherConfirm,
    reply: oneshot::Sender<Outcome>,
}

/// The confirm tracker of one channel (see the [module docs](self)).
pub(crate) struct Confirms {
    sending: Arc<Mutex<Sending>>,
    tx: mpsc::UnboundedSender<Tracked>,
}

impl std::fmt::Debug for Confirms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirms").finish_non_exhaustive()
    }
}

/// A publish that began; hand its confirm over with [`Confirms::track`]. Dropped without it
/// (the publish failed or was cancelled before `basic_publish` returned), it stops holding
/// decisions back.
pub(crate) struct Ticket {
    ticket: u64,
    sending: Arc<Mutex<Sending>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.sending).open.remove(&self.ticket);
    }
}

fn lock(m: &Mutex<Sending>) -> MutexGuard<'_, Sending> {
    // Guards two integers and a set; never held across an await.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Confirms {
    /// A tracker whose task ends when the tracker is dropped and every confirm handed to it is
    /// answered, or at once when `shutdown` fires.
    pub(crate) fn spawn(shutdown: CancellationToken) -> Self {
        let sending = Arc::new(Mutex::new(Sending {
            next: 0,
            open: BTreeSet::new(),
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, sending.clone(), shutdown));
        Self { sending, tx }
    }

    /// Call right before `basic_publish`.
    pub(crate) fn begin(&self) -> Ticket {
        let mut s = lock(&self.sending);
        let ticket = s.next;
        s.next += 1;
        s.open.insert(ticket);
        Ticket {
            ticket,
            sending: self.sending.clone(),
        }
    }

    /// Hands the confirm of the message with `id` to the task; the receiver gets its outcome.
    pub(crate) fn track(
        &self,
        ticket: Ticket,
        id: Uuid,
        confirm: PublisherConfirm,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        let t = ticket.ticket;
        // The task takes the ticket off the open set when it receives the confirm.
        std::mem::forget(ticket);
        if let Err(mpsc::error::SendError(tracked)) = self.tx.send(Tracked {
            ticket: t,
            id,
            confirm,
            reply,
        }) {
            lock(&self.sending).open.remove(&t);
            let _ = tracked.reply.send(Outcome::Undecided);
        }
        rx
    }
}

/// An ack whose message may have been returned to another confirm.
struct Undecided {
    id: Uuid,
    /// The ticket counter when the ack was seen: publishes with smaller tickets may hold the
    /// return.
    barrier: u64,
    reply: oneshot::Sender<Outcome>,
}

fn returned_id(msg: &lapin::message::BasicReturnMessage) -> Option<Uuid> {
    msg.delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
}

type Done = (Uuid, oneshot::Sender<Outcome>, lapin::Result<Confirmation>);

/// Records what one completed confirm says: the outcome of its own publish where it is
/// already known, and the returned message it carries (whoever it belongs to).
fn handle(
    (id, reply, r): Done,
    returned: &mut HashMap<Uuid, (u16, String)>,
    undecided: &mut Vec<Undecided>,
    barrier: u64,
) {
    let attached = match r {
        Err(e) => {
            let _ = reply.send(Outcome::Lost(e));
            return;
        }
        Ok(Confirmation::Nack(attached)) => {
            let _ = reply.send(Outcome::Nacked);
            attached
        }
        Ok(Confirmation::Ack(attached)) => {
            undecided.push(Undecided { id, barrier, reply });
            attached
        }
        Ok(Confirmation::NotRequested) => {
            let _ = reply.send(Outcome::Lost(lapin::Error::from(
                lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Initial,
                    "the channel is not in confirm mode",
                ),
            )));
            return;
        }
    };
    if let Some(msg) = attached {
        match returned_id(&msg) {
            Some(owner) => {
                returned.insert(owner, (msg.reply_code, msg.reply_text.as_str().to_owned()));
            }
            None => tracing::warn!(
                backend = BACKEND,
                "RabbitMQ returned a message without a readable message_id; it cannot be \
                 matched to its publish"
            ),
        }
    }
}

fn decide(u: Undecided, returned: &mut HashMap<Uuid, (u16, String)>, unsure: bool) {
    let outcome = match returned.remove(&u.id) {
        Some((code, text)) => Outcome::Returned { code, text },
        None if unsure => Outcome::Undecided,
        None => Outcome::Acked,
    };
    let _ = u.reply.send(outcome);
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Tracked>,
    sending: Arc<Mutex<Sending>>,
    shutdown: CancellationToken,
) {
    let mut pending = FuturesUnordered::new();
    let mut returned: HashMap<Uuid, (u16, String)> = HashMap::new();
    let mut undecided: Vec<Undecided> = Vec::new();
    let mut open = true;
    let add = |t: Tracked, pending: &mut FuturesUnordered<_>| {
        lock(&sending).open.remove(&t.ticket);
        let Tracked {
            id, confirm, reply, ..
        } = t;
        pending.push(confirm.map(move |r| (id, reply, r)));
    };

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            msg = rx.recv(), if open => match msg {
                Some(t) => add(t, &mut pending),
                None => open = false,
            },
            Some(done) = pending.next(), if !pending.is_empty() => {
                let barrier = lock(&sending).next;
                handle(done, &mut returned, &mut undecided, barrier);
            }
            else => break,
        }
        // Take in every confirm handed over by now, then every confirm already completed (in
        // the order lapin completed them), before deciding anything.
        loop {
            match rx.try_recv() {
                Ok(t) => add(t, &mut pending),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while let Some(Some(done)) = pending.next().now_or_never() {
            let barrier = lock(&sending).next;
            handle(done, &mut returned, &mut undecided, barrier);
        }
        // An ack is decided once no publish that began before it was seen is still on its way
        // here: every confirm that lapin could have completed before it has been read.
        let oldest_open = lock(&sending).open.first().copied();
        let mut i = 0;
        while i < undecided.len() {
            if oldest_open.is_some_and(|t| t < undecided[i].barrier) {
                i += 1;
            } else {
                decide(undecided.swap_remove(i), &mut returned, false);
            }
        }
        if undecided.is_empty() && pending.is_empty() {
            // Returns whose publish is gone (it gave up before its ack): nobody will ask.
            returned.clear();
        }
    }
    let unsure = shutdown.is_cancelled();
    for u in undecided {
        decide(u, &mut returned, unsure);
    }
}
