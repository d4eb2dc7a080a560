//! Firmware end to end: the repository (streamed uploads, signatures, bad input), the
//! device-facing HTTPS listener (tokens bound to a device's certificate, Range, 403/404/
//! 410/416), and campaigns run on simulated modems over mutual TLS: waves over two models,
//! `boot-old` modems rolled back and the abort rule, a campaign paused across a server
//! restart, interrupted downloads resumed with Range, and the Java ME OTAP flow.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use callhome_sim::{Behaviour, FirmwareFault};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::jobs::{executions, finished, wait_job};
use crate::sim_sessions::start_fleet_with;

/// Logs as `RUST_LOG` says (none by default), e.g. `RUST_LOG=callhome_api::device=info`
/// shows each download response with its status and range.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A firmware image of `size` bytes whose content depends on `seed`.
fn image(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Uploads a firmware; returns the status and body.
pub(crate) async fn upload(
    app: &TestApp,
    token: &str,
    metadata: Value,
    file: Vec<u8>,
    jad: Option<String>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new()
        .text("metadata", metadata.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(file).file_name("firmware.bin"),
        );
    if let Some(j) = jad {
        form = form.text("jad", j);
    }
    let resp = app
        .client
        .post(app.url("/api/v1/firmware"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits until `n` devices have reported a model (their status after connecting).
async fn wait_models(app: &TestApp, token: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, d) = app.get("/api/v1/firmware/distribution", token).await;
        let reported: i64 = d["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["model"].is_null() && !r["version"].is_null())
            .map(|r| r["devices"].as_i64().unwrap())
            .sum();
        if reported >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "models not reported: {d}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn campaign(app: &TestApp, token: &str, body: Value) -> String {
    let (status, job) = app.post("/api/v1/jobs", token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

fn outcomes(execs: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in execs {
        *m.entry(e["outcome"].as_str().unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    m
}

/// The three campaigns on 1,000 simulated modems of two models.
#[tokio::test]
async fn thousand_modems_campaigns_waves_rollback_abort_and_restart() {
    const N: usize = 1000;
    init_logs();
    let mut app = TestApp::spawn_with(|s| s.drift = None).await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = start_fleet_with(&app, &ops, "35693803600000", N, |cfg| {
        cfg.models = vec!["EHS6".into(), "BGS2".into()];
        let mut s = (*cfg.settings).clone();
        s.reboot_delay = Duration::from_millis(300);
        cfg.settings = Arc::new(s);
    })
    .await;
    wait_models(&app, &ops, N as i64).await;
    let ehs6 = |i: usize| i.is_multiple_of(2);

    // 1. One model, waves 10/50/100 %, 50 in flight: every EHS6 updated, every BGS2 skipped.
    let (status, fw) = upload(
        &app,
        &ops,
        json!({"version": "12.0.0", "models": ["EHS6"], "kind": "image", "notes": "waves"}),
        image(256 * 1024, 1),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{fw}");
    let started = std::time::Instant::now();
    let id = campaign(
        &app,
        &ops,
        json!({"name": "12.0.0 EHS6",
               "operation": {"type": "firmware_update", "firmware_id": fw["id"]},
               "target": {"imeis": imeis.iter().map(ToString::to_string).collect::<Vec<_>>()},
               "rollout": {"max_in_flight": 50, "waves": [10, 50, 100]}}),
    )
    .await;
    let mut peak = 0;
    let job = wait_job(&app, &ops, &id, 900, |j| {
        peak = peak.max(j["progress"]["in_progress"].as_u64().unwrap_or(0));
        finished(j)
    })
    .await;
    println!(
        "campaign 1: 1,000 modems (500 compatible), waves 10/50/100, 50 in flight: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["progress"]["succeeded"], N / 2, "{job}");
    assert_eq!(job["progress"]["skipped"], N / 2, "{job}");
    assert!(peak <= 50, "at most 50 in flight, saw {peak}");
    let execs = executions(&app, &ops, &id, None).await;
    let by_outcome = outcomes(&execs);
    assert_eq!(by_outcome.get("updated"), Some(&(N / 2)), "{by_outcome:?}");
    assert_eq!(
        by_outcome.get("incompatible"),
        Some(&(N / 2)),
        "{by_outcome:?}"
    );
    for (i, h) in fleet.handles().iter().enumerate() {
        if ehs6(i) {
            assert_eq!(h.firmware_version(), "12.0.0", "{}", h.imei());
            assert_eq!(h.installs(), 1, "{}", h.imei());
        } else {
            assert_eq!(h.installs(), 0, "{}", h.imei());
        }
    }
    // The execution's log tells the story, and the inventory follows.
    let (_, detail) = app
        .get(&format!("/api/v1/jobs/{id}/devices/{}", imeis[0]), &ops)
        .await;
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "version_before",
        "command_acknowledged",
        "download_started",
        "download_completed",
        "install_notified",
        "reconnected",
        "version_seen",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(detail["outcome"], "updated", "{detail}");
    assert_eq!(detail["result"]["version_after"], "12.0.0", "{detail}");
    assert_eq!(detail["result"]["download"]["bytes_served"], 256 * 1024);
    let (_, skipped) = app
        .get(&format!("/api/v1/jobs/{id}/devices/{}", imeis[1]), &ops)
        .await;
    assert_eq!(skipped["state"], "skipped", "{skipped}");
    assert!(
        skipped["error"].as_str().unwrap().contains("BGS2"),
        "{skipped}"
    );
    let (_, page) = app
        .get(
            "/api/v1/devices?model=ehs6&firmware=12.0.0&limit=1000",
            &ops,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), N / 2);
    let (_, dist) = app.get("/api/v1/firmware/distribution", &ops).await;
    assert!(
        dist["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["model"] == "EHS6" && r["version"] == "12.0.0" && r["devices"] == N / 2),
        "{dist}"
    );
    let (_, history) = app
        .get(
            &format!("/api/v1/devices/{}/firmware-history", imeis[0]),
            &ops,
        )
        .await;
    assert_eq!(history[0]["version"], "12.0.0", "{history}");
    // A firmware a campaign still uses cannot be deleted; it can once the campaign is over.
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/firmware/{}", fw["id"].as_str().unwrap()),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // 2. 5 % of the BGS2 modems come back on their old image: rolled back, and the abort
    // rule at 3 % stops the campaign, naming its reason.
    let bgs2: Vec<usize> = (0..N).filter(|i| !ehs6(*i)).collect();
    let mut boot_old = std::collections::HashSet::new();
    for (k, i) in bgs2.iter().enumerate() {
        if callhome_sim::is_picked(k, bgs2.len(), 0.05) {
            boot_old.insert(imeis[*i].to_string());
            assert!(
                fleet.handles()[*i]
                    .set_behaviour(Behaviour::firmware(FirmwareFault::BootOld))
                    .await
            );
        }
    }
    assert_eq!(boot_old.len(), bgs2.len() / 20);
    let (_, fw2) = upload(
        &app,
        &ops,
        json!({"version": "12.0.0-b", "models": ["BGS2"], "kind": "image"}),
        image(64 * 1024, 2),
        None,
    )
    .await;
    let id = campaign(
        &app,
        &ops,
        json!({"operation": {"type": "firmware_update", "firmware_id": fw2["id"]},
               "target": {"filter": {"model": "BGS2"}},
               "rollout": {"max_in_flight": 20, "abort": {"failure_percent": 3, "min_executed": 60}}}),
    )
    .await;
    let job = wait_job(&app, &ops, &id, 600, finished).await;
    assert_eq!(job["state"], "aborted", "{job}");
    assert!(
        job["state_reason"].as_str().unwrap().contains("abort rule"),
        "{job}"
    );
    let failed = executions(&app, &ops, &id, Some("failed")).await;
    assert!(!failed.is_empty());
    for f in &failed {
        assert_eq!(f["outcome"], "rolled_back", "{f}");
        assert!(boot_old.contains(f["imei"].as_str().unwrap()), "{f}");
        assert!(f["error"].as_str().unwrap().contains("came back on"), "{f}");
    }
    assert!(job["progress"]["cancelled"].as_i64().unwrap() > 0, "{job}");
    for (i, h) in fleet.handles().iter().enumerate() {
        if boot_old.contains(imeis[i].as_str()) {
            assert_eq!(h.firmware_version(), callhome_sim::answer::FIRMWARE_VERSION);
        }
    }

    // 3. Paused midway, the server restarted, resumed: it finishes with no modem updated
    // twice.
    let (_, fw3) = upload(
        &app,
        &ops,
        json!({"version": "12.1.0", "models": ["EHS6"], "kind": "image", "min_version": "12.0.0"}),
        image(128 * 1024, 3),
        None,
    )
    .await;
    let id = campaign(
        &app,
        &ops,
        json!({"operation": {"type": "firmware_update", "firmware_id": fw3["id"]},
               "target": {"filter": {"model": "EHS6"}},
               "rollout": {"max_in_flight": 25}}),
    )
    .await;
    wait_job(&app, &ops, &id, 300, |j| {
        j["progress"]["succeeded"].as_i64().unwrap_or(0) >= 100
    })
    .await;
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{id}/pause"), &ops, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.restart().await;
    let (status, job) = app
        .post(&format!("/api/v1/jobs/{id}/resume"), &ops, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let job = wait_job(&app, &ops, &id, 600, finished).await;
    assert_eq!(job["state"], "completed", "{job}");
    let failed = executions(&app, &ops, &id, Some("failed")).await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(job["progress"]["succeeded"], N / 2, "{job}");
    for e in executions(&app, &ops, &id, None).await {
        assert_eq!(e["attempts"], 1, "{e}");
    }
    for (i, h) in fleet.handles().iter().enumerate() {
        if ehs6(i) {
            assert_eq!(h.firmware_version(), "12.1.0", "{}", h.imei());
            assert_eq!(h.installs(), 2, "one install per campaign: {}", h.imei());
        }
    }
    fleet.shutdown().await;
    app.stop().await;
}

/// A client of the device-facing listener presenting `creds` (or no certificate).
pub(crate) fn device_client(
    ca_pem: &str,
    creds: Option<&callhome_sim::Credentials>,
) -> reqwest::Client {
    let tls = callhome_ca::tls::client_config(
        ca_pem,
        creds.map(|c| c.cert_pem.as_str()),
        creds.map(|c| c.key_pem.as_str()),
    )
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(Arc::unwrap_or_clone(tls))
        .build()
        .unwrap()
}

/// Interrupted downloads resume with Range and the bytes add up to one image per device;
/// a token is good only for its own device, and only while its execution runs.
#[tokio::test]
async fn interrupted_downloads_resume_and_tokens_are_bound_to_their_device() {
    const N: usize = 12;
    const SIZE: usize = 300_000;
    init_logs();
    let app = TestApp::spawn_with(|s| s.drift = None).await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, cache) = start_fleet_with(&app, &ops, "35693803700000", N, |cfg| {
        cfg.models = vec!["EHS6".into()];
        cfg.behaviour = Behaviour::firmware(FirmwareFault::DownloadInterrupt);
        let mut s = (*cfg.settings).clone();
        s.reboot_delay = Duration::from_millis(200);
        cfg.settings = Arc::new(s);
    })
    .await;
    wait_models(&app, &ops, N as i64).await;
    let (_, fw) = upload(
        &app,
        &ops,
        json!({"version": "13.0.0", "models": ["EHS6"], "kind": "image"}),
        image(SIZE, 9),
        None,
    )
    .await;
    let id = campaign(
        &app,
        &ops,
        json!({"operation": {"type": "firmware_update", "firmware_id": fw["id"]},
               "target": {"imeis": imeis.iter().map(ToString::to_string).collect::<Vec<_>>()},
               "rollout": {"max_in_flight": 6}}),
    )
    .await;
    let job = wait_job(&app, &ops, &id, 300, finished).await;
    assert_eq!(job["progress"]["succeeded"], N, "{job}");
    let job_id: uuid::Uuid = id.parse().unwrap();
    for imei in &imeis {
        let d = app
            .store()
            .download_of(job_id, imei, 1)
            .await
            .unwrap()
            .unwrap();
        assert!(d.requests >= 2, "{d:?}");
        assert!(d.resumptions >= 1, "{d:?}");
        assert_eq!(
            d.bytes_served, SIZE as i64,
            "one image per device, however cut"
        );
        assert!(d.closed_at.is_some());
        let (_, detail) = app
            .get(&format!("/api/v1/jobs/{id}/devices/{imei}"), &ops)
            .await;
        let resumed: Vec<&Value> = detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "download_resumed")
            .collect();
        assert!(!resumed.is_empty(), "{detail}");
        assert!(resumed[0]["detail"]["from"].as_u64().unwrap() > 0);
        assert_eq!(detail["result"]["download"]["bytes_served"], SIZE);
    }
    assert!(
        fleet
            .counters()
            .download_resumes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= N as u64
    );

    // Tokens: another device's certificate is refused, no certificate is refused, an
    // unknown token is not found, and a token whose execution ended is gone.
    let enroller = callhome_sim::Enroller::new(&app.base, &ops, cache.path(), None).unwrap();
    let ca = enroller.ca_certificate().await.unwrap();
    let own = enroller.cached(&imeis[0]).unwrap();
    let other = enroller.cached(&imeis[1]).unwrap();
    let token = app
        .store()
        .download_of(job_id, &imeis[0], 1)
        .await
        .unwrap()
        .unwrap()
        .token;
    let url = format!("https://127.0.0.1:{}/fw/{token}", app.device_http.port());
    let resp = device_client(&ca, Some(&other))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("another device"),
        "{body}"
    );
    let resp = device_client(&ca, None).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = device_client(&ca, Some(&own))
        .get(format!(
            "https://127.0.0.1:{}/fw/not-a-token",
            app.device_http.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = device_client(&ca, Some(&own))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GONE, "the execution ended");
    fleet.shutdown().await;
    app.stop().await;
}

/// Range arithmetic on the listener, with a campaign held open by a modem that never
/// comes back: 206 with Content-Range, If-Range, 416 past the end; then the execution
/// times out.
#[tokio::test]
async fn ranges_on_the_device_listener_and_a_modem_that_never_comes_back() {
    const SIZE: usize = 100_000;
    let app = TestApp::spawn_with(|s| s.drift = None).await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, cache) = start_fleet_with(&app, &ops, "35693803800000", 1, |cfg| {
        cfg.models = vec!["EHS6".into()];
        cfg.behaviour = Behaviour::firmware(FirmwareFault::NeverBack);
    })
    .await;
    wait_models(&app, &ops, 1).await;
    let data = image(SIZE, 5);
    let (_, fw) = upload(
        &app,
        &ops,
        json!({"version": "14.0.0", "models": ["EHS6"], "kind": "image"}),
        data.clone(),
        None,
    )
    .await;
    let id = campaign(
        &app,
        &ops,
        json!({"operation": {"type": "firmware_update", "firmware_id": fw["id"], "install_timeout_s": 60},
               "target": {"imeis": [imeis[0].to_string()]}}),
    )
    .await;
    let job_id: uuid::Uuid = id.parse().unwrap();
    // The modem downloads, posts 900 and vanishes: the token lives until the timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let token = loop {
        if let Some(d) = app.store().download_of(job_id, &imeis[0], 1).await.unwrap()
            && d.notify_code == Some(900)
        {
            break d.token;
        }
        assert!(tokio::time::Instant::now() < deadline, "no download");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let enroller = callhome_sim::Enroller::new(&app.base, &ops, cache.path(), None).unwrap();
    let ca = enroller.ca_certificate().await.unwrap();
    let own = device_client(&ca, enroller.cached(&imeis[0]).as_ref());
    let url = format!("https://127.0.0.1:{}/fw/{token}", app.device_http.port());
    let resp = own
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-1999/{SIZE}")
    );
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", fw["sha256"].as_str().unwrap()));
    assert_eq!(resp.bytes().await.unwrap()[..], data[1000..2000]);
    let resp = own
        .get(&url)
        .header("Range", "bytes=99000-")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap()[..], data[99_000..]);
    let resp = own
        .get(&url)
        .header("Range", "bytes=5-")
        .header("If-Range", "\"another-etag\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a stale If-Range gets the whole file"
    );
    assert_eq!(resp.bytes().await.unwrap().len(), SIZE);
    let resp = own
        .get(&url)
        .header("Range", format!("bytes={SIZE}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()["content-range"], format!("bytes */{SIZE}"));
    // The operator's copy of the file.
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/firmware/{}/blob",
            fw["id"].as_str().unwrap()
        )))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap()[..], data[..]);

    let job = wait_job(&app, &ops, &id, 120, finished).await;
    let execs = executions(&app, &ops, &id, None).await;
    assert_eq!(execs[0]["outcome"], "timed_out", "{job} {execs:?}");
    assert!(
        execs[0]["error"]
            .as_str()
            .unwrap()
            .contains("not back within 60 s"),
        "{execs:?}"
    );
    fleet.shutdown().await;
    app.stop().await;
}

/// A JAR with a manifest for MIDlet `version`.
fn jar(version: &str, filler: usize) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("META-INF/MANIFEST.MF", opts).unwrap();
        write!(
            z,
            "Manifest-Version: 1.0\r\nMIDlet-Name: MTX-Tunnel\r\nMIDlet-Vendor: Matrix\r\nMIDlet-Version: {version}\r\nMIDlet-1: MTX-Tunnel,,mtx.Main\r\n\r\n"
        )
        .unwrap();
        z.start_file("mtx/Main.class", opts).unwrap();
        z.write_all(&image(filler, 7)).unwrap();
        z.finish().unwrap();
    }
    out.into_inner()
}

/// The OTAP flow: JAD, then JAR, then install-notify; a 904 fails its execution with that
/// reason.
#[tokio::test]
async fn otap_midlet_campaign_with_a_904() {
    const N: usize = 4;
    let app = TestApp::spawn_with(|s| s.drift = None).await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = start_fleet_with(&app, &ops, "35693803900000", N, |cfg| {
        cfg.models = vec!["TC65i".into()];
        let mut s = (*cfg.settings).clone();
        s.reboot_delay = Duration::from_millis(200);
        cfg.settings = Arc::new(s);
    })
    .await;
    wait_models(&app, &ops, N as i64).await;
    assert!(
        fleet.handles()[3]
            .set_behaviour(Behaviour::firmware(FirmwareFault::OtapSizeMismatch))
            .await
    );
    let file = jar("2.5.1", 20_000);
    // A JAD that disagrees with its JAR is refused, naming the attribute.
    let bad_jad = format!(
        "MIDlet-Name: MTX-Tunnel\nMIDlet-Vendor: Matrix\nMIDlet-Version: 2.5.1\nMIDlet-Jar-URL: mtx.jar\nMIDlet-Jar-Size: {}\n",
        file.len() + 1
    );
    let (status, body) = upload(
        &app,
        &ops,
        json!({"version": "2.5.1", "models": ["TC65i"], "kind": "midlet"}),
        file.clone(),
        Some(bad_jad),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("MIDlet-Jar-Size"),
        "{body}"
    );
    let jad = format!(
        "MIDlet-Name: MTX-Tunnel\nMIDlet-Vendor: Matrix\nMIDlet-Version: 2.5.1\nMIDlet-Jar-URL: mtx.jar\nMIDlet-Jar-Size: {}\nMIDlet-1: MTX-Tunnel,,mtx.Main\n",
        file.len()
    );
    let (status, fw) = upload(
        &app,
        &ops,
        json!({"version": "2.5.1", "models": ["TC65i"], "kind": "midlet"}),
        file,
        Some(jad),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{fw}");
    assert_eq!(fw["kind"], "midlet");
    let id = campaign(
        &app,
        &ops,
        json!({"operation": {"type": "firmware_update", "firmware_id": fw["id"]},
               "target": {"imeis": imeis.iter().map(ToString::to_string).collect::<Vec<_>>()}}),
    )
    .await;
    let job = wait_job(&app, &ops, &id, 120, finished).await;
    assert_eq!(job["progress"]["succeeded"], 3, "{job}");
    assert_eq!(job["progress"]["failed"], 1, "{job}");
    let (_, failed) = app
        .get(&format!("/api/v1/jobs/{id}/devices/{}", imeis[3]), &ops)
        .await;
    assert_eq!(failed["outcome"], "download_failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("904 JAR Size Mismatch"),
        "{failed}"
    );
    let (_, ok) = app
        .get(&format!("/api/v1/jobs/{id}/devices/{}", imeis[0]), &ops)
        .await;
    let kinds: Vec<&str> = ok["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} in {kinds:?}"))
    };
    assert!(pos("descriptor_served") < pos("download_started"));
    assert!(pos("download_started") < pos("install_notified"));
    assert!(pos("install_notified") < pos("version_seen"));
    assert_eq!(ok["outcome"], "updated");
    for (i, h) in fleet.handles().iter().enumerate() {
        let want = if i == 3 {
            callhome_sim::answer::FIRMWARE_VERSION
        } else {
            "2.5.1"
        };
        assert_eq!(h.firmware_version(), want);
    }
    fleet.shutdown().await;
    app.stop().await;
}

/// SubjectPublicKeyInfo PEM of an Ed25519 public key.
fn ed25519_spki_pem(public: &[u8]) -> String {
    let mut der = hex_decode("302a300506032b6570032100");
    der.extend_from_slice(public);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn no_blobs_left(app: &TestApp, keep: usize) {
    let root = app.data_dir.join("firmware");
    let mut files = 0;
    for entry in walk(&root) {
        let rel = entry
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            !rel.starts_with(".partial/"),
            "half-written upload left: {rel}"
        );
        files += 1;
    }
    assert_eq!(files, keep, "files in the repository");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every bad upload is a 4xx naming the problem, and leaves nothing behind.
#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let pem = ed25519_spki_pem(key.public_key().as_ref());
    let app = TestApp::spawn_with(move |s| {
        s.drift = None;
        s.firmware.max_upload_bytes = 100_000;
        s.firmware.require_signature = true;
        s.firmware.models = vec!["EHS6".into()];
        s.firmware.signing_keys = callhome_firmware::SigningKeys::new(vec![
            callhome_firmware::SigningKey::from_pem("release-2026", &pem).unwrap(),
        ]);
    })
    .await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reader", "reader").await;
    let data = image(50_000, 4);
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&data).into()
    };
    let sig = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        key.sign(&digest).as_ref(),
    );
    let meta = |extra: Value| {
        let mut m =
            json!({"version": "1.2.3", "models": ["EHS6"], "kind": "image", "signature": sig});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    let field = |body: &Value| body["errors"][0]["field"].as_str().unwrap_or("").to_owned();

    // A reader may not upload.
    let (status, _) = upload(&app, &reader, meta(json!({})), data.clone(), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Too large.
    let (status, body) = upload(&app, &ops, meta(json!({})), image(150_000, 1), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("100000"),
        "{body}"
    );
    // No signature, a wrong one, one that is not base64.
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"signature": null})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "signature".into()),
        "{body}"
    );
    let other = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        key.sign(b"other").as_ref(),
    );
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"signature": other})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "signature".into()),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not made by any configured signing key"),
        "{body}"
    );
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"signature": "%%%"})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Unknown model, bad version, bad kind.
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"models": ["EHS7"]})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "models[0]".into()),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("unknown model"),
        "{body}"
    );
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"version": "1 2"})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "version".into()),
        "{body}"
    );
    let (status, body) = upload(&app, &ops, meta(json!({"kind": "rom"})), data.clone(), None).await;
    assert_eq!(
        (status, field(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "metadata".into()),
        "{body}"
    );
    // A MIDlet that is not a JAR.
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"kind": "midlet"})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("JAR"), "{body}");
    // Not multipart; a part missing; an unknown part.
    let (status, body) = app
        .post("/api/v1/firmware", &ops, json!({"version": "1"}))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let resp = app
        .client
        .post(app.url("/api/v1/firmware"))
        .bearer_auth(&ops)
        .multipart(reqwest::multipart::Form::new().text("metadata", meta(json!({})).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = app
        .client
        .post(app.url("/api/v1/firmware"))
        .bearer_auth(&ops)
        .multipart(
            reqwest::multipart::Form::new()
                .text("metadata", meta(json!({})).to_string())
                .text("extra", "x"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // A truncated body: the multipart stream ends without its closing boundary.
    let boundary = "XyZ";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n",
        meta(json!({}))
    )
    .into_bytes();
    body.extend_from_slice(&data[..20_000]);
    let resp = app
        .client
        .post(app.url("/api/v1/firmware"))
        .bearer_auth(&ops)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("multipart"),
        "{problem}"
    );
    no_blobs_left(&app, 0);

    // The good upload, then the same file again: 409 naming the first.
    let (status, fw) = upload(&app, &ops, meta(json!({})), data.clone(), None).await;
    assert_eq!(status, StatusCode::CREATED, "{fw}");
    assert_eq!(fw["signed_by"], "release-2026");
    assert_eq!(fw["size"], 50_000);
    assert_eq!(fw["sha256"], hex::encode(digest));
    let (status, body) = upload(
        &app,
        &ops,
        meta(json!({"version": "1.2.4"})),
        data.clone(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(fw["id"].as_str().unwrap()),
        "{body}"
    );
    no_blobs_left(&app, 1);
    let (status, list) = app.get("/api/v1/firmware", &ops).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // A campaign for a firmware that does not exist is refused.
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "firmware_update", "firmware_id": uuid::Uuid::now_v7()},
                   "target": {"imeis": [crate::helpers::imei(1)]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/firmware/{}", fw["id"].as_str().unwrap()),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    no_blobs_left(&app, 0);
    app.stop().await;
}
