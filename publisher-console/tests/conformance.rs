//! The console publisher passes the whole conformance suite, read back from a captured writer.

use std::time::Duration;

use publisher_console::{CaptureBuffer, ConsolePublisher, Format};
use publisher_core::envelope::Envelope;
use publisher_core::testing::{Probe, ProbeHarness, Received, unique_name};
use publisher_core::{Publisher, Result, async_trait};

/// Reads back the JSON lines console publishers wrote to a captured writer.
struct CaptureProbe {
    out: CaptureBuffer,
}

async fn harness() -> ProbeHarness<CaptureProbe> {
    let out = CaptureBuffer::new();
    let writer = out.clone();
    ProbeHarness::new(CaptureProbe { out }, move || {
        let publisher = ConsolePublisher::builder()
            .writer(writer.clone())
            .format(Format::Json)
            .build();
        async move { Ok(Box::new(publisher?) as Box<dyn Publisher>) }
    })
}

#[async_trait]
impl Probe for CaptureProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        Ok(unique_name(&format!("conformance.{hint}")))
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut got = Vec::new();
            for line in self.out.lines() {
                let event = Envelope::parse(line.as_bytes())?.into_event()?;
                if event.topic() == topic {
                    got.push(Received::from(&event));
                }
            }
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn cleanup(&self, _topic: &str) {}
}

publisher_core::conformance_tests!(harness);
