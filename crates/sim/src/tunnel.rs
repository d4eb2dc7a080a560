//! The modem side of the meter-reading tunnel (`AT^MTXTUNNEL=TEMPORALCLIENT`).
//!
//! On `TEMPORALCLIENT,<host>,<port>,<timeout>` a modem answers `OK` at once, then:
//!
//! 1. opens TCP to `host:port` and does a TLS handshake as a client, presenting its own
//!    certificate and trusting only the platform CA; the server name is `host`;
//! 2. sends the value of its `MTX_IDClient` parameter (`[IMEI]` resolved), exact bytes,
//!    no terminator (nothing when the value is empty);
//! 3. connects its serial side ([`SerialSide`]) and relays bytes both ways until the
//!    reading platform closes, `<timeout>` seconds pass without a byte in either
//!    direction, the serial side ends, or the modem stops.
//!
//! A failed connection or handshake is only logged and counted
//! ([`Counters::tunnel_failures`](crate::Counters::tunnel_failures)): a real modem has
//! already answered `OK` and cannot report it on the command channel. One temporary
//! client at a time: a second `TEMPORALCLIENT` while one is in progress is answered
//! `ERROR`.

use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::iec62056::{Iec62056Meter, MeterReadings};

/// Relay buffer size, each way.
const BUF: usize = 4096;
/// Time allowed for a TLS close_notify (or a TCP shutdown) when a tunnel ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What is connected to a simulated modem's serial port: where the bytes from the
/// reading platform go and where the answers come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SerialSide {
    /// The built-in IEC 62056-21 mode C meter ([`crate::iec62056`]), values derived from
    /// the modem's IMEI.
    #[default]
    Iec62056,
    /// A TCP server (`HOST:PORT`) the modem connects to when a tunnel opens, for
    /// instance a Modbus RTU-over-TCP server standing in for the meter.
    Tcp(String),
    /// A serial device or pseudo-terminal, opened when a tunnel opens with the
    /// `COMM_baudrate`, `COMM_bitsperchar`, `COMM_parity`, `COMM_stopbits` and
    /// `COMM_autorts`/`COMM_autocts` parameters.
    Device(PathBuf),
}

impl FromStr for SerialSide {
    type Err = String;

    /// `iec62056`, `tcp:HOST:PORT` or `serial:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("iec62056") {
            return Ok(Self::Iec62056);
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            return if ok {
                Ok(Self::Tcp(addr.to_owned()))
            } else {
                Err(format!("{s:?}: expected tcp:HOST:PORT"))
            };
        }
        if let Some(path) = s.strip_prefix("serial:") {
            return if path.is_empty() {
                Err(format!("{s:?}: expected serial:PATH"))
            } else {
                Ok(Self::Device(PathBuf::from(path)))
            };
        }
        Err(format!(
            "{s:?}: expected iec62056, tcp:HOST:PORT or serial:PATH"
        ))
    }
}

impl std::fmt::Display for SerialSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Iec62056 => f.write_str("iec62056"),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Device(p) => write!(f, "serial:{}", p.display()),
        }
    }
}

/// Serial line settings read from the modem's `COMM_*` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: char,
    pub stop_bits: u8,
    pub hardware_flow: bool,
}

impl LineSettings {
    /// From `COMM_*` values (as looked up by `get`); anything unreadable keeps 9600 8N1.
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u32>().ok());
        let on = |k: &str| get(k).is_some_and(|v| v.trim().eq_ignore_ascii_case("on"));
        Self {
            baud: num("COMM_baudrate").filter(|b| *b > 0).unwrap_or(9600),
            data_bits: num("COMM_bitsperchar")
                .and_then(|b| u8::try_from(b).ok())
                .filter(|b| (5..=8).contains(b))
                .unwrap_or(8),
            parity: match get("COMM_parity")
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "even" | "e" => 'E',
                "odd" | "o" => 'O',
                _ => 'N',
            },
            stop_bits: if num("COMM_stopbits") == Some(2) {
                2
            } else {
                1
            },
            hardware_flow: on("COMM_autorts") || on("COMM_autocts"),
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The reading platform closed (EOF, close_notify, reset).
    PeerClosed,
    /// No byte either way for the tunnel's timeout.
    IdleTimeout,
    /// The modem stopped.
    Stopped,
    /// A relay error, or the serial side could not be opened.
    Error,
    /// The serial side ended (the TCP meter closed, the device went away).
    SerialClosed,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::SerialClosed => "serial_closed",
        }
    }
}

/// Everything one tunnel needs, captured when the command arrives.
pub(crate) struct TunnelRequest {
    pub imei: String,
    pub host: String,
    pub port: u16,
    pub idle: Duration,
    /// `MTX_IDClient`, resolved.
    pub id: Vec<u8>,
    pub serial: SerialSide,
    pub line: LineSettings,
    pub tls: Option<Arc<ClientConfig>>,
    pub connect_timeout: Duration,
    pub counters: Arc<Counters>,
}

type Stream = Box<dyn Duplex>;

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Runs one tunnel to its end, counting it.
pub(crate) async fn run(req: TunnelRequest, cancel: CancellationToken) {
    let c = req.counters.clone();
    let platform = tokio::select! {
        biased;
        () = cancel.cancelled() => Err("the modem stopped while connecting".to_owned()),
        r = connect(&req) => r,
    };
    let mut platform = match platform {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(imei = %req.imei, host = %req.host, port = req.port, error = %e,
                "TEMPORALCLIENT: cannot open the tunnel");
            Counters::add(&c.tunnel_failures);
            return;
        }
    };
    Counters::add(&c.tunnels_opened);
    c.tunnels_active.fetch_add(1, Relaxed);
    tracing::info!(imei = %req.imei, host = %req.host, port = req.port,
        idle_s = req.idle.as_secs(), serial = %req.serial, "TEMPORALCLIENT: tunnel open");
    let reason = serve(&req, &mut platform, &cancel).await;
    // Close the TLS session cleanly (close_notify), whatever the reason.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, platform.shutdown()).await;
    drop(platform);
    tracing::info!(imei = %req.imei, host = %req.host, port = req.port,
        reason = reason.as_str(), "TEMPORALCLIENT: tunnel closed");
    c.tunnels_active.fetch_sub(1, Relaxed);
    Counters::add(match reason {
        CloseReason::PeerClosed => &c.tunnel_closed_peer,
        CloseReason::IdleTimeout => &c.tunnel_closed_idle,
        CloseReason::Stopped => &c.tunnel_closed_stopped,
        CloseReason::Error => &c.tunnel_closed_error,
        CloseReason::SerialClosed => &c.tunnel_closed_serial,
    });
}

/// TCP + TLS to the reading platform, within the connect timeout.
async fn connect(
    req: &TunnelRequest,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tls = req
        .tls
        .clone()
        .ok_or("the modem has no TLS identity for TEMPORALCLIENT")?;
    let name = ServerName::try_from(req.host.clone())
        .map_err(|e| format!("server name {:?}: {e}", req.host))?;
    let attempt = async {
        let tcp = TcpStream::connect((req.host.as_str(), req.port))
            .await
            .map_err(|e| format!("TCP: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    };
    tokio::time::timeout(req.connect_timeout, attempt)
        .await
        .map_err(|_| format!("no connection within {:?}", req.connect_timeout))?
}

/// Sends the ID, opens the serial side and relays until the end.
async fn serve<P>(req: &TunnelRequest, platform: &mut P, cancel: &CancellationToken) -> CloseReason
where
    P: AsyncRead + AsyncWrite + Unpin,
{
    let idle = tokio::time::sleep(req.idle);
    tokio::pin!(idle);
    if !req.id.is_empty()
        && let Err(reason) = write_all(platform, &req.id, cancel, idle.as_mut(), true).await
    {
        return reason;
    }
    let serial = tokio::select! {
        biased;
        () = cancel.cancelled() => return CloseReason::Stopped,
        s = open_serial(req) => s,
    };
    let mut serial = match serial {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(imei = %req.imei, serial = %req.serial, error = %e,
                "TEMPORALCLIENT: cannot open the serial side");
            return CloseReason::Error;
        }
    };
    let reason = relay(platform, &mut serial, req, cancel, idle.as_mut()).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, serial.shutdown()).await;
    reason
}

async fn open_serial(req: &TunnelRequest) -> Result<Stream, String> {
    match &req.serial {
        SerialSide::Iec62056 => {
            let (ours, meter_end) = tokio::io::duplex(BUF);
            let meter = Iec62056Meter::new(MeterReadings::for_imei(&req.imei));
            tokio::spawn(async move {
                let _ = meter.serve(meter_end).await;
            });
            Ok(Box::new(ours))
        }
        SerialSide::Tcp(addr) => {
            let tcp = tokio::time::timeout(req.connect_timeout, TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| format!("TCP {addr}: no connection"))?
                .map_err(|e| format!("TCP {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            Ok(Box::new(tcp))
        }
        SerialSide::Device(path) => open_device(path, req.line).map(|s| Box::new(s) as Stream),
    }
}

fn open_device(
    path: &std::path::Path,
    line: LineSettings,
) -> Result<tokio_serial::SerialStream, String> {
    use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt as _, StopBits};
    let data_bits = match line.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match line.parity {
        'E' => Parity::Even,
        'O' => Parity::Odd,
        _ => Parity::None,
    };
    let stop_bits = if line.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let flow = if line.hardware_flow {
        FlowControl::Hardware
    } else {
        FlowControl::None
    };
    tokio_serial::new(path.to_string_lossy(), line.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow)
        .open_native_async()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether an I/O error from the platform socket means the peer went away.
fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Writes `data` and flushes, unless the modem stops or the tunnel goes idle meanwhile.
/// `to_platform` picks the close reason of a write error.
async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    data: &[u8],
    cancel: &CancellationToken,
    idle: Pin<&mut Sleep>,
    to_platform: bool,
) -> Result<(), CloseReason> {
    let write = async {
        w.write_all(data).await?;
        w.flush().await
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(CloseReason::Stopped),
        () = idle => Err(CloseReason::IdleTimeout),
        r = write => r.map_err(|e| match (to_platform, peer_gone(&e)) {
            (true, true) => CloseReason::PeerClosed,
            (false, true) => CloseReason::SerialClosed,
            _ => CloseReason::Error,
        }),
    }
}

async fn relay<P, S>(
    platform: &mut P,
    serial: &mut S,
    req: &TunnelRequest,
    cancel: &CancellationToken,
    mut idle: Pin<&mut Sleep>,
) -> CloseReason
where
    P: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let c = &req.counters;
    let mut from_platform = vec![0u8; BUF];
    let mut from_serial = vec![0u8; BUF];
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return CloseReason::Stopped,
            () = idle.as_mut() => return CloseReason::IdleTimeout,
            r = platform.read(&mut from_platform) => match r {
                Ok(0) => return CloseReason::PeerClosed,
                Ok(n) => {
                    idle.as_mut().reset(Instant::now() + req.idle);
                    c.tunnel_bytes_down.fetch_add(n as u64, Relaxed);
                    if let Err(reason) =
                        write_all(serial, &from_platform[..n], cancel, idle.as_mut(), false).await
                    {
                        return reason;
                    }
                }
                Err(e) if peer_gone(&e) => return CloseReason::PeerClosed,
                Err(e) => {
                    tracing::debug!(imei = %req.imei, error = %e, "TEMPORALCLIENT: platform read");
                    return CloseReason::Error;
                }
            },
            r = serial.read(&mut from_serial) => match r {
                Ok(0) => return CloseReason::SerialClosed,
                Ok(n) => {
                    idle.as_mut().reset(Instant::now() + req.idle);
                    c.tunnel_bytes_up.fetch_add(n as u64, Relaxed);
                    if let Err(reason) =
                        write_all(platform, &from_serial[..n], cancel, idle.as_mut(), true).await
                    {
                        return reason;
                    }
                }
                Err(e) if peer_gone(&e) => return CloseReason::SerialClosed,
                Err(e) => {
                    tracing::debug!(imei = %req.imei, error = %e, "TEMPORALCLIENT: serial read");
                    return CloseReason::Error;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_sides_parse_and_print() {
        assert_eq!("iec62056".parse(), Ok(SerialSide::Iec62056));
        assert_eq!("IEC62056".parse(), Ok(SerialSide::Iec62056));
        assert_eq!(
            "tcp:127.0.0.1:5020".parse(),
            Ok(SerialSide::Tcp("127.0.0.1:5020".into()))
        );
        assert_eq!(
            "tcp:[::1]:502".parse(),
            Ok(SerialSide::Tcp("[::1]:502".into()))
        );
        assert_eq!(
            "serial:/dev/pts/3".parse(),
            Ok(SerialSide::Device("/dev/pts/3".into()))
        );
        for bad in [
            "", "modbus", "tcp:host", "tcp::1", "tcp:h:0", "tcp:h:x", "serial:",
        ] {
            assert!(bad.parse::<SerialSide>().is_err(), "{bad}");
        }
        for s in ["iec62056", "tcp:h:1", "serial:/dev/ttyS0"] {
            assert_eq!(s.parse::<SerialSide>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn line_settings_from_config() {
        let seed = crate::config::MasterConfig::seed();
        let l = LineSettings::from_config(|k| seed.get(k).map(str::to_owned));
        assert_eq!(
            l,
            LineSettings {
                baud: 9600,
                data_bits: 8,
                parity: 'N',
                stop_bits: 1,
                hardware_flow: false,
            }
        );
        let l = LineSettings::from_config(|k| {
            Some(
                match k {
                    "COMM_baudrate" => "19200",
                    "COMM_bitsperchar" => "7",
                    "COMM_parity" => "even",
                    "COMM_stopbits" => "2",
                    "COMM_autorts" => "on",
                    _ => "x",
                }
                .to_owned(),
            )
        });
        assert_eq!(
            (l.baud, l.data_bits, l.parity, l.stop_bits),
            (19200, 7, 'E', 2)
        );
        assert!(l.hardware_flow);
        let l = LineSettings::from_config(|_| Some("junk".into()));
        assert_eq!((l.baud, l.data_bits, l.parity), (9600, 8, 'N'));
    }
}
