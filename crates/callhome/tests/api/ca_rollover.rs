//! Bringing a utility's own issuing CA with `callhome ca import`, the rollover during
//! which devices of both CAs connect, and retiring the old CA for good.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use time::OffsetDateTime;

use crate::helpers::{Enrolled, TestApp, imei};
use crate::modem::TestModem;

/// Runs the built `callhome` with `args` on the app's data directory.
fn callhome_ca(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhome"))
        .arg("ca")
        .args(args)
        .arg("--data-dir")
        .arg(&app.data_dir)
        .env_remove("CALLHOME_DATABASE_URL")
        .output()
        .expect("callhome runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ca_params(cn: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = OffsetDateTime::now_utc() + time::Duration::days(3650);
    p
}

/// Writes a utility PKI (root, issuing CA under it) to `dir`: root.pem, issuing.pem,
/// issuing.key.pem, and other.key.pem (a key that matches nothing).
fn utility_pki(dir: &Path) {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Utility Root CA", 1);
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let key = KeyPair::generate().unwrap();
    let issuing = ca_params("Utility Issuing CA", 0)
        .signed_by(&key, &root)
        .unwrap();
    std::fs::write(dir.join("root.pem"), root_cert.pem()).unwrap();
    std::fs::write(dir.join("issuing.pem"), issuing.pem()).unwrap();
    std::fs::write(dir.join("issuing.key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("other.key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
}

async fn trust_bundle(app: &TestApp) -> String {
    app.get_text("/api/v1/ca/certificate").await
}

/// Tries to connect `e` trusting `ca_pem`; `Ok` once connected.
async fn try_connect(app: &TestApp, e: &Enrolled, ca_pem: &str) -> Result<(), String> {
    let tls = callhome_ca::tls::client_config(ca_pem, Some(&e.cert_pem), Some(&e.key_pem)).unwrap();
    let mut m = TestModem::start(app.mqtt, &e.imei, &e.imei, tls);
    match tokio::time::timeout(Duration::from_secs(10), m.connack.recv()).await {
        Ok(Some(r)) => r,
        other => Err(format!("no answer: {other:?}")),
    }
}

#[tokio::test]
async fn an_imported_utility_ca_issues_while_old_devices_still_connect_until_retired() {
    let mut app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let old = app.enroll(&ops, &imei(400)).await;
    let old2 = app.enroll(&ops, &imei(402)).await;
    try_connect(&app, &old, &old.ca_pem).await.unwrap();
    let old_root = trust_bundle(&app).await;

    let pki = tempfile::tempdir().unwrap();
    utility_pki(pki.path());
    let file = |name: &str| pki.path().join(name).to_string_lossy().into_owned();

    let import = |key: &str, chain: Option<&str>| {
        let mut args = vec![
            "import".to_owned(),
            "--cert".to_owned(),
            file("issuing.pem"),
            "--key".to_owned(),
            file(key),
        ];
        if let Some(c) = chain {
            args.extend(["--chain".to_owned(), file(c)]);
        }
        callhome_ca(&app, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Refusals name the problem and change nothing.
    let (ok, out) = import("other.key.pem", Some("root.pem"));
    assert!(!ok && out.contains("does not match"), "{out}");
    let (ok, out) = import("issuing.key.pem", None);
    assert!(!ok && out.contains("no chain up to its root"), "{out}");

    let (ok, out) = import("issuing.key.pem", Some("root.pem"));
    assert!(ok, "{out}");
    assert!(
        out.contains("imported issuing CA") && out.contains("Utility Issuing CA"),
        "{out}"
    );
    let retired_fp = out
        .lines()
        .find_map(|l| l.strip_prefix("retired (still trusted) "))
        .and_then(|l| l.split(';').next())
        .expect("the retired fingerprint")
        .to_owned();
    app.restart().await;

    // The trust bundle holds both roots, the utility's first.
    let bundle = trust_bundle(&app).await;
    let utility_root = std::fs::read_to_string(pki.path().join("root.pem")).unwrap();
    assert!(bundle.starts_with(&utility_root), "{bundle}");
    assert!(bundle.contains(&old_root), "{bundle}");
    let (ok, out) = callhome_ca(&app, &["show"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("current issuing CA") && out.contains("Utility Issuing CA"),
        "{out}"
    );
    assert!(
        out.contains("retired issuing CA") && out.contains(&retired_fp),
        "{out}"
    );

    // New certificates chain to the utility's root; the server's certificate too.
    let new = app.enroll(&ops, &imei(401)).await;
    assert!(new.ca_pem.ends_with(&utility_root), "{}", new.ca_pem);
    try_connect(&app, &new, &utility_root).await.unwrap();
    // A modem given the new root before the switch still connects with its old certificate.
    try_connect(&app, &old, &bundle).await.unwrap();
    // Revocation still works for the retired CA's certificates.
    let (status, _) = app
        .post(
            &format!("/api/v1/certificates/{}/revoke", old.serial),
            &ops,
            serde_json::json!({"reason": "superseded"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(try_connect(&app, &old, &bundle).await.is_err());
    // Another device of the old CA, not revoked, still connects.
    try_connect(&app, &old2, &bundle).await.unwrap();

    // Retired for good: the old CA's devices are refused at the handshake.
    let (ok, out) = callhome_ca(&app, &["remove-retired", &retired_fp[..12]]);
    assert!(ok && out.contains(&retired_fp), "{out}");
    app.restart().await;
    assert_eq!(trust_bundle(&app).await, utility_root);
    try_connect(&app, &new, &utility_root).await.unwrap();
    let refused = try_connect(&app, &old2, &bundle).await;
    assert!(
        refused.is_err(),
        "a device of the removed CA is refused: {refused:?}"
    );
    app.stop().await;
}
