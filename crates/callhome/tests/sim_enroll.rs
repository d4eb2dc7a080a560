//! The simulator's enrollment against the real API, started in-process on port 0: device
//! registration (409 tolerated), CSR signing, CA download, the on-disk cache, and the
//! resulting mutual-TLS client configuration.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use callhome_core::Imei;
use callhome_sim::{CA_FILE, Enroller, SimError, TlsBase};
use helpers::TestApp;
use reqwest::StatusCode;
use serde_json::json;

fn imeis(n: usize) -> Vec<Imei> {
    (0..n)
        .map(|i| Imei::from_body(&format!("3569380355{i:04}")).unwrap())
        .collect()
}

#[tokio::test]
async fn enrolls_a_fleet_and_reuses_the_cache() {
    callhome_sim::install_crypto_provider();
    let app = TestApp::spawn().await;
    let token = app.user_token("simop", "operator").await;
    let imeis = imeis(5);
    // One device exists already: its registration answers 409, which is fine.
    let (status, body) = app
        .post(
            "/api/v1/devices",
            &token,
            json!({"imei": imeis[2].as_str()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let cache = tempfile::tempdir().unwrap();
    let enroller = Enroller::new(&app.base, &token, cache.path(), None).unwrap();
    let ca = enroller.ca_certificate().await.unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let creds = enroller
        .enroll_all(&imeis, 2, |_| {
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(creds.len(), 5);
    assert_eq!(done.into_inner(), 5);

    let base = TlsBase::new(&ca).unwrap();
    for (imei, c) in imeis.iter().zip(&creds) {
        let info = callhome_ca::inspect_certificate(&c.cert_pem).unwrap();
        assert_eq!(info.common_name.as_deref(), Some(imei.as_str()));
        base.for_device(c).expect("usable TLS identity");
        let key = cache.path().join(format!("{imei}.key.pem"));
        assert!(cache.path().join(format!("{imei}.crt.pem")).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let (status, devices) = app
            .get(&format!("/api/v1/devices/{imei}/certificates"), &token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(devices.as_array().unwrap().len(), 1);
    }
    assert_eq!(
        std::fs::read_to_string(cache.path().join(CA_FILE)).unwrap(),
        ca
    );

    // A restart reuses the cache: no new certificates are issued.
    let again = Enroller::new(&app.base, &token, cache.path(), None).unwrap();
    again.ca_certificate().await.unwrap();
    let creds2 = again.enroll_all(&imeis, 4, |_| {}).await.unwrap();
    for (a, b) in creds.iter().zip(&creds2) {
        assert_eq!(a.cert_pem, b.cert_pem);
    }
    let (_, certs) = app
        .get(
            &format!("/api/v1/devices/{}/certificates", imeis[0]),
            &token,
        )
        .await;
    assert_eq!(certs.as_array().unwrap().len(), 1);

    // An API key works the same way (as a bearer credential).
    let admin = app.admin_token().await;
    let (status, key) = app
        .post(
            "/api/v1/api-keys",
            &admin,
            json!({"name": "simulator", "role": "operator"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let api_key = key["key"].as_str().unwrap();
    let other_cache = tempfile::tempdir().unwrap();
    let with_key = Enroller::new(&app.base, api_key, other_cache.path(), None).unwrap();
    with_key.ca_certificate().await.unwrap();
    let fresh = Imei::from_body("35693803559999").unwrap();
    let c = with_key.enroll(&fresh).await.unwrap();
    base.for_device(&c).unwrap();

    // A reader may not enroll: the API's 403 is reported, not retried forever.
    let reader = app.user_token("simreader", "reader").await;
    let denied = Enroller::new(&app.base, &reader, other_cache.path(), None).unwrap();
    let err = denied
        .enroll(&Imei::from_body("35693803558888").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, SimError::Api { status: 403, .. }), "{err}");
    app.stop().await;
}
