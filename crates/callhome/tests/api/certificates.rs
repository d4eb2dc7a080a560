use reqwest::{Method, StatusCode};
use serde_json::json;
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

    // The published CA certificate (no authentication needed) is the issuer.
    let ca_pem = app
        .client
        .get(app.url("/api/v1/ca/certificate"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(signed["ca_chain"].as_str().unwrap(), ca_pem);
    let (_, ca_pem_parsed) = parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = ca_pem_parsed.parse_x509().unwrap();
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
