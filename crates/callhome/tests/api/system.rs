use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_PASSWORD, TestApp, imei};

#[tokio::test]
async fn health_readiness_metrics_docs() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, spec) = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(spec["paths"]["/api/v1/devices"]["post"].is_object());
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    let (status, body) = app.call(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "urn:callhome:problem:not-found");
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
        metrics.contains("callhome_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/healthz\""), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn every_state_change_is_audited() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (status, _) = app
        .post("/api/v1/devices", &admin, json!({"imei": imei(2)}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post("/api/v1/devices", &admin, json!({"imei": "123"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let _ = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "mallory", "password": "guess-guess-guess"})),
        )
        .await;
    let (status, log) = app.get("/api/v1/audit", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let items = log["items"].as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        items
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in {log}"))
    };
    let created = find("POST /api/v1/devices", "success");
    assert_eq!(created["actor"], "admin");
    assert_eq!(created["target"], imei(2));
    assert_eq!(created["status"], 201);
    assert_eq!(created["remote_addr"], "127.0.0.1");
    assert!(created["request_id"].is_string());
    assert_eq!(find("POST /api/v1/devices", "failure")["status"], 422);
    let failed_login = find("POST /api/v1/auth/token", "failure");
    assert_eq!(failed_login["actor"], "mallory");
    assert_eq!(find("POST /api/v1/auth/token", "success")["actor"], "admin");
    // Reads are not audited.
    assert!(
        items
            .iter()
            .all(|e| !e["action"].as_str().unwrap().starts_with("GET"))
    );
    app.stop().await;
}

#[tokio::test]
async fn restart_keeps_users_devices_certificates_and_the_ca() {
    let mut app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(9);
    app.post("/api/v1/devices", &ops, json!({"imei": id, "name": "kept"}))
        .await;
    let (_k, csr) = callhome_ca::generate_key_and_csr(&id).unwrap();
    let (status, signed) = app
        .post(
            &format!("/api/v1/devices/{id}/certificate"),
            &ops,
            json!({"csr": csr}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let ca_before = app
        .client
        .get(app.url("/api/v1/ca/certificate"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jwt_key_before = std::fs::read(app.data_dir.join("jwt.key")).unwrap();

    app.restart().await;

    let ca_after = app
        .client
        .get(app.url("/api/v1/ca/certificate"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ca_before, ca_after, "same CA certificate");
    assert_eq!(
        jwt_key_before,
        std::fs::read(app.data_dir.join("jwt.key")).unwrap()
    );
    // Users (admin's configured password, the operator's own) still log in.
    let ops2 = app.token("ops", "ops-password-long").await;
    let _ = app.token("admin", ADMIN_PASSWORD).await;
    let (status, dev) = app.get(&format!("/api/v1/devices/{id}"), &ops2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dev["name"], "kept");
    let (_, certs) = app
        .get(&format!("/api/v1/devices/{id}/certificates"), &ops2)
        .await;
    assert_eq!(certs[0]["serial"], signed["serial"]);

    // Key files are private.
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["jwt.key", "ca/ca.key.pem", "ca/server.key.pem"] {
        let mode = std::fs::metadata(app.data_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    app.stop().await;
}
