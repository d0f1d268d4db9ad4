//! [`AmqpConfig`]: URL, routing, delivery, channel pool and timeouts.

use std::fmt;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use publisher_core::config::redact_url as redact;
use publisher_core::{Error, PoolConfig, RedactedUrl, Result, Timeouts, UrlOptions};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

/// Longest exchange name, routing key or header name AMQP 0-9-1 can carry (a short string).
pub const MAX_SHORT_STRING: usize = 255;

/// The type of an exchange declared at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeKind {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern.
    Topic,
    /// Routes by header values.
    Headers,
}

impl ExchangeKind {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            other => Err(Error::config(
                BACKEND,
                "declare_exchange.kind",
                format!(
                    "unknown exchange type `{other}`: expected direct, fanout, topic or headers"
                ),
            )),
        }
    }

    pub(crate) fn to_lapin(self) -> lapin::ExchangeKind {
        match self {
            Self::Direct => lapin::ExchangeKind::Direct,
            Self::Fanout => lapin::ExchangeKind::Fanout,
            Self::Topic => lapin::ExchangeKind::Topic,
            Self::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// An exchange to declare when the publisher is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclare {
    /// The exchange type.
    pub kind: ExchangeKind,
    /// Survives a broker restart. Default: true.
    #[serde(default = "yes")]
    pub durable: bool,
}

fn yes() -> bool {
    true
}

/// Configuration of the AMQP publisher. Missing fields take the documented defaults.
///
/// `Debug` and `Display` never show the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (or `amqps://` with feature `tls`). Several
    /// nodes of a cluster as `amqp://user:password@h1:5672,h2:5672,h3/vhost`: the publisher
    /// connects to the first that answers, and when its connection is lost, to the next that
    /// answers (starting after the one lost), without being rebuilt.
    /// Default: `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: RedactedUrl,
    /// The exchange events are published to; the routing key is the event topic.
    /// Default: `""`, the default exchange (routes to the queue named by the routing key).
    pub exchange: String,
    /// Declare [`exchange`](Self::exchange) at build time. Default: none (it must exist).
    pub declare_exchange: Option<ExchangeDeclare>,
    /// Publish with the mandatory flag: a message no queue receives is returned and reported
    /// as `Rejected`. Default: true.
    pub mandatory: bool,
    /// Persistent delivery mode (2). Default: true.
    pub persistent: bool,
    /// The largest payload sent, in bytes: a larger event fails with `InvalidEvent` (field
    /// `payload`) before anything is sent. RabbitMQ closes the whole channel on a message over
    /// its `max_message_size`, failing every other publish in flight on it, so this must not
    /// exceed the broker's setting. Default: 128 MiB (134,217,728), RabbitMQ's default
    /// `max_message_size`; at most 512 MiB, RabbitMQ's hard limit.
    pub max_message_bytes: usize,
    /// Heartbeat interval negotiated with the broker, whole seconds from 1 to 65535.
    /// A dead connection is detected within about two intervals; after close (or drop) lapin's
    /// heartbeat timer task lingers for up to one interval before it exits. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Connection name shown by the broker (`rabbitmqctl list_connections name`).
    /// Default: `publisher-amqp`.
    pub connection_name: String,
    /// The pool of confirm-mode channels. Default: [`PoolConfig::default`].
    pub pool: PoolConfig,
    /// Timeouts: `connect` bounds connecting (and reconnecting); `publish` bounds channel wait,
    /// send and confirm. Default: [`Timeouts::default`].
    pub timeouts: Timeouts,
}

/// RabbitMQ's default `max_message_size` (128 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;
/// RabbitMQ's hard limit on `max_message_size` (512 MiB).
const MAX_MESSAGE_BYTES_LIMIT: usize = 512 * 1024 * 1024;

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: String::new(),
            declare_exchange: None,
            mandatory: true,
            persistent: true,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            heartbeat: Duration::from_secs(10),
            connection_name: "publisher-amqp".into(),
            pool: PoolConfig::default(),
            timeouts: Timeouts::default(),
        }
    }
}

impl fmt::Display for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} exchange `{}`", self.url, self.exchange)
    }
}

fn bad(field: &'static str, msg: impl Into<String>) -> Error {
    Error::config(BACKEND, field, msg.into())
}

impl AmqpConfig {
    /// Parses `amqp://user:password@host:port/vhost` (or `amqps://`, feature `tls`; several hosts
    /// as `h1:5672,h2:5672`, see [`AmqpConfig::url`]) with optional
    /// query parameters `heartbeat=SECONDS`, `exchange=NAME`, `exchange_type=direct|fanout|topic|headers`
    /// (declares the exchange, durable unless `exchange_durable=false`), `mandatory=BOOL`,
    /// `persistent=BOOL`, `max_message_bytes=N`, `connection_name=NAME`, `pool_max_size=N`.
    ///
    /// # Errors
    /// `Config` naming `url` or the parameter at fault.
    pub fn from_url(url: &str) -> Result<Self> {
        // The query starts at the first `?` after the user information (a password may hold
        // one).
        let after_user = url.rsplit_once('@').map_or(url, |(_, after)| after);
        let (base, query) = match after_user.split_once('?') {
            Some((_, query)) => (&url[..url.len() - query.len() - 1], query),
            None => (url, ""),
        };
        // Each host of a list checked as a URL of its own (the first stands for them all in
        // errors about the scheme).
        for one in single_host_urls(base)? {
            let parsed = url::Url::parse(&one).map_err(|e| {
                bad("url", format!("malformed AMQP URL `{}`", redact(url))).with_source(e)
            })?;
            check_scheme(parsed.scheme())?;
        }
        let mut cfg = AmqpConfig::default();
        let mut options = UrlOptions::parse(BACKEND, query)?;
        if let Some(secs) =
            options.take_parsed::<u64>("heartbeat", "heartbeat", "a number of seconds")?
        {
            cfg.heartbeat = Duration::from_secs(secs);
        }
        if let Some(exchange) = options.take("exchange") {
            cfg.exchange = exchange;
        }
        let exchange_type = options
            .take("exchange_type")
            .map(|v| ExchangeKind::parse(&v))
            .transpose()?;
        let exchange_durable = options
            .take_bool("exchange_durable", "exchange_durable")?
            .unwrap_or(true);
        if let Some(v) = options.take_bool("mandatory", "mandatory")? {
            cfg.mandatory = v;
        }
        if let Some(v) = options.take_bool("persistent", "persistent")? {
            cfg.persistent = v;
        }
        if let Some(n) = options.take_parsed(
            "max_message_bytes",
            "max_message_bytes",
            "a number of bytes",
        )? {
            cfg.max_message_bytes = n;
        }
        if let Some(name) = options.take("connection_name") {
            cfg.connection_name = name;
        }
        if let Some(n) = options.take_parsed("pool_max_size", "pool.max_size", "a number")? {
            cfg.pool.max_size = n;
        }
        options.finish(&[
            "heartbeat",
            "exchange",
            "exchange_type",
            "exchange_durable",
            "mandatory",
            "persistent",
            "max_message_bytes",
            "connection_name",
            "pool_max_size",
        ])?;
        cfg.declare_exchange = exchange_type.map(|kind| ExchangeDeclare {
            kind,
            durable: exchange_durable,
        });
        cfg.url = base.into();
        Ok(cfg)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// `Config` naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.uris()?;
        self.timeouts.validate(BACKEND)?;
        self.pool.validate(BACKEND)?;
        if self.exchange.len() > MAX_SHORT_STRING {
            return Err(bad("exchange", "exchange names are at most 255 bytes"));
        }
        if self.declare_exchange.is_some() && self.exchange.is_empty() {
            return Err(bad(
                "declare_exchange",
                "the default exchange cannot be declared: set `exchange` to a name",
            ));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
            return Err(bad(
                "max_message_bytes",
                "must be between 1 byte and 512 MiB (RabbitMQ's hard limit)",
            ));
        }
        if self.connection_name.len() > MAX_SHORT_STRING {
            return Err(bad("connection_name", "at most 255 bytes"));
        }
        let hb = self.heartbeat;
        if hb.is_zero() {
            return Err(bad(
                "heartbeat",
                "0 disables heartbeats, so a dead connection would go unnoticed until the OS \
                 gives up: use at least 1 second",
            ));
        }
        if hb.subsec_nanos() != 0 || hb.as_secs() > u64::from(u16::MAX) {
            return Err(bad(
                "heartbeat",
                "AMQP heartbeats are whole seconds from 1 to 65535",
            ));
        }
        Ok(())
    }

    /// The lapin URI, built from our own parse of the URL: amq-protocol's parser reads the
    /// host with `Url::domain()`, which is `None` for IP literals (`[::1]`, `10.0.0.5`), and so
    /// silently connects to `localhost` instead. We take `Url::host()` and keep literals.
    pub(crate) fn uris(&self) -> Result<Vec<AMQPUri>> {
        single_host_urls(self.url.expose())?
            .iter()
            .map(|one| self.uri_of(one))
            .collect()
    }

    /// The first host's URI (tests).
    #[cfg(test)]
    pub(crate) fn uri(&self) -> Result<AMQPUri> {
        self.uris().map(|mut u| u.remove(0))
    }

    fn uri_of(&self, one: &str) -> Result<AMQPUri> {
        let url = url::Url::parse(one)
            .map_err(|e| bad("url", format!("malformed AMQP URL `{}`", self.url)).with_source(e))?;
        if url.query().is_some() {
            return Err(bad(
                "url",
                "a URL in a config carries no query: set the config's fields instead",
            ));
        }
        check_scheme(url.scheme())?;
        let tls = url.scheme() == "amqps";
        let scheme = if tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("url", "the URL has no host")),
        };
        let default = AMQPUri::default();
        let username = match url.username() {
            "" => default.authority.userinfo.username,
            u => percent_decode(u)?,
        };
        let password = match url.password() {
            None => default.authority.userinfo.password,
            Some(p) => percent_decode(p)?,
        };
        let vhost = match url.path() {
            "" | "/" => "/".to_owned(),
            p => percent_decode(&p[1..])?,
        };
        Ok(AMQPUri {
            scheme,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host,
                port: url.port().unwrap_or(if tls { 5671 } else { 5672 }),
            },
            vhost,
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat.as_secs() as u16),
                connection_timeout: Some(self.timeouts.connect.as_millis() as u64),
                ..Default::default()
            },
        })
    }
}

/// `scheme://[user:password@]h1[:port],h2[:port],…[/vhost]` as one URL per host, user and
/// vhost repeated; a URL with one host is returned as it is.
///
/// # Errors
/// `Config` naming `url` for an empty host in the list.
fn single_host_urls(url: &str) -> Result<Vec<String>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(vec![url.to_owned()]);
    };
    // The user information first, up to the last `@` (a password may hold `/` or `?`).
    let (userinfo, after) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => (format!("{userinfo}@"), after),
        None => (String::new(), rest),
    };
    let hosts_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (hosts, tail) = after.split_at(hosts_end);
    if !hosts.contains(',') {
        return Ok(vec![url.to_owned()]);
    }
    hosts
        .split(',')
        .map(|host| {
            if host.is_empty() {
                Err(bad(
                    "url",
                    "an empty host in the URL's list: expected host[:port] joined by `,`",
                ))
            } else {
                Ok(format!("{scheme}://{userinfo}{host}{tail}"))
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            bad(
                "url",
                "the URL's user, password or vhost is not valid UTF-8",
            )
        })
}

fn check_scheme(scheme: &str) -> Result<()> {
    match scheme {
        "amqp" => Ok(()),
        "amqps" if cfg!(feature = "tls") => Ok(()),
        "amqps" => Err(bad(
            "url",
            "amqps:// needs TLS support: enable the `tls` feature of publisher-amqp",
        )),
        other => Err(bad(
            "url",
            format!("unsupported scheme `{other}://`: expected amqp:// or amqps://"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_are_one_uri_each() {
        let c =
            AmqpConfig::from_url("amqp://u:p%40ss@h1:5673,[::1],10.0.0.3:5674/v%2Fh?heartbeat=5")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        let uris = c.uris().unwrap();
        let hosts: Vec<_> = uris
            .iter()
            .map(|u| (u.authority.host.as_str(), u.authority.port))
            .collect();
        assert_eq!(hosts, [("h1", 5673), ("::1", 5672), ("10.0.0.3", 5674)]);
        for u in &uris {
            assert_eq!(u.authority.userinfo.password, "p@ss");
            assert_eq!(u.vhost, "v/h");
        }
        assert!(!format!("{c:?}").contains("p%40ss"), "{c:?}");
        // A password holding `/` or `?` must be percent-encoded; unencoded, it is refused
        // without being shown, never taken for a host, path or query.
        let c = AmqpConfig::from_url("amqp://u:s3%2Fc%3Fr@h1,h2/%2f?heartbeat=3").unwrap();
        assert_eq!(c.heartbeat, Duration::from_secs(3));
        for u in c.uris().unwrap() {
            assert_eq!(u.authority.userinfo.password, "s3/c?r");
        }
        for url in [
            "amqp://u:s3/c?r@h1,h2/%2f",
            "amqp://u:s3?cr@h1,h2/%2f?heartbeat=3",
        ] {
            let e = AmqpConfig::from_url(url).unwrap_err();
            assert_eq!(e.field(), Some("url"), "{url}: {e}");
            assert!(!format!("{e} {e:?}").contains("s3"), "{url}: {e:?}");
        }
        for url in ["amqp://h1,,h2/%2f", "amqp://h1,h2:port/%2f", "amqp://,/%2f"] {
            let e = AmqpConfig::from_url(url).unwrap_err();
            assert_eq!(e.field(), Some("url"), "{url}: {e}");
        }
    }

    #[test]
    fn ip_literals_are_kept_not_replaced_by_localhost() {
        for (url, host) in [
            ("amqp://u:p@[::1]:5673/%2f", "::1"),
            ("amqp://u:p@[fe80::1]/%2f", "fe80::1"),
            ("amqp://10.1.2.3/%2f", "10.1.2.3"),
            ("amqp://rabbit.internal:5672/%2f", "rabbit.internal"),
        ] {
            let uri = AmqpConfig::from_url(url).unwrap().uri().unwrap();
            assert_eq!(uri.authority.host, host, "{url}");
        }
        let uri = AmqpConfig::from_url("amqp://u:p%40ss@[::1]:5673/my%2Fvhost")
            .unwrap()
            .uri()
            .unwrap();
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(uri.vhost, "my/vhost");
        let uri = AmqpConfig::from_url("amqp://h/%2f").unwrap().uri().unwrap();
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.userinfo.username, "guest");
    }
}
