//! MQTT 3.1.1 framing over a byte stream, with `rumqttc::mqttbytes::v4` as the codec.

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4::Packet};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Why a connection's byte stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a packet larger than allowed.
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The bytes are not MQTT 3.1.1.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A write did not complete in time (the peer is not reading).
    #[error("write timed out")]
    WriteTimeout,
}

impl FrameError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::TooLarge(_) => "too_large",
            FrameError::Malformed(_) => "malformed",
            FrameError::Io(_) => "io",
            FrameError::WriteTimeout => "write_timeout",
        }
    }
}

/// Reads packets; cancel-safe (bytes read are kept in the buffer between calls).
pub struct PacketReader<R> {
    rd: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader refusing packets over `max` bytes.
    pub fn new(rd: R, max: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(1024),
            max,
        }
    }

    /// The next packet, or `None` at end of stream. The size check happens as soon as the
    /// fixed header is in, so an oversize packet is refused before its body is read.
    pub async fn next(&mut self) -> Result<Option<Packet>, FrameError> {
        loop {
            if !self.buf.is_empty() {
                match Packet::read(&mut self.buf, self.max) {
                    Ok(p) => return Ok(Some(p)),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                        return Err(FrameError::TooLarge(n));
                    }
                    Err(e) => return Err(FrameError::Malformed(e.to_string())),
                }
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(4096);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Malformed(
                        "connection closed inside a packet".to_owned(),
                    ))
                };
            }
        }
    }
}

/// Writes packets with a deadline per packet.
pub struct PacketWriter<W> {
    wr: W,
    buf: BytesMut,
    timeout: std::time::Duration,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// A writer giving up on a packet after `timeout`.
    pub fn new(wr: W, timeout: std::time::Duration) -> Self {
        Self {
            wr,
            buf: BytesMut::with_capacity(256),
            timeout,
        }
    }

    /// Encodes and sends one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), FrameError> {
        self.buf.clear();
        packet
            .write(&mut self.buf, usize::MAX)
            .map_err(|e| FrameError::Malformed(format!("encoding: {e}")))?;
        match tokio::time::timeout(self.timeout, async {
            self.wr.write_all(&self.buf).await?;
            self.wr.flush().await
        })
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(FrameError::WriteTimeout),
        }
    }

    /// Closes the write side (TLS close_notify).
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.timeout, self.wr.shutdown()).await;
    }

    /// Refuses a CONNECT: CONNACK with `code` (best effort), then closes the stream.
    pub async fn refuse(&mut self, code: mqttbytes::v4::ConnectReturnCode) {
        let _ = self
            .send(&Packet::ConnAck(mqttbytes::v4::ConnAck::new(code, false)))
            .await;
        self.shutdown().await;
    }
}
