//! The one error type every publisher returns.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// What went wrong, in terms a caller can act on.
///
/// The kind decides [`Error::is_retryable`]'s default. New kinds may be added in minor releases.
///
/// # What the broker holds
/// Every kind but [`ErrorKind::OutcomeUnknown`] means the broker does not hold the event: it was
/// refused before sending ([`Config`](ErrorKind::Config), [`InvalidEvent`](ErrorKind::InvalidEvent),
/// [`Closed`](ErrorKind::Closed), [`Unavailable`](ErrorKind::Unavailable),
/// [`Connect`](ErrorKind::Connect), [`Timeout`](ErrorKind::Timeout) of a wait that came before
/// sending), or the broker said it did not take it ([`Rejected`](ErrorKind::Rejected)).
/// `OutcomeUnknown` is the only failure after which the event may be at the broker: retrying it
/// may deliver it twice (consumers deduplicate by event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid (a zero timeout, a malformed URL, a contradiction).
    /// [`Error::field`] names the offending field.
    Config,
    /// The event itself is invalid for this backend (empty topic, oversized payload, a header
    /// name the broker cannot carry). [`Error::field`] names the offending field.
    InvalidEvent,
    /// A connection to the broker could not be established or was lost.
    Connect,
    /// A bounded wait ran out (publish, confirm, health, close drain).
    Timeout,
    /// The publisher is closing or closed; nothing was sent.
    Closed,
    /// The broker refused the message (AMQP nack, unroutable return, Kafka delivery error,
    /// Redis error reply). Retrying the same message is unlikely to help.
    Rejected,
    /// A resource is temporarily unavailable (pool exhausted, broker down, output closed).
    Unavailable,
    /// Anything else the backend reported.
    Other,
    /// The event may or may not be at the broker: it left (or may have left) for the broker,
    /// and no confirmation came back — a publish timeout, a publish abandoned at the close
    /// deadline, a connection or channel lost while the confirm was pending, a queued Kafka
    /// record purged at close. Retryable; a retry may deliver the event twice.
    OutcomeUnknown,
}

impl ErrorKind {
    /// The stable lower-case name of the kind, as used in metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::InvalidEvent => "invalid_event",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Other => "other",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// Whether the broker may hold the event after a failure of this kind (only
    /// [`ErrorKind::OutcomeUnknown`]); every other kind means it does not.
    pub fn is_outcome_unknown(self) -> bool {
        self == ErrorKind::OutcomeUnknown
    }

    fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::OutcomeUnknown
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every publisher operation.
///
/// It carries a [`kind`](Error::kind), the [`backend`](Error::backend) that raised it, for
/// configuration and event errors the [`field`](Error::field) at fault, a message, and the
/// underlying error as [`source`](std::error::Error::source). It is cheap to clone so that every
/// concurrent caller of `close` can receive the same outcome.
///
/// Messages never contain secrets: backends redact credentials before building an error.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    backend: &'static str,
    field: Option<Cow<'static, str>>,
    message: Cow<'static, str>,
    retryable: bool,
    source: Option<Source>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` raised by `backend`.
    pub fn new(
        kind: ErrorKind,
        backend: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            kind,
            backend,
            field: None,
            message: message.into(),
            retryable: kind.default_retryable(),
            source: None,
        }
    }

    /// A [`ErrorKind::Config`] error naming `field`.
    pub fn config(
        backend: &'static str,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(ErrorKind::Config, backend, message).with_field(field)
    }

    /// An [`ErrorKind::InvalidEvent`] error naming `field`.
    pub fn invalid_event(
        backend: &'static str,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(ErrorKind::InvalidEvent, backend, message).with_field(field)
    }

    /// A [`ErrorKind::Closed`] error.
    pub fn closed(backend: &'static str) -> Self {
        Self::new(ErrorKind::Closed, backend, "publisher is closed")
    }

    /// A [`ErrorKind::Timeout`] error for `what` after `after`.
    pub fn timeout(backend: &'static str, what: &str, after: std::time::Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            backend,
            format!(
                "{what} timed out after {}",
                humantime::format_duration(after)
            ),
        )
    }

    /// An [`ErrorKind::OutcomeUnknown`] error: the broker may or may not hold the event.
    pub fn outcome_unknown(backend: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::OutcomeUnknown, backend, message)
    }

    /// Names the field (`timeouts.publish`, `topic`, `url`) this error is about.
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Overrides whether retrying may succeed (the default follows the kind).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Re-attributes the error to another backend name (used by wrappers such as the facade).
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend that raised the error (`redis`, `kafka`, `amqp`, `console`, `memory`, …).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The configuration or event field at fault, for [`ErrorKind::Config`] and
    /// [`ErrorKind::InvalidEvent`] errors.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The message, without kind, backend or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same operation may succeed if tried again (timeouts, lost connections,
    /// an exhausted pool). `Rejected`, `Config`, `InvalidEvent` and `Closed` are never retryable.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the broker may hold the event this error is about
    /// ([`ErrorKind::OutcomeUnknown`]).
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind.is_outcome_unknown()
    }

    /// Whether this is a [`ErrorKind::Closed`] error.
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error ({})", self.kind, self.backend)?;
        if let Some(field) = &self.field {
            write!(f, " in `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("message", &self.message);
        if let Some(field) = &self.field {
            d.field("field", field);
        }
        d.field("retryable", &self.retryable);
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_backend_and_field() {
        let e = Error::config("redis", "timeouts.publish", "must be greater than zero");
        assert_eq!(
            e.to_string(),
            "config error (redis) in `timeouts.publish`: must be greater than zero"
        );
        assert_eq!(e.field(), Some("timeouts.publish"));
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_follows_kind_unless_overridden() {
        assert!(Error::new(ErrorKind::Timeout, "x", "t").is_retryable());
        assert!(Error::new(ErrorKind::Unavailable, "x", "t").is_retryable());
        assert!(!Error::new(ErrorKind::Rejected, "x", "t").is_retryable());
        assert!(!Error::closed("x").is_retryable());
        let unknown = Error::outcome_unknown("x", "t");
        assert!(unknown.is_retryable() && unknown.is_outcome_unknown());
        assert!(!Error::closed("x").is_outcome_unknown());
        assert!(
            !Error::new(ErrorKind::Unavailable, "x", "t")
                .with_retryable(false)
                .is_retryable()
        );
    }

    #[test]
    fn source_chain_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe");
        let e = Error::new(ErrorKind::Unavailable, "console", "write failed").with_source(io);
        let src = std::error::Error::source(&e).expect("source");
        assert_eq!(src.to_string(), "pipe");
    }
}
