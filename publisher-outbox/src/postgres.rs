//! [`PgOutbox`]: the transactional outbox in the application's own PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use publisher_core::envelope::{self, Envelope};
use publisher_core::{Error, ErrorKind, Event, Result};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::NAME;
use crate::relay::{Backlog, Entry, Settled, Source};

/// The default table name.
pub const DEFAULT_TABLE: &str = "publisher_outbox";

/// The statements of one table, formatted once.
#[derive(Debug)]
struct Sql {
    migration: String,
    insert: String,
    claim: String,
    delete: String,
    retry: String,
    dead: String,
    backlog: String,
}

impl Sql {
    fn new(t: &str) -> Self {
        // Index names take no schema; the lock class keeps our advisory locks apart from the
        // application's and from other outbox tables'.
        let base = t.rsplit('.').next().unwrap_or(t);
        let class = lock_class(t);
        Self {
            migration: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     UUID        NOT NULL,
    topic        TEXT        NOT NULL,
    key          TEXT,
    envelope     BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    dead_at      TIMESTAMPTZ,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS {base}_pending ON {t} (seq) WHERE dead_at IS NULL;
CREATE INDEX IF NOT EXISTS {base}_key ON {t} (key, seq) WHERE dead_at IS NULL AND key IS NOT NULL;"
            ),
            insert: format!(
                "INSERT INTO {t} (event_id, topic, key, envelope) VALUES ($1, $2, $3, $4)"
            ),
            // The oldest available entries no other relay holds, of keys free to go: no earlier
            // pending entry of the key waits for its retry, and no other relay holds the key
            // (a transaction-scoped advisory lock per key, taken here and released with the
            // claim). Keys are filtered before the limit, so a key that waits never starves
            // the others.
            claim: format!(
                "SELECT o.seq, o.attempts, o.envelope FROM {t} o
WHERE o.dead_at IS NULL AND o.available_at <= clock_timestamp()
  AND (o.key IS NULL OR (
    NOT EXISTS (
      SELECT 1 FROM {t} p
      WHERE p.key = o.key AND p.seq < o.seq AND p.dead_at IS NULL
        AND p.available_at > clock_timestamp()
    )
    AND pg_try_advisory_xact_lock({class}, hashtext(o.key))
  ))
ORDER BY o.seq
LIMIT $1
FOR UPDATE SKIP LOCKED"
            ),
            delete: format!("DELETE FROM {t} WHERE seq = ANY($1)"),
            retry: format!(
                "UPDATE {t} SET attempts = attempts + 1,
    available_at = clock_timestamp() + make_interval(secs => u.secs), last_error = u.error
FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS u(seq, secs, error)
WHERE {t}.seq = u.seq"
            ),
            dead: format!(
                "UPDATE {t} SET attempts = attempts + 1, dead_at = clock_timestamp(), last_error = u.error
FROM unnest($1::bigint[], $2::text[]) AS u(seq, error)
WHERE {t}.seq = u.seq"
            ),
            backlog: format!(
                "SELECT count(*) FILTER (WHERE dead_at IS NULL),
    count(*) FILTER (WHERE dead_at IS NOT NULL),
    EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE dead_at IS NULL))::float8
FROM {t}"
            ),
        }
    }
}

/// A transactional outbox table in PostgreSQL.
///
/// [`PgOutbox::enqueue`] writes an event in the caller's own transaction, so it is published
/// if and only if that transaction commits; a [`Relay`](crate::Relay) reading the table
/// publishes it. Any number of relays, in any number of processes, may read one table.
///
/// # Behavior
/// - Entries are claimed with `FOR UPDATE SKIP LOCKED` inside a transaction that stays open
///   while the relay publishes them and commits their outcomes: a relay that dies releases its
///   entries (its transaction rolls back) for the others. What the broker confirmed before such
///   a death is published again (see the crate docs: the one source of duplicates).
/// - A key's entries are handed out only to one relay at a time (an advisory lock per key,
///   held by the claim) and only when no earlier entry of the key waits for its retry, so one
///   key's events reach the broker in the order of their sequence numbers among the entries
///   committed when the relay claims, however many relays run: transactions of one key that
///   commit one after the other are published in that order (two that overlap have no order
///   of their own).
/// - Delivered entries are deleted; dead-lettered ones stay, with `dead_at` and `last_error`.
///
/// # Schema
/// [`PgOutbox::migrate`] creates the table (idempotent); [`PgOutbox::migration`] is the same
/// SQL for applications that run their own migrations.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
    table: Arc<str>,
    sql: Arc<Sql>,
}

impl PgOutbox {
    /// The outbox in table [`DEFAULT_TABLE`] of `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: DEFAULT_TABLE.into(),
            sql: Arc::new(Sql::new(DEFAULT_TABLE)),
        }
    }

    /// Uses table `name` instead (`[a-z_][a-z0-9_]*`, at most 50 bytes, optionally one
    /// `schema.` before it).
    ///
    /// # Errors
    /// `Config` naming `table` when the name is not of that form.
    pub fn with_table(mut self, name: &str) -> Result<Self> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 50
                && s.bytes().enumerate().all(|(i, b)| {
                    b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit())
                })
        };
        let ok = match name.split_once('.') {
            Some((schema, table)) => ident(schema) && ident(table),
            None => ident(name),
        };
        if !ok {
            return Err(Error::config(
                NAME,
                "table",
                "table names are [a-z_][a-z0-9_]* (at most 50 bytes), optionally schema-qualified",
            ));
        }
        self.sql = Arc::new(Sql::new(name));
        self.table = name.into();
        Ok(self)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The pool the outbox uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The SQL that creates the table and its indexes (idempotent).
    pub fn migration(&self) -> &str {
        &self.sql.migration
    }

    /// Creates the table and its indexes if they do not exist.
    ///
    /// # Errors
    /// The database's, as `Connect` or `Other`.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql(&self.sql.migration)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("creating the outbox table", e))?;
        Ok(())
    }

    /// Writes `event` into the outbox within `tx`: it is published if and only if `tx`
    /// commits.
    ///
    /// # Errors
    /// `InvalidEvent` naming the field for an event no backend can carry (an empty topic, for
    /// instance); the database's error, as `Connect` or `Other`, when the insert fails (the
    /// transaction is then the caller's to roll back).
    pub async fn enqueue(&self, tx: &mut Transaction<'_, Postgres>, event: &Event) -> Result<()> {
        event.validate(NAME)?;
        // PostgreSQL text cannot hold NUL: say so by field rather than fail the transaction.
        if event.topic().contains('\0') {
            return Err(Error::invalid_event(
                NAME,
                "topic",
                "topic must not contain NUL",
            ));
        }
        if event.key().is_some_and(|k| k.contains('\0')) {
            return Err(Error::invalid_event(
                NAME,
                "key",
                "key must not contain NUL",
            ));
        }
        let mut stored = Vec::with_capacity(event.payload().len() + 256);
        envelope::encode(event, &mut stored);
        sqlx::query(&self.sql.insert)
            .bind(event.id())
            .bind(event.topic())
            .bind(event.key())
            .bind(stored)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_error("writing to the outbox", e))?;
        Ok(())
    }
}

impl Source for PgOutbox {
    type Claim = Transaction<'static, Postgres>;

    async fn claim(&self, max: usize) -> Result<(Self::Claim, Vec<Entry>)> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db_error("starting a claim", e))?;
        let rows = sqlx::query(&self.sql.claim)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error("claiming entries", e))?;
        let entries = rows.iter().map(entry).collect::<Result<_>>()?;
        Ok((tx, entries))
    }

    async fn settle(&self, mut tx: Self::Claim, settled: Vec<(i64, Settled)>) -> Result<()> {
        let (mut delivered, mut retry, mut dead) = (Vec::new(), Vec::new(), Vec::new());
        for (seq, s) in settled {
            match s {
                Settled::Delivered => delivered.push(seq),
                Settled::Retry { after, error, .. } => retry.push((seq, after, error)),
                Settled::Dead { error } => dead.push((seq, error)),
            }
        }
        if !delivered.is_empty() {
            sqlx::query(&self.sql.delete)
                .bind(&delivered)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("marking entries delivered", e))?;
        }
        if !retry.is_empty() {
            let (seqs, rest): (Vec<i64>, Vec<(Duration, String)>) =
                retry.into_iter().map(|(s, a, e)| (s, (a, e))).unzip();
            let (secs, errors): (Vec<f64>, Vec<String>) =
                rest.into_iter().map(|(a, e)| (a.as_secs_f64(), e)).unzip();
            sqlx::query(&self.sql.retry)
                .bind(&seqs)
                .bind(&secs)
                .bind(&errors)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("scheduling retries", e))?;
        }
        if !dead.is_empty() {
            let (seqs, errors): (Vec<i64>, Vec<String>) = dead.into_iter().unzip();
            sqlx::query(&self.sql.dead)
                .bind(&seqs)
                .bind(&errors)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("dead-lettering entries", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing a claim", e))
    }

    async fn backlog(&self) -> Result<Backlog> {
        let row = sqlx::query(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("reading the backlog", e))?;
        let count = |i: usize| -> Result<u64> {
            let n: i64 = row
                .try_get(i)
                .map_err(|e| db_error("reading the backlog", e))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let oldest: Option<f64> = row
            .try_get(2)
            .map_err(|e| db_error("reading the backlog", e))?;
        Ok(Backlog {
            pending: count(0)?,
            dead: count(1)?,
            oldest_age: oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }
}

/// A claimed row as an entry; an envelope that does not read back is the entry's error (it is
/// dead-lettered), not the claim's.
fn entry(row: &PgRow) -> Result<Entry> {
    let read = |e| db_error("reading a claimed entry", e);
    let seq: i64 = row.try_get(0).map_err(read)?;
    let attempts: i32 = row.try_get(1).map_err(read)?;
    let stored: &[u8] = row.try_get(2).map_err(read)?;
    Ok(Entry {
        seq,
        attempts: u32::try_from(attempts).unwrap_or(0),
        event: Envelope::parse(stored).and_then(Envelope::into_event),
    })
}

/// A database error: `Connect` (retryable) when the database could not be reached, `Other`
/// otherwise. The message names what we were doing; the database's own message is the source.
fn db_error(what: &str, e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Connect,
        sqlx::Error::PoolClosed => ErrorKind::Closed,
        // Connection exceptions (08), serialization failures and deadlocks (40), too many
        // connections or out of resources (53), an administrator's shutdown (57P0x): the same
        // statement may succeed later.
        sqlx::Error::Database(d)
            if d.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("40")
                    || c.starts_with("53")
                    || c.starts_with("57P0")
            }) =>
        {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Other,
    };
    Error::new(kind, NAME, format!("outbox database: {what} failed")).with_source(e)
}

/// The advisory lock class of table `t`: a stable 31-bit hash of its name (FNV-1a), so that
/// the outbox's per-key locks do not meet another table's or the application's own.
fn lock_class(t: &str) -> i32 {
    let hash = t.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::try_from(hash >> 1).unwrap_or(0)
}
