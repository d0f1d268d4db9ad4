//! [`FaultProxy`]: a small TCP proxy for fault tests: pass traffic through, delay it, stall it,
//! cut every connection, or refuse new ones. Listens on 127.0.0.1 only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Forward everything after this delay per chunk.
    Latency(std::time::Duration),
    /// Hold every byte: peers see live sockets that say nothing.
    Stall,
    /// Accept new connections and drop them at once (existing ones keep working).
    Refuse,
}

/// A TCP proxy in front of `upstream` whose behaviour a test switches at will.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    mode: watch::Sender<Mode>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // While stalled, hold the bytes: the peer sees a live socket that says nothing.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Pass | Mode::Refuse => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let (mode, rx) = watch::channel(Mode::Pass);
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        let upstream = Arc::new(Mutex::new(upstream));
        let target = upstream.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let rx = rx.clone();
                let upstream = *target.lock().unwrap_or_else(|p| p.into_inner());
                let handle = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(relay(cr, sw, rx.clone()));
                    let down = relay(sr, cw, rx);
                    down.await;
                    up.abort();
                });
                c.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
            }
        });
        Self {
            addr,
            upstream,
            mode,
            conns,
            accept,
        }
    }

    /// Sends new connections to `upstream` from now on (existing ones stay where they are), as
    /// a name or virtual address moving to a new primary after a failover would.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    /// Switches the behaviour for existing and new connections.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Drops every proxied connection at once, as a network cut or a broker crash would.
    pub fn cut(&self) {
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
