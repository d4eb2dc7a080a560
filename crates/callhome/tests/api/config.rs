//! Fleet configuration through the API: profiles (versioned, by tag), overrides, the
//! effective Config.txt, validation that names the key, secrets, import.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, imei};

const SEED: &str = callhome_core::configtxt::SEED_MASTER_CONFIG;

async fn get_txt(app: &TestApp, token: &str, id: &str) -> String {
    let resp = app
        .client
        .get(app.url(&format!("/api/v1/devices/{id}/config.txt")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

async fn put_txt(app: &TestApp, token: &str, id: &str, text: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .put(app.url(&format!("/api/v1/devices/{id}/config.txt")))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

/// The seed master Config.txt (one key per line, comments and blank lines as written) comes
/// back byte for byte from a device and from a profile; a key overridden afterwards is shown
/// in place, a new key is appended, a removed key's line goes, and `?resolve=true` fills the
/// placeholders.
#[tokio::test]
async fn seed_config_txt_round_trips_byte_for_byte() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    assert!(SEED.contains("[IMEI]"), "the seed has placeholders");

    // Imported into a device that has no profile.
    let id = imei(41);
    app.post("/api/v1/devices", &admin, json!({"imei": id}))
        .await;
    let (status, c) = put_txt(&app, &admin, &id, SEED).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(
        get_txt(&app, &admin, &id).await,
        SEED,
        "imported into a device"
    );
    assert_eq!(
        get_txt(&app, &admin, &id).await,
        SEED,
        "and again: reading does not change it"
    );

    // One key overridden through the JSON endpoint: shown in place, the rest byte for byte.
    let mut overrides = c["overrides"].clone();
    overrides["DNS_period"] = json!("300");
    let (status, c) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/config"),
            Some(&admin),
            Some(json!({ "overrides": overrides })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let changed = SEED.replace("DNS_period: 600\n", "DNS_period: 300\n");
    assert_ne!(changed, SEED);
    assert_eq!(
        get_txt(&app, &admin, &id).await,
        changed,
        "the override in place"
    );

    // A new key is appended in the order it was set; a removed key's line goes.
    let mut overrides = c["overrides"].clone();
    overrides["MQTT_qos"] = json!("1");
    overrides["SMS_validPhone2"] = json!(null);
    let (status, c) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/config"),
            Some(&admin),
            Some(json!({ "overrides": overrides })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let phone2 = SEED
        .lines()
        .find(|l| l.starts_with("SMS_validPhone2:"))
        .expect("the seed has SMS_validPhone2");
    let want = format!(
        "{}MQTT_qos: 1\n",
        changed.replace(&format!("{phone2}\n"), "")
    );
    assert_eq!(get_txt(&app, &admin, &id).await, want);
    let resolved = app
        .client
        .get(app.url(&format!("/api/v1/devices/{id}/config.txt?resolve=true")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(resolved, want.replace("[IMEI]", &id), "placeholders filled");

    // Comment and blank lines, and a key's spelling, are kept as written too.
    let commented = format!(
        "# Substation 4, meter 12\n\n{}",
        SEED.replace("MTX_PIN:", "mtx_pin:")
    );
    let other = imei(43);
    app.post("/api/v1/devices", &admin, json!({"imei": other}))
        .await;
    let (status, c) = put_txt(&app, &admin, &other, &commented).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(get_txt(&app, &admin, &other).await, commented);

    // Imported into a profile: the profile and a device carrying its tag give it back.
    let (status, p) = put_profile(&app, &admin, "seed", SEED, "seeded").await;
    assert_eq!(status, StatusCode::OK, "{p}");
    let (_, p) = app.get("/api/v1/profiles/seed", &admin).await;
    assert_eq!(p["config"], SEED, "the profile byte for byte");
    let dev = imei(42);
    app.post(
        "/api/v1/devices",
        &admin,
        json!({"imei": dev, "tags": ["seeded"]}),
    )
    .await;
    assert_eq!(
        get_txt(&app, &admin, &dev).await,
        SEED,
        "a device of the profile"
    );
    let (status, c) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{dev}/config"),
            Some(&admin),
            Some(json!({"overrides": {"dns_period": "300"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(
        get_txt(&app, &admin, &dev).await,
        changed,
        "the override in place, with the profile's spelling"
    );
    app.stop().await;
}

async fn put_profile(
    app: &TestApp,
    token: &str,
    name: &str,
    config: &str,
    tag: &str,
) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        &format!("/api/v1/profiles/{name}"),
        Some(token),
        Some(json!({"config": config, "tag": tag})),
    )
    .await
}

#[tokio::test]
async fn seed_profile_by_tag_effective_config_and_config_txt() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let admin = app.admin_token().await;
    let (status, p) = put_profile(&app, &ops, "meters", SEED, "meters").await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["version"], 1);
    assert_eq!(
        p["warnings"],
        json!([]),
        "the seed configuration validates clean"
    );
    // Secrets are shown only to admins.
    assert!(p["config"].as_str().unwrap().contains("MQTT_password: ***"));
    let (_, p_admin) = app.get("/api/v1/profiles/meters", &admin).await;
    assert_eq!(p_admin["config"], SEED, "byte for byte");

    let id = imei(1);
    app.post(
        "/api/v1/devices",
        &ops,
        json!({"imei": id, "tags": ["meters"]}),
    )
    .await;
    let resp = app
        .client
        .get(app.url(&format!("/api/v1/devices/{id}/config.txt?resolve=true")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let txt = resp.text().await.unwrap();
    assert_eq!(
        txt,
        SEED.replace("[IMEI]", &id),
        "the seed's format, placeholders resolved"
    );

    // Overrides, kept in place with the profile's spelling.
    let (status, c) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/config"),
            Some(&ops),
            Some(json!({"overrides": {"dns_period": "300"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["profile"], "meters");
    let (_, eff) = app
        .get(&format!("/api/v1/devices/{id}/config/effective"), &ops)
        .await;
    assert!(
        eff["config"]
            .as_str()
            .unwrap()
            .contains("\nDNS_period: 300\n"),
        "{eff}"
    );
    assert_eq!(eff["errors"], json!([]));
    assert!(
        eff["config"]
            .as_str()
            .unwrap()
            .contains("GPRS_password: ***")
    );

    // A new profile version; the old one stays readable.
    let (_, p2) = put_profile(
        &app,
        &ops,
        "meters",
        &SEED.replace("DNS_period: 600", "DNS_period: 900"),
        "meters",
    )
    .await;
    assert_eq!(p2["version"], 2);
    let (_, v1) = app.get("/api/v1/profiles/meters?version=1", &ops).await;
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["current_version"], 2);

    // Import a Config.txt: differences from the profile become overrides.
    let imported = SEED
        .replace("[IMEI]", &id)
        .replace("DNS_period: 600", "DNS_period: 120")
        .replace("SMS_validPhone2: +34666123457\n", "");
    let resp = app
        .client
        .put(app.url(&format!("/api/v1/devices/{id}/config.txt")))
        .bearer_auth(&ops)
        .header("content-type", "text/plain")
        .body(imported.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let c: Value = resp.json().await.unwrap();
    assert_eq!(c["overrides"]["DNS_period"], "120");
    assert_eq!(c["overrides"]["SMS_validPhone2"], json!(null));
    let txt = app
        .client
        .get(app.url(&format!("/api/v1/devices/{id}/config.txt")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(txt, imported, "what was imported is what is desired");
    app.stop().await;
}

#[tokio::test]
async fn every_rule_is_a_422_naming_the_key() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let base = SEED;
    // (replace this line, with this, expect this key named)
    let cases: &[(&str, &str, &str)] = &[
        (
            "COMM_baudrate: 9600",
            "COMM_baudrate: 9601",
            "COMM_baudrate",
        ),
        (
            "COMM_bitsperchar: 8",
            "COMM_bitsperchar: 9",
            "COMM_bitsperchar",
        ),
        ("COMM_stopbits: 1", "COMM_stopbits: 3", "COMM_stopbits"),
        ("COMM_parity: none", "COMM_parity: mark", "COMM_parity"),
        ("COMM_autorts: off", "COMM_autorts: maybe", "COMM_autorts"),
        ("GPRS_mode: 2g", "GPRS_mode: 5g", "GPRS_mode"),
        ("GPRS_timeout: 0", "GPRS_timeout: -1", "GPRS_timeout"),
        ("MTX_PIN: 0000", "MTX_PIN: 12", "MTX_PIN"),
        ("MTX_ping: 35", "MTX_ping: soon", "MTX_ping"),
        ("MTX_pingIP: 8.8.8.8", "MTX_pingIP: 8.8.8.8.8", "MTX_pingIP"),
        (
            "MTX_temporalClientTimeout: 120",
            "MTX_temporalClientTimeout: 0",
            "MTX_temporalClientTimeout",
        ),
        ("MTX_clientSSL: on", "MTX_clientSSL: yes", "MTX_clientSSL"),
        (
            "MQTT_server: ssl://broker.cervello.io:8883",
            "MQTT_server: http://broker:80",
            "MQTT_server",
        ),
        (
            "MQTT_server: ssl://broker.cervello.io:8883",
            "MQTT_server: ssl://broker:99999",
            "MQTT_server",
        ),
        (
            "MQTT_keepalive: 300",
            "MQTT_keepalive: 70000",
            "MQTT_keepalive",
        ),
        (
            "MQTT_attopic1: [IMEI]/AT",
            "MQTT_attopic1: [IMEI]/#",
            "MQTT_attopic1",
        ),
        ("DNS_mode: mqtt", "DNS_mode: pigeon", "DNS_mode"),
        ("DNS_period: 600", "DNS_period: 1", "DNS_period"),
        (
            "SMS_validPhone1: +34666123456",
            "SMS_validPhone1: +34-666",
            "SMS_validPhone1",
        ),
        (
            "CSD_validPhone1: 666333444",
            "CSD_validPhone1: 66a333444",
            "CSD_validPhone1",
        ),
        (
            "CSD_validPhone2: 666444555",
            "CSD_validPhone2: 666333444",
            "CSD_validPhone2",
        ),
        // The seed's cross-field rule: CSD calls need the 2G network.
        ("GPRS_mode: 2g", "GPRS_mode: auto", "GPRS_mode"),
    ];
    for (from, to, key) in cases {
        assert!(base.contains(from), "{from}");
        let bad = base.replacen(from, to, 1);
        let (status, body) = put_profile(&app, &ops, "bad", &bad, "x").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{to}: {body}");
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(key), "{to}: expected {key} in {fields:?}");
        let reason = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["field"] == *key)
            .unwrap()["reason"]
            .as_str()
            .unwrap();
        assert!(!reason.is_empty());
        if *to == "GPRS_mode: auto" {
            assert!(
                reason.contains("2G") || reason.contains("2g"),
                "CSD/2G rule says why: {reason}"
            );
        }
    }
    // Syntax errors name the line.
    let (status, body) = put_profile(&app, &ops, "bad", "COMM_baudrate 9600\n", "x").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("line 1"),
        "{body}"
    );
    // The same rules apply to device overrides.
    let id = imei(2);
    app.post("/api/v1/devices", &ops, json!({"imei": id})).await;
    let (status, body) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/config"),
            Some(&ops),
            Some(json!({"overrides": {"SMS_validPhone1": "+34666123456", "SMS_validPhone2": "+34666123456"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"].to_string().contains("SMS_validPhone2"),
        "duplicate phone named: {body}"
    );
    // Nothing invalid was stored.
    let (_, c) = app.get(&format!("/api/v1/devices/{id}/config"), &ops).await;
    assert_eq!(c["overrides"], json!({}));
    let (status, _) = app
        .call(
            Method::PUT,
            "/api/v1/profiles/bad name",
            Some(&ops),
            Some(json!({"config": ""})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

#[tokio::test]
async fn reported_config_diff_and_drift_with_a_simulated_modem() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) =
        crate::sim_sessions::start_fleet(&app, &ops, "35693803300000", 1).await;
    let id = imeis[0].to_string();
    // The utility's profile points its modems at Callhome (certificates, no MQTT password).
    let profile = SEED
        .replace(
            "MQTT_server: ssl://broker.cervello.io:8883",
            &format!("MQTT_server: ssl://localhost:{}", app.mqtt.port()),
        )
        .replace("MQTT_id: yku41420t957oh8t", "MQTT_id: [IMEI]")
        .replace("MQTT_login: jfj1usly8ijhh9hizfr453", "MQTT_login:")
        .replace("MQTT_password: gthhdte67y3ttes33fgg", "MQTT_password:");
    let (status, body) = put_profile(&app, &ops, "meters", &profile, "meters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(&ops),
            Some(json!({"tags": ["meters"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, never) = app
        .get(&format!("/api/v1/devices/{id}/config/reported"), &ops)
        .await;
    assert_eq!(never["drift"], "unknown");

    let (status, rep) = app
        .post(
            &format!("/api/v1/devices/{id}/config/read"),
            &ops,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rep}");
    assert!(
        rep["config"]
            .as_str()
            .unwrap()
            .contains(&format!("MTX_IDClient: {id}"))
    );
    assert_eq!(rep["drift"], "in_sync", "{rep}");

    // Someone changes a key on the modem behind the configuration system's back.
    let (status, c) = app
        .post(
            &format!("/api/v1/devices/{id}/commands?wait_s=10"),
            &ops,
            json!({"command": "AT^MTXTUNNEL=SETPARAM,DNS_period,120"}),
        )
        .await;
    assert_eq!(
        (status, c["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{c}"
    );
    let (_, rep) = app
        .post(
            &format!("/api/v1/devices/{id}/config/read"),
            &ops,
            json!(null),
        )
        .await;
    assert_eq!(rep["drift"], "drifted");
    assert_eq!(rep["drifted_keys"], json!(["DNS_period"]));
    let (_, diff) = app
        .get(&format!("/api/v1/devices/{id}/config/diff"), &ops)
        .await;
    assert_eq!(
        diff["keys"],
        json!([{"key": "DNS_period", "desired": "600", "reported": "120"}])
    );
    // Desiring what the modem has brings it back in sync.
    app.call(
        Method::PUT,
        &format!("/api/v1/devices/{id}/config"),
        Some(&ops),
        Some(json!({"overrides": {"DNS_period": "120"}})),
    )
    .await;
    let (_, diff) = app
        .get(&format!("/api/v1/devices/{id}/config/diff"), &ops)
        .await;
    assert_eq!(diff["drift"], "in_sync");

    // Whitelists: read, set (validated), and they land in the desired Config.txt.
    let (_, w) = app
        .get(&format!("/api/v1/devices/{id}/whitelists"), &ops)
        .await;
    assert_eq!(
        w,
        json!({"csd": ["666333444", "666444555"], "sms": ["+34666123456", "+34666123457"]})
    );
    let (status, body) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/whitelists"),
            Some(&ops),
            Some(json!({"csd": ["12ab"], "sms": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("CSD_validPhone"),
        "{body}"
    );
    let (status, w) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{id}/whitelists"),
            Some(&ops),
            Some(json!({"csd": ["666999000"], "sms": ["+34600000001"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{w}");
    let (_, eff) = app
        .get(&format!("/api/v1/devices/{id}/config/effective"), &ops)
        .await;
    let text = eff["config"].as_str().unwrap();
    assert!(
        text.contains("CSD_validPhone1: 666999000") && !text.contains("CSD_validPhone2"),
        "{text}"
    );
    assert!(
        text.contains("SMS_validPhone1: +34600000001") && text.contains("SMS_allPhones: off"),
        "{text}"
    );
    fleet.shutdown().await;
    app.stop().await;
}
