//! EST (RFC 7030) on the device-facing listener, through a real rustls client: `cacerts`
//! and `csrattrs`; enrolment with a single-use bootstrap secret, re-enrolment and
//! server-side key generation with the device's certificate, each issued certificate
//! chaining to `cacerts` and good for connecting to the gateway; every refusal with its
//! status and a text naming the problem; and the bootstrap-secret API.

use std::sync::Arc;

use base64::Engine as _;
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::asn1::ObjectIdentifier;
use der::{Any, Decode as _, Encode as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::helpers::{Enrolled, TestApp, imei};
use crate::modem::TestModem;

const CHALLENGE: &str = "Basic realm=\"callhome-est\"";

/// A client of the device listener trusting `ca_pem`, presenting `creds` (cert, key).
fn client(ca_pem: &str, creds: Option<(&str, &str)>) -> reqwest::Client {
    let tls =
        callhome_ca::tls::client_config(ca_pem, creds.map(|c| c.0), creds.map(|c| c.1)).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(Arc::unwrap_or_clone(tls))
        .build()
        .unwrap()
}

fn est_url(app: &TestApp, op: &str) -> String {
    format!(
        "https://localhost:{}/.well-known/est/{op}",
        app.device_http.port()
    )
}

/// The CA certificate as the API publishes it (the trust anchor a device is given).
async fn ca_pem(app: &TestApp) -> String {
    app.client
        .get(app.url("/api/v1/ca/certificate"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A new key and a base64 DER CSR for `cn`, in lines of 64 characters (as `openssl base64`
/// writes them).
fn csr(cn: &str) -> (String, String) {
    let (key, csr_pem) = callhome_ca::generate_key_and_csr(cn).unwrap();
    (key, b64_lines(&pem_der(&csr_pem)))
}

fn pem_der(text: &str) -> Vec<u8> {
    ::pem::parse(text).unwrap().into_contents()
}

fn b64_lines(der: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(der);
    flat.as_bytes()
        .chunks(64)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect()
}

fn unb64(text: &str) -> Vec<u8> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .expect("a base64 body")
}

fn to_pem(ders: &[Vec<u8>], label: &str) -> String {
    ders.iter()
        .map(|d| ::pem::encode(&::pem::Pem::new(label, d.clone())))
        .collect()
}

/// The certificates of a base64 certs-only PKCS#7, parsed with the `cms` crate.
fn certs_only(body: &str) -> Vec<Vec<u8>> {
    let info = ContentInfo::from_der(&unb64(body)).expect("a CMS ContentInfo");
    assert_eq!(
        info.content_type,
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2"),
        "id-signedData"
    );
    let signed = info.content.decode_as::<SignedData>().expect("SignedData");
    assert!(signed.signer_infos.0.is_empty(), "certs-only: no signers");
    assert!(signed.encap_content_info.econtent.is_none());
    signed
        .certificates
        .expect("certificates")
        .0
        .iter()
        .map(|c| match c {
            CertificateChoices::Certificate(c) => c.to_der().unwrap(),
            other => panic!("not a certificate: {other:?}"),
        })
        .collect()
}

/// Checks that `leaf` is signed by a CA of `chain` (cacerts: a SET, in no particular
/// order) and names `cn`.
fn check_issued(leaf: &[u8], chain: &[Vec<u8>], cn: &str) {
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    let issuer = chain
        .iter()
        .map(|c| X509Certificate::from_der(c).unwrap().1)
        .find(|c| c.subject() == leaf.issuer())
        .expect("the issuer is in cacerts");
    leaf.verify_signature(Some(issuer.public_key()))
        .expect("signed by the CA from cacerts");
    let names: Vec<&str> = leaf
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(names, vec![cn]);
}

fn serial_of(der: &[u8]) -> String {
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.raw_serial_as_string()
        .replace(':', "")
        .to_uppercase()
        .trim_start_matches("00")
        .to_owned()
}

struct Answer {
    status: StatusCode,
    content_type: String,
    challenge: Option<String>,
    text: String,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("request sent");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let challenge = header("www-authenticate");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    if !status.is_success() {
        assert!(
            content_type.starts_with("text/plain"),
            "EST refusals are plain text: {status} {content_type} {text}"
        );
    }
    Answer {
        status,
        content_type,
        challenge,
        text,
    }
}

/// POSTs `body` as `application/pkcs10` to `op`, with Basic credentials if given.
async fn post_csr(
    c: &reqwest::Client,
    app: &TestApp,
    op: &str,
    basic: Option<(&str, &str)>,
    body: String,
) -> Answer {
    let mut req = c
        .post(est_url(app, op))
        .header("content-type", "application/pkcs10")
        .body(body);
    if let Some((user, password)) = basic {
        req = req.basic_auth(user, Some(password));
    }
    send(req).await
}

/// Registers `id` and makes its bootstrap secret.
async fn with_secret(app: &TestApp, token: &str, id: &str) -> String {
    let (status, body) = app
        .post("/api/v1/devices", token, json!({"imei": id}))
        .await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::CONFLICT,
        "{body}"
    );
    new_secret(app, token, id, json!({})).await
}

async fn new_secret(app: &TestApp, token: &str, id: &str, body: Value) -> String {
    let (status, body) = app
        .post(
            &format!("/api/v1/devices/{id}/bootstrap-secret"),
            token,
            body,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

/// The EST audit rows of `actor`, newest first (read as the admin).
async fn audit_rows(app: &TestApp, actor: &str) -> Vec<Value> {
    let token = &app.admin_token().await;
    let (status, page) = app
        .get(&format!("/api/v1/audit?actor={actor}&limit=1000"), token)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("EST "))
        .cloned()
        .collect()
}

/// Connects to the gateway as `id` with `cert_pem`/`key_pem`, trusting `trust_pem`.
async fn connect_modem(app: &TestApp, id: &str, cert_pem: &str, key_pem: &str, trust_pem: &str) {
    let e = Enrolled {
        imei: id.to_owned(),
        key_pem: key_pem.to_owned(),
        cert_pem: cert_pem.to_owned(),
        ca_pem: trust_pem.to_owned(),
        serial: String::new(),
    };
    let modem = TestModem::connect(app.mqtt, &e).await;
    drop(modem);
}

/// A running server with an operator, the trust anchor a device is given, a client of
/// the device listener trusting it, and the device `imei(n)` registered with a bootstrap
/// secret.
struct Setup {
    app: TestApp,
    ops: String,
    ca: String,
    anchor: reqwest::Client,
    id: String,
    secret: String,
}

async fn setup(n: u64) -> Setup {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let ca = ca_pem(&app).await;
    let anchor = client(&ca, None);
    let id = imei(n);
    let secret = with_secret(&app, &ops, &id).await;
    Setup {
        app,
        ops,
        ca,
        anchor,
        id,
        secret,
    }
}

#[tokio::test]
async fn cacerts_and_csrattrs_are_served_as_rfc_7030_says() {
    let app = TestApp::spawn().await;
    let ca = ca_pem(&app).await;
    let c = client(&ca, None);
    let a = send(c.get(est_url(&app, "cacerts"))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.content_type, "application/pkcs7-mime");
    let chain = certs_only(&a.text);
    assert!(
        chain.contains(&pem_der(&ca)),
        "the chain holds the published CA certificate"
    );
    for c in &chain {
        let (_, c) = X509Certificate::from_der(c).unwrap();
        assert!(c.is_ca(), "only CA certificates: {}", c.subject());
    }

    let a = send(c.get(est_url(&app, "csrattrs"))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.content_type, "application/csrattrs");
    let attrs = Vec::<Any>::from_der(&unb64(&a.text)).expect("CsrAttrs");
    assert_eq!(
        attrs[0].decode_as::<ObjectIdentifier>().unwrap(),
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        "ecdsa-with-SHA256"
    );
    let curve = attrs[1]
        .decode_as::<x509_cert::attr::Attribute>()
        .expect("an attribute");
    assert_eq!(
        curve.oid,
        ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
        "id-ecPublicKey"
    );
    let values: Vec<ObjectIdentifier> = curve
        .values
        .iter()
        .map(|v| v.decode_as().unwrap())
        .collect();
    assert_eq!(
        values,
        vec![ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7")],
        "P-256"
    );
    app.stop().await;
}

/// A bootstrap secret enrols once; the device's certificate then re-enrols and gets a
/// server-made key; each certificate chains to cacerts and connects to the gateway.
#[tokio::test]
async fn enrol_with_a_bootstrap_secret_then_reenrol_and_serverkeygen() {
    let Setup {
        app,
        ops,
        ca,
        anchor,
        id,
        secret,
    } = setup(501).await;
    let cacerts = certs_only(&send(anchor.get(est_url(&app, "cacerts"))).await.text);
    let trust = to_pem(&cacerts, "CERTIFICATE");

    // simpleenroll with HTTP Basic (no client certificate).
    let (key1, csr1) = csr(&id);
    let a = post_csr(&anchor, &app, "simpleenroll", Some((&id, &secret)), csr1).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.content_type,
        "application/pkcs7-mime; smime-type=certs-only"
    );
    let issued = certs_only(&a.text);
    assert_eq!(issued.len(), 1);
    check_issued(&issued[0], &cacerts, &id);
    let cert1 = to_pem(&issued, "CERTIFICATE");
    let serial1 = serial_of(&issued[0]);
    connect_modem(&app, &id, &cert1, &key1, &trust).await;

    // Single use: the same secret again is refused.
    let (_, again) = csr(&id);
    let a = post_csr(&anchor, &app, "simpleenroll", Some((&id, &secret)), again).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.challenge.as_deref(), Some(CHALLENGE));

    // simplereenroll with the new certificate: a second certificate, the first stays valid.
    let device = client(&ca, Some((&cert1, &key1)));
    let (key2, csr2) = csr(&id);
    let a = post_csr(&device, &app, "simplereenroll", None, csr2).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let issued = certs_only(&a.text);
    check_issued(&issued[0], &cacerts, &id);
    let cert2 = to_pem(&issued, "CERTIFICATE");
    let serial2 = serial_of(&issued[0]);
    assert_ne!(serial1, serial2);
    connect_modem(&app, &id, &cert2, &key2, &trust).await;

    // serverkeygen with the device's certificate: key and certificate, multipart.
    let device2 = client(&ca, Some((&cert2, &key2)));
    let (_, csr3) = csr(&id);
    let a = post_csr(&device2, &app, "serverkeygen", None, csr3).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let boundary = a
        .content_type
        .strip_prefix("multipart/mixed; boundary=")
        .expect("multipart/mixed")
        .to_owned();
    let parts: Vec<&str> = a
        .text
        .split(&format!("--{boundary}"))
        .filter(|p| !p.trim().is_empty() && p.trim() != "--")
        .collect();
    assert_eq!(parts.len(), 2, "{}", a.text);
    let part = |p: &str| {
        let (head, body) = p.split_once("\r\n\r\n").expect("part headers");
        (head.to_ascii_lowercase(), body.to_owned())
    };
    let (key_head, key_body) = part(parts[0]);
    assert!(
        key_head.contains("content-type: application/pkcs8"),
        "{key_head}"
    );
    let (cert_head, cert_body) = part(parts[1]);
    assert!(
        cert_head.contains("content-type: application/pkcs7-mime; smime-type=certs-only"),
        "{cert_head}"
    );
    let key3 = to_pem(&[unb64(&key_body)], "PRIVATE KEY");
    let issued = certs_only(&cert_body);
    check_issued(&issued[0], &cacerts, &id);
    let cert3 = to_pem(&issued, "CERTIFICATE");
    connect_modem(&app, &id, &cert3, &key3, &trust).await;

    // The inventory: three certificates, all active, each recorded with its operation.
    let (_, list) = app
        .get(&format!("/api/v1/devices/{id}/certificates"), &ops)
        .await;
    let mut by: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["status"], "active");
            c["issued_by"].as_str().unwrap()
        })
        .collect();
    by.sort_unstable();
    assert_eq!(
        by,
        vec!["est:serverkeygen", "est:simpleenroll", "est:simplereenroll"]
    );

    // Audited as the device: three successes and the refused reuse.
    let rows = audit_rows(&app, &id).await;
    let summary: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["actor_kind"], "device");
            (
                r["action"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |a: &str, o: &str| (a.to_owned(), o.to_owned());
    assert_eq!(
        summary,
        vec![
            expect("EST serverkeygen", "success"),
            expect("EST simplereenroll", "success"),
            expect("EST simpleenroll", "failure"),
            expect("EST simpleenroll", "success"),
        ]
    );
    assert_eq!(rows[3]["detail"]["method"], "bootstrap_secret");
    assert_eq!(rows[1]["detail"]["method"], "client_certificate");
    // Never the secret nor the key, anywhere in the audit log.
    let (_, all) = app
        .get("/api/v1/audit?limit=1000", &app.admin_token().await)
        .await;
    let all = all.to_string();
    assert!(!all.contains(&secret));
    assert!(!all.contains(&key_body.lines().next().unwrap().to_owned()));

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("callhome_est_requests_total{op=\"simpleenroll\",outcome=\"success\"}"),
        "{metrics}"
    );
    app.stop().await;
}

/// Every refusal: its status and a text naming the problem; a refused CSR does not use up
/// the secret.
#[tokio::test]
async fn est_refusals_name_the_problem() {
    let Setup {
        app,
        ops,
        ca,
        anchor,
        id,
        secret,
    } = setup(502).await;
    let other = imei(503);
    let basic = Some((id.as_str(), secret.as_str()));
    let (_, good) = csr(&id);

    // No credentials at all.
    let a = post_csr(&anchor, &app, "simpleenroll", None, good.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.challenge.as_deref(), Some(CHALLENGE));
    assert!(a.text.contains("needs credentials"), "{}", a.text);
    // A wrong secret, an unknown IMEI, a user name that is no IMEI.
    let a = post_csr(
        &anchor,
        &app,
        "simpleenroll",
        Some((&id, "wrong")),
        good.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert!(
        a.text.contains("invalid IMEI or bootstrap secret"),
        "{}",
        a.text
    );
    let a = post_csr(
        &anchor,
        &app,
        "simpleenroll",
        Some((&other, &secret)),
        good.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    let a = post_csr(
        &anchor,
        &app,
        "simpleenroll",
        Some(("bob", &secret)),
        good.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert!(a.text.contains("IMEI"), "{}", a.text);

    // Media type and size.
    let a = send(
        anchor
            .post(est_url(&app, "simpleenroll"))
            .basic_auth(&id, Some(&secret))
            .header("content-type", "application/json")
            .body(good.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", a.text);
    assert!(a.text.contains("application/pkcs10"), "{}", a.text);
    let a = post_csr(&anchor, &app, "simpleenroll", basic, "A".repeat(17 * 1024)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);

    // Malformed bodies and CSRs.
    let a = post_csr(&anchor, &app, "simpleenroll", basic, "not base64!".into()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains("base64"), "{}", a.text);
    let a = post_csr(&anchor, &app, "simpleenroll", basic, b64_lines(b"hello")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains("PKCS#10"), "{}", a.text);
    let mut tampered = unb64(&good);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let a = post_csr(&anchor, &app, "simpleenroll", basic, b64_lines(&tampered)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains("signature"), "{}", a.text);
    let (_, foreign) = csr(&other);
    let a = post_csr(&anchor, &app, "simpleenroll", basic, foreign.clone()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains(&format!("CN={id}")), "{}", a.text);

    // simplereenroll takes only a client certificate.
    let a = post_csr(&anchor, &app, "simplereenroll", basic, good.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert!(a.text.contains("client certificate"), "{}", a.text);

    // None of the refusals used the secret up.
    let a = post_csr(&anchor, &app, "simpleenroll", basic, good.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(certs_only(&a.text).len(), 1);

    // A certificate of one device cannot re-enrol another.
    let e = app.enroll(&ops, &id).await;
    let device = client(&ca, Some((&e.cert_pem, &e.key_pem)));
    let a = post_csr(&device, &app, "simplereenroll", None, foreign).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(
        a.text
            .contains(&format!("the current certificate's subject CN={id}")),
        "{}",
        a.text
    );

    // An expired secret says so.
    let secret = new_secret(&app, &ops, &id, json!({"expires_in_s": 3600})).await;
    let store = app.store();
    let mut stored = store
        .get_bootstrap_secret(&callhome_core::Imei::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    stored.expires_at = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    store.put_bootstrap_secret(&stored).await.unwrap();
    let a = post_csr(
        &anchor,
        &app,
        "simpleenroll",
        Some((&id, &secret)),
        good.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert!(a.text.contains("expired"), "{}", a.text);

    // A disabled device: 403, by secret or by certificate.
    let secret = new_secret(&app, &ops, &id, json!({})).await;
    let (status, body) = app
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(&ops),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let a = post_csr(
        &anchor,
        &app,
        "simpleenroll",
        Some((&id, &secret)),
        good.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(a.text.contains("disabled"), "{}", a.text);
    let a = post_csr(&device, &app, "simplereenroll", None, good.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);

    // An unregistered device's certificate: 403.
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let a = post_csr(&device, &app, "simplereenroll", None, good.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(a.text.contains("not registered"), "{}", a.text);

    // The failed attempts are audited with their reasons.
    let rows = audit_rows(&app, &id).await;
    let reasons: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["detail"]["reason"].as_str())
        .collect();
    for wanted in [
        "invalid IMEI or bootstrap secret",
        "expired",
        "disabled",
        "not registered",
        "base64",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(wanted)),
            "{wanted} in {reasons:?}"
        );
    }
    app.stop().await;
}

/// Of two enrolments racing with one secret, exactly one gets a certificate.
#[tokio::test]
async fn a_bootstrap_secret_issues_one_certificate_under_concurrency() {
    let Setup {
        app,
        ops,
        anchor,
        id,
        secret,
        ..
    } = setup(504).await;
    let (_, a) = csr(&id);
    let (_, b) = csr(&id);
    let basic = Some((id.as_str(), secret.as_str()));
    let (x, y) = tokio::join!(
        post_csr(&anchor, &app, "simpleenroll", basic, a),
        post_csr(&anchor, &app, "simpleenroll", basic, b)
    );
    let mut statuses = vec![x.status, y.status];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::OK, StatusCode::UNAUTHORIZED],
        "{} / {}",
        x.text,
        y.text
    );
    let (_, list) = app
        .get(&format!("/api/v1/devices/{id}/certificates"), &ops)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn bootstrap_secret_api_roles_limits_replacement_and_withdrawal() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let reader = app.user_token("watcher", "reader").await;
    let ca = ca_pem(&app).await;
    let anchor = client(&ca, None);
    let id = imei(505);
    let path = format!("/api/v1/devices/{id}/bootstrap-secret");

    // Unknown device, reader, bad lifetimes.
    let (status, body) = app.post(&path, &ops, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let first = with_secret(&app, &ops, &id).await;
    assert!(first.len() >= 24 && first.chars().all(|c| c.is_ascii_alphanumeric()));
    let (status, _) = app.post(&path, &reader, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [0, 90 * 86_400 + 1] {
        let (status, body) = app.post(&path, &ops, json!({"expires_in_s": bad})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains("expires_in_s"), "{body}");
    }
    let (status, body) = app.post(&path, &ops, json!({"expires_in_s": 86_400})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let expires = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(left <= time::Duration::days(1) && left > time::Duration::hours(23));
    let second = body["secret"].as_str().unwrap().to_owned();

    // The new secret replaced the first one.
    let (_, c) = csr(&id);
    let a = post_csr(
        &anchor,
        &app,
        "simpleenroll",
        Some((&id, &first)),
        c.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);

    // Withdrawn: refused, and a second withdrawal finds nothing.
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path, Some(&reader), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path, Some(&ops), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path, Some(&ops), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let a = post_csr(&anchor, &app, "simpleenroll", Some((&id, &second)), c).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);

    // Stored only as an argon2 hash.
    let third = new_secret(&app, &ops, &id, json!({})).await;
    let stored = app
        .store()
        .get_bootstrap_secret(&callhome_core::Imei::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.secret_hash.starts_with("$argon2id$"));
    assert!(!stored.secret_hash.contains(&third));
    assert_eq!(stored.created_by, "ops");
    app.stop().await;
}

/// Failed bootstrap secrets back off like logins: past the free failures even the right
/// secret gets 429 with `Retry-After`, counted but not audited.
#[tokio::test]
async fn failed_bootstrap_secrets_are_throttled() {
    let app = TestApp::spawn_with(|s| {
        s.login_throttle.user_free_failures = 1;
        s.login_throttle.base_delay = std::time::Duration::from_secs(3600);
        s.login_throttle.max_delay = std::time::Duration::from_secs(3600);
    })
    .await;
    let ops = app.user_token("ops", "operator").await;
    let anchor = client(&ca_pem(&app).await, None);
    let id = imei(506);
    let secret = with_secret(&app, &ops, &id).await;
    let (_, c) = csr(&id);
    for _ in 0..2 {
        let a = post_csr(
            &anchor,
            &app,
            "simpleenroll",
            Some((&id, "wrong")),
            c.clone(),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    }
    let resp = anchor
        .post(est_url(&app, "simpleenroll"))
        .header("content-type", "application/pkcs10")
        .basic_auth(&id, Some(&secret))
        .body(c)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("too many failed bootstrap secrets for this IMEI"),
        "{text}"
    );
    let rows = audit_rows(&app, &id).await;
    assert_eq!(
        rows.len(),
        2,
        "the two failures, not the throttled attempt: {rows:?}"
    );
    app.stop().await;
}
