//! Configuration shared by every backend: [`Timeouts`] and [`PoolConfig`].
//!
//! Both are serde structs whose missing fields take the documented defaults. Durations are
//! written the humantime way in files and environment variables (`"5s"`, `"250ms"`).
//! Values are checked by `validate`, which every backend's `build()` calls: zero or absurd
//! values are a [`ErrorKind::Config`](crate::ErrorKind::Config) error naming the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest any configured timeout may be: one hour. Longer is taken for a mistake.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest pool accepted.
pub const MAX_POOL_SIZE: usize = 4096;

/// Every wait a publisher makes is bounded by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Establishing a connection to the broker. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// One `publish` (or a whole `publish_batch`), from call to broker confirmation, including
    /// waiting for a pooled connection. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub publish: Duration,
    /// Draining in-flight publishes at `close`; what is still in flight afterwards is
    /// abandoned and reported. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub close: Duration,
    /// One health check. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub health: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            publish: Duration::from_secs(10),
            close: Duration::from_secs(30),
            health: Duration::from_secs(2),
        }
    }
}

impl Timeouts {
    /// Sets [`Timeouts::connect`].
    pub fn with_connect(mut self, d: Duration) -> Self {
        self.connect = d;
        self
    }
    /// Sets [`Timeouts::publish`].
    pub fn with_publish(mut self, d: Duration) -> Self {
        self.publish = d;
        self
    }
    /// Sets [`Timeouts::close`].
    pub fn with_close(mut self, d: Duration) -> Self {
        self.close = d;
        self
    }
    /// Sets [`Timeouts::health`].
    pub fn with_health(mut self, d: Duration) -> Self {
        self.health = d;
        self
    }

    /// Checks every timeout is above zero and at most [`MAX_TIMEOUT`].
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `timeouts.<field>`.
    pub fn validate(&self, backend: &'static str) -> Result<()> {
        for (field, d) in [
            ("timeouts.connect", self.connect),
            ("timeouts.publish", self.publish),
            ("timeouts.close", self.close),
            ("timeouts.health", self.health),
        ] {
            check_timeout(backend, field, d)?;
        }
        Ok(())
    }
}

/// A connection (or channel) pool's size and waits.
///
/// Where the backend's connection takes concurrent commands (a multiplexed Redis connection,
/// an AMQP channel), publishes share one of them ([`SharedHandle`](crate::SharedHandle)) and go
/// to the pool only when it must be replaced: `max_size` bounds the connections (channels)
/// opened, not the publishes in flight, and the waits apply to replacing the shared one. A pool
/// lent by the caller is used one checkout per command, as its owner may expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Most connections (or channels) open at once. Default: 16.
    pub max_size: usize,
    /// Waiting for a connection from the pool when all are in use. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Creating a new connection. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub create_timeout: Duration,
    /// Checking a returned connection is still usable. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub recycle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(2),
        }
    }
}

impl PoolConfig {
    /// Sets [`PoolConfig::max_size`].
    pub fn with_max_size(mut self, n: usize) -> Self {
        self.max_size = n;
        self
    }
    /// Sets [`PoolConfig::wait_timeout`].
    pub fn with_wait_timeout(mut self, d: Duration) -> Self {
        self.wait_timeout = d;
        self
    }
    /// Sets [`PoolConfig::create_timeout`].
    pub fn with_create_timeout(mut self, d: Duration) -> Self {
        self.create_timeout = d;
        self
    }
    /// Sets [`PoolConfig::recycle_timeout`].
    pub fn with_recycle_timeout(mut self, d: Duration) -> Self {
        self.recycle_timeout = d;
        self
    }

    /// Checks the size is 1..=[`MAX_POOL_SIZE`] and every timeout is above zero and at most
    /// [`MAX_TIMEOUT`].
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `pool.<field>`.
    pub fn validate(&self, backend: &'static str) -> Result<()> {
        if self.max_size == 0 || self.max_size > MAX_POOL_SIZE {
            return Err(Error::config(
                backend,
                "pool.max_size",
                format!(
                    "must be between 1 and {MAX_POOL_SIZE}, got {}",
                    self.max_size
                ),
            ));
        }
        for (field, d) in [
            ("pool.wait_timeout", self.wait_timeout),
            ("pool.create_timeout", self.create_timeout),
            ("pool.recycle_timeout", self.recycle_timeout),
        ] {
            check_timeout(backend, field, d)?;
        }
        Ok(())
    }
}

/// `url` with its password replaced by `***`, for `Debug`, `Display` and error messages; a
/// user name without a password is hidden too (NATS and some hosted brokers take a token
/// there). A URL that does not parse shows only its scheme and, for a list of hosts
/// (`redis+cluster://***@h1:7000,h2:7001/…`), the hosts, so no secret can leak through it.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        // A "URL" with no authority (`u:s3cret@h:1://x` parses as scheme `u` and an opaque
        // path) shows nothing of itself.
        Ok(u) if u.cannot_be_a_base() || !url.contains("://") => "<unparseable>".into(),
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            } else if !u.username().is_empty() {
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        Err(_) => match url.split_once("://") {
            // A list of hosts (`redis+cluster://u:p@h1:7000,h2:7001`) does not parse as one
            // URL: its hosts are shown, what precedes the last `@` is hidden, and what follows
            // the hosts (a path, a query) is elided.
            Some((scheme, rest)) => {
                let after_user = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                let hosts = authority_of(after_user);
                // Shown only when every item is `host[:port]`, the port digits: `u:s3cret`
                // (a host forgotten after a password) is not a list of hosts.
                let listed = !hosts.is_empty() && hosts.split(',').all(host_and_port);
                let plain_scheme = scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
                if !plain_scheme {
                    return "<unparseable>".into();
                }
                if !listed {
                    return format!("{scheme}://<unparseable>");
                }
                let user = if rest.contains('@') { "***@" } else { "" };
                let more = if hosts.len() < after_user.len() {
                    "/…"
                } else {
                    ""
                };
                format!("{scheme}://{user}{hosts}{more}")
            }
            None => "<unparseable>".into(),
        },
    }
}

/// Whether `item` is `name[:digits]` or `[ipv6][:digits]`, the name of letters, digits,
/// `.`, `-` and `_`.
fn host_and_port(item: &str) -> bool {
    let (host, port) = match item.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, rest))
                if !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') =>
            {
                match rest.strip_prefix(':') {
                    Some(port) => return port.bytes().all(|b| b.is_ascii_digit()),
                    None => return rest.is_empty(),
                }
            }
            _ => return false,
        },
        None => item.split_once(':').unwrap_or((item, "")),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// The authority of `rest`, the part of a URL after `scheme://`: up to the first `/`, `?`
/// or `#`.
fn authority_of(rest: &str) -> &str {
    rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end])
}

/// Checks one duration is above zero and at most [`MAX_TIMEOUT`]; backends use it for their own
/// duration fields.
///
/// # Errors
/// [`ErrorKind::Config`](crate::ErrorKind::Config) naming `field`.
pub fn check_timeout(backend: &'static str, field: &'static str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::config(backend, field, "must be greater than zero"));
    }
    if d > MAX_TIMEOUT {
        return Err(Error::config(
            backend,
            field,
            format!(
                "must be at most {}, got {}",
                humantime::format_duration(MAX_TIMEOUT),
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(
            redact_url("nats://s3cret-token@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(
            redact_url("redis://u:s3cret@bad host"),
            "redis://<unparseable>"
        );
        // Lists of hosts do not parse as one URL: the hosts show, the secret does not.
        for (url, shown) in [
            (
                "redis+cluster://u:s3cret@h1:7000,h2:7001",
                "redis+cluster://***@h1:7000,h2:7001",
            ),
            (
                "redis+sentinel://:s3c@ret@[::1]:26379,s2/mymaster?x=s3cret",
                "redis+sentinel://***@[::1]:26379,s2/…",
            ),
            (
                "redis+cluster://h1:7000,h2:7001",
                "redis+cluster://h1:7000,h2:7001",
            ),
            ("u:s3cret@h:1://x", "<unparseable>"),
            ("redis://:s3cret", "redis://<unparseable>"),
            ("redis://u:s3cret", "redis://<unparseable>"),
            (
                "redis+cluster://h1:7000,u:s3cret",
                "redis+cluster://<unparseable>",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn defaults_validate() {
        Timeouts::default().validate("t").unwrap();
        PoolConfig::default().validate("t").unwrap();
    }

    #[test]
    fn zero_and_absurd_values_name_the_field() {
        let e = Timeouts::default()
            .with_publish(Duration::ZERO)
            .validate("t")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.field(), Some("timeouts.publish"));
        let e = Timeouts::default()
            .with_close(Duration::from_secs(86_400))
            .validate("t")
            .unwrap_err();
        assert_eq!(e.field(), Some("timeouts.close"));
        let e = PoolConfig::default()
            .with_max_size(0)
            .validate("t")
            .unwrap_err();
        assert_eq!(e.field(), Some("pool.max_size"));
        let e = PoolConfig::default()
            .with_wait_timeout(Duration::ZERO)
            .validate("t")
            .unwrap_err();
        assert_eq!(e.field(), Some("pool.wait_timeout"));
    }

    #[test]
    fn serde_takes_humantime_and_defaults() {
        let t: Timeouts = serde_json::from_str(r#"{"publish":"250ms"}"#).unwrap();
        assert_eq!(t.publish, Duration::from_millis(250));
        assert_eq!(t.connect, Timeouts::default().connect);
        let e = serde_json::from_str::<PoolConfig>(r#"{"max_sise":3}"#).unwrap_err();
        assert!(e.to_string().contains("max_sise"), "{e}");
    }
}
