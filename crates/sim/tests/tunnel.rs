//! TEMPORALCLIENT tunnels end to end, with real sockets: the command goes through
//! Mosquitto on 127.0.0.1:1883 (plain), the simulated modem opens mutual TLS to a test
//! reading platform (`callhome_ca` server config, client certificate required), sends
//! its `MTX_IDClient` and relays to its serial side (the built-in IEC 62056-21 meter, a
//! local TCP server, or a pty made by socat).
//!
//! Set `CALLHOME_TEST_MQTT=host:port` to use another broker.

use std::sync::Arc;
use std::time::Duration;

use callhome_ca::tls::{ClientAuth, server_config};
use callhome_ca::{Authority, CaParams, generate_key_and_csr};
use callhome_core::Imei;
use callhome_sim::iec62056::{
    ACK_DATA_READOUT, ETX, MeterReadings, SIGN_ON, STX, bcc, parse_identification, parse_readout,
    sign_on,
};
use callhome_sim::{
    Backoff, Counters, Credentials, ModemHandle, ModemSettings, SerialSide, SimModem, TlsBase,
    Transport, config::MasterConfig,
};
use rand::Rng as _;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn broker() -> (String, u16) {
    let s = std::env::var("CALLHOME_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (h, p) = s.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

fn random_imei() -> Imei {
    let body = format!(
        "98{:012}",
        rand::rng().random_range(0..1_000_000_000_000u64)
    );
    Imei::from_body(&body).unwrap()
}

/// A CA in a temporary directory, the reading platform's server configuration (client
/// certificate required) and device certificates.
struct Pki {
    _dir: tempfile::TempDir,
    authority: Authority,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new() -> Self {
        callhome_sim::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let authority =
            Authority::load_or_init(&dir.path().join("ca"), &CaParams::default()).unwrap();
        let identity = authority
            .ensure_server_identity(&dir.path().join("server"), &[])
            .unwrap();
        let server = server_config(
            &identity,
            &[authority.ca_certificate_der().clone()],
            vec![],
            ClientAuth::Required,
        )
        .unwrap();
        Self {
            _dir: dir,
            authority,
            server,
        }
    }

    fn issue(&self, imei: &Imei) -> Credentials {
        let (key_pem, csr) = generate_key_and_csr(imei.as_str()).unwrap();
        let issued = self.authority.sign_csr(&csr, imei.as_str(), None).unwrap();
        Credentials {
            cert_pem: issued.certificate_pem,
            key_pem,
        }
    }

    /// A modem TLS configuration: trusts this CA, presents `credentials`.
    fn device_tls(&self, credentials: &Credentials) -> Arc<rustls::ClientConfig> {
        TlsBase::new(self.authority.ca_certificate_pem())
            .unwrap()
            .for_device(credentials)
            .unwrap()
    }
}

/// The reading platform: accepts mutual TLS connections and hands them to the test.
struct Platform {
    port: u16,
    accepted: mpsc::Receiver<Result<TlsStream<TcpStream>, String>>,
}

impl Platform {
    async fn start(server: Arc<rustls::ServerConfig>) -> Self {
        Self::start_on(server, "127.0.0.1").await
    }

    async fn start_on(server: Arc<rustls::ServerConfig>, ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let (tx, accepted) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let r = acceptor.accept(tcp).await.map_err(|e| e.to_string());
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        Self { port, accepted }
    }

    async fn accept(&mut self) -> TlsStream<TcpStream> {
        tokio::time::timeout(WAIT, self.accepted.recv())
            .await
            .expect("the modem connects")
            .expect("platform running")
            .expect("TLS handshake")
    }
}

/// The Device Manager's side of the command channel: publishes commands and reads
/// replies through the broker.
struct Probe {
    client: AsyncClient,
    rx: mpsc::Receiver<String>,
    imei: Imei,
}

impl Probe {
    async fn new(imei: &Imei) -> Self {
        let (host, port) = broker();
        let id = format!("probe-{}", rand::rng().random::<u64>());
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        client
            .subscribe(format!("{imei}/ATR"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = ready_tx.send(()).await;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx.send(text).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ready_rx.recv())
            .await
            .expect("probe subscribed");
        Self {
            client,
            rx,
            imei: imei.clone(),
        }
    }

    async fn ask(&mut self, text: &str) -> String {
        self.client
            .publish(
                format!("{}/AT", self.imei),
                QoS::AtLeastOnce,
                false,
                text.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a reply")
            .expect("probe running")
    }

    async fn temporal_client(&mut self, host: &str, port: u16, timeout_secs: u32) -> String {
        self.ask(&format!(
            "AT^MTXTUNNEL=TEMPORALCLIENT,{host},{port},{timeout_secs}"
        ))
        .await
    }
}

/// A modem on plain MQTT whose tunnels use `tls`.
struct Modem {
    imei: Imei,
    handle: ModemHandle,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    probe: Probe,
}

async fn start_modem(
    imei: &Imei,
    tls: Option<Arc<rustls::ClientConfig>>,
    serial: SerialSide,
) -> Modem {
    let (host, port) = broker();
    let mut s = ModemSettings::new(&host, port, false);
    s.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    s.master = Arc::new(MasterConfig::for_platform(&host, port, false, Some(600)));
    s.connect_timeout = Duration::from_secs(5);
    s.status_on_connect = false;
    let mut modem =
        SimModem::new(imei.clone(), Transport::Plain, Arc::new(s)).with_serial_side(serial);
    if let Some(tls) = tls {
        modem = modem.with_tunnel_tls(tls);
    }
    let counters = modem.counters().clone();
    let cancel = CancellationToken::new();
    let (handle, task) = modem.spawn(cancel.clone());
    wait(|| counters.snapshot().connected == 1, "modem connected").await;
    let probe = Probe::new(imei).await;
    Modem {
        imei: imei.clone(),
        handle,
        counters,
        cancel,
        task,
        probe,
    }
}

async fn wait(cond: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(WAIT, r.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .expect("read");
    buf
}

/// Reads until `done(received)` holds.
async fn read_until<R: AsyncRead + Unpin>(r: &mut R, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while !done(&out) {
        let n = tokio::time::timeout(WAIT, r.read(&mut buf))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(n > 0, "EOF after {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Whether nothing arrives for `d` (the connection stays open and quiet).
async fn quiet_for<R: AsyncRead + Unpin>(r: &mut R, d: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(d, r.read(&mut buf)).await.is_err()
}

/// Reads to the end: `Ok(bytes)` on a clean close (close_notify), `Err` otherwise.
async fn read_to_close<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut out))
        .await
        .expect("closed in time")?;
    Ok(out)
}

#[tokio::test]
async fn tunnel_sends_the_id_and_reads_the_iec_meter() {
    let pki = Pki::new();
    let imei = random_imei();
    let credentials = pki.issue(&imei);
    let mut platform = Platform::start(pki.server.clone()).await;
    let mut m = start_modem(
        &imei,
        Some(pki.device_tls(&credentials)),
        SerialSide::Iec62056,
    )
    .await;

    // The server name is the host given: "localhost" is in the server certificate.
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "OK"
    );
    let mut tls = platform.accept().await;
    // The modem presented its own certificate.
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let der =
        rustls_pki_types::CertificateDer::from_pem_slice(credentials.cert_pem.as_bytes()).unwrap();
    assert_eq!(presented, der.to_vec());

    // First the ID: MTX_IDClient = [IMEI], exact bytes, no terminator.
    assert_eq!(read_exact(&mut tls, 15).await, imei.as_str().as_bytes());
    assert!(quiet_for(&mut tls, Duration::from_millis(300)).await);

    // One at a time.
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "ERROR"
    );

    // The sign-on split across TLS records (and so across the modem's reads).
    let readings = MeterReadings::for_imei(imei.as_str());
    tls.write_all(b"/?").await.unwrap();
    tls.flush().await.unwrap();
    assert!(quiet_for(&mut tls, Duration::from_millis(200)).await);
    tls.write_all(b"!\r").await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tls.write_all(b"\n").await.unwrap();
    tls.flush().await.unwrap();
    let id = read_until(&mut tls, |b| b.ends_with(b"\r\n")).await;
    assert_eq!(id, readings.identification_message());
    assert_eq!(
        id,
        format!("/ISK5MT174-{}\r\n", &imei.as_str()[11..]).as_bytes()
    );
    let ident = parse_identification(&id).unwrap();
    assert_eq!((ident.manufacturer.as_str(), ident.baud), ("ISK", '5'));

    // ACK 0 5 0: data readout at the same speed.
    tls.write_all(ACK_DATA_READOUT).await.unwrap();
    tls.flush().await.unwrap();
    let readout = read_until(&mut tls, |b| b.len() >= 2 && b[b.len() - 2] == ETX).await;
    assert_eq!(readout, readings.readout_message());
    assert_eq!(readout[0], STX);
    let n = readout.len();
    assert_eq!(readout[n - 1], bcc(&readout[1..n - 1]), "BCC");
    let sets = parse_readout(&readout).unwrap();
    assert_eq!(sets, readings.data_sets());
    assert_eq!(sets[0].value, readings.address);
    let text = String::from_utf8_lossy(&readout[1..n - 2]).into_owned();
    for obis in ["0.0.0(", "1.8.0(", "1.8.1(", "1.8.2(", "2.8.0(", "32.7.0("] {
        assert!(text.contains(obis), "{text}");
    }
    assert!(text.ends_with("!\r\n"), "{text}");

    // A second reading in the same tunnel, addressed to this meter.
    tls.write_all(&sign_on(Some(&readings.address)))
        .await
        .unwrap();
    assert_eq!(
        read_until(&mut tls, |b| b.ends_with(b"\r\n")).await,
        readings.identification_message()
    );
    // Another meter's address: silence.
    tls.write_all(&sign_on(Some("11111111"))).await.unwrap();
    assert!(quiet_for(&mut tls, Duration::from_millis(300)).await);

    let c = m.counters.snapshot();
    assert_eq!((c.tunnels_opened, c.tunnels_active), (1, 1));
    assert_eq!(c.tunnels_busy, 1);
    let down = 5 + ACK_DATA_READOUT.len() + sign_on(Some(&readings.address)).len() + 13;
    assert_eq!(c.tunnel_bytes_down, down as u64);
    let up = 2 * readings.identification_message().len() + readout.len();
    assert_eq!(c.tunnel_bytes_up, up as u64);

    // The reader closes: the modem side ends, and a new tunnel may be opened.
    tls.shutdown().await.unwrap();
    assert!(read_to_close(&mut tls).await.unwrap().is_empty());
    drop(tls);
    let counters = m.counters.clone();
    wait(
        || counters.snapshot().tunnel_closed_peer == 1,
        "closed by the peer",
    )
    .await;
    let c = m.counters.snapshot();
    assert_eq!((c.tunnels_active, c.tunnels_closed()), (0, 1));

    // The reader drops the socket without close_notify: also the peer closing.
    assert_eq!(
        m.probe
            .temporal_client("127.0.0.1", platform.port, 30)
            .await,
        "OK"
    );
    let mut tls = platform.accept().await;
    assert_eq!(read_exact(&mut tls, 15).await, imei.as_str().as_bytes());
    tls.write_all(SIGN_ON).await.unwrap();
    let _ = read_until(&mut tls, |b| b.ends_with(b"\r\n")).await;
    drop(tls);
    wait(
        || counters.snapshot().tunnel_closed_peer == 2,
        "dropped by the peer",
    )
    .await;
    let c = m.counters.snapshot();
    assert_eq!(
        (c.tunnels_opened, c.tunnel_failures, c.tunnels_closed()),
        (2, 0, 2)
    );
    assert_eq!(c.error_replies, 1);
    m.cancel.cancel();
    m.task.await.unwrap();
}

#[tokio::test]
async fn idle_timeout_closes_the_tunnel() {
    let pki = Pki::new();
    let imei = random_imei();
    let creds = pki.issue(&imei);
    let mut platform = Platform::start(pki.server.clone()).await;
    let mut m = start_modem(&imei, Some(pki.device_tls(&creds)), SerialSide::Iec62056).await;
    // A custom MTX_IDClient, [IMEI] resolved inside it.
    assert_eq!(
        m.probe
            .ask("AT^MTXTUNNEL=SETPARAM,MTX_IDClient,meter-[IMEI]-A")
            .await,
        "OK"
    );
    assert_eq!(
        m.probe.temporal_client("127.0.0.1", platform.port, 2).await,
        "OK"
    );
    let mut tls = platform.accept().await;
    let want_id = format!("meter-{}-A", m.imei);
    assert_eq!(
        read_exact(&mut tls, want_id.len()).await,
        want_id.as_bytes()
    );

    // Traffic at 1.2 s resets the timer: the tunnel outlives its first 2 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tls.write_all(SIGN_ON).await.unwrap();
    let _ = read_until(&mut tls, |b| b.ends_with(b"\r\n")).await;
    let last_traffic = std::time::Instant::now();
    // Then silence: closed (cleanly) about 2 s after the last byte.
    let rest = read_to_close(&mut tls).await.expect("close_notify");
    let idle = last_traffic.elapsed();
    assert!(rest.is_empty());
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_millis(3500),
        "{idle:?}"
    );
    let counters = m.counters.clone();
    wait(
        || counters.snapshot().tunnel_closed_idle == 1,
        "idle timeout counted",
    )
    .await;
    let c = counters.snapshot();
    assert_eq!(
        (c.tunnels_opened, c.tunnels_active, c.tunnels_closed()),
        (1, 0, 1)
    );
    m.cancel.cancel();
}

#[tokio::test]
async fn stopping_the_modem_closes_the_tunnel() {
    let pki = Pki::new();
    let imei = random_imei();
    let creds = pki.issue(&imei);
    let mut platform = Platform::start(pki.server.clone()).await;
    let mut m = start_modem(&imei, Some(pki.device_tls(&creds)), SerialSide::Iec62056).await;
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 60)
            .await,
        "OK"
    );
    let mut tls = platform.accept().await;
    assert_eq!(read_exact(&mut tls, 15).await, imei.as_str().as_bytes());
    m.handle.stop().await;
    assert!(read_to_close(&mut tls).await.unwrap().is_empty());
    // The modem's task waits for its tunnel: counted once the task has ended.
    tokio::time::timeout(WAIT, m.task).await.unwrap().unwrap();
    let c = m.counters.snapshot();
    assert_eq!(
        (c.tunnels_opened, c.tunnel_closed_stopped, c.tunnels_active),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn tcp_serial_side_splices_both_ways() {
    // The "meter": a TCP server that answers each chunk in upper case, then closes
    // when it receives "BYE".
    let meter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meter_addr = meter.local_addr().unwrap().to_string();
    let (seen_tx, mut seen_rx) = mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        let (mut s, _) = meter.accept().await.unwrap();
        let mut buf = [0u8; 256];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            let _ = seen_tx.send(buf[..n].to_vec()).await;
            if buf[..n].ends_with(b"BYE") {
                return;
            }
            s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        }
    });

    let pki = Pki::new();
    let imei = random_imei();
    let creds = pki.issue(&imei);
    let mut platform = Platform::start(pki.server.clone()).await;
    let mut m = start_modem(
        &imei,
        Some(pki.device_tls(&creds)),
        SerialSide::Tcp(meter_addr),
    )
    .await;
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "OK"
    );
    let mut tls = platform.accept().await;
    assert_eq!(read_exact(&mut tls, 15).await, imei.as_str().as_bytes());
    // A Modbus RTU request (read holding registers), binary, split in two.
    let request = [0x01, 0x03, 0x00, 0x00, 0x00, 0x0a, 0xc5, 0xcd];
    tls.write_all(&request[..3]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tls.write_all(&request[3..]).await.unwrap();
    let mut got = Vec::new();
    while got.len() < request.len() {
        got.extend(
            tokio::time::timeout(WAIT, seen_rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got, request);
    let echoed = read_exact(&mut tls, request.len()).await;
    assert_eq!(echoed, request.to_ascii_uppercase());
    tls.write_all(b"hello meter").await.unwrap();
    assert_eq!(read_exact(&mut tls, 11).await, b"HELLO METER");

    // The meter closes: the tunnel ends and the platform sees a clean close.
    tls.write_all(b"BYE").await.unwrap();
    assert!(read_to_close(&mut tls).await.unwrap().is_empty());
    let counters = m.counters.clone();
    wait(
        || counters.snapshot().tunnel_closed_serial == 1,
        "serial side closed",
    )
    .await;
    let c = counters.snapshot();
    assert_eq!(c.tunnel_bytes_down, (request.len() + 11 + 3) as u64);
    assert_eq!(c.tunnel_bytes_up, (request.len() + 11) as u64);
    assert_eq!((c.tunnels_opened, c.tunnels_closed()), (1, 1));
    m.cancel.cancel();
}

#[tokio::test]
async fn tcp_serial_side_unreachable_ends_the_tunnel_as_an_error() {
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = free.local_addr().unwrap().to_string();
    drop(free);
    let pki = Pki::new();
    let imei = random_imei();
    let creds = pki.issue(&imei);
    let mut platform = Platform::start(pki.server.clone()).await;
    let mut m = start_modem(
        &imei,
        Some(pki.device_tls(&creds)),
        SerialSide::Tcp(nowhere),
    )
    .await;
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "OK"
    );
    let mut tls = platform.accept().await;
    // The ID is sent, then the tunnel closes.
    assert_eq!(
        read_to_close(&mut tls).await.unwrap(),
        imei.as_str().as_bytes()
    );
    let counters = m.counters.clone();
    wait(|| counters.snapshot().tunnel_closed_error == 1, "error").await;
    m.cancel.cancel();
}

#[tokio::test]
async fn failed_tunnels_are_only_counted() {
    let pki = Pki::new();
    let imei = random_imei();
    let creds = pki.issue(&imei);
    let mut m = start_modem(&imei, Some(pki.device_tls(&creds)), SerialSide::Iec62056).await;

    // Nothing listening.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = free.local_addr().unwrap().port();
    drop(free);
    assert_eq!(
        m.probe.temporal_client("127.0.0.1", closed_port, 30).await,
        "OK"
    );
    let counters = m.counters.clone();
    wait(|| counters.snapshot().tunnel_failures == 1, "TCP failure").await;

    // A platform whose certificate comes from another CA: the modem refuses it.
    let other = Pki::new();
    let mut platform = Platform::start(other.server.clone()).await;
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "OK"
    );
    let refused = tokio::time::timeout(WAIT, platform.accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(refused.is_err());
    wait(|| counters.snapshot().tunnel_failures == 2, "TLS failure").await;

    // A server name that is not in the certificate (127.0.0.1 and localhost are).
    let mut platform = Platform::start_on(pki.server.clone(), "127.0.0.2").await;
    assert_eq!(
        m.probe
            .temporal_client("127.0.0.2", platform.port, 30)
            .await,
        "OK"
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), platform.accepted.recv()).await;
    wait(|| counters.snapshot().tunnel_failures == 3, "name mismatch").await;

    // A modem without a TLS identity for tunnels.
    let imei2 = random_imei();
    let mut plain = start_modem(&imei2, None, SerialSide::Iec62056).await;
    let mut platform = Platform::start(pki.server.clone()).await;
    assert_eq!(
        plain
            .probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "OK"
    );
    let c2 = plain.counters.clone();
    wait(|| c2.snapshot().tunnel_failures == 1, "no identity").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), platform.accepted.recv())
            .await
            .is_err()
    );

    let c = counters.snapshot();
    assert_eq!(
        (c.tunnels_opened, c.tunnels_closed(), c.tunnels_busy),
        (0, 0, 0)
    );
    assert_eq!(c.error_replies, 0);
    // Still answering commands.
    assert_eq!(m.probe.ask("AT").await, "OK");
    m.cancel.cancel();
    plain.cancel.cancel();
}

/// A pty pair from socat: the modem opens one end with tokio-serial (at
/// COMM_baudrate), the test plays the meter on the other.
#[tokio::test]
async fn device_serial_side_over_a_pty() {
    if std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("socat not installed: skipping the pty test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let modem_end = dir.path().join("modem");
    let meter_end = dir.path().join("meter");
    let mut socat = tokio::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", modem_end.display()))
        .arg(format!("pty,raw,echo=0,link={}", meter_end.display()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait(
        || modem_end.exists() && meter_end.exists(),
        "socat made the ptys",
    )
    .await;
    use tokio_serial::SerialPortBuilderExt as _;
    let mut meter = tokio_serial::new(meter_end.to_string_lossy(), 9600)
        .open_native_async()
        .unwrap();

    let pki = Pki::new();
    let imei = random_imei();
    let creds = pki.issue(&imei);
    let mut platform = Platform::start(pki.server.clone()).await;
    let mut m = start_modem(
        &imei,
        Some(pki.device_tls(&creds)),
        SerialSide::Device(modem_end.clone()),
    )
    .await;
    assert_eq!(
        m.probe
            .temporal_client("localhost", platform.port, 30)
            .await,
        "OK"
    );
    let mut tls = platform.accept().await;
    assert_eq!(read_exact(&mut tls, 15).await, imei.as_str().as_bytes());
    tls.write_all(b"/?!\r\n").await.unwrap();
    assert_eq!(read_exact(&mut meter, 5).await, b"/?!\r\n");
    meter.write_all(b"/XYZ5PTY\r\n").await.unwrap();
    assert_eq!(read_exact(&mut tls, 10).await, b"/XYZ5PTY\r\n");
    drop(tls);
    let counters = m.counters.clone();
    wait(|| counters.snapshot().tunnel_closed_peer == 1, "closed").await;
    let c = counters.snapshot();
    assert_eq!((c.tunnel_bytes_down, c.tunnel_bytes_up), (5, 10));
    m.cancel.cancel();
    let _ = socat.kill().await;
}
