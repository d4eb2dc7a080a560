//! Simulated modems against Mosquitto on 127.0.0.1:1883 (plain), and over mutual TLS
//! through a local TLS-terminating proxy in front of it (`callhome_ca` server config,
//! client certificate required).
//!
//! Set `CALLHOME_TEST_MQTT=host:port` to use another broker.

use std::sync::Arc;
use std::time::Duration;

use callhome_ca::tls::{ClientAuth, server_config};
use callhome_ca::{Authority, CaParams, generate_key_and_csr};
use callhome_core::Imei;
use callhome_core::dialect::{FinalResult, parse_csq_reply};
use callhome_sim::{
    Backoff, Behaviour, Credentials, Fleet, FleetConfig, FleetTransport, ModemSettings, ReplyMode,
    SimModem, TlsBase, Transport, config::MasterConfig, fleet_imeis,
};
use rand::Rng as _;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use rustls_pki_types::pem::PemObject as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn broker() -> (String, u16) {
    let s = std::env::var("CALLHOME_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (h, p) = s.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

/// A random 14-digit IMEI body, so parallel tests and runs never share topics.
fn random_body() -> String {
    format!(
        "99{:012}",
        rand::rng().random_range(0..1_000_000_000_000u64)
    )
}

fn settings(host: &str, port: u16, tls: bool) -> ModemSettings {
    let mut s = ModemSettings::new(host, port, tls);
    s.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    s.master = Arc::new(MasterConfig::for_platform(host, port, tls, Some(1)));
    s.connect_timeout = Duration::from_secs(5);
    s
}

/// A test client standing in for the platform: subscribes to reply and status topics
/// and publishes commands.
struct Probe {
    client: AsyncClient,
    rx: mpsc::Receiver<(String, String)>,
}

impl Probe {
    async fn new(topics: &[String]) -> Self {
        let (host, port) = broker();
        let id = format!("probe-{}", rand::rng().random::<u64>());
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        for t in topics {
            client.subscribe(t.clone(), QoS::AtLeastOnce).await.unwrap();
        }
        let (tx, rx) = mpsc::channel(256);
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let want = topics.len();
        tokio::spawn(async move {
            let mut acked = 0;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        acked += 1;
                        if acked == want {
                            let _ = ready_tx.send(()).await;
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx.send((p.topic.clone(), text)).await.is_err() {
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
        Self { client, rx }
    }

    async fn command(&self, imei: &Imei, text: &str) {
        self.client
            .publish(
                format!("{imei}/AT"),
                QoS::AtLeastOnce,
                false,
                text.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    /// The next message on `topic` within `timeout` (others are skipped).
    async fn next_on(&mut self, topic: &str, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, m))) if t == topic => return Some(m),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// Sends `text` and waits for the reply.
    async fn ask(&mut self, imei: &Imei, text: &str) -> Option<String> {
        self.command(imei, text).await;
        self.next_on(&format!("{imei}/ATR"), Duration::from_secs(5))
            .await
    }
}

fn reply_topic(imei: &Imei) -> String {
    format!("{imei}/ATR")
}

async fn start_plain(
    behaviour: Behaviour,
) -> (
    Imei,
    callhome_sim::ModemHandle,
    Arc<callhome_sim::Counters>,
    CancellationToken,
) {
    let (host, port) = broker();
    let imei = Imei::from_body(&random_body()).unwrap();
    let modem = SimModem::new(
        imei.clone(),
        Transport::Plain,
        Arc::new(settings(&host, port, false)),
    )
    .with_behaviour(behaviour);
    let counters = modem.counters().clone();
    let cancel = CancellationToken::new();
    let (handle, _task) = modem.spawn(cancel.clone());
    wait(|| counters.snapshot().connected == 1, "modem connected").await;
    (imei, handle, counters, cancel)
}

async fn wait(cond: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn answers_commands_and_sends_status() {
    let (imei, _h, counters, cancel) = start_plain(Behaviour::default()).await;
    let status_topic = format!("{imei}/dns");
    let mut probe = Probe::new(&[reply_topic(&imei), status_topic.clone()]).await;

    let r = probe.ask(&imei, "AT+CSQ").await.expect("reply");
    assert!(
        r.starts_with("+CSQ: ") && r.ends_with(",99\r\n\r\nOK"),
        "{r:?}"
    );
    let (csq, _) = parse_csq_reply(&r).unwrap();
    assert!((10..=31).contains(&csq));
    assert_eq!(probe.ask(&imei, "AT").await.unwrap(), "OK");
    let ati = probe.ask(&imei, "ATI").await.unwrap();
    assert!(
        ati.ends_with("\r\n\r\nOK") && ati.contains("REVISION"),
        "{ati:?}"
    );
    assert_eq!(
        probe
            .ask(&imei, "AT^MTXTUNNEL=GETPARAM, GPRS_apn")
            .await
            .unwrap(),
        "GPRS_apn: movistar.es\r\n\r\nOK"
    );
    assert_eq!(
        probe
            .ask(&imei, "AT^MTXTUNNEL=SETPARAM,GPRS_apn,sim.apn")
            .await
            .unwrap(),
        "OK"
    );
    let cfg = probe.ask(&imei, "AT^MTXTUNNEL=GETCONFIG").await.unwrap();
    assert!(cfg.contains("GPRS_apn: sim.apn\r\n"), "{cfg}");
    assert!(
        cfg.contains(&format!("MQTT_atrtopic: {imei}/ATR\r\n")),
        "{cfg}"
    );
    assert!(cfg.ends_with("\r\n\r\nOK"));
    assert!(
        probe
            .ask(&imei, "AT^MTXTUNNEL=VERSION")
            .await
            .unwrap()
            .starts_with("MTX-Tunnel v")
    );
    assert_eq!(probe.ask(&imei, "AT+BOGUS").await.unwrap(), "ERROR");

    // DNS_period is 1 s here.
    let status = probe
        .next_on(&status_topic, Duration::from_secs(3))
        .await
        .expect("status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["imei"], imei.as_str());
    assert_eq!(v["csq"], u64::from(csq));
    assert_eq!(v["rssi"], -113 + 2 * i64::from(csq));
    assert_eq!(v["model"], "199801422");
    assert!(v["ip"].as_str().unwrap().starts_with("10."));
    assert!(v["fw"].is_string() && v["uptime"].is_u64());

    let c = counters.snapshot();
    assert_eq!(c.commands_received, 8);
    assert_eq!(c.replies_sent, 8);
    assert_eq!(c.error_replies, 1);
    assert!(c.status_sent >= 1);
    cancel.cancel();
    wait(|| counters.snapshot().connected == 0, "modem stopped").await;
}

#[tokio::test]
async fn misbehaviour_switches() {
    let (imei, handle, counters, cancel) = start_plain(Behaviour::error()).await;
    let mut probe = Probe::new(&[reply_topic(&imei)]).await;
    assert_eq!(probe.ask(&imei, "AT+CSQ").await.unwrap(), "ERROR");
    assert_eq!(FinalResult::classify("ERROR"), FinalResult::Error);

    // Silent: the command is received, nothing comes back.
    assert!(handle.set_behaviour(Behaviour::silent()).await);
    probe.command(&imei, "AT").await;
    assert_eq!(
        probe
            .next_on(&reply_topic(&imei), Duration::from_millis(800))
            .await,
        None
    );
    assert_eq!(counters.snapshot().commands_received, 2);

    // Delayed replies.
    let delay = Duration::from_millis(600);
    assert!(
        handle
            .set_behaviour(Behaviour {
                reply_delay: delay,
                ..Behaviour::default()
            })
            .await
    );
    let t = std::time::Instant::now();
    assert_eq!(probe.ask(&imei, "AT").await.unwrap(), "OK");
    assert!(t.elapsed() >= delay, "{:?}", t.elapsed());

    // Drop on command: no reply, the connection goes and comes back.
    assert!(handle.set_behaviour(Behaviour::drop_on_command()).await);
    probe.command(&imei, "AT").await;
    wait(
        || counters.snapshot().reconnects == 1,
        "reconnect after drop-on-command",
    )
    .await;
    assert!(handle.set_behaviour(Behaviour::default()).await);
    wait(|| counters.snapshot().connected == 1, "connected again").await;
    assert_eq!(probe.ask(&imei, "AT").await.unwrap(), "OK");
    let c = counters.snapshot();
    assert_eq!(c.disconnects, 1);
    assert_eq!(c.replies_sent, 3);
    cancel.cancel();
}

#[tokio::test]
async fn reconnects_after_the_connection_drops() {
    let (imei, handle, counters, cancel) = start_plain(Behaviour::default()).await;
    let mut probe = Probe::new(&[reply_topic(&imei)]).await;
    for i in 1..=3 {
        assert!(handle.drop_connection().await);
        wait(|| counters.snapshot().reconnects == i, "reconnected").await;
        wait(|| counters.snapshot().connected == 1, "connected").await;
        assert_eq!(probe.ask(&imei, "AT").await.unwrap(), "OK");
    }
    // Drop every connection after 300 ms.
    assert!(
        handle
            .set_behaviour(Behaviour {
                drop_after: Some(Duration::from_millis(300)),
                ..Behaviour::default()
            })
            .await
    );
    wait(|| counters.snapshot().reconnects >= 6, "periodic drops").await;
    let c = counters.snapshot();
    assert_eq!(c.ever_connected, 1);
    assert!(c.disconnects >= 6);
    cancel.cancel();
    wait(|| counters.snapshot().connected == 0, "stopped").await;
}

#[tokio::test]
async fn fleet_connects_and_a_fraction_misbehaves() {
    let (host, port) = broker();
    let body = random_body();
    let n = 200;
    let mut config = FleetConfig::new(&body, n, settings(&host, port, false));
    config.connect_concurrency = 16;
    config.misbehaviour = Some((Behaviour::error(), 0.1));
    let fleet = Fleet::start(config, FleetTransport::Plain).unwrap();
    assert!(
        fleet.wait_all_connected(Duration::from_secs(30)).await,
        "{:?}",
        fleet.counters().snapshot()
    );
    let c = fleet.counters().snapshot();
    assert_eq!(c.connected, n as u64);
    assert_eq!(c.reconnects, 0);
    assert!(fleet.counters().time_to_all_connected().is_some());

    let imeis = fleet_imeis(&body, n).unwrap();
    let topics: Vec<String> = imeis.iter().map(reply_topic).collect();
    let mut probe = Probe::new(&topics[..20]).await;
    let mut errors = 0;
    for imei in &imeis[..20] {
        let r = probe.ask(imei, "AT+CSQ").await.expect("reply");
        if r == "ERROR" {
            errors += 1;
        } else {
            assert!(parse_csq_reply(&r).is_ok(), "{r:?}");
        }
    }
    assert_eq!(errors, 2, "every tenth modem answers ERROR");

    // Per-modem handles change behaviour.
    let h = fleet.handle(&imeis[1]).unwrap();
    assert!(
        h.set_behaviour(Behaviour {
            reply: ReplyMode::Error,
            ..Behaviour::default()
        })
        .await
    );
    assert_eq!(probe.ask(&imeis[1], "AT").await.unwrap(), "ERROR");
    let counters = fleet.counters().clone();
    fleet.shutdown().await;
    assert_eq!(counters.snapshot().connected, 0);
}

/// A TLS-terminating proxy: accepts mutual TLS with the CA's server config and pipes the
/// decrypted bytes to the broker. Reports each accepted client certificate.
async fn tls_proxy(
    server: Arc<rustls::ServerConfig>,
    seen: mpsc::Sender<Result<Vec<u8>, String>>,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = seen.send(Err(e.to_string())).await;
                        return;
                    }
                };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let _ = seen
                    .send(cert.ok_or_else(|| "no client certificate".to_owned()))
                    .await;
                let (h, p) = broker();
                let Ok(mut upstream) = TcpStream::connect((h.as_str(), p)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

fn issue(authority: &Authority, imei: &Imei) -> Credentials {
    let (key_pem, csr) = generate_key_and_csr(imei.as_str()).unwrap();
    let issued = authority.sign_csr(&csr, imei.as_str(), None).unwrap();
    Credentials {
        cert_pem: issued.certificate_pem,
        key_pem,
    }
}

#[tokio::test]
async fn mutual_tls_fleet_through_a_tls_proxy() {
    callhome_sim::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::load_or_init(&dir.path().join("ca"), &CaParams::default()).unwrap();
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
    let (seen_tx, mut seen_rx) = mpsc::channel(64);
    let port = tls_proxy(server, seen_tx).await;

    let body = random_body();
    let n = 3;
    let imeis = fleet_imeis(&body, n).unwrap();
    let credentials: Vec<Credentials> = imeis.iter().map(|i| issue(&authority, i)).collect();
    let base = TlsBase::new(authority.ca_certificate_pem()).unwrap();
    // The TLS server name is the host given: "localhost" is in the server certificate.
    let config = FleetConfig::new(&body, n, settings("localhost", port, true));
    let fleet = Fleet::start(
        config,
        FleetTransport::MutualTls {
            base: base.clone(),
            credentials: credentials.clone(),
        },
    )
    .unwrap();
    assert!(
        fleet.wait_all_connected(Duration::from_secs(20)).await,
        "{:?}",
        fleet.counters().snapshot()
    );
    let mut presented = Vec::new();
    for _ in 0..n {
        presented.push(seen_rx.recv().await.unwrap().expect("handshake"));
    }
    for c in &credentials {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        assert!(
            presented.contains(&der.to_vec()),
            "each modem presents its own certificate"
        );
    }
    let mut probe = Probe::new(&[reply_topic(&imeis[0])]).await;
    assert_eq!(probe.ask(&imeis[0], "AT").await.unwrap(), "OK");
    fleet.shutdown().await;

    // A certificate from another CA is refused; the modem keeps retrying.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Authority::load_or_init(other_dir.path(), &CaParams::default()).unwrap();
    let imei = Imei::from_body(&random_body()).unwrap();
    let modem = SimModem::new(
        imei.clone(),
        Transport::MutualTls {
            base,
            credentials: issue(&other, &imei),
        },
        Arc::new(settings("127.0.0.1", port, true)),
    );
    let counters = modem.counters().clone();
    let cancel = CancellationToken::new();
    let _ = modem.spawn(cancel.clone());
    wait(
        || counters.snapshot().connect_failures >= 2,
        "refused attempts",
    )
    .await;
    assert_eq!(counters.snapshot().ever_connected, 0);
    let refused = seen_rx.recv().await.unwrap().unwrap_err();
    // Both CAs share a name, so the server finds the wrong issuer's key: BadSignature.
    assert!(refused.contains("certificate"), "{refused}");
    cancel.cancel();

    // The TLS configuration refuses a key that does not match the certificate.
    let a = issue(&authority, &imeis[0]);
    let b = issue(&authority, &imeis[1]);
    let mixed = Credentials {
        cert_pem: a.cert_pem,
        key_pem: b.key_pem,
    };
    assert!(
        TlsBase::new(authority.ca_certificate_pem())
            .unwrap()
            .for_device(&mixed)
            .is_err()
    );
}

#[tokio::test]
async fn reboot_answers_ok_drops_and_comes_back_with_its_config() {
    let (host, port) = broker();
    let imei = Imei::from_body(&random_body()).unwrap();
    let mut s = settings(&host, port, false);
    // A failure backoff far longer than the test: the reconnection after a reboot
    // must not wait for it.
    s.backoff = Backoff {
        initial: Duration::from_secs(20),
        max: Duration::from_secs(30),
    };
    s.reboot_delay = Duration::from_millis(700);
    let modem = SimModem::new(imei.clone(), Transport::Plain, Arc::new(s));
    let counters = modem.counters().clone();
    let cancel = CancellationToken::new();
    let (_handle, _task) = modem.spawn(cancel.clone());
    wait(|| counters.snapshot().connected == 1, "modem connected").await;

    let new_replies = format!("{imei}/replies");
    let status_topic = format!("{imei}/dns");
    let mut probe = Probe::new(&[reply_topic(&imei), new_replies.clone(), status_topic]).await;
    for (key, value) in [
        ("GPRS_apn", "rebooted.apn"),
        ("MQTT_atrtopic", new_replies.as_str()),
        ("DNS_period", "600"),
    ] {
        let cmd = format!("AT^MTXTUNNEL=SETPARAM,{key},{value}");
        assert_eq!(probe.ask(&imei, &cmd).await.unwrap(), "OK", "{cmd}");
    }
    // Topics are read at boot: replies still come on the old topic.
    assert_eq!(probe.ask(&imei, "AT").await.unwrap(), "OK");

    let reboot = callhome_core::dialect::Dialect::mtx().reboot().unwrap();
    probe.command(&imei, reboot.as_str()).await;
    let sent = std::time::Instant::now();
    assert_eq!(
        probe
            .next_on(&reply_topic(&imei), Duration::from_secs(5))
            .await
            .unwrap(),
        "OK"
    );
    wait(
        || counters.snapshot().connected == 0,
        "dropped for the reboot",
    )
    .await;
    let c = counters.snapshot();
    assert_eq!((c.reboots, c.disconnects, c.reconnects), (1, 1, 0));
    wait(
        || counters.snapshot().connected == 1,
        "back after the reboot",
    )
    .await;
    let back = sent.elapsed();
    assert!(back >= Duration::from_millis(700), "{back:?}");
    assert!(
        back < Duration::from_secs(10),
        "no failure backoff: {back:?}"
    );
    assert_eq!(counters.snapshot().reconnects, 1);

    // A status message on connecting, then none: DNS_period is now 600 s (the test
    // master sends one every second).
    let status_topic = format!("{imei}/dns");
    let _ = probe
        .next_on(&status_topic, Duration::from_secs(2))
        .await
        .expect("status on connect");
    assert_eq!(
        probe
            .next_on(&status_topic, Duration::from_millis(1500))
            .await,
        None
    );
    // The reply topic and the other SETPARAMs survived the reboot.
    probe.command(&imei, "AT^MTXTUNNEL=GETCONFIG").await;
    let cfg = probe
        .next_on(&new_replies, Duration::from_secs(5))
        .await
        .expect("GETCONFIG reply on the new reply topic");
    assert!(cfg.contains("GPRS_apn: rebooted.apn\r\n"), "{cfg}");
    assert!(cfg.contains("DNS_period: 600\r\n"), "{cfg}");
    assert!(cfg.ends_with("\r\n\r\nOK"), "{cfg}");
    cancel.cancel();
    wait(|| counters.snapshot().connected == 0, "stopped").await;
}

#[tokio::test]
async fn an_erroring_modem_does_not_reboot() {
    let (imei, _h, counters, cancel) = start_plain(Behaviour::error()).await;
    let mut probe = Probe::new(&[reply_topic(&imei)]).await;
    assert_eq!(
        probe.ask(&imei, "AT^MTXTUNNEL=REBOOT").await.unwrap(),
        "ERROR"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = counters.snapshot();
    assert_eq!((c.reboots, c.disconnects, c.connected), (0, 0, 1));
    cancel.cancel();
}
