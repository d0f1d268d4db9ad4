//! [`KafkaConfig`]: brokers, delivery settings, librdkafka pass-through and timeouts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use publisher_core::{Error, Result, Timeouts, UrlOptions};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::BACKEND;

/// How many replicas must acknowledge a record before the delivery report says Ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    /// Every in-sync replica (`acks=all`, default; required by idempotence).
    #[default]
    All,
    /// The partition leader only (`acks=1`).
    Leader,
    /// No acknowledgement (`acks=0`): Ok as soon as the record is sent. Refused with
    /// idempotence.
    None,
}

impl Acks {
    fn as_kafka(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "all" | "-1" => Ok(Acks::All),
            "1" | "leader" => Ok(Acks::Leader),
            "0" | "none" => Ok(Acks::None),
            other => Err(bad("acks", format!("`{other}`: expected all, 1 or 0"))),
        }
    }
}

/// Record compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None (default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// zstd (feature `zstd`).
    Zstd,
}

impl Compression {
    fn as_kafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(bad(
                "compression",
                format!("`{other}`: expected none, gzip, snappy, lz4 or zstd"),
            )),
        }
    }
}

/// Configuration of the Kafka publisher. Missing fields take the documented defaults.
///
/// `Debug` and `Display` never show SASL or SSL passwords (any pass-through property whose
/// name contains `password` or `secret`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas. Default: `127.0.0.1:9092`.
    pub brokers: String,
    /// `acks`. Default: all.
    pub acks: Acks,
    /// `enable.idempotence`: no duplicates or reordering from producer retries. Default: true.
    pub idempotence: bool,
    /// `linger.ms`: how long to wait to fill a batch. Default: 5 ms.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// `batch.size` in bytes. Default: librdkafka's (1,000,000).
    pub batch_size: Option<usize>,
    /// `compression.type`. Default: none.
    pub compression: Compression,
    /// `queue.buffering.max.messages`: the local queue's capacity (the "pool" of this backend).
    /// Default: librdkafka's (100,000).
    pub queue_max_messages: Option<usize>,
    /// `request.timeout.ms`. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `message.timeout.ms`: librdkafka gives up on a record after this and reports a delivery
    /// error. Must be at least 1 s below `timeouts.publish` (librdkafka's default of 5 minutes
    /// would hide a dead broker). Default: 8 s.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// `message.max.bytes`: larger events are refused locally, naming the limit.
    /// Default: 1,000,000.
    pub max_message_bytes: usize,
    /// Any other librdkafka property, passed through (`security.protocol`, `sasl.username`,
    /// `sasl.password`, `client.id`, …). Unknown names are a `Config` error at build time.
    pub properties: BTreeMap<String, String>,
    /// Timeouts. `publish` bounds enqueueing plus the delivery report; `close` bounds the
    /// flush. Default: [`Timeouts::default`].
    pub timeouts: Timeouts,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            acks: Acks::All,
            idempotence: true,
            linger: Duration::from_millis(5),
            batch_size: None,
            compression: Compression::None,
            queue_max_messages: None,
            request_timeout: Duration::from_secs(5),
            message_timeout: Duration::from_secs(8),
            max_message_bytes: 1_000_000,
            properties: BTreeMap::new(),
            timeouts: Timeouts::default(),
        }
    }
}

fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password") || n.contains("secret") || n.ends_with(".pem") || n.contains("key.pem")
}

struct Redacted<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_secret(k) { "***" } else { v.as_str() })),
            )
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("acks", &self.acks)
            .field("idempotence", &self.idempotence)
            .field("linger", &self.linger)
            .field("batch_size", &self.batch_size)
            .field("compression", &self.compression)
            .field("queue_max_messages", &self.queue_max_messages)
            .field("request_timeout", &self.request_timeout)
            .field("message_timeout", &self.message_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("properties", &Redacted(&self.properties))
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl fmt::Display for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kafka://{} (acks {})",
            self.brokers,
            self.acks.as_kafka()
        )
    }
}

fn bad(field: &'static str, msg: impl Into<String>) -> Error {
    Error::config(BACKEND, field, msg.into())
}

/// librdkafka scans for timed-out messages about once a second.
const MESSAGE_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Properties this config sets itself; setting them through `properties` would be ambiguous.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("acks", "acks"),
    ("request.required.acks", "acks"),
    ("enable.idempotence", "idempotence"),
    ("linger.ms", "linger"),
    ("queue.buffering.max.ms", "linger"),
    ("batch.size", "batch_size"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("queue.buffering.max.messages", "queue_max_messages"),
    ("request.timeout.ms", "request_timeout"),
    ("message.timeout.ms", "message_timeout"),
    ("delivery.timeout.ms", "message_timeout"),
    ("message.max.bytes", "max_message_bytes"),
];

impl KafkaConfig {
    /// Parses `kafka://host1:9092,host2:9092?acks=all&compression=zstd`. Known query
    /// parameters: `acks`, `idempotence`, `linger_ms`, `batch_size`, `compression`,
    /// `queue_max_messages`, `request_timeout_ms`, `message_timeout_ms`, `max_message_bytes`;
    /// any other (a librdkafka property such as `client.id` or `security.protocol`) goes to
    /// [`properties`](Self::properties). Names and values are percent-decoded (`%26` for `&`,
    /// `%3D` for `=`). Credentials before the host (`kafka://user:pass@host`) are refused:
    /// they go in SASL properties.
    ///
    /// # Errors
    /// `Config` naming `url` or the parameter at fault.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("url", "expected a kafka:// URL"))?;
        let (brokers, mut options) = UrlOptions::split(BACKEND, rest)?;
        let brokers = brokers.trim_end_matches('/');
        if brokers.contains('@') {
            // Never echo the text: it holds a password.
            return Err(bad(
                "url",
                "kafka:// URLs carry no credentials: set `sasl.username` and `sasl.password` \
                 (with `security.protocol` and `sasl.mechanism`) as query parameters or \
                 properties",
            ));
        }
        let mut cfg = KafkaConfig {
            brokers: brokers.to_owned(),
            ..Default::default()
        };
        if let Some(v) = options.take("acks") {
            cfg.acks = Acks::parse(&v)?;
        }
        if let Some(v) = options.take_bool("idempotence", "idempotence")? {
            cfg.idempotence = v;
        }
        if let Some(v) = options.take_millis("linger_ms", "linger")? {
            cfg.linger = v;
        }
        cfg.batch_size = options
            .take_parsed("batch_size", "batch_size", "a number")?
            .or(cfg.batch_size);
        if let Some(v) = options.take("compression") {
            cfg.compression = Compression::parse(&v)?;
        }
        cfg.queue_max_messages = options
            .take_parsed("queue_max_messages", "queue_max_messages", "a number")?
            .or(cfg.queue_max_messages);
        if let Some(v) = options.take_millis("request_timeout_ms", "request_timeout")? {
            cfg.request_timeout = v;
        }
        if let Some(v) = options.take_millis("message_timeout_ms", "message_timeout")? {
            cfg.message_timeout = v;
        }
        if let Some(v) =
            options.take_parsed("max_message_bytes", "max_message_bytes", "a number")?
        {
            cfg.max_message_bytes = v;
        }
        // Any other name is a librdkafka property (`client.id`, `security.protocol`, …).
        cfg.properties.extend(options.into_rest());
        Ok(cfg)
    }

    /// Checks every field and every contradiction.
    ///
    /// # Errors
    /// `Config` naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.timeouts.validate(BACKEND)?;
        if self.brokers.trim().is_empty()
            || self
                .brokers
                .split(',')
                .any(|b| b.trim().is_empty() || !b.contains(':'))
        {
            return Err(bad(
                "brokers",
                format!("`{}`: expected host:port[,host:port…]", self.brokers),
            ));
        }
        if self.idempotence && self.acks != Acks::All {
            return Err(bad(
                "acks",
                format!(
                    "idempotence requires acks=all, got acks={}; set idempotence=false to use it",
                    self.acks.as_kafka()
                ),
            ));
        }
        if self.message_timeout.is_zero() {
            return Err(bad(
                "message_timeout",
                "0 means wait forever in librdkafka: a dead broker would hang every publish",
            ));
        }
        if self.message_timeout + MESSAGE_TIMEOUT_MARGIN > self.timeouts.publish {
            return Err(bad(
                "message_timeout",
                format!(
                    "must be at least 1 s below timeouts.publish ({:?}), got {:?}: librdkafka \
                     checks message timeouts about once a second, and the publish timeout must \
                     not fire before it reports the failure",
                    self.timeouts.publish, self.message_timeout
                ),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(bad("request_timeout", "must be greater than zero"));
        }
        if self.max_message_bytes < 1000 || self.max_message_bytes > 1_000_000_000 {
            return Err(bad(
                "max_message_bytes",
                "must be between 1000 and 1000000000 (librdkafka's range)",
            ));
        }
        if self.compression == Compression::Zstd && !cfg!(feature = "zstd") {
            return Err(bad(
                "compression",
                "zstd needs the `zstd` feature of publisher-kafka",
            ));
        }
        for (name, field) in OWNED {
            if self.properties.contains_key(*name) {
                return Err(bad(
                    "properties",
                    format!("`{name}` is set by the `{field}` field: set that instead"),
                ));
            }
        }
        Ok(())
    }

    /// The librdkafka configuration. Unknown properties surface when the producer is created.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("acks", self.acks.as_kafka())
            .set("enable.idempotence", self.idempotence.to_string())
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", self.compression.as_kafka())
            .set(
                "request.timeout.ms",
                self.request_timeout.as_millis().to_string(),
            )
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("message.max.bytes", self.max_message_bytes.to_string())
            .set(
                "socket.connection.setup.timeout.ms",
                self.timeouts.connect.as_millis().max(1000).to_string(),
            )
            // librdkafka backs off up to 10 s between reconnects; a publisher should notice a
            // broker that came back sooner. `properties` can override it.
            .set("reconnect.backoff.max.ms", "1000");
        if let Some(n) = self.batch_size {
            c.set("batch.size", n.to_string());
        }
        if let Some(n) = self.queue_max_messages {
            c.set("queue.buffering.max.messages", n.to_string());
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher_core::ErrorKind;

    #[test]
    fn url_with_several_brokers_and_parameters() {
        let c = KafkaConfig::from_url(
            "kafka://h1:9092,h2:9093?acks=all&compression=gzip&linger_ms=20&client.id=me",
        )
        .unwrap();
        assert_eq!(c.brokers, "h1:9092,h2:9093");
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.linger, Duration::from_millis(20));
        assert_eq!(c.properties["client.id"], "me");
        c.validate().unwrap();
    }

    #[test]
    fn contradictions_are_config_errors_naming_the_field() {
        let check = |url: &str, field: &str| {
            let e = KafkaConfig::from_url(url)
                .and_then(|c| c.validate())
                .unwrap_err();
            assert_eq!(
                (e.kind(), e.field()),
                (ErrorKind::Config, Some(field)),
                "{url}: {e}"
            );
        };
        check("kafka://h:9092?acks=1", "acks");
        check("kafka://h:9092?acks=0", "acks");
        check("kafka://h:9092?message_timeout_ms=0", "message_timeout");
        check("kafka://h:9092?message_timeout_ms=60000", "message_timeout");
        check("kafka://h:9092?message_timeout_ms=9500", "message_timeout");
        check("kafka://h:9092?acks=most", "acks");
        check("kafka://h:9092?compression=brotli", "compression");
        check("kafka://?acks=all", "brokers");
        check("kafka://nohostport", "brokers");
        check("kafka://h:9092?linger_ms=soon", "linger");
        check("kafka://h:9092?message.timeout.ms=5", "properties");
        check("redis://h:9092", "url");
        KafkaConfig::from_url("kafka://h:9092?acks=1&idempotence=false")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn secrets_never_show() {
        let c = KafkaConfig::from_url(
            "kafka://h:9092?sasl.username=u&sasl.password=hunter2&ssl.key.password=s3cret",
        )
        .unwrap();
        let shown = format!("{c:?} {c}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("sasl.username"));
    }

    #[test]
    fn credentials_in_the_authority_are_refused_without_echo() {
        let e = KafkaConfig::from_url("kafka://alice:hunter2@h:9092").unwrap_err();
        assert_eq!((e.kind(), e.field()), (ErrorKind::Config, Some("url")));
        assert!(e.message().contains("sasl.username"), "{e}");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn query_names_and_values_are_percent_decoded() {
        let c = KafkaConfig::from_url(
            "kafka://h:9092?sasl.password=a%26b%3Dc+d&client%2Eid=me%20too&linger_ms=%32%30",
        )
        .unwrap();
        assert_eq!(c.properties["sasl.password"], "a&b=c+d");
        assert_eq!(c.properties["client.id"], "me too");
        assert_eq!(c.linger, Duration::from_millis(20));
    }
}
