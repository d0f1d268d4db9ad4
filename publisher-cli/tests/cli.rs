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
        ("nats://localhost", "unknown scheme `nats://`"),
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

/// A broker by the workspace's one rule (variable, then local default), or `None` after one
/// skip line (a failure under CI).
fn broker(backend: &str, var: &str, default: &str) -> Option<String> {
    let found = publisher::testing::configured_or_local(backend, var, default);
    if found.is_none() {
        publisher::testing::skip(backend, var, &format!("nothing answers at {default}"));
    }
    found
}

fn amqp_url() -> Option<String> {
    broker(
        "amqp",
        "PUBLISHER_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
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
    broker(
        "redis",
        "PUBLISHER_TEST_REDIS_URL",
        "redis://127.0.0.1:6379",
    )
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
