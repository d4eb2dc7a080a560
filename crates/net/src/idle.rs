//! Idle timeouts that never cut a slow connection that keeps moving: a stream wrapper
//! ([`Watched`]) notes when a byte last moved either way on an [`IdleClock`], and whoever
//! serves the connection closes it once [`IdleClock::idle_for`] reaches its limit. A handler
//! that makes its peer wait on purpose (a download queued for a slot) touches the clock
//! itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a byte last moved on one connection. Cheap to clone; clones share the clock.
#[derive(Debug, Clone)]
pub struct IdleClock {
    started: Instant,
    /// Milliseconds from `started` to the last progress.
    last: Arc<AtomicU64>,
}

impl Default for IdleClock {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleClock {
    /// A clock whose last progress is now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts as progress on the connection now.
    pub fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the last progress.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }
}

/// A stream that touches its [`IdleClock`] whenever bytes are read or written.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    clock: IdleClock,
}

impl<S> Watched<S> {
    /// `inner`, noting its progress on `clock`.
    pub fn new(inner: S, clock: IdleClock) -> Self {
        Self { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn bytes_moving_either_way_reset_the_clock() {
        let clock = IdleClock::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Watched::new(a, clock.clone());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(clock.idle_for() >= Duration::from_millis(50));
        a.write_all(b"x").await.unwrap();
        assert!(clock.idle_for() < Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(60)).await;
        b.write_all(b"y").await.unwrap();
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        assert!(clock.idle_for() < Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(60)).await;
        clock.clone().touch();
        assert!(
            clock.idle_for() < Duration::from_millis(50),
            "a touch counts"
        );
    }
}
