//! [`Confirms`]: publisher confirms matched to their own messages, returns included.
//!
//! `basic.return` carries no delivery tag. lapin queues returned messages in arrival order and
//! hands the head of that queue to whichever confirm it completes next (a coalesced
//! `basic.ack(multiple)` completes several, in hash-map order). So the confirmation one publish
//! receives may carry another publish's returned message, and a returned publish may see a
//! plain ack. RabbitMQ sends a message's return before its ack, but acks of different messages
//! may come in any order, so a later message's ack may come before an earlier message's return.
//!
//! One task per channel owns every pending confirm of that channel. It records every returned
//! message under its `message_id` (the event id) whichever confirm carried it, and decides an
//! ack of message X only once X's return, if any, is proven to have been handed to a confirm the
//! task has read: a message that began after X's ack was read completed carrying no returned
//! message. lapin's queue of returns was empty at that moment, and X's return had arrived
//! before X's ack, so it had been handed out already, to a confirm completed earlier (which the
//! task reads before deciding). When no later publish comes (the last of a burst), the task
//! sends one: an empty, non-mandatory message to the default exchange under a routing key no
//! queue has, which RabbitMQ acks and drops (the user needs write access to the default
//! exchange). A publish whose id was returned is `Returned`, whoever received the message.
//! Under load an unreturned mandatory publish is decided about one round trip after its ack.
//!
//! An ack that completed carrying no returned message is also its own proof, once every
//! confirm that may have completed before it has been read: lapin's queue of returns was empty
//! when that ack came, so the message's return, had there been one, arrived earlier and was
//! handed to a confirm completed earlier. The task reads every completed confirm before it
//! decides, and a confirm it cannot read yet belongs to a publish still holding its ticket; a
//! ticket taken after the ack was read cannot have completed before it. So such an ack is
//! decided as soon as no publish that began before it was read still holds its ticket: at
//! once when one publish is in flight at a time (one round trip, not two), and without waiting
//! for a later publish's ack under load.
//!
//! Publishes take their ticket, and lapin its delivery tag and its place on the wire, under
//! one lock ([`Confirms::ordered`]), so that tickets follow the broker's order.
//!
//! The task keeps the confirms of publishes that gave up (timed out, cancelled) until the
//! broker answers, so lapin never stores them as dropped confirms.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream::{FuturesUnordered, StreamExt};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, PublisherConfirm};
use publisher_core::Uuid;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::BACKEND;

/// How long the task waits for lapin to send a probe.
const PROBE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// What publishers and the task share.
struct Shared {
    /// Held while a publish takes its ticket and lapin registers its delivery tag and queues
    /// its frames (see [`Confirms::ordered`]).
    order: Mutex<()>,
    sending: Mutex<Sending>,
    /// A publish left between `basic_publish` and the task (see [`Ticket`]).
    tainted: AtomicBool,
    /// Wakes the task when a ticket is dropped.
    wake: tokio::sync::Notify,
}

impl Shared {
    fn sending(&self) -> MutexGuard<'_, Sending> {
        // Guards an integer and a set; never held across an await.
        self.sending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next ticket.
    fn begin(self: &Arc<Self>) -> Ticket {
        let mut s = self.sending();
        let ticket = s.next;
        s.next += 1;
        s.open.insert(ticket);
        Ticket {
            ticket,
            shared: self.clone(),
            armed: true,
        }
    }

    async fn ordered<F, T>(self: &Arc<Self>, publish: F) -> (Ticket, T)
    where
        F: Future<Output = T>,
    {
        let mut publish = std::pin::pin!(publish);
        let mut ticket = None;
        let out = std::future::poll_fn(|cx| {
            if ticket.is_none() {
                // The ticket, lapin's delivery tag and the frames' place in the queue are all
                // taken in this first poll, under the lock.
                let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
                ticket = Some(self.begin());
                return publish.as_mut().poll(cx);
            }
            publish.as_mut().poll(cx)
        })
        .await;
        (ticket.expect("polled at least once"), out)
    }
}

struct Tracked {
    ticket: u64,
    id: Uuid,
    confirm: PublisherConfirm,
    /// `None` for the task's own probes.
    reply: Option<oneshot::Sender<Outcome>>,
}

/// The confirm tracker of one channel (see the [module docs](self)).
pub(crate) struct Confirms {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Tracked>,
}

impl std::fmt::Debug for Confirms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirms").finish_non_exhaustive()
    }
}

/// A publish that began; hand its confirm over with [`Confirms::track`]. Dropped without it
/// (the publish failed, or was cancelled while lapin was sending it), it stops holding
/// decisions back, and taints the channel: lapin may still complete that publish's confirm out
/// of the task's sight, handing it someone's returned message, so no ack on this channel can be
/// proven any more. The task then closes the channel (pending publishes get `OutcomeUnknown`,
/// the publisher opens a new channel).
pub(crate) struct Ticket {
    ticket: u64,
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.armed {
            // Tainted before the ticket leaves the open set, under the same lock: whoever sees
            // the set without it sees the taint.
            let mut sending = self.shared.sending();
            self.shared.tainted.store(true, Ordering::Release);
            sending.open.remove(&self.ticket);
            drop(sending);
            self.shared.wake.notify_one();
        }
    }
}

impl Confirms {
    /// A tracker for `channel`, whose task ends when the tracker is dropped and every confirm
    /// handed to it is answered (or the channel failed), or at once when `shutdown` fires. Without `mandatory`
    /// publishes nothing is returned, and acks are decided as they come.
    pub(crate) fn spawn(channel: Channel, mandatory: bool, shutdown: CancellationToken) -> Self {
        let shared = Arc::new(Shared {
            order: Mutex::new(()),
            sending: Mutex::new(Sending {
                next: 0,
                open: BTreeSet::new(),
            }),
            tainted: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            shared: shared.clone(),
            channel,
            mandatory,
            probe_key: format!("publisher.confirm-probe.{}", Uuid::now_v7().simple()).into(),
            pending: FuturesUnordered::new(),
            returned: HashMap::new(),
            undecided: Vec::new(),
            proofs: Vec::new(),
            proven: None,
            probing: false,
            dead: false,
            tainted: false,
        };
        tokio::spawn(task.run(rx, shutdown));
        Self { shared, tx }
    }

    /// Runs `basic_publish` so that its ticket, its delivery tag and its place on the wire come
    /// in the same order for every publish on the channel.
    ///
    /// lapin assigns the delivery tag and queues the frames in the first poll of
    /// `basic_publish`, under two different locks: two publishes polled at once on two threads
    /// can take tags 5 and 6 and reach the broker as 6 and 5, so that the broker's ack for one
    /// completes the other's confirm. Here the first poll (and the ticket) happen under one
    /// lock.
    pub(crate) async fn ordered<F, T>(&self, publish: F) -> (Ticket, T)
    where
        F: Future<Output = T>,
    {
        self.shared.ordered(publish).await
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
        let mut ticket = ticket;
        ticket.armed = false;
        if let Err(mpsc::error::SendError(tracked)) = self.tx.send(Tracked {
            ticket: t,
            id,
            confirm,
            reply: Some(reply),
        }) {
            self.shared.sending().open.remove(&t);
            if let Some(reply) = tracked.reply {
                let _ = reply.send(Outcome::Undecided);
            }
        }
        rx
    }
}

/// An ack whose message may have been returned to another confirm, or not yet returned.
struct Undecided {
    /// The ticket counter when the ack was read: a publish with this ticket or a later one
    /// began after the ack completed.
    barrier: u64,
    /// Its confirm carried no returned message: its own proof once every confirm that may have
    /// completed before it was read (see the module docs).
    self_proof: bool,
    id: Uuid,
    reply: Option<oneshot::Sender<Outcome>>,
}

fn returned_id(msg: &lapin::message::BasicReturnMessage) -> Option<Uuid> {
    msg.delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
}

/// Records whether a waker was woken.
struct Woken(AtomicBool);

impl futures::task::ArcWake for Woken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, Ordering::Release);
    }
}

/// The next confirm already completed, if any, without waiting. `FuturesUnordered` returns
/// `Pending` (waking itself) after polling a few futures in one call even when more are ready;
/// that is told apart from "nothing ready" by the waker it woke.
fn next_ready<F: Future>(
    pending: &mut FuturesUnordered<F>,
    flag: &Woken,
    waker: &std::task::Waker,
) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        flag.0.store(false, Ordering::Release);
        match pending.poll_next_unpin(&mut cx) {
            std::task::Poll::Ready(next) => return next,
            std::task::Poll::Pending if flag.0.load(Ordering::Acquire) => {}
            std::task::Poll::Pending => return None,
        }
    }
}

fn reply(to: Option<oneshot::Sender<Outcome>>, outcome: Outcome) {
    if let Some(to) = to {
        let _ = to.send(outcome);
    }
}

type Done = (
    u64,
    Uuid,
    Option<oneshot::Sender<Outcome>>,
    lapin::Result<Confirmation>,
);

/// A confirm the task waits for, with what it needs to know once it completes.
struct PendingConfirm {
    ticket: u64,
    id: Uuid,
    reply: Option<oneshot::Sender<Outcome>>,
    confirm: PublisherConfirm,
}

impl Future for PendingConfirm {
    type Output = Done;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Done> {
        let this = self.get_mut();
        std::pin::Pin::new(&mut this.confirm)
            .poll(cx)
            .map(|r| (this.ticket, this.id, this.reply.take(), r))
    }
}

struct Task {
    shared: Arc<Shared>,
    channel: Channel,
    mandatory: bool,
    probe_key: ShortString,
    pending: FuturesUnordered<PendingConfirm>,
    /// Returned messages by event id, whichever confirm carried them.
    returned: HashMap<Uuid, (u16, String)>,
    undecided: Vec<Undecided>,
    /// Completions that carried no returned message (lapin's queue of returns was empty), with
    /// the ticket counter when they were read: a proof once no older publish is still on its
    /// way to the task.
    proofs: Vec<(u64, u64)>,
    /// The highest ticket of a proof: every ack read before that publish began can be decided.
    proven: Option<u64>,
    /// A probe is in flight.
    probing: bool,
    /// The channel failed: no return will come any more.
    dead: bool,
    /// A publish gave up while lapin was sending it: no ack on this channel can be proven.
    tainted: bool,
}

impl Task {
    fn add(&mut self, t: Tracked) {
        self.shared.sending().open.remove(&t.ticket);
        self.pending.push(PendingConfirm {
            ticket: t.ticket,
            id: t.id,
            reply: t.reply,
            confirm: t.confirm,
        });
    }

    /// Records what one completed confirm says: its own outcome where that is already known,
    /// and the returned message it carries (whoever it belongs to).
    fn handle(&mut self, (ticket, id, to, r): Done) {
        let probe = to.is_none();
        if probe {
            self.probing = false;
        }
        let attached = match r {
            Err(e) => {
                self.dead = true;
                reply(to, Outcome::Lost(e));
                return;
            }
            Ok(Confirmation::Nack(attached)) => {
                reply(to, Outcome::Nacked);
                attached
            }
            Ok(Confirmation::Ack(attached)) => {
                if !self.mandatory {
                    reply(to, Outcome::Acked);
                } else if !probe {
                    // Decided once its return (attached here or anywhere) is recorded, or
                    // proven not to come.
                    let barrier = self.shared.sending().next;
                    self.undecided.push(Undecided {
                        barrier,
                        self_proof: attached.is_none(),
                        id,
                        reply: to,
                    });
                }
                attached
            }
            Ok(Confirmation::NotRequested) => {
                reply(
                    to,
                    Outcome::Lost(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Initial,
                        "the channel is not in confirm mode",
                    ))),
                );
                return;
            }
        };
        match attached {
            None => {
                let barrier = self.shared.sending().next;
                self.proofs.push((ticket, barrier));
            }
            Some(msg) => match returned_id(&msg) {
                Some(owner) => {
                    self.returned
                        .insert(owner, (msg.reply_code, msg.reply_text.as_str().to_owned()));
                }
                None => tracing::warn!(
                    backend = BACKEND,
                    "RabbitMQ returned a message without a readable message_id; it cannot be \
                     matched to its publish"
                ),
            },
        }
    }

    fn decide(&mut self) {
        let oldest_open = self.shared.sending().open.first().copied();
        let mut proven = self.proven;
        self.proofs.retain(|&(ticket, barrier)| {
            if oldest_open.is_some_and(|t| t < barrier) {
                return true;
            }
            proven = proven.max(Some(ticket));
            false
        });
        self.proven = proven;
        let returned = &mut self.returned;
        // A tainted channel proves nothing any more: a confirm out of the task's sight may have
        // taken the return a proof relies on (the run loop marks it dead next).
        let untrusted = self.tainted || self.shared.tainted.load(Ordering::Acquire);
        let dead = self.dead;
        self.undecided.retain_mut(|u| {
            let outcome = match returned.remove(&u.id) {
                Some((code, text)) => Outcome::Returned { code, text },
                None if untrusted => Outcome::Undecided,
                None if proven.is_some_and(|p| p >= u.barrier) => Outcome::Acked,
                // Every completed confirm was read just before (the run loop's drain), and no
                // publish that began before this ack was read is still on its way.
                None if u.self_proof && oldest_open.is_none_or(|t| t >= u.barrier) => {
                    Outcome::Acked
                }
                None if dead => Outcome::Undecided,
                None => return true,
            };
            reply(u.reply.take(), outcome);
            false
        });
        if self.undecided.is_empty() && self.pending.is_empty() && oldest_open.is_none() {
            // Nothing in flight: a return still recorded belongs to a publish that gave up
            // before handing its confirm over, and nobody will ask for it.
            self.returned.clear();
        }
    }

    /// When acks wait for a proof and no later publish is under way to provide one, sends a
    /// probe (see the module docs).
    async fn probe_if_idle(&mut self) {
        if self.undecided.is_empty()
            || self.probing
            || self.dead
            || !self.pending.is_empty()
            || !self.shared.sending().open.is_empty()
        {
            return;
        }
        let id = Uuid::now_v7();
        let props =
            lapin::BasicProperties::default().with_message_id(id.hyphenated().to_string().into());
        // Bounded: a connection RabbitMQ blocks (memory or disk alarm) holds the frames; the
        // probe then gives up, which taints the channel (see `Ticket`).
        let send = self.shared.ordered(self.channel.basic_publish(
            ShortString::default(),
            self.probe_key.clone(),
            lapin::options::BasicPublishOptions::default(),
            &[],
            props,
        ));
        let Ok((ticket, sent)) = tokio::time::timeout(PROBE_SEND_TIMEOUT, send).await else {
            return;
        };
        match sent {
            Ok(confirm) => {
                let mut ticket = ticket;
                ticket.armed = false;
                let t = ticket.ticket;
                self.probing = true;
                self.add(Tracked {
                    ticket: t,
                    id,
                    confirm,
                    reply: None,
                });
            }
            Err(e) => {
                let mut ticket = ticket;
                ticket.armed = false;
                self.shared.sending().open.remove(&ticket.ticket);
                tracing::debug!(backend = BACKEND, error = %e, "confirm probe failed");
                // lapin may have registered its confirm, which could then take a return out of
                // the task's sight: no ack on this channel is proven any more.
                self.tainted = true;
                self.dead = true;
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Tracked>, shutdown: CancellationToken) {
        let mut open = true;
        let flag = Arc::new(Woken(AtomicBool::new(false)));
        let waker = futures::task::waker(flag.clone());
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                msg = rx.recv(), if open => match msg {
                    Some(t) => self.add(t),
                    None => open = false,
                },
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    self.handle(done);
                }
                () = self.shared.wake.notified() => {}
            }
            if self.shared.tainted.swap(false, Ordering::AcqRel) {
                self.tainted = true;
            }
            if self.tainted && !self.dead {
                tracing::warn!(
                    backend = BACKEND,
                    "a publish was cancelled while lapin was sending it; closing the channel, \
                     whose acks can no longer be matched to returns (its pending publishes get \
                     OutcomeUnknown)"
                );
                self.dead = true;
                let channel = self.channel.clone();
                tokio::spawn(async move {
                    let _ = channel
                        .close(200, "confirms can no longer be matched".into())
                        .await;
                });
            }
            // Take in every confirm handed over by now, then every confirm already completed,
            // before deciding anything.
            loop {
                match rx.try_recv() {
                    Ok(t) => self.add(t),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            while let Some(done) = next_ready(&mut self.pending, &flag, &waker) {
                self.handle(done);
            }
            self.decide();
            self.probe_if_idle().await;
            if !open && self.pending.is_empty() && self.undecided.is_empty() {
                // The tracker is gone and every confirm answered.
                break;
            }
        }
        for u in self.undecided.drain(..) {
            let outcome = match self.returned.remove(&u.id) {
                Some((code, text)) => Outcome::Returned { code, text },
                None => Outcome::Undecided,
            };
            reply(u.reply, outcome);
        }
    }
}
