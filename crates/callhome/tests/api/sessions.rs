//! Meter-reading sessions end to end: a test modem (MQTT command channel + TLS tunnel
//! socket with its own certificate) and readers over the WebSocket, TCP (`callhome
//! connect`) or, in direct mode, the reader's own TLS server.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Enrolled, TestApp, imei};
use crate::modem::{TestModem, tls};

type ModemSocket = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Parses `AT^MTXTUNNEL=TEMPORALCLIENT,host,port,timeout`.
fn temporal_client(cmd: &str) -> (String, u16, u32) {
    let args = cmd
        .strip_prefix("AT^MTXTUNNEL=TEMPORALCLIENT,")
        .unwrap_or_else(|| panic!("not TEMPORALCLIENT: {cmd}"));
    let parts: Vec<&str> = args.split(',').collect();
    (
        parts[0].to_owned(),
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    )
}

/// Dials host:port with the device's certificate and sends `id` first, as a modem does.
async fn dial(e: &Enrolled, host: &str, port: u16, id: &[u8]) -> ModemSocket {
    let tcp = tokio::net::TcpStream::connect((host, port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls(e))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(id).await.unwrap();
    s
}

/// Receives the TEMPORALCLIENT command, acknowledges it, dials, sends `id`.
async fn answer_temporal_client(
    modem: &mut TestModem,
    e: &Enrolled,
    id: &[u8],
) -> (ModemSocket, u32) {
    let cmd = modem
        .next_command(Duration::from_secs(10))
        .await
        .expect("TEMPORALCLIENT sent");
    let (host, port, timeout) = temporal_client(&cmd);
    modem.reply("OK").await;
    (dial(e, &host, port, id).await, timeout)
}

async fn open(app: &TestApp, token: &str, imei: &str, body: Value) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/devices/{imei}/sessions"), token, body)
        .await
}

async fn wait_closed(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (_, s) = app.get(&format!("/api/v1/sessions/{id}"), token).await;
        if s["state"] == "closed" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("session {id} did not close");
}

async fn ws_connect(
    app: &TestApp,
    created: &Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "{}{}?token={}",
        app.base.replacen("http", "ws", 1),
        created["reader"]["stream_path"].as_str().unwrap(),
        created["reader"]["token"].as_str().unwrap()
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket upgrade")
        .0
}

async fn setup(n: u64) -> (TestApp, String, String, Enrolled, TestModem) {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let e = app.enroll(&ops, &imei(n)).await;
    let modem = TestModem::connect(app.mqtt, &e).await;
    (app, ops, reader, e, modem)
}

#[tokio::test]
async fn rendezvous_over_websocket_with_one_time_token() {
    let (app, _ops, reader, e, mut modem) = setup(900).await;
    let (status, created) = open(
        &app,
        &reader,
        &e.imei,
        json!({"mode": "rendezvous", "timeout_s": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["state"], "requested");
    assert_eq!(created["port"], app.tunnel.port());
    let id = created["id"].as_str().unwrap().to_owned();

    // A second session on the same device: 409 naming the open one.
    let (status, body) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"].as_str().unwrap().contains(&id), "{body}");

    let (mut sock, timeout) = answer_temporal_client(&mut modem, &e, e.imei.as_bytes()).await;
    assert_eq!(timeout, 30);
    // Wrong token: refused before the upgrade.
    let bad = format!(
        "{}/api/v1/sessions/{id}/stream?token=chs_wrong",
        app.base.replacen("http", "ws", 1)
    );
    assert!(tokio_tungstenite::connect_async(bad).await.is_err());
    let mut ws = ws_connect(&app, &created).await;
    // The token is single-use: a second WebSocket handshake with it is refused with 401.
    let reuse = format!(
        "{}/api/v1/sessions/{id}/stream?token={}",
        app.base.replacen("http", "ws", 1),
        created["reader"]["token"].as_str().unwrap()
    );
    match tokio_tungstenite::connect_async(reuse).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("reused token accepted: {other:?}"),
    }
    // A request that is not an upgrade is a problem document, and spends no token.
    let (status, body) = app
        .get(&format!("/api/v1/sessions/{id}/stream"), &reader)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "urn:callhome:problem:not-a-websocket");

    // Meter exchange through the tunnel: the ID was checked and not forwarded.
    ws.send(Message::Binary(b"/?!\r\n".to_vec().into()))
        .await
        .unwrap();
    let mut got = [0u8; 5];
    sock.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"/?!\r\n");
    sock.write_all(b"/ISK5MT174-0001\r\n").await.unwrap();
    let mut from_meter = Vec::new();
    while from_meter.len() < 17 {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Binary(b))) => from_meter.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(from_meter, b"/ISK5MT174-0001\r\n");
    let (_, s) = app.get(&format!("/api/v1/sessions/{id}"), &reader).await;
    assert_eq!(s["state"], "active");

    // The reader closing closes the modem side and records the bytes.
    ws.close(None).await.unwrap();
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await;
    assert!(eof.is_ok(), "modem side closed");
    let s = wait_closed(&app, &reader, &id).await;
    assert_eq!(s["close_reason"], "reader_closed");
    assert_eq!(s["bytes_to_modem"], 5);
    assert_eq!(s["bytes_from_modem"], 17);
    app.stop().await;
}

#[tokio::test]
async fn modem_with_another_devices_id_is_refused() {
    let (app, ops, reader, e, mut modem) = setup(910).await;
    let (_, created) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let other = imei(911);
    let (mut sock, _) = answer_temporal_client(&mut modem, &e, other.as_bytes()).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await;
    let s = wait_closed(&app, &reader, &id).await;
    assert_eq!(s["close_reason"], "identity_mismatch", "{s}");
    let admin = app.admin_token().await;
    let (_, audit) = app.get("/api/v1/audit?limit=50", &admin).await;
    assert!(audit.to_string().contains("tunnel.identity_mismatch"));

    // A modem with no pending session of its own is refused too.
    let mut sock = dial(&e, "127.0.0.1", app.tunnel.port(), e.imei.as_bytes()).await;
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "closed: {r:?}");
    let (_, audit) = app.get("/api/v1/audit?limit=50", &admin).await;
    assert!(audit.to_string().contains("tunnel.no_pending_session"));
    let _ = ops;
    app.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_both_ends_and_records_bytes() {
    let (app, _ops, reader, e, mut modem) = setup(920).await;
    let (_, created) = open(
        &app,
        &reader,
        &e.imei,
        json!({"mode": "rendezvous", "timeout_s": 1}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (mut sock, _) = answer_temporal_client(&mut modem, &e, e.imei.as_bytes()).await;
    let mut ws = ws_connect(&app, &created).await;
    sock.write_all(b"abc").await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(msg, Some(Ok(Message::Binary(ref b))) if b.as_ref() == b"abc"),
        "{msg:?}"
    );
    // Then silence: both ends are closed.
    let ws_end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
    assert!(ws_end.is_ok(), "reader side closed");
    let mut rest = Vec::new();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest))
            .await
            .is_ok(),
        "modem side closed"
    );
    let s = wait_closed(&app, &reader, &id).await;
    assert_eq!(s["close_reason"], "idle_timeout");
    assert_eq!(s["bytes_from_modem"], 3);
    app.stop().await;
}

#[tokio::test]
async fn modem_dropping_closes_the_reader_and_delete_closes_active_sessions() {
    let (app, _ops, reader, e, mut modem) = setup(930).await;
    let (_, created) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (sock, _) = answer_temporal_client(&mut modem, &e, e.imei.as_bytes()).await;
    let mut ws = ws_connect(&app, &created).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "reader side closed");
    assert_eq!(
        wait_closed(&app, &reader, &id).await["close_reason"],
        "modem_closed"
    );

    // DELETE on an active session: both ends close, reason cancelled.
    let (status, created) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a new session once the old one closed"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let (mut sock, _) = answer_temporal_client(&mut modem, &e, e.imei.as_bytes()).await;
    let _ws = ws_connect(&app, &created).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, s) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/sessions/{id}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["state"], "closed");
    assert_eq!(s["close_reason"], "cancelled");
    let mut rest = Vec::new();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest))
            .await
            .is_ok()
    );
    app.stop().await;
}

#[tokio::test]
async fn command_failure_and_pairing_timeout_close_the_session() {
    let (app, _ops, reader, e, mut modem) = setup(940).await;
    let (_, created) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    let cmd = modem.next_command(Duration::from_secs(10)).await.unwrap();
    assert!(cmd.starts_with("AT^MTXTUNNEL=TEMPORALCLIENT,"));
    modem.reply("ERROR").await;
    let s = wait_closed(&app, &reader, created["id"].as_str().unwrap()).await;
    assert_eq!(s["close_reason"], "command_failed", "{s}");

    let (_, created) = open(
        &app,
        &reader,
        &e.imei,
        json!({"mode": "rendezvous", "pairing_timeout_s": 5}),
    )
    .await;
    let _ = modem.next_command(Duration::from_secs(10)).await.unwrap();
    modem.reply("OK").await; // acknowledges, but never dials
    let s = wait_closed(&app, &reader, created["id"].as_str().unwrap()).await;
    assert_eq!(s["close_reason"], "pairing_timeout");
    app.stop().await;
}

#[tokio::test]
async fn direct_mode_sends_the_readers_address_and_follows_the_command() {
    let (app, _ops, reader, e, mut modem) = setup(950).await;
    // The reading platform's own TLS server: requires client certificates from our CA.
    let dir = tempfile::tempdir().unwrap();
    let authority =
        callhome_ca::Authority::load_or_init(&app.data_dir.join("ca"), &Default::default())
            .unwrap();
    let identity = authority
        .ensure_server_identity(dir.path(), &["127.0.0.1".to_owned()])
        .unwrap();
    let cfg = callhome_ca::tls::server_config(
        &identity,
        std::slice::from_ref(authority.ca_certificate_der()),
        vec![],
        callhome_ca::tls::ClientAuth::Required,
    )
    .unwrap();
    let platform = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = platform.local_addr().unwrap().port();
    // Loopback is a reserved address: the test platform must be listed explicitly.
    let admin = app.admin_token().await;
    let (status, t) = app
        .post(
            "/api/v1/session-targets",
            &admin,
            json!({"network": "127.0.0.1/32", "ports": port.to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, created) = open(
        &app,
        &reader,
        &e.imei,
        json!({"mode": "direct", "host": "127.0.0.1", "port": port, "timeout_s": 60}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created["reader"].is_null());
    let cmd = modem.next_command(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        cmd,
        format!("AT^MTXTUNNEL=TEMPORALCLIENT,127.0.0.1,{port},60")
    );
    modem.reply("OK").await;
    let e2 = Enrolled {
        imei: e.imei.clone(),
        key_pem: e.key_pem.clone(),
        cert_pem: e.cert_pem.clone(),
        ca_pem: e.ca_pem.clone(),
        serial: e.serial.clone(),
    };
    let dialer =
        tokio::spawn(async move { dial(&e2, "127.0.0.1", port, e2.imei.as_bytes()).await });
    let (tcp, _) = platform.accept().await.unwrap();
    let mut server_side = tokio_rustls::TlsAcceptor::from(cfg)
        .accept(tcp)
        .await
        .unwrap();
    let cn = {
        let (_, conn) = server_side.get_ref();
        let der = conn.peer_certificates().unwrap()[0].clone();
        callhome_ca::inspect_certificate_der(der.as_ref())
            .unwrap()
            .common_name
            .unwrap()
    };
    assert_eq!(
        cn, e.imei,
        "the modem authenticated with its own certificate"
    );
    let mut id = vec![0u8; 15];
    server_side.read_exact(&mut id).await.unwrap();
    assert_eq!(id, e.imei.as_bytes(), "MTX_IDClient first");
    drop(dialer);
    let id_ = created["id"].as_str().unwrap();
    let mut active = false;
    for _ in 0..100 {
        if app.get(&format!("/api/v1/sessions/{id_}"), &reader).await.1["state"] == "active" {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(active, "direct session active once the modem acknowledged");
    let (_, s) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/sessions/{id_}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(s["close_reason"], "cancelled");
    // Validation.
    let (status, body) = open(
        &app,
        &reader,
        &e.imei,
        json!({"mode": "direct", "host": "127.0.0.1"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "port");
    let (status, _) = open(&app, &reader, &e.imei, json!({"mode": "carrier-pigeon"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

#[tokio::test]
async fn callhome_connect_exposes_the_meter_as_a_local_tcp_port() {
    let (app, _ops, reader, e, mut modem) = setup(960).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let args = callhome::commands::connect::ConnectArgs {
        imei: e.imei.clone(),
        api: app.base.clone(),
        token: Some(reader.clone()),
        api_key: None,
        token_file: None,
        api_ca: None,
        listen: local,
        timeout_s: 30,
        pairing_timeout_s: 30,
        once: true,
    };
    let cli = tokio::spawn(callhome::commands::connect::run_with_listener(
        args, listener,
    ));
    // Legacy reading software dials the local port...
    let mut software = tokio::net::TcpStream::connect(local).await.unwrap();
    // ...which opens a session; the modem joins.
    let (mut sock, _) = answer_temporal_client(&mut modem, &e, e.imei.as_bytes()).await;
    software.write_all(b"/?!\r\n").await.unwrap();
    let mut got = [0u8; 5];
    sock.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"/?!\r\n");
    sock.write_all(b"METER").await.unwrap();
    let mut back = [0u8; 5];
    software.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"METER");
    // The software hanging up ends the session.
    drop(software);
    tokio::time::timeout(Duration::from_secs(10), cli)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (_, list) = app
        .get(&format!("/api/v1/devices/{}/sessions", e.imei), &reader)
        .await;
    assert_eq!(list["items"][0]["close_reason"], "reader_closed");
    assert_eq!(list["items"][0]["bytes_from_modem"], 5);
    app.stop().await;
}

/// Waits up to `within` for `sock` to be closed by the server (EOF or error).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(sock: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Revokes `e`'s certificate through `app` (key compromise).
async fn revoke(app: &TestApp, ops: &str, e: &Enrolled) {
    let (status, body) = app
        .post(
            &format!("/api/v1/certificates/{}/revoke", e.serial),
            ops,
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Opens a rendezvous session of `e` through `app`, lets `modem` dial in and a reader
/// attach over the WebSocket, and checks bytes flow: returns the session id, the modem's
/// tunnel socket and the reader's WebSocket.
async fn active_session(
    app: &TestApp,
    reader: &str,
    e: &Enrolled,
    modem: &mut TestModem,
) -> (
    String,
    ModemSocket,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let (status, created) = open(app, reader, &e.imei, json!({"mode": "rendezvous"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (mut sock, _) = answer_temporal_client(modem, e, e.imei.as_bytes()).await;
    let mut ws = ws_connect(app, &created).await;
    ws.send(Message::Binary(b"ping".to_vec().into()))
        .await
        .unwrap();
    let mut got = [0u8; 4];
    sock.read_exact(&mut got).await.unwrap();
    (id, sock, ws)
}

/// A kept-alive HTTPS connection to the device listener with the device's certificate,
/// after one request answered.
async fn device_listener_connection(app: &TestApp, e: &Enrolled) -> ModemSocket {
    let tcp = tokio::net::TcpStream::connect(app.device_http)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls(e))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(b"GET /crl/00.crl HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    s
}

/// Revoking a modem's certificate ends its splice and its device-listener connections
/// within a second (its MQTT connection too); disabling a device does the same.
#[tokio::test]
async fn revocation_and_disabling_end_splices_and_device_connections_at_once() {
    let (app, ops, reader, e, mut modem) = setup(940).await;
    let (id, mut sock, _ws) = active_session(&app, &reader, &e, &mut modem).await;
    let mut download = device_listener_connection(&app, &e).await;

    let started = std::time::Instant::now();
    revoke(&app, &ops, &e).await;
    assert!(
        closed_within(&mut sock, Duration::from_secs(1)).await,
        "splice ended"
    );
    assert!(
        closed_within(&mut download, Duration::from_secs(1)).await,
        "device-listener connection ended"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let s = wait_closed(&app, &reader, &id).await;
    assert_eq!(s["close_reason"], "access_revoked", "{s}");
    assert!(s["error"].as_str().unwrap().contains("revoked"), "{s}");
    drop(modem);

    // Disabling a device ends its sessions the same way, pending or spliced.
    let e2 = app.enroll(&ops, &imei(941)).await;
    let mut modem2 = TestModem::connect(app.mqtt, &e2).await;
    let (_, created) = open(&app, &reader, &e2.imei, json!({"mode": "rendezvous"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (mut sock, _) = answer_temporal_client(&mut modem2, &e2, e2.imei.as_bytes()).await;
    let _ws = ws_connect(&app, &created).await;
    let mut download = device_listener_connection(&app, &e2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{}", e2.imei),
            Some(&ops),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        closed_within(&mut sock, Duration::from_secs(1)).await,
        "splice ended"
    );
    assert!(closed_within(&mut download, Duration::from_secs(1)).await);
    let s = wait_closed(&app, &reader, &id).await;
    assert_eq!(s["close_reason"], "access_revoked", "{s}");
    app.stop().await;
}

/// Two nodes on one PostgreSQL database: a certificate revoked through node A ends the
/// device's MQTT connection and its tunnel splice on node B within a second; disabling a
/// device through A ends B's too. (PostgreSQL only: SQLite has one node.)
#[tokio::test]
async fn revoking_on_one_node_ends_the_connection_and_splice_on_another_within_a_second() {
    if std::env::var("CALLHOME_TEST_API_BACKEND").as_deref() != Ok("postgres") {
        eprintln!(
            "skipped: needs CALLHOME_TEST_API_BACKEND=postgres (two nodes share one PostgreSQL)"
        );
        return;
    }
    let a = TestApp::spawn().await;
    let b = a.spawn_node_sharing().await;
    let ops = a.user_token("ops", "operator").await;
    let reader = a.user_token("reading-centre", "reader").await;
    let e = a.enroll(&ops, &imei(950)).await;
    // The modem is connected to node B, and its session runs there.
    let mut modem = TestModem::connect(b.mqtt, &e).await;
    let (id, mut sock, _ws) = active_session(&b, &reader, &e, &mut modem).await;

    let started = std::time::Instant::now();
    revoke(&a, &ops, &e).await;
    assert!(
        closed_within(&mut sock, Duration::from_secs(1)).await,
        "node B's splice ended within 1 s"
    );
    let dropped = tokio::time::timeout(Duration::from_secs(1), modem.connack.recv()).await;
    assert!(
        matches!(dropped, Ok(Some(Err(_)))),
        "node B's MQTT connection ended within 1 s: {dropped:?}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(
        wait_closed(&b, &reader, &id).await["close_reason"],
        "access_revoked"
    );
    // And node B now refuses new connections with it.
    let mut again = TestModem::start(b.mqtt, &e.imei, &e.imei, tls(&e));
    let refused = tokio::time::timeout(Duration::from_secs(5), again.connack.recv()).await;
    assert!(matches!(refused, Ok(Some(Err(_)))), "{refused:?}");

    // Disabling a device through A ends its connection on B.
    let e2 = a.enroll(&ops, &imei(951)).await;
    let mut modem2 = TestModem::connect(b.mqtt, &e2).await;
    let (status, body) = a
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{}", e2.imei),
            Some(&ops),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dropped = tokio::time::timeout(Duration::from_secs(1), modem2.connack.recv()).await;
    assert!(matches!(dropped, Ok(Some(Err(_)))), "{dropped:?}");
    b.stop().await;
    a.stop().await;
}
