//! [`SharedHandle`]: the one handle publishes share while it is usable, replaced by one caller
//! at a time when it is not.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

/// A handle many publishes use at once (a multiplexed Redis connection, an AMQP confirm-mode
/// channel) instead of each checking one out of a pool.
///
/// Taking the current handle is a lock and a clone. When it is missing or no longer usable,
/// one caller makes a new one (from the backend's pool, which opens and checks them) while the
/// others wait and then share it: a burst of publishes on a cold or broken handle makes one, not
/// one each. `pool.max_size` then bounds the handles opened, not the publishes in flight.
#[derive(Debug)]
pub struct SharedHandle<T> {
    current: Mutex<Option<T>>,
    replacing: tokio::sync::Mutex<()>,
}

impl<T> Default for SharedHandle<T> {
    fn default() -> Self {
        Self {
            current: Mutex::new(None),
            replacing: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T: Clone> SharedHandle<T> {
    /// No handle yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self) -> MutexGuard<'_, Option<T>> {
        // Guards one Option; never held across an await or a panic-prone call.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current handle, if there is one and `usable` says it is.
    pub fn usable(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        self.slot().as_ref().filter(|h| usable(h)).cloned()
    }

    /// The current handle if usable; otherwise a new one from `make`, made by one caller at a
    /// time (the others wait, then take it). A failed `make` leaves the old handle in place
    /// and its error goes to that caller.
    ///
    /// # Errors
    /// `make`'s.
    pub async fn get_or_replace<F, Fut, E>(
        &self,
        usable: impl Fn(&T) -> bool,
        make: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(h) = self.usable(&usable) {
            return Ok(h);
        }
        let _replacing = self.replacing.lock().await;
        if let Some(h) = self.usable(&usable) {
            return Ok(h);
        }
        let fresh = make().await?;
        *self.slot() = Some(fresh.clone());
        Ok(fresh)
    }

    /// Lets go of the current handle (at close).
    pub fn take(&self) -> Option<T> {
        self.slot().take()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_makes_one_handle_and_a_broken_one_is_replaced_once() {
        let shared = Arc::new(SharedHandle::<Arc<(usize, AtomicBool)>>::new());
        let made = Arc::new(AtomicUsize::new(0));
        let get = |shared: Arc<SharedHandle<Arc<(usize, AtomicBool)>>>, made: Arc<AtomicUsize>| async move {
            shared
                .get_or_replace(
                    |h| !h.1.load(Ordering::Relaxed),
                    || async {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        let n = made.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, ()>(Arc::new((n, AtomicBool::new(false))))
                    },
                )
                .await
                .unwrap()
        };
        let burst: Vec<_> = (0..50)
            .map(|_| tokio::spawn(get(shared.clone(), made.clone())))
            .collect();
        for h in burst {
            assert_eq!(h.await.unwrap().0, 0);
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);

        // Broken: the next burst replaces it once.
        shared
            .usable(|_| true)
            .unwrap()
            .1
            .store(true, Ordering::Relaxed);
        assert!(shared.usable(|h| !h.1.load(Ordering::Relaxed)).is_none());
        let burst: Vec<_> = (0..50)
            .map(|_| tokio::spawn(get(shared.clone(), made.clone())))
            .collect();
        for h in burst {
            assert_eq!(h.await.unwrap().0, 1);
        }
        assert_eq!(made.load(Ordering::Relaxed), 2);

        // A failed make keeps nothing new and reports its error.
        shared
            .usable(|_| true)
            .unwrap()
            .1
            .store(true, Ordering::Relaxed);
        let failed = shared
            .get_or_replace(
                |h| !h.1.load(Ordering::Relaxed),
                || async { Err::<Arc<_>, _>("down") },
            )
            .await;
        assert_eq!(failed.unwrap_err(), "down");
        assert!(shared.take().is_some());
        assert!(shared.take().is_none());
    }
}
