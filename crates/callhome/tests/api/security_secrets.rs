//! Issue 16, item 6 (secrets): secret Config.txt values encrypted at rest, readiness and 503
//! bodies without raw database errors, the metrics token, start-up permission checks and the
//! master key.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use callhome::config::{Overrides, Settings};
use callhome_core::configtxt::SEED_MASTER_CONFIG;
use callhome_sim::ModemSettings;
use callhome_store::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_PASSWORD, TestApp};
use crate::sim_sessions::start_fleet_with;

/// Distinctive secret values: none of them may appear anywhere in the database.
const PROFILE_MQTT: &str = "Prof-Mqtt-Pw-7f3a9c1e";
const PROFILE_GPRS: &str = "Prof-Gprs-Pw-51be0d77";
const OVERRIDE_GPRS: &str = "Ovr-Gprs-Pw-93c1aa02";
const JOB_MQTT: &str = "Job-Mqtt-Pw-c0ffee42";
const COMMAND_GPRS: &str = "Cmd-Gprs-Pw-0ddba115";
const PIN: &str = "8462";
/// A non-secret value written next to them: it must be found, so the search can fail.
const CANARY_APN: &str = "apn-canary-4b1d.example";

/// Every form a secret could take in a stored text.
fn forbidden() -> Vec<String> {
    let mut v: Vec<String> = [
        PROFILE_MQTT,
        PROFILE_GPRS,
        OVERRIDE_GPRS,
        JOB_MQTT,
        COMMAND_GPRS,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.extend([
        format!("MTX_PIN: {PIN}"),
        format!("\"MTX_PIN\":\"{PIN}\""),
        format!("MTX_PIN,{PIN}"),
    ]);
    v
}

/// The seed pointed at this server, with the distinctive secrets and the canary.
fn profile(app: &TestApp) -> String {
    SEED_MASTER_CONFIG
        .replace(
            "MQTT_server: ssl://broker.cervello.io:8883",
            &format!("MQTT_server: ssl://localhost:{}", app.mqtt.port()),
        )
        .replace("MQTT_id: yku41420t957oh8t", "MQTT_id: [IMEI]")
        .replace("MQTT_login: jfj1usly8ijhh9hizfr453", "MQTT_login:")
        .replace(
            "MQTT_password: gthhdte67y3ttes33fgg",
            &format!("MQTT_password: {PROFILE_MQTT}"),
        )
}

fn set_line(text: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let out: Vec<String> = text
        .split('\n')
        .map(|l| {
            if l.split(':').next() == Some(key) {
                found = true;
                format!("{key}: {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(found, "the seed has {key}");
    out.join("\n")
}

async fn wait_job(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = app.get(&format!("/api/v1/jobs/{id}"), token).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if !matches!(job["state"].as_str(), Some("running" | "paused"))
            && job["progress"]["in_progress"] == 0
        {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job not done: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Everything in the database as bytes: the SQLite file with its WAL, or every PostgreSQL
/// table of the test's schema rendered as text (a `pg_dump` of the rows).
async fn dump(app: &TestApp, pg_url: Option<&str>) -> Vec<u8> {
    match pg_url {
        None => {
            let mut bytes = Vec::new();
            for name in ["callhome.db", "callhome.db-wal", "callhome.db-shm"] {
                if let Ok(b) = std::fs::read(app.data_dir.join(name)) {
                    bytes.extend(b);
                }
            }
            assert!(bytes.len() > 4096, "the SQLite file was read");
            bytes
        }
        Some(url) => {
            use sqlx::Row as _;
            let pool = sqlx::PgPool::connect(url)
                .await
                .expect("connect to the schema");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.iter().any(|t| t == "commands"), "{tables:?}");
            let mut out = String::new();
            for t in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT row_to_json(t)::text AS r FROM \"{t}\" t"
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                for r in rows {
                    out.push_str(&r.get::<String, _>("r"));
                    out.push('\n');
                }
            }
            pool.close().await;
            out.into_bytes()
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The acceptance point: a profile's and a device's secrets, a job's, a command's, and the
/// modem's replies and reported configuration are nowhere in the database in plaintext
/// (SQLite file bytes; every PostgreSQL row as text when `TEST_DATABASE_URL` is set), while an
/// admin still reads the real values and an operator sees `***`.
#[tokio::test]
async fn secret_config_values_are_encrypted_at_rest_and_shown_only_to_admins() {
    scenario(None, "35693803900000").await;
    if let Some(pg) = TestDatabase::postgres_from_env()
        .await
        .expect("postgres schema")
    {
        scenario(Some(pg.url.as_str()), "35693803910000").await;
        pg.cleanup().await.expect("drop schema");
    }
}

async fn scenario(pg_url: Option<&str>, first_imei: &str) {
    let app = match pg_url {
        Some(url) => {
            let url = url.to_owned();
            TestApp::spawn_with(move |s| s.database_url = url.into()).await
        }
        // The SQLite file is what this run searches: SQLite even when the API suite runs
        // on PostgreSQL (`CALLHOME_TEST_API_BACKEND=postgres`).
        None => {
            TestApp::spawn_with(|s| {
                s.database_url =
                    format!("sqlite://{}", s.data_dir.join("callhome.db").display()).into();
            })
            .await
        }
    };
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = start_fleet_with(&app, &admin, first_imei, 1, |cfg| {
        let mut s: ModemSettings = (*cfg.settings).clone();
        s.reboot_delay = Duration::from_millis(300);
        s.tcp_nodelay = true;
        cfg.settings = Arc::new(s);
    })
    .await;
    let imei = imeis[0].to_string();

    // A profile with secrets, by tag.
    let text = set_line(
        &set_line(&profile(&app), "GPRS_password", PROFILE_GPRS),
        "GPRS_apn",
        CANARY_APN,
    );
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/profiles/sec",
            Some(&ops),
            Some(json!({"config": text, "tag": "sec"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{imei}"),
            Some(&ops),
            Some(json!({"tags": ["sec"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Device overrides with secrets.
    let (status, body) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{imei}/config"),
            Some(&ops),
            Some(json!({"overrides": {"GPRS_password": OVERRIDE_GPRS, "MTX_PIN": PIN}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Applied to the modem: SETPARAMs of the secrets, GETCONFIG replies holding them, the
    // reported configuration.
    let (status, job) = app
        .post(
            &format!("/api/v1/devices/{imei}/config/apply"),
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job = wait_job(&app, &ops, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "completed", "{job}");
    // A job whose operation holds a secret (stored with the job, then in the overrides).
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "set_keys", "keys": {"MQTT_password": JOB_MQTT}},
                   "target": {"imeis": [imei]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &ops, &job_id).await;
    assert_eq!(job["state"], "completed", "{job}");
    // Commands typed by hand: a SETPARAM of a secret, and a GETPARAM whose reply is one.
    for command in [
        format!("AT^MTXTUNNEL=SETPARAM,GPRS_password,{COMMAND_GPRS}"),
        "AT^MTXTUNNEL=GETPARAM,MQTT_password".to_owned(),
    ] {
        let (status, c) = app
            .post(
                &format!("/api/v1/devices/{imei}/commands?wait_s=20"),
                &admin,
                json!({"command": command}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{c}");
        assert_eq!(c["state"], "succeeded", "{c}");
        let shown = c.to_string();
        assert!(
            !shown.contains(COMMAND_GPRS) && !shown.contains(JOB_MQTT),
            "commands are masked for everyone: {shown}"
        );
    }

    // Admins read the real values back...
    let (_, p) = app.get("/api/v1/profiles/sec", &admin).await;
    assert_eq!(p["config"], text, "the profile byte for byte");
    let (_, c) = app
        .get(&format!("/api/v1/devices/{imei}/config"), &admin)
        .await;
    assert_eq!(c["overrides"]["GPRS_password"], OVERRIDE_GPRS, "{c}");
    assert_eq!(c["overrides"]["MTX_PIN"], PIN, "{c}");
    assert_eq!(c["overrides"]["MQTT_password"], JOB_MQTT, "{c}");
    let (_, r) = app
        .get(&format!("/api/v1/devices/{imei}/config/reported"), &admin)
        .await;
    let reported = r["config"].as_str().unwrap();
    assert!(
        reported.contains(&format!("MQTT_password: {JOB_MQTT}"))
            && reported.contains(&format!("MTX_PIN: {PIN}")),
        "{reported}"
    );
    let (_, j) = app.get(&format!("/api/v1/jobs/{job_id}"), &admin).await;
    assert_eq!(j["operation"]["keys"]["MQTT_password"], JOB_MQTT, "{j}");
    // ...operators see `***`.
    let mut shown = String::new();
    for path in [
        "/api/v1/profiles/sec".to_owned(),
        format!("/api/v1/devices/{imei}/config"),
        format!("/api/v1/devices/{imei}/config/reported"),
        format!("/api/v1/devices/{imei}/config/effective"),
        format!("/api/v1/devices/{imei}/commands?limit=100"),
        format!("/api/v1/jobs/{job_id}"),
        format!("/api/v1/jobs/{job_id}/devices"),
    ] {
        let (status, body) = app.get(&path, &ops).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        shown.push_str(&body.to_string());
    }
    for secret in forbidden() {
        assert!(
            !contains(shown.as_bytes(), &secret),
            "{secret} shown to an operator"
        );
    }
    assert!(shown.contains("***") && shown.contains(CANARY_APN));

    // The database holds none of them; it does hold the canary and encrypted values.
    let bytes = dump(&app, pg_url).await;
    assert!(contains(&bytes, CANARY_APN), "the dump was searched");
    for secret in forbidden() {
        assert!(
            !contains(&bytes, &secret),
            "{secret:?} found in the database ({})",
            if pg_url.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            }
        );
    }
    assert!(contains(&bytes, "enc:v1:"), "encrypted values are there");
    println!(
        "secrets at rest: {} bytes of {} searched, {} secret forms absent",
        bytes.len(),
        if pg_url.is_some() {
            "PostgreSQL rows"
        } else {
            "SQLite file + WAL"
        },
        forbidden().len()
    );
    fleet.shutdown().await;
    app.stop().await;
}

/// Rows written before encryption was on (plaintext) keep working and are encrypted when
/// rewritten; a server started with another master key refuses to start instead of writing
/// values nobody could read; `CALLHOME_MASTER_KEY` replaces `master.key`.
#[tokio::test]
async fn master_key_file_is_private_and_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let settings = || {
        let mut s = Settings::resolve(&Overrides {
            data_dir: Some(data.clone()),
            http: Some("127.0.0.1:0".parse().unwrap()),
            mqtt: Some("127.0.0.1:0".parse().unwrap()),
            tunnel: Some("127.0.0.1:0".parse().unwrap()),
            device_http: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        s.admin_password = Some(SecretString::from(ADMIN_PASSWORD));
        s.master_key = None;
        s
    };
    // A plaintext row from before encryption: written through a store opened without a key.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let url = format!("sqlite://{}", data.join("callhome.db").display());
    let plain = callhome_store::open(&url, &callhome_store::OpenOptions::default())
        .await
        .unwrap();
    let legacy = "GPRS_apn: x\nGPRS_password: Legacy-Plain-5e1f\n";
    plain
        .put_profile(&callhome_store::NewProfileVersion {
            name: "legacy".into(),
            tag: None,
            priority: 0,
            config: legacy.into(),
            by: "test".into(),
        })
        .await
        .unwrap();
    plain.close().await;

    let server = callhome::server::start(&settings()).await.expect("starts");
    let key_file = data.join("master.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "master.key is created 0600"
    );
    let store = server.store.clone();
    let p = store.get_profile("legacy", None).await.unwrap();
    assert_eq!(p.config, legacy, "a plaintext row reads as written");
    // Rewritten: encrypted from now on.
    store
        .put_profile(&callhome_store::NewProfileVersion {
            name: "legacy".into(),
            tag: None,
            priority: 0,
            config: legacy.replace("Legacy-Plain-5e1f", "Rewritten-9d2c"),
            by: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_profile("legacy", None).await.unwrap().config,
        legacy.replace("Legacy-Plain-5e1f", "Rewritten-9d2c")
    );
    server.shutdown().await.unwrap();
    let raw = std::fs::read(data.join("callhome.db")).unwrap();
    let wal = std::fs::read(data.join("callhome.db-wal")).unwrap_or_default();
    assert!(
        !contains(&raw, "Rewritten-9d2c") && !contains(&wal, "Rewritten-9d2c"),
        "the rewritten version is encrypted"
    );

    // Another key: refused, naming the problem, never the key.
    let other = callhome_store::MasterKey::generate().to_base64();
    let mut s = settings();
    s.master_key = Some(SecretString::from(other.clone()));
    let err = match callhome::server::start(&s).await {
        Ok(_) => panic!("started with another master key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("master key") && !err.contains(&other), "{err}");
    assert!(!format!("{s:?}").contains(&other), "Debug hides the key");
    // A malformed key: refused without quoting it.
    s.master_key = Some(SecretString::from("not-a-key!!".to_owned()));
    let err = match callhome::server::start(&s).await {
        Ok(_) => panic!("started with a malformed master key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("CALLHOME_MASTER_KEY") && !err.contains("not-a-key"),
        "{err}"
    );
    // The right key given in the environment setting works (the file is not needed).
    let mut s = settings();
    s.master_key = Some(SecretString::from(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .trim()
            .to_owned(),
    ));
    std::fs::remove_file(&key_file).unwrap();
    let server = callhome::server::start(&s)
        .await
        .expect("starts with the key");
    assert!(
        !key_file.exists(),
        "no master.key written when the key is given"
    );
    server.shutdown().await.unwrap();
}

/// `jwt.key` (and the other secret files, the SQLite files, the data directory) readable by
/// others: a warning and the file tightened to 0600, or with `security.strict_permissions` a
/// refusal to start that names the file.
#[tokio::test]
async fn loose_secret_files_are_tightened_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Settings::resolve(&Overrides {
        data_dir: Some(data.clone()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        mqtt: Some("127.0.0.1:0".parse().unwrap()),
        tunnel: Some("127.0.0.1:0".parse().unwrap()),
        device_http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    s.admin_password = Some(SecretString::from(ADMIN_PASSWORD));
    // First start creates everything private.
    callhome::server::start(&s)
        .await
        .expect("starts")
        .shutdown()
        .await
        .unwrap();
    let jwt = data.join("jwt.key");
    let db = data.join("callhome.db");
    for f in [&jwt, &db] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    s.strict_permissions = true;
    let err = match callhome::server::start(&s).await {
        Ok(_) => panic!("started with a world-readable jwt.key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("strict_permissions")
            && err.contains("jwt.key has mode 0644")
            && err.contains("callhome.db has mode 0644"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&jwt).unwrap().permissions().mode() & 0o777,
        0o644,
        "refused before touching anything"
    );

    s.strict_permissions = false;
    let server = callhome::server::start(&s)
        .await
        .expect("starts with a warning");
    for f in [&jwt, &db] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{} tightened",
            f.display()
        );
    }
    server.shutdown().await.unwrap();

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.strict_permissions = true;
    let err = match callhome::server::start(&s).await {
        Ok(_) => panic!("started with a world-readable data directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("has mode 0755; it should be 0700"), "{err}");
}

/// `GET /metrics` with `http.metrics_token`: 401 problem+json without it, with a wrong one or
/// with an API credential; 200 with it.
#[tokio::test]
async fn metrics_require_the_configured_token() {
    const TOKEN: &str = "scrape-token-1f2e3d4c5b6a";
    let app = TestApp::spawn_with(|s| s.metrics_token = Some(SecretString::from(TOKEN))).await;
    let admin = app.admin_token().await;
    let get = |auth: Option<String>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer wrong-token-0000000000".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {admin}")),
    ] {
        let resp = get(auth.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("callhome_http_requests_total"), "{body}");
        assert!(!body.contains(TOKEN), "{body}");
    }
    let resp = get(Some(format!("Bearer {TOKEN}"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.text().await.unwrap();
    assert!(body.contains("callhome_"), "{body}");
    // The API itself is unaffected.
    let (status, _) = app.get("/api/v1/auth/whoami", &admin).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;

    // Without the setting, /metrics stays open.
    let app = TestApp::spawn().await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.stop().await;
}

/// With the database gone, `/readyz` and every 503 say so generically: the driver's error
/// (which can name hosts, users, files) is logged, not shown.
#[tokio::test]
async fn readyz_and_503_bodies_carry_no_raw_database_error() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (status, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // Closing the pool makes every database call fail as sqlx's `PoolClosed`.
    app.store().close().await;
    let raw = sqlx::Error::PoolClosed.to_string();
    for (path, token) in [("/readyz", None), ("/api/v1/devices", Some(admin.as_str()))] {
        let (status, body) = app.call(Method::GET, path, token, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["type"], "urn:callhome:problem:unavailable", "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert_eq!(
            detail,
            "the database is unavailable; try again later (the cause has been logged)"
        );
        let text = body.to_string();
        assert!(
            !text.contains(&raw) && !text.contains("pool") && !text.contains("sqlx"),
            "{path}: {text}"
        );
    }
    // The server is left running on a closed pool: dropped, not shut down cleanly.
    drop(app);
}
