//! Mapping lapin and deadpool errors onto [`publisher_core::Error`].

use deadpool::managed::{PoolError, TimeoutType};
use lapin::ErrorKind as LapinKind;
use publisher_core::{Error, ErrorKind};

use crate::BACKEND;

/// The error of a publish whose message was handed to the channel but whose confirm never came:
/// RabbitMQ may or may not have the message (`OutcomeUnknown`), whether the connection was lost
/// or the broker closed the channel because of some message on it (403 refused routing key,
/// 406 precondition failed: the refusal names no message, so every publish pending on the
/// channel gets this, never `Rejected`). The exception is 404 on our exchange: every message
/// on the channel went to that missing exchange, so none was routed (`Rejected`).
pub(crate) fn confirm_lost(e: lapin::Error, routing_key: &str) -> Error {
    if let LapinKind::ProtocolError(amqp) = e.kind() {
        if amqp.get_id() == 404 {
            return from_lapin(e);
        }
        // Topic authorization closes the channel naming the routing key it refused
        // ("ACCESS_REFUSED - write access to topic 'k' in exchange …"): a message under that
        // key was refused like the one that closed the channel (the first one the broker met
        // under that key), so it gets that refusal; the others' outcome stays unknown.
        if amqp.get_id() == 403
            && amqp
                .get_message()
                .as_str()
                .contains(&format!("access to topic '{routing_key}' "))
        {
            return Error::new(
                ErrorKind::Rejected,
                BACKEND,
                format!(
                    "RabbitMQ refused write access to routing key `{routing_key}` (403): not \
                     stored"
                ),
            )
            .with_source(from_lapin(e));
        }
    }
    let cause = from_lapin(e);
    Error::outcome_unknown(
        BACKEND,
        format!(
            "the message was sent but its confirm was lost ({}): RabbitMQ may or may not have it",
            cause.message()
        ),
    )
    .with_source(cause)
}

/// Whether `e` means the connection (not just a channel) is gone: a transport failure, a
/// missed heartbeat, or RabbitMQ closing the connection (320 CONNECTION_FORCED, 506
/// RESOURCE_ERROR). An access refusal (403) closing a channel is not.
pub(crate) fn connection_lost(e: &lapin::Error) -> bool {
    match e.kind() {
        LapinKind::IOError(_)
        | LapinKind::MissingHeartbeatError
        | LapinKind::RuntimeShutdownError(_)
        | LapinKind::InvalidConnectionState(_) => true,
        LapinKind::ProtocolError(amqp) => matches!(amqp.get_id(), 320 | 506),
        _ => false,
    }
}

pub(crate) fn from_lapin(e: lapin::Error) -> Error {
    let (kind, msg, retryable) = match e.kind() {
        LapinKind::IOError(_)
        | LapinKind::MissingHeartbeatError
        | LapinKind::RuntimeShutdownError(_)
        | LapinKind::InvalidConnectionState(_) => (
            ErrorKind::Connect,
            "the connection to RabbitMQ is not usable".to_owned(),
            true,
        ),
        LapinKind::InvalidChannelState(..) | LapinKind::InvalidChannel(_) => (
            ErrorKind::Unavailable,
            "the AMQP channel was closed".to_owned(),
            true,
        ),
        LapinKind::ChannelsLimitReached => (
            ErrorKind::Unavailable,
            "the connection's channel limit is reached".to_owned(),
            true,
        ),
        LapinKind::AuthProviderError(_) => (
            ErrorKind::Connect,
            "authentication failed".to_owned(),
            false,
        ),
        LapinKind::ProtocolError(amqp) => {
            let code = amqp.get_id();
            let text = amqp.get_message().as_str().to_owned();
            match code {
                // ACCESS_REFUSED, NOT_ALLOWED: credentials or permissions.
                403 | 530 => (
                    ErrorKind::Connect,
                    format!("RabbitMQ refused access ({code}): {text}"),
                    false,
                ),
                // CONNECTION_FORCED (broker shutting down or operator), RESOURCE_ERROR.
                320 | 506 => (
                    ErrorKind::Connect,
                    format!("RabbitMQ closed the connection ({code}): {text}"),
                    true,
                ),
                _ => (
                    ErrorKind::Rejected,
                    format!("RabbitMQ refused the operation ({code}): {text}"),
                    false,
                ),
            }
        }
        _ => (ErrorKind::Other, "AMQP client error".to_owned(), false),
    };
    Error::new(kind, BACKEND, msg)
        .with_retryable(retryable)
        .with_source(e)
}

pub(crate) fn from_pool(e: PoolError<Error>) -> Error {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            "no pooled AMQP channel became free within pool.wait_timeout",
        )
        .with_field("pool.wait_timeout"),
        PoolError::Timeout(TimeoutType::Create) => Error::new(
            ErrorKind::Connect,
            BACKEND,
            "opening an AMQP channel (or connecting) timed out",
        )
        .with_retryable(true),
        PoolError::Timeout(TimeoutType::Recycle) => Error::new(
            ErrorKind::Unavailable,
            BACKEND,
            "checking a pooled AMQP channel timed out",
        ),
        PoolError::Backend(e) => e,
        PoolError::Closed => Error::closed(BACKEND),
        PoolError::NoRuntimeSpecified => Error::new(
            ErrorKind::Config,
            BACKEND,
            "the channel pool has no runtime",
        ),
        PoolError::PostCreateHook(e) => Error::new(
            ErrorKind::Connect,
            BACKEND,
            format!("channel setup failed: {e}"),
        ),
    }
}
