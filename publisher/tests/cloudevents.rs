//! CloudEvents 1.0 structured mode against an independent implementation: the Python
//! `cloudevents` package (the CloudEvents project's own SDK) reads what we write, and we read
//! what it writes, attributes and extensions intact.

use std::io::Write;
use std::process::{Command, Stdio};

use publisher_core::Event;
use publisher_core::cloudevents::{CloudEvent, CloudEventAttributes};

/// Runs `script` with `input` on standard input; `None` when Python or the package is missing
/// here (a failure under CI, which installs it).
fn python(script: &str, input: &[u8]) -> Option<String> {
    let has_sdk = Command::new("python3")
        .args(["-c", "import cloudevents.v1.http"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(
            std::env::var("CI").is_err(),
            "python3 with the cloudevents package is needed under CI (pip install cloudevents)"
        );
        eprintln!("python3 or its cloudevents package is missing: interop test skipped");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "python failed");
    Some(String::from_utf8(out.stdout).expect("utf-8"))
}

#[test]
fn the_cloudevents_sdk_reads_what_we_write() {
    let event = Event::json("orders", &serde_json::json!({"order": 7, "text": "ü"}))
        .unwrap()
        .with_key("customer-7")
        .with_header("tenant", "acme");
    let attrs = CloudEventAttributes::new("/orders/eu").with_type("com.example.order.created");
    let ce = CloudEvent::from_event(&event, &attrs).unwrap();
    let json = ce.to_json();
    let script = r#"
import sys, json
from cloudevents.v1.http import from_json
ev = from_json(sys.stdin.buffer.read())
print(json.dumps({"attributes": dict(ev.get_attributes()), "data": ev.data}, default=str))
"#;
    let Some(out) = python(script, &json) else {
        return;
    };
    let read: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &read["attributes"];
    assert_eq!(a["specversion"], "1.0");
    assert_eq!(a["id"], event.id().to_string());
    assert_eq!(a["source"], "/orders/eu");
    assert_eq!(a["type"], "com.example.order.created");
    assert_eq!(a["datacontenttype"], "application/json");
    assert_eq!(a["partitionkey"], "customer-7");
    assert_eq!(a["tenant"], "acme");
    assert_eq!(a["time"].as_str(), ce.time.as_deref(), "{a}");
    assert_eq!(read["data"], serde_json::json!({"order": 7, "text": "ü"}));

    // Bytes that are not text go as data_base64, and come out as the same bytes.
    let binary = Event::new("blobs", vec![0u8, 159, 146, 150]);
    let json = CloudEvent::from_event(&binary, &attrs).unwrap().to_json();
    let script = r#"
import sys
from cloudevents.v1.http import from_json
print(from_json(sys.stdin.buffer.read()).data.hex())
"#;
    let out = python(script, &json).expect("python");
    assert_eq!(out.trim(), "009f9296");
}

#[test]
fn we_read_what_the_cloudevents_sdk_writes() {
    let script = r#"
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.conversion import to_json
ce = CloudEvent({"type": "com.example.thing", "source": "https://things.example",
                 "id": "01890a5d-ac96-774b-bcce-b302099a8057", "partitionkey": "k9",
                 "comexampleext": "v", "datacontenttype": "application/json"}, {"a": 1})
print(to_json(ce).decode())
"#;
    let Some(out) = python(script, b"") else {
        return;
    };
    let ce = CloudEvent::from_json(out.trim().as_bytes()).unwrap();
    assert_eq!(ce.source, "https://things.example");
    assert_eq!(ce.event_type, "com.example.thing");
    let event = ce.into_event("things").unwrap();
    assert_eq!(
        event.id().to_string(),
        "01890a5d-ac96-774b-bcce-b302099a8057"
    );
    assert_eq!(event.key(), Some("k9"));
    assert_eq!(event.headers()["comexampleext"], "v");
    let data: serde_json::Value = serde_json::from_slice(event.payload()).unwrap();
    assert_eq!(data, serde_json::json!({"a": 1}));
}
