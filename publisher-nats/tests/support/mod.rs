//! Shared test support: where NATS is, a `nats-server` of the test's own for the restart
//! scenario, and the conformance harness that reads back through JetStream.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use publisher_core::testing::{Broker, Harness, OwnBroker, ProbeHarness, url_via};
use publisher_core::{Publisher, Timeouts};
use publisher_nats::testing::StreamProbe;
use publisher_nats::{NatsConfig, NatsPublisher};

/// The shared NATS by the workspace's rule (`publisher_core::testing::find_broker`), or
/// `None` (said once; a failure under CI).
pub fn nats() -> Option<String> {
    let broker = Broker::Nats;
    publisher_core::testing::find_broker(broker)
        .inspect_err(|why| publisher_core::testing::skip("nats", broker.var(), why))
        .ok()
}

/// Whether the tests have no NATS (they then return at once).
pub fn missing() -> bool {
    nats().is_none()
}

/// The shared NATS's URL (tests that call it checked [`missing`] first).
pub fn nats_url() -> String {
    nats().expect("no NATS: the test should have checked support::missing()")
}

pub fn config(url: &str, timeouts: Timeouts) -> NatsConfig {
    NatsConfig {
        timeouts,
        ..NatsConfig::from_url(url).unwrap()
    }
}

async fn open(url: String, timeouts: Timeouts) -> publisher_core::Result<Box<dyn Publisher>> {
    NatsPublisher::builder()
        .config(config(&url, timeouts))
        .build()
        .await
        .map(|p| Box::new(p) as Box<dyn Publisher>)
}

pub async fn harness() -> Option<ProbeHarness<StreamProbe>> {
    let url = nats()?;
    let open_url = url.clone();
    Some(
        ProbeHarness::new(StreamProbe::new(url.clone()), move || {
            open(open_url.clone(), Timeouts::default())
        })
        .with_via(move |addr: SocketAddr, timeouts| {
            open(url_via(&url, addr).expect("proxy url"), timeouts)
        })
        .with_own_broker(|| async {
            OwnNats::start()
                .await
                .map(|b| Box::new(b) as Box<dyn OwnBroker>)
        }),
    )
}

/// A `nats-server -js` of the test's own on a free port, its JetStream store in a temporary
/// directory (kept across restarts).
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// `None` (said) when `nats-server` is not installed.
    pub async fn start() -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                !publisher_core::testing::is_ci(),
                "nats-server is not installed (CI needs it)"
            );
            publisher_core::testing::notice(
                "nats-server is not installed: the NATS restart scenario is not carried",
            );
            return None;
        }
        let mut server = Self {
            port: publisher_core::testing::free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.spawn().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(p) = NatsPublisher::from_url(&self.url()).await {
                let ready = p.health().await.is_healthy();
                let _ = p.close().await;
                if ready {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The restart scenario's broker: a [`NatsServer`] and a harness on it.
pub struct OwnNats {
    server: tokio::sync::Mutex<NatsServer>,
    harness: ProbeHarness<StreamProbe>,
}

impl OwnNats {
    pub async fn start() -> Option<Self> {
        let server = NatsServer::start().await?;
        let url = server.url();
        let open_url = url.clone();
        let harness = ProbeHarness::new(StreamProbe::new(url), move || {
            open(open_url.clone(), Timeouts::default())
        });
        Some(Self {
            server: tokio::sync::Mutex::new(server),
            harness,
        })
    }
}

#[publisher_core::async_trait]
impl OwnBroker for OwnNats {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    async fn restart(&self, down: Duration) {
        let mut server = self.server.lock().await;
        server.kill();
        tokio::time::sleep(down).await;
        server.spawn().await;
    }
}
