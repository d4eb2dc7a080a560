//! `callhome serve`: initialise the data directory on first start, open the store, load the
//! CA, bind the listeners and run until shut down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use callhome_api::{AppState, TokenKeys};
use callhome_ca::Authority;
use callhome_core::Role;
use callhome_gateway::{EventBus, Gateway};
use callhome_pki::CertificateService;
use callhome_store::{MasterKey, NewUser, OpenOptions, Store, StoreError};
use callhome_tunnel::{Tunnel, TunnelConfig};
use rand::RngCore as _;
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::supervisor::Supervisor;

/// File in the data directory holding the generated admin password (0600).
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
/// File in the data directory holding the access-token signing key (0600).
pub const JWT_KEY_FILE: &str = "jwt.key";
/// File in the data directory holding the master key secret Config.txt values are encrypted
/// with at rest (0600; unused when `CALLHOME_MASTER_KEY` is set).
pub const MASTER_KEY_FILE: &str = "master.key";
/// Subdirectory holding the CA and server key material.
pub const CA_DIR: &str = "ca";
/// Firmware files, content-addressed by SHA-256, under the data directory.
pub const FIRMWARE_DIR: &str = "firmware";

/// What first start did about the admin account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// Users already existed.
    Existing,
    /// Created with the password from `CALLHOME_ADMIN_PASSWORD` or the settings file.
    CreatedWithGivenPassword,
    /// Created with a generated password (shown once, and written to the file).
    CreatedWithGeneratedPassword(String),
}

/// A running server.
pub struct RunningServer {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound modem gateway address.
    pub mqtt_addr: SocketAddr,
    /// Bound tunnel address.
    pub tunnel_addr: SocketAddr,
    /// Bound device-facing HTTPS address (firmware downloads).
    pub device_http_addr: SocketAddr,
    /// The device-facing listener as modems reach it (`https://host:port`).
    pub device_http_url: String,
    /// The modem gateway.
    pub gateway: Gateway,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The store, for in-process tests and maintenance.
    pub store: Arc<dyn Store>,
    /// What happened to the admin account.
    pub admin: AdminBootstrap,
    /// SHA-256 fingerprint of the root certificate modems trust (the first certificate
    /// `GET /api/v1/ca/certificate` serves).
    pub ca_fingerprint: String,
    /// The shutdown token and every long-lived task.
    tasks: Supervisor,
}

impl RunningServer {
    /// Token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token().clone()
    }

    /// Stops the server and waits for every listener to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.tasks.token().cancel();
        self.wait().await
    }

    /// Waits until the server stops: after the shutdown token is cancelled, or after the
    /// first long-lived task failed (then that task's error is returned).
    pub async fn wait(self) -> anyhow::Result<()> {
        let stopped = self.tasks.wait().await;
        self.store.close().await;
        stopped
    }
}

/// Initialises what is missing and starts serving. Listeners bind to the configured
/// addresses (port 0 picks a free port; the bound address is in the result).
pub async fn start(settings: &Settings) -> anyhow::Result<RunningServer> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_open_file_limit();
    let data_dir = settings.data_dir.clone();
    create_private_dir(&data_dir)?;
    crate::permissions::enforce(
        &data_dir,
        &settings.database_url,
        settings.strict_permissions,
    )?;

    let master_key = load_master_key(settings, &data_dir)?;
    let store = callhome_store::open(
        &settings.database_url,
        &OpenOptions {
            master_key: Some(master_key),
            ..OpenOptions::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "opening database {}",
            callhome_store::redact_url(&settings.database_url)
        )
    })?;

    // The device-facing HTTPS listener: bound before the CA is loaded, which names its CRL
    // URL in device certificates, and before the job engine starts, which tells modems its
    // address.
    let device_listener = TcpListener::bind(settings.device_http)
        .await
        .with_context(|| {
            format!(
                "binding the device HTTPS listener to {}",
                settings.device_http
            )
        })?;
    let device_http_addr = device_listener.local_addr()?;
    let device_host = match settings.public_hosts.first() {
        Some(h) => h.clone(),
        None if !device_http_addr.ip().is_unspecified() => device_http_addr.ip().to_string(),
        None => "localhost".to_owned(),
    };
    let device_host = if device_host.contains(':') {
        format!("[{device_host}]")
    } else {
        device_host
    };
    let device_http_url = format!(
        "https://{device_host}:{}",
        settings
            .device_http_public_port
            .unwrap_or(device_http_addr.port())
    );
    let ca_dir = data_dir.join(CA_DIR);
    let authority = Authority::load_or_init(&ca_dir, &settings.ca)
        .context("loading the certificate authority")?;
    let ca_fingerprint = authority
        .issuing_cas()
        .first()
        .map(|ca| ca.root_fingerprint_sha256.clone())
        .unwrap_or_default();
    authority.set_crl_base_url(&format!("{device_http_url}/crl"));
    let certs = Arc::new(
        CertificateService::new(
            authority,
            store.clone(),
            callhome_pki::ServerTlsFiles {
                dir: ca_dir.clone(),
                hosts: settings.public_hosts.clone(),
            },
        )
        .await
        .context("loading the server certificate and building the certificate revocation list")?,
    );

    let jwt_secret = load_or_create_secret(&data_dir.join(JWT_KEY_FILE))?;
    let admin = bootstrap_admin(&store, settings, &data_dir).await?;

    let shutdown = CancellationToken::new();
    let tasks = Supervisor::new(shutdown.clone());
    let events = Arc::new(EventBus::new());
    let gateway = Gateway::new(
        settings.gateway.clone(),
        store.clone(),
        certs.clone(),
        events,
        shutdown.clone(),
    )
    .context("setting up the modem gateway")?;
    let mqtt = TcpListener::bind(settings.mqtt)
        .await
        .with_context(|| format!("binding the modem gateway to {}", settings.mqtt))?;
    let mqtt_addr = mqtt.local_addr()?;
    let gw = gateway.clone();
    tasks.spawn("modem gateway", async move { Ok(gw.run(mqtt).await?) });
    tracing::info!(%mqtt_addr, "modem gateway (MQTT over mutual TLS) listening");
    let tunnel_listener = TcpListener::bind(settings.tunnel)
        .await
        .with_context(|| format!("binding the tunnel to {}", settings.tunnel))?;
    let tunnel_addr = tunnel_listener.local_addr()?;
    let public_host = match settings.public_hosts.first() {
        Some(h) => h.clone(),
        None if !tunnel_addr.ip().is_unspecified() => tunnel_addr.ip().to_string(),
        None => {
            tracing::warn!(
                "no --public-host: rendezvous sessions tell modems to dial localhost, which only a modem on this machine can reach"
            );
            "localhost".to_owned()
        }
    };
    let tunnel = Tunnel::new(
        TunnelConfig {
            public_host,
            public_port: settings.tunnel_public_port.unwrap_or(tunnel_addr.port()),
            id_timeout: settings.tunnel_id_timeout,
            max_timeout_s: settings.tunnel_max_session_timeout_s,
            max_connections_per_address: settings.tunnel_max_connections_per_address,
            max_handshakes_per_address: settings.tunnel_max_handshakes_per_address,
            ..TunnelConfig::default()
        },
        store.clone(),
        certs.clone(),
        gateway.clone(),
        shutdown.clone(),
    );
    let tn = tunnel.clone();
    tasks.spawn("tunnel", async move { Ok(tn.run(tunnel_listener).await?) });
    tracing::info!(%tunnel_addr, "meter-reading tunnel listening");
    let refresher = certs
        .clone()
        .refresh_periodically(std::time::Duration::from_secs(24 * 3600), shutdown.clone());
    tasks.spawn("CRL refresher", async move {
        refresher.await;
        Ok(())
    });
    let renewer = certs
        .clone()
        .renew_server_identity_periodically(settings.server_certificate_check, shutdown.clone());
    tasks.spawn("server certificate renewer", async move {
        renewer.await;
        Ok(())
    });

    let blobs: Arc<dyn callhome_firmware::BlobStore> = Arc::new(
        callhome_firmware::FsBlobStore::open(data_dir.join(FIRMWARE_DIR))
            .await
            .context("opening the firmware store")?,
    );
    let device_tls = Arc::new(callhome_ca::tls::SharedServerConfig::new(
        certs
            .server_tls(callhome_ca::tls::ClientAuth::Optional)
            .context("building the device listener's TLS configuration")?,
    ));
    let keeper = certs.keep_tls_current(
        callhome_ca::tls::ClientAuth::Optional,
        device_tls.clone(),
        shutdown.clone(),
    );
    tasks.spawn("device listener TLS refresher", async move {
        keeper.await?;
        Ok(())
    });
    let limits = &settings.device_http_limits;
    let device_settings = callhome_devicehttp::DeviceHttpSettings {
        listener: callhome_net::TlsListenerConfig {
            name: "device_http",
            handshake_timeout: limits.handshake_timeout,
            max_connections: limits.max_connections,
            max_handshakes: limits.max_connections.clamp(1, 1024),
            max_connections_per_address: limits.max_connections_per_address,
            max_handshakes_per_address: limits.max_handshakes_per_address,
        },
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        ..callhome_devicehttp::DeviceHttpSettings::default()
    };
    let device_routes = callhome_api::device::router(callhome_api::device::DeviceState {
        store: store.clone(),
        blobs: blobs.clone(),
        base_url: device_http_url.clone(),
        downloads: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_downloads)),
        certs: certs.clone(),
        passwords: gateway.passwords().clone(),
        // Failed EST bootstrap secrets back off like failed API logins (own counters).
        est_throttle: Arc::new(callhome_api::throttle::LoginThrottle::new(
            settings.login_throttle.clone(),
        )),
        events: gateway.events().clone(),
    });
    let device_http =
        callhome_devicehttp::DeviceHttp::new(device_settings, device_tls, device_routes);
    let device_connections = device_http.live();
    {
        // Device-listener connections whose certificate a new CRL revokes end at once.
        let (certs, live, token) = (certs.clone(), device_connections.clone(), shutdown.clone());
        let mut changes = certs.subscribe();
        tasks.spawn("device listener revocations", async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    changed = changes.changed() => if changed.is_err() { return Ok(()) },
                }
                live.revoke(&certs.revoked_serials(), None);
            }
        });
    }
    let token = shutdown.clone();
    tasks.spawn("device HTTPS listener", async move {
        Ok(device_http.run(device_listener, token).await?)
    });
    tracing::info!(%device_http_addr, url = %device_http_url, "device HTTPS listener (firmware downloads, EST enrolment)");

    let config = callhome_fleet::ConfigService::new(
        store.clone(),
        gateway.clone(),
        Arc::new(settings.dialect.clone()),
    );
    let mut engine_settings = callhome_fleet::EngineSettings {
        node_id: settings.gateway.node_id.clone(),
        ..settings.jobs.clone()
    };
    engine_settings.firmware.base_url = Some(device_http_url.clone());
    let jobs = callhome_fleet::JobEngine::new(
        config.clone(),
        gateway.events().clone(),
        engine_settings,
        shutdown.clone(),
    );
    let taken = jobs.start().await.context("resuming jobs")?;
    if taken > 0 {
        tracing::info!(jobs = taken, "unfinished jobs resumed");
    }
    if let Some(d) = settings.drift.clone() {
        let cfg = config.clone();
        let token = shutdown.clone();
        tasks.spawn("drift checker", async move {
            callhome_fleet::drift::run(cfg, d, token).await;
            Ok(())
        });
    }
    let events = gateway.events().clone();
    let cert_watch = Arc::new(callhome_pki::ExpiryWatch::new(
        store.clone(),
        settings.certificates.clone(),
        Arc::new(move |imei, payload| {
            events.publish(Some(imei), payload);
        }),
    ));
    let watch = cert_watch.clone();
    let token = shutdown.clone();
    tasks.spawn("certificate expiry watch", async move {
        watch.run(token).await;
        Ok(())
    });
    let pruner = crate::retention::Pruner::new(store.clone(), settings.retention.clone());
    let token = shutdown.clone();
    tasks.spawn("retention pruner", pruner.run(token));
    let engine = jobs.clone();
    let token = shutdown.clone();
    tasks.spawn("job engine", async move {
        token.cancelled().await;
        engine.stopped().await;
        Ok(())
    });

    let state = AppState {
        store: store.clone(),
        certs,
        tokens: TokenKeys::from_secret(&jwt_secret, settings.token_ttl),
        metrics: callhome_api::metrics::handle(),
        gateway: gateway.clone(),
        tunnel,
        config,
        jobs,
        shutdown: shutdown.clone(),
        streams: callhome_api::streams::PrincipalStreams::default(),
        metrics_token: settings
            .metrics_token
            .as_ref()
            .map(|t| callhome_api::MetricsToken::new(t.expose_secret())),
        stream_limits: settings.stream_limits.clone(),
        login_throttle: Arc::new(callhome_api::throttle::LoginThrottle::new(
            settings.login_throttle.clone(),
        )),
        cert_watch,
        firmware: callhome_api::routes::firmware::FirmwareRepo {
            blobs,
            keys: Arc::new(settings.firmware.signing_keys.clone()),
            require_signature: settings.firmware.require_signature,
            max_upload_bytes: settings.firmware.max_upload_bytes,
            models: Arc::new(settings.firmware.models.clone()),
        },
        device_connections,
    };

    let http = TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding the HTTP API to {}", settings.http))?;
    let http_addr = http.local_addr()?;
    // Changes announced by the other nodes sharing the database (PostgreSQL LISTEN): a
    // revocation or a disabled device ends connections here within a second. The daily CRL
    // refresh stays as the fallback for announcements lost while the listener reconnects
    // (a Resync re-reads the CRL at once).
    if let Some(mut changes) = store
        .changes()
        .await
        .context("listening for the other nodes' changes")?
    {
        let (state, token) = (state.clone(), shutdown.clone());
        tasks.spawn("cluster changes", async move {
            loop {
                let change = tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    c = changes.recv() => match c {
                        Some(c) => c,
                        None => return Ok(()),
                    },
                };
                tracing::debug!(%change, "cluster change");
                match change {
                    callhome_core::ClusterChange::Crl | callhome_core::ClusterChange::Resync => {
                        if let Err(e) = state.certs.refresh_crl().await {
                            tracing::error!(error = %e, "CRL refresh after a cluster change failed");
                        }
                    }
                    callhome_core::ClusterChange::DeviceAccess(imei) => {
                        // Only what is still not allowed: the device may be enabled again.
                        let allowed = matches!(state.store.get_device(&imei).await, Ok(d) if !d.disabled);
                        if !allowed {
                            state.end_device_access(&imei).await;
                        }
                    }
                }
            }
        });
    }
    let app = callhome_api::app(state);
    let token = shutdown.clone();
    let drain = token.clone();
    let limits = settings.http_limits.clone();
    tasks.spawn("HTTP API server", async move {
        let server =
            callhome_api::serve(http, app, limits, async move { token.cancelled().await });
        tokio::pin!(server);
        // Graceful: in-flight requests finish; but a client that never lets go does not
        // hold the process for more than a few seconds after shutdown begins.
        tokio::select! {
            r = &mut server => Ok(r?),
            () = async { drain.cancelled().await; tokio::time::sleep(std::time::Duration::from_secs(10)).await } => {
                tracing::warn!("HTTP connections still open 10 s after shutdown; closing them");
                Ok(())
            }
        }
    });
    tracing::info!(%http_addr, "HTTP API listening");

    Ok(RunningServer {
        http_addr,
        mqtt_addr,
        tunnel_addr,
        device_http_addr,
        device_http_url,
        gateway,
        data_dir,
        store,
        admin,
        ca_fingerprint,
        tasks,
    })
}

/// Raises the soft open-file limit to the hard limit where the system allows it (every
/// modem, tunnel and HTTP connection holds a descriptor), and logs the limit in force.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            metrics::gauge!("callhome_open_files_limit").set(limit as f64);
            tracing::info!(limit, "open-file limit (RLIMIT_NOFILE) in force");
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit (RLIMIT_NOFILE)")
        }
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    Ok(())
}

/// The master key for secret values at rest: `CALLHOME_MASTER_KEY` when set (base64 of 32
/// bytes), else `master.key` in the data directory, created (0600) on first start. Errors
/// never quote the key.
fn load_master_key(settings: &Settings, data_dir: &Path) -> anyhow::Result<MasterKey> {
    if let Some(k) = &settings.master_key {
        return MasterKey::from_base64(k.expose_secret())
            .map_err(|e| anyhow::anyhow!("CALLHOME_MASTER_KEY: {e}"));
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return MasterKey::from_base64(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = MasterKey::generate();
    callhome_ca::write_secret_file(&path, format!("{}\n", key.to_base64()).as_bytes())?;
    tracing::info!(path = %path.display(), "master key for secrets at rest created; back it up with the database");
    Ok(key)
}

/// Reads a 32-byte secret (base64) from `path`, creating it (0600) on first start.
fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = b64
            .decode(text.trim())
            .with_context(|| format!("{} is not base64", path.display()))?;
        anyhow::ensure!(
            bytes.len() >= 32,
            "{} holds fewer than 32 bytes",
            path.display()
        );
        return Ok(bytes);
    }
    let mut bytes = vec![0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    callhome_ca::write_secret_file(path, format!("{}\n", b64.encode(&bytes)).as_bytes())?;
    Ok(bytes)
}

async fn bootstrap_admin(
    store: &Arc<dyn Store>,
    settings: &Settings,
    data_dir: &Path,
) -> anyhow::Result<AdminBootstrap> {
    if !store.list_users().await?.is_empty() {
        return Ok(AdminBootstrap::Existing);
    }
    let (password, generated) = match &settings.admin_password {
        Some(p) => (p.expose_secret().to_owned(), false),
        None => (generate_password(), true),
    };
    callhome_api::auth::check_password_policy(&password)
        .map_err(|e| anyhow::anyhow!("CALLHOME_ADMIN_PASSWORD: {e}"))?;
    let password_hash = callhome_api::auth::hash_password(
        &callhome_gateway::PasswordPool::new(1, std::time::Duration::from_secs(60)),
        password.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    match store
        .create_user(&NewUser {
            username: "admin".to_owned(),
            password_hash,
            role: Role::Admin,
        })
        .await
    {
        Ok(_) => {}
        // Another node created it first.
        Err(StoreError::Conflict { .. }) => return Ok(AdminBootstrap::Existing),
        Err(e) => return Err(e.into()),
    }
    if generated {
        callhome_ca::write_secret_file(
            &data_dir.join(ADMIN_PASSWORD_FILE),
            format!("{password}\n").as_bytes(),
        )?;
        Ok(AdminBootstrap::CreatedWithGeneratedPassword(password))
    } else {
        Ok(AdminBootstrap::CreatedWithGivenPassword)
    }
}

/// A random 24-character password of letters and digits (about 142 bits).
pub fn generate_password() -> String {
    use rand::distr::{Alphanumeric, SampleString as _};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}
