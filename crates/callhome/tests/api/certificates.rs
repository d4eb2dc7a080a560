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
    assert_eq!(list[0]["status"], "valid");
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
