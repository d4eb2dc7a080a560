//! Accepting TLS connections, once for every listener of the platform (the modem gateway's
//! MQTT port and the tunnel's rendezvous port).
//!
//! Owns: the accept loop ([`TlsListener::run`]: capped back-off on accept errors, cancel-safe
//! stop on shutdown); the per-listener caps (connections at once, handshakes in progress at
//! once: a connection over either cap is closed at once) and the same two caps per peer
//! address ([`peers`]: IPv4 by address, IPv6 by /64), so that one address cannot take every
//! slot; the TLS handshake, run in the
//! connection's own task under a timeout, with the configuration current at accept time
//! ([`SharedServerConfig`] is swapped when the CRL changes); the peer's identity from its
//! certificate ([`PeerIdentity`]); and tracking every connection task on a
//! [`TaskTracker`] so that shutdown can wait for them.
//!
//! Must not know: MQTT, sessions, the database, domain rules. What a connection means is the
//! caller's [`Handler`]; which metric a refusal counts in is the caller's too
//! ([`Handler::refused`] with a [`Refusal`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callhome_ca::tls::SharedServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub mod idle;
pub mod live;
pub mod peers;

pub use idle::{IdleClock, Watched};
pub use live::{LiveDevices, LiveGuard};
pub use peers::{AddressPermit, PerAddressLimit, peer_key};
pub use tokio_rustls::server::TlsStream;

/// First pause after a failed accept; doubled on each further failure.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// Longest pause after a failed accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Settings of one listener.
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    /// Short name of the listener (`"mqtt"`, `"tunnel"`), the `listener` field of its logs.
    pub name: &'static str,
    /// The TLS handshake must complete within this, or the connection is dropped.
    pub handshake_timeout: Duration,
    /// Most connections at once (handshaking or handled); one more is closed at once.
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once; one more is closed at once.
    pub max_handshakes: usize,
    /// Most connections at once from one peer address ([`peer_key`]); one more is closed at
    /// once.
    pub max_connections_per_address: usize,
    /// Most TLS handshakes in progress at once from one peer address; one more is closed
    /// at once.
    pub max_handshakes_per_address: usize,
}

/// What the TLS layer established about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Certificate CN, if a client certificate with a CN was presented.
    pub cert_cn: Option<String>,
    /// Certificate serial (uppercase hex), if a client certificate was presented.
    pub cert_serial: Option<String>,
}

impl PeerIdentity {
    /// The identity of the peer at `addr` on `stream`: the CN and serial of its leaf
    /// certificate, if it sent one that parses.
    pub fn of(addr: SocketAddr, stream: &TlsStream<TcpStream>) -> Self {
        let (_, conn) = stream.get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        match leaf.map(|der| callhome_ca::inspect_certificate_der(der.as_ref())) {
            Some(Ok(info)) => PeerIdentity {
                addr,
                cert_cn: info.common_name,
                cert_serial: Some(info.serial),
            },
            _ => PeerIdentity {
                addr,
                cert_cn: None,
                cert_serial: None,
            },
        }
    }
}

/// Why the listener dropped a connection (or failed to get one) before the handler saw it.
#[derive(Debug)]
pub enum Refusal<'a> {
    /// `accept` failed (out of file descriptors and the like); the loop backs off.
    AcceptFailed(&'a io::Error),
    /// [`TlsListenerConfig::max_connections`] connections were open.
    MaxConnections,
    /// [`TlsListenerConfig::max_handshakes`] handshakes were in progress.
    MaxHandshakes,
    /// The peer's address held [`TlsListenerConfig::max_connections_per_address`]
    /// connections.
    MaxConnectionsPerAddress,
    /// The peer's address had [`TlsListenerConfig::max_handshakes_per_address`] handshakes
    /// in progress.
    MaxHandshakesPerAddress,
    /// The TLS handshake failed (not TLS, no or a bad certificate, revoked, ...).
    HandshakeFailed(&'a io::Error),
    /// The TLS handshake did not complete within [`TlsListenerConfig::handshake_timeout`].
    HandshakeTimeout,
}

impl Refusal<'_> {
    /// A short label: `accept_error`, `max_connections`, `max_handshakes`,
    /// `max_connections_per_address`, `max_handshakes_per_address`, `handshake`,
    /// `handshake_timeout`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::AcceptFailed(_) => "accept_error",
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxHandshakes => "max_handshakes",
            Refusal::MaxConnectionsPerAddress => "max_connections_per_address",
            Refusal::MaxHandshakesPerAddress => "max_handshakes_per_address",
            Refusal::HandshakeFailed(_) => "handshake",
            Refusal::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// A slot among the listener's handshakes in progress
/// ([`TlsListenerConfig::max_handshakes`], and the peer address's share of
/// [`TlsListenerConfig::max_handshakes_per_address`]), handed to [`Handler::handle`] still held: the
/// handler releases it once the peer has finished logging in (for the modem gateway: after
/// CONNECT and its credential check), so a flood of peers that complete TLS but then stall
/// or send costly logins stays within the cap. Dropping it releases it too.
#[derive(Debug)]
pub struct HandshakePermit {
    _permit: OwnedSemaphorePermit,
    /// The peer address's share of [`TlsListenerConfig::max_handshakes_per_address`].
    _address: AddressPermit,
}

impl HandshakePermit {
    /// Gives the slot back: the connection's login is over.
    pub fn release(self) {}
}

/// What a listener does with its connections.
///
/// Cloned once per connection; `handle` runs in the connection's own task, tracked by the
/// listener's [`TaskTracker`].
pub trait Handler: Clone + Send + Sync + 'static {
    /// Serves one connection whose TLS handshake succeeded. The connection cap's permit is
    /// held until this returns; the handshake slot until `handshake` is released or dropped.
    fn handle(
        &self,
        stream: TlsStream<TcpStream>,
        peer: PeerIdentity,
        handshake: HandshakePermit,
    ) -> impl Future<Output = ()> + Send;

    /// Called when the listener refuses a connection or fails to accept one, for the
    /// caller's metrics (the listener logs it already). `peer` is `None` for
    /// [`Refusal::AcceptFailed`].
    fn refused(&self, peer: Option<SocketAddr>, why: &Refusal<'_>);
}

/// A TLS listener: accepts, caps, and hands each connection's handshake and handling to a
/// task of its own.
#[derive(Debug)]
pub struct TlsListener {
    /// Name, caps and handshake timeout.
    cfg: TlsListenerConfig,
    /// The server configuration, loaded anew for each accepted connection.
    tls: Arc<SharedServerConfig>,
    /// Open connections; a permit lives as long as its connection's task.
    connections: Arc<Semaphore>,
    /// Handshakes in progress; a permit is released when its handshake ends.
    handshakes: Arc<Semaphore>,
    /// Open connections per peer address.
    connections_per_address: PerAddressLimit,
    /// Handshakes in progress per peer address.
    handshakes_per_address: PerAddressLimit,
    /// Where connection tasks are spawned; shutdown waits on it.
    tracker: TaskTracker,
}

impl TlsListener {
    /// A listener presenting `tls`, with a task tracker of its own.
    pub fn new(cfg: TlsListenerConfig, tls: Arc<SharedServerConfig>) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            handshakes: Arc::new(Semaphore::new(cfg.max_handshakes)),
            connections_per_address: PerAddressLimit::new(cfg.max_connections_per_address),
            handshakes_per_address: PerAddressLimit::new(cfg.max_handshakes_per_address),
            cfg,
            tls,
            tracker: TaskTracker::new(),
        }
    }

    /// Spawns connection tasks on `tracker` instead of the listener's own.
    #[must_use]
    pub fn with_tracker(mut self, tracker: TaskTracker) -> Self {
        self.tracker = tracker;
        self
    }

    /// The tracker connection tasks are spawned on. After [`TlsListener::run`] returns, close
    /// it and wait on it to wait for the connections.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Accepts connections on `listener` until `shutdown` is cancelled, then returns at once;
    /// connection tasks go on running (handshakes still in progress are dropped at
    /// shutdown; handlers watch shutdown themselves).
    pub async fn run<H: Handler>(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        handler: H,
    ) {
        let name = self.cfg.name;
        let mut backoff = BACKOFF_START;
        loop {
            // `accept` is cancel-safe: nothing is lost when shutdown wins.
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (tcp, addr) = match accepted {
                Ok(a) => {
                    backoff = BACKOFF_START;
                    a
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, never spin.
                    warn!(listener = name, error = %e, "accept failed; retrying");
                    handler.refused(None, &Refusal::AcceptFailed(&e));
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            // Per-address caps first, so that a flooding address never holds global slots
            // beyond its share.
            let Some(addr_conn_permit) = self.connections_per_address.try_acquire(addr.ip()) else {
                debug!(listener = name, peer = %addr, "connection limit per address reached; closing");
                handler.refused(Some(addr), &Refusal::MaxConnectionsPerAddress);
                drop(tcp);
                continue;
            };
            let Some(addr_hs_permit) = self.handshakes_per_address.try_acquire(addr.ip()) else {
                debug!(listener = name, peer = %addr, "too many handshakes in progress from this address; closing");
                handler.refused(Some(addr), &Refusal::MaxHandshakesPerAddress);
                drop(tcp);
                continue;
            };
            let Ok(conn_permit) = self.connections.clone().try_acquire_owned() else {
                debug!(listener = name, peer = %addr, "connection limit reached; closing");
                handler.refused(Some(addr), &Refusal::MaxConnections);
                drop(tcp);
                continue;
            };
            let Ok(hs_permit) = self.handshakes.clone().try_acquire_owned() else {
                debug!(listener = name, peer = %addr, "too many handshakes in progress; closing");
                handler.refused(Some(addr), &Refusal::MaxHandshakes);
                drop(tcp);
                continue;
            };
            let acceptor = TlsAcceptor::from(self.tls.load());
            let handler = handler.clone();
            let timeout = self.cfg.handshake_timeout;
            let shutdown = shutdown.clone();
            self.tracker.spawn(async move {
                let _conn_permits = (conn_permit, addr_conn_permit);
                let _ = tcp.set_nodelay(true);
                let handshake = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = tokio::time::timeout(timeout, acceptor.accept(tcp)) => r,
                };
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(listener = name, peer = %addr, error = %e, "TLS handshake failed");
                        handler.refused(Some(addr), &Refusal::HandshakeFailed(&e));
                        return;
                    }
                    Err(_) => {
                        debug!(listener = name, peer = %addr, "TLS handshake timed out");
                        handler.refused(Some(addr), &Refusal::HandshakeTimeout);
                        return;
                    }
                };
                let peer = PeerIdentity::of(addr, &stream);
                let handshake = HandshakePermit {
                    _permit: hs_permit,
                    _address: addr_hs_permit,
                };
                handler.handle(stream, peer, handshake).await;
            });
        }
        info!(listener = name, "stopped accepting");
    }
}
