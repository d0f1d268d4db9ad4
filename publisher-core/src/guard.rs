//! Closing without forgetting: [`CloseGuard`] and [`scoped`].

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::Result;
use crate::outcome::CloseReport;
use crate::publisher::Publisher;

/// Owns a publisher and closes it when dropped, by spawning the close on the current tokio
/// runtime. Prefer calling [`CloseGuard::close`] and looking at the report; the guard is the
/// safety net for early returns and panics.
///
/// Dropped outside a runtime, the guard cannot spawn the close: it logs a warning and the
/// publisher's own drop cancels its tasks and releases its connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> publisher_core::Result<()> {
/// use publisher_core::{CloseGuard, Event, MemoryPublisher, Publisher};
///
/// let publisher = CloseGuard::new(MemoryPublisher::new());
/// publisher.publish(Event::text("greetings", "hello")).await?;
/// let report = publisher.close().await?;
/// assert_eq!(report.abandoned, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CloseGuard<P: Publisher> {
    publisher: Option<P>,
}

impl<P: Publisher> CloseGuard<P> {
    /// Guards `publisher`.
    pub fn new(publisher: P) -> Self {
        Self {
            publisher: Some(publisher),
        }
    }

    /// Closes now and returns the report.
    ///
    /// # Errors
    /// As [`Publisher::close`].
    pub async fn close(mut self) -> Result<CloseReport> {
        let p = self.publisher.take().expect("publisher present until drop");
        p.close().await
    }

    /// Gives the publisher back without closing it.
    pub fn into_inner(mut self) -> P {
        self.publisher.take().expect("publisher present until drop")
    }
}

impl<P: Publisher> Deref for CloseGuard<P> {
    type Target = P;
    fn deref(&self) -> &P {
        self.publisher
            .as_ref()
            .expect("publisher present until drop")
    }
}

impl<P: Publisher> Drop for CloseGuard<P> {
    fn drop(&mut self) {
        let Some(p) = self.publisher.take() else {
            return;
        };
        if p.is_closed() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    match p.close().await {
                        Ok(report) => {
                            tracing::debug!(backend = p.backend(), %report, "closed by CloseGuard")
                        }
                        Err(e) => {
                            tracing::warn!(backend = p.backend(), error = %e, "CloseGuard close failed")
                        }
                    }
                });
            }
            Err(_) => tracing::warn!(
                backend = p.backend(),
                "CloseGuard dropped outside a tokio runtime: cannot close, dropping instead"
            ),
        }
    }
}

/// Runs `f` with the publisher, then closes it whether `f` succeeded or not, and returns `f`'s
/// value with the close report.
///
/// # Errors
/// `f`'s error if it failed (the publisher is still closed; a close error is then only logged),
/// otherwise the close's error.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> publisher_core::Result<()> {
/// use publisher_core::{scoped, Event, MemoryPublisher, Publisher};
///
/// let (receipt, report) = scoped(MemoryPublisher::new(), |p| async move {
///     p.publish(Event::text("greetings", "hello")).await
/// })
/// .await?;
/// assert_eq!(receipt.topic, "greetings");
/// assert!(report.is_clean());
/// # Ok(()) }
/// ```
pub async fn scoped<P, F, Fut, T>(publisher: P, f: F) -> Result<(T, CloseReport)>
where
    P: Publisher,
    F: FnOnce(Arc<P>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let publisher = Arc::new(publisher);
    let outcome = f(publisher.clone()).await;
    let closed = publisher.close().await;
    match (outcome, closed) {
        (Ok(v), Ok(report)) => Ok((v, report)),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), closed) => {
            if let Err(ce) = closed {
                tracing::warn!(backend = publisher.backend(), error = %ce, "close after failed scope failed");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Event, MemoryPublisher};

    #[tokio::test]
    async fn guard_closes_on_drop() {
        let store = crate::MemoryStore::new();
        let p = Arc::new(
            MemoryPublisher::builder()
                .store(store.clone())
                .build()
                .unwrap(),
        );
        {
            let _guard = CloseGuard::new(p.clone());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !p.is_closed() {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(
            p.publish(Event::text("t", "x")).await.unwrap_err().kind(),
            ErrorKind::Closed
        );
    }

    #[tokio::test]
    async fn scoped_closes_even_on_error() {
        let p = Arc::new(MemoryPublisher::new());
        let res: Result<((), CloseReport)> = scoped(p.clone(), |_| async {
            Err(crate::Error::new(ErrorKind::Other, "test", "boom"))
        })
        .await;
        assert_eq!(res.unwrap_err().message(), "boom");
        assert!(p.is_closed());
    }
}
