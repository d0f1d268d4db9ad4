//! [`from_url`]: any enabled backend from one URL.

use std::sync::Arc;

use publisher_core::backend::Opening;
use publisher_core::{Error, Publisher, Result};

use crate::backends::REGISTRY;

/// The facade's name in errors that belong to no backend.
pub const FACADE: &str = "publisher";

/// How a registered backend opens one of its URLs ([`open`](publisher_core::backend::open)).
pub(crate) type Open = for<'a> fn(&'a str) -> Opening<'a>;

/// One scheme the facade knows: the feature that enables it and, when this build has that
/// feature, how to open it. The rows come from the backend table in `backends.rs`.
pub(crate) struct Registered {
    pub(crate) scheme: &'static str,
    pub(crate) feature: &'static str,
    pub(crate) open: Option<Open>,
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
/// | `redis+cluster://h1:p1,h2:p2,…`, `rediss+cluster://…` | Redis Cluster | `redis`, `redis-tls` |
/// | `redis+sentinel://s1:p1,s2:p2,…/master[/db]`, `rediss+sentinel://…` | Redis through sentinels | `redis`, `redis-tls` |
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
        let feature = row.feature;
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
