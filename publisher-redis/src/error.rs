//! Mapping redis-rs and deadpool errors onto [`publisher_core::Error`].

use deadpool::managed::{PoolError, TimeoutType};
use publisher_core::{Error, ErrorKind};
use redis::RedisError;

use crate::BACKEND;

/// Server error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    // A cluster's redirections, left after the retries within the publish timeout.
    "MOVED",
    "ASK",
    "READONLY",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "OOM",
    "NOREPLICAS",
];

pub(crate) fn from_redis(e: RedisError) -> Error {
    let (kind, msg, retryable) = if e.is_timeout() {
        (
            ErrorKind::Timeout,
            "Redis did not answer in time".to_owned(),
            true,
        )
    } else if e.is_connection_refusal() {
        (
            ErrorKind::Connect,
            "Redis refused the connection".to_owned(),
            true,
        )
    } else if e.is_connection_dropped() || e.is_io_error() {
        (
            ErrorKind::Connect,
            "the connection to Redis failed".to_owned(),
            true,
        )
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        (
            ErrorKind::Connect,
            "Redis refused the credentials".to_owned(),
            false,
        )
    } else if matches!(
        e.kind(),
        redis::ErrorKind::MasterNameNotFoundBySentinel
            | redis::ErrorKind::NoValidReplicasFoundBySentinel
    ) {
        (
            ErrorKind::Unavailable,
            "no sentinel names a reachable master (a failover may be under way)".to_owned(),
            true,
        )
    } else if e.kind() == redis::ErrorKind::ClusterConnectionNotFound {
        (
            ErrorKind::Connect,
            "no connection to the cluster node serving the key".to_owned(),
            true,
        )
    } else if e.kind() == redis::ErrorKind::InvalidClientConfig {
        (
            ErrorKind::Config,
            "the Redis client configuration is invalid".to_owned(),
            false,
        )
    } else if let Some(code) = e.code() {
        let code = code.to_owned();
        if TRANSIENT_CODES.contains(&code.as_str()) {
            (
                ErrorKind::Unavailable,
                format!("Redis is temporarily unable to accept writes ({code})"),
                true,
            )
        } else if matches!(code.as_str(), "NOAUTH" | "WRONGPASS" | "NOPERM") {
            (
                ErrorKind::Connect,
                format!("Redis refused the credentials or permissions ({code})"),
                false,
            )
        } else {
            (
                ErrorKind::Rejected,
                format!("Redis rejected the command ({code})"),
                false,
            )
        }
    } else {
        (
            ErrorKind::Other,
            format!("Redis command failed ({})", e.category()),
            false,
        )
    };
    Error::new(kind, BACKEND, msg)
        .with_retryable(retryable)
        .with_source(e)
}

/// The error of a command that was (or may have been) written to Redis: a timeout or a
/// connection lost before the reply leaves its outcome unknown (the command may have run).
pub(crate) fn from_command(e: RedisError) -> Error {
    if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() {
        let msg = if e.is_timeout() {
            "Redis did not answer in time; the command may or may not have run"
        } else {
            "the connection to Redis was lost before the reply; the command may or may not have run"
        };
        return Error::outcome_unknown(BACKEND, msg).with_source(e);
    }
    from_redis(e)
}

pub(crate) fn from_pool(e: PoolError<RedisError>) -> Error {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            "no pooled Redis connection became free within pool.wait_timeout",
        )
        .with_field("pool.wait_timeout"),
        PoolError::Timeout(TimeoutType::Create) => {
            Error::new(ErrorKind::Connect, BACKEND, "connecting to Redis timed out")
                .with_retryable(true)
        }
        PoolError::Timeout(TimeoutType::Recycle) => Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            "checking a pooled Redis connection timed out",
        ),
        PoolError::Backend(e) => from_redis(e),
        PoolError::Closed => Error::closed(BACKEND),
        PoolError::NoRuntimeSpecified => Error::new(
            ErrorKind::Config,
            BACKEND,
            "the connection pool has no runtime",
        ),
        PoolError::PostCreateHook(e) => Error::new(
            ErrorKind::Connect,
            BACKEND,
            format!("connection setup failed: {e}"),
        ),
    }
}
