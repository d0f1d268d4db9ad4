//! evpub's logging: warnings on stderr, client-library storms folded.
//!
//! A client library that cannot reach its broker logs the same condition over and over
//! (librdkafka: about fifty "Connect to … failed" lines a second). At the default level each
//! condition is shown once per [`WINDOW`]; the repeats are counted and summed up in one line
//! when evpub ends. `EVPUB_LOG` (a `tracing` filter such as `debug`) shows every line.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How long a condition stays folded after it was shown.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Installs the subscriber. The returned handle reports the folded lines at the end.
pub fn init() -> Folded {
    let configured = std::env::var("EVPUB_LOG").ok();
    let filter = EnvFilter::new(configured.as_deref().unwrap_or("warn"))
        // lapin logs every returned message with its payload: never in our output.
        .add_directive(
            publisher::amqp::HIDE_RETURNED_PAYLOADS
                .parse()
                .expect("a valid directive"),
        );
    let folded = Folded::default();
    let fold = configured.is_none().then(|| Fold {
        seen: folded.clone(),
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fold)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    folded
}

/// The conditions seen and how many of their lines were not shown.
#[derive(Debug, Default, Clone)]
pub struct Folded(Arc<Mutex<HashMap<String, Seen>>>);

#[derive(Debug)]
struct Seen {
    shown_at: Instant,
    hidden: u64,
}

impl Folded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a line of `condition` is shown now (else it is counted).
    fn show(&self, condition: String) -> bool {
        let now = Instant::now();
        let mut seen = self.lock();
        match seen.get_mut(&condition) {
            Some(s) if now.duration_since(s.shown_at) < WINDOW => {
                s.hidden += 1;
                false
            }
            Some(s) => {
                s.shown_at = now;
                true
            }
            None => {
                seen.insert(
                    condition,
                    Seen {
                        shown_at: now,
                        hidden: 0,
                    },
                );
                true
            }
        }
    }

    /// Lines not shown, in all.
    pub fn hidden(&self) -> u64 {
        self.lock().values().map(|s| s.hidden).sum()
    }

    /// Says on stderr how many repeated lines were folded, if any.
    pub fn report(&self) {
        let hidden = self.hidden();
        if hidden > 0 {
            eprintln!(
                "evpub: {hidden} repeated log lines were folded (EVPUB_LOG=warn shows every one)"
            );
        }
    }
}

/// The layer that folds repeats: an event's condition is its level, target and message with
/// the digits taken out (addresses, counts and durations vary from one repeat to the next).
struct Fold {
    seen: Folded,
}

impl<S: Subscriber> Layer<S> for Fold {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let mut condition = format!("{} {} ", meta.level(), meta.target());
        condition.extend(message.0.chars().filter(|c| !c.is_ascii_digit()));
        self.seen.show(condition)
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // The message, and the log crate's target for lines bridged from `log`.
        if matches!(field.name(), "message" | "log.target") {
            let _ = write!(self.0, "{value:?} ");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if matches!(field.name(), "message" | "log.target") {
            self.0.push_str(value);
            self.0.push(' ');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_shown_once_per_window_and_its_repeats_counted() {
        let folded = Folded::default();
        assert!(folded.show("a".into()));
        assert!(!folded.show("a".into()));
        assert!(!folded.show("a".into()));
        assert!(folded.show("b".into()));
        assert_eq!(folded.hidden(), 2);
    }
}
