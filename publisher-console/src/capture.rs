//! [`CaptureBuffer`]: an in-memory writer for tests that read back what the console wrote.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// A cloneable in-memory [`AsyncWrite`]: every clone appends to the same bytes. Hand one clone
/// to the publisher and keep another to read what was written. It can be told to fail writes
/// as a closed pipe would.
#[derive(Debug, Clone, Default)]
pub struct CaptureBuffer {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    bytes: Vec<u8>,
    broken: bool,
    flushes: usize,
}

impl CaptureBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Everything written so far, as (lossy) UTF-8 lines.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.lock().bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many times the writer was flushed.
    pub fn flushes(&self) -> usize {
        self.lock().flushes
    }

    /// From now on, writes and flushes fail with `BrokenPipe` (as a closed stdout would).
    pub fn break_pipe(&self) {
        self.lock().broken = true;
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "capture buffer closed")
}

impl AsyncWrite for CaptureBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.lock();
        if inner.broken {
            return Poll::Ready(Err(broken()));
        }
        inner.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.lock();
        if inner.broken {
            return Poll::Ready(Err(broken()));
        }
        inner.flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
