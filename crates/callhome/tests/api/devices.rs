use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, imei};

#[tokio::test]
async fn device_crud() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let id = imei(1);
    let (status, created) = app
        .post(
            "/api/v1/devices",
            &ops,
            json!({"imei": id, "name": "Substation 4", "tags": ["region:north", "pilot"], "model": "199801422"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["imei"], id);
    assert_eq!(created["tags"], json!(["region:north", "pilot"]));
    let (status, mut got) = app.get(&format!("/api/v1/devices/{id}"), &ops).await;
    assert_eq!(status, StatusCode::OK);
    // The one-device view adds the active certificate (none yet).
    assert_eq!(got["certificate"], json!(null), "{got}");
    got.as_object_mut().unwrap().remove("certificate");
    assert_eq!(got, created);

    let (status, dup) = app.post("/api/v1/devices", &ops, json!({"imei": id})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(dup["detail"].as_str().unwrap().contains(&id));

    let (status, patched) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(&ops),
            Some(json!({"name": null, "tags": ["region:south"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], json!(null));
    assert_eq!(patched["model"], "199801422", "absent members are kept");
    assert_eq!(patched["tags"], json!(["region:south"]));

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&format!("/api/v1/devices/{id}"), &ops).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "urn:callhome:problem:not-found");
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn bad_imeis_are_rejected_naming_the_field() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let valid = imei(7);
    let bad_luhn = format!("{}{}", &valid[..14], (valid.as_bytes()[14] - b'0' + 1) % 10);
    let cases = [
        ("35693803000007", "15 digits"),    // 14 digits
        ("3569380300000700", "15 digits"),  // 16 digits
        ("35693803000A007", "only digits"), // letter
        (bad_luhn.as_str(), "check digit"), // wrong check digit
        ("", "15 digits"),
    ];
    for (bad, why) in cases {
        let (status, body) = app
            .post("/api/v1/devices", &ops, json!({"imei": bad}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["type"], "urn:callhome:problem:validation-error");
        assert_eq!(body["errors"][0]["field"], "imei", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains(why),
            "{bad}: {body}"
        );
    }
    // Also in the path.
    let (status, body) = app.get("/api/v1/devices/12345", &ops).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "imei");
    // Other fields.
    let (status, body) = app
        .post(
            "/api/v1/devices",
            &ops,
            json!({"imei": valid, "tags": ["ok", "not ok"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "tags[1]");
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_problems_not_crashes() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    // Unknown member.
    let (status, body) = app
        .post(
            "/api/v1/devices",
            &ops,
            json!({"imei": imei(1), "colour": "red"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    // Wrong type.
    let (status, body) = app
        .post("/api/v1/devices", &ops, json!({"imei": 356938035643809u64}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Malformed JSON.
    let resp = app
        .client
        .post(app.url("/api/v1/devices"))
        .bearer_auth(&ops)
        .header("content-type", "application/json")
        .body("{\"imei\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // Missing content type.
    let resp = app
        .client
        .post(app.url("/api/v1/devices"))
        .bearer_auth(&ops)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Oversize body.
    let big = format!(
        "{{\"imei\":\"{}\",\"name\":\"{}\"}}",
        imei(1),
        "x".repeat(2 * 1024 * 1024)
    );
    let resp = app
        .client
        .post(app.url("/api/v1/devices"))
        .bearer_auth(&ops)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Bad query parameters and cursors.
    let (status, _) = app.get("/api/v1/devices?limit=0", &ops).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app.get("/api/v1/devices?limit=abc", &ops).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get("/api/v1/devices?cursor=%%%", &ops).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get("/api/v1/devices?nonsense=1", &ops).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The server is still fine.
    assert_eq!(app.get("/api/v1/devices", &ops).await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn list_filters_and_cursor_pagination() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    for n in 0..12 {
        let tags = if n < 5 {
            json!(["north"])
        } else {
            json!(["south"])
        };
        let (status, _) = app
            .post(
                "/api/v1/devices",
                &ops,
                json!({"imei": imei(n), "name": format!("Meter {n}"), "tags": tags}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut all = Vec::new();
    let mut path = "/api/v1/devices?limit=5".to_owned();
    loop {
        let (status, page) = app.get(&path, &ops).await;
        assert_eq!(status, StatusCode::OK);
        all.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["imei"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/devices?limit=5&cursor={c}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..12).map(imei).collect();
    expected.sort();
    assert_eq!(all, expected);
    let (_, north) = app.get("/api/v1/devices?tag=north", &ops).await;
    assert_eq!(north["items"].as_array().unwrap().len(), 5);
    let (_, hit) = app.get("/api/v1/devices?q=meter%2011", &ops).await;
    assert_eq!(hit["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}
