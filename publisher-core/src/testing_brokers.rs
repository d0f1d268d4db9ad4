//! Where a test's broker is: one rule for every test of the workspace (the backend crates'
//! own tests, the cross-backend suite, evpub's tests and the benchmarks).
//!
//! 1. The backend's environment variable when set: it must answer (a panic naming it within
//!    3 s otherwise, never minutes of timeouts).
//! 2. The local default port, when it answers.
//! 3. With the feature `testcontainers`, where a Docker engine answers: a container of the
//!    broker's image, named `publisher-test-<broker>` and reused by later runs (remove it with
//!    `docker rm -f publisher-test-redis publisher-test-rabbitmq publisher-test-kafka
//!    publisher-test-nats publisher-test-postgresql`).
//! 4. Kafka only, outside CI: librdkafka's in-process mock cluster (`publisher-kafka`'s
//!    `testing::EmbeddedKafka`).
//! 5. Otherwise the backend's tests are skipped with one line on the terminal naming the
//!    variable to set, and the run ends with the list of what it skipped ([`report_skips`]);
//!    under `CI=true` that is a failure.

use std::sync::OnceLock;
use std::time::Duration;

/// A broker the workspace's tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    /// Redis, `redis://127.0.0.1:6379` by default.
    Redis,
    /// RabbitMQ, `amqp://guest:guest@127.0.0.1:5672/%2f` by default.
    RabbitMq,
    /// Kafka, `127.0.0.1:9092` by default.
    Kafka,
    /// NATS with JetStream, `nats://127.0.0.1:4222` by default.
    Nats,
    /// PostgreSQL (the outbox's store), `postgres://postgres@127.0.0.1:5432/postgres` by
    /// default.
    Postgres,
}

impl Broker {
    const ALL: [Broker; 5] = [
        Broker::Redis,
        Broker::RabbitMq,
        Broker::Kafka,
        Broker::Nats,
        Broker::Postgres,
    ];

    /// The broker's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Broker::Redis => "Redis",
            Broker::RabbitMq => "RabbitMQ",
            Broker::Kafka => "Kafka",
            Broker::Nats => "NATS",
            Broker::Postgres => "PostgreSQL",
        }
    }

    /// The environment variable that points the tests at a running broker.
    pub fn var(self) -> &'static str {
        match self {
            Broker::Redis => "PUBLISHER_TEST_REDIS_URL",
            Broker::RabbitMq => "PUBLISHER_TEST_AMQP_URL",
            Broker::Kafka => "PUBLISHER_TEST_KAFKA_BROKERS",
            Broker::Nats => "PUBLISHER_TEST_NATS_URL",
            Broker::Postgres => "PUBLISHER_TEST_POSTGRES_URL",
        }
    }

    /// Where the broker is when nothing says otherwise: a URL, or Kafka's `host:port`.
    pub fn local_default(self) -> &'static str {
        match self {
            Broker::Redis => "redis://127.0.0.1:6379",
            Broker::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Broker::Kafka => "127.0.0.1:9092",
            Broker::Nats => "nats://127.0.0.1:4222",
            Broker::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|b| *b == self).unwrap_or(0)
    }
}

/// The broker's address by the workspace's rule (steps 1 to 3 of the module's list), found once
/// per process; `Err` says why there is none, for the caller to use an embedded broker or to
/// [`skip`].
///
/// # Panics
/// When the broker's variable is set and nothing answers at its address.
pub fn find_broker(broker: Broker) -> Result<String, String> {
    static FOUND: [OnceLock<Result<String, String>>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    FOUND[broker.index()]
        .get_or_init(|| {
            if let Some(address) =
                configured_or_local(broker.name(), broker.var(), broker.local_default())
            {
                return Ok(address);
            }
            let none_local = format!(
                "nothing answers at {}",
                redact_address(broker.local_default())
            );
            match containers::start(broker) {
                Ok(address) => {
                    notice(&format!(
                        "{} tests run on the container publisher-test-{} at {}: {none_local} \
                         (set {} to use another broker)",
                        broker.name(),
                        broker.name().to_lowercase(),
                        redact_address(&address),
                        broker.var()
                    ));
                    Ok(address)
                }
                Err(why) => Err(format!("{none_local} and {why}")),
            }
        })
        .clone()
}

/// Whether this run is CI (`CI=true` or `CI=1`): there a broker a test needs must be there.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether something accepts TCP connections at every `host:port` of `address` (a URL such as
/// `redis://user:pass@host:6379/0`, or Kafka's `host:port[,host:port…]`), each within `wait`.
pub fn answers(address: &str, wait: Duration) -> bool {
    use std::net::ToSocketAddrs;
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hosts = rest.split(['/', '?']).next().unwrap_or(rest);
    hosts.split(',').filter(|h| !h.is_empty()).all(|h| {
        h.to_socket_addrs().is_ok_and(|mut addrs| {
            addrs.any(|a| std::net::TcpStream::connect_timeout(&a, wait).is_ok())
        })
    })
}

/// Steps 1 and 2 of the rule: the environment variable `var` when set (it must answer), else
/// `default` when it answers, else `None`.
///
/// # Panics
/// When `var` is set and nothing answers at its address.
pub fn configured_or_local(backend: &str, var: &str, default: &str) -> Option<String> {
    if let Ok(address) = std::env::var(var) {
        assert!(
            answers(&address, Duration::from_secs(3)),
            "no {backend} broker at {} ({var}): start one there or unset the variable",
            redact_address(&address)
        );
        return Some(address);
    }
    answers(default, Duration::from_millis(500)).then(|| default.to_owned())
}

fn redact_address(address: &str) -> String {
    match (address.split_once("://"), address.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => address.to_owned(),
    }
}

/// Says once per process, on the terminal even while the test harness captures output, that
/// `backend`'s tests are skipped and why; under CI, where a skipped backend would let CI pass
/// without it, panics instead.
///
/// # Panics
/// Under CI.
pub fn skip(backend: &str, var: &str, why: &str) {
    let line = format!("{backend} tests skipped: {why} (set {var} to run them)");
    assert!(
        !is_ci(),
        "{line}; under CI=true a skipped backend is a failure"
    );
    if notice(&line) {
        record_skip(&line);
    }
}

/// Where this `cargo test` run's skips are collected: one file per run, named by the parent
/// process (cargo, which starts every test binary of the run).
fn skips_file() -> Option<std::path::PathBuf> {
    #[cfg(unix)]
    {
        Some(std::env::temp_dir().join(format!(
            "publisher-test-skips-{}.log",
            std::os::unix::process::parent_id()
        )))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Adds `line` to the run's skips, with the test binary that skipped.
fn record_skip(line: &str) {
    use std::io::Write;
    let Some(path) = skips_file() else { return };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.rsplit_once('-')
                .map_or(s.clone(), |(name, _hash)| name.to_owned())
        })
        .unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}\t{binary}");
    }
}

/// Lists the skips every test binary of this `cargo test` run recorded, one line per reason
/// with the binaries it skipped, and forgets them. The workspace calls it from its last test
/// binary, so that a run with missing brokers ends with what it did not test.
pub fn report_skips() {
    use std::io::Write;
    let Some(path) = skips_file() else { return };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let _ = std::fs::remove_file(&path);
    let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
    for entry in text.lines() {
        let (line, binary) = entry.split_once('\t').unwrap_or((entry, ""));
        match reasons.iter_mut().find(|(l, _)| l == line) {
            Some((_, binaries)) => binaries.push(binary.to_owned()),
            None => reasons.push((line.to_owned(), vec![binary.to_owned()])),
        }
    }
    if reasons.is_empty() {
        return;
    }
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "\nskipped in this run:");
    for (line, binaries) in reasons {
        let _ = writeln!(
            out,
            "  {line}; {} test binaries: {}",
            binaries.len(),
            binaries.join(", ")
        );
    }
}

/// Writes `line` once per process to the terminal's stderr, not through `eprintln!`, which the
/// test harness captures (and hides) for passing tests.
/// Returns whether it was said now (false when it had been already).
pub fn notice(line: &str) -> bool {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.iter().any(|l| l == line) {
        return false;
    }
    let _ = writeln!(std::io::stderr(), "{line}");
    said.push(line.to_owned());
    true
}

#[cfg(not(feature = "testcontainers"))]
mod containers {
    pub(super) fn start(_: super::Broker) -> Result<String, String> {
        Err(
            "the `testcontainers` feature is off (`--features publisher-core/testcontainers` \
             starts brokers in Docker)"
                .into(),
        )
    }
}

#[cfg(feature = "testcontainers")]
mod containers {
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ImageExt, ReuseDirective};
    use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
    use testcontainers_modules::nats::{Nats, NatsServerCmd};
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::rabbitmq::RabbitMq;
    use testcontainers_modules::redis::{REDIS_PORT, Redis};

    use super::Broker;

    fn no_docker(e: impl std::fmt::Display) -> String {
        format!("no Docker engine answered ({e})")
    }

    /// Starts (or finds, from an earlier run) the broker's container, on a thread and runtime
    /// of its own so that any test, sync or async, can ask. The container is reused, so it is
    /// not removed when its handle drops.
    pub(super) fn start(broker: Broker) -> Result<String, String> {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(run(broker))
        })
        .join()
        .map_err(|_| "starting a container panicked".to_string())?
    }

    async fn run(broker: Broker) -> Result<String, String> {
        let name = format!("publisher-test-{}", broker.name().to_lowercase());
        Ok(match broker {
            Broker::Redis => {
                let c = Redis::default()
                    .with_container_name(name)
                    .with_reuse(ReuseDirective::Always)
                    .start()
                    .await
                    .map_err(no_docker)?;
                let port = c.get_host_port_ipv4(REDIS_PORT).await.map_err(no_docker)?;
                format!("redis://127.0.0.1:{port}")
            }
            Broker::RabbitMq => {
                let c = RabbitMq::default()
                    .with_container_name(name)
                    .with_reuse(ReuseDirective::Always)
                    .start()
                    .await
                    .map_err(no_docker)?;
                let port = c.get_host_port_ipv4(5672).await.map_err(no_docker)?;
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
            }
            Broker::Kafka => {
                let c = Kafka::default()
                    .with_container_name(name)
                    .with_reuse(ReuseDirective::Always)
                    .start()
                    .await
                    .map_err(no_docker)?;
                let port = c.get_host_port_ipv4(KAFKA_PORT).await.map_err(no_docker)?;
                format!("127.0.0.1:{port}")
            }
            Broker::Nats => {
                let c = Nats::default()
                    .with_cmd(&NatsServerCmd::default().with_jetstream())
                    .with_container_name(name)
                    .with_reuse(ReuseDirective::Always)
                    .start()
                    .await
                    .map_err(no_docker)?;
                let port = c.get_host_port_ipv4(4222).await.map_err(no_docker)?;
                format!("nats://127.0.0.1:{port}")
            }
            Broker::Postgres => {
                let c = Postgres::default()
                    .with_container_name(name)
                    .with_reuse(ReuseDirective::Always)
                    .start()
                    .await
                    .map_err(no_docker)?;
                let port = c.get_host_port_ipv4(5432).await.map_err(no_docker)?;
                format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
            }
        })
    }
}
