use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_PASSWORD, TestApp};

#[tokio::test]
async fn token_issue_and_rejections() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    let (status, me) = app.get("/api/v1/auth/whoami", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"name": "admin", "kind": "user", "role": "admin"})
    );

    // Wrong password, unknown user: the same 401.
    for (u, p) in [
        ("admin", "wrong-password-123"),
        ("nobody", "whatever-password"),
    ] {
        let (status, body) = app
            .call(
                Method::POST,
                "/api/v1/auth/token",
                None,
                Some(json!({"username": u, "password": p})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["type"], "urn:callhome:problem:unauthorized");
        assert_eq!(body["detail"], "wrong user name or password");
    }
    // Neither credential form.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // No token, malformed header, garbage token.
    let (status, _) = app.call(Method::GET, "/api/v1/devices", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = app
        .client
        .get(app.url("/api/v1/devices"))
        .header("authorization", "Basic YWRtaW46eA==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, _) = app.get("/api/v1/devices", "not.a.jwt").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

fn sign(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn expired_and_forged_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // Read the claims of a real token, then mint variants of them.
    use base64::Engine as _;
    let key_text = std::fs::read_to_string(app.data_dir.join("jwt.key")).unwrap();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(key_text.trim())
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["callhome"]);
    let claims: serde_json::Value = jsonwebtoken::decode(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(&secret),
        &validation,
    )
    .unwrap()
    .claims;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 600);
    let (status, body) = app
        .get("/api/v1/auth/whoami", &sign(expired, &secret))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "the access token has expired");

    let forged = sign(claims.clone(), b"some-other-key-of-32-bytes-000000");
    let (status, body) = app.get("/api/v1/auth/whoami", &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "the access token's signature is not valid");

    // The same claims signed with the real key still work: the rejections above are
    // about expiry and signature, nothing else.
    let (status, _) = app.get("/api/v1/auth/whoami", &sign(claims, &secret)).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn roles_are_enforced() {
    let app = TestApp::spawn().await;
    let reader = app.user_token("reading-centre", "reader").await;
    let operator = app.user_token("ops", "operator").await;
    // Reader may read devices but not create them.
    let (status, _) = app.get("/api/v1/devices", &reader).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post(
            "/api/v1/devices",
            &reader,
            json!({"imei": crate::helpers::imei(1)}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["type"], "urn:callhome:problem:forbidden");
    assert!(
        body["detail"].as_str().unwrap().contains("operator role"),
        "{body}"
    );
    // Operator may create devices but not users or read the audit log.
    let (status, _) = app
        .post(
            "/api/v1/devices",
            &operator,
            json!({"imei": crate::helpers::imei(1)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            "/api/v1/users",
            &operator,
            json!({"username": "x", "password": "long-enough-pass", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.get("/api/v1/audit", &operator).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test]
async fn users_disable_and_password_rules() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (status, body) = app
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "bob", "password": "short", "role": "operator"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "password");
    let (status, body) = app
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "bob", "password": "long-enough-pass", "role": "root"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "role");
    let bob = app.user_token("bob", "operator").await;
    let (status, _) = app
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "bob", "password": "long-enough-pass", "role": "reader"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/v1/users/bob",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled"], true);
    // The existing token stops working and login is refused.
    let (status, _) = app.get("/api/v1/devices", &bob).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "bob", "password": "bob-password-long"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "user bob is disabled");
    // An admin cannot lock itself out.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/api/v1/users/admin",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, users) = app.get("/api/v1/users", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(users.as_array().unwrap().len(), 2);
    assert!(
        users.to_string().find("password").is_none(),
        "no password material in user views"
    );
    app.stop().await;
}

#[tokio::test]
async fn api_keys_as_bearer_and_exchanged() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (status, created) = app
        .post(
            "/api/v1/api-keys",
            &admin,
            json!({"name": "reading centre", "role": "reader"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("chk_"));
    // Directly as bearer.
    let (status, me) = app.get("/api/v1/auth/whoami", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["role"], "reader");
    assert_eq!(me["name"], "apikey:reading centre");
    // Exchanged for a token.
    let (status, tok) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"api_key": key})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = tok["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/api/v1/auth/whoami", &token).await.0,
        StatusCode::OK
    );
    // A tampered key fails.
    let mut bad = key.clone();
    bad.pop();
    bad.push(if key.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        app.get("/api/v1/auth/whoami", &bad).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The listing never shows the secret.
    let (_, list) = app.get("/api/v1/api-keys", &admin).await;
    assert!(!list.to_string().contains(&key));
    assert!(list[0]["last_used_at"].is_string());
    // Revocation stops both the key and tokens minted from it.
    let id = created["id"].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/auth/whoami", &key).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/v1/auth/whoami", &token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.stop().await;
}
