//! The splice between a modem and a reader: both directions at once, with backpressure (one
//! buffer per direction, nothing queued beyond it), byte counts, an idle timeout over both
//! directions, and both ends closed together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Buffer per direction.
const CHUNK: usize = 16 * 1024;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// The reader closed its end (or failed).
    ReaderClosed,
    /// The modem closed its end (or failed).
    ModemClosed,
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// Stopped from outside (DELETE, shutdown).
    Cancelled,
}

/// Bytes moved.
#[derive(Debug, Default)]
pub struct Counters {
    /// Modem to reader.
    pub from_modem: AtomicU64,
    /// Reader to modem.
    pub to_modem: AtomicU64,
}

async fn pump<R, W>(
    mut rd: R,
    mut wr: W,
    count: &AtomicU64,
    last: &AtomicU64,
    origin: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        wr.write_all(&buf[..n]).await?;
        wr.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Runs the splice until one end closes, the idle timeout passes, or `cancel` fires.
/// `preamble` (the modem's ID, when forwarded) is written to the reader first.
pub async fn splice<M, R>(
    modem: M,
    reader: R,
    idle: Duration,
    cancel: CancellationToken,
    preamble: Option<Vec<u8>>,
    counters: Arc<Counters>,
) -> SpliceEnd
where
    M: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    let (mr, mut mw) = tokio::io::split(modem);
    let (rr, mut rw) = tokio::io::split(reader);
    let origin = Instant::now();
    let last = AtomicU64::new(0);
    if let Some(p) = preamble
        && rw.write_all(&p).await.is_err()
    {
        return SpliceEnd::ReaderClosed;
    }
    let idle_watch = async {
        loop {
            let seen = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = origin.elapsed().saturating_sub(seen);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    let end = {
        let down = pump(mr, &mut rw, &counters.from_modem, &last, origin);
        let up = pump(rr, &mut mw, &counters.to_modem, &last, origin);
        tokio::select! {
            _ = down => SpliceEnd::ModemClosed,
            _ = up => SpliceEnd::ReaderClosed,
            () = idle_watch => SpliceEnd::IdleTimeout,
            () = cancel.cancelled() => SpliceEnd::Cancelled,
        }
    };
    // Close both ends together (best effort, bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = mw.shutdown().await;
        let _ = rw.shutdown().await;
    })
    .await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn moves_bytes_both_ways_and_reports_who_closed() {
        let (modem, mut modem_peer) = tokio::io::duplex(64);
        let (reader, mut reader_peer) = tokio::io::duplex(64);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(splice(
            modem,
            reader,
            Duration::from_secs(5),
            CancellationToken::new(),
            Some(b"ID".to_vec()),
            counters.clone(),
        ));
        let mut id = [0u8; 2];
        reader_peer.read_exact(&mut id).await.unwrap();
        assert_eq!(&id, b"ID");
        // More than the duplex buffers hold: backpressure, not loss.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            reader_peer.write_all(&send).await.unwrap();
            reader_peer
        });
        let mut got = vec![0u8; data.len()];
        modem_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        let mut reader_peer = writer.await.unwrap();
        modem_peer.write_all(b"reply").await.unwrap();
        let mut r = [0u8; 5];
        reader_peer.read_exact(&mut r).await.unwrap();
        drop(reader_peer);
        assert_eq!(task.await.unwrap(), SpliceEnd::ReaderClosed);
        assert_eq!(counters.to_modem.load(Ordering::Relaxed), 100_000);
        assert_eq!(counters.from_modem.load(Ordering::Relaxed), 5);
        // The modem side was closed too.
        let mut rest = Vec::new();
        modem_peer.read_to_end(&mut rest).await.unwrap();
    }

    #[tokio::test]
    async fn idle_timeout_and_cancel() {
        let (modem, _m) = tokio::io::duplex(64);
        let (reader, _r) = tokio::io::duplex(64);
        let started = Instant::now();
        let end = splice(
            modem,
            reader,
            Duration::from_millis(300),
            CancellationToken::new(),
            None,
            Default::default(),
        )
        .await;
        assert_eq!(end, SpliceEnd::IdleTimeout);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let (modem, _m) = tokio::io::duplex(64);
        let (reader, _r) = tokio::io::duplex(64);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let end = splice(
            modem,
            reader,
            Duration::from_secs(60),
            cancel,
            None,
            Default::default(),
        )
        .await;
        assert_eq!(end, SpliceEnd::Cancelled);
    }

    #[tokio::test]
    async fn modem_closing_ends_the_reader_side() {
        let (modem, modem_peer) = tokio::io::duplex(64);
        let (reader, mut reader_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(splice(
            modem,
            reader,
            Duration::from_secs(5),
            CancellationToken::new(),
            None,
            Default::default(),
        ));
        drop(modem_peer);
        assert_eq!(task.await.unwrap(), SpliceEnd::ModemClosed);
        let mut rest = Vec::new();
        reader_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
