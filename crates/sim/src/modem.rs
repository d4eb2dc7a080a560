//! One simulated modem: an MQTT client task that answers AT commands and sends status.
//!
//! Each modem is one tokio task driving one rumqttc event loop. It never awaits the
//! MQTT client from inside that loop: replies and status go through the client's
//! bounded request channel with `try_publish` (a full channel drops the message and
//! counts it), so the loop cannot deadlock on itself.
//!
//! `AT^MTXTUNNEL=TEMPORALCLIENT` is handled here rather than in [`crate::answer`]: the
//! modem answers `OK` and spawns the tunnel ([`crate::tunnel`]) as a task of its own,
//! which outlives MQTT reconnections and ends at the latest when the modem stops.
//!
//! The reboot command (`AT^MTXTUNNEL=REBOOT`) is answered `OK` by [`crate::answer`];
//! the modem then drops its connection without DISCONNECT shortly after (so the reply
//! is written first), closes its tunnel, stays offline for
//! [`ModemSettings::reboot_delay`] and connects again (no backoff), re-reading its
//! Config.txt as a booting modem does: topics and keep-alive as they are after any
//! `SETPARAM` (which survive the reboot).
//!
//! Firmware updates (`AT^MTXTUNNEL=FWUPDATE`, `AT^SJOTAP`, see [`crate::firmware`]) are
//! handled here too: `OK` and a task of its own (`ERROR` while one runs). When it ends
//! with an install, the modem restarts as on the reboot command (its connection dropped
//! at once, back after [`ModemSettings::reboot_delay`]) and reports the new version from
//! then on; its firmware version survives reboots and reconnections.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use callhome_core::Imei;
use callhome_core::dialect::{self, FinalResult, MtxCommand};
use rand::Rng as _;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
    SubscribeReasonCode, TlsConfiguration,
};
use rustls::ClientConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::SimError;
use crate::answer::{FIRMWARE_VERSION, answer, is_reboot};
use crate::config::{MasterConfig, ModemConfig};
use crate::counters::Counters;
use crate::firmware::{
    self, DownloadSettings, FirmwareFault, FirmwareState, ImageUpdate, JobContext, JobOutcome,
    OtapRequest,
};
use crate::rotation::CertState;
use crate::tls::{Credentials, TlsBase};
use crate::tunnel::{self, LineSettings, SerialSide, TunnelRequest};

/// Capacity of each modem's MQTT request channel (replies and status waiting to be sent).
const REQUEST_CAPACITY: usize = 16;
/// Replies waiting for their delay to pass, at most.
const MAX_DELAYED_REPLIES: usize = 16;
/// Capacity of each modem's control channel.
const CONTROL_CAPACITY: usize = 4;
/// MQTT packets in flight at once (QoS 1 publishes awaiting PUBACK).
const MAX_INFLIGHT: u16 = 8;
/// Largest MQTT packet accepted or sent (a GETCONFIG reply is about 1.5 KB).
const MAX_PACKET: usize = 64 * 1024;
/// How long a stopping modem waits for its tunnel to close.
const TUNNEL_STOP_WAIT: Duration = Duration::from_secs(3);
/// Time between handing the reply to a reboot command to the MQTT client and dropping
/// the connection: enough for the reply to be written.
const REBOOT_FLUSH: Duration = Duration::from_millis(100);
/// Capacity of each modem's channel of finished firmware jobs.
const FIRMWARE_CAPACITY: usize = 2;
/// How long a stopping modem waits for its firmware job to end.
const FIRMWARE_STOP_WAIT: Duration = Duration::from_secs(3);

/// Jittered exponential backoff between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (after a connection ends, or a first failed attempt).
    pub initial: Duration,
    /// The cap (30 s by default).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 = first): `initial * 2^attempt`, capped
    /// at `max`, then a uniformly random point in its upper half ("equal jitter"), so a
    /// fleet cut off at once does not come back at once.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        let full = self.initial.saturating_mul(factor).min(self.max);
        let half = full / 2;
        let jitter_us = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::rng().random_range(0..=jitter_us))
    }
}

/// Settings shared by the modems of a fleet.
#[derive(Debug, Clone)]
pub struct ModemSettings {
    /// MQTT endpoint host; also the TLS server name.
    pub host: String,
    /// MQTT endpoint port.
    pub port: u16,
    /// The Config.txt every modem starts from (topics, `DNS_period`, keep-alive...).
    pub master: Arc<MasterConfig>,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Send one status message as soon as the modem is subscribed, not only every
    /// `DNS_period` seconds.
    pub status_on_connect: bool,
    /// Time allowed for TCP + TLS + CONNACK.
    pub connect_timeout: Duration,
    /// MQTT keep-alive; `None` takes `MQTT_keepalive` from the configuration (300 s in
    /// the seed).
    pub keep_alive: Option<Duration>,
    /// What sits on each modem's serial port, behind TEMPORALCLIENT tunnels (the
    /// built-in IEC 62056-21 meter by default). The TCP connection and TLS handshake of
    /// a tunnel are also bounded by `connect_timeout`.
    pub serial: SerialSide,
    /// Sets `TCP_NODELAY` on the modem's socket. Off by default (rumqttc's default): a
    /// modem then sends its reply only once the PUBACK it sent for the command is
    /// acknowledged, so each command round trip waits for the broker's delayed ACK
    /// (about 40 ms on Linux).
    pub tcp_nodelay: bool,
    /// How long a modem stays offline when it reboots (after answering the reboot
    /// command and dropping its connection) before it connects again; 1 s by default.
    pub reboot_delay: Duration,
    /// The firmware version every modem starts with ([`FIRMWARE_VERSION`] by
    /// default); an update changes it, per modem.
    pub firmware_version: String,
    /// Limits and pacing of firmware downloads.
    pub download: DownloadSettings,
}

impl ModemSettings {
    /// Defaults for `host:port` with the platform master configuration.
    pub fn new(host: &str, port: u16, tls: bool) -> Self {
        Self {
            host: host.to_owned(),
            port,
            master: Arc::new(MasterConfig::for_platform(host, port, tls, None)),
            backoff: Backoff::default(),
            status_on_connect: true,
            connect_timeout: Duration::from_secs(30),
            keep_alive: None,
            serial: SerialSide::default(),
            tcp_nodelay: false,
            reboot_delay: Duration::from_secs(1),
            firmware_version: FIRMWARE_VERSION.to_owned(),
            download: DownloadSettings::default(),
        }
    }
}

/// How a modem connects.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plain TCP, no certificate (a reference broker such as Mosquitto).
    Plain,
    /// TLS with a ready client configuration.
    Tls(Arc<ClientConfig>),
    /// Mutual TLS: the modem builds its configuration from the shared base and its own
    /// key and certificate when its task starts, then drops the PEM text.
    MutualTls {
        /// The shared CA configuration.
        base: TlsBase,
        /// This modem's key and certificate.
        credentials: Credentials,
    },
}

/// How a modem answers commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyMode {
    /// Answers as a working modem does.
    #[default]
    Normal,
    /// Answers `ERROR` to everything.
    Error,
    /// Never answers.
    Silent,
    /// Drops the connection when a command arrives, without answering.
    Drop,
}

/// A modem's (mis)behaviour, changeable while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Behaviour {
    /// How commands are answered.
    pub reply: ReplyMode,
    /// Delay before each reply is published.
    pub reply_delay: Duration,
    /// Drop every connection this long after it is established.
    pub drop_after: Option<Duration>,
    /// What goes wrong with firmware updates (taken when an update is ordered).
    pub firmware: FirmwareFault,
    /// Certificate rotations: answer the install command `OK` but never reconnect with
    /// the new certificate (misbehaviour `never-confirm`).
    pub never_confirm: bool,
}

impl Behaviour {
    /// Answers `ERROR` to everything.
    pub fn error() -> Self {
        Self {
            reply: ReplyMode::Error,
            ..Self::default()
        }
    }

    /// Never answers.
    pub fn silent() -> Self {
        Self {
            reply: ReplyMode::Silent,
            ..Self::default()
        }
    }

    /// Drops the connection on every command.
    pub fn drop_on_command() -> Self {
        Self {
            reply: ReplyMode::Drop,
            ..Self::default()
        }
    }

    /// Answers normally but updates firmware with `fault`.
    pub fn firmware(fault: FirmwareFault) -> Self {
        Self {
            firmware: fault,
            ..Self::default()
        }
    }
}

enum Control {
    SetBehaviour(Behaviour),
    DropConnection,
    Stop,
}

/// Controls a running modem. Cheap to clone; dropping every handle leaves the modem
/// running (stop it with [`ModemHandle::stop`] or the cancellation token it was
/// spawned with).
#[derive(Debug, Clone)]
pub struct ModemHandle {
    imei: Imei,
    control: mpsc::Sender<Control>,
    firmware: Arc<FirmwareState>,
    cert_serial: Option<Arc<std::sync::Mutex<Option<String>>>>,
    trust: Option<Arc<std::sync::Mutex<crate::rotation::TrustSlot>>>,
}

impl ModemHandle {
    /// The modem's IMEI (its MQTT client id).
    pub fn imei(&self) -> &Imei {
        &self.imei
    }

    /// Changes how the modem answers from the next command on. `false` if it has
    /// stopped.
    pub async fn set_behaviour(&self, behaviour: Behaviour) -> bool {
        self.control
            .send(Control::SetBehaviour(behaviour))
            .await
            .is_ok()
    }

    /// Drops the current connection now (as on losing coverage: no DISCONNECT); the
    /// modem reconnects after its backoff. `false` if it has stopped.
    pub async fn drop_connection(&self) -> bool {
        self.control.send(Control::DropConnection).await.is_ok()
    }

    /// Disconnects cleanly and ends the modem's task.
    pub async fn stop(&self) {
        let _ = self.control.send(Control::Stop).await;
    }

    /// The serial (uppercase hex) of the client certificate the modem presents now
    /// (after a rotation, the new one); `None` without mutual TLS.
    pub fn cert_serial(&self) -> Option<String> {
        self.cert_serial.as_ref().and_then(|s| {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// The SHA-256 of the last trust bundle the modem installed (`CAINSTALL`), if any.
    pub fn trust_bundle_sha256(&self) -> Option<String> {
        self.trust.as_ref().and_then(|t| {
            t.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .sha256
                .clone()
        })
    }

    /// The firmware version the modem reports now (`AT^MTXTUNNEL=VERSION`, `ATI`,
    /// status): [`ModemSettings::firmware_version`] until an update installs another.
    pub fn firmware_version(&self) -> String {
        self.firmware.version()
    }

    /// How many firmware updates the modem has installed (restarts onto a new version;
    /// a `boot-old` restart is not one).
    pub fn installs(&self) -> u64 {
        self.firmware.installs()
    }
}

/// One simulated modem, ready to be spawned.
#[derive(Debug)]
pub struct SimModem {
    imei: Imei,
    transport: Transport,
    settings: Arc<ModemSettings>,
    behaviour: Behaviour,
    counters: Arc<Counters>,
    gate: Option<Arc<Semaphore>>,
    tunnel_tls: Option<Arc<ClientConfig>>,
    serial: Option<SerialSide>,
    model: Option<String>,
    /// Where rotated credentials are written: (key file, certificate file).
    credential_cache: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl SimModem {
    /// A modem with its own counters and normal behaviour.
    pub fn new(imei: Imei, transport: Transport, settings: Arc<ModemSettings>) -> Self {
        Self {
            imei,
            transport,
            settings,
            behaviour: Behaviour::default(),
            counters: Arc::new(Counters::new(1)),
            gate: None,
            tunnel_tls: None,
            serial: None,
            model: None,
            credential_cache: None,
        }
    }

    /// Writes the key and certificate of a certificate rotation to `key` (mode 0600) and
    /// `cert`, replacing the cached ones the modem started with.
    #[must_use]
    pub fn with_credential_cache(
        mut self,
        key: std::path::PathBuf,
        cert: std::path::PathBuf,
    ) -> Self {
        self.credential_cache = Some((key, cert));
        self
    }

    /// Counts into `counters` (shared with other modems).
    #[must_use]
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = counters;
        self
    }

    /// Starts with `behaviour`.
    #[must_use]
    pub fn with_behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// Holds a permit of `gate` during every connection attempt (TCP, TLS and CONNACK),
    /// bounding how many modems of a fleet connect at once.
    #[must_use]
    pub fn with_connect_gate(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Uses `config` for TEMPORALCLIENT tunnels (it should trust only the platform CA
    /// and present this modem's certificate). Without it, tunnels use the MQTT
    /// transport's TLS configuration; a modem on [`Transport::Plain`] without one
    /// answers `OK` but cannot open a tunnel (counted as a tunnel failure).
    ///
    /// Firmware downloads use the MQTT transport's TLS configuration, else this one; a
    /// modem with neither answers `ERROR` to firmware updates.
    #[must_use]
    pub fn with_tunnel_tls(mut self, config: Arc<ClientConfig>) -> Self {
        self.tunnel_tls = Some(config);
        self
    }

    /// Puts `serial` on this modem's serial port instead of [`ModemSettings::serial`].
    #[must_use]
    pub fn with_serial_side(mut self, serial: SerialSide) -> Self {
        self.serial = Some(serial);
        self
    }

    /// Sets the modem's `MTX_model` (reported by `ATI` and in status messages) instead
    /// of the master configuration's.
    #[must_use]
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = Some(model.to_owned());
        self
    }

    /// The modem's IMEI.
    pub fn imei(&self) -> &Imei {
        &self.imei
    }

    /// The counters this modem updates.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Starts the modem's task. It runs until `cancel` fires or [`ModemHandle::stop`].
    pub fn spawn(self, cancel: CancellationToken) -> (ModemHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CONTROL_CAPACITY);
        let firmware = Arc::new(FirmwareState::new(&self.settings.firmware_version));
        let certs = match &self.transport {
            Transport::MutualTls { base, credentials } => {
                let state = CertState::new(base.clone(), credentials.clone());
                Some(match self.credential_cache.clone() {
                    Some((key, cert)) => state.with_cache(key, cert),
                    None => state,
                })
            }
            _ => None,
        };
        let handle = ModemHandle {
            imei: self.imei.clone(),
            control: tx,
            firmware: firmware.clone(),
            cert_serial: certs.as_ref().map(CertState::serial_handle),
            trust: certs.as_ref().map(CertState::trust_handle),
        };
        let task = tokio::spawn(run(self, rx, firmware, certs, cancel));
        (handle, task)
    }
}

/// A modem's state while its task runs.
struct Modem {
    imei: Imei,
    config: ModemConfig,
    behaviour: Behaviour,
    settings: Arc<ModemSettings>,
    counters: Arc<Counters>,
    gate: Option<Arc<Semaphore>>,
    boot: BootConfig,
    started: Instant,
    ever_connected: bool,
    control_open: bool,
    tunnel_tls: Option<Arc<ClientConfig>>,
    serial: SerialSide,
    tunnel: Option<Tunnel>,
    /// Fires when the modem stops: ends its tunnel and firmware job.
    stopping: CancellationToken,
    /// The TLS configuration of firmware downloads.
    download_tls: Option<Arc<ClientConfig>>,
    firmware: Arc<FirmwareState>,
    firmware_job: Option<FirmwareJob>,
    firmware_done: mpsc::Sender<(u64, JobOutcome)>,
    next_job: u64,
    /// The version to boot onto at the next reboot (an install).
    pending_version: Option<String>,
    /// The client certificate and its rotation (mutual TLS only).
    certs: Option<CertState>,
    /// The TLS configuration to reconnect with (a certificate installed).
    switch_to: Option<Arc<ClientConfig>>,
}

/// A running firmware update.
struct FirmwareJob {
    id: u64,
    fault: FirmwareFault,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

/// What a modem's task receives: control messages and finished firmware jobs.
struct Inbox {
    control: mpsc::Receiver<Control>,
    firmware: mpsc::Receiver<(u64, JobOutcome)>,
}

/// What a finished firmware job makes the modem do.
enum Restart {
    /// Restart (onto the new version unless `boot-old`).
    Reboot,
    /// Drop the connection and never come back (`never-back`).
    Vanish,
}

/// A firmware update ordered by a command.
enum FirmwareOrder {
    /// `AT^MTXTUNNEL=FWUPDATE`.
    Image(ImageUpdate),
    /// `AT^SJOTAP`.
    Otap(OtapRequest),
}

impl FirmwareOrder {
    async fn run(&self, ctx: &JobContext) -> JobOutcome {
        match self {
            Self::Image(job) => firmware::run_image_update(ctx, job).await,
            Self::Otap(req) => firmware::run_otap(ctx, req).await,
        }
    }
}

/// A running TEMPORALCLIENT tunnel.
struct Tunnel {
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

/// What a modem reads from its Config.txt when it boots: changed with `SETPARAM`, these
/// take effect at the next reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BootConfig {
    /// `MQTT_attopic1` (`{IMEI}/AT` when empty).
    command_topic: String,
    /// `MQTT_atrtopic` (`{IMEI}/ATR` when empty).
    reply_topic: String,
    /// `DNS_mqttTopic` (`{IMEI}/dns` when empty).
    status_topic: String,
    /// [`ModemSettings::keep_alive`], else `MQTT_keepalive` (5-65535 s), else 300 s.
    keep_alive: Duration,
}

impl BootConfig {
    fn read(config: &ModemConfig, imei: &Imei, settings: &ModemSettings) -> Self {
        let topic = |key: &str, default: &str| {
            config
                .get(key, imei.as_str())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| format!("{imei}/{default}"))
        };
        let keep_alive = settings.keep_alive.unwrap_or_else(|| {
            let secs = config
                .get("MQTT_keepalive", imei.as_str())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|s| (5..=65_535).contains(s))
                .unwrap_or(300);
            Duration::from_secs(secs)
        });
        Self {
            command_topic: topic("MQTT_attopic1", "AT"),
            reply_topic: topic("MQTT_atrtopic", "ATR"),
            status_topic: topic("DNS_mqttTopic", "dns"),
            keep_alive,
        }
    }
}

/// The state of one connection.
#[derive(Default)]
struct Session {
    subscribed: bool,
    next_status: Option<Instant>,
    drop_at: Option<Instant>,
    delayed: VecDeque<(Instant, String)>,
    reboot_at: Option<Instant>,
    /// When to reconnect with a newly installed certificate.
    reconnect_at: Option<Instant>,
    /// A certificate request to send after the reply to `CERTREQ`.
    cert_request: Option<crate::rotation::Request>,
    armed: Option<Instant>,
}

impl Session {
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.next_status,
            self.drop_at,
            self.delayed.front().map(|(t, _)| *t),
            self.reboot_at,
            self.reconnect_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// How a connection ended.
enum Outcome {
    /// Stop the modem.
    Stop,
    /// The attempt failed before the modem was subscribed.
    Failed,
    /// An established connection ended.
    Ended,
    /// The modem dropped its connection to reboot.
    Reboot,
    /// The modem dropped its connection for good (`never-back`).
    Gone,
}

/// What to do when a timer fires.
enum TimerAction {
    /// Nothing more.
    Continue,
    /// Drop the connection (the drop-after switch).
    Drop,
    /// Drop the connection and reboot.
    Reboot,
    /// Drop the connection and connect again with the certificate just installed.
    Reconnect,
}

type Cancelled = Pin<Box<WaitForCancellationFutureOwned>>;

async fn run(
    modem: SimModem,
    control: mpsc::Receiver<Control>,
    firmware: Arc<FirmwareState>,
    certs: Option<CertState>,
    cancel: CancellationToken,
) {
    let SimModem {
        imei,
        transport,
        settings,
        behaviour,
        counters,
        gate,
        tunnel_tls,
        serial,
        model,
        credential_cache: _,
    } = modem;
    let mut certs = certs;
    let tls = match (transport, &mut certs) {
        (Transport::Plain, _) => None,
        (Transport::Tls(c), _) => Some(c),
        (Transport::MutualTls { .. }, Some(certs)) => match certs.config() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(%imei, error = %e, "cannot build the modem's TLS configuration");
                return;
            }
        },
        (Transport::MutualTls { base, credentials }, None) => match base.for_device(&credentials) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(%imei, error = %e, "cannot build the modem's TLS configuration");
                return;
            }
        },
    };
    let mut config = ModemConfig::new(settings.master.clone());
    if let Some(model) = &model {
        config.set("MTX_model", model);
    }
    let download_tls = tls.clone().or_else(|| tunnel_tls.clone());
    let tunnel_tls = tunnel_tls.or_else(|| tls.clone());
    let serial = serial.unwrap_or_else(|| settings.serial.clone());
    let (firmware_done, firmware_rx) = mpsc::channel(FIRMWARE_CAPACITY);
    let mut inbox = Inbox {
        control,
        firmware: firmware_rx,
    };
    let mut m = Modem {
        boot: BootConfig::read(&config, &imei, &settings),
        imei,
        config,
        behaviour,
        settings,
        counters,
        gate,
        started: Instant::now(),
        ever_connected: false,
        control_open: true,
        tunnel_tls,
        serial,
        tunnel: None,
        stopping: CancellationToken::new(),
        download_tls,
        firmware,
        firmware_job: None,
        firmware_done,
        next_job: 0,
        pending_version: None,
        certs,
        switch_to: None,
    };
    // However this task ends (even aborted), the tunnel and firmware job end with it.
    let _stop_guard = m.stopping.clone().drop_guard();
    let (client, mut eventloop) = AsyncClient::new(m.mqtt_options(tls), REQUEST_CAPACITY);
    eventloop
        .network_options
        .set_connection_timeout(m.settings.connect_timeout.as_secs().max(1));
    eventloop
        .network_options
        .set_tcp_nodelay(m.settings.tcp_nodelay);
    // rumqttc preallocates room for 100 buffered events per client (about 10 KB); a
    // modem sees a handful at a time, and the queue grows if it ever needs to.
    eventloop.state.events = VecDeque::with_capacity(4);
    drive(&mut m, &client, &mut eventloop, &mut inbox, cancel).await;
    m.stopping.cancel();
    if let Some(t) = m.tunnel.take() {
        let _ = tokio::time::timeout(TUNNEL_STOP_WAIT, t.task).await;
    }
    if let Some(job) = m.firmware_job.take() {
        let _ = tokio::time::timeout(FIRMWARE_STOP_WAIT, job.task).await;
    }
}

/// Connects, serves and reconnects until the modem stops.
async fn drive(
    m: &mut Modem,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    inbox: &mut Inbox,
    cancel: CancellationToken,
) {
    let mut cancelled: Cancelled = Box::pin(cancel.cancelled_owned());
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut attempt: u32 = 0;
    loop {
        let permit = match m.gate.clone() {
            None => None,
            Some(gate) => loop {
                tokio::select! {
                    biased;
                    () = &mut cancelled => return,
                    c = inbox.control.recv(), if m.control_open => {
                        if m.on_idle_control(c) { return; }
                    }
                    p = gate.clone().acquire_owned() => break p.ok(),
                }
            },
        };
        let outcome = m
            .session(client, eventloop, inbox, &mut cancelled, &mut timer, permit)
            .await;
        let wake = match outcome {
            Outcome::Stop => return,
            Outcome::Gone => {
                m.vanish(eventloop);
                m.stay_gone(inbox, &mut cancelled).await;
                return;
            }
            Outcome::Reboot => {
                // Offline for the reboot, then a fresh start: no backoff, and the
                // Config.txt read again (nothing can change it while offline).
                attempt = 0;
                m.reboot(eventloop);
                Instant::now() + m.settings.reboot_delay
            }
            Outcome::Ended | Outcome::Failed => {
                if matches!(outcome, Outcome::Ended) {
                    attempt = 0;
                }
                let wake = Instant::now() + m.settings.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                wake
            }
        };
        timer.as_mut().reset(wake);
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => return,
                c = inbox.control.recv(), if m.control_open => {
                    if m.on_idle_control(c) { return; }
                }
                Some((id, outcome)) = inbox.firmware.recv() => match m.on_job_done(id, outcome) {
                    None => {}
                    // Offline already: the restart is the reboot delay from now.
                    Some(Restart::Reboot) => {
                        attempt = 0;
                        m.reboot(eventloop);
                        timer.as_mut().reset(Instant::now() + m.settings.reboot_delay);
                    }
                    Some(Restart::Vanish) => {
                        m.vanish(eventloop);
                        m.stay_gone(inbox, &mut cancelled).await;
                        return;
                    }
                },
                () = &mut timer => break,
            }
        }
    }
}

impl Modem {
    fn mqtt_options(&self, tls: Option<Arc<ClientConfig>>) -> MqttOptions {
        let mut o = MqttOptions::new(
            self.imei.as_str(),
            self.settings.host.clone(),
            self.settings.port,
        );
        o.set_keep_alive(self.boot.keep_alive)
            .set_clean_session(true)
            .set_inflight(MAX_INFLIGHT)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(config) = tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                TlsConfiguration::Rustls(config),
            ));
        }
        o
    }

    /// Boots again after the connection was dropped for a reboot: forgets what was
    /// waiting to be sent, closes the tunnel, re-reads the Config.txt.
    fn reboot(&mut self, eventloop: &mut EventLoop) {
        Counters::add(&self.counters.reboots);
        eventloop.pending.clear();
        if let Some(t) = self.tunnel.take() {
            t.cancel.cancel();
        }
        if let Some(job) = self.firmware_job.take() {
            tracing::info!(imei = %self.imei, "reboot during a firmware update: update abandoned");
            job.cancel.cancel();
        }
        if let Some(version) = self.pending_version.take() {
            tracing::info!(imei = %self.imei, %version, "booting the new firmware");
            self.firmware.install(&version);
            Counters::add(&self.counters.installs);
        }
        self.boot = BootConfig::read(&self.config, &self.imei, &self.settings);
        eventloop.mqtt_options.set_keep_alive(self.boot.keep_alive);
        tracing::debug!(imei = %self.imei, delay = ?self.settings.reboot_delay, "rebooting");
    }

    /// Goes offline for good (`never-back`): forgets what was waiting to be sent, closes
    /// the tunnel.
    fn vanish(&mut self, eventloop: &mut EventLoop) {
        eventloop.pending.clear();
        if let Some(t) = self.tunnel.take() {
            t.cancel.cancel();
        }
        self.pending_version = None;
        tracing::info!(imei = %self.imei, "never-back: the modem stays offline");
    }

    /// Stays offline until the modem stops.
    async fn stay_gone(&mut self, inbox: &mut Inbox, cancelled: &mut Cancelled) {
        loop {
            tokio::select! {
                biased;
                () = &mut *cancelled => return,
                c = inbox.control.recv(), if self.control_open => {
                    if self.on_idle_control(c) { return; }
                }
                Some(_) = inbox.firmware.recv() => {}
            }
        }
    }

    /// A firmware job has ended: what the modem does about it (`None`: nothing, it keeps
    /// its version). Outcomes of jobs abandoned since (by a reboot) are ignored.
    fn on_job_done(&mut self, id: u64, outcome: JobOutcome) -> Option<Restart> {
        if self.firmware_job.as_ref().is_none_or(|j| j.id != id) {
            return None;
        }
        let job = self.firmware_job.take()?;
        match outcome {
            JobOutcome::Install { version } => match job.fault {
                FirmwareFault::NeverBack => Some(Restart::Vanish),
                FirmwareFault::BootOld => {
                    tracing::info!(imei = %self.imei, %version, "boot-old: restarting on the old firmware");
                    Some(Restart::Reboot)
                }
                _ => {
                    self.pending_version = Some(version);
                    Some(Restart::Reboot)
                }
            },
            JobOutcome::Rejected { status, reason, .. } => {
                tracing::info!(imei = %self.imei, %status, %reason, "firmware update failed, keeping the old firmware");
                None
            }
            JobOutcome::Refused { status } => {
                tracing::info!(imei = %self.imei, http = status, "firmware download refused, keeping the old firmware");
                None
            }
        }
    }

    /// Starts a firmware update; the reply: `OK`, or `ERROR` (an update already running,
    /// arguments it cannot use, no TLS identity).
    fn start_firmware(&mut self, order: Result<FirmwareOrder, SimError>) -> String {
        let error = || dialect::format_reply::<&str>(&[], &FinalResult::Error);
        let order = match order {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(imei = %self.imei, error = %e, "firmware update refused");
                return error();
            }
        };
        if self.firmware_job.is_some() {
            tracing::info!(imei = %self.imei, "firmware update refused: one is running");
            return error();
        }
        let Some(tls) = &self.download_tls else {
            tracing::warn!(imei = %self.imei, "firmware update refused: no TLS identity to download with");
            return error();
        };
        let fault = self.behaviour.firmware;
        let ctx = JobContext::new(
            self.imei.as_str(),
            tls,
            self.settings.download,
            fault,
            self.counters.clone(),
        );
        let id = self.next_job;
        self.next_job += 1;
        let cancel = self.stopping.child_token();
        let done = self.firmware_done.clone();
        let job_cancel = cancel.clone();
        let task = tokio::spawn(async move {
            let outcome = tokio::select! {
                biased;
                () = job_cancel.cancelled() => return,
                o = order.run(&ctx) => o,
            };
            let _ = done.send((id, outcome)).await;
        });
        self.firmware_job = Some(FirmwareJob {
            id,
            fault,
            task,
            cancel,
        });
        dialect::format_reply::<&str>(&[], &FinalResult::Ok)
    }

    /// Handles a control message while not connected; `true` to stop.
    fn on_idle_control(&mut self, c: Option<Control>) -> bool {
        match c {
            Some(Control::Stop) => true,
            Some(Control::SetBehaviour(b)) => {
                self.behaviour = b;
                false
            }
            Some(Control::DropConnection) => false,
            None => {
                self.control_open = false;
                false
            }
        }
    }

    /// Connects (or resumes connecting) and serves one connection until it ends.
    async fn session(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        inbox: &mut Inbox,
        cancelled: &mut Cancelled,
        timer: &mut Pin<Box<Sleep>>,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> Outcome {
        let mut s = Session::default();
        loop {
            let deadline = s.next_deadline();
            if deadline != s.armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                s.armed = deadline;
            }
            tokio::select! {
                biased;
                () = &mut *cancelled => {
                    self.leave(client, eventloop, &s).await;
                    return Outcome::Stop;
                }
                c = inbox.control.recv(), if self.control_open => match c {
                    Some(Control::Stop) => {
                        self.leave(client, eventloop, &s).await;
                        return Outcome::Stop;
                    }
                    Some(Control::SetBehaviour(b)) => {
                        self.behaviour = b;
                        if s.subscribed {
                            s.drop_at = b.drop_after.map(|d| Instant::now() + d);
                        }
                    }
                    Some(Control::DropConnection) => return self.drop_connection(eventloop, &s),
                    None => self.control_open = false,
                },
                Some((id, outcome)) = inbox.firmware.recv() => match self.on_job_done(id, outcome) {
                    None => {}
                    Some(restart) => {
                        // Restarting, connected or not (an abandoned attempt is no
                        // connection failure).
                        if s.subscribed {
                            self.drop_connection(eventloop, &s);
                        } else {
                            eventloop.clean();
                        }
                        return match restart {
                            Restart::Reboot => Outcome::Reboot,
                            Restart::Vanish => Outcome::Gone,
                        };
                    }
                },
                () = timer.as_mut(), if deadline.is_some() => {
                    s.armed = None;
                    match self.on_timer(client, &mut s) {
                        TimerAction::Continue => {}
                        TimerAction::Drop => return self.drop_connection(eventloop, &s),
                        TimerAction::Reboot => {
                            self.drop_connection(eventloop, &s);
                            return Outcome::Reboot;
                        }
                        TimerAction::Reconnect => {
                            self.switch_certificate(eventloop);
                            return self.drop_connection(eventloop, &s);
                        }
                    }
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        permit.take();
                        if client.try_subscribe(self.boot.command_topic.clone(), QoS::AtLeastOnce).is_err() {
                            tracing::warn!(imei = %self.imei, "cannot queue SUBSCRIBE");
                            return self.drop_connection(eventloop, &s);
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) if s.subscribed => {
                        // The certificate topic's (asked for by a rotation): a refusal
                        // leaves the rotation unanswered, not the connection broken.
                        if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                            tracing::warn!(imei = %self.imei, "certificate topic subscription refused");
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                            tracing::warn!(imei = %self.imei, topic = %self.boot.command_topic, "subscription refused");
                            Counters::add(&self.counters.connect_failures);
                            eventloop.clean();
                            return Outcome::Failed;
                        }
                        if !s.subscribed {
                            s.subscribed = true;
                            self.counters.on_connected(!self.ever_connected);
                            self.ever_connected = true;
                            let now = Instant::now();
                            s.next_status = self.status_period().map(|p| {
                                if self.settings.status_on_connect { now } else { now + p }
                            });
                            s.drop_at = self.behaviour.drop_after.map(|d| now + d);
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if p.topic == self.boot.command_topic && self.on_command(client, &mut s, &p.payload) {
                            return self.drop_connection(eventloop, &s);
                        }
                        if let Some(certs) = self.certs.as_mut().filter(|c| c.is_cert_topic(&p.topic)) {
                            certs.on_answer(self.imei.as_str(), &p.payload);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        drop(permit.take());
                        return self.connection_error(&s, &e);
                    }
                },
            }
        }
    }

    fn connection_error(&self, s: &Session, e: &ConnectionError) -> Outcome {
        if s.subscribed {
            tracing::debug!(imei = %self.imei, error = %e, "connection lost");
            self.counters.on_disconnected();
            Outcome::Ended
        } else {
            tracing::debug!(imei = %self.imei, error = %e, "connection attempt failed");
            Counters::add(&self.counters.connect_failures);
            Outcome::Failed
        }
    }

    /// Drops the socket without DISCONNECT.
    fn drop_connection(&self, eventloop: &mut EventLoop, s: &Session) -> Outcome {
        eventloop.clean();
        if s.subscribed {
            self.counters.on_disconnected();
            Outcome::Ended
        } else {
            Counters::add(&self.counters.connect_failures);
            Outcome::Failed
        }
    }

    /// Sends DISCONNECT (best effort, briefly) when stopping.
    async fn leave(&self, client: &AsyncClient, eventloop: &mut EventLoop, s: &Session) {
        if !s.subscribed {
            return;
        }
        self.counters
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Handles a command; `true` to drop the connection.
    fn on_command(&mut self, client: &AsyncClient, s: &mut Session, payload: &[u8]) -> bool {
        Counters::add(&self.counters.commands_received);
        let reply = match self.behaviour.reply {
            ReplyMode::Silent => return false,
            ReplyMode::Drop => return true,
            ReplyMode::Error => "ERROR".to_owned(),
            ReplyMode::Normal => {
                let text = String::from_utf8_lossy(payload);
                match OtapRequest::parse_command(&text) {
                    Some(order) => self.start_firmware(order.map(FirmwareOrder::Otap)),
                    None => self.answer(s, &text),
                }
            }
        };
        if let Some(request) = s.cert_request.take() {
            // Subscribed before the request goes, so the answer finds the modem listening.
            let sent = client
                .try_subscribe(request.cert_topic, QoS::AtLeastOnce)
                .and_then(|()| {
                    client.try_publish(request.csr_topic, QoS::AtLeastOnce, false, request.payload)
                });
            if sent.is_err() {
                Counters::add(&self.counters.dropped);
            }
        }
        if self.behaviour.reply_delay.is_zero() {
            self.publish_reply(client, reply);
        } else if s.delayed.len() >= MAX_DELAYED_REPLIES {
            Counters::add(&self.counters.dropped);
        } else {
            s.delayed
                .push_back((Instant::now() + self.behaviour.reply_delay, reply));
        }
        false
    }

    /// The answer to an MTX or standard AT command; starts what it orders (a tunnel, a
    /// firmware update, a reboot).
    fn answer(&mut self, s: &mut Session, text: &str) -> String {
        match dialect::parse_mtx_command(text) {
            Some(MtxCommand::TemporalClient {
                host,
                port,
                timeout_secs,
            }) => self.temporal_client(host, port, timeout_secs),
            Some(MtxCommand::Other { verb, args }) if verb == "CERTREQ" => {
                self.certificate_request(s, &args)
            }
            Some(MtxCommand::Other { verb, args }) if verb == "CERTINSTALL" => {
                self.certificate_install(s, &args)
            }
            Some(MtxCommand::Other { verb, args }) if verb == "CAINSTALL" => {
                self.trust_anchor_install(&args)
            }
            Some(MtxCommand::Other { verb, args }) if verb == "FWUPDATE" => {
                self.start_firmware(ImageUpdate::from_args(&args).map(FirmwareOrder::Image))
            }
            parsed => {
                if parsed.as_ref().is_some_and(is_reboot) && s.reboot_at.is_none() {
                    s.reboot_at = Some(Instant::now() + self.behaviour.reply_delay + REBOOT_FLUSH);
                }
                let csq = self.csq();
                let version = self.firmware.version();
                answer(text, self.imei.as_str(), &mut self.config, csq, &version)
            }
        }
    }

    /// `CERTREQ`: `OK`, and the request to send ([`crate::rotation`]); `ERROR` without
    /// mutual TLS or with bad arguments.
    fn certificate_request(&mut self, s: &mut Session, args: &[String]) -> String {
        let result = match self.certs.as_mut() {
            None => Err("no client certificate to rotate".to_owned()),
            Some(certs) => certs.request(self.imei.as_str(), args),
        };
        match result {
            Ok(request) => {
                s.cert_request = Some(request);
                dialect::format_reply::<&str>(&[], &FinalResult::Ok)
            }
            Err(e) => {
                tracing::warn!(imei = %self.imei, error = %e, "certificate request not made");
                dialect::format_reply::<&str>(&[], &FinalResult::Error)
            }
        }
    }

    /// `CERTINSTALL`: `OK` if the certificate received is the one named, and a reconnection
    /// with it shortly after (none when told `never-confirm`); else `ERROR`.
    fn certificate_install(&mut self, s: &mut Session, args: &[String]) -> String {
        let Some(certs) = self.certs.as_mut() else {
            return dialect::format_reply::<&str>(&[], &FinalResult::Error);
        };
        match certs.install(args) {
            Ok(config) => {
                if self.behaviour.never_confirm {
                    tracing::info!(imei = %self.imei, "never-confirm: keeping the old certificate");
                } else {
                    self.switch_to = Some(config);
                    s.reconnect_at =
                        Some(Instant::now() + self.behaviour.reply_delay + REBOOT_FLUSH);
                }
                dialect::format_reply::<&str>(&[], &FinalResult::Ok)
            }
            Err(e) => {
                tracing::warn!(imei = %self.imei, error = %e, "certificate not installed");
                dialect::format_reply::<&str>(&[], &FinalResult::Error)
            }
        }
    }

    /// `CAINSTALL`: `OK`, and the bundle fetched in the background with the modem's
    /// certificate; `ERROR` without mutual TLS or with bad arguments.
    fn trust_anchor_install(&mut self, args: &[String]) -> String {
        let (Some(certs), Some(tls)) = (self.certs.as_ref(), self.download_tls.as_ref()) else {
            return dialect::format_reply::<&str>(&[], &FinalResult::Error);
        };
        match CertState::trust_request(args) {
            Ok((url, sha256)) => {
                let ctx = JobContext::new(
                    self.imei.as_str(),
                    tls,
                    self.settings.download,
                    FirmwareFault::None,
                    self.counters.clone(),
                );
                let task = crate::rotation::install_trust(
                    self.imei.to_string(),
                    ctx,
                    url,
                    sha256,
                    certs.trust_handle(),
                );
                let stopping = self.stopping.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = task => {}
                        () = stopping.cancelled() => {}
                    }
                });
                dialect::format_reply::<&str>(&[], &FinalResult::Ok)
            }
            Err(e) => {
                tracing::warn!(imei = %self.imei, error = %e, "trust anchor not installed");
                dialect::format_reply::<&str>(&[], &FinalResult::Error)
            }
        }
    }

    /// Makes the installed certificate the one every later connection presents (MQTT,
    /// tunnels, downloads).
    fn switch_certificate(&mut self, eventloop: &mut EventLoop) {
        let (Some(config), Some(certs)) = (self.switch_to.take(), self.certs.as_mut()) else {
            return;
        };
        certs.switch(self.imei.as_str());
        eventloop
            .mqtt_options
            .set_transport(rumqttc::Transport::tls_with_config(
                TlsConfiguration::Rustls(config.clone()),
            ));
        self.tunnel_tls = Some(config.clone());
        self.download_tls = Some(config);
    }

    /// Starts a TEMPORALCLIENT tunnel; the reply: `OK`, or `ERROR` while another one is
    /// in progress.
    fn temporal_client(&mut self, host: String, port: u16, timeout_secs: u32) -> String {
        if self.tunnel.as_ref().is_some_and(|t| !t.task.is_finished()) {
            Counters::add(&self.counters.tunnels_busy);
            return dialect::format_reply::<&str>(&[], &FinalResult::Error);
        }
        let imei = self.imei.as_str();
        let id = self.config.get("MTX_IDClient", imei).unwrap_or_default();
        let request = TunnelRequest {
            imei: imei.to_owned(),
            host,
            port,
            idle: Duration::from_secs(u64::from(timeout_secs.max(1))),
            id: id.into_bytes(),
            serial: self.serial.clone(),
            line: LineSettings::from_config(|k| self.config.get(k, imei)),
            tls: self.tunnel_tls.clone(),
            connect_timeout: self.settings.connect_timeout,
            counters: self.counters.clone(),
        };
        let cancel = self.stopping.child_token();
        self.tunnel = Some(Tunnel {
            task: tokio::spawn(tunnel::run(request, cancel.clone())),
            cancel,
        });
        dialect::format_reply::<&str>(&[], &FinalResult::Ok)
    }

    fn publish_reply(&self, client: &AsyncClient, reply: String) {
        let is_error = FinalResult::classify(&reply).is_error();
        match client.try_publish(
            self.boot.reply_topic.clone(),
            QoS::AtLeastOnce,
            false,
            reply.into_bytes(),
        ) {
            Ok(()) => {
                Counters::add(&self.counters.replies_sent);
                if is_error {
                    Counters::add(&self.counters.error_replies);
                }
            }
            Err(_) => Counters::add(&self.counters.dropped),
        }
    }

    /// Handles due timers.
    fn on_timer(&mut self, client: &AsyncClient, s: &mut Session) -> TimerAction {
        let now = Instant::now();
        if s.drop_at.is_some_and(|t| t <= now) {
            return TimerAction::Drop;
        }
        while s.delayed.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, reply)) = s.delayed.pop_front() {
                self.publish_reply(client, reply);
            }
        }
        if s.reboot_at.is_some_and(|t| t <= now) {
            return TimerAction::Reboot;
        }
        if s.reconnect_at.is_some_and(|t| t <= now) {
            return TimerAction::Reconnect;
        }
        if s.next_status.is_some_and(|t| t <= now) {
            self.publish_status(client);
            s.next_status = self.status_period().map(|p| now + p);
        }
        TimerAction::Continue
    }

    fn publish_status(&self, client: &AsyncClient) {
        let csq = self.csq();
        let model = self
            .config
            .get("MTX_model", self.imei.as_str())
            .unwrap_or_default();
        let body = serde_json::json!({
            "imei": self.imei.as_str(),
            "ip": self.ip(),
            "csq": csq,
            "rssi": -113 + 2 * i32::from(csq),
            "model": model,
            "fw": self.firmware.version(),
            "uptime": self.started.elapsed().as_secs(),
        });
        match client.try_publish(
            self.boot.status_topic.clone(),
            QoS::AtLeastOnce,
            false,
            body.to_string().into_bytes(),
        ) {
            Ok(()) => Counters::add(&self.counters.status_sent),
            Err(_) => Counters::add(&self.counters.dropped),
        }
    }

    /// `DNS_period` when `DNS_enabled: on` and `DNS_mode: mqtt`.
    fn status_period(&self) -> Option<Duration> {
        let get = |k: &str| self.config.get(k, self.imei.as_str()).unwrap_or_default();
        if !get("DNS_enabled").eq_ignore_ascii_case("on")
            || !get("DNS_mode").eq_ignore_ascii_case("mqtt")
        {
            return None;
        }
        get("DNS_period")
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    fn imei_number(&self) -> u64 {
        self.imei.as_str().parse().unwrap_or(0)
    }

    /// Signal quality, 10-31, fixed per modem.
    fn csq(&self) -> u8 {
        10 + u8::try_from(self.imei_number() % 22).unwrap_or(0)
    }

    /// A private address derived from the IMEI.
    fn ip(&self) -> String {
        let n = self.imei_number() / 10;
        format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_reads_topics_and_keep_alive() {
        let imei = Imei::parse("490154203237518").unwrap();
        let mut settings = ModemSettings::new("127.0.0.1", 1883, false);
        let mut config = ModemConfig::new(settings.master.clone());
        let boot = |config: &ModemConfig, settings: &ModemSettings| {
            BootConfig::read(config, &imei, settings)
        };
        let expected = |command: &str, reply: &str, status: &str, keep_alive: u64| BootConfig {
            command_topic: command.into(),
            reply_topic: reply.into(),
            status_topic: status.into(),
            keep_alive: Duration::from_secs(keep_alive),
        };
        let defaults = expected(
            "490154203237518/AT",
            "490154203237518/ATR",
            "490154203237518/dns",
            300,
        );
        assert_eq!(boot(&config, &settings), defaults);

        config.set("MQTT_atrtopic", "replies/[IMEI]");
        config.set("MQTT_attopic1", "");
        config.set("DNS_mqttTopic", "DNS");
        config.set("MQTT_keepalive", " 60 ");
        let changed = expected("490154203237518/AT", "replies/490154203237518", "DNS", 60);
        assert_eq!(boot(&config, &settings), changed);

        // Out of range: the default; the settings' keep-alive wins over the file.
        config.set("MQTT_keepalive", "1");
        assert_eq!(
            boot(&config, &settings).keep_alive,
            Duration::from_secs(300)
        );
        settings.keep_alive = Some(Duration::from_secs(7));
        assert_eq!(boot(&config, &settings).keep_alive, Duration::from_secs(7));
    }

    #[test]
    fn backoff_grows_jitters_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        };
        for _ in 0..100 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d = b.delay(1000);
            assert!(d >= Duration::from_secs(15) && d <= Duration::from_secs(30));
        }
    }
}
