//! `TestApp`: the real server started in-process on port 0, with its own data directory and
//! database (a SQLite file; a private PostgreSQL schema when `TEST_DATABASE_URL` is set and
//! `CALLHOME_TEST_API_BACKEND=postgres`), and a client to call it.

use std::path::PathBuf;

use callhome::config::{Overrides, Settings};
use callhome::server::{self, RunningServer};
use callhome_store::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

pub struct TestApp {
    pub base: String,
    pub mqtt: std::net::SocketAddr,
    pub tunnel: std::net::SocketAddr,
    /// The device-facing HTTPS listener (firmware downloads).
    pub device_http: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    server: Option<RunningServer>,
    settings: Settings,
    _dir: tempfile::TempDir,
    db: Option<TestDatabase>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the server with settings adjusted by `tweak`.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let db = if std::env::var("CALLHOME_TEST_API_BACKEND").as_deref() == Ok("postgres") {
            TestDatabase::postgres_from_env()
                .await
                .expect("postgres schema")
        } else {
            None
        };
        let mut settings = Settings::resolve(&Overrides {
            data_dir: Some(data_dir.clone()),
            database_url: db.as_ref().map(|d| d.url.clone().into()),
            http: Some("127.0.0.1:0".parse().unwrap()),
            mqtt: Some("127.0.0.1:0".parse().unwrap()),
            tunnel: Some("127.0.0.1:0".parse().unwrap()),
            device_http: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        })
        .expect("settings");
        settings.admin_password = Some(SecretString::from(ADMIN_PASSWORD));
        tweak(&mut settings);
        let server = server::start(&settings).await.expect("server starts");
        Self::running(server, settings, dir, db)
    }

    fn running(
        server: RunningServer,
        settings: Settings,
        dir: tempfile::TempDir,
        db: Option<TestDatabase>,
    ) -> Self {
        Self {
            base: format!("http://{}", server.http_addr),
            mqtt: server.mqtt_addr,
            tunnel: server.tunnel_addr,
            device_http: server.device_http_addr,
            client: reqwest::Client::new(),
            data_dir: settings.data_dir.clone(),
            server: Some(server),
            settings,
            _dir: dir,
            db,
        }
    }

    /// A second node on the same database, with a copy of this node's CA, token key and
    /// master key (what several nodes share), on ports of its own.
    pub async fn spawn_node_sharing(&self) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        copy_tree(&self.data_dir.join("ca"), &data_dir.join("ca"));
        for f in ["jwt.key", "master.key"] {
            if self.data_dir.join(f).exists() {
                std::fs::copy(self.data_dir.join(f), data_dir.join(f)).unwrap();
            }
        }
        let mut settings = self.settings.clone();
        settings.data_dir = data_dir.clone();
        settings.http = "127.0.0.1:0".parse().unwrap();
        settings.mqtt = "127.0.0.1:0".parse().unwrap();
        settings.tunnel = "127.0.0.1:0".parse().unwrap();
        settings.device_http = "127.0.0.1:0".parse().unwrap();
        settings.gateway.node_id = format!("{}-b", settings.gateway.node_id);
        let server = server::start(&settings).await.expect("second node starts");
        Self::running(server, settings, dir, None)
    }

    /// Stops the server and starts it again on the same data directory, database and
    /// ports (so that modems reconnect to it).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        self.settings.http = self
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("bound address");
        self.settings.mqtt = self.mqtt;
        self.settings.tunnel = self.tunnel;
        self.settings.device_http = self.device_http;
        let server = server::start(&self.settings)
            .await
            .expect("server restarts");
        self.base = format!("http://{}", server.http_addr);
        self.mqtt = server.mqtt_addr;
        self.tunnel = server.tunnel_addr;
        self.device_http = server.device_http_addr;
        self.server = Some(server);
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        if let Some(db) = self.db.take() {
            db.cleanup().await.expect("drop schema");
        }
    }

    /// The root fingerprint the server's banner shows.
    pub fn ca_fingerprint(&self) -> String {
        self.server
            .as_ref()
            .expect("server running")
            .ca_fingerprint
            .clone()
    }

    /// The body of an unauthenticated GET of `path`, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The running server's store (to break it on purpose, or to read what it wrote).
    pub fn store(&self) -> std::sync::Arc<dyn callhome_store::Store> {
        self.server.as_ref().expect("server running").store.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and body
    /// (parsed as JSON when it is JSON, else as a string value).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp.text().await.expect("body");
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                ctype, "application/problem+json",
                "errors are problem documents: {status} {text}"
            );
        }
        let value = if ctype.contains("json") && !text.is_empty() {
            serde_json::from_str(&text).expect("valid JSON")
        } else {
            Value::String(text)
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn token(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/token",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.token("admin", ADMIN_PASSWORD).await
    }

    /// Creates a user with `role` and returns a token for it.
    pub async fn user_token(&self, username: &str, role: &str) -> String {
        let admin = self.admin_token().await;
        let password = format!("{username}-password-long");
        let (status, body) = self
            .post(
                "/api/v1/users",
                &admin,
                json!({"username": username, "password": password, "role": role}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.token(username, &password).await
    }
}

/// A valid IMEI built from a 14-digit body.
pub fn imei(n: u64) -> String {
    callhome_core::Imei::from_body(&format!("35693803{n:06}"))
        .unwrap()
        .to_string()
}

/// A device's key and certificate, and the CA certificate.
pub struct Enrolled {
    pub imei: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub serial: String,
}

impl TestApp {
    /// Registers a device and has its CSR signed.
    pub async fn enroll(&self, token: &str, imei: &str) -> Enrolled {
        let (status, body) = self
            .post("/api/v1/devices", token, json!({"imei": imei}))
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::CONFLICT,
            "{body}"
        );
        let (key_pem, csr) = callhome_ca::generate_key_and_csr(imei).unwrap();
        let (status, signed) = self
            .post(
                &format!("/api/v1/devices/{imei}/certificate"),
                token,
                json!({"csr": csr}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{signed}");
        Enrolled {
            imei: imei.to_owned(),
            key_pem,
            cert_pem: signed["certificate"].as_str().unwrap().to_owned(),
            ca_pem: signed["ca_chain"].as_str().unwrap().to_owned(),
            serial: signed["serial"].as_str().unwrap().to_owned(),
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
