//! `--retry`: the core [`Retry`] layer over a layer of ours that notes which events had an
//! attempt whose outcome was unknown (the broker may hold that attempt's copy), so that a line
//! published after such an attempt is reported as possibly published twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use publisher::layers::{Layer, Layered, Retry, RetryPolicy};
use publisher::{BatchOutcome, Event, Publisher, Receipt, Result, Uuid};

/// evpub's retry policy: enough to ride out a broker restart of several seconds, bounded.
pub fn policy(deadline: Duration) -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        factor: 2.0,
        max_retries: 30,
        jitter: true,
        deadline,
    }
}

/// The ids of events an attempt of which ended with an unknown outcome.
#[derive(Debug, Default, Clone)]
pub struct MaybeSent(Arc<Mutex<HashSet<Uuid>>>);

impl MaybeSent {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an attempt of `id` may have reached the broker (the id is forgotten).
    pub fn take(&self, id: &Uuid) -> bool {
        self.lock().remove(id)
    }
}

/// Wraps `inner` in the core `Retry` layer with `policy`, noting unknown outcomes in `noted`.
///
/// # Errors
/// `Config` when the policy is invalid.
pub fn with_retry(
    inner: Arc<dyn Publisher>,
    policy: RetryPolicy,
    noted: MaybeSent,
) -> Result<Arc<dyn Publisher>> {
    let noting = Layered::new(Noting { inner, noted });
    Ok(Arc::new(Layered::new(Retry::new(noting, policy)?)))
}

#[derive(Debug)]
struct Noting {
    inner: Arc<dyn Publisher>,
    noted: MaybeSent,
}

impl Layer for Noting {
    type Inner = Arc<dyn Publisher>;

    fn inner(&self) -> &Arc<dyn Publisher> {
        &self.inner
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let id = event.id();
        let result = self.inner.publish(event).await;
        if let Err(e) = &result
            && e.is_outcome_unknown()
        {
            self.noted.lock().insert(id);
        }
        result
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let ids: Vec<Uuid> = events.iter().map(Event::id).collect();
        let outcome = self.inner.publish_batch(events).await;
        let unknown: Vec<Uuid> = outcome
            .results()
            .iter()
            .zip(&ids)
            .filter(|(r, _)| r.as_ref().is_err_and(|e| e.is_outcome_unknown()))
            .map(|(_, id)| *id)
            .collect();
        if !unknown.is_empty() {
            self.noted.lock().extend(unknown);
        }
        outcome
    }
}
