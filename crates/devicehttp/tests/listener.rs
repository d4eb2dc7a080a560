//! The device listener with real sockets on port 0, real rustls and certificates from our
//! CA, and a hand-written HTTP/1.1 client (so that reading can be slowed down or stopped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use callhome_ca::tls::{ClientAuth, SharedServerConfig, client_config, server_config};
use callhome_ca::{Authority, CaParams, RevocationReason, RevokedEntry, generate_key_and_csr};
use callhome_core::Imei;
use callhome_devicehttp::{Activity, DeviceHttp, DeviceHttpSettings, DevicePeer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

const IMEI: &str = "356938035643809";
const LIMIT: Duration = Duration::from_secs(20);
/// Size of the large download.
const BIG: u64 = 64 * 1024 * 1024;
/// The slow download: this many bytes, one every [`TRICKLE_EVERY`].
const TRICKLE: usize = 15;
const TRICKLE_EVERY: Duration = Duration::from_millis(200);

struct Pki {
    _tmp: tempfile::TempDir,
    server: Arc<SharedServerConfig>,
    device: Arc<ClientConfig>,
    revoked: Arc<ClientConfig>,
    anonymous: Arc<ClientConfig>,
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::load_or_init(&tmp.path().join("ca"), &CaParams::default()).unwrap();
    let identity = ca
        .ensure_server_identity(&tmp.path().join("server"), &["localhost".to_owned()])
        .unwrap();
    let client_for = |cn: &str| {
        let (key, csr) = generate_key_and_csr(cn).unwrap();
        let cert = ca.sign_csr(&csr, cn, None).unwrap();
        let cfg = client_config(
            ca.ca_certificate_pem(),
            Some(&cert.certificate_pem),
            Some(&key),
        )
        .unwrap();
        (cfg, cert.serial)
    };
    let (device, _) = client_for(IMEI);
    let other = Imei::from_body("49015420323751").unwrap();
    let (revoked, revoked_serial) = client_for(other.as_str());
    let crl = ca
        .build_crl(
            &[RevokedEntry {
                serial: revoked_serial,
                revoked_at: time::OffsetDateTime::now_utc(),
                reason: Some(RevocationReason::KeyCompromise),
            }],
            1,
            time::Duration::days(1),
        )
        .unwrap();
    let server = server_config(
        &identity,
        &[ca.ca_certificate_der().clone()],
        vec![crl.der],
        ClientAuth::Optional,
    )
    .unwrap();
    Pki {
        _tmp: tmp,
        server: Arc::new(SharedServerConfig::new(server)),
        device,
        revoked,
        anonymous: client_config(ca.ca_certificate_pem(), None, None).unwrap(),
    }
}

/// Requests that reached a route.
#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

fn router(hits: Hits) -> Router {
    let whoami = {
        let hits = hits.clone();
        move |Extension(peer): Extension<DevicePeer>| {
            hits.0.fetch_add(1, Ordering::SeqCst);
            async move {
                format!(
                    "imei={} serial={}",
                    peer.imei.as_ref().map_or("none", Imei::as_str),
                    if peer.cert_serial.is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                )
            }
        }
    };
    Router::new()
        .route("/whoami", get(whoami))
        // Waits 3 s before answering (a queue), touching the idle clock as it waits, or
        // not.
        .route(
            "/queued",
            get(|Extension(activity): Extension<Activity>| async move {
                for _ in 0..15 {
                    tokio::time::sleep(TRICKLE_EVERY).await;
                    activity.touch();
                }
                "served"
            }),
        )
        .route(
            "/stuck",
            get(|| async {
                tokio::time::sleep(TRICKLE_EVERY * 15).await;
                "served"
            }),
        )
        .route(
            "/trickle",
            get(|| async {
                let stream = futures::stream::unfold(0usize, |i| async move {
                    if i == TRICKLE {
                        return None;
                    }
                    tokio::time::sleep(TRICKLE_EVERY).await;
                    let byte = Bytes::from(vec![b'a' + u8::try_from(i).unwrap()]);
                    Some((Ok::<_, std::io::Error>(byte), i + 1))
                });
                http::Response::builder()
                    .header(http::header::CONTENT_LENGTH, TRICKLE)
                    .body(Body::from_stream(stream))
                    .unwrap()
            }),
        )
        .route(
            "/big",
            get(|| async {
                let chunk = Bytes::from(vec![7u8; 64 * 1024]);
                let n = BIG / 65_536;
                let stream = futures::stream::iter(
                    (0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                http::Response::builder()
                    .header(http::header::CONTENT_LENGTH, BIG)
                    .body(Body::from_stream(stream))
                    .unwrap()
            }),
        )
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    hits: Hits,
}

async fn start(pki: &Pki, settings: DeviceHttpSettings) -> Running {
    start_on(
        pki,
        settings,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
}

async fn start_on(pki: &Pki, settings: DeviceHttpSettings, listener: TcpListener) -> Running {
    let addr = listener.local_addr().unwrap();
    let hits = Hits::default();
    let shutdown = CancellationToken::new();
    let server = DeviceHttp::new(settings, pki.server.clone(), router(hits.clone()));
    let task = tokio::spawn(server.run(listener, shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
        hits,
    }
}

fn settings(header_read: Duration, idle: Duration) -> DeviceHttpSettings {
    let mut s = DeviceHttpSettings::default();
    s.listener.handshake_timeout = LIMIT;
    s.header_read_timeout = header_read;
    s.idle_timeout = idle;
    s
}

async fn connect(
    addr: SocketAddr,
    client: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connect_over(tcp, client).await
}

async fn connect_over(
    tcp: TcpStream,
    client: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(client).connect(name, tcp).await
}

/// Reads a response head; returns it and whatever body bytes came with it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
        if buf.ends_with(b"\r\n\r\n") {
            return Ok((String::from_utf8_lossy(&buf).into_owned(), Vec::new()));
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a Content-Length")
}

/// One GET on an open connection: status line and body.
async fn get_on(tls: &mut TlsStream<TcpStream>, path: &str) -> std::io::Result<(String, String)> {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let (head, _) = read_head(tls).await?;
    let mut body = vec![0u8; content_length(&head)];
    tls.read_exact(&mut body).await?;
    Ok((head, String::from_utf8(body).unwrap()))
}

/// Reads until EOF or error; how many bytes came.
async fn drain<S: AsyncRead + Unpin>(s: &mut S) -> (u64, std::io::Result<()>) {
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n as u64,
            Err(e) => return (total, Err(e)),
        }
    }
}

#[tokio::test]
async fn device_certificate_gives_the_imei_and_no_certificate_gives_none() {
    let pki = pki();
    let srv = start(
        &pki,
        settings(Duration::from_secs(5), Duration::from_secs(5)),
    )
    .await;

    let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
    let (head, body) = timeout(LIMIT, get_on(&mut tls, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, format!("imei={IMEI} serial=yes"));
    // Keep-alive: a second request on the same connection.
    let (_, body) = timeout(LIMIT, get_on(&mut tls, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, format!("imei={IMEI} serial=yes"));

    let mut anon = connect(srv.addr, pki.anonymous.clone()).await.unwrap();
    let (head, body) = timeout(LIMIT, get_on(&mut anon, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "imei=none serial=no");

    let (head, _) = timeout(LIMIT, get_on(&mut anon, "/nowhere"))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(srv.hits.0.load(Ordering::SeqCst), 3);

    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_revoked_certificate_fails_the_handshake() {
    let pki = pki();
    let srv = start(
        &pki,
        settings(Duration::from_secs(5), Duration::from_secs(5)),
    )
    .await;
    // With TLS 1.3 the client finishes its side before the server has checked its
    // certificate: the refusal shows on the first read.
    let outcome = timeout(LIMIT, async {
        let mut tls = connect(srv.addr, pki.revoked.clone()).await?;
        get_on(&mut tls, "/whoami").await
    })
    .await
    .unwrap();
    assert!(outcome.is_err(), "a revoked device was served: {outcome:?}");
    assert_eq!(srv.hits.0.load(Ordering::SeqCst), 0);
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_download_that_keeps_moving_is_not_cut() {
    let pki = pki();
    let idle = Duration::from_secs(1);
    let srv = start(&pki, settings(Duration::from_secs(5), idle)).await;
    let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
    let started = Instant::now();
    tls.write_all(b"GET /trickle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = timeout(LIMIT, read_head(&mut tls)).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(content_length(&head), TRICKLE);
    // One byte at a time, every 200 ms, for 3 s: three times the idle timeout.
    let mut body = Vec::new();
    for _ in 0..TRICKLE {
        tokio::time::sleep(TRICKLE_EVERY).await;
        let mut b = [0u8; 1];
        timeout(LIMIT, tls.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        body.push(b[0]);
    }
    assert_eq!(body, b"abcdefghijklmno");
    assert!(started.elapsed() >= idle * 2, "{:?}", started.elapsed());
    // The connection is still usable.
    let (_, who) = timeout(LIMIT, get_on(&mut tls, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, format!("imei={IMEI} serial=yes"));
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_handler_that_makes_the_peer_wait_keeps_the_idle_clock_going() {
    let pki = pki();
    let idle = Duration::from_secs(1);
    let srv = start(&pki, settings(Duration::from_secs(5), idle)).await;
    let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
    let started = Instant::now();
    let (head, body) = timeout(LIMIT, get_on(&mut tls, "/queued"))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "served");
    assert!(started.elapsed() >= idle * 2, "{:?}", started.elapsed());
    // Without the touches, the same wait is idle and the connection is closed.
    let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
    let r = timeout(LIMIT, get_on(&mut tls, "/stuck")).await.unwrap();
    assert!(r.is_err(), "{r:?}");
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

/// A listener whose accepted sockets have small send buffers (inherited from the
/// listening socket), so that the server's writes follow a slow reader closely.
fn small_buffer_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(32 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(64).unwrap()
}

async fn small_buffer_client(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_reader_that_reads_slowly_is_not_cut_but_one_that_stops_is() {
    let pki = pki();
    let idle = Duration::from_secs(1);
    let srv = start_on(
        &pki,
        settings(Duration::from_secs(5), idle),
        small_buffer_listener(),
    )
    .await;

    // Slow but steady: 16 KiB every 200 ms for 3 s.
    let tcp = small_buffer_client(srv.addr).await;
    let mut tls = connect_over(tcp, pki.device.clone()).await.unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = timeout(LIMIT, read_head(&mut tls)).await.unwrap().unwrap();
    assert_eq!(content_length(&head) as u64, BIG);
    let started = Instant::now();
    let mut got = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(TRICKLE_EVERY).await;
        timeout(LIMIT, tls.read_exact(&mut buf))
            .await
            .unwrap()
            .expect("a slow reader is not cut");
        got += buf.len() as u64;
    }
    assert!(got >= 14 * 16 * 1024, "{got}");

    // Stopped: the server gives up after the idle timeout, long before the 64 MiB are
    // sent; what was in flight still arrives, then the connection ends.
    let tcp = small_buffer_client(srv.addr).await;
    let mut stalled = connect_over(tcp, pki.device.clone()).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = timeout(LIMIT, read_head(&mut stalled))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(idle * 3).await;
    let (total, end) = timeout(LIMIT, drain(&mut stalled)).await.unwrap();
    assert!(
        total < BIG / 4,
        "{total} bytes arrived: the stalled download was not cut"
    );
    // Cut without a TLS close_notify.
    assert!(end.is_err() || total < BIG, "{end:?}");

    // The steady reader was still being served all along.
    timeout(LIMIT, tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_that_sends_no_header_is_closed_after_the_header_read_timeout() {
    let pki = pki();
    let header = Duration::from_millis(600);
    let srv = start(&pki, settings(header, Duration::from_secs(30))).await;

    for partial in [&b""[..], b"GET /whoami HTTP/1.1\r\nHost: loc"] {
        let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
        let started = Instant::now();
        tls.write_all(partial).await.unwrap();
        let (n, _) = timeout(LIMIT, drain(&mut tls)).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= header.mul_f32(0.8), "closed after {waited:?}");
        assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
        // Hyper may answer 408 before closing; it never served the request.
        let _ = n;
    }
    // An idle keep-alive connection is closed the same way after its last response.
    let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
    timeout(LIMIT, get_on(&mut tls, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let (n, _) = timeout(LIMIT, drain(&mut tls)).await.unwrap();
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(srv.hits.0.load(Ordering::SeqCst), 1);
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn max_requests_per_connection_closes_after_the_last() {
    let pki = pki();
    let mut s = settings(Duration::from_secs(5), Duration::from_secs(5));
    s.max_requests_per_connection = Some(2);
    let srv = start(&pki, s).await;
    let mut tls = connect(srv.addr, pki.device.clone()).await.unwrap();
    let (head, _) = timeout(LIMIT, get_on(&mut tls, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (head, _) = timeout(LIMIT, get_on(&mut tls, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (n, _) = timeout(LIMIT, drain(&mut tls)).await.unwrap();
    assert_eq!(n, 0, "closed after the second response");
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_lets_a_download_finish_within_the_grace_then_returns() {
    let pki = pki();
    let mut s = settings(Duration::from_secs(5), Duration::from_secs(5));
    s.shutdown_grace = Duration::from_secs(5);
    let srv = start(&pki, s).await;
    // An idle keep-alive connection and a download in progress.
    let mut idle = connect(srv.addr, pki.device.clone()).await.unwrap();
    timeout(LIMIT, get_on(&mut idle, "/whoami"))
        .await
        .unwrap()
        .unwrap();
    let mut busy = connect(srv.addr, pki.device.clone()).await.unwrap();
    busy.write_all(b"GET /trickle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = timeout(LIMIT, read_head(&mut busy)).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let started = Instant::now();
    srv.shutdown.cancel();
    // The idle connection is closed at once.
    let (n, _) = timeout(LIMIT, drain(&mut idle)).await.unwrap();
    assert_eq!(n, 0);
    // The download (3 s) finishes within the 5 s grace.
    let mut body = vec![0u8; TRICKLE];
    timeout(LIMIT, busy.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"abcdefghijklmno");
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Nothing listens any more.
    assert!(connect(srv.addr, pki.device.clone()).await.is_err());
}

#[tokio::test]
async fn shutdown_drops_what_is_still_busy_after_the_grace() {
    let pki = pki();
    let mut s = settings(Duration::from_secs(5), Duration::from_secs(30));
    s.shutdown_grace = Duration::from_millis(500);
    let srv = start(&pki, s).await;
    let mut busy = connect(srv.addr, pki.device.clone()).await.unwrap();
    busy.write_all(b"GET /trickle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    timeout(LIMIT, read_head(&mut busy)).await.unwrap().unwrap();
    let started = Instant::now();
    srv.shutdown.cancel();
    timeout(LIMIT, srv.task).await.unwrap().unwrap().unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    let (n, _) = timeout(LIMIT, drain(&mut busy)).await.unwrap();
    assert!(n < TRICKLE as u64, "the download was cut: {n} bytes");
}

#[tokio::test]
async fn invalid_settings_fail_at_once() {
    let pki = pki();
    let mut s = settings(Duration::from_secs(5), Duration::from_secs(5));
    s.header_read_timeout = Duration::ZERO;
    let srv = start(&pki, s).await;
    let e = timeout(LIMIT, srv.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("header_read_timeout"), "{e}");
}
