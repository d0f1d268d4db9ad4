//! [`Spool`]: a local, crash-safe spool in front of any [`Publisher`].
//!
//! # Why redb
//! The spool's store must survive `kill -9` and power loss at any moment, commit many
//! concurrent publishes with one fsync, and delete delivered entries cheaply. We compared:
//! - **SQLite in WAL mode** (rusqlite): crash-safe and well known, but a C library, and a
//!   commit per group needs our own batching anyway; the SQL layer buys nothing for a queue.
//! - **fjall** (an LSM tree): fast writes, but its journal persists on its own schedule unless
//!   every batch asks for a sync, and deletes are tombstones compacted later; more machinery
//!   than a queue of a few hundred thousand entries needs.
//! - **redb** (chosen): pure Rust with no dependencies beyond `libc`, copy-on-write B-trees
//!   with checksummed commits (a torn commit is rolled back on open), one fsync per
//!   `Durability::Immediate` commit, an exclusive file lock (one process per spool), and
//!   delete in place. Group commit is ours: one writer thread commits everything that
//!   arrived while the previous commit was syncing.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use publisher_core::envelope::{self, Envelope};
use publisher_core::{
    BatchOutcome, CloseReport, Error, ErrorKind, Event, Health, HealthStatus, Lifecycle, Position,
    Publisher, Receipt, Result,
};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::relay::{Backlog, Entry, Relay, RelayConfig, RelayReport, Settled, Source};

/// The name the spool's errors and logs carry.
pub const SPOOL: &str = "spool";

/// Spooled entries: sequence → spool time (unix ms, 8 bytes LE) followed by the event's
/// envelope.
const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
/// Dead-lettered entries, as in `PENDING`.
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
/// Why each dead entry was refused (kind and message, never the payload).
const DEAD_ERRORS: TableDefinition<u64, &str> = TableDefinition::new("dead_errors");

/// Most events one group commit takes.
const GROUP: usize = 4096;

/// How a [`Spool`] works. Every field but `dir` has a documented default.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool's directory (created if missing); it holds one file, `spool.redb`. One
    /// process at a time may open it.
    pub dir: PathBuf,
    /// Most bytes of events (their envelopes) the spool holds; a publish that would pass it
    /// fails with `Unavailable` (backpressure) until the relay has delivered some. Dead-lettered
    /// entries do not count. Default 1 GiB.
    pub max_bytes: u64,
    /// Bound of one publish (the group commit it joins). Default 5 s.
    pub publish_timeout: Duration,
    /// How long `close` keeps delivering what is spooled before leaving the rest for the next
    /// start. Default 10 s.
    pub close_timeout: Duration,
    /// The relay that delivers the spool (its `close_timeout` is the spool's cut-off for the
    /// round in progress at close: 500 ms by default here; its `max_backoff` 5 s by default
    /// here, so that a broker coming back is noticed within seconds).
    pub relay: RelayConfig,
}

impl SpoolConfig {
    /// A spool in `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            publish_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(10),
            relay: RelayConfig {
                close_timeout: Duration::from_millis(500),
                max_backoff: Duration::from_secs(5),
                ..RelayConfig::default()
            },
        }
    }

    fn validate(&self) -> Result<()> {
        let field = |name: &'static str, why: &str| Err(Error::config(SPOOL, name, why.to_owned()));
        if self.dir.as_os_str().is_empty() {
            return field("dir", "dir must not be empty");
        }
        if self.max_bytes == 0 {
            return field("max_bytes", "max_bytes must be above zero");
        }
        if self.publish_timeout.is_zero() {
            return field("publish_timeout", "publish_timeout must be above zero");
        }
        if self.close_timeout.is_zero() {
            return field("close_timeout", "close_timeout must be above zero");
        }
        // Close delivers, then cuts the relay's round (its close_timeout, plus up to 1 s for the
        // cut round to stop), then closes the wrapped publisher: all within close_timeout.
        if self.relay.close_timeout + Duration::from_millis(1500) > self.close_timeout {
            return field(
                "relay.close_timeout",
                "relay.close_timeout must be at least 1.5 s below close_timeout",
            );
        }
        self.relay.validate().map_err(|e| {
            Error::config(
                SPOOL,
                match e.field() {
                    Some("batch") => "relay.batch",
                    Some("concurrency") => "relay.concurrency",
                    Some("idle_poll") => "relay.idle_poll",
                    Some("min_backoff") => "relay.min_backoff",
                    Some("max_backoff") => "relay.max_backoff",
                    _ => "relay",
                },
                e.message().to_owned(),
            )
        })?;
        Ok(())
    }
}

/// What the spool knows of a pending entry (its body stays on disk).
#[derive(Debug)]
struct Meta {
    key: Option<Box<str>>,
    bytes: u64,
    spooled_at_ms: u64,
    attempts: u32,
    available_at: Option<Instant>,
    /// The last try failed because the broker was unreachable.
    unreachable: bool,
}

#[derive(Debug, Default)]
struct State {
    pending: BTreeMap<u64, Meta>,
    dead: u64,
}

/// The store the writer thread, the relay and the publisher share.
struct Store {
    db: redb::Database,
    state: Mutex<State>,
    used: AtomicU64,
    max_bytes: u64,
}

impl Store {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Pending entries, the oldest's age (the first by sequence), dead entries.
    fn backlog(&self) -> Backlog {
        let state = self.state();
        let oldest = state.pending.values().next().map(|m| m.spooled_at_ms);
        Backlog {
            pending: state.pending.len() as u64,
            oldest_age: oldest.map(|ms| Duration::from_millis(now_ms().saturating_sub(ms))),
            dead: state.dead,
        }
    }
}

fn store_error(kind: ErrorKind, what: &str, e: impl Into<redb::Error>) -> Error {
    Error::new(kind, SPOOL, format!("spool: {what} failed")).with_source(e.into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One event on its way to the writer.
struct Item {
    key: Option<Box<str>>,
    value: Vec<u8>,
}

/// A group of events to commit together, and where to say how it went.
struct Write {
    items: Vec<Item>,
    reply: oneshot::Sender<Result<Vec<u64>>>,
}

/// Commits what arrives, as groups: everything waiting when the previous commit ends goes into
/// the next one (one fsync for all of it).
fn writer(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Write>, mut next: u64) {
    while let Some(first) = rx.blocking_recv() {
        let mut n = first.items.len();
        let mut group = vec![first];
        while n < GROUP {
            match rx.try_recv() {
                Ok(w) => {
                    n += w.items.len();
                    group.push(w);
                }
                Err(_) => break,
            }
        }
        let begin = next;
        let committed = (|| -> std::result::Result<(), Error> {
            let tx = store
                .db
                .begin_write()
                .map_err(|e| store_error(ErrorKind::Unavailable, "starting a spool write", e))?;
            {
                let mut table = tx
                    .open_table(PENDING)
                    .map_err(|e| store_error(ErrorKind::Unavailable, "opening the spool", e))?;
                for (seq, item) in (begin..).zip(group.iter().flat_map(|w| &w.items)) {
                    table
                        .insert(seq, item.value.as_slice())
                        .map_err(|e| store_error(ErrorKind::Unavailable, "writing the spool", e))?;
                }
            }
            // Once commit starts, the entries may be on disk whatever it returns.
            tx.commit()
                .map_err(|e| store_error(ErrorKind::OutcomeUnknown, "syncing the spool", e))
        })();
        match committed {
            Ok(()) => {
                let mut state = store.state();
                let mut seq = begin;
                let mut replies = Vec::with_capacity(group.len());
                for w in group {
                    let mut seqs = Vec::with_capacity(w.items.len());
                    for item in w.items {
                        state.pending.insert(
                            seq,
                            Meta {
                                key: item.key,
                                bytes: item.value.len() as u64,
                                spooled_at_ms: u64::from_le_bytes(
                                    item.value[..8].try_into().unwrap_or_default(),
                                ),
                                attempts: 0,
                                available_at: None,
                                unreachable: false,
                            },
                        );
                        seqs.push(seq);
                        seq += 1;
                    }
                    replies.push((w.reply, seqs));
                }
                next = seq;
                drop(state);
                for (reply, seqs) in replies {
                    let _ = reply.send(Ok(seqs));
                }
            }
            Err(e) => {
                if e.kind() == ErrorKind::OutcomeUnknown {
                    // The sequence numbers may be taken on disk: never reuse them.
                    next = begin + n as u64;
                }
                for w in group {
                    let bytes: u64 = w.items.iter().map(|i| i.value.len() as u64).sum();
                    if e.kind() != ErrorKind::OutcomeUnknown {
                        store.release(bytes);
                    }
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The relay's view of the spool.
#[derive(Clone)]
pub struct SpoolSource(Arc<Store>);

impl fmt::Debug for SpoolSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolSource").finish_non_exhaustive()
    }
}

impl SpoolSource {
    /// Removes delivered and dead entries from disk (dead ones move to the dead table).
    fn forget(&self, gone: &[(u64, Option<&str>)]) -> Result<()> {
        let what = "recording deliveries in the spool";
        self.forget_inner(gone)
            .map_err(|e| store_error(ErrorKind::Unavailable, what, *e))
    }

    fn forget_inner(
        &self,
        gone: &[(u64, Option<&str>)],
    ) -> std::result::Result<(), Box<redb::Error>> {
        let tx = self.0.db.begin_write().map_err(|e| Box::new(e.into()))?;
        {
            let boxed = |e: redb::TableError| Box::new(redb::Error::from(e));
            let stored = |e: redb::StorageError| Box::new(redb::Error::from(e));
            let mut pending = tx.open_table(PENDING).map_err(boxed)?;
            let mut dead = tx.open_table(DEAD).map_err(boxed)?;
            let mut errors = tx.open_table(DEAD_ERRORS).map_err(boxed)?;
            for (seq, error) in gone {
                let removed = pending
                    .remove(*seq)
                    .map_err(stored)?
                    .map(|v| v.value().to_vec());
                if let (Some(error), Some(value)) = (error, removed) {
                    dead.insert(*seq, value.as_slice()).map_err(stored)?;
                    errors.insert(*seq, *error).map_err(stored)?;
                }
            }
        }
        tx.commit().map_err(|e| Box::new(e.into()))?;
        Ok(())
    }

    fn settle_sync(&self, settled: Vec<(i64, Settled)>) -> Result<()> {
        let store = &self.0;
        let gone: Vec<(u64, Option<&str>)> = settled
            .iter()
            .filter_map(|(seq, s)| match s {
                Settled::Delivered => Some((*seq as u64, None)),
                Settled::Dead { error } => Some((*seq as u64, Some(error.as_str()))),
                Settled::Retry { .. } => None,
            })
            .collect();
        // Whether the disk took it or not, what the broker confirmed is not published again
        // in this run (a failed write leaves it on disk: the next start delivers it once more).
        let written = if gone.is_empty() {
            Ok(())
        } else {
            self.forget(&gone)
        };
        let now = Instant::now();
        let mut state = store.state();
        // The broker answered again after being unreachable: entries that wait because it was
        // unreachable go next round instead of sitting out a backoff grown meanwhile.
        if settled.iter().any(|(_, s)| *s == Settled::Delivered) {
            for meta in state.pending.values_mut() {
                if meta.unreachable {
                    meta.available_at = None;
                    meta.unreachable = false;
                }
            }
        }
        for (seq, s) in &settled {
            let seq = *seq as u64;
            match s {
                Settled::Retry { after, kind, .. } => {
                    if let Some(meta) = state.pending.get_mut(&seq) {
                        meta.attempts = meta.attempts.saturating_add(1);
                        meta.available_at = Some(now + *after);
                        meta.unreachable =
                            matches!(kind, ErrorKind::Connect | ErrorKind::Unavailable);
                    }
                }
                Settled::Delivered | Settled::Dead { .. } => {
                    if let Some(meta) = state.pending.remove(&seq) {
                        store.release(meta.bytes);
                        if matches!(s, Settled::Dead { .. }) {
                            state.dead += 1;
                        }
                    }
                }
            }
        }
        written
    }

    fn claim_sync(&self, max: usize) -> Result<Vec<Entry>> {
        let store = &self.0;
        let now = Instant::now();
        let picked: Vec<(u64, u32)> = {
            let state = store.state();
            let mut blocked: HashSet<&str> = HashSet::new();
            let mut picked = Vec::new();
            for (seq, meta) in &state.pending {
                if picked.len() >= max {
                    break;
                }
                let waiting = meta.available_at.is_some_and(|t| t > now);
                match (&meta.key, waiting) {
                    (Some(k), true) => {
                        blocked.insert(k);
                    }
                    (None, true) => {}
                    (Some(k), false) if blocked.contains(&**k) => {}
                    _ => picked.push((*seq, meta.attempts)),
                }
            }
            picked
        };
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let what = "reading the spool";
        let tx = store
            .db
            .begin_read()
            .map_err(|e| store_error(ErrorKind::Unavailable, what, e))?;
        let table = tx
            .open_table(PENDING)
            .map_err(|e| store_error(ErrorKind::Unavailable, what, e))?;
        let mut entries = Vec::with_capacity(picked.len());
        for (seq, attempts) in picked {
            let Some(value) = table
                .get(seq)
                .map_err(|e| store_error(ErrorKind::Unavailable, what, e))?
            else {
                // Not on disk (cannot happen while the writer and the relay are the only
                // writers): forget it rather than wait for it forever.
                if let Some(meta) = store.state().pending.remove(&seq) {
                    store.release(meta.bytes);
                }
                continue;
            };
            let bytes = value.value();
            entries.push(Entry {
                seq: seq as i64,
                attempts,
                event: bytes
                    .get(8..)
                    .ok_or_else(|| Error::new(ErrorKind::Other, SPOOL, "a spool entry is torn"))
                    .and_then(Envelope::parse)
                    .and_then(Envelope::into_event),
            });
        }
        Ok(entries)
    }
}

impl Source for SpoolSource {
    type Claim = ();

    async fn claim(&self, max: usize) -> Result<((), Vec<Entry>)> {
        let this = self.clone();
        let entries = tokio::task::spawn_blocking(move || this.claim_sync(max))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Other, SPOOL, "spool read failed").with_source(e)
            })??;
        Ok(((), entries))
    }

    async fn settle(&self, (): (), settled: Vec<(i64, Settled)>) -> Result<()> {
        if settled.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.settle_sync(settled))
            .await
            .map_err(|e| Error::new(ErrorKind::Other, SPOOL, "spool write failed").with_source(e))?
    }

    async fn backlog(&self) -> Result<Backlog> {
        Ok(self.0.backlog())
    }
}

/// A publisher that spools: `publish` returns `Ok` once the event is durably in a local spool
/// (receipt position [`Position::Spooled`]), and a [`Relay`] delivers the spool through the
/// publisher it wraps, in the background, for as long as it takes.
///
/// # Behavior
/// - `Ok` means the event's group commit was synced to disk (one fsync shared by every
///   publish that arrived while the previous commit was syncing). It survives `kill -9` of
///   the process and the loss of power the way redb's commits do; on the next start the relay
///   delivers everything spooled and not yet confirmed by the broker.
/// - What the spool cannot know: an event is marked delivered right after the broker's `Ok`,
///   so a process killed between the two delivers that event again on the next start (same
///   event id; see the crate docs for what each broker does with the copy).
/// - Events are checked by what every backend needs (a topic, no empty header name); an event
///   the wrapped backend refuses later is dead-lettered in the spool ([`Backlog::dead`]).
/// - Bounded: a publish that would take the spool past `max_bytes` fails with `Unavailable`,
///   never a silent drop. A failed disk write fails with `Unavailable` (nothing spooled) or,
///   when the sync itself failed, `OutcomeUnknown` (it may be on disk and delivered).
/// - Per key, events are delivered in the order they were spooled.
/// - `close` refuses new publishes, lets spool writes in flight finish, keeps delivering for
///   `close_timeout` (less a short cut-off), then stops the relay and closes the wrapped
///   publisher; what is left stays spooled for the next start and is reported by
///   [`Spool::relay_report`] (it is not lost, so it is not counted as abandoned).
/// - Dropping an unclosed spool warns, and stops its relay and writer; nothing spooled is lost.
pub struct Spool {
    store: Arc<Store>,
    lifecycle: Lifecycle,
    writer: Arc<Mutex<Option<mpsc::UnboundedSender<Write>>>>,
    writer_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    relay: Arc<Relay<SpoolSource>>,
    publisher: Arc<dyn Publisher>,
    config: SpoolConfig,
    report: Arc<OnceLock<RelayReport>>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.config.dir)
            .field("publisher", &self.publisher.backend())
            .field("used_bytes", &self.store.used.load(Ordering::Relaxed))
            .field("closed", &self.lifecycle.is_closed())
            .finish()
    }
}

/// Puts a spool in `config.dir` in front of `publisher`: see [`Spool`]. What an earlier run
/// left spooled is delivered first.
///
/// # Errors
/// `Config` naming the field of `config` at fault; `Unavailable` when the spool cannot be
/// opened (another process holds it, the disk refuses).
pub async fn with_spool(publisher: Arc<dyn Publisher>, config: SpoolConfig) -> Result<Spool> {
    Spool::open(publisher, config).await
}

impl Spool {
    /// As [`with_spool`].
    ///
    /// # Errors
    /// As [`with_spool`].
    pub async fn open(publisher: Arc<dyn Publisher>, config: SpoolConfig) -> Result<Self> {
        config.validate()?;
        let dir = config.dir.clone();
        let max_bytes = config.max_bytes;
        let (store, next) = tokio::task::spawn_blocking(move || open_store(&dir, max_bytes))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Other, SPOOL, "opening the spool failed").with_source(e)
            })??;
        let store = Arc::new(store);
        let (tx, rx) = mpsc::unbounded_channel();
        let for_writer = store.clone();
        let thread = std::thread::Builder::new()
            .name("publisher-spool-writer".into())
            .spawn(move || writer(for_writer, rx, next))
            .map_err(|e| {
                Error::new(ErrorKind::Other, SPOOL, "starting the spool writer failed")
                    .with_source(e)
            })?;
        let relay = Relay::start(
            SpoolSource(store.clone()),
            publisher.clone(),
            config.relay.clone(),
        )?;
        Ok(Self {
            store,
            lifecycle: Lifecycle::new(SPOOL, config.close_timeout),
            writer: Arc::new(Mutex::new(Some(tx))),
            writer_thread: Arc::new(Mutex::new(Some(thread))),
            relay: Arc::new(relay),
            publisher,
            config,
            report: Arc::new(OnceLock::new()),
        })
    }

    /// What is spooled and not yet delivered, the oldest's age, and what was dead-lettered.
    pub fn backlog(&self) -> Backlog {
        self.store.backlog()
    }

    /// Bytes of events spooled and not yet delivered.
    pub fn used_bytes(&self) -> u64 {
        self.store.used.load(Ordering::Relaxed)
    }

    /// The relay's counts so far: delivered, retries, dead.
    pub fn relay_counts(&self) -> crate::RelayCounts {
        self.relay.counts()
    }

    /// Waits until nothing is pending (every spooled event delivered or dead-lettered) or
    /// `within` has passed; returns the backlog then.
    pub async fn wait_delivered(&self, within: Duration) -> Backlog {
        let until = Instant::now() + within;
        loop {
            let backlog = self.backlog();
            if backlog.pending == 0 || Instant::now() >= until {
                return backlog;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The relay's report from `close`: what it delivered and what stays spooled for the next
    /// start. `None` before `close` has finished.
    pub fn relay_report(&self) -> Option<&RelayReport> {
        self.report.get()
    }

    /// Reserves room for `bytes`, or says the spool is full.
    fn reserve(&self, bytes: u64) -> Result<()> {
        let max = self.store.max_bytes;
        self.store
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= max).then_some(used + bytes)
            })
            .map(|_| ())
            .map_err(|used| {
                Error::new(
                    ErrorKind::Unavailable,
                    SPOOL,
                    format!(
                        "spool full: {used} of {max} bytes (max_bytes) wait for the relay to \
                         deliver"
                    ),
                )
            })
    }

    /// Checks `event` and encodes it as a spool entry.
    fn entry(&self, event: &Event) -> Result<Item> {
        event.validate(SPOOL)?;
        let mut value = Vec::with_capacity(event.payload().len() + 256);
        value.extend_from_slice(&now_ms().to_le_bytes());
        envelope::encode(event, &mut value);
        if value.len() as u64 > self.store.max_bytes {
            return Err(Error::invalid_event(
                SPOOL,
                "payload",
                format!(
                    "the event takes {} bytes, more than the whole spool (max_bytes {})",
                    value.len(),
                    self.store.max_bytes
                ),
            ));
        }
        Ok(Item {
            key: event.key().map(Into::into),
            value,
        })
    }

    /// Spools `items` in one group commit; one sequence per item.
    async fn write(&self, items: Vec<Item>) -> Result<Vec<u64>> {
        let bytes = items.iter().map(|i| i.value.len() as u64).sum();
        self.reserve(bytes)?;
        let (reply, answer) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.send(Write { items, reply }).is_ok());
        match sent {
            Some(true) => {}
            None => {
                self.store.release(bytes);
                return Err(Error::closed(SPOOL));
            }
            Some(false) => {
                self.store.release(bytes);
                return Err(Error::new(
                    ErrorKind::Other,
                    SPOOL,
                    "the spool writer has stopped (see the logs): reopen the spool",
                ));
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::outcome_unknown(
                SPOOL,
                "the spool writer stopped during the write (it may be on disk)",
            ))
        })
    }
}

fn open_store(dir: &Path, max_bytes: u64) -> Result<(Store, u64)> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            SPOOL,
            "cannot create the spool directory (dir)",
        )
        .with_source(e)
    })?;
    let opening = "opening the spool (another process may hold it)";
    let db = redb::Database::create(dir.join("spool.redb"))
        .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
    let tx = db
        .begin_write()
        .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
    let mut state = State::default();
    let mut used = 0;
    let mut next = 0;
    {
        let pending = tx
            .open_table(PENDING)
            .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
        for row in pending
            .iter()
            .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?
        {
            let (seq, value) = row.map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
            let (seq, value) = (seq.value(), value.value());
            // The key, for ordering; an entry that does not parse is dead-lettered when the
            // relay reaches it.
            let key = value
                .get(8..)
                .and_then(|b| Envelope::parse(b).ok())
                .and_then(|e| e.into_event().ok())
                .and_then(|e| e.key().map(Into::into));
            let spooled_at_ms = value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            used += value.len() as u64;
            state.pending.insert(
                seq,
                Meta {
                    key,
                    bytes: value.len() as u64,
                    spooled_at_ms,
                    attempts: 0,
                    available_at: None,
                    unreachable: false,
                },
            );
            next = next.max(seq + 1);
        }
        let dead = tx
            .open_table(DEAD)
            .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
        state.dead = dead
            .len()
            .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
        if let Some(last) = dead
            .last()
            .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?
        {
            next = next.max(last.0.value() + 1);
        }
        tx.open_table(DEAD_ERRORS)
            .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
    }
    tx.commit()
        .map_err(|e| store_error(ErrorKind::Unavailable, opening, e))?;
    if used > 0 {
        tracing::info!(
            spool = %dir.display(),
            pending = state.pending.len(),
            "spool opened with events from an earlier run: delivering them first"
        );
    }
    Ok((
        Store {
            db,
            state: Mutex::new(state),
            used: AtomicU64::new(used),
            max_bytes,
        },
        next,
    ))
}

#[async_trait]
impl Publisher for Spool {
    fn backend(&self) -> &'static str {
        SPOOL
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let sequence = self
            .lifecycle
            .run(self.config.publish_timeout, "spool write", async {
                let item = self.entry(&event)?;
                self.write(vec![item])
                    .await?
                    .first()
                    .copied()
                    .ok_or_else(|| {
                        Error::outcome_unknown(SPOOL, "the spool writer returned no sequence")
                    })
            })
            .await?;
        Ok(Receipt::from_event(event, Position::Spooled { sequence }))
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let mut good = Vec::with_capacity(events.len());
        let checks: Vec<Result<()>> = events
            .iter()
            .map(|e| self.entry(e).map(|item| good.push(item)))
            .collect();
        let written: Result<Vec<u64>> = if good.is_empty() {
            // Still refused once closed, like any publish.
            self.lifecycle.enter().map(|_| Vec::new())
        } else {
            self.lifecycle
                .run(self.config.publish_timeout, "spool write", self.write(good))
                .await
        };
        let mut sequences = match &written {
            Ok(seqs) => seqs.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        BatchOutcome::new(
            events
                .into_iter()
                .zip(checks)
                .map(|(event, check)| {
                    check?;
                    match &written {
                        Ok(_) => match sequences.next() {
                            Some(sequence) => {
                                Ok(Receipt::from_event(event, Position::Spooled { sequence }))
                            }
                            None => Err(Error::outcome_unknown(
                                SPOOL,
                                "the spool writer returned no sequence for this event",
                            )),
                        },
                        Err(e) => Err(e.clone()),
                    }
                })
                .collect(),
        )
    }

    async fn health(&self) -> Health {
        let mut health = self.publisher.health().await;
        let used = self.store.used.load(Ordering::Relaxed);
        let backlog = self.backlog();
        health.detail = format!(
            "{}; spool: {} pending ({used} of {} bytes), {} dead",
            health.detail, backlog.pending, self.store.max_bytes, backlog.dead
        );
        if used >= self.store.max_bytes && health.status == HealthStatus::Healthy {
            health.status = HealthStatus::Degraded;
        }
        health
    }

    async fn close(&self) -> Result<CloseReport> {
        let store = self.store.clone();
        let writer = self.writer.clone();
        let writer_thread = self.writer_thread.clone();
        let relay = self.relay.clone();
        let publisher = self.publisher.clone();
        let report = self.report.clone();
        let cut_off = self.config.relay.close_timeout;
        self.lifecycle
            .close(move |teardown| async move {
                // Spool writes in flight are done: stop the writer and wait for it (its last
                // group commit), bounded.
                writer.lock().unwrap_or_else(|p| p.into_inner()).take();
                let thread = writer_thread
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(thread) = thread {
                    let joined = tokio::time::timeout_at(
                        teardown.deadline,
                        tokio::task::spawn_blocking(move || thread.join()),
                    )
                    .await;
                    if !matches!(joined, Ok(Ok(Ok(())))) {
                        tracing::warn!(spool = SPOOL, "the spool writer did not stop in time");
                    }
                }
                // Deliver what is spooled while the deadline allows, less the relay's cut-off.
                let until = teardown
                    .deadline
                    .checked_sub(cut_off)
                    .unwrap_or(teardown.deadline);
                while Instant::now() < until && !store.state().pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let relay_report = relay.close().await;
                if let Some(left) = relay_report.left
                    && left.pending > 0
                {
                    tracing::info!(
                        spool = SPOOL,
                        pending = left.pending,
                        "events stay spooled for the next start"
                    );
                }
                let _ = report.set(relay_report);
                let closed = tokio::time::timeout_at(
                    teardown.deadline.max(Instant::now()) + Duration::from_millis(500),
                    publisher.close(),
                )
                .await;
                match closed {
                    Ok(Ok(_)) => Ok(0),
                    Err(_) => {
                        tracing::warn!(
                            spool = SPOOL,
                            "the wrapped publisher did not close within the spool's close timeout"
                        );
                        Ok(0)
                    }
                    Ok(Err(e)) => Err(e),
                }
            })
            .await
    }

    fn is_closed(&self) -> bool {
        self.lifecycle.is_closed()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // The lifecycle and the relay warn; the writer stops once its channel is gone.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
