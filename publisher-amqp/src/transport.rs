//! Our connection's TCP transport, opened the way lapin opens it, with a handle that can cut
//! the socket when the AMQP close cannot be sent.
//!
//! Under a memory or disk alarm RabbitMQ sends `connection.blocked`, and lapin then writes
//! nothing on the connection (not even `connection.close`) until `connection.unblocked`: a
//! close would wait for the alarm to clear, and the socket would stay open behind the
//! publisher's back. The handle keeps a duplicate of the socket's descriptor so that close can
//! shut the socket down at once; it is dropped as soon as the connection ends, so it never
//! keeps a dead socket open.

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_rs::TokioRuntime;
use lapin::tcp::{AsyncTcpStream, TLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, ConnectionStatus};
use tokio_util::sync::CancellationToken;

/// How often a connection's watcher checks whether the connection ended.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A duplicate of one connection's socket descriptor, to shut the socket down from outside
/// lapin's I/O loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct SocketHandle(Arc<Mutex<Option<TcpStream>>>);

impl SocketHandle {
    fn slot(&self) -> MutexGuard<'_, Option<TcpStream>> {
        // Guards one Option; never held across an await or a panic-prone call.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts the socket down (both ways) and drops our descriptor: lapin's I/O loop sees the
    /// connection end and RabbitMQ sees it closed, whatever either was waiting for.
    pub(crate) fn cut(&self) {
        if let Some(socket) = self.slot().take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Drops our descriptor without touching the socket (lapin closes its own).
    pub(crate) fn release(&self) {
        self.slot().take();
    }
}

/// A connection of ours: lapin's, the handle on its socket, and the watcher that releases the
/// handle once the connection ends.
#[derive(Debug)]
pub(crate) struct OwnedConnection {
    pub(crate) connection: Arc<Connection>,
    pub(crate) socket: SocketHandle,
    watcher: CancellationToken,
}

impl OwnedConnection {
    /// Opens a connection (plain or TLS by the URI's scheme, as lapin does) and keeps a handle
    /// on its socket.
    pub(crate) async fn open(uri: AMQPUri, props: ConnectionProperties) -> lapin::Result<Self> {
        let socket = SocketHandle::default();
        let slot = socket.clone();
        let connection = Connection::connector(
            uri,
            TokioRuntime::tokio_current(),
            async move |uri: AMQPUri, runtime: TokioRuntime| {
                let host = uri.authority.host.clone();
                let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
                let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
                if let AsyncTcpStream::Plain(tcp) = &stream {
                    // lapin may call this again (its connect retries): the last socket wins.
                    *slot.slot() = tcp
                        .get_ref()
                        .as_fd()
                        .try_clone_to_owned()
                        .ok()
                        .map(TcpStream::from);
                }
                Ok(match uri.scheme {
                    AMQPScheme::AMQP => stream,
                    AMQPScheme::AMQPS => stream.into_tls(&host, TLSConfig::default()).await?,
                })
            },
            props,
        )
        .await;
        let connection = match connection {
            Ok(c) => Arc::new(c),
            Err(e) => {
                socket.release();
                return Err(e);
            }
        };
        let watcher = CancellationToken::new();
        tokio::spawn(watch(
            connection.status().clone(),
            socket.clone(),
            watcher.clone(),
        ));
        Ok(Self {
            connection,
            socket,
            watcher,
        })
    }
}

impl Drop for OwnedConnection {
    fn drop(&mut self) {
        self.watcher.cancel();
        if self.connection.status().blocked() {
            // lapin's close on drop cannot be written while the connection is blocked.
            self.socket.cut();
        } else {
            self.socket.release();
        }
    }
}

/// Releases the handle once the connection is no longer open (an error, a close by the
/// broker), so that our duplicate never keeps a socket lapin has let go of.
async fn watch(status: ConnectionStatus, socket: SocketHandle, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {
                if !status.connected() {
                    socket.release();
                    return;
                }
            }
        }
    }
}
