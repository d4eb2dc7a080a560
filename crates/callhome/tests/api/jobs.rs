//! Bulk jobs end to end: the real server, simulated modems over mutual TLS, the real command
//! channel; rollout rules, abort, pause / restart / resume.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use callhome_core::configtxt::SEED_MASTER_CONFIG;
use callhome_sim::{Behaviour, Fleet, ModemSettings};
use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::sim_sessions::start_fleet_with;

/// The seed's master Config.txt pointed at this server (certificates, no MQTT password).
fn profile_for(app: &TestApp) -> String {
    SEED_MASTER_CONFIG
        .replace(
            "MQTT_server: ssl://broker.cervello.io:8883",
            &format!("MQTT_server: ssl://localhost:{}", app.mqtt.port()),
        )
        .replace("MQTT_id: yku41420t957oh8t", "MQTT_id: [IMEI]")
        .replace("MQTT_login: jfj1usly8ijhh9hizfr453", "MQTT_login:")
        .replace("MQTT_password: gthhdte67y3ttes33fgg", "MQTT_password:")
}

async fn fleet(
    app: &TestApp,
    token: &str,
    first: &str,
    n: usize,
    tag: &str,
) -> (Fleet, Vec<callhome_core::Imei>, tempfile::TempDir) {
    let out = start_fleet_with(app, token, first, n, |cfg| {
        let mut s: ModemSettings = (*cfg.settings).clone();
        s.reboot_delay = Duration::from_millis(300);
        s.tcp_nodelay = true;
        cfg.settings = Arc::new(s);
    })
    .await;
    // Tag them all, 32 requests at a time.
    futures::stream::iter(out.1.iter())
        .for_each_concurrent(32, |imei| async move {
            let (status, body) = app
                .call(
                    Method::PATCH,
                    &format!("/api/v1/devices/{imei}"),
                    Some(token),
                    Some(json!({"tags": [tag]})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        })
        .await;
    out
}

async fn put_profile(app: &TestApp, token: &str, tag: &str) {
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/profiles/meters",
            Some(token),
            Some(json!({"config": profile_for(app), "tag": tag})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Polls the job until `done(job)` or the deadline.
pub(crate) async fn wait_job(
    app: &TestApp,
    token: &str,
    id: &str,
    secs: u64,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, job) = app.get(&format!("/api/v1/jobs/{id}"), token).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not get there in {secs} s: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn finished(job: &Value) -> bool {
    !matches!(job["state"].as_str(), Some("running" | "paused"))
        && job["progress"]["in_progress"] == 0
}

/// Every execution of a job, following the cursor.
pub(crate) async fn executions(
    app: &TestApp,
    token: &str,
    id: &str,
    state: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut path = format!("/api/v1/jobs/{id}/devices?limit=1000&cursor={cursor}");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        let (status, page) = app.get(&path, token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return out,
        }
    }
}

#[tokio::test]
async fn job_requests_are_validated_field_by_field() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("reading-centre", "reader").await;
    let imei = crate::helpers::imei(1);
    let (status, _) = app
        .post(
            "/api/v1/devices",
            &ops,
            json!({"imei": imei, "tags": ["a"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let cases = [
        (
            json!({"operation": {"type": "reboot"}, "target": {}}),
            "target",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a", "imeis": [imei]}}),
            "target",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a and (b"}}),
            "target.tag_expr",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"imeis": ["123"]}}),
            "target.imeis[0]",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"imeis": [crate::helpers::imei(2)]}}),
            "target.imeis[0]",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"imeis": [imei, imei]}}),
            "target.imeis[1]",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "nobody"}}),
            "target",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"filter": {"drift": "maybe"}}}),
            "target.filter.drift",
        ),
        (
            json!({"operation": {"type": "set_keys", "keys": {"DNS_period": "soon"}}, "target": {"tag_expr": "a"}}),
            "DNS_period",
        ),
        (
            json!({"operation": {"type": "set_keys", "keys": {}}, "target": {"tag_expr": "a"}}),
            "operation.keys",
        ),
        (
            json!({"operation": {"type": "set_whitelists", "csd": ["12ab"], "sms": []}, "target": {"tag_expr": "a"}}),
            "CSD_validPhone1",
        ),
        (
            json!({"operation": {"type": "at_command", "command": "AT\r\nAT"}, "target": {"tag_expr": "a"}}),
            "operation.command",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a"}, "rollout": {"max_in_flight": 0}}),
            "rollout.max_in_flight",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a"}, "rollout": {"waves": [50, 20]}}),
            "rollout.waves[1]",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a"}, "rollout": {"abort": {"failure_percent": 150, "min_executed": 1}}}),
            "rollout.abort.failure_percent",
        ),
        (
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a"}, "rollout": {"ramp": {"base_per_minute": 10, "increment_factor": 0.5, "every_succeeded": 1}}}),
            "rollout.ramp.increment_factor",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = app.post("/api/v1/jobs", &ops, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {problem}"
        );
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{body}: {field} not in {problem}");
    }
    // Unknown members and operation types are rejected too, and readers may not create jobs.
    let (status, _) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "format_disk"}, "target": {"tag_expr": "a"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .post(
            "/api/v1/jobs",
            &reader,
            json!({"operation": {"type": "reboot"}, "target": {"tag_expr": "a"}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.get("/api/v1/jobs/not-a-uuid", &ops).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .get(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()), &ops)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/api/v1/devices?drift=sideways", &ops).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // An offline device waits; cancelling ends it `cancelled`; a cancelled job cannot resume.
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "reboot"}, "target": {"imeis": [imei]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["state"], "running");
    assert_eq!(job["progress"]["pending"], 1);
    let id = job["id"].as_str().unwrap();
    let (status, job) = app
        .post(&format!("/api/v1/jobs/{id}/pause"), &ops, json!(null))
        .await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{job}"
    );
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{id}/pause"), &ops, json!(null))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, job) = app
        .post(&format!("/api/v1/jobs/{id}/cancel"), &ops, json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["progress"]["cancelled"], 1);
    assert!(
        job["state_reason"].as_str().unwrap().contains("ops"),
        "{job}"
    );
    let (status, problem) = app
        .post(&format!("/api/v1/jobs/{id}/resume"), &ops, json!(null))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (_, list) = app.get("/api/v1/jobs?state=cancelled", &ops).await;
    assert_eq!(list["items"][0]["id"], id);
    app.stop().await;
}

#[tokio::test]
async fn at_command_reboot_and_apply_on_a_few_modems() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = fleet(&app, &ops, "35693803400000", 4, "few").await;
    put_profile(&app, &ops, "few").await;
    let mut events = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .bytes_stream();

    // A raw AT command over a tag expression, in two waves.
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"name": "signal", "operation": {"type": "at_command", "command": "AT+CSQ"},
                   "target": {"tag_expr": "few and not other"}, "rollout": {"waves": [50, 100], "max_in_flight": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &ops, &id, 60, finished).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["progress"]["succeeded"], 4);
    assert_eq!(job["current_wave"], 2);
    let ex = executions(&app, &ops, &id, None).await;
    assert_eq!(ex.len(), 4);
    assert!(
        ex.iter()
            .all(|e| e["result"]["reply"].as_str().unwrap().contains("+CSQ:")),
        "{ex:?}"
    );
    assert_eq!(ex.iter().filter(|e| e["wave"] == 1).count(), 2);
    // The job's events reached the SSE stream.
    let mut seen = String::new();
    while !seen.contains("job.completed") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    for kind in [
        "job.created",
        "job.device.started",
        "job.device.succeeded",
        "job.wave",
    ] {
        assert!(seen.contains(kind), "{kind} missing from {seen}");
    }

    // Rate limit: two starts a minute; the other two wait, then the job is cancelled.
    let (_, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "at_command", "command": "AT"}, "target": {"tag_expr": "few"},
                   "rollout": {"max_per_minute": 2}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_job(&app, &ops, &id, 30, |j| j["progress"]["succeeded"] == 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, job) = app.get(&format!("/api/v1/jobs/{id}"), &ops).await;
    assert_eq!(
        (
            job["progress"]["succeeded"].as_u64(),
            job["progress"]["pending"].as_u64()
        ),
        (Some(2), Some(2)),
        "{job}"
    );
    let (_, job) = app
        .post(&format!("/api/v1/jobs/{id}/cancel"), &ops, json!(null))
        .await;
    assert_eq!(
        (job["state"].as_str(), job["progress"]["cancelled"].as_u64()),
        (Some("cancelled"), Some(2)),
        "{job}"
    );

    // A secret in a job's operation is shown as *** to operators (the job targets a device
    // that never connects, so it stays pending).
    let offline = crate::helpers::imei(77);
    let (status, _) = app
        .post("/api/v1/devices", &ops, json!({"imei": offline}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "set_keys", "keys": {"MTX_PIN": "4821", "DNS_period": "300"}},
                   "target": {"imeis": [offline]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(
        job["operation"]["keys"],
        json!({"MTX_PIN": "***", "DNS_period": "300"})
    );
    let pin_job = job["id"].as_str().unwrap().to_owned();
    let (_, listed) = app.get("/api/v1/jobs", &ops).await;
    assert!(!listed.to_string().contains("4821"), "{listed}");
    let admin = app.admin_token().await;
    let (_, job) = app.get(&format!("/api/v1/jobs/{pin_job}"), &admin).await;
    assert_eq!(job["operation"]["keys"]["MTX_PIN"], "4821");
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{pin_job}/cancel"), &ops, json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);

    // A reboot job: each modem restarts and comes back.
    let reboots = fleet.counters().reboots.load(Ordering::Relaxed);
    let (_, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "reboot"}, "target": {"filter": {"tag": "few"}}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &ops, &id, 60, finished).await;
    assert_eq!(job["progress"]["succeeded"], 4, "{job}");
    assert_eq!(
        fleet.counters().reboots.load(Ordering::Relaxed),
        reboots + 4
    );
    let ex = executions(&app, &ops, &id, Some("succeeded")).await;
    assert!(
        ex[0]["result"]["version"]
            .as_str()
            .unwrap()
            .starts_with("MTX-Tunnel"),
        "{ex:?}"
    );

    // Whitelists shrunk on every modem: the numbers dropped are cleared on the modems (they
    // would keep their rights otherwise), without a restart.
    let reboots = fleet.counters().reboots.load(Ordering::Relaxed);
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "set_whitelists", "csd": ["666999000"], "sms": []},
                   "target": {"tag_expr": "few"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &ops, &id, 60, finished).await;
    assert_eq!(job["progress"]["succeeded"], 4, "{job}");
    assert_eq!(
        fleet.counters().reboots.load(Ordering::Relaxed),
        reboots,
        "whitelists apply live"
    );
    let ex = executions(&app, &ops, &id, None).await;
    let keys: Vec<(&str, &str)> = ex[0]["result"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    for k in [
        "CSD_validPhone1",
        "CSD_validPhone2",
        "SMS_validPhone1",
        "SMS_validPhone2",
    ] {
        assert!(keys.contains(&(k, "applied")), "{k} in {keys:?}");
    }
    let (_, rep) = app
        .get(
            &format!("/api/v1/devices/{}/config/reported", imeis[1]),
            &ops,
        )
        .await;
    let text = rep["config"].as_str().unwrap();
    assert!(
        text.contains("CSD_validPhone1: 666999000")
            && !text.contains("666444555")
            && !text.contains("+34666123456"),
        "{text}"
    );
    assert_eq!(rep["drift"], "in_sync", "{rep}");

    // One device: a per-device override applied with the one-device apply.
    let imei = imeis[0].to_string();
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{imei}/config"),
            Some(&ops),
            Some(json!({"overrides": {"DNS_period": "900", "MTX_PIN": "4821"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, job) = app
        .post(
            &format!("/api/v1/devices/{imei}/config/apply"),
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &ops, &id, 60, finished).await;
    assert_eq!(job["state"], "completed", "{job}");
    let ex = executions(&app, &ops, &id, None).await;
    let result = &ex[0]["result"];
    assert_eq!(ex[0]["state"], "succeeded", "{ex:?}");
    assert_eq!(result["restarted"], true);
    let keys = result["keys"].as_array().unwrap();
    let dns = keys.iter().find(|k| k["key"] == "DNS_period").unwrap();
    assert_eq!(
        dns,
        &json!({"key": "DNS_period", "desired": "900", "before": "600", "after": "900", "status": "applied"})
    );
    let pin = keys.iter().find(|k| k["key"] == "MTX_PIN").unwrap();
    assert_eq!(
        (pin["desired"].as_str(), pin["status"].as_str()),
        (Some("***"), Some("applied"))
    );
    // The two keys, and the profile's whitelists back (the PUT replaced the overrides the
    // whitelist job had written).
    assert_eq!(result["writes"], 6, "{result}");
    // The PIN is masked in the command log too.
    let (_, cmds) = app
        .get(&format!("/api/v1/devices/{imei}/commands"), &ops)
        .await;
    let text = cmds.to_string();
    assert!(
        text.contains("SETPARAM,MTX_PIN,***") && !text.contains("4821"),
        "{text}"
    );
    // Every modem was read by the jobs: all in sync, none drifted or unknown.
    for (drift, n) in [("in_sync", 4), ("drifted", 0), ("unknown", 0)] {
        let (_, page) = app
            .get(&format!("/api/v1/devices?drift={drift}&tag=few"), &ops)
            .await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            n,
            "{drift}: {page}"
        );
    }
    // Applying again changes nothing and does not restart.
    let reboots = fleet.counters().reboots.load(Ordering::Relaxed);
    let (_, job) = app
        .post(
            &format!("/api/v1/devices/{imei}/config/apply"),
            &ops,
            json!(null),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_job(&app, &ops, &id, 60, finished).await;
    let ex = executions(&app, &ops, &id, None).await;
    assert_eq!(ex[0]["result"]["writes"], 0, "{ex:?}");
    assert_eq!(fleet.counters().reboots.load(Ordering::Relaxed), reboots);
    fleet.shutdown().await;
    app.stop().await;
}

/// The end-to-end scenario on 1,000 simulated modems sharing one profile by tag:
/// a `DNS_period` job with 50 in flight ends with every modem in sync; with 20% of the modems
/// answering ERROR the next job aborts by its rule and names the failures; a job paused, the
/// server restarted and the job resumed finishes with no device skipped or done twice.
#[tokio::test]
async fn thousand_modems_rollout_abort_and_restart() {
    const N: usize = 1000;
    let app = TestApp::spawn_with(|s| {
        s.drift = None;
    })
    .await;
    let mut app = app;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = fleet(&app, &ops, "35693803500000", N, "meters").await;
    put_profile(&app, &ops, "meters").await;

    // 1. DNS_period 300 everywhere, 50 in flight.
    let received = fleet.counters().commands_received.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "set_keys", "keys": {"DNS_period": "300"}},
                   "target": {"tag_expr": "meters"}, "rollout": {"max_in_flight": 50}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["progress"]["total"], N);
    let id = job["id"].as_str().unwrap().to_owned();
    let mut peak = 0;
    let job = wait_job(&app, &ops, &id, 600, |j| {
        peak = peak.max(j["progress"]["in_progress"].as_u64().unwrap_or(0));
        finished(j)
    })
    .await;
    println!(
        "1,000 modems, 50 in flight: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["state"], "completed", "{job}");
    let failed = executions(&app, &ops, &id, Some("failed")).await;
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(job["progress"]["succeeded"], N, "{job}");
    assert!(peak <= 50, "at most 50 in flight, saw {peak}");
    // GETCONFIG, SETPARAM, reboot, GETCONFIG: four commands per modem, no more.
    assert_eq!(
        fleet.counters().commands_received.load(Ordering::Relaxed) - received,
        4 * N as u64
    );
    let mut in_sync = 0;
    let mut cursor = String::new();
    loop {
        let (_, page) = app
            .get(
                &format!("/api/v1/devices?tag=meters&drift=in_sync&limit=1000&cursor={cursor}"),
                &ops,
            )
            .await;
        in_sync += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(in_sync, N, "every modem reported in sync");
    let (_, rep) = app
        .get(
            &format!("/api/v1/devices/{}/config/reported", imeis[N - 1]),
            &ops,
        )
        .await;
    assert!(
        rep["config"].as_str().unwrap().contains("DNS_period: 300"),
        "{rep}"
    );

    // 2. 20% of the modems answer ERROR: the job aborts by its rule and names them.
    let bad: HashSet<String> = imeis
        .iter()
        .enumerate()
        .filter(|(i, _)| callhome_sim::is_picked(*i, N, 0.2))
        .map(|(_, m)| m.to_string())
        .collect();
    assert_eq!(bad.len(), N / 5);
    for h in fleet.handles() {
        if bad.contains(h.imei().as_str()) {
            assert!(h.set_behaviour(Behaviour::error()).await);
        }
    }
    let (_, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "set_keys", "keys": {"DNS_period": "240"}},
                   "target": {"tag_expr": "meters"},
                   "rollout": {"max_in_flight": 50, "abort": {"failure_percent": 10, "min_executed": 100}}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_job(&app, &ops, &id, 600, finished).await;
    assert_eq!(job["state"], "aborted", "{job}");
    let reason = job["state_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("abort rule:") && reason.contains(">= 10%"),
        "{reason}"
    );
    let p = &job["progress"];
    let ended = p["succeeded"].as_u64().unwrap() + p["failed"].as_u64().unwrap();
    assert!(ended >= 100 && ended < N as u64, "{job}");
    assert!(
        p["cancelled"].as_u64().unwrap() > 0,
        "the rest never started: {job}"
    );
    let failed = executions(&app, &ops, &id, Some("failed")).await;
    assert_eq!(failed.len() as u64, p["failed"].as_u64().unwrap());
    for f in &failed {
        assert!(
            bad.contains(f["imei"].as_str().unwrap()),
            "only ERROR modems fail: {f}"
        );
        assert!(f["error"].as_str().unwrap().contains("failed"), "{f}");
    }
    for h in fleet.handles() {
        assert!(h.set_behaviour(Behaviour::default()).await);
    }

    // 3. Pause, restart the server, resume: nothing skipped, nothing done twice.
    let received = fleet.counters().commands_received.load(Ordering::Relaxed);
    let (_, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "set_keys", "keys": {"DNS_period": "120"}},
                   "target": {"tag_expr": "meters"}, "rollout": {"max_in_flight": 50}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_job(&app, &ops, &id, 600, |j| {
        j["progress"]["succeeded"].as_u64().unwrap_or(0) >= 200
    })
    .await;
    let (status, job) = app
        .post(&format!("/api/v1/jobs/{id}/pause"), &ops, json!(null))
        .await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{job}"
    );
    let paused = wait_job(&app, &ops, &id, 120, |j| j["progress"]["in_progress"] == 0).await;
    let done_before = paused["progress"]["succeeded"].as_u64().unwrap();
    assert!(done_before < N as u64, "{paused}");
    app.restart().await;
    let ops = app.admin_token().await;
    assert!(
        fleet.wait_all_connected(Duration::from_secs(120)).await,
        "the fleet reconnected"
    );
    let (_, job) = app.get(&format!("/api/v1/jobs/{id}"), &ops).await;
    assert_eq!(
        job["state"], "paused",
        "still paused after the restart: {job}"
    );
    assert_eq!(job["progress"]["succeeded"].as_u64().unwrap(), done_before);
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{id}/resume"), &ops, json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);
    let job = wait_job(&app, &ops, &id, 600, finished).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["progress"]["succeeded"], N, "no device skipped: {job}");
    let ex = executions(&app, &ops, &id, None).await;
    assert_eq!(ex.len(), N);
    assert!(
        ex.iter().all(|e| e["attempts"] == 1),
        "every device started once"
    );
    assert_eq!(
        fleet.counters().commands_received.load(Ordering::Relaxed) - received,
        4 * N as u64,
        "every modem got its four commands exactly once"
    );
    fleet.shutdown().await;
    app.stop().await;
}

/// The periodic drift check finds a key changed on a modem behind the platform's back, with
/// nobody asking: the device shows as drifted in the device list, the key named.
#[tokio::test]
async fn periodic_drift_check_finds_a_change_behind_the_back() {
    let app = TestApp::spawn_with(|s| {
        s.drift = Some(callhome_fleet::drift::DriftSettings {
            interval: Duration::from_secs(2),
            ..Default::default()
        });
    })
    .await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = fleet(&app, &ops, "35693803600000", 2, "watched").await;
    put_profile(&app, &ops, "watched").await;
    let in_state = |drift: &'static str| {
        let app = &app;
        let ops = &ops;
        async move {
            let (_, page) = app
                .get(&format!("/api/v1/devices?tag=watched&drift={drift}"), ops)
                .await;
            page["items"].as_array().unwrap().len()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while in_state("in_sync").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check read both modems"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Someone changes a key on one modem, bypassing the platform's configuration.
    let id = imeis[1].to_string();
    let (status, c) = app
        .post(
            &format!("/api/v1/devices/{id}/commands?wait_s=10"),
            &ops,
            json!({"command": "AT^MTXTUNNEL=SETPARAM,MTX_pingIP,9.9.9.9"}),
        )
        .await;
    assert_eq!(
        (status, c["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{c}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = app
            .get("/api/v1/devices?tag=watched&drift=drifted", &ops)
            .await;
        let items = page["items"].as_array().unwrap();
        if let Some(d) = items.first() {
            assert_eq!(
                (items.len(), d["imei"].as_str()),
                (1, Some(id.as_str())),
                "{page}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check found the change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, rep) = app
        .get(&format!("/api/v1/devices/{id}/config/reported"), &ops)
        .await;
    assert_eq!(rep["drifted_keys"], json!(["MTX_pingIP"]), "{rep}");
    let (_, diff) = app
        .get(&format!("/api/v1/devices/{id}/config/diff"), &ops)
        .await;
    assert_eq!(
        diff["keys"],
        json!([{"key": "MTX_pingIP", "desired": "8.8.8.8", "reported": "9.9.9.9"}]),
        "{diff}"
    );
    fleet.shutdown().await;
    app.stop().await;
}
