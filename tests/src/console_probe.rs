//! Read-back for the console backend through `from_url`: a JSON-lines file per probe.

use std::path::PathBuf;
use std::time::Duration;

use publisher_core::envelope::Envelope;
use publisher_core::testing::{Probe, Received, unique_name};
use publisher_core::{Result, async_trait};

/// Points console publishers at a temporary file (`console:///…?format=json`) and reads its
/// lines back as envelopes.
#[derive(Debug)]
pub struct FileProbe {
    dir: PathBuf,
    path: PathBuf,
}

impl FileProbe {
    /// A probe on a fresh file in the system temporary directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("publisher-console-probe"));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let path = dir.join("events.jsonl");
        Self { dir, path }
    }

    /// The `console://` URL that writes where this probe reads.
    pub fn url(&self) -> String {
        format!("console://{}?format=json", self.path.display())
    }
}

impl Default for FileProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FileProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[async_trait]
impl Probe for FileProbe {
    async fn topic(&self, hint: &str) -> Result<String> {
        Ok(unique_name(&format!("publisher-test.{hint}")))
    }

    async fn read(&self, topic: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let mut got = Vec::new();
            for line in text.lines() {
                let event = Envelope::parse(line.as_bytes())?.into_event()?;
                if event.topic() == topic {
                    got.push(Received::from(&event));
                }
            }
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cleanup(&self, _topic: &str) {}
}
