//! The device-facing HTTPS listener (port 8443 by default): where modems download
//! firmware and report install results.
//!
//! Owns: accepting connections through `callhome-net`'s [`TlsListener`] (its connection
//! and handshake caps, per address too, and the handshake timeout, run in each
//! connection's task); serving HTTP/1.1 with hyper on each TLS stream; putting the
//! peer's identity ([`DevicePeer`]: address, IMEI from the client certificate's CN,
//! certificate serial) into every request's extensions; and the timeouts that suit slow
//! cellular downloads: a deadline for each request head (hyper's header read timeout,
//! which also ends a keep-alive connection that sends no next request) and an *idle*
//! timeout instead of any total one (a download that keeps moving, however slowly, is
//! never cut; one where no byte moved for [`DeviceHttpSettings::idle_timeout`] is).
//!
//! Must not know: firmware, the blob store, jobs, the database. The routes are the
//! caller's [`Router`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use callhome_ca::tls::SharedServerConfig;
use callhome_core::Imei;
use callhome_net::{
    Handler, HandshakePermit, LiveDevices, PeerIdentity, Refusal, TlsListener, TlsListenerConfig,
    TlsStream,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info};

/// The `name` of the listener in logs and [`TlsListenerConfig`].
pub const LISTENER_NAME: &str = "device-http";

/// Who is at the other end of a request, as the TLS layer established it. Inserted into
/// every request's extensions (extract it with `axum::Extension<DevicePeer>`); an
/// [`axum::extract::ConnectInfo<SocketAddr>`] is inserted too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePeer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The client certificate's CN, when there is a certificate and its CN is an IMEI.
    pub imei: Option<Imei>,
    /// The client certificate's serial (uppercase hex), when there is a certificate.
    pub cert_serial: Option<String>,
}

impl DevicePeer {
    /// The peer as the TLS listener identified it.
    pub fn from_identity(peer: &PeerIdentity) -> Self {
        Self {
            addr: peer.addr,
            imei: peer.cert_cn.as_deref().and_then(|cn| Imei::parse(cn).ok()),
            cert_serial: peer.cert_serial.clone(),
        }
    }
}

/// Settings of the device listener.
#[derive(Debug, Clone)]
pub struct DeviceHttpSettings {
    /// Caps and handshake timeout of the TLS listener.
    pub listener: TlsListenerConfig,
    /// A request head must arrive complete within this of the connection's start or of
    /// the previous response.
    pub header_read_timeout: Duration,
    /// A connection on which no byte was read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Most requests on one connection (the last one's response says
    /// `Connection: close`); `None` for no limit.
    pub max_requests_per_connection: Option<u32>,
    /// At shutdown, how long connections get to finish the requests in progress before
    /// they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for DeviceHttpSettings {
    fn default() -> Self {
        Self {
            listener: TlsListenerConfig {
                name: LISTENER_NAME,
                handshake_timeout: Duration::from_secs(15),
                max_connections: 10_000,
                max_handshakes: 1024,
                // Many modems share one address behind carrier-grade NAT.
                max_connections_per_address: 1024,
                max_handshakes_per_address: 128,
            },
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_requests_per_connection: None,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl DeviceHttpSettings {
    /// Checks that every timeout and cap is positive.
    pub fn validate(&self) -> Result<(), DeviceHttpError> {
        let durations = [
            ("handshake_timeout", self.listener.handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return Err(DeviceHttpError::InvalidSetting {
                    name,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        let caps = [
            ("max_connections", self.listener.max_connections),
            ("max_handshakes", self.listener.max_handshakes),
            (
                "max_connections_per_address",
                self.listener.max_connections_per_address,
            ),
            (
                "max_handshakes_per_address",
                self.listener.max_handshakes_per_address,
            ),
        ];
        for (name, n) in caps {
            if n == 0 {
                return Err(DeviceHttpError::InvalidSetting {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.max_requests_per_connection == Some(0) {
            return Err(DeviceHttpError::InvalidSetting {
                name: "max_requests_per_connection",
                reason: "must be at least 1 (or unset for no limit)".into(),
            });
        }
        Ok(())
    }
}

/// Why the device listener cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DeviceHttpError {
    /// A setting is out of range.
    #[error("device HTTP listener setting {name} {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The device-facing HTTPS listener.
#[derive(Debug)]
pub struct DeviceHttp {
    settings: DeviceHttpSettings,
    tls: Arc<SharedServerConfig>,
    router: Router,
    live: Arc<LiveDevices>,
}

impl DeviceHttp {
    /// A listener presenting `tls` (build it with client authentication
    /// [`callhome_ca::tls::ClientAuth::Optional`]: the routes decide what a request
    /// without a device certificate gets) and serving `router`.
    pub fn new(settings: DeviceHttpSettings, tls: Arc<SharedServerConfig>, router: Router) -> Self {
        Self {
            settings,
            tls,
            router,
            live: Arc::new(LiveDevices::default()),
        }
    }

    /// The connections that presented a device certificate: revoking a serial or an
    /// identity there ends them at once (a download in progress included).
    pub fn live(&self) -> Arc<LiveDevices> {
        self.live.clone()
    }

    /// Serves on `listener` until `shutdown` is cancelled; then stops accepting, asks
    /// every connection to finish (idle keep-alive connections close at once, requests in
    /// progress get [`DeviceHttpSettings::shutdown_grace`]) and returns once all have
    /// ended. Fails at once, with [`io::ErrorKind::InvalidInput`], on invalid settings.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
        self.settings
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if let Ok(addr) = listener.local_addr() {
            info!(listener = self.settings.listener.name, %addr, "device HTTPS listener started");
        }
        let tls_listener = TlsListener::new(self.settings.listener.clone(), self.tls);
        let connections = tls_listener.tracker();
        let handler = Connections {
            inner: Arc::new(Inner {
                router: self.router,
                settings: self.settings,
                shutdown: shutdown.clone(),
                live: self.live,
            }),
        };
        tls_listener.run(listener, shutdown, handler).await;
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

/// What every connection shares.
struct Inner {
    router: Router,
    settings: DeviceHttpSettings,
    shutdown: CancellationToken,
    live: Arc<LiveDevices>,
}

/// The [`Handler`] of the device listener.
#[derive(Clone)]
struct Connections {
    inner: Arc<Inner>,
}

impl Handler for Connections {
    async fn handle(
        &self,
        stream: TlsStream<TcpStream>,
        peer: PeerIdentity,
        handshake: HandshakePermit,
    ) {
        // TLS is done: a device has no further login step here.
        handshake.release();
        serve_connection(stream, DevicePeer::from_identity(&peer), &self.inner).await;
    }

    fn refused(&self, _peer: Option<SocketAddr>, why: &Refusal<'_>) {
        metrics::counter!("callhome_devicehttp_refused_total", "reason" => why.label())
            .increment(1);
    }
}

/// One connection, to its end.
async fn serve_connection(stream: TlsStream<TcpStream>, peer: DevicePeer, inner: &Inner) {
    let addr = peer.addr;
    let live = inner.live.register(
        peer.imei.as_ref().map(|i| i.to_string()),
        peer.cert_serial.clone(),
    );
    let activity = Activity::new();
    let io = TokioIo::new(callhome_net::Watched::new(stream, activity.clone()));
    let router = inner.router.clone();
    let max_requests = inner.settings.max_requests_per_connection;
    let served = Arc::new(AtomicU32::new(0));
    let for_requests = activity.clone();
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let router = router.clone();
            req.extensions_mut().insert(peer.clone());
            req.extensions_mut().insert(ConnectInfo(addr));
            req.extensions_mut().insert(for_requests.clone());
            let n = served.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            async move {
                let mut response = match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if max_requests.is_some_and(|max| n >= max) {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(inner.settings.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);

    let idle = inner.settings.idle_timeout;
    let check = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut grace_deadline: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match grace_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(peer = %addr, error = %e, "device HTTP connection ended with an error");
                    if e.is_timeout() {
                        metrics::counter!("callhome_devicehttp_timeouts_total", "kind" => "header_read")
                            .increment(1);
                    }
                }
                return;
            }
            () = inner.shutdown.cancelled(), if grace_deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                grace_deadline = Some(tokio::time::Instant::now() + inner.settings.shutdown_grace);
            }
            () = live.revoked().cancelled() => {
                info!(peer = %addr, "device access revoked; connection closed");
                metrics::counter!("callhome_devicehttp_revoked_total").increment(1);
                return;
            }
            () = grace => {
                debug!(peer = %addr, "device HTTP connection still busy after the shutdown grace; dropping it");
                return;
            }
            () = tokio::time::sleep(check) => {
                let quiet = activity.idle_for();
                if quiet >= idle {
                    debug!(peer = %addr, idle_ms = quiet.as_millis(), "device HTTP connection idle; closing");
                    metrics::counter!("callhome_devicehttp_timeouts_total", "kind" => "idle")
                        .increment(1);
                    return;
                }
            }
        }
    }
}

/// The idle clock of one connection, in each request's extensions: a handler that makes
/// the peer wait on purpose (a download queued for a free slot) [`Activity::touch`]es it,
/// so the idle timeout does not close a connection that is only waiting its turn.
pub type Activity = callhome_net::IdleClock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        DeviceHttpSettings::default().validate().unwrap();
        assert_eq!(DeviceHttpSettings::default().listener.name, LISTENER_NAME);
    }

    #[test]
    fn invalid_settings_are_named() {
        let s = DeviceHttpSettings {
            idle_timeout: Duration::ZERO,
            ..Default::default()
        };
        let e = s.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "device HTTP listener setting idle_timeout must be longer than zero"
        );
        let mut s = DeviceHttpSettings::default();
        s.listener.max_handshakes_per_address = 0;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("max_handshakes_per_address")
        );
        let s = DeviceHttpSettings {
            max_requests_per_connection: Some(0),
            ..Default::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("max_requests_per_connection")
        );
    }

    #[test]
    fn peer_imei_comes_from_a_cn_that_is_an_imei() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let id = |cn: Option<&str>| PeerIdentity {
            addr,
            cert_cn: cn.map(str::to_owned),
            cert_serial: cn.map(|_| "0A".to_owned()),
        };
        let p = DevicePeer::from_identity(&id(Some("356938035643809")));
        assert_eq!(p.imei.unwrap().as_str(), "356938035643809");
        assert_eq!(p.cert_serial.as_deref(), Some("0A"));
        let p = DevicePeer::from_identity(&id(Some("callhome-server")));
        assert_eq!(p.imei, None);
        assert_eq!(p.cert_serial.as_deref(), Some("0A"));
        let p = DevicePeer::from_identity(&id(None));
        assert_eq!((p.imei, p.cert_serial), (None, None));
    }
}
