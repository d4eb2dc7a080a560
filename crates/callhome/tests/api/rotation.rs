//! Certificate rotation as a job operation (`rotate_certificate`), on simulated modems over
//! mutual TLS: the MQTT `{IMEI}/csr` -> `{IMEI}/cert` exchange in both modes, overlap then
//! revoke, `never-confirm` modems reported `not_confirmed` with their old certificate kept,
//! and every modem reconnecting afterwards with what it holds; bad requests on the
//! certificate topic refused with a reason and nothing issued.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use callhome_sim::{Behaviour, Enroller, Fleet};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{TestApp, imei};
use crate::jobs::{executions, finished, wait_job};
use crate::sim_sessions::{fleet_of, start_fleet};

/// A certificate as the API shows it.
async fn certificate(app: &TestApp, token: &str, serial: &str) -> Value {
    let (status, c) = app
        .get(&format!("/api/v1/certificates/{serial}"), token)
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    c
}

fn at(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a time"), &Rfc3339).expect("RFC 3339")
}

/// Runs one rotation campaign over `targets` and checks it: the `never` modems fail
/// `not_confirmed` keeping their old certificate (still valid); every other modem runs on
/// its new certificate, and its old one was revoked only after it connected with the new.
#[allow(clippy::too_many_arguments)]
async fn campaign(
    app: &TestApp,
    ops: &str,
    fleet: &Fleet,
    imeis: &[callhome_core::Imei],
    targets: &[usize],
    never: &HashSet<usize>,
    mode: &str,
) {
    let before: HashMap<usize, String> = targets
        .iter()
        .map(|i| (*i, fleet.handles()[*i].cert_serial().expect("mutual TLS")))
        .collect();
    let started = std::time::Instant::now();
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            ops,
            json!({"name": format!("rotate {mode}"),
                   "operation": {"type": "rotate_certificate", "mode": mode,
                                 "revoke_old_after": "confirmed", "confirm_timeout_s": 20},
                   "target": {"imeis": targets.iter().map(|i| imeis[*i].to_string()).collect::<Vec<_>>()},
                   "rollout": {"max_in_flight": 50, "waves": [10, 50, 100]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let mut peak = 0;
    let job = wait_job(app, ops, &id, 900, |j| {
        peak = peak.max(j["progress"]["in_progress"].as_u64().unwrap_or(0));
        finished(j)
    })
    .await;
    println!(
        "rotation {mode}: {} modems, waves 10/50/100, 50 in flight, {} never-confirm: {:.1} s",
        targets.len(),
        never.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["state"], "completed", "{job}");
    assert!(peak <= 50, "at most 50 in flight, saw {peak}");
    assert_eq!(job["progress"]["failed"], never.len(), "{job}");
    assert_eq!(
        job["progress"]["succeeded"],
        targets.len() - never.len(),
        "{job}"
    );
    let by_imei: HashMap<String, Value> = executions(app, ops, &id, None)
        .await
        .into_iter()
        .map(|e| (e["imei"].as_str().unwrap().to_owned(), e))
        .collect();
    for i in targets {
        let handle = &fleet.handles()[*i];
        let e = &by_imei[imeis[*i].as_str()];
        let old = &before[i];
        assert_eq!(e["result"]["old_serial"], old.as_str(), "{e}");
        if never.contains(i) {
            assert_eq!(e["state"], "failed", "{e}");
            assert_eq!(e["result"]["outcome"], "not_confirmed", "{e}");
            assert!(
                e["error"].as_str().unwrap().starts_with("not_confirmed:"),
                "{e}"
            );
            assert_eq!(handle.cert_serial().as_deref(), Some(old.as_str()));
            assert_eq!(certificate(app, ops, old).await["status"], "active");
            continue;
        }
        assert_eq!(e["state"], "succeeded", "{e}");
        assert_eq!(e["result"]["outcome"], "confirmed", "{e}");
        let new = e["result"]["new_serial"].as_str().unwrap();
        assert_eq!(handle.cert_serial().as_deref(), Some(new), "{e}");
        assert_ne!(new, old);
        let issued = certificate(app, ops, new).await;
        assert_eq!(issued["status"], "active", "{issued}");
        let expected_by = if mode == "csr" {
            "mqtt:csr"
        } else {
            "mqtt:serverkeygen"
        };
        assert_eq!(issued["issued_by"], expected_by, "{issued}");
        let replaced = certificate(app, ops, old).await;
        assert_eq!(replaced["status"], "revoked", "{replaced}");
        assert_eq!(replaced["revocation_reason"], "superseded", "{replaced}");
        // Revoked only once the modem had connected with the new one.
        let (_, device) = app
            .get(&format!("/api/v1/devices/{}", imeis[*i]), ops)
            .await;
        assert_eq!(device["cert_serial"], new, "{device}");
        assert!(
            at(&replaced["revoked_at"]) >= at(&device["connected_at"]),
            "revoked before the new connection: {replaced} {device}"
        );
    }
}

/// The acceptance: a rotation campaign over 1,000 simulated modems in waves, both
/// modes (500 each), 2 % told `never-confirm`; afterwards every modem reconnects with the
/// key and certificate it holds, so none was left without a valid one.
#[tokio::test]
async fn thousand_modems_rotate_in_waves_in_both_modes_and_all_reconnect() {
    const N: usize = 1000;
    let app = TestApp::spawn_with(|s| s.drift = None).await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, cache) = start_fleet(&app, &ops, "35693803700000", N).await;
    // 2 % of each half (the halves are rotated in different modes).
    let mut never = HashSet::new();
    for i in 0..N {
        if callhome_sim::is_picked(i / 2, N / 2, 0.02) {
            never.insert(i);
            let b = Behaviour {
                never_confirm: true,
                ..Behaviour::default()
            };
            assert!(fleet.handles()[i].set_behaviour(b).await);
        }
    }
    assert_eq!(never.len(), N / 50);
    let even: Vec<usize> = (0..N).filter(|i| i % 2 == 0).collect();
    let odd: Vec<usize> = (0..N).filter(|i| i % 2 == 1).collect();
    let never_even = never.iter().copied().filter(|i| i % 2 == 0).collect();
    let never_odd = never.iter().copied().filter(|i| i % 2 == 1).collect();
    campaign(&app, &ops, &fleet, &imeis, &even, &never_even, "csr").await;
    campaign(
        &app,
        &ops,
        &fleet,
        &imeis,
        &odd,
        &never_odd,
        "server_keygen",
    )
    .await;
    let expected: Vec<String> = fleet
        .handles()
        .iter()
        .map(|h| h.cert_serial().unwrap())
        .collect();
    fleet.shutdown().await;

    // Every modem starts again from what it holds (the rotated credentials were written
    // to the enrolment cache) and connects: none is left with a revoked certificate.
    let enroller = Enroller::new(&app.base, &ops, cache.path(), None).unwrap();
    let ca = enroller.ca_certificate().await.unwrap();
    let credentials: Vec<_> = imeis
        .iter()
        .map(|i| enroller.cached(i).expect("cached credentials"))
        .collect();
    for (i, c) in credentials.iter().enumerate() {
        let serial = callhome_ca::inspect_certificate(&c.cert_pem)
            .unwrap()
            .serial;
        assert_eq!(
            serial, expected[i],
            "the cache holds {}'s credentials",
            imeis[i]
        );
    }
    let again = fleet_of(
        &app,
        "35693803700000",
        &ca,
        credentials,
        cache.path(),
        |_| {},
    );
    assert!(
        again.wait_all_connected(Duration::from_secs(120)).await,
        "every modem reconnects after the campaign"
    );
    for (i, h) in again.handles().iter().enumerate() {
        assert_eq!(h.cert_serial().as_ref(), Some(&expected[i]), "{}", imeis[i]);
    }
    again.shutdown().await;
    app.stop().await;
}

/// A raw client of the device's own MQTT channel: sends on `{IMEI}/csr`, reads
/// `{IMEI}/cert`.
struct CertChannel {
    client: AsyncClient,
    answers: tokio::sync::mpsc::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl CertChannel {
    async fn open(app: &TestApp, e: &crate::helpers::Enrolled) -> Self {
        let mut opts = MqttOptions::new(e.imei.as_str(), "localhost", app.mqtt.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            crate::modem::tls(e),
        )));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let (tx, answers) = tokio::sync::mpsc::channel(8);
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1);
        let topic = format!("{}/cert", e.imei);
        let sub = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.subscribe(topic.clone(), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(()).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                        let _ = tx
                            .send(String::from_utf8_lossy(&p.payload).into_owned())
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready.recv())
            .await
            .expect("subscribed in time");
        Self {
            client,
            answers,
            task,
        }
    }

    async fn ask(&mut self, imei: &str, payload: &[u8]) -> String {
        self.client
            .publish(
                format!("{imei}/csr"),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.answers.recv())
            .await
            .expect("an answer in time")
            .expect("the channel is open")
    }
}

impl Drop for CertChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bad requests on `{IMEI}/csr` are answered `ERROR <reason>` on `{IMEI}/cert`, audited,
/// with no certificate issued; a good one is answered with the chain; requests come at
/// most one per 5 s.
#[tokio::test]
async fn bad_certificate_requests_are_refused_with_a_reason_and_nothing_issued() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let admin = app.admin_token().await;
    let e = app.enroll(&ops, &imei(710)).await;
    let other = imei(711);
    let count = |app: &TestApp| {
        let store = app.store();
        let imei = callhome_core::Imei::parse(&e.imei).unwrap();
        async move { store.list_certificates(&imei).await.unwrap().len() }
    };
    assert_eq!(count(&app).await, 1);
    let (_, foreign_csr) = callhome_ca::generate_key_and_csr(&other).unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"hello", "not PEM"),
        (b"", "empty request"),
        (&[0xff, 0xfe, 0x00], "not UTF-8"),
        (foreign_csr.as_bytes(), &other),
    ];
    for (payload, named) in cases {
        // A fresh connection each time: requests are limited per connection.
        let mut ch = CertChannel::open(&app, &e).await;
        let answer = ch.ask(&e.imei, payload).await;
        assert!(answer.starts_with("ERROR "), "{answer}");
        assert!(answer.contains(named), "{named:?} not in {answer:?}");
    }
    assert_eq!(count(&app).await, 1, "nothing issued");
    let (_, audit) = app
        .get(
            &format!("/api/v1/audit?target={}&limit=100", e.imei),
            &admin,
        )
        .await;
    let refused = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "certificate.mqtt_enroll" && r["outcome"] == "failure")
        .count();
    assert_eq!(refused, 4, "{audit}");

    // A good request: the certificate then the chain, recorded as issued on the channel;
    // a second one at once is refused.
    let mut ch = CertChannel::open(&app, &e).await;
    let answer = ch.ask(&e.imei, b"serverkeygen").await;
    assert!(
        answer.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{answer}"
    );
    let blocks = pem::parse_many(&answer).unwrap();
    assert_eq!(blocks[0].tag(), "PRIVATE KEY");
    assert!(blocks[1..].iter().all(|b| b.tag() == "CERTIFICATE"));
    assert!(blocks.len() >= 3, "certificate and chain");
    assert_eq!(count(&app).await, 2);
    let again = ch.ask(&e.imei, b"serverkeygen").await;
    assert!(
        again.starts_with("ERROR one certificate request per 5 s"),
        "{again}"
    );
    assert_eq!(count(&app).await, 2);
    // The key went to the device only: nothing of it in the store or the audit log.
    let key_line = answer.lines().nth(1).unwrap();
    let (_, audit) = app
        .get(
            &format!("/api/v1/audit?target={}&limit=100", e.imei),
            &admin,
        )
        .await;
    assert!(audit.to_string().contains("certificate.mqtt_enroll"));
    assert!(!audit.to_string().contains(key_line));
    app.stop().await;
}

/// With `install_trust_anchor`, a rotation first has the modem fetch and trust the
/// platform's trust bundle (`/ca/trust.pem` on the device listener, checked against the
/// SHA-256 in the command).
#[tokio::test]
async fn a_rotation_can_install_the_trust_bundle_first() {
    use sha2::Digest as _;
    let app = TestApp::spawn_with(|s| s.drift = None).await;
    let ops = app.user_token("ops", "operator").await;
    let (fleet, imeis, _cache) = start_fleet(&app, &ops, "35693803720000", 2).await;
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &ops,
            json!({"operation": {"type": "rotate_certificate", "mode": "server_keygen",
                                 "install_trust_anchor": true, "confirm_timeout_s": 30},
                   "target": {"imeis": [imeis[0].to_string()]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job = wait_job(&app, &ops, job["id"].as_str().unwrap(), 120, finished).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["progress"]["succeeded"], 1, "{job}");

    // The bundle as the device listener serves it (public, like cacerts).
    let client =
        crate::firmware::device_client(&app.get_text("/api/v1/ca/certificate").await, None);
    let bundle = client
        .get(format!(
            "https://127.0.0.1:{}/ca/trust.pem",
            app.device_http.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    let bundle = bundle.bytes().await.unwrap();
    assert!(bundle.starts_with(b"-----BEGIN CERTIFICATE-----"));
    let sha256 = hex::encode(sha2::Sha256::digest(&bundle));
    let installed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(s) = fleet.handles()[0].trust_bundle_sha256() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the modem installed the bundle");
    assert_eq!(installed, sha256);
    assert_eq!(
        fleet.handles()[1].trust_bundle_sha256(),
        None,
        "not targeted"
    );
    fleet.shutdown().await;
    app.stop().await;
}
