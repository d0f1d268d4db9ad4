//! No Docker engine runs in CI, so docker-compose.yml is checked structurally: every broker the
//! tests expect is there, with a healthcheck and the default port on localhost, and the
//! defaults in `.env.example` point at those ports.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Compose {
    name: Option<String>,
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Deserialize)]
struct Service {
    image: String,
    #[serde(default)]
    ports: Vec<String>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    environment: BTreeMap<String, serde_yaml::Value>,
    #[allow(dead_code)]
    #[serde(default)]
    command: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: serde_yaml::Value,
    interval: String,
    retries: u32,
    #[allow(dead_code)]
    timeout: Option<String>,
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> Compose {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("docker-compose.yml parses")
}

#[test]
fn every_broker_has_an_image_a_healthcheck_and_its_default_port() {
    let c = compose();
    assert_eq!(c.name.as_deref(), Some("publisher"));
    for (service, image_prefix, port) in [
        ("redis", "redis:7", 6379),
        ("kafka", "apache/kafka:", 9092),
        ("rabbitmq", "rabbitmq:3-management", 5672),
    ] {
        let s = c
            .services
            .get(service)
            .unwrap_or_else(|| panic!("service {service} missing"));
        assert!(s.image.starts_with(image_prefix), "{service}: {}", s.image);
        let hc = s.healthcheck.as_ref().unwrap_or_else(|| {
            panic!("{service} has no healthcheck (compose up --wait needs one)")
        });
        assert!(!hc.test.is_null());
        assert!(hc.retries > 0 && !hc.interval.is_empty());
        let mapping = format!("127.0.0.1:{port}:{port}");
        assert!(
            s.ports.contains(&mapping),
            "{service} does not publish {mapping}: {:?}",
            s.ports
        );
    }
}

#[test]
fn kafka_runs_in_kraft_mode_advertising_localhost() {
    let c = compose();
    let env = &c.services["kafka"].environment;
    let get = |k: &str| {
        env.get(k)
            .and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
            .unwrap_or_else(|| panic!("kafka lacks {k}"))
    };
    assert_eq!(get("KAFKA_PROCESS_ROLES"), "broker,controller");
    assert!(get("KAFKA_ADVERTISED_LISTENERS").contains("127.0.0.1:9092"));
    assert!(
        !env.contains_key("KAFKA_ZOOKEEPER_CONNECT"),
        "KRaft, not ZooKeeper"
    );
}

#[test]
fn env_example_points_at_the_compose_ports() {
    let text = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert_eq!(vars["PUBLISHER_TEST_REDIS_URL"], "redis://127.0.0.1:6379");
    assert!(vars["PUBLISHER_TEST_AMQP_URL"].contains("127.0.0.1:5672"));
    assert_eq!(vars["PUBLISHER_TEST_KAFKA_BROKERS"], "127.0.0.1:9092");
}
