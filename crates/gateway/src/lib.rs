//! The modem-facing command channel: an MQTT 3.1.1 endpoint over mutual TLS.
//!
//! Owns: the modem listener ([`Gateway::run`]); the TLS handshake with client certificates
//! checked against our CA and its CRL (rebuilt and swapped atomically when the CRL changes;
//! connections of a revoked certificate are closed at once); binding the certificate CN (the
//! IMEI) to the MQTT client id; legacy username/password modems when enabled; per-device
//! topic ACLs by construction; keepalive and QoS 0/1/2; presence; status ingestion; the
//! per-device FIFO command dispatcher with reply correlation ([`dispatch`]); the command
//! service the API calls ([`Gateway::enqueue`], [`Gateway::cancel`], [`Gateway::wait_final`]);
//! and the platform [`events`] bus.
//!
//! Must not know: HTTP, SQL (it calls `callhome-store` traits), certificate cryptography
//! (`callhome-ca` builds the rustls configs).
//!
//! Modules: [`codec`] (MQTT framing with `rumqttc::mqttbytes::v4`), `server` (TLS config, CRL
//! watch, the connection handler of the shared `callhome-net` listener), `connection` (one
//! connection), `claim` (enrolment-only connections with a claim certificate), [`dispatch`] (command correlation), `sweeper` (expiry, orphaned commands,
//! last-seen flush, status retention), `hub` (live connections), [`status`] (payload parsing),
//! [`topics`].

mod claim;
pub mod codec;
mod connection;
pub mod csr;
pub mod dispatch;
pub mod events;
mod hub;
pub mod password;
mod server;
pub mod status;
mod sweeper;
pub mod topics;

use std::sync::Arc;
use std::time::Duration;

use callhome_ca::CaError;
use callhome_ca::tls::SharedServerConfig;
use callhome_core::{AtCommand, Imei, ValidationError};
use callhome_net::TlsListener;
use callhome_pki::CertificateService;
use callhome_store::{CommandRecord, NewCommand, Store, StoreError};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use events::{Event, EventBus};
pub use password::{PasswordError, PasswordPool};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Node id, the prefix of connection ids (distinct per node when several share a database).
    pub node_id: String,
    /// TLS handshake and CONNECT must complete within this.
    pub handshake_timeout: Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Most connections at once from one address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Most TLS handshakes in progress at once from one address (IPv6: one /64).
    pub max_handshakes_per_address: usize,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_bytes: usize,
    /// Idle limit for clients with keepalive 0 (and cap on 1.5 x keepalive).
    pub max_idle: Duration,
    /// A packet write that takes longer ends the connection.
    pub write_timeout: Duration,
    /// Accept modems without a client certificate that log in with per-device credentials.
    pub allow_password_auth: bool,
    /// After a command times out, how long a reply is still taken as its late reply before
    /// the next command is sent.
    pub late_reply_grace: Duration,
    /// How long status messages are kept.
    pub status_retention: time::Duration,
    /// Most `queued` commands per device; one more is refused ([`GatewayError::QueueFull`]).
    pub max_queued_commands: usize,
    /// Largest reply accumulated for one command, bytes: a reply growing past it fails the
    /// command with the reason.
    pub max_reply_bytes: usize,
    /// Status messages stored per device per minute, on average (a token bucket); more are
    /// dropped and counted in `callhome_mqtt_status_dropped_total`.
    pub status_per_minute: u32,
    /// Status messages a device may send at once before the rate applies.
    pub status_burst: u32,
    /// Denied SUBSCRIBE filters (each audited) a connection may send; one more ends it.
    pub max_denied_filters: usize,
    /// Most password hashes (argon2, 19 MiB each) computed at once in the process, for
    /// modem and API logins together ([`PasswordPool`]).
    pub password_concurrency: usize,
    /// How long a login waits for a password-hashing slot before it is refused as busy.
    pub password_wait: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            node_id: "node1".to_owned(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 200_000,
            max_handshakes: 2048,
            max_connections_per_address: 4096,
            max_handshakes_per_address: 128,
            max_packet_bytes: 64 * 1024,
            max_idle: Duration::from_secs(1800),
            write_timeout: Duration::from_secs(30),
            allow_password_auth: false,
            late_reply_grace: Duration::from_secs(5),
            status_retention: time::Duration::days(30),
            max_queued_commands: 100,
            max_reply_bytes: 256 * 1024,
            status_per_minute: 60,
            status_burst: 20,
            max_denied_filters: 3,
            password_concurrency: 1,
            password_wait: Duration::from_secs(2),
        }
    }
}

/// Why a gateway operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No such device or command.
    #[error("{0} not found")]
    NotFound(String),
    /// Not possible in the current state.
    #[error("{0}")]
    Conflict(String),
    /// Invalid input.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// TLS configuration failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The listener failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The device's command queue is at its cap.
    #[error(
        "device {imei} already has {limit} queued commands, the limit (setting mqtt.max_queued_commands); \
         wait for them to be delivered or cancel some"
    )]
    QueueFull {
        /// Device.
        imei: Imei,
        /// The cap.
        limit: usize,
    },
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(w) => GatewayError::NotFound(w),
            StoreError::Conflict { detail: w, .. } => GatewayError::Conflict(w),
            other => GatewayError::Store(other),
        }
    }
}

/// State shared by the listener, connections, dispatchers and the sweeper.
pub(crate) struct Shared {
    cfg: GatewayConfig,
    store: Arc<dyn Store>,
    certs: Arc<CertificateService>,
    events: Arc<EventBus>,
    hub: hub::Hub,
    shutdown: CancellationToken,
    /// Enqueues of one device are serialised (striped by IMEI) so that the queue cap holds
    /// on this node.
    enqueue_locks: Vec<tokio::sync::Mutex<()>>,
    /// Each device's status-message allowance.
    status_limit: status::RateLimiter,
    passwords: PasswordPool,
}

impl Shared {
    /// Records the model and firmware version a device reported (a status message or a
    /// `VERSION` reply) and publishes `device.firmware` when they changed.
    pub(crate) async fn report_firmware(
        &self,
        imei: &Imei,
        model: Option<&str>,
        version: Option<&str>,
        source: &str,
    ) {
        if model.is_none() && version.is_none() {
            return;
        }
        match self
            .store
            .report_device_firmware(imei, model, version, source, OffsetDateTime::now_utc())
            .await
        {
            Ok(Some((previous_version, _))) => {
                tracing::info!(
                    model,
                    version,
                    previous = previous_version.as_deref(),
                    source,
                    "reported firmware changed"
                );
                self.events.publish(
                    Some(imei),
                    callhome_core::events::EventPayload::DeviceFirmware(
                        callhome_core::events::DeviceFirmware {
                            version: version.map(str::to_owned),
                            model: model.map(str::to_owned),
                            previous_version,
                        },
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not record the reported firmware"),
        }
    }
}

/// The status-message rate of `cfg`: per second, and the burst.
fn cfg_rate(cfg: &GatewayConfig) -> (f64, f64) {
    (
        f64::from(cfg.status_per_minute) / 60.0,
        f64::from(cfg.status_burst.max(1)),
    )
}

/// Stripes of [`Shared::enqueue_locks`].
const ENQUEUE_STRIPES: usize = 64;

/// A command to queue for a device.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// Device.
    pub imei: Imei,
    /// Validated command.
    pub command: AtCommand,
    /// Reply timeout per attempt.
    pub timeout: Duration,
    /// A queued command not delivered by then expires.
    pub expires_in: Duration,
    /// Attempts (1 = never re-sent after a timeout).
    pub max_attempts: u32,
    /// Who asked.
    pub created_by: String,
}

/// The command channel.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    tls: Arc<SharedServerConfig>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway that stops when `shutdown` is cancelled.
    pub fn new(
        cfg: GatewayConfig,
        store: Arc<dyn Store>,
        certs: Arc<CertificateService>,
        events: Arc<EventBus>,
        shutdown: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let cfg_copy = cfg.clone();
        let passwords = PasswordPool::new(cfg.password_concurrency, cfg.password_wait);
        let shared = Arc::new(Shared {
            cfg,
            store,
            certs,
            events,
            hub: hub::Hub::default(),
            shutdown,
            enqueue_locks: (0..ENQUEUE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            status_limit: status::RateLimiter::new(cfg_rate(&cfg_copy)),
            passwords,
        });
        let tls = Arc::new(SharedServerConfig::new(server::build_tls(&shared)?));
        Ok(Self { shared, tls })
    }

    /// Serves modems on `listener` until shutdown: marks this node's leftover connections
    /// offline, then runs the accept loop, the CRL watch and the sweeper.
    pub async fn run(&self, tcp: TcpListener) -> Result<(), GatewayError> {
        let now = OffsetDateTime::now_utc();
        let prefix = format!("{}-", self.shared.cfg.node_id);
        let stale = self.shared.store.mark_node_offline(&prefix, now).await?;
        if stale > 0 {
            tracing::info!(
                devices = stale,
                "devices left online by the previous run marked offline"
            );
        }
        let background = TaskTracker::new();
        background.spawn(server::watch_crl(self.shared.clone(), self.tls.clone()));
        background.spawn(sweeper::run(self.shared.clone()));
        background.close();
        let listener =
            TlsListener::new(server::listener_config(&self.shared.cfg), self.tls.clone());
        let connections = listener.tracker();
        let handler = server::Modems {
            shared: self.shared.clone(),
        };
        listener
            .run(tcp, self.shared.shutdown.clone(), handler)
            .await;
        self.shared.hub.kill_all();
        // Give connections a moment to record their disconnection.
        connections.close();
        if tokio::time::timeout(Duration::from_secs(5), connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "modem connections still running 5 s after shutdown; not waiting for them"
            );
        }
        background.wait().await;
        Ok(())
    }

    /// The certificate service the gateway checks client certificates with (and signs
    /// certificate requests made on the MQTT channel).
    pub fn certificates(&self) -> &Arc<CertificateService> {
        &self.shared.certs
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.shared.events
    }

    /// The process-wide bound on password hashing, shared with the HTTP API's logins.
    pub fn passwords(&self) -> &PasswordPool {
        &self.shared.passwords
    }

    /// Whether a device is connected to this node.
    pub fn is_connected(&self, imei: &Imei) -> bool {
        self.shared.hub.get(imei).is_some()
    }

    /// Ends the device's live connection, if it has one here (after it was disabled or
    /// deleted). Returns whether there was one.
    pub fn disconnect(&self, imei: &Imei) -> bool {
        match self.shared.hub.get(imei) {
            Some(s) => {
                tracing::info!(%imei, "live session ended by the platform");
                s.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// Devices connected to this node.
    pub fn connected(&self) -> usize {
        self.shared.hub.len()
    }

    /// Queues a command for a registered device and wakes its dispatcher. A device with
    /// `max_queued_commands` commands queued already gets [`GatewayError::QueueFull`] (exact on
    /// one node; nodes sharing a database may each add one at the same moment).
    pub async fn enqueue(&self, req: CommandRequest) -> Result<CommandRecord, GatewayError> {
        let device = self.shared.store.get_device(&req.imei).await?;
        if device.disabled {
            return Err(GatewayError::Conflict(format!(
                "device {} is disabled",
                req.imei
            )));
        }
        let stripe = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            req.imei.as_str().hash(&mut h);
            usize::try_from(h.finish() % ENQUEUE_STRIPES as u64).unwrap_or(0)
        };
        let _serial = self.shared.enqueue_locks[stripe].lock().await;
        let limit = self.shared.cfg.max_queued_commands;
        let queued = self.shared.store.count_queued_commands(&req.imei).await?;
        if usize::try_from(queued).unwrap_or(usize::MAX) >= limit {
            metrics::counter!("callhome_commands_refused_total", "reason" => "queue_full")
                .increment(1);
            return Err(GatewayError::QueueFull {
                imei: req.imei.clone(),
                limit,
            });
        }
        let to_ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let rec = self
            .shared
            .store
            .enqueue_command(&NewCommand {
                imei: req.imei.clone(),
                command: req.command.to_string(),
                created_by: req.created_by,
                timeout_ms: to_ms(req.timeout),
                expires_at: OffsetDateTime::now_utc()
                    + time::Duration::milliseconds(to_ms(req.expires_in)),
                max_attempts: i64::from(req.max_attempts.max(1)),
            })
            .await?;
        metrics::counter!("callhome_commands_queued_total").increment(1);
        self.shared.events.command_queued(&rec);
        if let Some(s) = self.shared.hub.get(&req.imei) {
            s.notify.notify_one();
        }
        Ok(rec)
    }

    /// Cancels a queued command.
    pub async fn cancel(&self, id: Uuid) -> Result<CommandRecord, GatewayError> {
        let rec = self
            .shared
            .store
            .cancel_command(id, OffsetDateTime::now_utc())
            .await?;
        metrics::counter!("callhome_commands_total", "state" => "cancelled").increment(1);
        self.shared.events.command_finished(&rec);
        Ok(rec)
    }

    /// Waits up to `max` for the command to reach a final state; returns it as it is then.
    /// Woken by the command's own events; re-reads every 5 s as well (another node may
    /// have finished it).
    pub async fn wait_final(&self, id: Uuid, max: Duration) -> Result<CommandRecord, GatewayError> {
        let watch = self.shared.events.watch_command(id);
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let rec = self.shared.store.get_command(id).await?;
            if rec.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(rec);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = watch.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
