//! The backend table: every backend the facade knows, once. `from_url`, `enabled_schemes`,
//! the errors naming a missing feature, [`PublisherConfig`] and its `build` are all generated
//! from it. Registering a backend is one row here (with its feature in `Cargo.toml`).

use publisher_core::Backend;
use publisher_core::backend::{open, open_config};
use serde::{Deserialize, Serialize};

use crate::from_url::{Open, Registered};

/// One scheme's row: the backend's feature, or the scheme's own (`"rediss" @ "redis-tls"`).
macro_rules! scheme {
    ($scheme:literal; $backend:path; $name:literal; $cfg:meta) => {
        Registered {
            scheme: $scheme,
            feature: $name,
            #[cfg($cfg)]
            open: Some(open::<$backend> as Open),
            #[cfg(not($cfg))]
            open: None,
        }
    };
    ($scheme:literal @ $feature:literal; $backend:path; $name:literal; $cfg:meta) => {
        Registered {
            scheme: $scheme,
            feature: $feature,
            #[cfg(feature = $feature)]
            open: Some(open::<$backend> as Open),
            #[cfg(not(feature = $feature))]
            open: None,
        }
    };
}

macro_rules! backends {
    ($(
        $variant:ident($backend:path) $name:literal if $cfg:meta,
        [$($scheme:literal $(@ $feature:literal)?),+];
    )*) => {
        /// Which backend to build and how. One table (or environment prefix) per backend,
        /// holding that backend's config:
        ///
        /// ```toml
        /// [redis]
        /// url = "redis://127.0.0.1:6379"
        /// mode = "stream"
        /// pool = { max_size = 8, wait_timeout = "2s" }
        /// timeouts = { publish = "5s" }
        /// ```
        ///
        /// or, from the environment, `PUBLISHER__REDIS__URL=redis://127.0.0.1:6379` and
        /// `PUBLISHER__REDIS__POOL__MAX_SIZE=8`. `url = "…"` alone (or `PUBLISHER__URL`) defers
        /// to [`from_url`](crate::from_url).
        #[derive(Clone, PartialEq, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum PublisherConfig {
            /// A URL for [`from_url`](crate::from_url).
            #[serde(rename = "url")]
            Url(String),
            $(
                #[doc = concat!("The `", $name, "` backend's config.")]
                #[cfg($cfg)]
                #[serde(rename = $name)]
                $variant(<$backend as Backend>::Config),
            )*
        }

        /// Every backend's config redacts its own secrets; a raw URL shows with its password
        /// hidden.
        impl std::fmt::Debug for PublisherConfig {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    PublisherConfig::Url(url) => f
                        .debug_tuple("Url")
                        .field(&publisher_core::RedactedUrl::new(url.as_str()))
                        .finish(),
                    $(
                        #[cfg($cfg)]
                        PublisherConfig::$variant(c) => {
                            f.debug_tuple(stringify!($variant)).field(c).finish()
                        }
                    )*
                }
            }
        }

        impl PublisherConfig {
            /// Builds the publisher this configuration describes.
            ///
            /// # Errors
            /// The backend's build errors.
            pub async fn build(self) -> publisher_core::Result<Box<dyn publisher_core::Publisher>> {
                match self {
                    PublisherConfig::Url(url) => crate::from_url(&url).await,
                    $(
                        #[cfg($cfg)]
                        PublisherConfig::$variant(c) => open_config::<$backend>(c).await,
                    )*
                }
            }
        }

        /// Every scheme the facade can open, with the feature that enables it.
        pub(crate) const REGISTRY: &[Registered] = &[
            $($(
                scheme!($scheme $(@ $feature)?; $backend; $name; $cfg),
            )+)*
        ];
    };
}

backends! {
    Memory(publisher_core::MemoryBackend) "memory" if all(), ["memory"];
    Console(publisher_console::ConsoleBackend) "console" if feature = "console", ["console"];
    Redis(publisher_redis::RedisBackend) "redis" if feature = "redis", ["redis", "rediss" @ "redis-tls", "redis+cluster", "rediss+cluster" @ "redis-tls", "redis+sentinel", "rediss+sentinel" @ "redis-tls"];
    Amqp(publisher_amqp::AmqpBackend) "amqp" if feature = "amqp", ["amqp", "amqps" @ "amqp-tls"];
    Kafka(publisher_kafka::KafkaBackend) "kafka" if feature = "kafka", ["kafka"];
    Nats(publisher_nats::NatsBackend) "nats" if feature = "nats", ["nats", "tls"];
}
