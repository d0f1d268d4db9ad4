//! async-nats errors as [`publisher_core::Error`]s, with whether JetStream may hold the event.

use async_nats::ConnectErrorKind;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use publisher_core::{Error, ErrorKind};

use crate::BACKEND;

/// Connecting failed: nothing was sent.
pub(crate) fn from_connect(e: async_nats::ConnectError, endpoint: &str) -> Error {
    let kind = match e.kind() {
        ConnectErrorKind::ServerParse | ConnectErrorKind::Tls => ErrorKind::Config,
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            ErrorKind::Rejected
        }
        ConnectErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Connect,
    };
    Error::new(
        kind,
        BACKEND,
        format!("cannot connect to NATS at {endpoint}: {}", e.kind()),
    )
    .with_source(e)
}

/// Handing the message to the client failed: it was not sent.
pub(crate) fn not_sent(e: PublishError) -> Error {
    let kind = match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            return Error::invalid_event(
                BACKEND,
                "payload",
                "the message is over the server's max_payload",
            )
            .with_source(e);
        }
        _ => ErrorKind::Unavailable,
    };
    Error::new(
        kind,
        BACKEND,
        format!("the message was not sent ({}); retry", e.kind()),
    )
    .with_source(e)
}

/// Waiting for the PubAck failed: the message left (or waits in the client's reconnect
/// buffer), so JetStream may hold it, unless JetStream said it stored nothing.
pub(crate) fn no_ack(e: PublishError, subject: &str) -> Error {
    match e.kind() {
        PublishErrorKind::StreamNotFound => Error::new(
            ErrorKind::Rejected,
            BACKEND,
            format!("no JetStream stream captures the subject `{subject}`: nothing was stored"),
        )
        .with_source(e),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => Error::new(
            ErrorKind::Rejected,
            BACKEND,
            format!("JetStream refused the message: {}", e.kind()),
        )
        .with_source(e),
        kind => Error::outcome_unknown(
            BACKEND,
            format!("no PubAck from JetStream ({kind}): the message may or may not be stored"),
        )
        .with_source(e),
    }
}
