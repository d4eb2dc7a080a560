//! Meter-reading sessions: TEMPORALCLIENT on demand, direct to the reader or through
//! Callhome's own rendezvous, where modem TLS sockets are paired with readers and spliced.
//!
//! Owns: the session life cycle ([`Tunnel::open`], [`Tunnel::close`]; states `requested` ->
//! `modem_connected` / `reader_connected` -> `active` -> `closed` with a reason), the tunnel
//! listener for modems ([`Tunnel::run`]: mutual TLS with the CA and CRL, certificate CN =
//! device, the `MTX_IDClient` preamble checked, only a modem with a pending session of its own
//! paired), the reader attachment ([`Tunnel::attach_reader`], any byte stream: the API's
//! WebSocket, `callhome connect`'s TCP), and the [`splice`].
//!
//! Must not know: HTTP or WebSocket framing (the API hands over a byte stream), SQL (it uses
//! `callhome-store`), MQTT (commands go through `callhome-gateway`).

mod listener;
pub mod splice;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use callhome_ca::tls::{ClientAuth, SharedServerConfig};
use callhome_core::dialect::Dialect;
use callhome_core::events::{
    EventPayload, SessionActive, SessionClosed, SessionRef, SessionRequested,
};
use callhome_core::targets::{Requester, TargetRule, check as check_target};
use callhome_core::{ActorKind, CloseReason, Imei, SessionMode, ValidationError};
use callhome_gateway::{CommandRequest, EventBus, Gateway, GatewayError};
use callhome_net::TlsListener;
use callhome_pki::CertificateService;
use callhome_store::{
    CommandState, NewSession, SessionRecord, SessionState, SessionUpdate, Store, StoreError,
};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use crate::splice::{Counters, SpliceEnd};

/// Prefix of one-time reader tokens.
pub const SESSION_TOKEN_PREFIX: &str = "chs_";

/// How long shutdown waits for sessions' tasks to record their end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A byte stream either end of a tunnel can be.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Tunnel settings.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Host modems are told to dial for rendezvous sessions.
    pub public_host: String,
    /// Port modems are told to dial (the listener's, unless behind port forwarding).
    pub public_port: u16,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Deadline for the modem's ID preamble after the handshake.
    pub id_timeout: Duration,
    /// Most modem connections at once.
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Most modem connections at once from one address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Most TLS handshakes in progress at once from one address (IPv6: one /64).
    pub max_handshakes_per_address: usize,
    /// Reply timeout of the TEMPORALCLIENT command.
    pub command_timeout: Duration,
    /// Largest `timeout_s` a session may ask for (the modem keeps the socket open that long
    /// without traffic).
    pub max_timeout_s: u32,
    /// Deadline for resolving a direct session's host name.
    pub resolve_timeout: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            public_host: "localhost".to_owned(),
            public_port: 7443,
            handshake_timeout: Duration::from_secs(10),
            id_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_handshakes: 1024,
            max_connections_per_address: 4096,
            max_handshakes_per_address: 128,
            command_timeout: Duration::from_secs(30),
            max_timeout_s: 600,
            resolve_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a tunnel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// No such device or session.
    #[error("{0} not found")]
    NotFound(String),
    /// Not possible now (an open session exists, the session is not waiting, ...).
    #[error("{0}")]
    Conflict(String),
    /// The reader's credential is wrong or used.
    #[error("{0}")]
    Unauthorized(String),
    /// Not allowed: a direct session to a target no allow-list entry opens for the caller.
    #[error("{0}")]
    Forbidden(String),
    /// Invalid input.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The command channel failed.
    #[error(transparent)]
    Gateway(GatewayError),
    /// TLS set-up failed.
    #[error(transparent)]
    Ca(#[from] callhome_ca::CaError),
}

impl From<StoreError> for TunnelError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(w) => TunnelError::NotFound(w),
            StoreError::Conflict { detail: w, .. } => TunnelError::Conflict(w),
            other => TunnelError::Store(other),
        }
    }
}

impl From<GatewayError> for TunnelError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::NotFound(w) => TunnelError::NotFound(w),
            GatewayError::Conflict(w) => TunnelError::Conflict(w),
            GatewayError::Validation(v) => TunnelError::Validation(v),
            other => TunnelError::Gateway(other),
        }
    }
}

/// Where the modem is told to connect.
#[derive(Debug, Clone)]
pub enum Mode {
    /// To the reading platform's own TLS server.
    Direct {
        /// Host or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// To Callhome's tunnel listener; the reader connects to Callhome.
    Rendezvous,
}

/// A session to open.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// Device.
    pub imei: Imei,
    /// Direct or rendezvous.
    pub mode: Mode,
    /// Idle timeout, seconds (also the modem's TEMPORALCLIENT timeout).
    pub timeout_s: u32,
    /// Rendezvous: how long the modem and reader may take to meet.
    pub pairing_timeout_s: u32,
    /// Rendezvous: pass the modem's ID bytes on to the reader.
    pub forward_id: bool,
    /// Who asked.
    pub by: Opener,
}

/// The principal that opens a session: the direct-session allow-list is checked for it, and
/// the session is owned by it.
#[derive(Debug, Clone)]
pub struct Opener {
    /// User or API key id.
    pub id: Uuid,
    /// `User` or `ApiKey`.
    pub kind: ActorKind,
    /// User name, or `apikey:<name>`.
    pub name: String,
}

/// An opened session and, for rendezvous, the one-time reader token (shown once).
#[derive(Debug, Clone)]
pub struct Opened {
    /// The session.
    pub session: SessionRecord,
    /// `chs_...`: lets one reader attach to this session, once.
    pub reader_token: Option<String>,
}

/// Why a session was cancelled, and the error to record with it.
type CancelReason = (CloseReason, Option<String>);

/// A rendezvous waiting for its two ends.
struct Slot {
    imei: Imei,
    expected_id: Vec<u8>,
    forward_id: bool,
    idle: Duration,
    cancel: CancellationToken,
    /// Set by DELETE / timeouts before cancelling, so the splice knows why it stopped.
    cancel_reason: Arc<Mutex<Option<CancelReason>>>,
    modem: Option<(Box<dyn Stream>, String)>,
    reader: Option<(Box<dyn Stream>, String)>,
    /// The splice runs: it records the close (with byte counts) when it ends.
    splicing: bool,
    /// Serial of the certificate the modem connected with, once it has.
    modem_serial: Option<String>,
}

pub(crate) struct Inner {
    cfg: TunnelConfig,
    store: Arc<dyn Store>,
    certs: Arc<CertificateService>,
    gateway: Gateway,
    events: Arc<EventBus>,
    dialect: Dialect,
    slots: Mutex<HashMap<Uuid, Slot>>,
    shutdown: CancellationToken,
    /// Each session's own tasks (command follower, pairing timer, splice): shutdown waits
    /// for them, so every session's end is recorded before the store closes.
    tasks: TaskTracker,
}

/// Meter-reading sessions.
#[derive(Clone)]
pub struct Tunnel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tunnel {
    /// A tunnel service that stops when `shutdown` is cancelled.
    pub fn new(
        cfg: TunnelConfig,
        store: Arc<dyn Store>,
        certs: Arc<CertificateService>,
        gateway: Gateway,
        shutdown: CancellationToken,
    ) -> Self {
        let events = gateway.events().clone();
        Self {
            inner: Arc::new(Inner {
                cfg,
                store,
                certs,
                gateway,
                events,
                dialect: Dialect::mtx(),
                slots: Mutex::new(HashMap::new()),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves modems on `listener` until shutdown. Sessions left open by a previous run are
    /// closed first (`server_shutdown`); at shutdown the open ones are closed the same way.
    pub async fn run(&self, tcp: TcpListener) -> Result<(), TunnelError> {
        let n = self
            .inner
            .store
            .close_open_sessions(CloseReason::ServerShutdown, OffsetDateTime::now_utc())
            .await?;
        if n > 0 {
            info!(
                sessions = n,
                "sessions left open by the previous run closed"
            );
        }
        let tls = Arc::new(SharedServerConfig::new(
            self.inner.certs.server_tls(ClientAuth::Required)?,
        ));
        let keeper = self.inner.certs.keep_tls_current(
            ClientAuth::Required,
            tls.clone(),
            self.inner.shutdown.clone(),
        );
        // Splices of modems whose certificate a new CRL revokes end at once.
        let watcher = {
            let this = self.clone();
            let mut changes = self.inner.certs.subscribe();
            let shutdown = self.inner.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    let serials = this.inner.certs.revoked_serials();
                    this.close_for_access(&serials, None).await;
                }
            })
        };
        let tls_listener = TlsListener::new(listener::listener_config(&self.inner.cfg), tls);
        let connections = tls_listener.tracker();
        let handler = listener::Modems {
            tunnel: self.clone(),
        };
        tls_listener
            .run(tcp, self.inner.shutdown.clone(), handler)
            .await;
        // Modems between their handshake and their ID finish joining (or are refused) first.
        connections.close();
        connections.wait().await;
        watcher.abort();
        let open: Vec<Uuid> = self.slots().keys().copied().collect();
        for id in open {
            self.close(id, CloseReason::ServerShutdown, None).await;
        }
        // Splices record their end (with byte counts) as they stop; followers and timers
        // stop on the token.
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.inner.tasks.len(),
                "session tasks still running at shutdown; their sessions are closed as server_shutdown"
            );
        }
        // Direct sessions have no slot: close what is still open.
        let _ = self
            .inner
            .store
            .close_open_sessions(CloseReason::ServerShutdown, OffsetDateTime::now_utc())
            .await;
        let _ = keeper.await;
        Ok(())
    }

    /// Opens a session: records it, queues TEMPORALCLIENT on the command channel, and follows
    /// the command's outcome.
    pub async fn open(&self, req: OpenRequest) -> Result<Opened, TunnelError> {
        let device = self.inner.store.get_device(&req.imei).await?;
        if device.disabled {
            return Err(TunnelError::Conflict(format!(
                "device {} is disabled",
                req.imei
            )));
        }
        // The target first: a refused target is refused whatever else is wrong with the
        // request, and nothing is recorded or queued for it.
        let (mode, host, port, requested_host) = match &req.mode {
            Mode::Direct { host, port } => {
                let (ip, requested) = self.allowed_target(host, *port, &req.by).await?;
                (SessionMode::Direct, ip.to_string(), *port, requested)
            }
            Mode::Rendezvous => (
                SessionMode::Rendezvous,
                self.inner.cfg.public_host.clone(),
                self.inner.cfg.public_port,
                None,
            ),
        };
        if !(1..=86_400).contains(&req.timeout_s) {
            return Err(ValidationError::new("timeout_s", "must be between 1 and 86400").into());
        }
        let cap = self.inner.cfg.max_timeout_s;
        if req.timeout_s > cap {
            return Err(ValidationError::new(
                "timeout_s",
                format!(
                    "must be at most {cap}, the server's cap (setting tunnel.max_session_timeout_s); got {}",
                    req.timeout_s
                ),
            )
            .into());
        }
        if !(5..=3600).contains(&req.pairing_timeout_s) {
            return Err(
                ValidationError::new("pairing_timeout_s", "must be between 5 and 3600").into(),
            );
        }
        let command = self
            .inner
            .dialect
            .temporal_client(&host, port, req.timeout_s)?;
        let token = matches!(req.mode, Mode::Rendezvous).then(|| {
            let mut b = [0u8; 32];
            rand::rng().fill_bytes(&mut b);
            format!(
                "{SESSION_TOKEN_PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            )
        });
        let session = self
            .inner
            .store
            .create_session(&NewSession {
                imei: req.imei.clone(),
                mode,
                host: host.clone(),
                port: i64::from(port),
                timeout_s: i64::from(req.timeout_s),
                pairing_timeout_s: i64::from(req.pairing_timeout_s),
                forward_id: req.forward_id,
                token_hash: token.as_deref().map(hash_token),
                created_by: req.by.name.clone(),
                created_by_id: Some(req.by.id),
                requested_host,
            })
            .await?;
        let id = session.id;
        if matches!(req.mode, Mode::Rendezvous) {
            let expected = device
                .mqtt
                .id_client
                .clone()
                .unwrap_or_else(|| req.imei.to_string());
            self.slots().insert(
                id,
                Slot {
                    imei: req.imei.clone(),
                    expected_id: expected.replace("[IMEI]", req.imei.as_str()).into_bytes(),
                    forward_id: req.forward_id,
                    idle: Duration::from_secs(u64::from(req.timeout_s)),
                    cancel: self.inner.shutdown.child_token(),
                    cancel_reason: Arc::new(Mutex::new(None)),
                    modem: None,
                    reader: None,
                    splicing: false,
                    modem_serial: None,
                },
            );
        }
        let pairing = Duration::from_secs(u64::from(req.pairing_timeout_s));
        let cmd = match self
            .inner
            .gateway
            .enqueue(CommandRequest {
                imei: req.imei.clone(),
                command,
                timeout: self.inner.cfg.command_timeout,
                expires_in: pairing,
                max_attempts: 1,
                created_by: req.by.name.clone(),
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.close(id, CloseReason::CommandFailed, Some(e.to_string()))
                    .await;
                return Err(e.into());
            }
        };
        let session = match self
            .inner
            .store
            .update_session(
                id,
                &SessionUpdate {
                    command_id: Some(cmd.id),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // Closed in the meantime (DELETE): its command must not make the modem dial.
                let _ = self.inner.gateway.cancel(cmd.id).await;
                return Err(e.into());
            }
        };
        metrics::counter!("callhome_sessions_total", "mode" => mode.as_str()).increment(1);
        self.inner.events.publish(
            Some(&req.imei),
            EventPayload::SessionRequested(SessionRequested {
                id,
                mode,
                command_id: cmd.id,
            }),
        );
        info!(%id, imei = %req.imei, %mode, "session requested");

        // Follow the command; time out the pairing.
        let this = self.clone();
        let is_direct = matches!(req.mode, Mode::Direct { .. });
        let timeout_s = req.timeout_s;
        let imei = req.imei.clone();
        self.inner.tasks.spawn(async move {
            let wait = pairing + this.inner.cfg.command_timeout + Duration::from_secs(5);
            let followed = tokio::select! {
                () = this.inner.shutdown.cancelled() => return,
                r = this.inner.gateway.wait_final(cmd.id, wait) => r,
            };
            let done = match followed {
                Ok(c) => c,
                Err(e) => {
                    this.close(id, CloseReason::CommandFailed, Some(e.to_string()))
                        .await;
                    return;
                }
            };
            if done.state != CommandState::Succeeded {
                let why = done
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("TEMPORALCLIENT {}", done.state.as_str()));
                this.close(id, CloseReason::CommandFailed, Some(why)).await;
                return;
            }
            if is_direct {
                // Callhome is not in the data path: the modem connects to the reader. The
                // session counts as active for the modem's own idle timeout.
                let now = OffsetDateTime::now_utc();
                if this
                    .inner
                    .store
                    .update_session(
                        id,
                        &SessionUpdate {
                            state: Some(SessionState::Active),
                            active_at: Some(now),
                            ..Default::default()
                        },
                    )
                    .await
                    .is_ok()
                {
                    this.inner.events.publish(
                        Some(&imei),
                        EventPayload::SessionActive(SessionActive {
                            id,
                            mode: SessionMode::Direct,
                        }),
                    );
                }
                tokio::select! {
                    () = this.inner.shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(u64::from(timeout_s))) => {
                        this.close(id, CloseReason::IdleTimeout, None).await;
                    }
                }
            }
        });
        if matches!(req.mode, Mode::Rendezvous) {
            let this = self.clone();
            self.inner.tasks.spawn(async move {
                tokio::select! {
                    () = this.inner.shutdown.cancelled() => {}
                    () = tokio::time::sleep(pairing) => {
                        let unpaired = this.slots().get(&id).is_some_and(|s| s.modem.is_none() || s.reader.is_none());
                        if unpaired {
                            this.close(id, CloseReason::PairingTimeout, None).await;
                        }
                    }
                }
            });
        }
        Ok(Opened {
            session,
            reader_token: token,
        })
    }

    /// Resolves a direct session's host (a name is resolved now, and the address is what the
    /// modem is sent, so a later DNS answer cannot move it) and checks it against the
    /// session-target allow-list for `by`. Returns the address and, for a name, the name.
    async fn allowed_target(
        &self,
        host: &str,
        port: u16,
        by: &Opener,
    ) -> Result<(IpAddr, Option<String>), TunnelError> {
        callhome_core::dialect::check_host(host)?;
        let (addrs, requested) = match host.parse::<IpAddr>() {
            Ok(ip) => (vec![ip.to_canonical()], None),
            Err(_) => {
                let wait = self.inner.cfg.resolve_timeout;
                let found = tokio::time::timeout(wait, tokio::net::lookup_host((host, port)))
                    .await
                    .map_err(|_| {
                        ValidationError::new(
                            "host",
                            format!("resolving {host} took longer than {} s", wait.as_secs_f32()),
                        )
                    })?
                    .map_err(|e| {
                        ValidationError::new("host", format!("{host} could not be resolved: {e}"))
                    })?;
                let mut ips: Vec<IpAddr> = found.map(|a| a.ip().to_canonical()).collect();
                // Modems on a cellular APN are IPv4 first.
                ips.sort_by_key(IpAddr::is_ipv6);
                ips.dedup();
                if ips.is_empty() {
                    return Err(ValidationError::new(
                        "host",
                        format!("{host} resolved to no address"),
                    )
                    .into());
                }
                (ips, Some(host.to_owned()))
            }
        };
        let rules: Vec<TargetRule> = self
            .inner
            .store
            .list_session_targets()
            .await?
            .iter()
            .map(callhome_store::SessionTarget::rule)
            .collect();
        let who = Requester {
            kind: by.kind,
            id: by.id,
            name: &by.name,
        };
        let mut reasons = Vec::new();
        for ip in addrs {
            match check_target(&rules, &who, ip, port) {
                Ok(()) => return Ok((ip, requested)),
                Err(why) => reasons.push(why),
            }
        }
        metrics::counter!("callhome_sessions_refused_total", "reason" => "target").increment(1);
        warn!(%host, port, by = %by.name, "direct session refused by the session-target allow-list");
        Err(TunnelError::Forbidden(format!(
            "direct session to {host}:{port} refused: {}",
            reasons.join("; ")
        )))
    }

    /// Cancels the session's TEMPORALCLIENT if it is still queued, so that a closed session
    /// never makes the modem dial.
    async fn cancel_queued_command(&self, id: Uuid) {
        let Ok(session) = self.inner.store.get_session(id).await else {
            return;
        };
        let Some(cmd) = session.command_id else {
            return;
        };
        match self.inner.gateway.cancel(cmd).await {
            Ok(_) => {
                info!(%id, command = %cmd, "queued TEMPORALCLIENT of the closed session cancelled")
            }
            Err(GatewayError::Conflict(_)) => {} // already sent or final
            Err(e) => {
                warn!(%id, command = %cmd, error = %e, "could not cancel the session's command")
            }
        }
    }

    /// Closes, with [`CloseReason::AccessRevoked`], every session whose modem connected
    /// with a certificate in `serials`, and every session of `device` (disabled or
    /// deleted) whatever its state. Returns how many were closed.
    pub async fn close_for_access(
        &self,
        serials: &HashSet<String>,
        device: Option<&Imei>,
    ) -> usize {
        let hit: Vec<(Uuid, &'static str)> = self
            .slots()
            .iter()
            .filter_map(|(id, s)| {
                if device == Some(&s.imei) {
                    Some((*id, "the device was disabled or deleted"))
                } else if s.modem_serial.as_ref().is_some_and(|x| serials.contains(x)) {
                    Some((*id, "the modem's certificate was revoked"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in &hit {
            warn!(session = %id, why, "session closed: access revoked");
            self.close(*id, CloseReason::AccessRevoked, Some((*why).to_owned()))
                .await;
        }
        hit.len()
    }

    /// Closes a session: cancels its TEMPORALCLIENT if still queued, ends its splice (if
    /// any) and records the reason. Closing a closed session does nothing.
    pub async fn close(&self, id: Uuid, reason: CloseReason, error: Option<String>) {
        self.cancel_queued_command(id).await;
        let splicing = {
            let mut slots = self.slots();
            match slots.get(&id) {
                Some(slot) => {
                    if let Ok(mut r) = slot.cancel_reason.lock() {
                        r.get_or_insert((reason, error.clone()));
                    }
                    slot.cancel.cancel();
                    if slot.splicing {
                        true
                    } else {
                        slots.remove(&id);
                        false
                    }
                }
                None => false,
            }
        };
        if !splicing {
            self.record_close(id, reason, error, None).await;
        }
    }

    async fn record_close(
        &self,
        id: Uuid,
        reason: CloseReason,
        error: Option<String>,
        bytes: Option<(i64, i64)>,
    ) {
        let update = SessionUpdate {
            state: Some(SessionState::Closed),
            close_reason: Some(reason),
            error,
            closed_at: Some(OffsetDateTime::now_utc()),
            bytes,
            ..Default::default()
        };
        match self.inner.store.update_session(id, &update).await {
            Ok(s) => {
                metrics::counter!("callhome_sessions_closed_total", "reason" => reason.as_str())
                    .increment(1);
                info!(%id, %reason, from_modem = s.bytes_from_modem, to_modem = s.bytes_to_modem, "session closed");
                self.inner.events.publish(
                    Some(&s.imei),
                    EventPayload::SessionClosed(SessionClosed {
                        id,
                        reason,
                        bytes_from_modem: s.bytes_from_modem,
                        bytes_to_modem: s.bytes_to_modem,
                    }),
                );
            }
            Err(StoreError::Conflict { .. }) => {} // already closed
            Err(e) => warn!(%id, error = %e, "could not record the session's end"),
        }
    }

    /// Whether `token` is the session's reader token (used or not): it lets its holder
    /// close the session.
    pub async fn token_matches(&self, id: Uuid, token: &str) -> Result<bool, TunnelError> {
        let session = self.inner.store.get_session(id).await?;
        let presented = hash_token(token);
        Ok(session.token_hash.as_deref().is_some_and(|h| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                h.as_bytes(),
                presented.as_bytes(),
            ))
        }))
    }

    /// Checks a one-time reader token for a session and marks it used.
    pub async fn consume_token(&self, id: Uuid, token: &str) -> Result<(), TunnelError> {
        let session = self.inner.store.get_session(id).await?;
        let presented = hash_token(token);
        let matches = session.token_hash.as_deref().is_some_and(|h| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                h.as_bytes(),
                presented.as_bytes(),
            ))
        });
        if !matches {
            return Err(TunnelError::Unauthorized(
                "the session token is not valid for this session".to_owned(),
            ));
        }
        if !self
            .inner
            .store
            .consume_session_token(id, &presented)
            .await?
        {
            return Err(TunnelError::Unauthorized(
                "the session token has already been used".to_owned(),
            ));
        }
        Ok(())
    }

    /// Attaches a reader to a rendezvous session. Returns once attached; the session then
    /// runs in the background and the stream is closed when it ends.
    pub async fn attach_reader(
        &self,
        id: Uuid,
        stream: Box<dyn Stream>,
        addr: String,
    ) -> Result<(), TunnelError> {
        let now = OffsetDateTime::now_utc();
        // Decide under the lock, await outside it.
        let outcome: Result<(Imei, bool), Option<TunnelError>> = {
            let mut slots = self.slots();
            match slots.get_mut(&id) {
                None => Err(None),
                Some(slot) if slot.reader.is_some() || slot.splicing => Err(Some(
                    TunnelError::Conflict(format!("session {id} already has a reader")),
                )),
                Some(slot) => {
                    slot.reader = Some((stream, addr.clone()));
                    Ok((slot.imei.clone(), slot.modem.is_some()))
                }
            }
        };
        let (imei, paired) = match outcome {
            Ok(p) => p,
            Err(Some(e)) => return Err(e),
            Err(None) => {
                let s = self.inner.store.get_session(id).await?;
                return Err(TunnelError::Conflict(format!(
                    "session {id} is {} and not waiting for a reader{}",
                    s.state.as_str(),
                    if s.mode == SessionMode::Direct {
                        " (direct sessions connect the modem to the reader's own server)"
                    } else {
                        ""
                    }
                )));
            }
        };
        let update = SessionUpdate {
            state: (!paired).then_some(SessionState::ReaderConnected),
            reader_connected_at: Some(now),
            reader_addr: Some(addr),
            ..Default::default()
        };
        let _ = self.inner.store.update_session(id, &update).await;
        self.inner.events.publish(
            Some(&imei),
            EventPayload::SessionReaderConnected(SessionRef { id }),
        );
        if paired {
            self.start_splice(id).await;
        }
        Ok(())
    }

    /// Called by the listener once a modem has proven its identity.
    pub(crate) async fn attach_modem(
        &self,
        id: Uuid,
        stream: Box<dyn Stream>,
        addr: String,
        serial: Option<String>,
    ) {
        let (imei, paired) = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(&id) else {
                return;
            };
            if slot.modem.is_some() {
                return; // a second modem connection for the same session: dropped
            }
            slot.modem = Some((stream, addr.clone()));
            slot.modem_serial = serial;
            (slot.imei.clone(), slot.reader.is_some())
        };
        let update = SessionUpdate {
            state: (!paired).then_some(SessionState::ModemConnected),
            modem_connected_at: Some(OffsetDateTime::now_utc()),
            modem_addr: Some(addr),
            ..Default::default()
        };
        let _ = self.inner.store.update_session(id, &update).await;
        self.inner.events.publish(
            Some(&imei),
            EventPayload::SessionModemConnected(SessionRef { id }),
        );
        if paired {
            self.start_splice(id).await;
        }
    }

    /// The pending rendezvous session of a device, if any: its id and expected ID bytes.
    pub(crate) fn pending_for(&self, imei: &Imei) -> Option<(Uuid, Vec<u8>)> {
        self.slots()
            .iter()
            .find(|(_, s)| &s.imei == imei && s.modem.is_none())
            .map(|(id, s)| (*id, s.expected_id.clone()))
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    async fn start_splice(&self, id: Uuid) {
        let taken = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(&id) else {
                return;
            };
            match (slot.modem.take(), slot.reader.take()) {
                (Some(m), Some(r)) if !slot.splicing => Some((
                    slot.imei.clone(),
                    m,
                    r,
                    slot.idle,
                    slot.cancel.clone(),
                    slot.cancel_reason.clone(),
                    slot.forward_id.then(|| slot.expected_id.clone()),
                )),
                (m, r) => {
                    slot.modem = m;
                    slot.reader = r;
                    None
                }
            }
        };
        let Some((imei, (modem, _), (reader, _), idle, cancel, cancel_reason, preamble)) = taken
        else {
            return;
        };
        if let Some(slot) = self.slots().get_mut(&id) {
            slot.splicing = true;
        }
        let now = OffsetDateTime::now_utc();
        let _ = self
            .inner
            .store
            .update_session(
                id,
                &SessionUpdate {
                    state: Some(SessionState::Active),
                    active_at: Some(now),
                    ..Default::default()
                },
            )
            .await;
        self.inner.events.publish(
            Some(&imei),
            EventPayload::SessionActive(SessionActive {
                id,
                mode: SessionMode::Rendezvous,
            }),
        );
        metrics::gauge!("callhome_sessions_active").increment(1.0);
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let counters = Arc::new(Counters::default());
            let end = splice::splice(modem, reader, idle, cancel, preamble, counters.clone()).await;
            metrics::gauge!("callhome_sessions_active").decrement(1.0);
            let from = counters
                .from_modem
                .load(std::sync::atomic::Ordering::Relaxed);
            let to = counters.to_modem.load(std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("callhome_tunnel_bytes_total", "direction" => "from_modem")
                .increment(from);
            metrics::counter!("callhome_tunnel_bytes_total", "direction" => "to_modem")
                .increment(to);
            let (reason, error) = match end {
                SpliceEnd::ReaderClosed => (CloseReason::ReaderClosed, None),
                SpliceEnd::ModemClosed => (CloseReason::ModemClosed, None),
                SpliceEnd::IdleTimeout => (CloseReason::IdleTimeout, None),
                SpliceEnd::Cancelled => cancel_reason
                    .lock()
                    .ok()
                    .and_then(|r| r.clone())
                    .unwrap_or((CloseReason::ServerShutdown, None)),
            };
            this.slots().remove(&id);
            let bytes = (
                i64::try_from(from).unwrap_or(i64::MAX),
                i64::try_from(to).unwrap_or(i64::MAX),
            );
            this.record_close(id, reason, error, Some(bytes)).await;
        });
    }
}
