//! The outbox against the local PostgreSQL, publishing to Redis (read back with redis-rs) and
//! to the in-memory publisher (for injected faults).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use publisher_core::testing::{Broker, find_broker, free_port, skip, unique_name};
use publisher_core::{ErrorKind, Event, MemoryPublisher, Publisher, Uuid};
use publisher_outbox::sqlx::postgres::{PgPool, PgPoolOptions};
use publisher_outbox::{PgOutbox, Relay, RelayConfig, Source};

/// The database, or `None` (said once; a failure under CI).
fn database() -> Option<String> {
    find_broker(Broker::Postgres)
        .inspect_err(|why| skip("outbox", Broker::Postgres.var(), why))
        .ok()
}

fn redis() -> Option<String> {
    find_broker(Broker::Redis)
        .inspect_err(|why| skip("outbox", Broker::Redis.var(), why))
        .ok()
}

/// A fresh outbox table of its own, dropped by [`Table::drop_table`].
struct Table {
    pool: PgPool,
    outbox: PgOutbox,
}

impl Table {
    async fn new(url: &str) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .expect("connect to PostgreSQL");
        let name = format!("outbox_{}", Uuid::now_v7().simple());
        let outbox = PgOutbox::new(pool.clone()).with_table(&name).unwrap();
        outbox.migrate().await.unwrap();
        // Idempotent.
        outbox.migrate().await.unwrap();
        Self { pool, outbox }
    }

    async fn drop_table(self) {
        publisher_outbox::sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.outbox.table()))
            .execute(&self.pool)
            .await
            .unwrap();
        self.pool.close().await;
    }

    /// Writes `event` in a transaction of its own, committed or rolled back.
    async fn write(&self, event: &Event, commit: bool) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue(&mut tx, event).await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
    }
}

fn fast() -> RelayConfig {
    RelayConfig {
        idle_poll: Duration::from_millis(20),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_back(redis_url: &str, stream: &str) -> Vec<Event> {
    let mut conn = publisher_redis::testing::connect(redis_url).await.unwrap();
    publisher_redis::testing::xrange(&mut conn, stream)
        .await
        .unwrap()
}

async fn delete_stream(redis_url: &str, stream: &str) {
    let mut conn = publisher_redis::testing::connect(redis_url).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_if_and_only_if_the_transaction_commits() {
    let (Some(db), Some(redis_url)) = (database(), redis()) else {
        return;
    };
    let table = Table::new(&db).await;
    let stream = unique_name("outbox-commit");
    let mut committed = Vec::new();
    let mut rolled_back = Vec::new();
    for i in 0..60 {
        let event = Event::text(&stream, format!("event {i}")).with_key(format!("k{}", i % 4));
        let commit = i % 3 != 0;
        table.write(&event, commit).await;
        if commit {
            committed.push(event.id());
        } else {
            rolled_back.push(event.id());
        }
    }
    let backlog = table.outbox.backlog().await.unwrap();
    assert_eq!(backlog.pending, 40);
    assert!(backlog.oldest_age.is_some());

    let publisher: Arc<dyn Publisher> = publisher::from_url_arc(&redis_url).await.unwrap();
    let relay = Relay::start(table.outbox.clone(), publisher.clone(), fast()).unwrap();
    until(
        "the backlog to empty",
        Duration::from_secs(20),
        async || relay.backlog().await.unwrap().pending == 0,
    )
    .await;
    let report = relay.close().await;
    assert_eq!(report.counts.delivered, 40);
    assert_eq!(report.left.unwrap().pending, 0);
    assert!(!report.cut_off);
    // Idempotent, and the same report.
    assert_eq!(relay.close().await, report);
    publisher.close().await.unwrap();

    let found = read_back(&redis_url, &stream).await;
    let ids: Vec<Uuid> = found.iter().map(Event::id).collect();
    assert_eq!(ids.len(), 40, "each committed event once");
    assert_eq!(
        ids.iter().copied().collect::<HashSet<_>>(),
        committed.iter().copied().collect::<HashSet<_>>()
    );
    assert!(rolled_back.iter().all(|id| !ids.contains(id)));
    // Per key, in commit order.
    for key in ["k0", "k1", "k2", "k3"] {
        let sent: Vec<Uuid> = committed
            .iter()
            .copied()
            .filter(|id| found.iter().any(|e| e.id() == *id && e.key() == Some(key)))
            .collect();
        let got: Vec<Uuid> = found
            .iter()
            .filter(|e| e.key() == Some(key))
            .map(Event::id)
            .collect();
        assert_eq!(got, sent, "key {key} out of order");
    }
    // The whole event survives the table: payload, key, id.
    assert!(
        found
            .iter()
            .all(|e| e.payload_str().unwrap().starts_with("event "))
    );

    delete_stream(&redis_url, &stream).await;
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_dead_lettered_and_its_key_moves_on_while_a_failing_one_waits() {
    let Some(db) = database() else { return };
    let table = Table::new(&db).await;
    let memory = Arc::new(MemoryPublisher::builder().build().unwrap());
    let topic = unique_name("outbox-dead");
    // Five events of key a, five of key b.
    let events: Vec<Event> = (0..10)
        .map(|i| Event::text(&topic, format!("{i}")).with_key(if i < 5 { "a" } else { "b" }))
        .collect();
    for e in &events {
        table.write(e, true).await;
    }
    // The first publish is refused for good (a nack), the next two fail retryably.
    let publisher: Arc<dyn Publisher> = memory.clone();
    memory.get_ref().fail_next(1, ErrorKind::Rejected);
    memory.get_ref().fail_next(2, ErrorKind::Unavailable);
    let relay = Relay::start(
        table.outbox.clone(),
        publisher.clone(),
        RelayConfig {
            concurrency: 1,
            ..fast()
        },
    )
    .unwrap();
    until("every entry settled", Duration::from_secs(20), async || {
        relay.backlog().await.unwrap().pending == 0
    })
    .await;
    let report = relay.close().await;
    assert_eq!(report.counts.dead, 1);
    assert_eq!(report.counts.retries, 2);
    assert_eq!(report.counts.delivered, 9);
    assert_eq!(report.left.unwrap().dead, 1);
    let stored = memory.get_ref().store().events_for(&topic);
    assert_eq!(stored.len(), 9);
    // Each key's survivors in order.
    for key in ["a", "b"] {
        let want: Vec<Uuid> = events
            .iter()
            .filter(|e| e.key() == Some(key) && stored.iter().any(|s| s.id() == e.id()))
            .map(Event::id)
            .collect();
        let got: Vec<Uuid> = stored
            .iter()
            .filter(|e| e.key() == Some(key))
            .map(Event::id)
            .collect();
        assert_eq!(got, want);
    }
    // The dead entry is kept, with its error and without its payload in the error.
    let (error,): (String,) = publisher_outbox::sqlx::query_as(&format!(
        "SELECT last_error FROM {} WHERE dead_at IS NOT NULL",
        table.outbox.table()
    ))
    .fetch_one(&table.pool)
    .await
    .unwrap();
    assert!(error.starts_with("rejected"), "{error}");
    publisher.close().await.unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_is_waited_out_and_everything_is_delivered_when_it_returns() {
    let (Some(db), Some(_)) = (database(), redis()) else {
        return;
    };
    let table = Table::new(&db).await;
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let stream = unique_name("outbox-down");
    let events: Vec<Event> = (0..200)
        .map(|i| Event::text(&stream, format!("{i}")).with_key(format!("k{}", i % 5)))
        .collect();
    for e in &events {
        table.write(e, true).await;
    }
    let publisher: Arc<dyn Publisher> = publisher::from_url_arc(&url).await.unwrap();
    let relay = Relay::start(table.outbox.clone(), publisher.clone(), fast()).unwrap();
    until(
        "retries while the broker is down",
        Duration::from_secs(20),
        async || relay.counts().retries >= 10,
    )
    .await;
    let backlog = relay.backlog().await.unwrap();
    assert_eq!(
        backlog.pending, 200,
        "nothing lost, nothing marked delivered"
    );
    assert!(backlog.oldest_age.unwrap() > Duration::from_millis(100));
    assert_eq!(relay.counts().delivered, 0);

    let mut server = start_redis(port).await;
    until(
        "the backlog to empty",
        Duration::from_secs(60),
        async || relay.backlog().await.unwrap().pending == 0,
    )
    .await;
    let report = relay.close().await;
    publisher.close().await.unwrap();
    let found = read_back(&url, &stream).await;
    let ids: HashSet<Uuid> = found.iter().map(Event::id).collect();
    assert!(
        events.iter().all(|e| ids.contains(&e.id())),
        "every event at the broker"
    );
    assert_eq!(report.counts.delivered, 200);
    for k in 0..5 {
        let key = format!("k{k}");
        let want: Vec<Uuid> = events
            .iter()
            .filter(|e| e.key() == Some(&key))
            .map(Event::id)
            .collect();
        let mut seen = HashSet::new();
        let got: Vec<Uuid> = found
            .iter()
            .filter(|e| e.key() == Some(&key))
            .map(Event::id)
            .filter(|id| seen.insert(*id))
            .collect();
        assert_eq!(got, want, "key {key} out of order");
    }
    let _ = server.kill();
    let _ = server.wait();
    table.drop_table().await;
}

/// A `redis-server` of the test's own on `port`, nothing kept on disk.
async fn start_redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let url = format!("redis://127.0.0.1:{port}");
    until(
        "redis-server to start",
        Duration::from_secs(10),
        async || publisher_redis::testing::connect(&url).await.is_ok(),
    )
    .await;
    child
}

/// A `publisher-relay` process on `table`, publishing to `redis_url`.
fn relay_process(db: &str, table: &str, redis_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_publisher-relay"))
        .args(["--table", table, "--batch", "100"])
        .env("DATABASE_URL", db)
        .env("PUBLISHER_URL", redis_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start publisher-relay")
}

/// The acceptance run: 10,000 transactions, a third rolled back, two relay processes, one
/// killed (SIGKILL) mid-run: every committed event delivered, no rolled-back one, each key in
/// order, duplicates counted and explained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_transactions_two_relays_one_killed() {
    let (Some(db), Some(redis_url)) = (database(), redis()) else {
        return;
    };
    let table = Arc::new(Table::new(&db).await);
    let stream = unique_name("outbox-acceptance");
    let mut first = relay_process(&db, table.outbox.table(), &redis_url);
    let second = relay_process(&db, table.outbox.table(), &redis_url);

    // The application: 16 writers, 10,000 transactions in all, every third rolled back.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let table = table.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut rolled_back = Vec::new();
                for i in (w..10_000).step_by(16) {
                    let event =
                        Event::text(&stream, format!("{i}")).with_key(format!("key-{}", i % 50));
                    let commit = i % 3 != 0;
                    table.write(&event, commit).await;
                    if commit {
                        committed.push((i, event.id()));
                    } else {
                        rolled_back.push(event.id());
                    }
                }
                (committed, rolled_back)
            })
        })
        .collect();

    // Kill one relay once it has delivered a part.
    until(
        "the relays to deliver 2,000 events",
        Duration::from_secs(120),
        async || stream_len(&redis_url, &stream).await >= 2_000,
    )
    .await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut committed: Vec<(usize, Uuid)> = Vec::new();
    let mut rolled_back: HashSet<Uuid> = HashSet::new();
    for w in writers {
        let (c, r) = w.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    committed.sort_unstable();
    until(
        "the surviving relay to empty the outbox",
        Duration::from_secs(180),
        async || table.outbox.backlog().await.unwrap().pending == 0,
    )
    .await;
    // The survivor closes on SIGTERM and reports.
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let found = read_back(&redis_url, &stream).await;
    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    for e in &found {
        *copies.entry(e.id()).or_default() += 1;
    }
    let lost = committed
        .iter()
        .filter(|(_, id)| !copies.contains_key(id))
        .count();
    let phantoms = found
        .iter()
        .filter(|e| rolled_back.contains(&e.id()))
        .count();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    // Per key, the first copy of each event in commit order (a writer's transactions of one
    // key commit one after the other; writers interleave, so order by the number each event
    // carries within one writer's keys is what is promised: check per writer and key).
    let mut out_of_order = 0;
    let index: HashMap<Uuid, usize> = committed.iter().map(|(i, id)| (*id, *i)).collect();
    let mut last: HashMap<(usize, String), usize> = HashMap::new();
    let mut seen = HashSet::new();
    for e in &found {
        if !seen.insert(e.id()) {
            continue;
        }
        let Some(&i) = index.get(&e.id()) else {
            continue;
        };
        let slot = (i % 16, e.key().unwrap_or_default().to_owned());
        if let Some(&prev) = last.get(&slot)
            && prev > i
        {
            out_of_order += 1;
        }
        last.insert(slot, i);
    }
    println!(
        "outbox acceptance: transactions 10000, committed {}, rolled back {}, found {} \
         (distinct {}), lost {lost}, phantoms {phantoms}, duplicates {duplicates} (the killed \
         relay's claim of at most 100 entries), out of order {out_of_order}",
        committed.len(),
        rolled_back.len(),
        found.len(),
        copies.len(),
    );
    assert_eq!(lost, 0);
    assert_eq!(phantoms, 0);
    assert_eq!(out_of_order, 0);
    assert!(
        duplicates <= 100,
        "duplicates {duplicates} beyond one claim"
    );
    delete_stream(&redis_url, &stream).await;
    Arc::into_inner(table).unwrap().drop_table().await;
}

async fn stream_len(redis_url: &str, stream: &str) -> usize {
    let mut conn = publisher_redis::testing::connect(redis_url).await.unwrap();
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_bounded_when_the_broker_hangs_and_keeps_the_entries() {
    let Some(db) = database() else { return };
    let table = Table::new(&db).await;
    let topic = unique_name("outbox-hang");
    for i in 0..5 {
        table
            .write(&Event::text(&topic, format!("{i}")), true)
            .await;
    }
    let memory = Arc::new(MemoryPublisher::builder().build().unwrap());
    // Every publish takes far longer than the relay's close timeout.
    memory.get_ref().set_delay(Duration::from_secs(3));
    let publisher: Arc<dyn Publisher> = memory.clone();
    let relay = Relay::start(
        table.outbox.clone(),
        publisher.clone(),
        RelayConfig {
            close_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(relay.close(), relay.close());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a, b);
    assert!(a.cut_off);
    assert_eq!(a.counts.delivered, 0);
    // The cut claim rolled back: every entry is still there for the next relay.
    assert_eq!(a.left.unwrap().pending, 5);
    memory.get_ref().set_delay(Duration::ZERO);
    let again = Relay::start(table.outbox.clone(), publisher.clone(), fast()).unwrap();
    until(
        "the next relay to deliver",
        Duration::from_secs(20),
        async || again.backlog().await.unwrap().pending == 0,
    )
    .await;
    assert_eq!(again.close().await.counts.delivered, 5);
    publisher.close().await.unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_naming_the_field() {
    let Some(db) = database() else { return };
    let table = Table::new(&db).await;
    for bad in [
        "",
        "Upper",
        "1abc",
        "a;drop table x",
        "a.b.c",
        &"x".repeat(51),
    ] {
        let e = PgOutbox::new(table.pool.clone())
            .with_table(bad)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        assert_eq!(e.field(), Some("table"));
    }
    // An event no backend can carry is refused before anything is written.
    let mut tx = table.pool.begin().await.unwrap();
    let e = table
        .outbox
        .enqueue(&mut tx, &Event::text("", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidEvent);
    assert_eq!(e.field(), Some("topic"));
    tx.commit().await.unwrap();
    assert_eq!(table.outbox.backlog().await.unwrap().pending, 0);
    table.drop_table().await;
}

/// A key whose first entry waits for its retry holds back only its own key: entries of other
/// keys behind a batch's worth of it are still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_key_does_not_starve_the_others() {
    let Some(db) = database() else { return };
    let table = Table::new(&db).await;
    let topic = unique_name("outbox-starve");
    let a: Vec<Event> = (0..10)
        .map(|i| Event::text(&topic, format!("a{i}")).with_key("a"))
        .collect();
    let b: Vec<Event> = (0..5)
        .map(|i| Event::text(&topic, format!("b{i}")).with_key("b"))
        .collect();
    for e in a.iter().chain(&b) {
        table.write(e, true).await;
    }
    let memory = Arc::new(MemoryPublisher::builder().build().unwrap());
    // a0's first try fails; its retry comes only after a long wait.
    memory.get_ref().fail_next(1, ErrorKind::Unavailable);
    let publisher: Arc<dyn Publisher> = memory.clone();
    let relay = Relay::start(
        table.outbox.clone(),
        publisher.clone(),
        RelayConfig {
            batch: 4,
            min_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            ..fast()
        },
    )
    .unwrap();
    until("key b delivered", Duration::from_secs(10), async || {
        memory.get_ref().store().events_for(&topic).len() == 5
    })
    .await;
    let stored = memory.get_ref().store().events_for(&topic);
    let ids: Vec<Uuid> = stored.iter().map(Event::id).collect();
    assert_eq!(
        ids,
        b.iter().map(Event::id).collect::<Vec<_>>(),
        "only b, in order"
    );
    assert_eq!(relay.backlog().await.unwrap().pending, 10, "a waits, whole");
    relay.close().await;
    publisher.close().await.unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_qualified_table_and_nul_bytes() {
    let Some(db) = database() else { return };
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db)
        .await
        .unwrap();
    let schema = format!("outbox_schema_{}", Uuid::now_v7().simple());
    publisher_outbox::sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let outbox = PgOutbox::new(pool.clone())
        .with_table(&format!("{schema}.events"))
        .unwrap();
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, &Event::text("t", "x").with_key("k"))
        .await
        .unwrap();
    let e = outbox
        .enqueue(&mut tx, &Event::text("t", "x").with_key("k\0"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidEvent, Some("key"))
    );
    // The refusal left the transaction usable.
    tx.commit().await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap().pending, 1);
    publisher_outbox::sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}
