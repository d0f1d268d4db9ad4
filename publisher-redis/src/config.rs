//! [`RedisConfig`]: URL, mode, limits, pool and timeouts.

use std::fmt;
use std::time::Duration;

use publisher_core::config::{check_timeout, redact_url as redact};
use publisher_core::{Error, PoolConfig, RedactedUrl, Result, Timeouts, UrlOptions};
use serde::{Deserialize, Serialize};

use crate::BACKEND;
use crate::topology::{self, Kind, Scheme};

/// Redis refuses bulk strings over 512 MiB (`proto-max-bulk-len`).
pub const REDIS_MAX_BULK: usize = 512 * 1024 * 1024;

/// How events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `XADD` to the stream named by the topic: durable, read back with `XRANGE`/`XREAD`
    /// (default).
    #[default]
    Stream,
    /// `PUBLISH` to the channel named by the topic: at-most-once, only current subscribers
    /// receive it; the receiver count is in the receipt.
    Pubsub,
}

/// What a pub/sub message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PubsubFormat {
    /// The JSON envelope of `publisher_core::envelope`: id, key, headers, content type,
    /// timestamp and payload (default).
    #[default]
    Envelope,
    /// The payload bytes alone; id, key and headers are not carried.
    Payload,
}

/// Configuration of the Redis publisher. Missing fields take the documented defaults.
///
/// `Debug` and `Display` never show the password of the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (feature `tls`); a Redis
    /// Cluster as `redis+cluster://[user:password@]host[:port][,host[:port]…]` (any nodes of
    /// it: the first that answers tells the rest); a master looked up through sentinels as
    /// `redis+sentinel://[user:password@]host[:port][,host[:port]…]/master[/db]` (the user and
    /// password are the Redis nodes', the sentinels are asked without; sentinel port 26379 by
    /// default). `rediss+cluster://` and `rediss+sentinel://` with feature `tls`.
    /// Default: `redis://127.0.0.1:6379`.
    pub url: RedactedUrl,
    /// Streams or pub/sub. Default: stream.
    pub mode: Mode,
    /// Stream mode: trim each stream to about this many entries (`XADD … MAXLEN ~ N`).
    /// Default: none (no trimming).
    pub maxlen: Option<u64>,
    /// Pub/sub mode: the message format. Default: envelope.
    pub pubsub_format: PubsubFormat,
    /// Pub/sub mode: a publish reaching fewer subscribers than this is `Rejected`.
    /// Default: 0 (a message nobody hears is still Ok: that is pub/sub).
    pub min_receivers: u64,
    /// Largest payload accepted; larger ones fail locally with `InvalidEvent` naming
    /// `payload`. Default: 16 MiB (Redis's own limit is 512 MiB).
    pub max_payload_bytes: usize,
    /// Stream mode: after each `XADD` (and after each batch), `WAIT` until this many replicas
    /// acknowledge the write, bounded by `wait_timeout`. A publish that fewer replicas
    /// acknowledge in time fails with `OutcomeUnknown` (retryable: the primary holds the entry,
    /// it may or may not survive a failover). While a connection waits, the publishes pipelined
    /// behind it on that connection wait too (with replicas missing, each `WAIT` takes the whole
    /// `wait_timeout`, one after another per connection). Default: 0 (off: Ok means the entry is in the
    /// primary's memory, not on any replica and not on disk).
    pub wait_replicas: u32,
    /// How long `WAIT` waits for `wait_replicas`. Must stay at least 1 s below
    /// `timeouts.publish`. Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Run a background health check (PING) this often and log transitions; `None` disables.
    /// Default: none.
    #[serde(with = "humantime_serde")]
    pub health_interval: Option<Duration>,
    /// The connection pool. Default: [`PoolConfig::default`]. Connections are multiplexed:
    /// publishes pipeline on the connection the pool handed out last while it answers, and the
    /// pool (at most `max_size` connections) replaces it when it fails or checks it with a
    /// PING after a second idle.
    pub pool: PoolConfig,
    /// Timeouts. `connect` bounds opening a connection, `publish` bounds pool wait plus the
    /// command. Default: [`Timeouts::default`].
    pub timeouts: Timeouts,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            mode: Mode::Stream,
            maxlen: None,
            pubsub_format: PubsubFormat::Envelope,
            min_receivers: 0,
            max_payload_bytes: 16 * 1024 * 1024,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            health_interval: None,
            pool: PoolConfig::default(),
            timeouts: Timeouts::default(),
        }
    }
}

impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Stream => "stream",
            Mode::Pubsub => "pubsub",
        };
        write!(f, "{} (mode {mode})", self.url)
    }
}

fn bad(field: &'static str, msg: impl Into<String>) -> Error {
    Error::config(BACKEND, field, msg.into())
}

impl RedisConfig {
    /// Parses a URL: `redis://[user:password@]host[:port][/db]` (or `rediss://` with feature
    /// `tls`, or a cluster's or sentinels' list of hosts: see [`RedisConfig::url`]) with
    /// optional query parameters `mode=stream|pubsub`, `maxlen=N`,
    /// `format=envelope|payload`, `min_receivers=N`, `max_payload_bytes=N`,
    /// `wait_replicas=N`, `wait_timeout=500ms`, `health_interval=30s`, `pool_max_size=N`, and
    /// redis-rs's own `protocol=resp2|resp3`.
    /// Any other parameter (a misspelling such as `max_len`) is refused.
    ///
    /// # Errors
    /// `Config` naming `url` or the parameter at fault.
    pub fn from_url(url: &str) -> Result<Self> {
        let scheme = check_scheme(url)?;
        // A list of hosts is not one URL to url's parser: the query is split off by hand (after
        // the user information, which may hold a `?`) and the hosts are checked one by one
        // (`topology::hosts`).
        let after_user = topology::split_userinfo(url).1;
        let (base, query) = match after_user.split_once('?') {
            Some((_, query)) => (&url[..url.len() - query.len() - 1], query),
            None => (url, ""),
        };
        let single = match scheme.kind {
            Kind::Single => Some(url::Url::parse(url).map_err(|e| {
                bad("url", format!("malformed Redis URL `{}`", redact(url))).with_source(e)
            })?),
            _ => {
                topology::hosts(url, scheme)?;
                None
            }
        };
        let mut cfg = RedisConfig::default();
        let mut options = UrlOptions::parse(BACKEND, query)?;
        if let Some(mode) = options.take("mode") {
            cfg.mode = match mode.as_str() {
                "stream" => Mode::Stream,
                "pubsub" => Mode::Pubsub,
                other => {
                    return Err(bad(
                        "mode",
                        format!("unknown mode `{other}`: expected stream or pubsub"),
                    ));
                }
            }
        }
        let number = "a valid number";
        cfg.maxlen = options
            .take_parsed("maxlen", "maxlen", number)?
            .or(cfg.maxlen);
        if let Some(format) = options.take("format") {
            cfg.pubsub_format = match format.as_str() {
                "envelope" => PubsubFormat::Envelope,
                "payload" => PubsubFormat::Payload,
                other => {
                    return Err(bad(
                        "pubsub_format",
                        format!("unknown format `{other}`: expected envelope or payload"),
                    ));
                }
            }
        }
        if let Some(n) = options.take_parsed("min_receivers", "min_receivers", number)? {
            cfg.min_receivers = n;
        }
        if let Some(n) = options.take_parsed("max_payload_bytes", "max_payload_bytes", number)? {
            cfg.max_payload_bytes = n;
        }
        if let Some(n) = options.take_parsed("wait_replicas", "wait_replicas", number)? {
            cfg.wait_replicas = n;
        }
        if let Some(d) = options.take_duration("wait_timeout", "wait_timeout")? {
            cfg.wait_timeout = d;
        }
        cfg.health_interval = options
            .take_duration("health_interval", "health_interval")?
            .or(cfg.health_interval);
        if let Some(n) = options.take_parsed("pool_max_size", "pool.max_size", number)? {
            cfg.pool.max_size = n;
        }
        // redis-rs's own parameter, checked here and left in the URL for it.
        let mut passthrough = Vec::new();
        if let Some(protocol) = options.take(PROTOCOL) {
            check_protocol(&protocol)?;
            passthrough.push((PROTOCOL.to_owned(), protocol));
        }
        let known: Vec<&str> = OUR_PARAMS
            .iter()
            .map(|(p, _)| *p)
            .chain([PROTOCOL])
            .collect();
        options.finish(&known)?;
        cfg.url = match single {
            Some(mut parsed) => {
                if passthrough.is_empty() {
                    parsed.set_query(None);
                } else {
                    parsed.query_pairs_mut().clear().extend_pairs(passthrough);
                }
                parsed.to_string().into()
            }
            None => {
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(passthrough)
                    .finish();
                if query.is_empty() {
                    base.into()
                } else {
                    format!("{base}?{query}").into()
                }
            }
        };
        Ok(cfg)
    }

    /// How the URL reaches Redis: one server, a cluster, or sentinels.
    pub fn kind(&self) -> Kind {
        Scheme::of(self.url.expose()).map_or(Kind::Single, |s| s.kind)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// `Config` naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let url = self.url.expose();
        let scheme = check_scheme(url)?;
        if scheme.kind == Kind::Single {
            let parsed = url::Url::parse(url).map_err(|e| {
                bad("url", format!("malformed Redis URL `{}`", self.url)).with_source(e)
            })?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad("url", "the URL has no host"));
            }
        } else {
            topology::hosts(url, scheme)?;
        }
        // A URL that reached us through a config file or the environment (not `from_url`) still
        // carries its query: ours would be silently ignored by redis-rs, so they are refused
        // with the field to set instead.
        let query = topology::split_userinfo(url)
            .1
            .split_once('?')
            .map_or("", |(_, q)| q);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                PROTOCOL => check_protocol(&v)?,
                ours if OUR_PARAMS.iter().any(|(p, _)| *p == ours) => {
                    let field = OUR_PARAMS.iter().find(|(p, _)| *p == ours).map(|(_, f)| *f);
                    return Err(bad(
                        "url",
                        format!(
                            "query parameter `{ours}` is read only by `from_url`; in a config, \
                             set the `{}` field instead",
                            field.unwrap_or(ours)
                        ),
                    ));
                }
                other => return Err(unknown_param(other)),
            }
        }
        self.timeouts.validate(BACKEND)?;
        self.pool.validate(BACKEND)?;
        if self.maxlen == Some(0) {
            return Err(bad(
                "maxlen",
                "must be at least 1 (or unset for no trimming)",
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > REDIS_MAX_BULK {
            return Err(bad(
                "max_payload_bytes",
                format!("must be between 1 and {REDIS_MAX_BULK} (Redis's limit)"),
            ));
        }
        if let Some(interval) = self.health_interval {
            check_timeout(BACKEND, "health_interval", interval)?;
        }
        if scheme.kind == Kind::Cluster && self.min_receivers > 0 {
            return Err(bad(
                "min_receivers",
                "in a Redis Cluster, PUBLISH answers with the subscribers of the one node that \
                 took it, not of the cluster: min_receivers cannot be checked there",
            ));
        }
        if self.wait_replicas > 0 {
            if self.mode != Mode::Stream {
                return Err(bad(
                    "wait_replicas",
                    "pub/sub messages are not stored or replicated: wait_replicas needs mode \
                     stream",
                ));
            }
            // WAIT's timeout is whole milliseconds, and 0 would wait forever.
            if self.wait_timeout < Duration::from_millis(1)
                || self.wait_timeout.saturating_add(Duration::from_secs(1)) > self.timeouts.publish
            {
                return Err(bad(
                    "wait_timeout",
                    format!(
                        "must be from 1 ms to 1 s below timeouts.publish ({:?}), got {:?}",
                        self.timeouts.publish, self.wait_timeout
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// redis-rs's one query parameter for TCP URLs.
const PROTOCOL: &str = "protocol";

/// The query parameters `from_url` reads, and the config field each one sets.
const OUR_PARAMS: &[(&str, &str)] = &[
    ("mode", "mode"),
    ("maxlen", "maxlen"),
    ("format", "pubsub_format"),
    ("min_receivers", "min_receivers"),
    ("max_payload_bytes", "max_payload_bytes"),
    ("wait_replicas", "wait_replicas"),
    ("wait_timeout", "wait_timeout"),
    ("health_interval", "health_interval"),
    ("pool_max_size", "pool.max_size"),
];

fn unknown_param(name: &str) -> Error {
    let known: Vec<&str> = OUR_PARAMS.iter().map(|(p, _)| *p).collect();
    bad(
        "url",
        format!(
            "unknown query parameter `{name}` (known: {}, protocol)",
            known.join(", ")
        ),
    )
}

fn check_protocol(v: &str) -> Result<()> {
    match v {
        "2" | "resp2" | "3" | "resp3" => Ok(()),
        other => Err(bad(
            "url",
            format!("query parameter `protocol={other}`: expected resp2 or resp3"),
        )),
    }
}

/// The URL's scheme, refused when unknown or when it needs TLS and the `tls` feature is off.
fn check_scheme(url: &str) -> Result<Scheme> {
    let plain = |name: &str| {
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    };
    let Some((name, _)) = url.split_once("://").filter(|(name, _)| plain(name)) else {
        return Err(bad(
            "url",
            format!(
                "`{}` is not a Redis URL: expected redis://host:port",
                redact(url)
            ),
        ));
    };
    match Scheme::of(url) {
        Some(scheme) if scheme.tls && !cfg!(feature = "tls") => Err(bad(
            "url",
            format!("{name}:// needs TLS support: enable the `tls` feature of publisher-redis"),
        )),
        Some(scheme) => Ok(scheme),
        None => Err(bad(
            "url",
            format!(
                "unsupported scheme `{name}://`: expected redis://, rediss://, redis+cluster://, \
                 rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher_core::ErrorKind;

    #[test]
    fn url_params_are_taken_and_the_rest_passed_through() {
        let c = RedisConfig::from_url(
            "redis://u:s3cret@localhost:6380/2?mode=pubsub&maxlen=100&protocol=resp3&pool_max_size=4",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Pubsub);
        assert_eq!(c.maxlen, Some(100));
        assert_eq!(c.pool.max_size, 4);
        assert_eq!(c.url, "redis://u:s3cret@localhost:6380/2?protocol=resp3");
        c.validate().unwrap();
    }

    #[test]
    fn password_never_shows() {
        let c = RedisConfig::from_url("redis://user:s3cret@localhost:6379").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.to_string().contains("s3cret"));
        let e = RedisConfig::from_url("redis://user:s3cret@local host:6379").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            ("not a url", "url"),
            ("http://localhost", "url"),
            ("redis://localhost?mode=queue", "mode"),
            ("redis://localhost?maxlen=lots", "maxlen"),
            ("redis://localhost?health_interval=often", "health_interval"),
            ("redis://localhost?format=xml", "pubsub_format"),
            ("redis://localhost?max_len=10", "url"),
            ("redis://localhost?protocol=resp4", "url"),
            ("redis://localhost?wait_timeout=soon", "wait_timeout"),
        ];
        for (url, field) in cases {
            let e = RedisConfig::from_url(url).unwrap_err();
            assert_eq!(
                (e.kind(), e.field()),
                (ErrorKind::Config, Some(field)),
                "{url}: {e}"
            );
        }
        let e = RedisConfig::from_url("redis://localhost?maxlen=0")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("maxlen"));
        let e = RedisConfig::from_url("redis://localhost?pool_max_size=0")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("pool.max_size"));
        for (url, field) in [
            ("redis://h?wait_replicas=1&mode=pubsub", "wait_replicas"),
            ("redis://h?wait_replicas=1&wait_timeout=0s", "wait_timeout"),
            ("redis://h?wait_replicas=1&wait_timeout=10s", "wait_timeout"),
        ] {
            let e = RedisConfig::from_url(url).unwrap().validate().unwrap_err();
            assert_eq!(e.field(), Some(field), "{url}: {e}");
        }
        RedisConfig::from_url("redis://h?wait_replicas=2&wait_timeout=250ms")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn cluster_and_sentinel_urls_list_their_hosts() {
        let c = RedisConfig::from_url(
            "redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001,node3?protocol=resp3&maxlen=5",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.kind(), Kind::Cluster);
        assert_eq!(c.maxlen, Some(5));
        let hosts = topology::hosts(c.url.expose(), Scheme::of(c.url.expose()).unwrap()).unwrap();
        assert_eq!(
            hosts.nodes,
            [
                "redis://u:p%40ss@10.0.0.1:7000?protocol=resp3",
                "redis://u:p%40ss@[::1]:7001?protocol=resp3",
                "redis://u:p%40ss@node3:6379?protocol=resp3",
            ]
        );
        assert!(!format!("{c:?}").contains("p%40ss"), "{c:?}");
        assert!(!c.to_string().contains("p%40ss"), "{c}");

        let c = RedisConfig::from_url("redis+sentinel://:s3cret@s1,s2:26380/mymaster/2").unwrap();
        c.validate().unwrap();
        assert_eq!(c.kind(), Kind::Sentinel);
        let hosts = topology::hosts(c.url.expose(), Scheme::of(c.url.expose()).unwrap()).unwrap();
        assert_eq!(hosts.nodes, ["redis://s1:26379", "redis://s2:26380"]);
        assert_eq!(hosts.master.as_deref(), Some("mymaster"));
        assert_eq!(hosts.db, 2);
        assert_eq!(hosts.password.as_deref(), Some("s3cret"));
        assert!(!format!("{hosts:?}").contains("s3cret"));
    }

    #[test]
    fn bad_cluster_and_sentinel_urls_name_the_field() {
        for url in [
            "redis+cluster://",
            "redis+cluster://h1,,h2",
            "redis+cluster://h1:port",
            "redis+cluster://h1/3",
            "redis+sentinel://s1",
            "redis+sentinel://s1/m/db",
            "redis+sentinel://s1/m/1/x",
            "redis+cluster://h1#frag",
            "redis+mesh://h1",
        ] {
            let e = RedisConfig::from_url(url).unwrap_err();
            assert_eq!(
                (e.kind(), e.field()),
                (ErrorKind::Config, Some("url")),
                "{url}: {e}"
            );
        }
        let e = RedisConfig::from_url("redis+cluster://h1?mode=pubsub&min_receivers=1")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("min_receivers"), "{e}");
        for url in [
            "redis+cluster://u:s3cret@h1,h2:bad",
            "redis+cluster://u:s3/cret@h1,h2:bad",
            "redis+cluster://u:12/s3cret@h1,h2/5",
            "redis+sentinel://u:s3?cret@h1,h2",
            "redis+cluster://u:s3cret",
            "u:s3cret@h:1://x",
        ] {
            let e = RedisConfig::from_url(url).unwrap_err();
            assert!(!e.to_string().contains("s3"), "{url}: {e}");
            assert!(!format!("{e:?}").contains("s3"), "{url}: {e:?}");
        }
        // A password with `/` and `?` (percent-encoded or not) stays the password.
        let c = RedisConfig::from_url("redis+sentinel://:a/b?c@h1,h2/m?maxlen=3").unwrap();
        assert_eq!(c.maxlen, Some(3));
        let hosts = topology::hosts(c.url.expose(), Scheme::of(c.url.expose()).unwrap()).unwrap();
        assert_eq!(hosts.password.as_deref(), Some("a/b?c"));
        assert_eq!(hosts.master.as_deref(), Some("m"));
        let c = RedisConfig::from_url("redis+cluster://u:a/b@h1").unwrap();
        let hosts = topology::hosts(c.url.expose(), Scheme::of(c.url.expose()).unwrap()).unwrap();
        assert_eq!(hosts.nodes, ["redis://u:a%2Fb@h1:6379"]);
    }

    #[test]
    fn a_misspelled_parameter_is_named() {
        let e = RedisConfig::from_url("redis://localhost?max_len=10").unwrap_err();
        assert!(e.message().contains("`max_len`"), "{e}");
        assert!(e.message().contains("maxlen"), "lists the known ones: {e}");
    }

    #[test]
    fn url_parameters_in_a_config_are_refused_not_ignored() {
        let mut c = RedisConfig {
            url: "redis://localhost?maxlen=100".into(),
            ..RedisConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.field(), Some("url"));
        assert!(e.message().contains("`maxlen` field"), "{e}");
        c.url = "redis://localhost?pool_max_size=3".into();
        let e = c.validate().unwrap_err();
        assert!(e.message().contains("`pool.max_size` field"), "{e}");
        c.url = "redis://localhost?max_len=3".into();
        assert!(c.validate().unwrap_err().message().contains("unknown"));
        c.url = "redis://localhost?protocol=resp3".into();
        c.validate().unwrap();
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_tls_says_which_feature() {
        let e = RedisConfig::from_url("rediss://localhost").unwrap_err();
        assert_eq!(e.field(), Some("url"));
        assert!(e.message().contains("`tls` feature"), "{e}");
    }
}
