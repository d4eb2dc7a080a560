use reqwest::{Method, StatusCode};
use serde_json::json;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::*;

use crate::helpers::{TestApp, imei};

async fn device(app: &TestApp, token: &str, id: &str) {
    let (status, body) = app
        .post("/api/v1/devices", token, json!({"imei": id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn csr_is_signed_and_chains_to_the_published_ca() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(3);
    device(&app, &ops, &id).await;
    let (_key, csr) = callhome_ca::generate_key_and_csr(&id).unwrap();
    let (status, signed) = app
        .post(
            &format!("/api/v1/devices/{id}/certificate"),
            &ops,
            json!({"csr": csr, "validity_days": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");

    // The published trust anchor (no authentication needed) is the root the chain ends
    // with; the chain's first certificate, the issuing CA, signed the device's.
    let ca_pem = app.get_text("/api/v1/ca/certificate").await;
    let chain = signed["ca_chain"].as_str().unwrap();
    assert!(chain.ends_with(&ca_pem), "{chain}");
    let served_chain = app.get_text("/api/v1/ca/chain").await;
    assert_eq!(served_chain, chain);
    let (_, root_pem) = parse_x509_pem(ca_pem.as_bytes()).unwrap();
    // The banner's fingerprint is the root's, the certificate modems are given to trust.
    {
        use sha2::Digest as _;
        assert_eq!(
            app.ca_fingerprint(),
            hex::encode(sha2::Sha256::digest(&root_pem.contents))
        );
    }
    let root = root_pem.parse_x509().unwrap();
    let (_, issuing_pem) = parse_x509_pem(chain.as_bytes()).unwrap();
    let ca = issuing_pem.parse_x509().unwrap();
    ca.verify_signature(Some(root.public_key()))
        .expect("the issuing CA is signed by the root");
    let (_, leaf_pem) = parse_x509_pem(signed["certificate"].as_str().unwrap().as_bytes()).unwrap();
    let leaf = leaf_pem.parse_x509().unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
    assert_eq!(leaf.issuer(), ca.subject());
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, id);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let days =
        (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp()) / 86_400;
    assert!((30..=31).contains(&days), "validity {days} days");
    assert_eq!(
        signed["serial"].as_str().unwrap(),
        leaf.raw_serial_as_string()
            .replace(':', "")
            .to_uppercase()
            .trim_start_matches("00")
    );

    // The inventory has it.
    let (status, list) = app
        .get(&format!("/api/v1/devices/{id}/certificates"), &ops)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["serial"], signed["serial"]);
    assert_eq!(list[0]["status"], "active");
    assert_eq!(list[0]["issued_by"], "ops");
    app.stop().await;
}

#[tokio::test]
async fn bad_csrs_get_400_and_unknown_devices_404() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(4);
    device(&app, &ops, &id).await;
    let path = format!("/api/v1/devices/{id}/certificate");
    let (_k, other_csr) = callhome_ca::generate_key_and_csr(&imei(5)).unwrap();
    let (_k, good) = callhome_ca::generate_key_and_csr(&id).unwrap();
    // Flip one character inside the base64 body to break the signature or the DER.
    let mut corrupted = good.clone().into_bytes();
    let i = corrupted.len() / 2;
    corrupted[i] = if corrupted[i] == b'A' { b'B' } else { b'A' };
    let corrupted = String::from_utf8(corrupted).unwrap();
    for (csr, why) in [
        ("garbage".to_owned(), "garbage"),
        (String::new(), "empty"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
            "bad DER",
        ),
        (corrupted, "corrupted"),
        (other_csr, "another device's CN"),
    ] {
        let (status, body) = app.post(&path, &ops, json!({"csr": csr})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
        assert_eq!(
            body["type"], "urn:callhome:problem:invalid-csr",
            "{why}: {body}"
        );
    }
    let (status, _) = app
        .post(&path, &ops, json!({"csr": "x".repeat(100_000)}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .post(
            &format!("/api/v1/devices/{}/certificate", imei(6)),
            &ops,
            json!({"csr": good}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(&path, &ops, json!({"csr": good, "validity_days": 0}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The inventory is untouched by all of that.
    let (_, list) = app
        .get(&format!("/api/v1/devices/{id}/certificates"), &ops)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn revocation_updates_the_crl_at_once() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(8);
    device(&app, &ops, &id).await;
    let (_k, csr) = callhome_ca::generate_key_and_csr(&id).unwrap();
    let (_, signed) = app
        .post(
            &format!("/api/v1/devices/{id}/certificate"),
            &ops,
            json!({"csr": csr}),
        )
        .await;
    let serial = signed["serial"].as_str().unwrap().to_owned();

    let crl_serials = |pem: String| -> Vec<String> {
        let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, crl) = parse_x509_crl(&p.contents).unwrap();
        crl.iter_revoked_certificates()
            .map(|r| r.raw_serial_as_string().replace(':', "").to_uppercase())
            .collect()
    };
    let before = app
        .client
        .get(app.url("/api/v1/ca/crl"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(crl_serials(before).is_empty());

    let (status, body) = app
        .post(
            &format!("/api/v1/certificates/{serial}/revoke"),
            &ops,
            json!({"reason": "bogus"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "reason");
    let (status, revoked) = app
        .post(
            &format!("/api/v1/certificates/{}/revoke", serial.to_lowercase()),
            &ops,
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revocation_reason"], "key_compromise");
    assert_eq!(revoked["revoked_by"], "ops");

    let after = app
        .client
        .get(app.url("/api/v1/ca/crl"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed = crl_serials(after);
    assert!(
        listed
            .iter()
            .any(|s| s.trim_start_matches('0') == serial.trim_start_matches('0')),
        "{listed:?} has {serial}"
    );
    let der = app
        .client
        .get(app.url("/api/v1/ca/crl?format=der"))
        .send()
        .await
        .unwrap();
    assert_eq!(der.headers()["content-type"], "application/pkix-crl");
    assert!(parse_x509_crl(&der.bytes().await.unwrap()).is_ok());

    let (status, _) = app
        .post(
            &format!("/api/v1/certificates/{serial}/revoke"),
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .post("/api/v1/certificates/ABCDEF/revoke", &ops, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post("/api/v1/certificates/not-hex/revoke", &ops, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, one) = app
        .get(&format!("/api/v1/certificates/{serial}"), &ops)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["status"], "revoked");
    let _ = Method::GET;
    app.stop().await;
}

/// Device certificates name their CRL on the device-facing listener (what external
/// brokers fetch); the CRL published there names itself as its issuing distribution
/// point, is signed by the issuing CA, and follows revocations at once.
#[tokio::test]
async fn device_certificates_name_the_crl_published_on_the_device_listener() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(9);
    device(&app, &ops, &id).await;
    let (_k, csr) = callhome_ca::generate_key_and_csr(&id).unwrap();
    let (status, signed) = app
        .post(
            &format!("/api/v1/devices/{id}/certificate"),
            &ops,
            json!({"csr": csr}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    let serial = signed["serial"].as_str().unwrap().to_owned();
    let (_, leaf_pem) = parse_x509_pem(signed["certificate"].as_str().unwrap().as_bytes()).unwrap();
    let leaf = leaf_pem.parse_x509().unwrap();
    let uris: Vec<String> = leaf
        .iter_extensions()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(p) => Some(p),
            _ => None,
        })
        .flat_map(|p| p.points.iter())
        .filter_map(|p| match &p.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    let [url] = uris.as_slice() else {
        panic!("one CRL distribution point expected: {uris:?}")
    };
    let port = app.device_http.port();
    assert!(url.contains(&format!(":{port}/crl/")), "{url}");
    assert!(
        url.starts_with("https://") && url.ends_with(".crl"),
        "{url}"
    );

    // Fetched as a broker would: TLS to the device listener, trusting the root, no client
    // certificate.
    let root = app.get_text("/api/v1/ca/certificate").await;
    let tls = callhome_ca::tls::client_config(&root, None, None).unwrap();
    let broker = reqwest::Client::builder()
        .use_preconfigured_tls(std::sync::Arc::unwrap_or_clone(tls))
        .build()
        .unwrap();
    let local = format!(
        "https://127.0.0.1:{port}{}",
        &url[url.find("/crl/").unwrap()..]
    );
    let fetch = || async {
        let resp = broker.get(&local).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
        resp.bytes().await.unwrap().to_vec()
    };
    let check = |der: &[u8], revoked: bool| {
        let (_, crl) = parse_x509_crl(der).unwrap();
        assert_eq!(crl.issuer(), leaf.issuer(), "signed by the issuing CA");
        let idp: Vec<String> = crl
            .extensions()
            .iter()
            .filter_map(|e| match e.parsed_extension() {
                ParsedExtension::IssuingDistributionPoint(idp) => Some(format!("{idp:?}")),
                _ => None,
            })
            .collect();
        assert!(
            idp.iter().any(|i| i.contains(url.as_str())),
            "{idp:?} names {url}"
        );
        let listed = crl.iter_revoked_certificates().any(|r| {
            r.raw_serial_as_string()
                .replace(':', "")
                .to_uppercase()
                .trim_start_matches('0')
                == serial.trim_start_matches('0')
        });
        assert_eq!(listed, revoked);
    };
    check(&fetch().await, false);
    let (status, _) = app
        .post(
            &format!("/api/v1/certificates/{serial}/revoke"),
            &ops,
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    check(&fetch().await, true);

    let missing = broker
        .get(format!("https://127.0.0.1:{port}/crl/00ff.crl"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

/// The leaf certificate a TLS listener at `addr` presents now (a fresh handshake),
/// optionally as the device `client`.
async fn presented_leaf(
    addr: std::net::SocketAddr,
    root: &str,
    client: Option<&crate::helpers::Enrolled>,
) -> Vec<u8> {
    let tls = callhome_ca::tls::client_config(
        root,
        client.map(|e| e.cert_pem.as_str()),
        client.map(|e| e.key_pem.as_str()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The server certificate is renewed while the server runs: new handshakes on every
/// listener get the new one, live connections stay up.
#[tokio::test]
async fn the_server_certificate_is_renewed_while_running() {
    let app = TestApp::spawn_with(|s| {
        s.server_certificate_check = std::time::Duration::from_secs(1);
    })
    .await;
    let ops = app.user_token("ops", "operator").await;
    let e = app.enroll(&ops, &imei(10)).await;
    let mut modem = crate::modem::TestModem::connect(app.mqtt, &e).await;
    let root = app.get_text("/api/v1/ca/certificate").await;
    let before = presented_leaf(app.device_http, &root, None).await;
    assert_eq!(presented_leaf(app.mqtt, &root, Some(&e)).await, before);

    // Nothing to renew: the same certificate stays.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(presented_leaf(app.device_http, &root, None).await, before);

    // Gone (as when it expires within its margin): a new one is issued and served.
    std::fs::remove_file(app.data_dir.join("ca").join(callhome_ca::SERVER_CERT_FILE)).unwrap();
    let mut after = before.clone();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        after = presented_leaf(app.device_http, &root, None).await;
        if after != before {
            break;
        }
    }
    assert_ne!(
        after, before,
        "the device listener serves a renewed certificate"
    );
    assert_eq!(presented_leaf(app.mqtt, &root, Some(&e)).await, after);
    assert_eq!(presented_leaf(app.tunnel, &root, Some(&e)).await, after);
    // The modem connected before the renewal is still there.
    assert!(
        modem.connack.try_recv().is_err(),
        "the live connection stayed up"
    );
    app.stop().await;
}

/// Has `csr` signed for device `id` with `validity_days`; returns the serial.
async fn sign(app: &TestApp, token: &str, id: &str, csr: &str, validity_days: u32) -> String {
    let (status, signed) = app
        .post(
            &format!("/api/v1/devices/{id}/certificate"),
            token,
            json!({"csr": csr, "validity_days": validity_days}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    signed["serial"].as_str().unwrap().to_owned()
}

/// Registers device `id` and has a fresh key certified for `validity_days`.
async fn issue(app: &TestApp, token: &str, id: &str, validity_days: u32) -> String {
    let (status, _) = app
        .post("/api/v1/devices", token, json!({"imei": id}))
        .await;
    assert!(status == StatusCode::CREATED || status == StatusCode::CONFLICT);
    let (_key, csr) = callhome_ca::generate_key_and_csr(id).unwrap();
    sign(app, token, id, &csr, validity_days).await
}

/// Reads SSE events until `n` `certificate.expiring` data lines have arrived.
async fn expiring_events(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    n: usize,
) -> Vec<serde_json::Value> {
    use futures::StreamExt as _;
    let mut text = String::new();
    let mut events = Vec::new();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while events.len() < n {
            let chunk = stream.next().await.expect("stream open").unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if block.contains("event: certificate.expiring")
                    && let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
                {
                    events.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    })
    .await;
    assert!(got.is_ok(), "events so far: {events:?} {text}");
    events
}

#[tokio::test]
async fn expiring_certificates_are_listed_announced_once_and_counted() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("viewer", "reader").await;
    let resp = app
        .client
        .get(app.url("/api/v1/events?type=certificate.expiring"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let (d1, d20, d45, d100) = (imei(801), imei(802), imei(803), imei(804));
    let s1 = issue(&app, &ops, &d1, 1).await;
    let s20 = issue(&app, &ops, &d20, 20).await;
    let s45 = issue(&app, &ops, &d45, 45).await;
    let s100 = issue(&app, &ops, &d100, 100).await;

    // Listing: expiring soonest first, filtered.
    let (status, page) = app.get("/api/v1/certificates", &reader).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let serials = |page: &serde_json::Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["serial"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(serials(&page), [s1.as_str(), &s20, &s45, &s100]);
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "active")
    );
    let (_, page) = app
        .get(
            "/api/v1/certificates?expiring_within_days=30&state=active",
            &reader,
        )
        .await;
    assert_eq!(serials(&page), [s1.as_str(), &s20]);
    let (_, page) = app
        .get(&format!("/api/v1/certificates?device={d45}"), &reader)
        .await;
    assert_eq!(serials(&page), [s45.as_str()]);
    let (_, page) = app
        .get(
            &format!("/api/v1/certificates?imei={d45}&expiring_within_days=0"),
            &reader,
        )
        .await;
    assert!(serials(&page).is_empty());
    // Paging one at a time walks the same order.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(
                &format!("/api/v1/certificates?limit=1&cursor={cursor}"),
                &reader,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        walked.extend(serials(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(walked, [s1.as_str(), &s20, &s45, &s100]);
    // Bad input: a clear 4xx naming the parameter.
    for (query, status, what) in [
        (
            "expiring_within_days=3651",
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiring_within_days",
        ),
        (
            "expiring_within_days=-1",
            StatusCode::BAD_REQUEST,
            "expiring_within_days",
        ),
        ("state=valid", StatusCode::UNPROCESSABLE_ENTITY, "state"),
        ("imei=123", StatusCode::UNPROCESSABLE_ENTITY, "imei"),
        ("device=123", StatusCode::UNPROCESSABLE_ENTITY, "device"),
        ("cursor=bm9wZQ", StatusCode::BAD_REQUEST, "cursor"),
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
        ("colour=red", StatusCode::BAD_REQUEST, "colour"),
    ] {
        let (got, body) = app
            .get(&format!("/api/v1/certificates?{query}"), &reader)
            .await;
        assert_eq!(got, status, "{query}: {body}");
        assert!(body.to_string().contains(what), "{query}: {body}");
    }
    let (status, _) = app
        .get(
            &format!("/api/v1/certificates?imei={d1}&device={d1}"),
            &reader,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The device view shows the active certificate's expiry.
    let (_, dev) = app.get(&format!("/api/v1/devices/{d20}"), &reader).await;
    assert_eq!(dev["certificate"]["serial"], s20.as_str(), "{dev}");
    assert_eq!(dev["certificate"]["days_left"], 19, "{dev}");
    assert_eq!(
        dev["imei"],
        d20.as_str(),
        "the device's own fields are still there"
    );

    // The check (also run at start, before these were issued): the tightest threshold
    // crossed, once each.
    let (status, _) = app
        .post("/api/v1/certificates/expiry-check", &reader, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, report) = app
        .post("/api/v1/certificates/expiry-check", &ops, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let mut got: Vec<(String, u64)> = report["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["serial"].as_str().unwrap().to_owned(),
                e["threshold_days"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![(s1.clone(), 7), (s20.clone(), 30), (s45.clone(), 60)];
    want.sort();
    assert_eq!(got, want);
    let events = expiring_events(&mut stream, 3).await;
    let mut seen: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["data"]["serial"].as_str().unwrap().to_owned(),
                e["data"]["threshold_days"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, want);
    let first = events
        .iter()
        .find(|e| e["data"]["serial"] == s1.as_str())
        .unwrap();
    assert_eq!(first["imei"], d1.as_str());
    assert_eq!(first["data"]["days_left"], 0);
    // A second check publishes nothing; the next event on the stream is a new certificate's.
    let (_, report) = app
        .post("/api/v1/certificates/expiry-check", &ops, json!({}))
        .await;
    assert_eq!(report["published"], json!([]), "{report}");
    let s5 = issue(&app, &ops, &imei(805), 5).await;
    let (_, report) = app
        .post("/api/v1/certificates/expiry-check", &ops, json!({}))
        .await;
    assert_eq!(report["published"].as_array().unwrap().len(), 1, "{report}");
    let next = expiring_events(&mut stream, 1).await;
    assert_eq!(
        next[0]["data"]["serial"],
        s5.as_str(),
        "no repeat before it: {next:?}"
    );

    // The gauges (process-wide: other tests' servers set them too, so only their presence).
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "callhome_certificates_expiring{within_days=\"60\"}",
        "callhome_certificates_expiring{within_days=\"30\"}",
        "callhome_certificates_expiring{within_days=\"7\"}",
        "callhome_certificates{state=\"active\"}",
    ] {
        assert!(metrics.contains(line), "{line} in /metrics");
    }
    app.stop().await;
}

/// A CSR for `id` over an existing key.
fn csr_with(key: &rcgen::KeyPair, id: &str) -> String {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, id);
    params.distinguished_name = dn;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn findings<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

#[tokio::test]
async fn audit_finds_shared_keys_lingering_rotations_and_revoked_connections() {
    let app =
        TestApp::spawn_with(|s| s.certificates.rotation_overlap = ::time::Duration::ZERO).await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("viewer", "reader").await;
    let (status, report) = app.get("/api/v1/certificates/audit", &reader).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["findings"], json!([]));
    assert_eq!(
        report["checks"],
        json!(["shared_key", "multiple_active", "revoked_connected"])
    );

    // shared_key: two devices whose CSRs carry the same key.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (a, b) = (imei(811), imei(812));
    device(&app, &ops, &a).await;
    device(&app, &ops, &b).await;
    let sa = sign(&app, &ops, &a, &csr_with(&key, &a), 100).await;
    let sb = sign(&app, &ops, &b, &csr_with(&key, &b), 100).await;
    // multiple_active: a second certificate while the first is active, overlap 0.
    let c = imei(813);
    let old = issue(&app, &ops, &c, 100).await;
    let new = issue(&app, &ops, &c, 200).await;
    // revoked_connected: a modem connected with its certificate, which another node then
    // revokes in the shared database (this node's gateway is not told, so the connection
    // stays, as it would on a node that has not reloaded its CRL).
    let e = app.enroll(&ops, &imei(814)).await;
    let _modem = crate::modem::TestModem::connect(app.mqtt, &e).await;
    app.store()
        .revoke_certificate(
            &e.serial,
            &callhome_store::Revocation {
                at: ::time::OffsetDateTime::now_utc(),
                reason: Some("key_compromise".into()),
                by: "node-b".into(),
            },
        )
        .await
        .unwrap();
    let (_, dev) = app
        .get(&format!("/api/v1/devices/{}", e.imei), &reader)
        .await;
    assert_eq!(dev["online"], true, "{dev}");
    assert_eq!(
        dev["certificate"],
        serde_json::Value::Null,
        "no active certificate: {dev}"
    );

    let (status, report) = app.get("/api/v1/certificates/audit", &reader).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let shared = findings(&report, "shared_key");
    assert_eq!(shared.len(), 1, "{report}");
    assert_eq!(shared[0]["severity"], "critical");
    assert_eq!(shared[0]["imeis"], json!([a, b]));
    let mut serials: Vec<&str> = shared[0]["serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    serials.sort_unstable();
    let mut want = vec![sa.as_str(), sb.as_str()];
    want.sort_unstable();
    assert_eq!(serials, want);
    let multi = findings(&report, "multiple_active");
    assert_eq!(multi.len(), 1, "{report}");
    assert_eq!(multi[0]["imeis"], json!([c]));
    assert_eq!(multi[0]["serials"], json!([new, old]), "newest first");
    assert_eq!(multi[0]["severity"], "medium");
    let connected = findings(&report, "revoked_connected");
    assert_eq!(connected.len(), 1, "{report}");
    assert_eq!(connected[0]["imeis"], json!([e.imei]));
    assert_eq!(connected[0]["serials"], json!([e.serial]));
    assert!(
        connected[0]["detail"].as_str().unwrap().contains("revoked"),
        "{report}"
    );
    assert_eq!(report["findings"].as_array().unwrap().len(), 3, "{report}");

    // Revoking the older certificate ends the multiple_active finding.
    let (status, _) = app
        .post(
            &format!("/api/v1/certificates/{old}/revoke"),
            &ops,
            json!({"reason": "superseded"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, report) = app.get("/api/v1/certificates/audit", &reader).await;
    assert!(findings(&report, "multiple_active").is_empty(), "{report}");
    app.stop().await;
}

#[tokio::test]
async fn within_the_rotation_overlap_two_active_certificates_are_no_finding() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let c = imei(821);
    issue(&app, &ops, &c, 100).await;
    issue(&app, &ops, &c, 200).await;
    let (_, report) = app.get("/api/v1/certificates/audit", &ops).await;
    assert_eq!(
        report["findings"],
        json!([]),
        "default overlap is 7 days: {report}"
    );
    app.stop().await;
}
