//! Meter reading with simulated modems (the `callhome-sim` crate): real MQTT command channel,
//! real TEMPORALCLIENT tunnels with each modem's certificate, the built-in IEC 62056-21 meter.

use std::time::Duration;

use callhome_sim::iec62056::{ACK_DATA_READOUT, MeterReadings, SIGN_ON};
use callhome_sim::{Enroller, Fleet, FleetConfig, FleetTransport, ModemSettings, TlsBase};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::TestApp;

pub(crate) async fn start_fleet(
    app: &TestApp,
    token: &str,
    first_body: &str,
    count: usize,
) -> (Fleet, Vec<callhome_core::Imei>, tempfile::TempDir) {
    start_fleet_with(app, token, first_body, count, |_| {}).await
}

/// [`start_fleet`] with the fleet's configuration adjusted by `tweak`.
pub(crate) async fn start_fleet_with(
    app: &TestApp,
    token: &str,
    first_body: &str,
    count: usize,
    tweak: impl FnOnce(&mut FleetConfig),
) -> (Fleet, Vec<callhome_core::Imei>, tempfile::TempDir) {
    callhome_sim::install_crypto_provider();
    let imeis = callhome_sim::fleet_imeis(first_body, count).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let enroller = Enroller::new(&app.base, token, cache.path(), None).unwrap();
    let ca = enroller.ca_certificate().await.unwrap();
    let credentials = enroller.enroll_all(&imeis, 16, |_| {}).await.unwrap();
    let fleet = fleet_of(app, first_body, &ca, credentials, cache.path(), tweak);
    assert!(
        fleet.wait_all_connected(Duration::from_secs(60)).await,
        "fleet connected"
    );
    (fleet, imeis, cache)
}

/// Starts a fleet of modems from `first_body` presenting `credentials` (one per modem) and
/// trusting `ca`, writing rotated credentials to `cache`; does not wait for it to connect.
pub(crate) fn fleet_of(
    app: &TestApp,
    first_body: &str,
    ca: &str,
    credentials: Vec<callhome_sim::Credentials>,
    cache: &std::path::Path,
    tweak: impl FnOnce(&mut FleetConfig),
) -> Fleet {
    let settings = ModemSettings::new("localhost", app.mqtt.port(), true);
    let mut cfg = FleetConfig::new(first_body, credentials.len(), settings);
    cfg.connect_concurrency = 64;
    cfg.credential_cache = Some(cache.to_path_buf());
    tweak(&mut cfg);
    Fleet::start(
        cfg,
        FleetTransport::MutualTls {
            base: TlsBase::new(ca).unwrap(),
            credentials,
        },
    )
    .unwrap()
}

/// Reads the meter through a rendezvous session over the WebSocket: sign-on, identification,
/// data readout. Returns (identification, readout) bytes.
async fn read_meter(app: &TestApp, token: &str, imei: &str) -> (Vec<u8>, Vec<u8>, String) {
    let (status, created) = app
        .post(
            &format!("/api/v1/devices/{imei}/sessions"),
            token,
            json!({"mode": "rendezvous", "timeout_s": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let url = format!(
        "{}{}?token={}",
        app.base.replacen("http", "ws", 1),
        created["reader"]["stream_path"].as_str().unwrap(),
        created["reader"]["token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Binary(SIGN_ON.to_vec().into()))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let ident = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("identification in time")
        {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            break buf.drain(..pos + 2).collect::<Vec<u8>>();
        }
    };
    ws.send(Message::Binary(ACK_DATA_READOUT.to_vec().into()))
        .await
        .unwrap();
    // The readout ends with ETX and its BCC.
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == 0x03)
            && buf.len() > pos + 1
        {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("readout in time")
        {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    (ident, buf, created["id"].as_str().unwrap().to_owned())
}

async fn wait_closed(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..400 {
        let (_, s) = app.get(&format!("/api/v1/sessions/{id}"), token).await;
        if s["state"] == "closed" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("session {id} did not close");
}

#[tokio::test]
async fn iec_62056_readout_through_the_websocket_stream() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let (fleet, imeis, _cache) = start_fleet(&app, &ops, "35693803100000", 1).await;
    let imei = imeis[0].as_str();
    let (ident, readout, id) = read_meter(&app, &reader, imei).await;
    let expected = MeterReadings::for_imei(imei);
    assert_eq!(
        ident,
        expected.identification_message(),
        "identification line"
    );
    assert_eq!(
        readout,
        expected.readout_message(),
        "OBIS data readout, byte for byte (with BCC)"
    );
    let text = String::from_utf8_lossy(&readout);
    assert!(text.contains("1.8.0(") && text.contains("*kWh)"), "{text}");
    let s = wait_closed(&app, &reader, &id).await;
    assert_eq!(s["close_reason"], "reader_closed");
    assert_eq!(
        s["bytes_to_modem"],
        (SIGN_ON.len() + ACK_DATA_READOUT.len()) as i64
    );
    assert_eq!(s["bytes_from_modem"], (ident.len() + readout.len()) as i64);
    fleet.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_sessions_on_two_hundred_modems() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let (fleet, imeis, _cache) = start_fleet(&app, &ops, "35693803200000", 200).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for imei in &imeis {
        let app = app.clone();
        let reader = reader.clone();
        let imei = imei.to_string();
        tasks.push(tokio::spawn(async move {
            let (ident, readout, id) = read_meter(&app, &reader, &imei).await;
            let expected = MeterReadings::for_imei(&imei);
            assert_eq!(ident, expected.identification_message(), "{imei}");
            assert_eq!(readout, expected.readout_message(), "{imei}");
            let s = wait_closed(&app, &reader, &id).await;
            assert_eq!(s["close_reason"], "reader_closed", "{imei}");
        }));
    }
    for t in tasks {
        t.await.expect("session completed with correct data");
    }
    let counters = fleet.counters().snapshot();
    assert_eq!(counters.tunnels_opened, 200);
    fleet.shutdown().await;
    let app = std::sync::Arc::try_unwrap(app).ok().expect("sole owner");
    app.stop().await;
}
