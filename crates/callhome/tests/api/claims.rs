//! Claim provisioning end to end: a batch claim certificate from the API, modems enrolling
//! with it over EST (real TLS with the claim certificate as client certificate, real HTTP,
//! through `callhome-sim`) and over MQTT, then connecting to the gateway with their own
//! certificates; the policy's refusals (IMEI outside the allow-list, limit reached,
//! already enrolled, rejected), each audited; the approval queue; revocation.

use std::time::Duration;

use callhome_core::Imei;
use callhome_sim::{ClaimWait, SimError, est_claim_enroll};
use futures::StreamExt as _;
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};

use crate::helpers::{Enrolled, TestApp, imei};
use crate::modem::TestModem;

/// A claim as created: its id, certificate, key and the CA chain.
struct Claim {
    id: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

async fn create_claim(app: &TestApp, token: &str, body: Value) -> Claim {
    let (status, c) = app.post("/api/v1/claims", token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    assert!(
        c["certificate_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    Claim {
        id: c["id"].as_str().unwrap().to_owned(),
        cert_pem: c["certificate_pem"].as_str().unwrap().to_owned(),
        key_pem: c["private_key_pem"].as_str().unwrap().to_owned(),
        ca_pem: c["ca_chain"].as_str().unwrap().to_owned(),
    }
}

fn in_a_day() -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn device_base(app: &TestApp) -> String {
    format!("https://localhost:{}", app.device_http.port())
}

fn quick() -> ClaimWait {
    ClaimWait {
        max_interval: Duration::from_millis(100),
        give_up_after: Duration::from_secs(30),
    }
}

async fn est(app: &TestApp, claim: &Claim, imei: &str) -> Result<Enrolled, SimError> {
    let id = Imei::parse(imei).unwrap();
    let creds = est_claim_enroll(
        &device_base(app),
        &claim.ca_pem,
        &claim.cert_pem,
        &claim.key_pem,
        &id,
        quick(),
    )
    .await?;
    Ok(Enrolled {
        imei: imei.to_owned(),
        key_pem: creds.key_pem,
        cert_pem: creds.cert_pem,
        ca_pem: claim.ca_pem.clone(),
        serial: String::new(),
    })
}

/// The refusal's status and text.
fn refusal(r: Result<Enrolled, SimError>) -> (u16, String) {
    match r {
        Err(SimError::Api { status, body, .. }) => (status, body),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(e) => panic!("expected a refusal, {} was enrolled", e.imei),
    }
}

/// The audit rows of EST enrolments by claim certificate for `imei`.
async fn est_audit(app: &TestApp, token: &str, imei: &str) -> Vec<Value> {
    let (status, page) = app
        .get(&format!("/api/v1/audit?actor={imei}&limit=100"), token)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"] == imei && r["action"] == "EST simpleenroll")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_batch_of_100_enrols_with_one_claim_certificate_and_connects_with_its_own() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    // The allow-list has 101 IMEIs, the limit is 100.
    let allowed: Vec<String> = (1..=101).map(imei).collect();
    let claim = create_claim(
        &app,
        &admin,
        json!({"name": "batch-100", "imeis": allowed, "expires_at": in_a_day(),
               "max_enrollments": 100, "approval": "auto"}),
    )
    .await;

    // 100 modems enrol over EST with the one claim certificate, ten at a time.
    let enrolled: Vec<Enrolled> = futures::stream::iter(allowed[..100].iter().cloned())
        .map(|i| {
            let (app, claim) = (&app, &claim);
            async move {
                est(app, claim, &i)
                    .await
                    .unwrap_or_else(|e| panic!("{i} enrols: {e}"))
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    assert_eq!(enrolled.len(), 100);

    // Each connects to the gateway with its own certificate.
    futures::stream::iter(enrolled.iter())
        .for_each_concurrent(10, |e| {
            let app = &app;
            async move {
                let m = TestModem::connect(app.mqtt, e).await;
                drop(m);
            }
        })
        .await;

    // An IMEI outside the allow-list, and the 101st enrolment, are refused and audited.
    let outsider = imei(500);
    let (status, text) = refusal(est(&app, &claim, &outsider).await);
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("not allowed by the claim batch-100"),
        "{text}"
    );
    let (status, text) = refusal(est(&app, &claim, &allowed[100]).await);
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("the claim batch-100's limit of 100 enrolments is reached"),
        "{text}"
    );
    // An IMEI enrolled once is not enrolled again with a new key.
    let (status, text) = refusal(est(&app, &claim, &allowed[0]).await);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("already enrolled"), "{text}");
    for (who, why) in [(&outsider, "not allowed"), (&allowed[100], "limit of 100")] {
        let rows = est_audit(&app, &admin, who).await;
        assert!(
            rows.iter().any(|r| r["outcome"] == "failure"
                && r["detail"]["method"] == "claim_certificate"
                && r["detail"]["claim"] == "batch-100"
                && r["detail"]["reason"].as_str().unwrap_or("").contains(why)),
            "{who}: {rows:?}"
        );
    }
    // The devices are registered, each certificate issued by the claim.
    let (_, device) = app
        .get(&format!("/api/v1/devices/{}", allowed[0]), &admin)
        .await;
    assert_eq!(device["imei"], allowed[0].as_str());
    let (_, claims) = app.get("/api/v1/claims", &admin).await;
    assert_eq!(claims["items"][0]["enrollments_used"], 100);

    // A claim certificate is not a device identity: it may not re-enrol nor have a key
    // made, and it cannot connect as a device.
    let tls =
        callhome_ca::tls::client_config(&claim.ca_pem, Some(&claim.cert_pem), Some(&claim.key_pem))
            .unwrap();
    let est_client = reqwest::Client::builder()
        .use_preconfigured_tls(std::sync::Arc::unwrap_or_clone(tls))
        .build()
        .unwrap();
    let (_, csr_pem) = callhome_ca::generate_key_and_csr(&allowed[0]).unwrap();
    let csr_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(pem::parse(csr_pem.as_bytes()).unwrap().contents())
    };
    for op in ["simplereenroll", "serverkeygen"] {
        let resp = est_client
            .post(format!("{}/.well-known/est/{op}", device_base(&app)))
            .header("content-type", "application/pkcs10")
            .body(csr_b64.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{op}");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("a claim certificate may only enrol"),
            "{op}: {text}"
        );
    }
    let claim_creds = Enrolled {
        imei: allowed[0].clone(),
        key_pem: claim.key_pem.clone(),
        cert_pem: claim.cert_pem.clone(),
        ca_pem: claim.ca_pem.clone(),
        serial: String::new(),
    };
    let mut m = TestModem::start(
        app.mqtt,
        &allowed[0],
        &allowed[0],
        crate::modem::tls(&claim_creds),
    );
    // The claim connection is accepted (to enrol), but subscribing to the command topic
    // ends it.
    let ack = tokio::time::timeout(Duration::from_secs(10), m.connack.recv()).await;
    assert!(matches!(ack, Ok(Some(Ok(())))), "{ack:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), m.connack.recv()).await;
    assert!(matches!(end, Ok(Some(Err(_)))), "{end:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_held_enrolment_completes_after_approval_and_a_rejected_one_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("rita", "reader").await;
    let claim = create_claim(
        &app,
        &admin,
        json!({"name": "held", "imei_range": {"from": imei(200), "to": imei(299)},
               "expires_at": in_a_day(), "max_enrollments": 10, "approval": "manual"}),
    )
    .await;
    let events = app
        .client
        .get(app.url("/api/v1/events?type=enrollment.*"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let mut events = events.bytes_stream();

    // The modem asks, is told 202 + Retry-After, and keeps asking.
    let waiting = spawn_est(&app, &claim, &imei(201));
    let pending = wait_pending(&app, &ops, 1).await;
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(pending[0]["imei"], imei(201).as_str());
    assert_eq!(pending[0]["claim_id"], claim.id.as_str());
    // Meanwhile another key for the same IMEI is refused.
    let (status, text) = refusal(est(&app, &claim, &imei(201)).await);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("awaiting approval"), "{text}");

    // Only operators decide; the approval issues; the modem gets it and connects.
    let (status, _) = app
        .post(
            &format!("/api/v1/enrollments/{id}/approve"),
            &reader,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, approved) = app
        .post(
            &format!("/api/v1/enrollments/{id}/approve"),
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["enrollment"]["state"], "issued");
    assert_eq!(approved["enrollment"]["decided_by"], "ops");
    let creds = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("enrolled in time")
        .unwrap()
        .expect("issued after approval");
    let enrolled = Enrolled {
        imei: imei(201),
        key_pem: creds.key_pem,
        cert_pem: creds.cert_pem,
        ca_pem: claim.ca_pem.clone(),
        serial: String::new(),
    };
    drop(TestModem::connect(app.mqtt, &enrolled).await);

    // A replayed approval, or a rejection after it, is a 409 naming it, and issues nothing.
    let (status, replay) = app
        .post(
            &format!("/api/v1/enrollments/{id}/approve"),
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{replay}");
    assert!(
        replay["detail"]
            .as_str()
            .unwrap()
            .contains("already approved"),
        "{replay}"
    );
    let (status, _) = app
        .post(&format!("/api/v1/enrollments/{id}/reject"), &ops, json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, certs) = app
        .get(&format!("/api/v1/devices/{}/certificates", imei(201)), &ops)
        .await;
    assert_eq!(
        certs["items"]
            .as_array()
            .map(Vec::len)
            .or_else(|| certs.as_array().map(Vec::len)),
        Some(1),
        "{certs}"
    );

    // A rejected enrolment: the modem is told so (403 naming it).
    let rejected = spawn_est(&app, &claim, &imei(202));
    let pending = wait_pending(&app, &ops, 1).await;
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            &format!("/api/v1/enrollments/{id}/reject"),
            &ops,
            json!({"reason": "not from our factory"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "rejected");
    let outcome = tokio::time::timeout(Duration::from_secs(30), rejected)
        .await
        .unwrap()
        .unwrap();
    match outcome {
        Err(SimError::Api { status, body, .. }) => {
            assert_eq!(status, 403);
            assert!(
                body.contains("rejected by an operator: not from our factory"),
                "{body}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (_, listed) = app.get("/api/v1/enrollments?state=rejected", &ops).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // The queue's changes were published: pending (twice), issued, rejected, in order.
    let mut seen = String::new();
    let wanted = [
        "enrollment.pending",
        "enrollment.issued",
        "enrollment.pending",
        "enrollment.rejected",
    ];
    let kinds = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .map(str::to_owned)
            .collect()
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while kinds(&seen).len() < wanted.len() {
            match events.next().await {
                Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => break,
            }
        }
    })
    .await;
    assert_eq!(kinds(&seen), wanted, "{seen}");
    assert!(seen.contains("not from our factory"), "{seen}");
    app.stop().await;
}

/// A modem enrolling with `claim` in the background (asking again while held).
fn spawn_est(
    app: &TestApp,
    claim: &Claim,
    imei: &str,
) -> tokio::task::JoinHandle<Result<callhome_sim::Credentials, SimError>> {
    let (base, ca, cert, key) = (
        device_base(app),
        claim.ca_pem.clone(),
        claim.cert_pem.clone(),
        claim.key_pem.clone(),
    );
    let id = Imei::parse(imei).unwrap();
    tokio::spawn(async move { est_claim_enroll(&base, &ca, &cert, &key, &id, quick()).await })
}

/// Polls the approval queue until it holds `n` enrolments.
async fn wait_pending(app: &TestApp, token: &str, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (status, page) = app.get("/api/v1/enrollments?state=pending", token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= n {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pending enrolment appeared");
}

#[tokio::test]
async fn claims_are_validated_admin_only_and_revocable() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ops = app.user_token("ops", "operator").await;
    let body = |extra: Value| {
        let mut b = json!({"name": "b", "imeis": [imei(1)], "expires_at": in_a_day(),
                           "max_enrollments": 1, "approval": "auto"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (status, _) = app.post("/api/v1/claims", &ops, body(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (extra, field) in [
        (json!({"expires_at": "2020-01-01T00:00:00Z"}), "expires_at"),
        (json!({"max_enrollments": 0}), "max_enrollments"),
        (json!({"imeis": [imei(1), imei(1)]}), "imeis"),
        (json!({"imeis": ["123"]}), "imeis[0]"),
        (
            json!({"imei_range": {"from": imei(1), "to": imei(2)}}),
            "imeis",
        ),
        (
            json!({"ca_certificate": "-----BEGIN CERTIFICATE-----"}),
            "ca_certificate",
        ),
        (json!({"name": "no spaces"}), "name"),
    ] {
        let (status, problem) = app
            .post("/api/v1/claims", &admin, body(extra.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{extra}: {problem}"
        );
        assert!(problem.to_string().contains(field), "{extra}: {problem}");
    }
    let claim = create_claim(&app, &admin, body(json!({}))).await;
    let (status, _) = app.post("/api/v1/claims", &admin, body(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // An allow-list of 100,000 IMEIs (about 1.8 MB of JSON) is accepted; one more is not.
    let mut big: Vec<String> = (0..100_000u64)
        .map(|n| Imei::from_body(&format!("35{n:012}")).unwrap().to_string())
        .collect();
    let large = create_claim(
        &app,
        &admin,
        body(json!({"name": "large", "imeis": big, "max_enrollments": 100_000})),
    )
    .await;
    let one = est(&app, &large, &big[99_999]).await;
    assert!(one.is_ok(), "the last IMEI of a large list enrols");
    big.push(Imei::from_body("35999999999999").unwrap().to_string());
    let (status, problem) = app
        .post(
            "/api/v1/claims",
            &admin,
            body(json!({"name": "larger", "imeis": big})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem.to_string().contains("at most 100000"), "{problem}");

    // Revoked: listed as such, its certificate refused at the TLS handshake, once only.
    let path = format!("/api/v1/claims/{}/revoke", claim.id);
    let (status, _) = app.post(&path, &ops, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, revoked) = app.post(&path, &admin, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, _) = app.post(&path, &admin, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    match est(&app, &claim, &imei(1)).await {
        Err(SimError::Http(..)) => {}
        other => panic!(
            "a revoked claim certificate must fail the handshake: {:?}",
            other.map(|e| e.imei)
        ),
    }
    app.stop().await;
}

/// An MQTT client presenting the claim certificate (not connected until polled).
fn claim_mqtt(app: &TestApp, claim: &Claim, client_id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let tls =
        callhome_ca::tls::client_config(&claim.ca_pem, Some(&claim.cert_pem), Some(&claim.key_pem))
            .unwrap();
    let mut opts = MqttOptions::new(client_id, "localhost", app.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    AsyncClient::new(opts, 8)
}

/// A claim connection over MQTT: subscribe `{IMEI}/cert`, publish a CSR on `{IMEI}/csr`,
/// receive the chain, connect with it. Returns the answer text.
async fn mqtt_enrol(app: &TestApp, claim: &Claim, client_id: &str, csr_pem: &str) -> String {
    let (client, mut events) = claim_mqtt(app, claim, client_id);
    let topic = format!("{client_id}/cert");
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish(
                            format!("{client_id}/csr"),
                            QoS::AtLeastOnce,
                            false,
                            csr_pem.as_bytes().to_vec(),
                        )
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return Ok(String::from_utf8(p.payload.to_vec()).unwrap());
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("an answer in time");
    answer.unwrap_or_else(|e| format!("CONNECTION ERROR {e}"))
}

#[tokio::test]
async fn modems_enrol_over_mqtt_with_a_claim_certificate_and_nothing_else() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let claim = create_claim(
        &app,
        &admin,
        json!({"name": "mqtt-batch", "imei_range": {"from": imei(300), "to": imei(309)},
               "expires_at": in_a_day(), "max_enrollments": 5, "approval": "auto"}),
    )
    .await;
    let device = imei(301);
    let (key_pem, csr_pem) = callhome_ca::generate_key_and_csr(&device).unwrap();
    let answer = mqtt_enrol(&app, &claim, &device, &csr_pem).await;
    assert!(
        answer.starts_with("-----BEGIN CERTIFICATE-----"),
        "{answer}"
    );
    let enrolled = Enrolled {
        imei: device.clone(),
        key_pem,
        cert_pem: answer,
        ca_pem: claim.ca_pem.clone(),
        serial: String::new(),
    };
    drop(TestModem::connect(app.mqtt, &enrolled).await);

    // A CSR for another IMEI than the connection's is refused, named, audited.
    let (_, other_csr) = callhome_ca::generate_key_and_csr(&imei(302)).unwrap();
    let answer = mqtt_enrol(&app, &claim, &imei(303), &other_csr).await;
    assert!(
        answer.starts_with("REFUSED invalid CSR: the CSR is for"),
        "{answer}"
    );
    // With approval `manual`, the answer says the enrolment is held, with its id.
    let held = create_claim(
        &app,
        &admin,
        json!({"name": "mqtt-held", "imeis": [imei(310)], "expires_at": in_a_day(),
               "max_enrollments": 1, "approval": "manual"}),
    )
    .await;
    let (_, csr) = callhome_ca::generate_key_and_csr(&imei(310)).unwrap();
    let answer = mqtt_enrol(&app, &held, &imei(310), &csr).await;
    let (_, pending) = app.get("/api/v1/enrollments?state=pending", &admin).await;
    let id = pending["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(answer, format!("PENDING {id} 60"));
    // A client id outside the policy is refused at CONNECT.
    let (_, csr) = callhome_ca::generate_key_and_csr(&imei(400)).unwrap();
    let answer = mqtt_enrol(&app, &claim, &imei(400), &csr).await;
    assert!(answer.starts_with("CONNECTION ERROR"), "{answer}");
    let (_, audit) = app
        .get("/api/v1/audit?target=claim%20mqtt-batch&limit=100", &admin)
        .await;
    let rows = audit["items"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["action"] == "mqtt.claim.connect" && r["outcome"] == "failure"),
        "{audit}"
    );
    assert!(
        rows.iter()
            .any(|r| r["action"] == "mqtt.claim.enroll" && r["outcome"] == "success"),
        "{audit}"
    );

    // Revoking the claim ends its live claim connections.
    let (client, mut events) = claim_mqtt(&app, &claim, &imei(305));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .subscribe(format!("{}/cert", imei(305)), QoS::AtLeastOnce)
                    .await
                    .unwrap(),
                Ok(Event::Incoming(Packet::SubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("claim connection: {e}"),
            }
        }
    })
    .await
    .expect("subscribed in time");
    let (status, _) = app
        .post(
            &format!("/api/v1/claims/{}/revoke", claim.id),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the claim connection ends when the claim is revoked"
    );
    app.stop().await;
}
