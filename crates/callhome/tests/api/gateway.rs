//! The modem gateway over real mutual TLS: identity, ACL, hostile peers, presence, status,
//! events, revocation, and the command queue's guarantees.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{Enrolled, TestApp, imei};
use crate::modem::{TestModem, tls};

async fn command(
    app: &TestApp,
    token: &str,
    imei: &str,
    body: Value,
    wait_s: u32,
) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/devices/{imei}/commands?wait_s={wait_s}"),
        token,
        body,
    )
    .await
}

async fn command_state(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(&format!("/api/v1/commands/{id}"), token).await.1
}

/// Polls until `f` holds, for up to `within`.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn command_round_trip_presence_and_status() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(100)).await;
    let mut modem = TestModem::connect(app.mqtt, &e).await;

    let (_, dev) = app.get(&format!("/api/v1/devices/{}", e.imei), &ops).await;
    assert_eq!(dev["online"], true);
    assert_eq!(dev["cert_serial"], e.serial.as_str());
    assert_eq!(dev["mqtt"]["command_topic"], format!("{}/AT", e.imei));
    let (_, online) = app.get("/api/v1/devices?online=true", &ops).await;
    assert_eq!(online["items"].as_array().unwrap().len(), 1);

    let replier = tokio::spawn(async move {
        let cmd = modem
            .next_command(Duration::from_secs(5))
            .await
            .expect("command delivered");
        assert_eq!(cmd, "AT+CSQ");
        modem.reply("\r\n+CSQ: 20,99\r\n\r\nOK\r\n").await;
        modem
    });
    let (status, body) = command(&app, &ops, &e.imei, json!({"command": "AT+CSQ"}), 10).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["result"], "OK");
    assert!(body["reply"].as_str().unwrap().contains("+CSQ: 20,99"));
    assert_eq!(body["attempts"], 1);
    let modem = replier.await.unwrap();

    // Status: JSON payload stored raw and parsed.
    modem
        .client
        .publish(
            format!("{}/dns", e.imei),
            QoS::AtLeastOnce,
            false,
            br#"{"ip":"10.64.1.7","csq":21}"#.to_vec(),
        )
        .await
        .unwrap();
    let path = format!("/api/v1/devices/{}/status", e.imei);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.get(&path, &ops).await.0 == StatusCode::OK
        })
        .await
    );
    let (_, st) = app.get(&path, &ops).await;
    assert_eq!(st["fields"], json!({"ip": "10.64.1.7", "csq": 21}));
    let (_, hist) = app
        .get(&format!("{path}/history?since=2000-01-01T00:00:00Z"), &ops)
        .await;
    assert_eq!(hist["items"].as_array().unwrap().len(), 1);

    // Bad commands are refused before they reach the queue.
    let (status, body) = command(
        &app,
        &ops,
        &e.imei,
        json!({"command": "AT+CSQ\r\nAT+CFUN=0"}),
        0,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("carriage return"),
        "{body}"
    );
    let (status, _) = command(&app, &ops, &imei(999), json!({"command": "AT"}), 0).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    drop(modem);
    let dev_path = format!("/api/v1/devices/{}", e.imei);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.get(&dev_path, &ops).await.1["online"] == false
        })
        .await,
        "offline after disconnect"
    );
    app.stop().await;
}

/// Encodes one MQTT packet.
fn encode(p: rumqttc::mqttbytes::v4::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).unwrap();
    b.to_vec()
}

async fn raw_tls(
    app: &TestApp,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(app.mqtt).await?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
}

/// Sends CONNECT as `e` and reads a reply; returns the CONNACK return code, or `None` if the
/// server closed the connection or the TLS session failed.
async fn raw_connect(
    app: &TestApp,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    client_id: &str,
) -> Option<u8> {
    let Ok(mut s) = raw_tls(app, cfg).await else {
        return None;
    };
    let connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
    if s.write_all(&encode(rumqttc::mqttbytes::v4::Packet::Connect(connect)))
        .await
        .is_err()
    {
        return None;
    }
    let mut buf = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) if buf[0] == 0x20 => Some(buf[3]),
        _ => None,
    }
}

/// Whether the server closes a stream within `within` (EOF or error on read).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn hostile_and_misconfigured_peers_are_refused_while_good_modems_work() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let good = app.enroll(&ops, &imei(200)).await;
    let other = app.enroll(&ops, &imei(201)).await;
    let victim = app.enroll(&ops, &imei(202)).await;

    // A TCP client that sends nothing, held open for the whole test, and a few more.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(app.mqtt).await.unwrap());
    }

    // 1. No client certificate.
    let no_cert = callhome_ca::tls::client_config(&good.ca_pem, None, None).unwrap();
    assert_eq!(
        raw_connect(&app, no_cert, &good.imei).await,
        None,
        "no client certificate"
    );

    // 2. A certificate from another CA (same IMEI).
    let dir = tempfile::tempdir().unwrap();
    let foreign = callhome_ca::Authority::load_or_init(
        dir.path(),
        &callhome_ca::CaParams {
            common_name: "Some Other CA".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let (fkey, fcsr) = callhome_ca::generate_key_and_csr(&good.imei).unwrap();
    let fcert = foreign
        .sign_csr(&fcsr, &good.imei, None)
        .unwrap()
        .certificate_pem;
    let foreign_cfg =
        callhome_ca::tls::client_config(&good.ca_pem, Some(&fcert), Some(&fkey)).unwrap();
    assert_eq!(
        raw_connect(&app, foreign_cfg, &good.imei).await,
        None,
        "certificate from another CA"
    );

    // 3. A revoked certificate.
    let revoked = app.enroll(&ops, &imei(203)).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/certificates/{}/revoke", revoked.serial),
            &ops,
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        raw_connect(&app, tls(&revoked), &revoked.imei).await,
        None,
        "revoked certificate"
    );

    // 4. A client id that is not the certificate's CN: CONNACK 2 (identifier rejected).
    assert_eq!(
        raw_connect(&app, tls(&other), &victim.imei).await,
        Some(2),
        "client id != CN"
    );

    // 5. Subscribing to another device's command topic: SUBACK failure (0x80).
    let mut opts = MqttOptions::new(other.imei.clone(), "localhost", app.mqtt.port());
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
        &other,
    ))));
    let (client, mut ev) = AsyncClient::new(opts, 10);
    client
        .subscribe(format!("{}/AT", victim.imei), QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(s))) = ev.poll().await {
                return s;
            }
        }
    })
    .await
    .expect("SUBACK");
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure]
    );
    // 6. Publishing to another device's reply topic: disconnected.
    client
        .publish(
            format!("{}/ATR", victim.imei),
            QoS::AtLeastOnce,
            false,
            b"OK".to_vec(),
        )
        .await
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        dropped.is_ok(),
        "publishing to another device's topic ends the connection"
    );

    // 7. A 1 MB packet after a good CONNECT: closed.
    let mut s = raw_tls(&app, tls(&other)).await.unwrap();
    s.write_all(&encode(rumqttc::mqttbytes::v4::Packet::Connect(
        rumqttc::mqttbytes::v4::Connect::new(other.imei.clone()),
    )))
    .await
    .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    let big = rumqttc::mqttbytes::v4::Publish::new(
        format!("{}/ATR", other.imei),
        QoS::AtMostOnce,
        vec![b'x'; 1 << 20],
    );
    let _ = s
        .write_all(&encode(rumqttc::mqttbytes::v4::Packet::Publish(big)))
        .await;
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "1 MB packet closes the connection"
    );

    // 8. Random bytes after the TLS handshake: closed.
    let mut s = raw_tls(&app, tls(&other)).await.unwrap();
    let _ = s
        .write_all(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37, 0x42])
        .await;
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "garbage closes the connection"
    );

    // Meanwhile a well-behaved modem connects and completes a command promptly.
    let started = Instant::now();
    let modem = TestModem::connect(app.mqtt, &good).await;
    let _auto = modem.auto_reply();
    let (status, body) = command(&app, &ops, &good.imei, json!({"command": "AT"}), 10).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "good modem served in {:?}",
        started.elapsed()
    );

    // Each refusal left a trace: audit rows for the ACL and identity violations, metrics.
    let admin = app.admin_token().await;
    let (_, audit) = app.get("/api/v1/audit?limit=100", &admin).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "mqtt.subscribe.denied",
        "mqtt.publish.denied",
        "mqtt.connect.identity_mismatch",
    ] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "callhome_mqtt_handshake_failures_total",
        "callhome_mqtt_acl_violations_total",
        "callhome_mqtt_disconnects_total",
    ] {
        assert!(metrics.contains(m), "{m} in /metrics");
    }
    drop(idle);
    app.stop().await;
}

#[tokio::test]
async fn revoking_a_certificate_drops_the_live_connection_within_a_second() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(300)).await;
    let mut modem = TestModem::connect(app.mqtt, &e).await;
    let started = Instant::now();
    let (status, _) = app
        .post(
            &format!("/api/v1/certificates/{}/revoke", e.serial),
            &ops,
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(1), modem.connack.recv()).await;
    assert!(
        matches!(ended, Ok(Some(Err(_)))),
        "connection dropped: {ended:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_second_connection_takes_over_the_first() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(310)).await;
    let mut first = TestModem::connect(app.mqtt, &e).await;
    let second = TestModem::connect(app.mqtt, &e).await;
    let ended = tokio::time::timeout(Duration::from_secs(3), first.connack.recv()).await;
    assert!(
        matches!(ended, Ok(Some(Err(_)))),
        "first connection ended: {ended:?}"
    );
    let _auto = second.auto_reply();
    let (status, body) = command(&app, &ops, &e.imei, json!({"command": "AT"}), 10).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    let (_, dev) = app.get(&format!("/api/v1/devices/{}", e.imei), &ops).await;
    assert_eq!(
        dev["online"], true,
        "the old session's end does not mark the device offline"
    );
    app.stop().await;
}

#[tokio::test]
async fn fifo_with_one_command_in_flight() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(400)).await;
    let mut modem = TestModem::connect(app.mqtt, &e).await;
    let mut ids = Vec::new();
    for c in ["AT+CSQ", "ATI", "AT^MTXTUNNEL=VERSION"] {
        let (status, body) = command(&app, &ops, &e.imei, json!({"command": c}), 0).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for (i, c) in ["AT+CSQ", "ATI", "AT^MTXTUNNEL=VERSION"].iter().enumerate() {
        assert_eq!(
            modem.next_command(Duration::from_secs(5)).await.as_deref(),
            Some(*c)
        );
        // Nothing else arrives while this one is unanswered.
        assert_eq!(
            modem.next_command(Duration::from_millis(400)).await,
            None,
            "one in flight"
        );
        let st = command_state(&app, &ops, &ids[i]).await;
        assert_eq!(st["state"], "sent");
        if i + 1 < ids.len() {
            assert_eq!(
                command_state(&app, &ops, &ids[i + 1]).await["state"],
                "queued"
            );
        }
        modem.reply(&format!("reply {i}\r\nOK")).await;
        let (_, done) = app
            .get(&format!("/api/v1/commands/{}?wait_s=5", ids[i]), &ops)
            .await;
        assert_eq!(done["state"], "succeeded");
        assert_eq!(
            done["reply"],
            format!("reply {i}\r\nOK"),
            "each reply matched to its own command"
        );
    }
    // An error reply fails the command and keeps the text.
    let (_, body) = command(&app, &ops, &e.imei, json!({"command": "AT+CPIN?"}), 0).await;
    assert!(modem.next_command(Duration::from_secs(5)).await.is_some());
    modem.reply("+CME ERROR: 10").await;
    let (_, done) = app
        .get(
            &format!("/api/v1/commands/{}?wait_s=5", body["id"].as_str().unwrap()),
            &ops,
        )
        .await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["result"], "+CME ERROR: 10");
    app.stop().await;
}

#[tokio::test]
async fn timeout_then_late_reply_is_never_matched_to_the_next_command() {
    let app = TestApp::spawn_with(|s| s.gateway.late_reply_grace = Duration::from_secs(1)).await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(500)).await;
    let mut modem = TestModem::connect(app.mqtt, &e).await;
    let (_, first) = command(
        &app,
        &ops,
        &e.imei,
        json!({"command": "AT+COPS?", "timeout_s": 1}),
        0,
    )
    .await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(
        modem.next_command(Duration::from_secs(5)).await.as_deref(),
        Some("AT+COPS?")
    );
    let (_, second) = command(&app, &ops, &e.imei, json!({"command": "AT+CSQ"}), 0).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    // No reply: the first times out.
    let (_, done) = app
        .get(&format!("/api/v1/commands/{first_id}?wait_s=5"), &ops)
        .await;
    assert_eq!(done["state"], "timed_out", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("no reply within 1 s")
    );
    // The late reply arrives during the grace period, before the second is sent.
    modem.reply("+COPS: 0,0,\"movistar\"\r\nOK").await;
    assert_eq!(
        modem.next_command(Duration::from_secs(5)).await.as_deref(),
        Some("AT+CSQ")
    );
    modem.reply("+CSQ: 20,99\r\nOK").await;
    let (_, second) = app
        .get(&format!("/api/v1/commands/{second_id}?wait_s=5"), &ops)
        .await;
    assert_eq!(second["state"], "succeeded");
    assert_eq!(second["reply"], "+CSQ: 20,99\r\nOK");
    let first = command_state(&app, &ops, &first_id).await;
    assert_eq!(first["state"], "timed_out");
    assert_eq!(first["late_reply"], "+COPS: 0,0,\"movistar\"\r\nOK");
    // A reply with nothing in flight later is also the timed-out command's, not anyone's.
    app.stop().await;
}

#[tokio::test]
async fn retry_after_timeout_is_recorded() {
    let app =
        TestApp::spawn_with(|s| s.gateway.late_reply_grace = Duration::from_millis(200)).await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(510)).await;
    let mut modem = TestModem::connect(app.mqtt, &e).await;
    let (_, c) = command(
        &app,
        &ops,
        &e.imei,
        json!({"command": "AT", "timeout_s": 1, "max_attempts": 2}),
        0,
    )
    .await;
    assert_eq!(
        modem.next_command(Duration::from_secs(5)).await.as_deref(),
        Some("AT")
    );
    // Sent again after the timeout, and the record says so.
    assert_eq!(
        modem.next_command(Duration::from_secs(5)).await.as_deref(),
        Some("AT")
    );
    modem.reply("OK").await;
    let (_, done) = app
        .get(
            &format!("/api/v1/commands/{}?wait_s=5", c["id"].as_str().unwrap()),
            &ops,
        )
        .await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempts"], 2);
    app.stop().await;
}

#[tokio::test]
async fn queued_while_offline_survives_restart_cancel_and_expiry() {
    let mut app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e: Enrolled = app.enroll(&ops, &imei(600)).await;
    let mut ids = Vec::new();
    for c in ["AT+CSQ", "ATI", "AT+CGSN"] {
        let (status, body) = command(&app, &ops, &e.imei, json!({"command": c}), 0).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["state"], "queued");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (_, expiring) = command(
        &app,
        &ops,
        &e.imei,
        json!({"command": "AT+CFUN?", "expires_in_s": 1}),
        0,
    )
    .await;
    // Cancel the second while queued.
    let (status, cancelled) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/commands/{}", ids[1]),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["state"], "cancelled");

    app.restart().await;
    let ops = app.token("ops", "ops-password-long").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let exp = command_state(&app, &ops, expiring["id"].as_str().unwrap()).await;
    assert_eq!(exp["state"], "expired", "{exp}");

    let mut modem = TestModem::connect(app.mqtt, &e).await;
    assert_eq!(
        modem.next_command(Duration::from_secs(5)).await.as_deref(),
        Some("AT+CSQ")
    );
    modem.reply("+CSQ: 5,99\r\nOK").await;
    assert_eq!(
        modem.next_command(Duration::from_secs(5)).await.as_deref(),
        Some("AT+CGSN"),
        "cancelled and expired ones are skipped"
    );
    modem.reply("OK").await;
    assert_eq!(
        modem.next_command(Duration::from_millis(500)).await,
        None,
        "nothing delivered twice"
    );
    let (_, done) = app
        .get(&format!("/api/v1/commands/{}?wait_s=5", ids[2]), &ops)
        .await;
    assert_eq!(done["state"], "succeeded");
    for id in [&ids[0], &ids[2]] {
        assert_eq!(command_state(&app, &ops, id).await["attempts"], 1);
    }
    // Only queued commands can be cancelled.
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/commands/{}", ids[0]),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, list) = app
        .get(
            &format!("/api/v1/devices/{}/commands?state=succeeded", e.imei),
            &ops,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn server_sent_events_report_presence_and_commands() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(700)).await;
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/events?device={}&type=device.online,command.*",
            e.imei
        )))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let modem = TestModem::connect(app.mqtt, &e).await;
    let _auto = modem.auto_reply();
    command(&app, &ops, &e.imei, json!({"command": "AT"}), 5).await;
    let mut text = String::new();
    use futures::StreamExt as _;
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("event: command.succeeded") {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "events so far: {text}");
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        order,
        [
            "device.online",
            "command.queued",
            "command.sent",
            "command.succeeded"
        ]
    );
    assert!(!text.contains("status.received"), "type filter applies");
    app.stop().await;
}

#[tokio::test]
async fn legacy_password_modems_when_enabled() {
    let app = TestApp::spawn_with(|s| s.gateway.allow_password_auth = true).await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(800);
    app.post("/api/v1/devices", &ops, json!({"imei": id})).await;
    let (status, dev) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/mqtt-credentials"),
            Some(&ops),
            Some(json!({"username": "jfj1usly8ijhh9hizfr453", "password": "gthhdte67y3ttes33fgg"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dev}");
    assert_eq!(dev["mqtt"]["username"], "jfj1usly8ijhh9hizfr453");
    let ca = app
        .client
        .get(app.url("/api/v1/ca/certificate"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let server_auth_only = callhome_ca::tls::client_config(&ca, None, None).unwrap();
    let connect = |user: &'static str, pass: &'static str| {
        let mut opts = MqttOptions::new(id.clone(), "localhost", app.mqtt.port());
        opts.set_credentials(user, pass);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            server_auth_only.clone(),
        )));
        let (_c, mut ev) = AsyncClient::new(opts, 10);
        async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => return Ok(a.code),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    };
    let ok = tokio::time::timeout(
        Duration::from_secs(10),
        connect("jfj1usly8ijhh9hizfr453", "gthhdte67y3ttes33fgg"),
    )
    .await
    .unwrap();
    assert_eq!(ok, Ok(rumqttc::ConnectReturnCode::Success));
    let bad = tokio::time::timeout(
        Duration::from_secs(10),
        connect("jfj1usly8ijhh9hizfr453", "wrong-password"),
    )
    .await
    .unwrap();
    assert!(bad.is_err(), "wrong password refused: {bad:?}");
    // The API never shows the password or its hash.
    assert!(
        !dev.to_string().contains("gthhdte67y3ttes33fgg") && !dev.to_string().contains("argon2")
    );
    app.stop().await;
}

#[tokio::test]
async fn disabling_or_deleting_a_device_ends_its_session() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(320)).await;
    let mut modem = TestModem::connect(app.mqtt, &e).await;
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{}", e.imei),
            Some(&ops),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(2), modem.connack.recv()).await;
    assert!(
        matches!(ended, Ok(Some(Err(_)))),
        "disabled device disconnected: {ended:?}"
    );
    // And it cannot come back while disabled.
    let mut again = TestModem::start(app.mqtt, &e.imei, &e.imei, tls(&e));
    let refused = tokio::time::timeout(Duration::from_secs(5), again.connack.recv()).await;
    assert!(
        matches!(refused, Ok(Some(Err(_)))),
        "refused while disabled: {refused:?}"
    );

    let e2 = app.enroll(&ops, &imei(321)).await;
    let mut modem = TestModem::connect(app.mqtt, &e2).await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{}", e2.imei),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let ended = tokio::time::timeout(Duration::from_secs(2), modem.connack.recv()).await;
    assert!(
        matches!(ended, Ok(Some(Err(_)))),
        "deleted device disconnected: {ended:?}"
    );
    app.stop().await;
}
