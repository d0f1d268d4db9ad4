//! `evpub` as a user runs it: real processes, real files, real Redis for the broker path.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn evpub(args: &[&str], stdin: &str) -> Output {
    evpub_with_env(args, stdin, &[])
}

fn evpub_with_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evpub"))
        .args(args)
        .env_remove("PUBLISHER_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn envelopes(stdout: &[u8]) -> Vec<publisher::Event> {
    text(stdout)
        .lines()
        .map(|l| {
            publisher::envelope::Envelope::parse(l.as_bytes())
                .unwrap()
                .into_event()
                .unwrap()
        })
        .collect()
}

fn sample_file() -> String {
    format!("{}/../examples/events.jsonl", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn send_publishes_the_sample_file_to_stdout_and_summarises() {
    let out = evpub(&["send", &sample_file()], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = envelopes(&out.stdout);
    assert_eq!(events.len(), 8);
    assert_eq!(events[0].topic(), "orders.created");
    assert_eq!(events[0].key(), Some("customer-7"));
    assert_eq!(events[0].headers()["source"], "checkout");
    assert_eq!(events[7].payload().as_ref(), b"welcome email to user-88");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("published 8, failed 0, skipped 0"),
        "{stderr}"
    );
    assert!(stderr.contains("events/s"), "{stderr}");
}

#[test]
fn malformed_line_is_fatal_by_default_and_named_by_number() {
    let out = evpub(&["send", "--topic", "t"], "{\"a\":1}\n{oops\n{\"b\":2}\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 2: invalid JSON"), "{stderr}");
    assert_eq!(
        envelopes(&out.stdout).len(),
        1,
        "nothing after the bad line is sent"
    );
}

#[test]
fn malformed_line_can_be_skipped_but_the_exit_code_says_so() {
    let out = evpub(
        &["send", "--topic", "t", "--on-error", "skip"],
        "{\"a\":1}\n{oops\n{\"b\":2}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(envelopes(&out.stdout).len(), 2);
    assert!(
        text(&out.stderr).contains("skipped 1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_topic_unreadable_file_unknown_scheme_and_disabled_feature_are_one_line_errors() {
    let out = evpub(&["send"], "{\"a\":1}\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("line 1: no topic"),
        "{}",
        text(&out.stderr)
    );

    let out = evpub(&["send", "/definitely/not/here.jsonl"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /definitely/not/here.jsonl"));

    for (url, needle) in [
        ("mqtt://localhost", "unknown scheme `mqtt://`"),
        ("redis://localhost?mode=carrier-pigeon", "unknown mode"),
    ] {
        let out = evpub(&["--url", url, "send"], "");
        assert_eq!(out.status.code(), Some(2), "{url}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(needle), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn concurrency_keeps_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let mut input = String::new();
    for i in 0..2000 {
        input.push_str(&format!(
            "{{\"topic\":\"t\",\"key\":\"k{}\",\"payload\":{i}}}\n",
            i % 10
        ));
    }
    let url = format!("console://{}?format=json", path.display());
    let out = evpub(&["--url", &url, "send", "--concurrency", "8"], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = envelopes(&std::fs::read(&path).unwrap());
    assert_eq!(events.len(), 2000);
    let mut last = std::collections::HashMap::new();
    for e in events {
        let n: i64 = std::str::from_utf8(e.payload()).unwrap().parse().unwrap();
        let key = e.key().unwrap().to_owned();
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(prev < n, "key {key}: {n} arrived after {prev}");
        }
    }
}

/// A broker by the workspace's one rule (`find_broker`), or `None` after one skip line (a
/// failure under CI).
fn broker(backend: &str, broker: publisher::testing::Broker) -> Option<String> {
    publisher::testing::find_broker(broker)
        .inspect_err(|why| publisher::testing::skip(backend, broker.var(), why))
        .ok()
}

fn amqp_url() -> Option<String> {
    broker("amqp", publisher::testing::Broker::RabbitMq)
}

/// A returned (unroutable) event's payload never reaches evpub's output, with lapin's logs at
/// info; the error says it was returned.
#[test]
fn returned_payloads_stay_out_of_the_logs() {
    let Some(amqp_url) = amqp_url() else {
        return;
    };
    let topic = format!("evpub-test.nobody.{}", publisher::Uuid::now_v7().simple());
    let secret = format!("s3cret-{}", publisher::Uuid::now_v7().simple());
    let input = format!("{{\"topic\":\"{topic}\",\"payload\":\"{secret}\"}}\n");
    let out = evpub_with_env(
        &["--url", &amqp_url, "send"],
        &input,
        &[("EVPUB_LOG", "info")],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("returned"), "{stderr}");
    assert!(
        !stdout.contains(&secret) && !stderr.contains(&secret),
        "the payload reached the output:\n{stdout}\n{stderr}"
    );
    // lapin's WARN line for the return (body and headers in Debug form) is filtered out.
    assert!(!stderr.contains("Server returned us a message"), "{stderr}");
}

fn redis_url() -> Option<String> {
    broker("redis", publisher::testing::Broker::Redis)
}

#[test]
fn send_to_redis_lands_in_the_stream_and_health_reports() {
    let Some(redis_url) = redis_url() else {
        return;
    };
    let topic = format!("evpub-test.{}", publisher::Uuid::now_v7().simple());
    let input = format!("{{\"topic\":\"{topic}\",\"key\":\"k\",\"payload\":{{\"n\":1}}}}\n");
    let out = evpub(&["--url", &redis_url, "send"], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let len: usize = redis::cmd("XLEN").arg(&topic).query(&mut conn).unwrap();
    assert_eq!(len, 1);
    let _: () = redis::cmd("DEL").arg(&topic).query(&mut conn).unwrap();

    let out = evpub(&["--url", &redis_url, "health"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("redis healthy"),
        "{}",
        text(&out.stdout)
    );
    let out = evpub(&["--url", "redis://127.0.0.1:1", "health"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).starts_with("redis unhealthy"));
}

#[test]
fn bench_prints_a_table_and_json() {
    let out = evpub(
        &[
            "--url",
            "memory://",
            "bench",
            "--count",
            "2000",
            "--concurrency",
            "4",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("events/s") && stdout.contains("p99"),
        "{stdout}"
    );
    let out = evpub(
        &[
            "--url",
            "memory://",
            "bench",
            "--count",
            "2000",
            "--batch",
            "100",
            "--json",
        ],
        "",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 2000);
    assert_eq!(v["failed"], 0);
    assert!(v["events_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn ctrl_c_closes_gracefully_and_prints_the_close_report() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evpub"))
        .args(["--url", "memory://", "send", "--topic", "t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"{\"a\":1}\n{\"a\":2}\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("interrupted: published 2"), "{stderr}");
    assert!(stderr.contains("close: closed in"), "{stderr}");
}

/// A `redis-server` of the test's own on a free port, writing every acknowledged command to its
/// append-only file (so that a kill loses nothing it acknowledged), restartable on the same
/// port and data.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// `None` (said) when `redis-server` is not installed.
    fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                !publisher::testing::is_ci(),
                "redis-server is not installed (CI needs it)"
            );
            publisher::testing::notice("redis-server is not installed: restart test skipped");
            return None;
        }
        let mut server = Self {
            port: publisher::testing::free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server hard, as a crash would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The event ids of `stream`'s entries in stream order, read back with redis' own client.
fn stream_ids(server: &OwnRedis, stream: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut server.conn())
        .unwrap();
    entries
        .iter()
        .map(|(_, fields)| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == b"id")
                .map(|kv| text(&kv[1]))
                .expect("an id field")
        })
        .collect()
}

fn receipts(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A broker killed and restarted in the middle of a send: with `--retry` every line ends up
/// published, none fails, the broker holds every line's event, and any event it holds twice
/// is one the receipts mark as `maybe_duplicate` (an attempt's outcome was unknown).
#[test]
fn retry_rides_out_a_broker_restart_mid_send() {
    let Some(mut server) = OwnRedis::start() else {
        return;
    };
    const LINES: usize = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let topic = "evpub-restart";
    let mut body = String::with_capacity(LINES * 64);
    for i in 0..LINES {
        body.push_str(&format!(
            "{{\"topic\":\"{topic}\",\"key\":\"k{}\",\"payload\":{{\"n\":{i}}}}}\n",
            i % 97
        ));
    }
    std::fs::write(&input, body).unwrap();
    let receipts_path = dir.path().join("receipts.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_evpub"))
        .args(["--url", &format!("{}?mode=stream", server.url()), "send"])
        .arg(&input)
        .args(["--concurrency", "16", "--retry", "--receipts"])
        .arg(&receipts_path)
        .env_remove("PUBLISHER_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Restart once a third of the lines are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let len: usize = redis::cmd("XLEN")
            .arg(topic)
            .query(&mut server.conn())
            .unwrap_or(0);
        if len >= LINES / 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the send never got a third of the way ({len})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    std::thread::sleep(Duration::from_secs(1));
    server.spawn();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("published {LINES}, failed 0")),
        "{stderr}"
    );

    let receipts = receipts(&receipts_path);
    assert_eq!(receipts.len(), LINES);
    let mut lines = std::collections::HashSet::new();
    let mut maybe_twice = std::collections::HashSet::new();
    for r in &receipts {
        assert_eq!(r["ok"], true, "{r}");
        assert!(
            lines.insert(r["line"].as_u64().unwrap()),
            "a line twice: {r}"
        );
        if r["maybe_duplicate"] == true {
            maybe_twice.insert(r["id"].as_str().unwrap().to_owned());
        }
    }
    // What the broker holds, read back with redis' own client.
    let entries = stream_ids(&server, topic);
    let mut held: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for id in &entries {
        *held.entry(id.clone()).or_default() += 1;
    }
    for r in &receipts {
        let id = r["id"].as_str().unwrap();
        assert!(held.contains_key(id), "line {} is not in Redis", r["line"]);
    }
    for (id, n) in &held {
        if *n > 1 {
            assert!(
                maybe_twice.contains(id),
                "{id} is held {n} times but was not reported as a possible duplicate"
            );
        }
    }
    println!(
        "restart mid-send: {LINES} lines, {} entries held, {} marked maybe_duplicate",
        entries.len(),
        maybe_twice.len()
    );
}

/// Secrets never reach the screen: not in `--help` (from the environment), not in an error,
/// not in a health line, and the endpoint is named (password hidden).
#[test]
fn no_secret_on_screen_and_every_error_names_the_endpoint() {
    let secret = "s3cret-pw-7731";
    let port = publisher::testing::free_port();
    let url = format!("redis://user:{secret}@127.0.0.1:{port}");
    let out = evpub_with_env(&["--help"], "", &[("PUBLISHER_URL", &url)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains(secret), "{all}");
    assert!(all.contains("kafka://"), "--help lists Kafka: {all}");

    for args in [
        vec!["health"],
        vec!["health", "--json"],
        vec!["send", "--topic", "t"],
    ] {
        let out = evpub_with_env(&args, "{\"a\":1}\n", &[("PUBLISHER_URL", &url)]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(!all.contains(secret), "{args:?}: {all}");
        assert!(
            all.contains(&format!("redis://user:***@127.0.0.1:{port}")),
            "{args:?} does not name the endpoint: {all}"
        );
    }
    let amqp = format!("amqp://guest:{secret}@127.0.0.1:{port}/%2f");
    let out = evpub(&["--url", &amqp, "health"], "");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains(secret), "{all}");
    assert!(all.contains(&format!("127.0.0.1:{port}")), "{all}");
}

/// `health --json`: one JSON object per check, for scripts and readiness probes.
#[test]
fn health_json_has_one_object_per_check() {
    let out = evpub(&["--url", "memory://", "health", "--json"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let checks: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert_eq!(checks[0]["check"], "open");
    assert_eq!(checks[0]["ok"], true);
    assert_eq!(checks[1]["check"], "broker");
    assert_eq!(checks[1]["status"], "healthy");
    assert_eq!(checks[1]["endpoint"], "memory://");

    let port = publisher::testing::free_port();
    let out = evpub(
        &[
            "--url",
            &format!("redis://127.0.0.1:{port}"),
            "health",
            "--json",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let last: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], false);
    assert_eq!(last["status"], "unhealthy");
}

/// A Kafka client that cannot reach its broker logs the same failure many times a second: at
/// the default level evpub shows each condition once and says how many lines it folded.
#[test]
fn client_log_storms_are_folded_at_the_default_level() {
    let port = publisher::testing::free_port();
    let url = format!("kafka://127.0.0.1:{port}");
    let out = evpub(&["--url", &url, "health"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines = stderr.lines().count();
    assert!(lines <= 6, "{lines} lines:\n{stderr}");

    let out = evpub_with_env(&["--url", &url, "health"], "", &[("EVPUB_LOG", "debug")]);
    let unfolded = text(&out.stderr).lines().count();
    assert!(
        unfolded > lines,
        "EVPUB_LOG=debug shows every line ({unfolded} vs {lines})"
    );
}

/// `--receipts`: one line per input line, with the event id evpub published.
#[test]
fn receipts_reconcile_with_what_was_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receipts.jsonl");
    let input = "{\"topic\":\"t\",\"payload\":1}\nnot json\n{\"topic\":\"t\",\"payload\":2}\n";
    let out = evpub(
        &[
            "send",
            "--on-error",
            "skip",
            "--receipts",
            path.to_str().unwrap(),
        ],
        input,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let published = envelopes(&out.stdout);
    let mut receipts = receipts(&path);
    receipts.sort_by_key(|r| r["line"].as_u64());
    assert_eq!(receipts.len(), 3, "{receipts:?}");
    assert_eq!(receipts[0]["ok"], true);
    assert_eq!(receipts[0]["id"], published[0].id().to_string());
    assert_eq!(receipts[1]["ok"], false);
    assert_eq!(receipts[1]["error"]["kind"], "invalid_input");
    assert_eq!(receipts[2]["id"], published[1].id().to_string());
}

/// The spool's acceptance run: the broker is down for the first 60 s while 100,000 events are
/// sent through `--spool`; the first evpub is killed with SIGKILL in the middle, and a second
/// run (the application restarted) sends the lines the first had not confirmed, then waits for
/// the spool to reach the broker once it is up. Every line's event is at the broker afterwards
/// (read back with redis' own client), and every copy is one the first run spooled without
/// writing its receipt before it was killed (so the restarted application sent it again).
#[test]
fn spool_rides_out_a_broker_down_for_a_minute_and_a_sigkill() {
    let Some(mut server) = OwnRedis::start() else {
        return;
    };
    server.kill();
    let started = std::time::Instant::now();
    const LINES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let topic = format!("evpub-spool-{}", publisher::Uuid::now_v7().simple());
    let url = format!("{}?mode=stream", server.url());
    let ids: Vec<String> = (0..LINES)
        .map(|_| publisher::Uuid::now_v7().to_string())
        .collect();
    let line = |i: usize| {
        format!(
            "{{\"topic\":\"{topic}\",\"id\":\"{}\",\"key\":\"k{}\",\"payload\":{{\"n\":{i}}}}}\n",
            ids[i],
            i % 97
        )
    };
    let first_input = dir.path().join("first.jsonl");
    std::fs::write(&first_input, (0..LINES).map(line).collect::<String>()).unwrap();
    let first_receipts = dir.path().join("first-receipts.jsonl");
    let mut first = Command::new(env!("CARGO_BIN_EXE_evpub"))
        .args(["--url", &url, "send", "--concurrency", "64", "--spool"])
        .arg(&spool)
        .arg("--receipts")
        .arg(&first_receipts)
        .arg(&first_input)
        .env_remove("PUBLISHER_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has confirmed (spooled) a part.
    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    loop {
        let confirmed = std::fs::read_to_string(&first_receipts)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if confirmed >= LINES / 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never spooled a third ({confirmed})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = started.elapsed();
    // What the first run said it spooled (its last receipts may not have been written).
    let mut confirmed = std::collections::HashSet::new();
    for r in std::fs::read_to_string(&first_receipts).unwrap().lines() {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(r) else {
            continue; // the line the kill cut short
        };
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["position"]["spooled"].is_u64(), "{r}");
        confirmed.insert(r["line"].as_u64().unwrap() as usize - 1);
    }
    // The restarted application sends what it has no confirmation for.
    let second_input = dir.path().join("second.jsonl");
    let rest: Vec<usize> = (0..LINES).filter(|i| !confirmed.contains(i)).collect();
    std::fs::write(
        &second_input,
        rest.iter().map(|&i| line(i)).collect::<String>(),
    )
    .unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_evpub"))
        .args(["--url", &url, "send", "--concurrency", "64", "--spool"])
        .arg(&spool)
        .args(["--spool-wait", "180s"])
        .arg(&second_input)
        .env_remove("PUBLISHER_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The broker comes back 60 s after the start.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(started.elapsed()));
    server.spawn();
    let up_at = started.elapsed();
    let out = second.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("left 0 "), "{stderr}");

    let entries = stream_ids(&server, &topic);
    let mut held: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for id in &entries {
        *held.entry(id.clone()).or_default() += 1;
    }
    let lost: Vec<usize> = (0..LINES)
        .filter(|&i| !held.contains_key(&ids[i]))
        .collect();
    let duplicates: usize = held.values().map(|n| n - 1).sum();
    // A copy is either an event the first run spooled without writing its receipt before the
    // kill (the restarted application sent it again), or one the relay delivered and was
    // killed before marking delivered (it is delivered again from the spool).
    let copied = |i: &usize| held.get(&ids[*i]).is_some_and(|&n| n > 1);
    let resent = (0..LINES)
        .filter(|i| copied(i) && !confirmed.contains(i))
        .count();
    let redelivered = (0..LINES)
        .filter(|i| copied(i) && confirmed.contains(i))
        .count();
    println!(
        "spool acceptance: events {LINES}, broker down for the first {up_at:.1?}, first run \
         killed (SIGKILL) at {killed_at:.1?} with {} confirmed, second run sent {}, held {} \
         (distinct {}), lost {}, duplicates {duplicates} (sent again by the restarted run: \
         {resent}, delivered again by the relay: {redelivered}); second run: {}",
        confirmed.len(),
        rest.len(),
        entries.len(),
        held.len(),
        lost.len(),
        stderr.lines().last().unwrap_or_default()
    );
    assert!(
        lost.is_empty(),
        "{} events lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Per key, the first copies in input order. Lines the restarted run sent again land after
    // the first run's, so the promise is checked on what the first run confirmed (spooled in
    // input order per key, delivered from the spool in that order); the rest is printed.
    let index: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut last_all: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut last_confirmed: std::collections::HashMap<usize, usize> =
        std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let (mut out_of_order, mut confirmed_out_of_order) = (0, 0);
    for id in &entries {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let i = index[id.as_str()];
        if last_all.insert(i % 97, i).is_some_and(|prev| prev > i) {
            out_of_order += 1;
        }
        if confirmed.contains(&i)
            && last_confirmed
                .insert(i % 97, i)
                .is_some_and(|prev| prev > i)
        {
            confirmed_out_of_order += 1;
        }
    }
    println!(
        "spool acceptance: out of order (per key, first copies) {out_of_order}, among the \
         first run's confirmed {confirmed_out_of_order}"
    );
    assert_eq!(confirmed_out_of_order, 0, "the spool broke a key's order");
}
