//! Issue 16, item 5: every listener bounded per peer. Hostile tests on 127.0.0.0/8 only
//! (Linux routes all of it to `lo`, so a client bound to 127.0.0.2 is "another address"),
//! each bounded in time.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{ADMIN_PASSWORD, Enrolled, TestApp, imei};
use crate::modem::{TestModem, tls};

/// The address the hostile clients use (the servers listen on 127.0.0.1).
const HOSTILE: [u8; 4] = [127, 0, 0, 1];
/// Another loopback address, for the well-behaved client.
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to `to` from the local address `from`.
async fn tcp_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

fn encode(p: rumqttc::mqttbytes::v4::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).unwrap();
    b.to_vec()
}

/// A modem connecting from `from`: TCP, mutual TLS, CONNECT; returns the CONNACK return
/// code and how long it all took.
async fn modem_connect_from(from: [u8; 4], mqtt: SocketAddr, e: &Enrolled) -> (u8, Duration) {
    let started = Instant::now();
    let tcp = tcp_from(from, mqtt).await.expect("TCP connect");
    let mut s = tokio_rustls::TlsConnector::from(tls(e))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    s.write_all(&encode(rumqttc::mqttbytes::v4::Packet::Connect(
        rumqttc::mqttbytes::v4::Connect::new(e.imei.clone()),
    )))
    .await
    .unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.expect("CONNACK");
    assert_eq!(buf[0], 0x20, "a CONNACK");
    (buf[3], started.elapsed())
}

/// Opens `n` TCP connections from `from` to `to`, in batches (so the listen backlog keeps
/// up).
async fn open_many(from: [u8; 4], to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = futures::future::join_all(chunk.iter().map(|_| tcp_from(from, to))).await;
        all.extend(batch.into_iter().map(|r| r.expect("TCP connect")));
    }
    all
}

/// How many of `streams` the server has closed (EOF or reset) within `within`.
async fn count_closed(streams: &mut [TcpStream], within: Duration) -> usize {
    let closed = futures::future::join_all(streams.iter_mut().map(|s| async move {
        let mut buf = [0u8; 512];
        let end = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(end, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }))
    .await;
    closed.into_iter().filter(|c| *c).count()
}

/// The report: 2,100 idle TCP connections from one address filled all 2,048
/// handshake slots of the MQTT port, and a modem from another address could not connect.
/// With the default settings (2,048 handshakes, 128 per address), it connects at once.
#[tokio::test]
async fn idle_sockets_from_one_address_leave_a_modem_from_another_connecting() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(7001)).await;

    let mut idle = open_many(HOSTILE, app.mqtt, 2100).await;
    // Let the listener accept them all; each sends nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (code, took) = tokio::time::timeout(
        Duration::from_secs(2),
        modem_connect_from(OTHER, app.mqtt, &e),
    )
    .await
    .expect("the modem from another address connects within 2 s");
    assert_eq!(code, 0, "CONNACK accepted");
    println!("modem from 127.0.0.2 connected in {took:?} beside 2,100 idle sockets");
    assert!(took < Duration::from_secs(2));

    // All but the per-address share (128) were closed at once.
    let closed = count_closed(&mut idle, Duration::from_millis(500)).await;
    println!("{closed} of 2,100 idle sockets closed at once");
    assert!(closed >= 2100 - 128, "only {closed} closed");
    drop(idle);
    app.stop().await;
}

/// 2,000 slowloris connections (a partial request head, then nothing) from one address:
/// the API answers a request from another address at once, the modem listener still
/// takes a modem, connections over the per-address cap (512) are closed at once and the
/// rest when the header read timeout (here 3 s) runs out.
#[tokio::test]
async fn slowloris_connections_stop_neither_the_api_nor_the_modem_listener() {
    let app = TestApp::spawn_with(|s| {
        s.http_limits.header_read_timeout = Duration::from_secs(3);
    })
    .await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(7002)).await;
    let http: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    let started = Instant::now();
    let mut slow = open_many(HOSTILE, http, 2000).await;
    for s in &mut slow {
        // Writes to a socket the server already closed may fail: that is the point.
        let _ = s
            .write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await;
    }
    println!(
        "2,000 slowloris connections opened in {:?}",
        started.elapsed()
    );

    // The API answers another address promptly.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(OTHER))
        .build()
        .unwrap();
    let t = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        other.get(format!("{}/healthz", app.base)).send(),
    )
    .await
    .expect("the API answers within 2 s")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    println!("/healthz from 127.0.0.2 answered in {:?}", t.elapsed());

    // The modem listener still takes a modem.
    let (code, took) = tokio::time::timeout(
        Duration::from_secs(2),
        modem_connect_from(HOSTILE, app.mqtt, &e),
    )
    .await
    .expect("a modem connects within 2 s");
    assert_eq!(code, 0);
    println!("a modem connected in {took:?}");

    // Over the per-address cap: closed at once.
    let closed_now = count_closed(&mut slow, Duration::from_millis(300)).await;
    println!("{closed_now} of 2,000 closed at once (over the per-address cap)");
    assert!(closed_now >= 2000 - 512, "only {closed_now} closed at once");
    // The rest: when the header read timeout runs out.
    let closed_later = count_closed(&mut slow, Duration::from_secs(6)).await;
    println!(
        "all {closed_later} closed {:?} after the flood began",
        started.elapsed()
    );
    assert_eq!(closed_later, 2000, "every slowloris connection is closed");
    // And the flooding address itself is served again once they are gone.
    let resp = app.client.get(format!("{}/healthz", app.base)).send().await;
    assert_eq!(resp.unwrap().status(), StatusCode::OK);
    app.stop().await;
}

/// A modem answering a command with lines of just under 64 KiB (the packet limit), none a
/// final result, for the command's whole timeout: the reply kept stays under the bound
/// (`mqtt.max_reply_bytes`, 256 KiB by default), the command fails with the reason, and the
/// next command works.
#[tokio::test]
async fn a_modem_flooding_non_final_reply_lines_is_bounded_and_failed_with_the_reason() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(7003)).await;

    let mut opts = MqttOptions::new(e.imei.clone(), "localhost", app.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(128 * 1024, 128 * 1024);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
        &e,
    ))));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (cmd_tx, mut commands) = tokio::sync::mpsc::channel::<String>(8);
    let topic = format!("{}/AT", e.imei);
    let sub = client.clone();
    let poller = tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    sub.subscribe(topic.clone(), QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == topic => {
                    let _ = cmd_tx
                        .send(String::from_utf8_lossy(&p.payload).into_owned())
                        .await;
                }
                _ => {}
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let timeout_s = 4;
    let (status, queued) = app
        .post(
            &format!("/api/v1/devices/{}/commands", e.imei),
            &ops,
            json!({"command": "ATI", "timeout_s": timeout_s}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.recv())
        .await
        .expect("the command reaches the modem")
        .unwrap();
    assert_eq!(cmd, "ATI");

    // Lines of 65,000 bytes ("+INFO: xxx..."), never a final result, for the whole timeout.
    let line = format!("+INFO: {}", "x".repeat(65_000 - 7));
    let flood_until = Instant::now() + Duration::from_secs(timeout_s);
    let mut sent = 0usize;
    while Instant::now() < flood_until {
        client
            .publish(
                format!("{}/ATR", e.imei),
                QoS::AtMostOnce,
                false,
                line.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        sent += line.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("the modem sent {sent} bytes of non-final reply lines");
    assert!(sent > 1024 * 1024, "the flood is well over the bound");

    let done = app
        .get(&format!("/api/v1/commands/{id}?wait_s=10"), &ops)
        .await
        .1;
    assert_eq!(done["state"], "failed", "{}", done["error"]);
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("limit of 262144 bytes") && error.contains("mqtt.max_reply_bytes"),
        "{error}"
    );
    let kept = done["reply"].as_str().unwrap().len();
    println!("command failed: {error:?}; reply kept: {kept} bytes");
    assert!(kept <= 256 * 1024, "kept {kept} bytes");
    assert!(kept > 128 * 1024, "the reply's first bytes are kept");
    // Failed when the bound was crossed, long before the timeout.
    let sent_at = time::OffsetDateTime::parse(
        done["sent_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let completed_at = time::OffsetDateTime::parse(
        done["completed_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        completed_at - sent_at < time::Duration::seconds(timeout_s as i64),
        "failed after {}",
        completed_at - sent_at
    );

    // The connection is still good: the next command gets its own reply.
    let (status, next) = app
        .post(
            &format!("/api/v1/devices/{}/commands", e.imei),
            &ops,
            json!({"command": "AT", "timeout_s": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{next}");
    let cmd = tokio::time::timeout(Duration::from_secs(15), commands.recv())
        .await
        .expect("the next command reaches the modem")
        .unwrap();
    assert_eq!(cmd, "AT");
    client
        .publish(
            format!("{}/ATR", e.imei),
            QoS::AtLeastOnce,
            false,
            "\r\nOK\r\n",
        )
        .await
        .unwrap();
    let next_id = next["id"].as_str().unwrap();
    let done = app
        .get(&format!("/api/v1/commands/{next_id}?wait_s=10"), &ops)
        .await
        .1;
    assert_eq!(done["state"], "succeeded", "{done}");
    poller.abort();
    app.stop().await;
}

/// A SUBSCRIBE with many denied filters: the first few are audited, then the connection is
/// closed; no audit row per filter.
#[tokio::test]
async fn a_subscribe_with_many_denied_filters_disconnects_after_the_first_few() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let admin = app.admin_token().await;
    let e = app.enroll(&ops, &imei(7004)).await;
    let tcp = TcpStream::connect(app.mqtt).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls(&e))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    s.write_all(&encode(rumqttc::mqttbytes::v4::Packet::Connect(
        rumqttc::mqttbytes::v4::Connect::new(e.imei.clone()),
    )))
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[3], 0);
    let filters: Vec<_> = (0..500)
        .map(|i| rumqttc::mqttbytes::v4::SubscribeFilter::new(format!("x/{i}/AT"), QoS::AtMostOnce))
        .collect();
    let subscribe = rumqttc::mqttbytes::v4::Subscribe::new_many(filters);
    s.write_all(&encode(rumqttc::mqttbytes::v4::Packet::Subscribe(
        subscribe,
    )))
    .await
    .unwrap();
    // Closed without a SUBACK.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed");
    assert!(rest.is_empty() || rest[0] != 0x90, "no SUBACK: {rest:?}");
    let (status, audit) = app
        .get(
            &format!("/api/v1/audit?target={}&limit=100", e.imei),
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let rows = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "mqtt.subscribe.denied")
        .count();
    assert_eq!(rows, 3, "only the first three denied filters are audited");
    app.stop().await;
}

/// Event streams per principal: over the limit, 429 naming it; a stream that ends gives its
/// share back.
#[tokio::test]
async fn event_streams_per_principal_are_capped_with_429() {
    let app = TestApp::spawn_with(|s| {
        s.stream_limits = callhome_api::limits::StreamLimits::new(2, 1 << 20);
    })
    .await;
    let reader = app.user_token("reader1", "reader").await;
    let other = app.user_token("reader2", "reader").await;
    let open = |token: &str| {
        app.client
            .get(app.url("/api/v1/events"))
            .bearer_auth(token)
            .send()
    };
    let first = open(&reader).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = open(&reader).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let third = open(&reader).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["content-type"], "application/problem+json");
    let body: Value = third.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("http.max_event_streams_per_principal"),
        "{body}"
    );
    // Another principal is not affected.
    assert_eq!(open(&other).await.unwrap().status(), StatusCode::OK);
    // Closing one stream gives its share back.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = open(&reader).await.unwrap();
        if r.status() == StatusCode::OK {
            again = Some(r);
            break;
        }
    }
    assert!(again.is_some(), "a closed stream's share comes back");
    drop(second);
    app.stop().await;
}

/// `callhome serve` as a child process, so that its RSS is its own.
struct ChildServer {
    child: tokio::process::Child,
    base: String,
    mqtt: SocketAddr,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callhome"))
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
            .args([
                "--tunnel",
                "127.0.0.1:0",
                "--device-http",
                "127.0.0.1:0",
                "--log",
                "warn",
            ])
            .env("CALLHOME_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("CALLHOME_CONFIG")
            .env_remove("CALLHOME_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("callhome serve starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let rest = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("callhome: listening ") {
                    return rest.to_owned();
                }
            }
            panic!("the server exited before listening");
        })
        .await
        .expect("the server listens within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |key: &str| -> SocketAddr {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key}= in {rest}"))
                .parse()
                .unwrap()
        };
        Self {
            base: format!("http://{}", addr("http")),
            mqtt: addr("mqtt"),
            child,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// A single 16 MiB WebSocket frame is refused from its header, without being buffered: the
/// server's RSS does not grow by anything like 16 MiB, and the socket is closed with 1009
/// (message too big).
#[tokio::test]
async fn a_16_mib_websocket_frame_is_refused_without_being_buffered() {
    let srv = ChildServer::start().await;
    let (status, tok) = srv
        .post(
            "/api/v1/auth/token",
            None,
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tok}");
    let admin = tok["access_token"].as_str().unwrap().to_owned();
    // A device, its certificate, its modem on the command channel.
    let imei = imei(7005);
    let (status, body) = srv
        .post("/api/v1/devices", Some(&admin), json!({"imei": imei}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (key_pem, csr) = callhome_ca::generate_key_and_csr(&imei).unwrap();
    let (status, signed) = srv
        .post(
            &format!("/api/v1/devices/{imei}/certificate"),
            Some(&admin),
            json!({"csr": csr}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    let e = Enrolled {
        imei: imei.clone(),
        key_pem,
        cert_pem: signed["certificate"].as_str().unwrap().to_owned(),
        ca_pem: signed["ca_chain"].as_str().unwrap().to_owned(),
        serial: signed["serial"].as_str().unwrap().to_owned(),
    };
    let mut modem = TestModem::connect(srv.mqtt, &e).await;
    let (status, created) = srv
        .post(
            &format!("/api/v1/devices/{imei}/sessions"),
            Some(&admin),
            json!({"mode": "rendezvous", "timeout_s": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // The modem answers TEMPORALCLIENT and dials the tunnel with its ID.
    let cmd = modem
        .next_command(Duration::from_secs(10))
        .await
        .expect("TEMPORALCLIENT");
    let args: Vec<&str> = cmd
        .strip_prefix("AT^MTXTUNNEL=TEMPORALCLIENT,")
        .unwrap()
        .split(',')
        .collect();
    modem.reply("OK").await;
    let tcp = TcpStream::connect((args[0], args[1].parse::<u16>().unwrap()))
        .await
        .unwrap();
    let mut tunnel = tokio_rustls::TlsConnector::from(tls(&e))
        .connect(
            rustls::pki_types::ServerName::try_from(args[0].to_owned()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tunnel.write_all(imei.as_bytes()).await.unwrap();

    let url = format!(
        "{}{}?token={}",
        srv.base.replacen("http", "ws", 1),
        created["reader"]["stream_path"].as_str().unwrap(),
        created["reader"]["token"].as_str().unwrap()
    );
    // Unlimited on our side: the client must be able to send the frame.
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket upgrade");
    // A small frame goes through to the modem.
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        b"ping".to_vec().into(),
    ))
    .await
    .unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut buf))
        .await
        .expect("bytes reach the modem")
        .unwrap();
    assert_eq!(&buf, b"ping");

    let payload = vec![0x55u8; 16 * 1024 * 1024];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = srv.rss_kib();
    // The 16 MiB frame: the server refuses it from its header; sending may fail half way
    // when the server closes.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            payload.into(),
        )),
    )
    .await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server closes the socket");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = srv.rss_kib();
    let grew = after.saturating_sub(before);
    println!(
        "server RSS {before} KiB -> {after} KiB (+{grew} KiB) around a 16 MiB frame; close: {close:?}"
    );
    assert!(grew < 4 * 1024, "the server's RSS grew by {grew} KiB");
    let frame = close.expect("a close frame, not a dropped connection");
    assert_eq!(
        u16::from(frame.code),
        1009,
        "close code 1009 (message too big)"
    );
    assert!(frame.reason.contains("limit"), "{}", frame.reason);
    drop(srv);
}
