//! [`Suite`]: a harness that opens every publisher through `publisher::from_url` and keeps its
//! broker's address.

use std::time::Duration;

use publisher_core::testing::{Capabilities, Harness, Probe, ProbeHarness, Received};
use publisher_core::{Publisher, Result, async_trait};

use crate::brokers::Endpoint;

/// Runs the conformance suite through the facade: publishers come from
/// `publisher::from_url(url)`, read-back from the backend's own probe.
#[derive(Debug)]
pub struct Suite<P> {
    harness: ProbeHarness<P>,
    _endpoint: Option<Endpoint>,
}

impl<P: Probe> Suite<P> {
    /// Publishers from `url`, read back with `probe`, keeping `endpoint` alive.
    pub fn new(probe: P, url: String, endpoint: Option<Endpoint>) -> Self {
        Self {
            harness: ProbeHarness::new(probe, move || {
                let url = url.clone();
                async move { publisher::from_url(&url).await }
            }),
            _endpoint: endpoint,
        }
    }

    /// The probe.
    pub fn probe(&self) -> &P {
        self.harness.probe()
    }
}

#[async_trait]
impl<P: Probe> Harness for Suite<P> {
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        self.harness.publisher().await
    }
    async fn topic(&self, hint: &str) -> Result<String> {
        self.harness.topic(hint).await
    }
    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.harness.read(topic, n, timeout).await
    }
    async fn cleanup(&self, topic: &str) {
        self.harness.cleanup(topic).await;
    }
    fn capabilities(&self) -> Capabilities {
        self.harness.capabilities()
    }
}
