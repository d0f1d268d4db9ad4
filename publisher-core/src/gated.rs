//! [`Gated`]: any [`Backend`] behind the [`Lifecycle`] gate, as a [`Publisher`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::Checked;
use crate::{
    Backend, BatchOutcome, BatchResults, CloseReport, Event, Health, Lifecycle, Publisher, Receipt,
    Result,
};

/// A [`Backend`] behind the [`Lifecycle`] gate: the one way every publisher of this family
/// (memory and console included) implements [`Publisher`].
///
/// Each backend crate names its publisher as an alias, for example
/// `pub type RedisPublisher = Gated<RedisBackend>;`. The gate admits publishes until `close`
/// and refuses them after, checks every event once ([`Backend::check`]) before the backend
/// sees it, bounds each publish and batch by the backend's publish timeout, abandons what is
/// still in flight at the close deadline, and runs the backend's teardown once.
pub struct Gated<B> {
    backend: Arc<B>,
    lifecycle: Lifecycle,
}

impl<B: Backend> Gated<B> {
    /// Puts `backend` behind `lifecycle` (made by the backend when it connected, so that its
    /// background tasks could be spawned on it; they may hold the backend's `Arc`).
    pub fn from_parts(backend: impl Into<Arc<B>>, lifecycle: Lifecycle) -> Self {
        let backend = backend.into();
        lifecycle.set_teardown_ends_in_flight(backend.bounds_itself());
        Self { backend, lifecycle }
    }

    /// The backend's builder, with its defaults.
    pub fn builder() -> B::Builder {
        B::Builder::default()
    }

    /// Opens the publisher `url` describes (see the backend's config `from_url` for its
    /// parameters).
    ///
    /// # Errors
    /// `Config` naming the URL parameter at fault; the backend's connection errors.
    pub async fn from_url(url: &str) -> Result<Self> {
        B::connect(B::config_from_url(url)?).await
    }

    /// Opens the publisher `config` describes.
    ///
    /// # Errors
    /// `Config` naming the field at fault; the backend's connection errors.
    pub async fn connect(config: B::Config) -> Result<Self> {
        B::connect(config).await
    }

    /// The backend: its configuration and backend-specific state (for example the memory
    /// backend's store).
    pub fn get_ref(&self) -> &B {
        &self.backend
    }

    /// The gate.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }
}

/// The gate's own bound on a publish of `backend`: none when the backend bounds every publish
/// itself.
fn timer<B: Backend>(backend: &B) -> Option<std::time::Duration> {
    (!backend.bounds_itself()).then(|| backend.publish_timeout())
}

impl<B: Backend> fmt::Debug for Gated<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gated")
            .field("backend", &self.backend)
            .field("closed", &self.lifecycle.is_closed())
            .finish()
    }
}

#[async_trait]
impl<B: Backend> Publisher for Gated<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let backend = &*self.backend;
        let position = self
            .lifecycle
            .run_timed(timer(backend), "publish", async {
                backend.check(&event)?;
                backend.publish(Checked::new(&event)).await
            })
            .await?;
        Ok(Receipt::from_event(event, position))
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let backend = &*self.backend;
        let results = BatchResults::new(events.len());
        self.lifecycle
            .run_batch_timed(
                timer(backend),
                "batch publish",
                &events,
                &results,
                |e| backend.check(e),
                async {
                    for (i, event) in events.iter().enumerate() {
                        if let Err(e) = backend.check(event) {
                            results.set(i, Err(e));
                        }
                    }
                    backend.publish_batch(&events, &results).await
                },
            )
            .await
    }

    async fn health(&self) -> Health {
        if self.lifecycle.is_closed() {
            return Health::closed(B::NAME);
        }
        self.backend.health().await
    }

    async fn close(&self) -> Result<CloseReport> {
        let backend = Arc::clone(&self.backend);
        self.lifecycle.close(move |td| backend.teardown(td)).await
    }

    fn is_closed(&self) -> bool {
        self.lifecycle.is_closed()
    }
}
