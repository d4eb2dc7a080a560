//! One device's firmware update, as a step of a firmware campaign (a job whose operation
//! is `firmware_update`).
//!
//! 1. `VERSION` before: the version is recorded in the inventory and the event log, and the
//!    device is checked against the firmware ([`callhome_core::firmware::compatibility`]):
//!    another model, below the minimum version or already at the target ends the
//!    execution `skipped` with the reason.
//! 2. A download token of its own (random, per device and per execution attempt, kept in
//!    the store so that an execution resumed after a server restart sends the very same
//!    command from its journal) and the dialect's update command: `firmware_update` with
//!    the image URL, or `firmware_otap` with the JAD URL for a MIDlet.
//! 3. The install followed through the store (the download listener records requests,
//!    bytes and the modem's install status) and the device's presence: a non-900 install
//!    status, or a download refused to the device itself, ends it at once; a modem that is
//!    not back within the install timeout ends `timed_out`.
//! 4. `VERSION` after the reconnection: the target version is `updated` (the only success);
//!    any other version is `rolled_back`.

use std::time::Duration;

use base64::Engine as _;
use callhome_core::firmware::{self, ExecEventKind, FirmwareKind, UpdateOutcome, Version};
use callhome_core::jobs::ExecState;
use callhome_core::{Imei, dialect};
use callhome_store::{CommandRecord, CommandState, DownloadRecord, FirmwareRecord, NewDownload};
use rand::RngCore as _;
use serde_json::json;
use sha2::Digest as _;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::ConfigService;
use crate::exec::{Outcome, Timing, command_error};
use crate::journal::Journal;
use crate::{FleetError, Result};

/// Settings of firmware campaigns.
#[derive(Debug, Clone)]
pub struct FirmwareCampaignSettings {
    /// The device-facing HTTPS listener as modems reach it (`https://host:port`, no
    /// trailing slash); `None`: no listener, so no firmware campaign can be created.
    pub base_url: Option<String>,
    /// How long a download token stays valid after it is made (it also ends with its
    /// execution).
    pub token_ttl: Duration,
}

impl Default for FirmwareCampaignSettings {
    fn default() -> Self {
        Self {
            base_url: None,
            token_ttl: Duration::from_secs(6 * 3600),
        }
    }
}

/// The SHA-256 (hex) of a download token: how it is looked up (the token itself is only
/// in the URL and, sealed, in the store).
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The image (or JAR) URL of a token.
pub fn file_url(base: &str, token: &str) -> String {
    format!("{base}/fw/{token}")
}

/// The JAD URL of a token.
pub fn jad_url(base: &str, token: &str) -> String {
    format!("{base}/fw/{token}/jad")
}

/// The install-notify URL of a token.
pub fn notify_url(base: &str, token: &str) -> String {
    format!("{base}/fw/{token}/notify")
}

/// The execution being run.
#[derive(Debug, Clone, Copy)]
pub struct Execution<'a> {
    /// The campaign.
    pub job_id: Uuid,
    /// The device.
    pub imei: &'a Imei,
    /// Which attempt of the device's execution.
    pub attempt: i64,
}

/// The operation's parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Update {
    pub firmware_id: Uuid,
    pub force: bool,
    pub install_timeout: Duration,
}

fn ended(
    state: ExecState,
    outcome: UpdateOutcome,
    error: Option<String>,
    result: serde_json::Value,
) -> Outcome {
    Outcome {
        state,
        error,
        result,
        outcome: Some(outcome),
    }
}

fn failed(outcome: UpdateOutcome, error: impl Into<String>, result: serde_json::Value) -> Outcome {
    ended(ExecState::Failed, outcome, Some(error.into()), result)
}

/// Runs the update; always ends with an outcome (a store failure is `interrupted`).
pub(crate) async fn run(
    config: &ConfigService,
    settings: &FirmwareCampaignSettings,
    journal: &mut Journal,
    exec: Execution<'_>,
    update: Update,
    timing: Timing,
) -> Outcome {
    let run = Run {
        config,
        settings,
        exec,
    };
    let outcome = match run.update(journal, update, timing).await {
        Ok(o) => o,
        Err(FleetError::Device(e)) => {
            failed(UpdateOutcome::Interrupted, e, serde_json::Value::Null)
        }
        Err(e) => failed(
            UpdateOutcome::Interrupted,
            e.to_string(),
            serde_json::Value::Null,
        ),
    };
    // The token is refused from now on, whatever happened.
    if let Err(e) = config
        .store()
        .close_downloads(exec.job_id, exec.imei, OffsetDateTime::now_utc())
        .await
    {
        tracing::warn!(error = %e, "could not close the execution's download token");
    }
    outcome
}

struct Run<'a> {
    config: &'a ConfigService,
    settings: &'a FirmwareCampaignSettings,
    exec: Execution<'a>,
}

impl Run<'_> {
    async fn event(&self, kind: ExecEventKind, detail: serde_json::Value) {
        let detail = (!detail.is_null()).then(|| detail.to_string());
        if let Err(e) = self
            .config
            .store()
            .append_job_event(
                self.exec.job_id,
                self.exec.imei,
                kind,
                detail.as_deref(),
                OffsetDateTime::now_utc(),
            )
            .await
        {
            tracing::warn!(error = %e, kind = kind.as_str(), "could not record an execution event");
        }
    }

    /// Sends `VERSION` and reads the version it reports. `VERSION` changes nothing, so a
    /// request that got no reply (sent on a connection that broke, or before a server
    /// restart) is asked again, up to three times in all.
    async fn version(
        &self,
        journal: &mut Journal,
        timing: Timing,
    ) -> Result<std::result::Result<Version, String>> {
        let mut tries = 0;
        let done = loop {
            tries += 1;
            let done = journal
                .run(
                    self.config.dialect().version()?,
                    timing.command_timeout,
                    timing.queue_wait,
                )
                .await?;
            if done.state != CommandState::TimedOut || tries >= 3 {
                break done;
            }
            tracing::info!(tries, "VERSION got no reply; asking again");
        };
        if done.state != CommandState::Succeeded {
            return Ok(Err(command_error(&done)));
        }
        let reply = done.reply.as_deref().unwrap_or("");
        let version = dialect::parse_version_reply(reply)
            .map_err(|e| e.to_string())
            .and_then(|line| Version::from_reported(&line).map_err(|e| e.to_string()));
        // The gateway records it in the inventory (for every VERSION reply).
        match version {
            Ok(v) => Ok(Ok(v)),
            Err(e) => Ok(Err(format!("unreadable VERSION reply: {e}"))),
        }
    }

    async fn update(
        &self,
        journal: &mut Journal,
        update: Update,
        timing: Timing,
    ) -> Result<Outcome> {
        let store = self.config.store();
        let fw = match store.get_firmware(update.firmware_id).await {
            Ok(fw) => fw,
            Err(callhome_store::StoreError::NotFound(_)) => {
                return Ok(failed(
                    UpdateOutcome::Interrupted,
                    format!(
                        "firmware {} was removed from the repository",
                        update.firmware_id
                    ),
                    serde_json::Value::Null,
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let target = Version::parse(&fw.version)?;
        let min = fw.min_version.as_deref().map(Version::parse).transpose()?;

        // 1. The version before, and whether the device qualifies.
        let before = match self.version(journal, timing).await? {
            Ok(v) => v,
            Err(e) => {
                return Ok(failed(
                    UpdateOutcome::Interrupted,
                    format!("VERSION before the update failed: {e}"),
                    serde_json::Value::Null,
                ));
            }
        };
        self.event(
            ExecEventKind::VersionBefore,
            json!({ "version": before.as_str() }),
        )
        .await;
        let device = store.get_device(self.exec.imei).await?;
        let result = json!({ "version_before": before.as_str(), "target": target.as_str() });
        if let Err((outcome, why)) = firmware::compatibility(
            firmware::Target {
                version: &target,
                models: &fw.models,
                min_version: min.as_ref(),
            },
            device.model.as_deref(),
            &before,
            update.force,
        ) {
            self.event(
                ExecEventKind::Skipped,
                json!({ "outcome": outcome, "reason": why }),
            )
            .await;
            return Ok(ended(ExecState::Skipped, outcome, Some(why), result));
        }

        // 2. The token and the update command.
        let Some(base) = self.settings.base_url.as_deref() else {
            return Ok(failed(
                UpdateOutcome::InstallFailed,
                "the device-facing HTTPS listener is not configured",
                result,
            ));
        };
        let download = self.download(&fw).await?;
        let command = match fw.kind {
            FirmwareKind::Image => self.config.dialect().firmware_update(
                &file_url(base, &download.token),
                target.as_str(),
                &fw.sha256,
                u64::try_from(fw.size).unwrap_or(0),
            )?,
            FirmwareKind::Midlet => self.config.dialect().firmware_otap(
                &jad_url(base, &download.token),
                &notify_url(base, &download.token),
                target.as_str(),
            )?,
        };
        let mut ack = journal
            .run(command.clone(), timing.command_timeout, timing.queue_wait)
            .await?;
        if ack.state == CommandState::TimedOut
            && !self
                .started_downloading(&download, timing.command_timeout)
                .await?
        {
            // No reply, and no download: the command was most likely lost (a connection
            // that broke, a server restart). Sent once more; a modem that did get the
            // first one answers this one with an error (busy) or downloads anyway.
            tracing::info!(
                "the update command got no reply and nothing was downloaded; sending it again"
            );
            ack = journal
                .run(command, timing.command_timeout, timing.queue_wait)
                .await?;
        }
        let acknowledged = ack.state == CommandState::Succeeded
            || (ack.state == CommandState::TimedOut
                && self.started_downloading(&download, Duration::ZERO).await?);
        if !acknowledged {
            return Ok(failed(
                UpdateOutcome::InstallFailed,
                format!(
                    "the modem refused the update command: {}",
                    command_error(&ack)
                ),
                result,
            ));
        }
        self.event(
            ExecEventKind::CommandAcknowledged,
            json!({ "command_id": ack.id }),
        )
        .await;

        // 3. The download, the install and the restart.
        if let Some(end) = self
            .follow(&ack, &download, update.install_timeout, &result)
            .await?
        {
            return Ok(end);
        }

        // 4. The version after the restart decides.
        let after = match self.version(journal, timing).await? {
            Ok(v) => v,
            Err(e) => {
                return Ok(failed(
                    UpdateOutcome::Interrupted,
                    format!("VERSION after the restart failed: {e}"),
                    result,
                ));
            }
        };
        self.event(
            ExecEventKind::VersionSeen,
            json!({ "version": after.as_str() }),
        )
        .await;
        let mut result = result;
        result["version_after"] = json!(after.as_str());
        let served = store.get_download(&download.token_hash).await?;
        result["download"] = json!({
            "requests": served.requests,
            "resumptions": served.resumptions,
            "bytes_served": served.bytes_served,
        });
        if after.compare(&target) == std::cmp::Ordering::Equal {
            Ok(ended(
                ExecState::Succeeded,
                UpdateOutcome::Updated,
                None,
                result,
            ))
        } else {
            Ok(failed(
                UpdateOutcome::RolledBack,
                format!("the modem came back on {after}, not {target}"),
                result,
            ))
        }
    }

    /// Whether the modem has requested the file (or posted an install status) within
    /// `wait`: proof that it got the update command even if its reply was lost.
    async fn started_downloading(&self, download: &DownloadRecord, wait: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let d = self
                .config
                .store()
                .get_download(&download.token_hash)
                .await?;
            if d.requests > 0 || d.notified_at.is_some() || d.refused.is_some() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The execution attempt's download token: the one it already has, or a new one.
    async fn download(&self, fw: &FirmwareRecord) -> Result<DownloadRecord> {
        let store = self.config.store();
        if let Some(d) = store
            .download_of(self.exec.job_id, self.exec.imei, self.exec.attempt)
            .await?
        {
            return Ok(d);
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = OffsetDateTime::now_utc();
        Ok(store
            .create_download(&NewDownload {
                token_hash: token_hash(&token),
                token,
                job_id: self.exec.job_id,
                imei: self.exec.imei.clone(),
                attempt: self.exec.attempt,
                firmware_id: fw.id,
                at: now,
                expires_at: now
                    + time::Duration::try_from(self.settings.token_ttl)
                        .unwrap_or(time::Duration::hours(6)),
            })
            .await?)
    }

    /// Waits until the modem is back after its restart (`None`): connected again after
    /// the file was served in full (or it posted its install status); or until the update
    /// ended another way (`Some`): a failed install status, a download refused to the
    /// device, or the install timeout. Woken by the device's presence events, and reads the store
    /// every second (the download may be served by another node).
    async fn follow(
        &self,
        ack: &CommandRecord,
        download: &DownloadRecord,
        install_timeout: Duration,
        result: &serde_json::Value,
    ) -> Result<Option<Outcome>> {
        let store = self.config.store();
        let since = ack
            .completed_at
            .filter(|_| ack.state == CommandState::Succeeded)
            .or(ack.sent_at)
            .unwrap_or(ack.created_at);
        let deadline = since
            + time::Duration::try_from(install_timeout).unwrap_or(time::Duration::minutes(15));
        let watch = self.config.gateway().events().watch_device(self.exec.imei);
        loop {
            let d = store.get_download(&download.token_hash).await?;
            if let (Some(code), Some(_)) = (d.notify_code, d.notified_at)
                && code != 900
            {
                let message = d.notify_message.as_deref().unwrap_or("");
                let status = u16::try_from(code)
                    .ok()
                    .and_then(|c| callhome_core::otap::InstallStatus::new(c, message).ok())
                    .map_or_else(|| format!("{code} {message}"), |s| s.to_string());
                // Loss of service, a size mismatch or a corrupt file: the bytes that
                // arrived were not the ones served.
                let outcome = if matches!(code, 903 | 904 | 907) {
                    UpdateOutcome::DownloadFailed
                } else {
                    UpdateOutcome::InstallFailed
                };
                return Ok(Some(failed(
                    outcome,
                    format!("install status {status}"),
                    result.clone(),
                )));
            }
            if let Some(why) = &d.refused
                && d.completed_at.is_none()
            {
                return Ok(Some(failed(
                    UpdateOutcome::DownloadFailed,
                    format!("the download was refused: {why}"),
                    result.clone(),
                )));
            }
            // The install restart comes after the file was served (or the modem posted
            // its status): a connection made before that is the link breaking and coming
            // back mid-download (a server restart, lost coverage), not the install.
            let installed_from = match (d.completed_at, d.notified_at) {
                (Some(c), Some(n)) => Some(c.max(n)),
                (c, n) => c.or(n),
            };
            let device = store.get_device(self.exec.imei).await?;
            if let Some(from) = installed_from
                && device.presence.online
                && device
                    .presence
                    .connected_at
                    .is_some_and(|c| c > since && c > from)
            {
                self.event(
                    ExecEventKind::Reconnected,
                    json!({ "connected_at": device.presence.connected_at.map(|t| t.unix_timestamp()) }),
                )
                .await;
                return Ok(None);
            }
            if OffsetDateTime::now_utc() >= deadline {
                return Ok(Some(failed(
                    UpdateOutcome::TimedOut,
                    format!(
                        "the modem was not back within {} s of accepting the update ({})",
                        install_timeout.as_secs(),
                        if d.completed_at.is_some() {
                            "the file was downloaded"
                        } else if d.requests > 0 {
                            "the download did not complete"
                        } else {
                            "the file was never requested"
                        }
                    ),
                    result.clone(),
                )));
            }
            tokio::select! {
                () = watch.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
