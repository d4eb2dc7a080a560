//! Issue 16, items 1-2, hostile: readers cannot aim modems anywhere (the direct-session
//! allow-list, reserved addresses, the timeout cap), a closed session's TEMPORALCLIENT never
//! reaches the modem, the per-device queue is capped, sessions belong to whoever opened them,
//! and disabling a user or revoking a key ends its open streams.

use std::time::Duration;

use callhome_sim::iec62056::SIGN_ON;
use futures::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::helpers::{TestApp, imei};
use crate::modem::TestModem;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An API key with `role`: (key, id).
async fn api_key(app: &TestApp, admin: &str, name: &str, role: &str) -> (String, String) {
    let (status, created) = app
        .post(
            "/api/v1/api-keys",
            admin,
            json!({"name": name, "role": role}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

async fn open(app: &TestApp, token: &str, imei: &str, body: Value) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/devices/{imei}/sessions"), token, body)
        .await
}

async fn commands_of(app: &TestApp, ops: &str, imei: &str) -> Vec<Value> {
    let (status, list) = app
        .get(&format!("/api/v1/devices/{imei}/commands?limit=1000"), ops)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().unwrap().clone()
}

/// The session's stream, authenticated with `bearer` (an access token or an API key).
async fn ws_as(app: &TestApp, session: &str, bearer: &str) -> Result<Ws, StatusCode> {
    let url = format!(
        "{}/api/v1/sessions/{session}/stream",
        app.base.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

async fn delete_session(app: &TestApp, id: &str, bearer: &str) -> (StatusCode, Value) {
    app.call(
        Method::DELETE,
        &format!("/api/v1/sessions/{id}"),
        Some(bearer),
        None,
    )
    .await
}

#[tokio::test]
async fn metadata_address_session_is_refused_and_queues_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let (key, _) = api_key(&app, &admin, "reading centre", "reader").await;
    let e = app.enroll(&ops, &imei(1600)).await;

    // The attack from the issue, with no allow-list at all.
    let attack =
        json!({"mode": "direct", "host": "169.254.169.254", "port": 80, "timeout_s": 86400});
    let (status, body) = open(&app, &key, &e.imei, attack.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("cloud metadata"), "{detail}");

    // An admin allowing "everything" still does not open reserved addresses.
    for network in ["0.0.0.0/0", "169.254.0.0/16"] {
        let (status, t) = app
            .post(
                "/api/v1/session-targets",
                &admin,
                json!({"network": network, "ports": "1-65535"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
    }
    let (status, body) = open(&app, &key, &e.imei, attack.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("169.254.169.254/32"),
        "{body}"
    );
    for host in [
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
    ] {
        let (status, body) = open(
            &app,
            &key,
            &e.imei,
            json!({"mode": "direct", "host": host, "port": 80}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}: {body}");
    }
    // Host names are resolved now and refused on their address.
    let (status, body) = open(
        &app,
        &key,
        &e.imei,
        json!({"mode": "direct", "host": "localhost", "port": 80}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("loopback"),
        "{body}"
    );
    let (status, body) = open(
        &app,
        &key,
        &e.imei,
        json!({"mode": "direct", "host": "no-such-host.invalid", "port": 80}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "host");

    // Nothing was queued for the modem, and no session recorded.
    assert!(commands_of(&app, &ops, &e.imei).await.is_empty());
    let (_, sessions) = app
        .get(&format!("/api/v1/devices/{}/sessions", e.imei), &key)
        .await;
    assert!(
        sessions["items"].as_array().unwrap().is_empty(),
        "{sessions}"
    );

    // An allowed target with a timeout over the cap: 422 naming the cap.
    let (status, body) = open(
        &app,
        &key,
        &e.imei,
        json!({"mode": "direct", "host": "192.0.2.10", "port": 2000, "timeout_s": 86400}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "timeout_s");
    let reason = body["errors"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("600") && reason.contains("tunnel.max_session_timeout_s"),
        "{reason}"
    );
    assert!(commands_of(&app, &ops, &e.imei).await.is_empty());

    // An explicit entry opens loopback; a name is sent to the modem as its address.
    let (status, t) = app
        .post(
            "/api/v1/session-targets",
            &admin,
            json!({"network": "127.0.0.0/8", "ports": "7000-7010", "note": "test platform"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, created) = open(
        &app,
        &key,
        &e.imei,
        json!({"mode": "direct", "host": "localhost", "port": 7005, "timeout_s": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["host"], "127.0.0.1");
    assert_eq!(created["requested_host"], "localhost");
    let queued = commands_of(&app, &ops, &e.imei).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0]["command"],
        "AT^MTXTUNNEL=TEMPORALCLIENT,127.0.0.1,7005,600"
    );
    // Deleting the entry stops new sessions to it.
    let (status, _) = delete_session(&app, created["id"].as_str().unwrap(), &key).await;
    assert_eq!(status, StatusCode::OK);
    let tid = t["id"].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/session-targets/{tid}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = open(
        &app,
        &key,
        &e.imei,
        json!({"mode": "direct", "host": "127.0.0.1", "port": 7005}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test]
async fn session_targets_are_admin_only_validated_audited_and_per_principal() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let (key_a, id_a) = api_key(&app, &admin, "platform a", "reader").await;
    let (key_b, _) = api_key(&app, &admin, "platform b", "reader").await;
    let e = app.enroll(&ops, &imei(1610)).await;

    let entry = json!({"network": "192.0.2.0/24", "ports": "2000-2010", "api_keys": [id_a]});
    let (status, _) = app
        .post("/api/v1/session-targets", &ops, entry.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.get("/api/v1/session-targets", &key_a).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (bad, field) in [
        (json!({"network": "192.0.2.1/24", "ports": "1"}), "network"),
        (json!({"network": "192.0.2.0/24", "ports": "9-3"}), "ports"),
        (
            json!({"network": "192.0.2.0/24", "ports": "1", "users": ["nobody"]}),
            "users[0]",
        ),
        (
            json!({"network": "192.0.2.0/24", "ports": "1", "api_keys": ["00000000-0000-0000-0000-000000000000"]}),
            "api_keys[0]",
        ),
    ] {
        let (status, body) = app.post("/api/v1/session-targets", &admin, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    let (status, t) = app.post("/api/v1/session-targets", &admin, entry).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["ports"], "2000-2010");
    let (_, list) = app.get("/api/v1/session-targets", &admin).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Only key A may use it; B is told it is restricted; a port outside is refused.
    let direct = |port: u16| json!({"mode": "direct", "host": "192.0.2.7", "port": port});
    let (status, body) = open(&app, &key_b, &e.imei, direct(2005)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("restricted"),
        "{body}"
    );
    let (status, _) = open(&app, &key_a, &e.imei, direct(2011)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, created) = open(&app, &key_a, &e.imei, direct(2005)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let (_, audit) = app.get("/api/v1/audit?limit=100", &admin).await;
    let text = audit.to_string();
    assert!(text.contains("POST /api/v1/session-targets"), "{text}");
    assert!(text.contains("session target"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_session_cancels_its_queued_temporal_client() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let e = app.enroll(&ops, &imei(1620)).await;
    // The device is offline: the TEMPORALCLIENT waits in its queue.
    let (status, created) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let cmd = created["command_id"].as_str().unwrap().to_owned();
    let (_, c) = app.get(&format!("/api/v1/commands/{cmd}"), &ops).await;
    assert_eq!(c["state"], "queued");
    let (status, s) = delete_session(&app, created["id"].as_str().unwrap(), &reader).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["close_reason"], "cancelled");
    let (_, c) = app.get(&format!("/api/v1/commands/{cmd}"), &ops).await;
    assert_eq!(c["state"], "cancelled", "{c}");
    // When the modem comes online, it is not told to dial.
    let mut modem = TestModem::connect(app.mqtt, &e).await;
    assert_eq!(modem.next_command(Duration::from_secs(2)).await, None);
    app.stop().await;
}

#[tokio::test]
async fn the_command_queue_is_capped_per_device() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let e = app.enroll(&ops, &imei(1630)).await;
    let other = app.enroll(&ops, &imei(1631)).await;
    let path = format!("/api/v1/devices/{}/commands", e.imei);
    let mut first = None;
    for i in 0..100 {
        let (status, c) = app.post(&path, &ops, json!({"command": "AT"})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "command {i}: {c}");
        first.get_or_insert(c["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = app.post(&path, &ops, json!({"command": "AT"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["type"], "urn:callhome:problem:too-many-requests");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("100") && detail.contains("mqtt.max_queued_commands"),
        "{detail}"
    );
    // A session cannot queue its TEMPORALCLIENT either; it is not left open.
    let (status, body) = open(&app, &reader, &e.imei, json!({"mode": "rendezvous"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let (_, sessions) = app
        .get(&format!("/api/v1/devices/{}/sessions", e.imei), &reader)
        .await;
    assert_eq!(sessions["items"][0]["state"], "closed", "{sessions}");
    assert_eq!(commands_of(&app, &ops, &e.imei).await.len(), 100);
    // Other devices are not affected; cancelling one makes room.
    let (status, _) = app
        .post(
            &format!("/api/v1/devices/{}/commands", other.imei),
            &ops,
            json!({"command": "AT"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first = first.unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/commands/{first}"),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post(&path, &ops, json!({"command": "AT"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.stop().await;
}

#[tokio::test]
async fn sessions_belong_to_the_principal_that_opened_them() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let (key_a, _) = api_key(&app, &admin, "reader a", "reader").await;
    let (key_b, _) = api_key(&app, &admin, "reader b", "reader").await;
    let (_fleet, imeis, _cache) =
        crate::sim_sessions::start_fleet(&app, &ops, "35693803160000", 2).await;

    // Key A opens a session on a simulated modem; key B can neither attach nor close it.
    let (status, created) = open(
        &app,
        &key_a,
        imeis[0].as_str(),
        json!({"mode": "rendezvous", "timeout_s": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ws_as(&app, &id, &key_b).await.err(),
        Some(StatusCode::FORBIDDEN),
        "B's WebSocket upgrade is refused"
    );
    let (status, body) = delete_session(&app, &id, &key_b).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("apikey:reader a"),
        "{body}"
    );
    let (_, s) = app.get(&format!("/api/v1/sessions/{id}"), &key_a).await;
    assert_ne!(s["state"], "closed", "B's refused DELETE did not close it");

    // A attaches with its own key (no one-time token) and reads the meter.
    let mut ws = ws_as(&app, &id, &key_a).await.expect("A may attach");
    ws.send(Message::Binary(SIGN_ON.to_vec().into()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("identification in time")
        {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[0], b'/', "meter identification: {got:?}");
    ws.close(None).await.unwrap();
    // A may close its own session.
    let (status, s) = delete_session(&app, &id, &key_a).await;
    assert_eq!(status, StatusCode::OK, "{s}");

    // An operator may attach to A's session, and that is audited.
    let (_, created) = open(
        &app,
        &key_a,
        imeis[1].as_str(),
        json!({"mode": "rendezvous", "timeout_s": 30}),
    )
    .await;
    let id2 = created["id"].as_str().unwrap().to_owned();
    let ws = ws_as(&app, &id2, &ops)
        .await
        .expect("an operator may attach");
    let (_, audit) = app.get("/api/v1/audit?limit=100", &admin).await;
    let row = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "GET /api/v1/sessions/{id}/stream")
        .unwrap_or_else(|| panic!("no audit row for the operator's attach: {audit}"))
        .clone();
    assert_eq!(row["actor"], "ops");
    assert!(row["target"].as_str().unwrap().contains(&id2), "{row}");
    assert!(
        row["detail"].to_string().contains("apikey:reader a"),
        "{row}"
    );
    // B still cannot close it; the operator can (audited as any DELETE).
    assert_eq!(
        delete_session(&app, &id2, &key_b).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, s) = delete_session(&app, &id2, &ops).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["close_reason"], "cancelled");
    drop(ws);
    let (_, audit) = app.get("/api/v1/audit?limit=100", &admin).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "DELETE /api/v1/sessions/{id}"
                && r["actor"] == "ops"
                && r["outcome"] == "success"),
        "{audit}"
    );
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "DELETE /api/v1/sessions/{id}"
                && r["actor"] == "apikey:reader b"
                && r["status"] == 403),
        "{audit}"
    );
    app.stop().await;
}

/// Reads the SSE stream until it ends; `Err` if it is still open after `within`.
async fn sse_ends(resp: reqwest::Response, within: Duration) -> Result<(), ()> {
    let mut body = resp.bytes_stream();
    tokio::time::timeout(within, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .map_err(|_| ())
}

/// Waits for the server to close the WebSocket; returns the close code, if one was sent.
async fn ws_closed(ws: &mut Ws, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the WebSocket was closed in time")
}

#[tokio::test]
async fn disabling_a_user_or_revoking_a_key_ends_its_streams() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let other = app.user_token("other-reader", "reader").await;
    let (key, key_id) = api_key(&app, &admin, "machine", "reader").await;
    let d1 = app.enroll(&ops, &imei(1640)).await;
    let d2 = app.enroll(&ops, &imei(1641)).await;

    let events = |bearer: &str| {
        app.client
            .get(app.url("/api/v1/events"))
            .bearer_auth(bearer)
            .send()
    };
    // The user's SSE stream and session WebSocket, and another user's stream.
    let user_sse = events(&reader).await.unwrap();
    assert_eq!(user_sse.status(), StatusCode::OK);
    let other_sse = events(&other).await.unwrap();
    let (_, created) = open(&app, &reader, &d1.imei, json!({"mode": "rendezvous"})).await;
    let sid = created["id"].as_str().unwrap().to_owned();
    let mut user_ws = ws_as(&app, &sid, &reader).await.expect("owner attaches");
    // The key's.
    let key_sse = events(&key).await.unwrap();
    assert_eq!(key_sse.status(), StatusCode::OK);
    let (_, created) = open(&app, &key, &d2.imei, json!({"mode": "rendezvous"})).await;
    let kid = created["id"].as_str().unwrap().to_owned();
    let mut key_ws = ws_as(&app, &kid, &key).await.expect("owner attaches");

    // Disable the user: its streams end at once; the other user's stays.
    let started = std::time::Instant::now();
    let (status, _) = app
        .call(
            Method::PATCH,
            "/api/v1/users/reading-centre",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        sse_ends(user_sse, Duration::from_secs(2)).await.is_ok(),
        "the disabled user's SSE stream ended"
    );
    assert_eq!(
        ws_closed(&mut user_ws, Duration::from_secs(2)).await,
        Some(1008)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        sse_ends(other_sse, Duration::from_millis(500))
            .await
            .is_err(),
        "another user's stream is not affected"
    );
    // Revoke the key: the same.
    let started = std::time::Instant::now();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        sse_ends(key_sse, Duration::from_secs(2)).await.is_ok(),
        "the revoked key's SSE stream ended"
    );
    assert_eq!(
        ws_closed(&mut key_ws, Duration::from_secs(2)).await,
        Some(1008)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // And they cannot open new ones.
    assert_eq!(
        events(&key).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        events(&reader).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}
