//! Firmware updates, modem side: the image update (`AT^MTXTUNNEL=FWUPDATE`) and Java ME
//! over-the-air provisioning (`AT^SJOTAP`), as the platform's device-facing HTTPS
//! listener expects them.
//!
//! # Image: `AT^MTXTUNNEL=FWUPDATE,<url>,<version>,<sha256>,<size>`
//!
//! The modem answers `OK` at once (`ERROR` while another update runs, or for arguments it
//! cannot use: `<url>` must be `https://`, `<sha256>` 64 hex digits, `<size>` at most
//! [`MAX_IMAGE_SIZE`]), then, in a task of its own ([`run_image_update`]):
//!
//! 1. GETs `<url>` over HTTPS with its own client certificate (the rustls configuration
//!    of its MQTT connection; the server name is the URL host, IP addresses included),
//!    hashing the body as it streams: nothing is kept but the count and the hash, and a
//!    body longer than `<size>` is refused as soon as it says so (`Content-Length`) or
//!    goes past it;
//! 2. an HTTP 4xx ends the update at once: no retry, nothing POSTed (the server saw it).
//!    A connection or TLS error, a 5xx, a body cut short or a stall of
//!    [`DownloadSettings::stall_timeout`] without a byte is retried up to
//!    [`DownloadSettings::tries`] requests in all, 0.5 s, 1 s, 2 s... apart (at most
//!    8 s), resuming with `Range: bytes=<have>-` and `If-Range: <ETag of the first
//!    response>`: a `206` must carry `Content-Range: bytes <have>-...`, a `200` starts
//!    again from byte 0;
//! 3. POSTs the result to `<url>/notify` (JSR-118 status line, `text/plain`):
//!    `904 Size mismatch`, `907 SHA-256 mismatch`, `903 Loss of Service` when the tries
//!    are used up, or `900 Success`; on success the modem restarts (see
//!    [`crate::SimModem`]) and reports `<version>` from then on.
//!
//! # OTAP: `AT^SJOTAP=<pwd>,<jad_url>,<dir>,<user>,<pwd>,<bearer>,<dest>,<user>,<pwd>,<dns>,<notify_url>`
//!
//! `OK`, then ([`run_otap`]): GET the JAD (at most [`MAX_JAD_SIZE`] bytes, retried from
//! the start like a cut download), parse it with [`Jad`], GET the JAR at its
//! `MIDlet-Jar-URL` (same resume rules as an image), compare its size with
//! `MIDlet-Jar-Size`, and POST to the JAD's `MIDlet-Install-Notify` (else the 11th AT
//! parameter): `906 Invalid Descriptor` for a JAD that cannot be used,
//! `901 Insufficient Memory` for a JAR over [`MAX_IMAGE_SIZE`], `904 JAR Size Mismatch`,
//! `903 Loss of Service`, or `900 Success` followed by a restart onto `MIDlet-Version`.
//!
//! # A hostile server
//!
//! Every step has a limit: TCP + TLS + response head within
//! [`DownloadSettings::request_timeout`], response heads of at most 16 KiB, a byte at least
//! every [`DownloadSettings::stall_timeout`], bodies no longer than announced, a bounded
//! number of requests per download and per notification. Nothing the server sends can
//! panic the modem or keep a task alive past those limits.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use callhome_core::otap::{self, InstallStatus, Jad};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;

use crate::SimError;
use crate::counters::Counters;

/// Largest image or JAR a simulated modem accepts to download (256 MiB).
pub const MAX_IMAGE_SIZE: u64 = 256 * 1024 * 1024;
/// Largest JAD a simulated modem reads (64 KiB).
pub const MAX_JAD_SIZE: usize = otap::MAX_JAD_LEN;
/// Longest firmware version accepted, in characters.
pub const MAX_VERSION_LEN: usize = 64;
/// Largest response head (status line and headers) read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest ETag kept for `If-Range`.
const MAX_ETAG_LEN: usize = 256;
/// Requests per install notification, the first included.
const NOTIFY_TRIES: u32 = 3;
/// What the modem calls itself in `User-Agent`.
const USER_AGENT: &str = concat!("callhome-sim/", env!("CARGO_PKG_VERSION"), " MTX-Tunnel");

/// A firmware misbehaviour: what a simulated modem does wrong while updating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirmwareFault {
    /// Updates as it should.
    #[default]
    None,
    /// Each download's first request is cut by the modem after about half of the bytes
    /// (at least one, and never all of them); it then resumes with `Range`.
    DownloadInterrupt,
    /// Everything succeeds and the modem restarts, but it comes back on its old version.
    BootOld,
    /// After a successful download and its `900 Success`, the modem drops its
    /// connection and never comes back while the simulator runs.
    NeverBack,
    /// The image's hash is computed wrong (a byte is flipped as it is hashed), so the
    /// modem reports `907 SHA-256 mismatch`.
    Corrupt,
    /// OTAP: the modem reports `904 JAR Size Mismatch` whatever the JAR's size.
    OtapSizeMismatch,
}

/// Limits and pacing of firmware downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadSettings {
    /// Requests per download (image, JAR or JAD), the first included: 5.
    pub tries: u32,
    /// Wait before the second request; it doubles for each next one: 0.5 s.
    pub backoff_initial: Duration,
    /// Longest wait between two requests: 8 s.
    pub backoff_max: Duration,
    /// A response whose body brings no byte for this long counts as cut: 60 s.
    pub stall_timeout: Duration,
    /// Time allowed for TCP, TLS and the response head of each request: 30 s.
    pub request_timeout: Duration,
}

impl Default for DownloadSettings {
    fn default() -> Self {
        Self {
            tries: 5,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            stall_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl DownloadSettings {
    /// The wait before retry number `retry` (0 = before the second request):
    /// `backoff_initial * 2^retry`, at most `backoff_max`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// An image update as ordered by `AT^MTXTUNNEL=FWUPDATE,<url>,<version>,<sha256>,<size>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUpdate {
    /// Where the image is (`https://`); the result goes to `<url>/notify`.
    pub url: String,
    /// The version the modem reports once the image is installed.
    pub version: String,
    /// The image's SHA-256.
    pub sha256: [u8; 32],
    /// The image's size in bytes.
    pub size: u64,
}

impl ImageUpdate {
    /// From the four arguments after `FWUPDATE` (as [`callhome_core::dialect`] splits
    /// them): each problem is named.
    pub fn from_args(args: &[String]) -> Result<Self, SimError> {
        let [url, version, sha256, size] = args else {
            return Err(SimError::Invalid(format!(
                "FWUPDATE takes 4 arguments (url, version, sha256, size), not {}",
                args.len()
            )));
        };
        Endpoint::parse(url).map_err(|e| SimError::Invalid(format!("FWUPDATE url: {e}")))?;
        check_version(version).map_err(|e| SimError::Invalid(format!("FWUPDATE version: {e}")))?;
        let mut hash = [0u8; 32];
        if sha256.len() != 64 || hex::decode_to_slice(sha256, &mut hash).is_err() {
            return Err(SimError::Invalid(format!(
                "FWUPDATE sha256 {:?}: expected 64 hexadecimal digits",
                shorten(sha256)
            )));
        }
        let size: u64 = size.parse().map_err(|_| {
            SimError::Invalid(format!(
                "FWUPDATE size {:?}: not a number of bytes",
                shorten(size)
            ))
        })?;
        if size > MAX_IMAGE_SIZE {
            return Err(SimError::Invalid(format!(
                "FWUPDATE size {size}: more than the {MAX_IMAGE_SIZE} bytes a modem can take"
            )));
        }
        Ok(Self {
            url: url.clone(),
            version: version.clone(),
            sha256: hash,
            size,
        })
    }

    /// Where the result is POSTed: `<url>/notify` (before any query string).
    pub fn notify_url(&self) -> String {
        match self.url.split_once('?') {
            Some((base, query)) => format!("{}/notify?{query}", base.trim_end_matches('/')),
            None => format!("{}/notify", self.url.trim_end_matches('/')),
        }
    }
}

/// An OTAP order, `AT^SJOTAP=<pwd>,<jad_url>,...,<notify_url>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtapRequest {
    /// The JAD's URL (2nd parameter, `https://`).
    pub jad_url: String,
    /// Where the status goes when the JAD has no `MIDlet-Install-Notify`: the 11th
    /// parameter (or, when that one is empty, a 12th that is an `https://` URL).
    pub notify_url: Option<String>,
}

impl OtapRequest {
    /// Recognises `AT^SJOTAP=...` (case and spaces around `^`, `=` and the commas
    /// ignored): `None` for any other command (a query `AT^SJOTAP?` included), an error
    /// naming the problem for an order the modem cannot carry out.
    pub fn parse_command(text: &str) -> Option<Result<Self, SimError>> {
        let s = text.trim();
        let s = strip_prefix_ci(s, "AT")?.trim_start();
        let s = s.strip_prefix('^')?.trim_start();
        let s = strip_prefix_ci(s, "SJOTAP")?.trim_start();
        let s = s.strip_prefix('=')?.trim_start();
        if s.starts_with('?') {
            return None;
        }
        let params: Vec<&str> = s.split(',').map(str::trim).collect();
        Some(Self::from_params(&params))
    }

    fn from_params(params: &[&str]) -> Result<Self, SimError> {
        let jad_url = params.get(1).copied().unwrap_or_default();
        if jad_url.is_empty() {
            return Err(SimError::Invalid(
                "AT^SJOTAP: the 2nd parameter (the JAD URL) is empty".into(),
            ));
        }
        Endpoint::parse(jad_url)
            .map_err(|e| SimError::Invalid(format!("AT^SJOTAP JAD URL: {e}")))?;
        let notify_url = match params.get(10).copied().filter(|u| !u.is_empty()) {
            Some(u) => Some(u),
            None => params
                .get(11)
                .copied()
                .filter(|u| strip_prefix_ci(u, "https://").is_some()),
        };
        if params.len() > 12 {
            return Err(SimError::Invalid(format!(
                "AT^SJOTAP takes at most 12 parameters, not {}",
                params.len()
            )));
        }
        if let Some(u) = notify_url {
            Endpoint::parse(u)
                .map_err(|e| SimError::Invalid(format!("AT^SJOTAP notify URL: {e}")))?;
        }
        Ok(Self {
            jad_url: jad_url.to_owned(),
            notify_url: notify_url.map(str::to_owned),
        })
    }
}

/// What one firmware job ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Downloaded, verified and `900 Success` notified: the modem restarts onto
    /// `version`.
    Install {
        /// The version the modem reports after its restart.
        version: String,
    },
    /// The update failed on the modem's side and `status` was (or, when `notified` is
    /// false, could not be) POSTed; the modem keeps its version and does not restart.
    Rejected {
        /// What was reported (904, 907, 903, 906, 901).
        status: InstallStatus,
        /// What went wrong, in words.
        reason: String,
        /// Whether the notification was accepted (HTTP 2xx).
        notified: bool,
    },
    /// The server answered a GET with HTTP 4xx: the modem gave up at once and reported
    /// nothing.
    Refused {
        /// The HTTP status.
        status: u16,
    },
}

/// What a firmware job needs: the modem's TLS identity, limits, misbehaviour, counters.
#[derive(Debug, Clone)]
pub struct JobContext {
    imei: String,
    tls: Arc<ClientConfig>,
    settings: DownloadSettings,
    fault: FirmwareFault,
    counters: Arc<Counters>,
}

impl JobContext {
    /// For the modem `imei` presenting the certificate in `tls` (its MQTT configuration:
    /// same roots, same client certificate; only ALPN `http/1.1` is added).
    pub fn new(
        imei: &str,
        tls: &ClientConfig,
        settings: DownloadSettings,
        fault: FirmwareFault,
        counters: Arc<Counters>,
    ) -> Self {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            imei: imei.to_owned(),
            tls: Arc::new(tls),
            settings,
            fault,
            counters,
        }
    }
}

/// A modem's firmware version and how many updates it has installed, shared between
/// its task and its handles.
#[derive(Debug)]
pub(crate) struct FirmwareState {
    version: Mutex<String>,
    installs: AtomicU64,
}

impl FirmwareState {
    pub(crate) fn new(version: &str) -> Self {
        Self {
            version: Mutex::new(version.to_owned()),
            installs: AtomicU64::new(0),
        }
    }

    pub(crate) fn version(&self) -> String {
        self.version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn installs(&self) -> u64 {
        self.installs.load(Relaxed)
    }

    /// Boots onto `version` after an install.
    pub(crate) fn install(&self, version: &str) {
        *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = version.to_owned();
        self.installs.fetch_add(1, Relaxed);
    }
}

/// Runs an image update to its end (download, check, notify) and says whether the modem
/// must restart. See the [module documentation](self).
pub async fn run_image_update(ctx: &JobContext, job: &ImageUpdate) -> JobOutcome {
    let notify_url = job.notify_url();
    let result = match Endpoint::parse(&job.url) {
        Ok(ep) => download(ctx, &ep, job.size).await,
        Err(e) => Err(DownloadError::Invalid(e)),
    };
    let (code, message, reason) = match result {
        Ok(d) if d.sha256 == job.sha256 => {
            tracing::info!(imei = %ctx.imei, url = %job.url, size = d.size, version = %job.version,
                "FWUPDATE: image downloaded and verified");
            let status = InstallStatus::success();
            notify(ctx, &notify_url, &status).await;
            return JobOutcome::Install {
                version: job.version.clone(),
            };
        }
        Ok(d) => (
            907,
            "SHA-256 mismatch",
            format!(
                "the image's SHA-256 is {}, {} was announced",
                hex::encode(d.sha256),
                hex::encode(job.sha256)
            ),
        ),
        Err(DownloadError::Refused { status }) => {
            tracing::warn!(imei = %ctx.imei, url = %job.url, status, "FWUPDATE: download refused");
            return JobOutcome::Refused { status };
        }
        Err(DownloadError::SizeMismatch(r)) => (904, "Size mismatch", r),
        Err(e @ (DownloadError::GaveUp { .. } | DownloadError::Invalid(_))) => {
            (903, "Loss of Service", e.to_string())
        }
        Err(e @ DownloadError::TooLarge { .. }) => (904, "Size mismatch", e.to_string()),
    };
    reject(ctx, Some(&notify_url), code, message, reason).await
}

/// Runs an OTAP order to its end (JAD, JAR, notify) and says whether the modem must
/// restart. See the [module documentation](self).
pub async fn run_otap(ctx: &JobContext, req: &OtapRequest) -> JobOutcome {
    let at_notify = req.notify_url.as_deref();
    let jad = match Endpoint::parse(&req.jad_url) {
        Ok(ep) => fetch_small(ctx, &ep, MAX_JAD_SIZE).await,
        Err(e) => Err(DownloadError::Invalid(e)),
    };
    let jad = match jad {
        Ok(bytes) => bytes,
        Err(DownloadError::Refused { status }) => {
            tracing::warn!(imei = %ctx.imei, url = %req.jad_url, status, "OTAP: JAD refused");
            return JobOutcome::Refused { status };
        }
        Err(e @ DownloadError::TooLarge { .. }) => {
            return reject(ctx, at_notify, 906, "Invalid Descriptor", e.to_string()).await;
        }
        Err(e) => return reject(ctx, at_notify, 903, "Loss of Service", e.to_string()).await,
    };
    let jad = match String::from_utf8(jad)
        .map_err(|e| format!("the JAD is not UTF-8 text: {e}"))
        .and_then(|t| Jad::parse(&t).map_err(|e| format!("the JAD: {e}")))
    {
        Ok(j) => j,
        Err(reason) => return reject(ctx, at_notify, 906, "Invalid Descriptor", reason).await,
    };
    let notify_url = jad
        .get(otap::MIDLET_INSTALL_NOTIFY)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .or_else(|| req.notify_url.clone());
    let notify_url = notify_url.as_deref();
    let (jar_url, version, jar_size) = match otap_attributes(&jad) {
        Ok(a) => a,
        Err(reason) => return reject(ctx, notify_url, 906, "Invalid Descriptor", reason).await,
    };
    if jar_size > MAX_IMAGE_SIZE {
        let reason = format!(
            "MIDlet-Jar-Size {jar_size}: more than the {MAX_IMAGE_SIZE} bytes a modem can take"
        );
        return reject(ctx, notify_url, 901, "Insufficient Memory", reason).await;
    }
    let result = match Endpoint::parse(&jar_url) {
        Ok(ep) => download(ctx, &ep, jar_size).await,
        Err(e) => {
            let reason = format!("MIDlet-Jar-URL: {e}");
            return reject(ctx, notify_url, 906, "Invalid Descriptor", reason).await;
        }
    };
    let (code, message, reason) = match result {
        Ok(_) if ctx.fault == FirmwareFault::OtapSizeMismatch => (
            904,
            "JAR Size Mismatch",
            "otap-size-mismatch: the size is reported wrong on purpose".to_owned(),
        ),
        Ok(d) => {
            tracing::info!(imei = %ctx.imei, url = %jar_url, size = d.size, %version,
                "OTAP: JAR downloaded");
            notify_opt(ctx, notify_url, &InstallStatus::success()).await;
            return JobOutcome::Install { version };
        }
        Err(DownloadError::Refused { status }) => {
            tracing::warn!(imei = %ctx.imei, url = %jar_url, status, "OTAP: JAR refused");
            return JobOutcome::Refused { status };
        }
        Err(e @ (DownloadError::SizeMismatch(_) | DownloadError::TooLarge { .. })) => {
            (904, "JAR Size Mismatch", e.to_string())
        }
        Err(e @ (DownloadError::GaveUp { .. } | DownloadError::Invalid(_))) => {
            (903, "Loss of Service", e.to_string())
        }
    };
    reject(ctx, notify_url, code, message, reason).await
}

/// `MIDlet-Jar-URL`, `MIDlet-Version` and `MIDlet-Jar-Size`, each checked.
fn otap_attributes(jad: &Jad) -> Result<(String, String, u64), String> {
    let missing = |name: &str| format!("the JAD has no {name}");
    let jar_url = jad
        .get(otap::MIDLET_JAR_URL)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| missing(otap::MIDLET_JAR_URL))?;
    let version = jad
        .get(otap::MIDLET_VERSION)
        .ok_or_else(|| missing(otap::MIDLET_VERSION))?;
    check_version(version).map_err(|e| format!("{}: {e}", otap::MIDLET_VERSION))?;
    let size = jad
        .get(otap::MIDLET_JAR_SIZE)
        .ok_or_else(|| missing(otap::MIDLET_JAR_SIZE))?;
    let jar_size = jad.jar_size().ok_or_else(|| {
        format!(
            "{} {:?} is not a number of bytes",
            otap::MIDLET_JAR_SIZE,
            shorten(size)
        )
    })?;
    Ok((jar_url.to_owned(), version.to_owned(), jar_size))
}

/// Reports a failure (best effort) and makes it the job's outcome.
async fn reject(
    ctx: &JobContext,
    notify_url: Option<&str>,
    code: u16,
    message: &str,
    reason: String,
) -> JobOutcome {
    tracing::warn!(imei = %ctx.imei, code, %reason, "firmware update failed");
    let status = InstallStatus::new(code, message).unwrap_or_else(|_| InstallStatus::success());
    let notified = notify_opt(ctx, notify_url, &status).await;
    JobOutcome::Rejected {
        status,
        reason,
        notified,
    }
}

async fn notify_opt(ctx: &JobContext, url: Option<&str>, status: &InstallStatus) -> bool {
    match url {
        Some(url) => notify(ctx, url, status).await,
        None => {
            tracing::warn!(imei = %ctx.imei, status = %status, "no notify URL: status not reported");
            false
        }
    }
}

/// POSTs `status` to `url`; `true` once the server accepts it (2xx). Connection errors
/// and 5xx are retried ([`NOTIFY_TRIES`] requests in all).
async fn notify(ctx: &JobContext, url: &str, status: &InstallStatus) -> bool {
    let ep = match Endpoint::parse(url) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::warn!(imei = %ctx.imei, %url, error = %e, "notify URL unusable");
            return false;
        }
    };
    let body = Bytes::from(status.to_body());
    for attempt in 0..NOTIFY_TRIES {
        if attempt > 0 {
            tokio::time::sleep(ctx.settings.backoff(attempt - 1)).await;
        }
        let request = ep
            .request(http::Method::POST)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(imei = %ctx.imei, %url, error = %e, "cannot build the notify request");
                return false;
            }
        };
        match send(ctx, &ep, request).await {
            Ok(ex) if ex.response.status().is_success() => {
                Counters::add(&ctx.counters.notifies_sent);
                tracing::debug!(imei = %ctx.imei, %url, status = %status, "install status reported");
                return true;
            }
            Ok(ex) if ex.response.status().is_server_error() => {
                tracing::debug!(imei = %ctx.imei, %url, http = %ex.response.status(), "notify: retrying");
            }
            Ok(ex) => {
                tracing::warn!(imei = %ctx.imei, %url, http = %ex.response.status(), "notify refused");
                return false;
            }
            Err(e) => tracing::debug!(imei = %ctx.imei, %url, error = %e, "notify: retrying"),
        }
    }
    tracing::warn!(imei = %ctx.imei, %url, status = %status, "notify: no answer, giving up");
    false
}

/// What a complete download delivered.
#[derive(Debug, Clone, Copy)]
struct Downloaded {
    size: u64,
    sha256: [u8; 32],
}

/// Why a download did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum DownloadError {
    /// HTTP 4xx: give up, report nothing.
    #[error("the server refused it with HTTP {status}")]
    Refused { status: u16 },
    /// The body is not the announced size.
    #[error("{0}")]
    SizeMismatch(String),
    /// A body without an announced size is over the limit.
    #[error("the response is larger than the {limit} bytes accepted")]
    TooLarge { limit: u64 },
    /// Every try failed.
    #[error("no complete download after {tries} requests; the last: {last}")]
    GaveUp { tries: u32, last: String },
    /// The URL is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// How one request of a download ended, when it did not complete it.
enum Step {
    /// Try again (resuming when possible).
    Retry(String),
    /// Stop the download.
    Fail(DownloadError),
}

/// The part of a download received so far.
struct Progress {
    have: u64,
    hasher: Sha256,
    etag: Option<String>,
    corrupt: bool,
}

impl Progress {
    fn restart(&mut self) {
        self.have = 0;
        self.hasher = Sha256::new();
    }

    fn take(&mut self, data: &[u8], counters: &Counters) {
        match data.split_first() {
            Some((first, rest)) if self.corrupt && self.have == 0 => {
                self.hasher.update([first ^ 0xff]);
                self.hasher.update(rest);
            }
            _ => self.hasher.update(data),
        }
        let n = data.len() as u64;
        self.have += n;
        counters.download_bytes.fetch_add(n, Relaxed);
    }
}

/// Downloads exactly `size` bytes from `ep`, hashing them, resuming after cuts.
async fn download(ctx: &JobContext, ep: &Endpoint, size: u64) -> Result<Downloaded, DownloadError> {
    Counters::add(&ctx.counters.downloads_started);
    let interrupt_at = (ctx.fault == FirmwareFault::DownloadInterrupt)
        .then(|| (size / 2).max(1))
        .filter(|at| *at < size);
    let mut p = Progress {
        have: 0,
        hasher: Sha256::new(),
        etag: None,
        corrupt: ctx.fault == FirmwareFault::Corrupt,
    };
    let tries = ctx.settings.tries.max(1);
    let mut last = String::new();
    for attempt in 0..tries {
        if attempt > 0 {
            tokio::time::sleep(ctx.settings.backoff(attempt - 1)).await;
        }
        let cut_at = if attempt == 0 { interrupt_at } else { None };
        match download_once(ctx, ep, size, &mut p, cut_at).await {
            Ok(()) => {
                return Ok(Downloaded {
                    size,
                    sha256: std::mem::take(&mut p.hasher).finalize().into(),
                });
            }
            Err(Step::Fail(e)) => return Err(e),
            Err(Step::Retry(e)) => {
                tracing::debug!(imei = %ctx.imei, url = %ep.url, have = p.have, size, attempt,
                    error = %e, "download interrupted");
                last = e;
            }
        }
    }
    Err(DownloadError::GaveUp { tries, last })
}

/// One request of a download: from `p.have` to the end (or to `cut_at`).
async fn download_once(
    ctx: &JobContext,
    ep: &Endpoint,
    size: u64,
    p: &mut Progress,
    cut_at: Option<u64>,
) -> Result<(), Step> {
    let mut request = ep.request(http::Method::GET);
    if p.have > 0 {
        request = request.header(header::RANGE, format!("bytes={}-", p.have));
        if let Some(etag) = &p.etag {
            request = request.header(header::IF_RANGE, etag.as_str());
        }
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| Step::Fail(DownloadError::Invalid(format!("request: {e}"))))?;
    let ex = send(ctx, ep, request).await.map_err(Step::Retry)?;
    let status = ex.response.status();
    check_status(ctx, status)?;
    let headers = ex.response.headers();
    match status {
        StatusCode::OK => {
            if p.have > 0 {
                tracing::debug!(imei = %ctx.imei, url = %ep.url, have = p.have,
                    "the server sent the whole body again: starting over");
                p.restart();
            }
            p.etag = header_str(headers, &header::ETAG)
                .filter(|e| e.len() <= MAX_ETAG_LEN)
                .map(str::to_owned);
            if let Some(len) = content_length(headers)
                && len != size
            {
                return Err(Step::Fail(DownloadError::SizeMismatch(format!(
                    "the server announces {len} bytes, {size} were expected"
                ))));
            }
        }
        StatusCode::PARTIAL_CONTENT if p.have > 0 => {
            let range = header_str(headers, &header::CONTENT_RANGE).and_then(parse_content_range);
            let Some((start, end, total)) = range else {
                p.restart();
                return Err(Step::Retry(
                    "206 without a valid Content-Range: starting over".into(),
                ));
            };
            if start != p.have {
                p.restart();
                return Err(Step::Retry(format!(
                    "206 for bytes {start}-{end}, {}- was asked: starting over",
                    p.have
                )));
            }
            if let Some(total) = total
                && total != size
            {
                return Err(Step::Fail(DownloadError::SizeMismatch(format!(
                    "the server announces {total} bytes in all, {size} were expected"
                ))));
            }
            Counters::add(&ctx.counters.download_resumes);
        }
        other => return Err(Step::Retry(format!("unexpected HTTP {other}"))),
    }
    let mut body = ex.response.into_body();
    while let Some(data) = next_data(&mut body, ctx.settings.stall_timeout)
        .await
        .map_err(Step::Retry)?
    {
        let room = size - p.have;
        if data.len() as u64 > room {
            return Err(Step::Fail(DownloadError::SizeMismatch(format!(
                "the server sent more than the {size} bytes announced"
            ))));
        }
        if let Some(cut) = cut_at {
            let left = usize::try_from(cut.saturating_sub(p.have)).unwrap_or(usize::MAX);
            if data.len() >= left {
                p.take(&data[..left], &ctx.counters);
                return Err(Step::Retry(format!(
                    "download-interrupt: cut after {} of {size} bytes",
                    p.have
                )));
            }
        }
        p.take(&data, &ctx.counters);
    }
    if p.have == size {
        Ok(())
    } else {
        Err(Step::Retry(format!(
            "the body ended after {} of {size} bytes",
            p.have
        )))
    }
}

/// 4xx ends the download (counted), 5xx is retried.
fn check_status(ctx: &JobContext, status: StatusCode) -> Result<(), Step> {
    if status.is_client_error() {
        Counters::add(&ctx.counters.downloads_refused);
        return Err(Step::Fail(DownloadError::Refused {
            status: status.as_u16(),
        }));
    }
    if status.is_server_error() {
        return Err(Step::Retry(format!("HTTP {status}")));
    }
    Ok(())
}

/// GETs a small document (at most `limit` bytes), starting over after a cut.
/// GETs a small file (at most `limit` bytes) from an https `url` as the modem, with the
/// retries of [`DownloadSettings`] (a trust bundle, for instance).
pub async fn fetch(ctx: &JobContext, url: &str, limit: usize) -> Result<Vec<u8>, String> {
    let ep = Endpoint::parse(url)?;
    fetch_small(ctx, &ep, limit)
        .await
        .map_err(|e| e.to_string())
}

async fn fetch_small(
    ctx: &JobContext,
    ep: &Endpoint,
    limit: usize,
) -> Result<Vec<u8>, DownloadError> {
    let tries = ctx.settings.tries.max(1);
    let mut last = String::new();
    for attempt in 0..tries {
        if attempt > 0 {
            tokio::time::sleep(ctx.settings.backoff(attempt - 1)).await;
        }
        match fetch_small_once(ctx, ep, limit).await {
            Ok(body) => return Ok(body),
            Err(Step::Fail(e)) => return Err(e),
            Err(Step::Retry(e)) => {
                tracing::debug!(imei = %ctx.imei, url = %ep.url, attempt, error = %e, "GET interrupted");
                last = e;
            }
        }
    }
    Err(DownloadError::GaveUp { tries, last })
}

async fn fetch_small_once(ctx: &JobContext, ep: &Endpoint, limit: usize) -> Result<Vec<u8>, Step> {
    let too_large = || {
        Step::Fail(DownloadError::TooLarge {
            limit: limit as u64,
        })
    };
    let request = ep
        .request(http::Method::GET)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Step::Fail(DownloadError::Invalid(format!("request: {e}"))))?;
    let ex = send(ctx, ep, request).await.map_err(Step::Retry)?;
    let status = ex.response.status();
    check_status(ctx, status)?;
    if status != StatusCode::OK {
        return Err(Step::Retry(format!("unexpected HTTP {status}")));
    }
    if content_length(ex.response.headers()).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = ex.response.into_body();
    let mut out = Vec::new();
    while let Some(data) = next_data(&mut body, ctx.settings.stall_timeout)
        .await
        .map_err(Step::Retry)?
    {
        if out.len() + data.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// A response, and the connection it came on (closed when this is dropped).
struct Exchange {
    response: Response<Incoming>,
    _connection: AbortOnDropHandle<()>,
}

/// One request on a connection of its own: TCP, TLS as the modem, HTTP/1.1, all within
/// the request timeout.
async fn send(
    ctx: &JobContext,
    ep: &Endpoint,
    request: Request<Full<Bytes>>,
) -> Result<Exchange, String> {
    let timeout = ctx.settings.request_timeout;
    let exchange = async {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("TCP {}: {e}", ep.authority))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(ctx.tls.clone())
            .connect(ep.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS {}: {e}", ep.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let connection = AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        Ok(Exchange {
            response,
            _connection: connection,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no response from {} within {timeout:?}", ep.authority))?
}

/// The next non-empty piece of a body; `None` at its (clean) end.
async fn next_data(body: &mut Incoming, stall: Duration) -> Result<Option<Bytes>, String> {
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(format!("no byte for {stall:?}")),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(format!("body cut: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Ok(Some(data));
                }
            }
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, &header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// `bytes <start>-<end>/<total or *>` → (start, end, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = strip_prefix_ci(value.trim(), "bytes")?;
    let rest = rest.strip_prefix(' ')?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start, end, total))
}

/// Where a request goes: an `https://` URL taken apart.
#[derive(Debug, Clone)]
struct Endpoint {
    url: String,
    /// Host for TCP (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// Path and query.
    path: String,
    server_name: ServerName<'static>,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let shown = shorten(url);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
        if !uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err(format!("{shown:?} is not an https:// URL"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{shown:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{shown:?}: user information in the URL is not supported"
            ));
        }
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() {
            return Err(format!("{shown:?} has no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        if port == 0 {
            return Err(format!("{shown:?}: port 0"));
        }
        let server_name = ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("{shown:?}: host {bare:?} is not a valid server name: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            host: bare.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            server_name,
        })
    }

    /// A request builder for `method` on this URL, with `Host` and `User-Agent`.
    fn request(&self, method: http::Method) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::USER_AGENT, USER_AGENT)
    }
}

/// Checks a firmware version as a simulated modem takes it (`FWUPDATE`'s `<version>`,
/// `MIDlet-Version`, [`crate::ModemSettings::firmware_version`]): 1 to
/// [`MAX_VERSION_LEN`] printable ASCII characters, no spaces.
pub fn validate_version(v: &str) -> Result<(), SimError> {
    check_version(v).map_err(|e| SimError::Invalid(format!("firmware version: {e}")))
}

fn check_version(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty".into());
    }
    if v.chars().count() > MAX_VERSION_LEN {
        return Err(format!("longer than {MAX_VERSION_LEN} characters"));
    }
    if let Some(c) = v.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{:?} contains {c:?}; only printable ASCII without spaces is allowed",
            shorten(v)
        ));
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Strips `prefix` from `s`, ignoring ASCII case.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn fwupdate_arguments() {
        let u = ImageUpdate::from_args(&args(&[
            "https://127.0.0.1:8443/fw/AbC",
            "2.0.0",
            SHA,
            "1048576",
        ]))
        .unwrap();
        assert_eq!(u.version, "2.0.0");
        assert_eq!(u.size, 1_048_576);
        assert_eq!(hex::encode(u.sha256), SHA);
        assert_eq!(u.notify_url(), "https://127.0.0.1:8443/fw/AbC/notify");
        let upper = ImageUpdate::from_args(&args(&[
            "https://h/fw/x/?a=b",
            "v",
            &SHA.to_uppercase(),
            "0",
        ]))
        .unwrap();
        assert_eq!(upper.sha256, u.sha256);
        assert_eq!(upper.notify_url(), "https://h/fw/x/notify?a=b");

        let bad = |a: &[&str], needle: &str| {
            let e = ImageUpdate::from_args(&args(a)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        bad(&["https://h/x", "1", SHA], "4 arguments");
        bad(&["http://h/x", "1", SHA, "1"], "not an https:// URL");
        bad(&["https:///x", "1", SHA, "1"], "URL");
        bad(&["https://u:p@h/x", "1", SHA, "1"], "user information");
        bad(&["https://h/x", "", SHA, "1"], "version: empty");
        bad(&["https://h/x", "1 2", SHA, "1"], "printable ASCII");
        bad(&["https://h/x", "1", &SHA[1..], "1"], "64 hexadecimal");
        bad(
            &["https://h/x", "1", &SHA.replace('9', "g"), "1"],
            "64 hexadecimal",
        );
        bad(&["https://h/x", "1", SHA, "-1"], "not a number");
        bad(&["https://h/x", "1", SHA, "268435457"], "more than");
    }

    #[test]
    fn sjotap_parameters() {
        let jad = "https://127.0.0.1:8443/fw/T/jad";
        let notify = "https://127.0.0.1:8443/fw/T/notify";
        // The 11th parameter, as Cinterion documents it.
        let r = OtapRequest::parse_command(&format!("AT^SJOTAP=,{jad},a:/,,,gprs,,,,,{notify}"))
            .unwrap()
            .unwrap();
        assert_eq!(r.jad_url, jad);
        assert_eq!(r.notify_url.as_deref(), Some(notify));
        // The contract's template (one comma more): the URL in 12th place is taken.
        let r = OtapRequest::parse_command(&format!(
            " at ^ sjotap = ,{jad},a:/,,,gprs,,,,,,{notify}\r\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.notify_url.as_deref(), Some(notify));
        // No notify URL at all.
        let r = OtapRequest::parse_command(&format!("AT^SJOTAP=pw,{jad}"))
            .unwrap()
            .unwrap();
        assert_eq!(r.notify_url, None);

        assert!(OtapRequest::parse_command("AT^SJOTAP?").is_none());
        assert!(OtapRequest::parse_command("AT^SJOTAP=?").is_none());
        assert!(OtapRequest::parse_command("AT^MTXTUNNEL=VERSION").is_none());
        let err = |t: &str| {
            OtapRequest::parse_command(t)
                .unwrap()
                .unwrap_err()
                .to_string()
        };
        assert!(err("AT^SJOTAP=").contains("JAD URL) is empty"));
        assert!(err("AT^SJOTAP=,ftp://h/x").contains("https://"));
        assert!(err(&format!("AT^SJOTAP=,{jad},,,,,,,,,http://h/n")).contains("notify URL"));
        assert!(err(&format!("AT^SJOTAP=,{jad},,,,,,,,,,,,")).contains("at most 12"));
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://[::1]:8443/fw/a?b=c").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.port, 8443);
        assert_eq!(e.authority, "[::1]:8443");
        assert_eq!(e.path, "/fw/a?b=c");
        assert!(matches!(e.server_name, ServerName::IpAddress(_)));
        let e = Endpoint::parse("HTTPS://gw.example").unwrap();
        assert_eq!((e.port, e.path.as_str()), (443, "/"));
        assert!(matches!(e.server_name, ServerName::DnsName(_)));
        assert!(Endpoint::parse("https://h:0/").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, 99, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        for bad in [
            "bytes 10-9/100",
            "bytes 10-100/100",
            "bytes */100",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = DownloadSettings::default();
        let waits: Vec<u64> = (0..6)
            .map(|i| u64::try_from(s.backoff(i).as_millis()).unwrap())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(s.backoff(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn corrupt_progress_flips_the_first_byte_only() {
        let counters = Counters::new(1);
        let hash = |corrupt: bool, pieces: &[&[u8]]| {
            let mut p = Progress {
                have: 0,
                hasher: Sha256::new(),
                etag: None,
                corrupt,
            };
            for piece in pieces {
                p.take(piece, &counters);
            }
            (p.have, <[u8; 32]>::from(p.hasher.finalize()))
        };
        let right: [u8; 32] = Sha256::digest(b"hello world").into();
        assert_eq!(hash(false, &[b"hello", b" world"]), (11, right));
        let (n, wrong) = hash(true, &[b"hello", b" world"]);
        assert_eq!(n, 11);
        assert_ne!(wrong, right);
        let flipped: [u8; 32] = Sha256::digest(b"\x97ello world").into();
        assert_eq!(wrong, flipped);
        assert_eq!(counters.snapshot().download_bytes, 22);
    }
}
