//! Mapping rdkafka errors onto [`publisher_core::Error`].

use publisher_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

use crate::BACKEND;

pub(crate) fn from_kafka(e: KafkaError, limit_bytes: usize) -> Error {
    let code = e.rdkafka_error_code();
    let (kind, msg, retryable) = match (&e, code) {
        (KafkaError::ClientConfig(_, desc, key, _value), _) => {
            // The value is left out: it may be a password.
            return Error::config(
                BACKEND,
                "properties",
                format!("librdkafka refused property `{key}`: {desc}"),
            );
        }
        (KafkaError::ClientCreation(msg), _) => {
            return Error::config(
                BACKEND,
                "properties",
                format!("librdkafka refused the configuration: {msg}"),
            );
        }
        (_, Some(Code::QueueFull)) => (
            ErrorKind::Unavailable,
            "the producer's local queue stayed full for the whole publish timeout".to_owned(),
            true,
        ),
        (_, Some(Code::MessageTimedOut)) => (
            ErrorKind::OutcomeUnknown,
            "no broker acknowledged the record within message_timeout (it may or may not have \
             been written)"
                .to_owned(),
            true,
        ),
        (_, Some(Code::RequestTimedOut | Code::NotEnoughReplicasAfterAppend)) => (
            ErrorKind::OutcomeUnknown,
            format!("the broker did not confirm the record ({code:?}); it may have been written"),
            true,
        ),
        (_, Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize)) => {
            return Error::invalid_event(
                BACKEND,
                "payload",
                format!("the record exceeds message.max.bytes ({limit_bytes})"),
            )
            .with_source(e);
        }
        (_, Some(Code::PurgeQueue)) => (
            ErrorKind::Closed,
            "the record was purged at close before it was sent".to_owned(),
            false,
        ),
        (_, Some(Code::PurgeInflight)) => (
            ErrorKind::OutcomeUnknown,
            "the record was purged at close while in flight (it may or may not have been \
             written)"
                .to_owned(),
            true,
        ),
        (KafkaError::Canceled, _) => (
            ErrorKind::OutcomeUnknown,
            "the producer was closed before the delivery report arrived (the record may or may \
             not have been written)"
                .to_owned(),
            true,
        ),
        (
            _,
            Some(
                Code::AllBrokersDown
                | Code::BrokerTransportFailure
                | Code::Resolve
                | Code::NetworkException
                | Code::BrokerNotAvailable,
            ),
        ) => (
            ErrorKind::Connect,
            "the Kafka brokers cannot be reached".to_owned(),
            true,
        ),
        (_, Some(Code::InvalidConfig)) => (
            ErrorKind::Config,
            "librdkafka refused the configuration".to_owned(),
            false,
        ),
        (_, Some(c)) => {
            let retryable = matches!(
                c,
                Code::LeaderNotAvailable
                    | Code::NotLeaderForPartition
                    | Code::NotEnoughReplicas
                    | Code::OperationTimedOut
            );
            let kind = if retryable {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Rejected
            };
            (
                kind,
                format!("the broker refused the record ({c:?})"),
                retryable,
            )
        }
        (_, None) => (ErrorKind::Other, "Kafka client error".to_owned(), false),
    };
    Error::new(kind, BACKEND, msg)
        .with_retryable(retryable)
        .with_source(e)
}
