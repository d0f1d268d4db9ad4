//! [`from_url`]: any enabled backend from one URL.

use std::sync::Arc;

use publisher_core::backend::Opening;
use publisher_core::{Error, MemoryPublisher, Publisher, Result};

/// The facade's name in errors that belong to no backend.
pub const FACADE: &str = "publisher";

/// How a registered backend opens one of its URLs (each backend crate's `open`).
type Open = for<'a> fn(&'a str) -> Opening<'a>;

/// One scheme the facade knows: the feature that enables it (`None`: always on) and, when this
/// build has that feature, how to open it.
struct Registered {
    scheme: &'static str,
    feature: Option<&'static str>,
    open: Option<Open>,
}

/// A row of [`REGISTRY`]: the scheme, the `publisher` feature, and the backend crate's `open`,
/// which is only named when the feature is on.
macro_rules! registered {
    ($scheme:literal, $feature:literal, $open:path) => {
        Registered {
            scheme: $scheme,
            feature: Some($feature),
            #[cfg(feature = $feature)]
            open: Some($open as Open),
            #[cfg(not(feature = $feature))]
            open: None,
        }
    };
}

/// Every backend the facade can open, once: `from_url`, [`enabled_schemes`] and the errors
/// naming a missing feature all read this table. Registering a backend is a row here (with
/// its feature in `Cargo.toml`).
const REGISTRY: &[Registered] = &[
    registered!("console", "console", publisher_console::open),
    Registered {
        scheme: "memory",
        feature: None,
        open: Some(open_memory as Open),
    },
    registered!("redis", "redis", publisher_redis::open),
    registered!("rediss", "redis-tls", publisher_redis::open),
    registered!("amqp", "amqp", publisher_amqp::open),
    registered!("amqps", "amqp-tls", publisher_amqp::open),
    registered!("kafka", "kafka", publisher_kafka::open),
    registered!("nats", "nats", publisher_nats::open),
    registered!("tls", "nats", publisher_nats::open),
];

fn open_memory(_url: &str) -> Opening<'_> {
    Box::pin(async { Ok(Box::new(MemoryPublisher::new()) as Box<dyn Publisher>) })
}

/// The schemes this build accepts.
pub fn enabled_schemes() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|r| r.open.is_some())
        .map(|r| r.scheme)
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
    let Some(row) = REGISTRY.iter().find(|r| r.scheme == scheme) else {
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
    let Some(open) = row.open else {
        let feature = row.feature.unwrap_or_default();
        return Err(Error::config(
            FACADE,
            "url",
            format!(
                "`{scheme}://` needs feature `{feature}` of the `publisher` crate, which is not \
                 enabled in this build"
            ),
        ));
    };
    open(url).await
}

/// As [`from_url`], shared.
///
/// # Errors
/// As [`from_url`].
pub async fn from_url_arc(url: &str) -> Result<Arc<dyn Publisher>> {
    from_url(url).await.map(Arc::from)
}

/// Hides `user:password@` in a string that failed to parse as a URL.
fn redact_userinfo(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => s.to_owned(),
    }
}
