//! The TLS listener with real sockets on port 0, real rustls and certificates from our CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callhome_ca::tls::{ClientAuth, SharedServerConfig, client_config, server_config};
use callhome_ca::{Authority, CaParams, IssuedCertificate, generate_key_and_csr};
use callhome_net::{
    Handler, HandshakePermit, PeerIdentity, Refusal, TlsListener, TlsListenerConfig, TlsStream,
};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientTlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const IMEI: &str = "356938035643809";
const LIMIT: Duration = Duration::from_secs(10);

/// A CA, the server's TLS configuration, and one device's client configuration.
struct Pki {
    _tmp: tempfile::TempDir,
    ca: Authority,
    server: Arc<SharedServerConfig>,
    device: IssuedCertificate,
    device_client: Arc<ClientConfig>,
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::load_or_init(&tmp.path().join("ca"), &CaParams::default()).unwrap();
    let identity = ca
        .ensure_server_identity(&tmp.path().join("server"), &["localhost".to_owned()])
        .unwrap();
    let server = server_config(
        &identity,
        &[ca.ca_certificate_der().clone()],
        Vec::new(),
        ClientAuth::Required,
    )
    .unwrap();
    let (key, csr) = generate_key_and_csr(IMEI).unwrap();
    let device = ca.sign_csr(&csr, IMEI, None).unwrap();
    let device_client = client_config(
        ca.ca_certificate_pem(),
        Some(&device.certificate_pem),
        Some(&key),
    )
    .unwrap();
    Pki {
        _tmp: tmp,
        ca,
        server: Arc::new(SharedServerConfig::new(server)),
        device,
        device_client,
    }
}

/// Reports each connection's identity and each refusal; echoes 5 bytes, then holds the
/// connection until the client closes it.
#[derive(Clone)]
struct Echo {
    peers: mpsc::UnboundedSender<PeerIdentity>,
    refusals: mpsc::UnboundedSender<&'static str>,
    /// Hold the handshake slot until the peer's first 5 bytes (its "login").
    hold_handshake: bool,
}

impl Handler for Echo {
    async fn handle(
        &self,
        mut stream: TlsStream<TcpStream>,
        peer: PeerIdentity,
        handshake: HandshakePermit,
    ) {
        if self.hold_handshake {
            // Logs in with the first 5 bytes: the handshake slot is held until then.
            let _ = self.peers.send(peer);
            let mut buf = [0u8; 5];
            if stream.read_exact(&mut buf).await.is_err() {
                return;
            }
            handshake.release();
            let _ = stream.write_all(&buf).await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            return;
        }
        handshake.release();
        let _ = self.peers.send(peer);
        let mut buf = [0u8; 5];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        if stream.write_all(&buf).await.is_err() {
            return;
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    }

    fn refused(&self, _peer: Option<SocketAddr>, why: &Refusal<'_>) {
        let _ = self.refusals.send(why.label());
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    task: JoinHandle<()>,
    peers: mpsc::UnboundedReceiver<PeerIdentity>,
    refusals: mpsc::UnboundedReceiver<&'static str>,
}

async fn start(pki: &Pki, cfg: TlsListenerConfig) -> Running {
    start_with(pki, cfg, false).await
}

async fn start_with(pki: &Pki, cfg: TlsListenerConfig, hold_handshake: bool) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (peers_tx, peers) = mpsc::unbounded_channel();
    let (refusals_tx, refusals) = mpsc::unbounded_channel();
    let handler = Echo {
        peers: peers_tx,
        refusals: refusals_tx,
        hold_handshake,
    };
    let tls = TlsListener::new(cfg, pki.server.clone());
    let tracker = tls.tracker();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tls.run(listener, shutdown.clone(), handler));
    Running {
        addr,
        shutdown,
        tracker,
        task,
        peers,
        refusals,
    }
}

fn cfg() -> TlsListenerConfig {
    TlsListenerConfig {
        name: "test",
        handshake_timeout: LIMIT,
        max_connections: 100,
        max_handshakes: 100,
        max_connections_per_address: 100,
        max_handshakes_per_address: 100,
    }
}

/// Another loopback address (Linux routes all of 127.0.0.0/8 to `lo`).
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to `addr` from the local address `from` (any port).
async fn tcp_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// Handshake from the local address `from`, then one echo round trip.
async fn echo_from(
    from: [u8; 4],
    addr: SocketAddr,
    client: Arc<ClientConfig>,
) -> std::io::Result<()> {
    let tcp = tcp_from(from, addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
    tls.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello");
    Ok(())
}

async fn connect_tls(
    addr: SocketAddr,
    client: Arc<ClientConfig>,
) -> std::io::Result<ClientTlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(client).connect(name, tcp).await
}

/// Handshake, then one echo round trip.
async fn echo(addr: SocketAddr, client: Arc<ClientConfig>) -> std::io::Result<()> {
    let mut tls = connect_tls(addr, client).await?;
    tls.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello");
    Ok(())
}

/// Waits until the server closes a raw TCP connection; returns how long that took.
async fn closed_by_server(mut tcp: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match timeout(LIMIT, tcp.read(&mut buf))
            .await
            .expect("server closed the connection in time")
        {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(LIMIT, rx.recv())
        .await
        .expect("reported in time")
        .expect("channel open")
}

#[tokio::test]
async fn reports_the_peer_certificate_cn_and_serial() {
    let pki = pki();
    let mut srv = start(&pki, cfg()).await;
    let client = TcpStream::connect(srv.addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(pki.device_client.clone())
        .connect(name, client)
        .await
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let peer = next(&mut srv.peers).await;
    assert_eq!(
        peer,
        PeerIdentity {
            addr: client_addr,
            cert_cn: Some(IMEI.to_owned()),
            cert_serial: Some(pki.device.serial.clone()),
        }
    );
    assert!(srv.refusals.try_recv().is_err());
}

#[tokio::test]
async fn a_silent_client_does_not_delay_another_clients_handshake() {
    let pki = pki();
    let mut srv = start(&pki, cfg()).await;
    // Connects and sends nothing: its handshake waits in its own task.
    let _silent = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    timeout(
        Duration::from_secs(5),
        echo(srv.addr, pki.device_client.clone()),
    )
    .await
    .expect("the second client is served while the first one stalls")
    .unwrap();
    assert_eq!(next(&mut srv.peers).await.cert_cn.as_deref(), Some(IMEI));
}

#[tokio::test]
async fn a_handshake_over_the_timeout_is_dropped() {
    let pki = pki();
    let mut srv = start(
        &pki,
        TlsListenerConfig {
            handshake_timeout: Duration::from_millis(300),
            ..cfg()
        },
    )
    .await;
    let silent = TcpStream::connect(srv.addr).await.unwrap();
    let after = closed_by_server(silent).await;
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
    assert_eq!(next(&mut srv.refusals).await, "handshake_timeout");
    assert!(srv.peers.try_recv().is_err());
}

#[tokio::test]
async fn a_failed_handshake_is_reported_and_never_handled() {
    let pki = pki();
    let mut srv = start(&pki, cfg()).await;
    // No client certificate, where one is required.
    let anonymous = client_config(pki.ca.ca_certificate_pem(), None, None).unwrap();
    let _ = echo(srv.addr, anonymous).await;
    assert_eq!(next(&mut srv.refusals).await, "handshake");
    assert!(srv.peers.try_recv().is_err());
}

#[tokio::test]
async fn the_connection_cap_closes_the_extra_connection() {
    let pki = pki();
    let mut srv = start(
        &pki,
        TlsListenerConfig {
            max_connections: 1,
            ..cfg()
        },
    )
    .await;
    // The first connection is served and held open by the handler.
    let mut first = connect_tls(srv.addr, pki.device_client.clone())
        .await
        .unwrap();
    first.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    first.read_exact(&mut buf).await.unwrap();
    // The second is closed without a handshake.
    let second = TcpStream::connect(srv.addr).await.unwrap();
    closed_by_server(second).await;
    assert_eq!(next(&mut srv.refusals).await, "max_connections");
    // The first one is untouched.
    first.write_all(b"more").await.unwrap();
    drop(first);
    // Its permit comes back when its handler ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    timeout(LIMIT, echo(srv.addr, pki.device_client.clone()))
        .await
        .expect("served in time")
        .unwrap();
}

#[tokio::test]
async fn the_handshake_cap_closes_the_extra_connection_and_frees_on_completion() {
    let pki = pki();
    let mut srv = start(
        &pki,
        TlsListenerConfig {
            max_handshakes: 1,
            ..cfg()
        },
    )
    .await;
    let silent = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let extra = TcpStream::connect(srv.addr).await.unwrap();
    closed_by_server(extra).await;
    assert_eq!(next(&mut srv.refusals).await, "max_handshakes");
    // The silent peer gives up; its handshake permit is released.
    drop(silent);
    assert_eq!(next(&mut srv.refusals).await, "handshake");
    // A completed handshake releases its permit even though the connection stays open.
    let mut held = connect_tls(srv.addr, pki.device_client.clone())
        .await
        .unwrap();
    held.write_all(b"hello").await.unwrap();
    held.read_exact(&mut [0u8; 5]).await.unwrap();
    timeout(LIMIT, echo(srv.addr, pki.device_client.clone()))
        .await
        .expect("served in time")
        .unwrap();
}

/// A handler that keeps the handshake slot through its login: a peer that completed TLS but
/// has not logged in still counts against the cap; once it logs in, the slot is free.
#[tokio::test]
async fn a_handler_holds_the_handshake_slot_until_it_releases_it() {
    let pki = pki();
    let mut srv = start_with(
        &pki,
        TlsListenerConfig {
            max_handshakes: 1,
            ..cfg()
        },
        true,
    )
    .await;
    let mut stalled = connect_tls(srv.addr, pki.device_client.clone())
        .await
        .unwrap();
    timeout(LIMIT, srv.peers.recv()).await.unwrap().unwrap();
    let extra = TcpStream::connect(srv.addr).await.unwrap();
    closed_by_server(extra).await;
    assert_eq!(next(&mut srv.refusals).await, "max_handshakes");
    // The stalled peer logs in: its slot is released, and the next peer is served.
    stalled.write_all(b"hello").await.unwrap();
    stalled.read_exact(&mut [0u8; 5]).await.unwrap();
    timeout(LIMIT, echo(srv.addr, pki.device_client.clone()))
        .await
        .expect("served in time")
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_the_tracker_waits_for_connections() {
    let pki = pki();
    let srv = start(&pki, cfg()).await;
    let mut held = connect_tls(srv.addr, pki.device_client.clone())
        .await
        .unwrap();
    held.write_all(b"hello").await.unwrap();
    held.read_exact(&mut [0u8; 5]).await.unwrap();

    srv.shutdown.cancel();
    timeout(LIMIT, srv.task)
        .await
        .expect("the accept loop stops")
        .unwrap();
    // The listening socket is gone.
    assert!(TcpStream::connect(srv.addr).await.is_err());

    // The open connection is still tracked until its handler ends.
    srv.tracker.close();
    assert!(
        timeout(Duration::from_millis(200), srv.tracker.wait())
            .await
            .is_err(),
        "the tracker waits for the open connection"
    );
    drop(held);
    timeout(LIMIT, srv.tracker.wait())
        .await
        .expect("the connection task ends once its peer has gone");
}

#[tokio::test]
async fn shutdown_drops_handshakes_in_progress() {
    let pki = pki();
    let srv = start(&pki, cfg()).await;
    let silent = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.shutdown.cancel();
    srv.tracker.close();
    timeout(Duration::from_secs(2), srv.tracker.wait())
        .await
        .expect("a stalled handshake does not hold shutdown for its timeout");
    closed_by_server(silent).await;
}

#[tokio::test]
async fn the_per_address_handshake_cap_refuses_only_that_address() {
    let pki = pki();
    let mut srv = start(
        &pki,
        TlsListenerConfig {
            max_handshakes_per_address: 2,
            ..cfg()
        },
    )
    .await;
    let silent1 = TcpStream::connect(srv.addr).await.unwrap();
    let silent2 = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A third handshake from the same address is closed at once...
    let extra = TcpStream::connect(srv.addr).await.unwrap();
    let after = closed_by_server(extra).await;
    assert!(after < Duration::from_secs(2), "closed after {after:?}");
    assert_eq!(next(&mut srv.refusals).await, "max_handshakes_per_address");
    // ... while another address is served.
    timeout(
        Duration::from_secs(5),
        echo_from(OTHER, srv.addr, pki.device_client.clone()),
    )
    .await
    .expect("another address is served in time")
    .unwrap();
    assert_eq!(
        next(&mut srv.peers).await.addr.ip().to_string(),
        "127.0.0.2"
    );
    // When a silent peer gives up, its address's share comes back.
    drop(silent1);
    assert_eq!(next(&mut srv.refusals).await, "handshake");
    timeout(LIMIT, echo(srv.addr, pki.device_client.clone()))
        .await
        .expect("served in time")
        .unwrap();
    drop(silent2);
}

#[tokio::test]
async fn the_per_address_connection_cap_refuses_only_that_address() {
    let pki = pki();
    let mut srv = start(
        &pki,
        TlsListenerConfig {
            max_connections_per_address: 1,
            ..cfg()
        },
    )
    .await;
    let mut held = connect_tls(srv.addr, pki.device_client.clone())
        .await
        .unwrap();
    held.write_all(b"hello").await.unwrap();
    held.read_exact(&mut [0u8; 5]).await.unwrap();
    // A second connection from the same address is closed without a handshake.
    let second = TcpStream::connect(srv.addr).await.unwrap();
    closed_by_server(second).await;
    assert_eq!(next(&mut srv.refusals).await, "max_connections_per_address");
    // Another address is served.
    let tcp = tcp_from(OTHER, srv.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(pki.device_client.clone())
        .connect(name, tcp)
        .await
        .expect("another address completes its handshake");
    tls.write_all(b"hello").await.unwrap();
    tls.read_exact(&mut [0u8; 5]).await.unwrap();
    // The held connection's end gives its share back.
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    timeout(LIMIT, echo(srv.addr, pki.device_client.clone()))
        .await
        .expect("served in time")
        .unwrap();
}

/// The report of issue 16: 2,100 idle TCP connections from one address filled all 2,048
/// handshake slots. With the per-address cap (128, the modem gateway's default) a client
/// from another address completes its handshake at once, and the flood beyond the cap is
/// closed at once instead of holding a slot for the handshake timeout.
#[tokio::test]
async fn idle_sockets_from_one_address_do_not_starve_another_address() {
    let pki = pki();
    let mut srv = start(
        &pki,
        TlsListenerConfig {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 200_000,
            max_handshakes: 2048,
            max_handshakes_per_address: 128,
            max_connections_per_address: 4096,
            ..cfg()
        },
    )
    .await;
    let started = Instant::now();
    let mut idle = Vec::with_capacity(2100);
    for _ in 0..2100 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    // Let the listener accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = Instant::now();
    timeout(
        Duration::from_secs(2),
        echo_from(OTHER, srv.addr, pki.device_client.clone()),
    )
    .await
    .expect("the client from another address is served within 2 s")
    .unwrap();
    println!(
        "2,100 idle sockets opened in {:?}; the other address's handshake and echo took {:?}",
        before - started,
        before.elapsed()
    );
    let mut refused = 0;
    while let Ok(label) = srv.refusals.try_recv() {
        assert_eq!(label, "max_handshakes_per_address");
        refused += 1;
    }
    assert_eq!(refused, 2100 - 128, "all but 128 refused at once");
    assert_eq!(
        next(&mut srv.peers).await.addr.ip().to_string(),
        "127.0.0.2"
    );
    drop(idle);
}
