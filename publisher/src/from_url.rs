//! [`from_url`]: any enabled backend from one URL.

use std::sync::Arc;

use publisher_core::{Error, MemoryPublisher, Publisher, Result};

/// The facade's name in errors that belong to no backend.
pub const FACADE: &str = "publisher";

/// Every scheme this facade knows, with the feature that enables it (`None`: always on).
const SCHEMES: &[(&str, Option<&str>)] = &[
    ("console", Some("console")),
    ("memory", None),
    ("redis", Some("redis")),
    ("rediss", Some("redis-tls")),
    ("amqp", Some("amqp")),
    ("amqps", Some("amqp-tls")),
    ("kafka", Some("kafka")),
    ("nats", Some("nats")),
    ("tls", Some("nats")),
];

fn enabled(feature: Option<&str>) -> bool {
    match feature {
        None => true,
        Some("console") => cfg!(feature = "console"),
        Some("redis") => cfg!(feature = "redis"),
        Some("redis-tls") => cfg!(feature = "redis-tls"),
        Some("amqp") => cfg!(feature = "amqp"),
        Some("amqp-tls") => cfg!(feature = "amqp-tls"),
        Some("kafka") => cfg!(feature = "kafka"),
        Some("nats") => cfg!(feature = "nats"),
        Some(_) => false,
    }
}

/// The schemes this build accepts.
pub fn enabled_schemes() -> Vec<&'static str> {
    SCHEMES
        .iter()
        .filter(|(_, f)| enabled(*f))
        .map(|(s, _)| *s)
        .collect()
}

/// Builds the publisher a URL names:
///
/// | scheme | backend | feature |
/// |---|---|---|
/// | `console://stdout`, `console://stderr`, `console:///path` | console | `console` (default) |
/// | `memory://` | in-memory | always |
/// | `redis://`, `rediss://` | Redis | `redis`, `redis-tls` |
/// | `amqp://`, `amqps://` | RabbitMQ | `amqp`, `amqp-tls` |
/// | `kafka://host:port[,host:port…]` | Kafka | `kafka` |
/// | `nats://`, `tls://` | NATS JetStream | `nats` |
///
/// Each backend's URL parameters are documented on its config's `from_url`.
///
/// # Errors
/// `Config` naming `url` when the scheme is unknown (listing the enabled ones) or compiled out
/// (naming the feature to enable); otherwise the backend's own build errors.
pub async fn from_url(url: &str) -> Result<Box<dyn Publisher>> {
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .ok_or_else(|| {
            Error::config(
                FACADE,
                "url",
                format!(
                    "`{}` is not a URL: expected SCHEME://…, one of {}",
                    redact_userinfo(url),
                    enabled_schemes().join(", ")
                ),
            )
        })?;
    let Some((_, feature)) = SCHEMES.iter().find(|(s, _)| *s == scheme) else {
        return Err(Error::config(
            FACADE,
            "url",
            format!(
                "unknown scheme `{scheme}://`; this build supports {}",
                enabled_schemes()
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if !enabled(*feature) {
        let feature = feature.unwrap_or_default();
        return Err(Error::config(
            FACADE,
            "url",
            format!(
                "`{scheme}://` needs feature `{feature}` of the `publisher` crate, which is not \
                 enabled in this build"
            ),
        ));
    }
    build(&scheme, url).await
}

/// As [`from_url`], shared.
///
/// # Errors
/// As [`from_url`].
pub async fn from_url_arc(url: &str) -> Result<Arc<dyn Publisher>> {
    from_url(url).await.map(Arc::from)
}

#[allow(clippy::needless_return)]
async fn build(scheme: &str, url: &str) -> Result<Box<dyn Publisher>> {
    match scheme {
        "memory" => return Ok(Box::new(MemoryPublisher::new())),
        #[cfg(feature = "console")]
        "console" => {
            return Ok(Box::new(publisher_console::ConsolePublisher::from_url(
                url,
            )?));
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            return Ok(Box::new(publisher_redis::RedisPublisher::from_url(url)?));
        }
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => {
            return Ok(Box::new(
                publisher_amqp::AmqpPublisher::from_url(url).await?,
            ));
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            return Ok(Box::new(publisher_kafka::KafkaPublisher::from_url(url)?));
        }
        #[cfg(feature = "nats")]
        "nats" | "tls" => {
            return Ok(Box::new(
                publisher_nats::NatsPublisher::from_url(url).await?,
            ));
        }
        _ => {}
    }
    let _ = url;
    Err(Error::config(
        FACADE,
        "url",
        format!("`{scheme}://` is not available in this build"),
    ))
}

/// Hides `user:password@` in a string that failed to parse as a URL.
fn redact_userinfo(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => s.to_owned(),
    }
}
