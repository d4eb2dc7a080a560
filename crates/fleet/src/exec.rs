//! One device's execution of a job operation.

use std::time::Duration;

use callhome_core::configtxt::apply::{self, KeyResult, KeyStatus};
use callhome_core::configtxt::{ConfigFile, Whitelists};
use callhome_core::firmware::UpdateOutcome;
use callhome_core::jobs::{ExecState, RestartPolicy};
use callhome_core::{AtCommand, Imei, dialect};
use callhome_store::{CommandRecord, CommandState};
use serde::Serialize;

use crate::config::ConfigService;
use crate::firmware::{Execution, FirmwareCampaignSettings};
use crate::journal::Journal;
use crate::ops::Operation;
use crate::{FleetError, Result};

/// Timing of one execution.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Reply timeout of each command.
    pub command_timeout: Duration,
    /// How long a command may wait in the queue (the device is online when its execution
    /// starts, so this is short).
    pub queue_wait: Duration,
    /// How long the modem has to come back after a restart.
    pub restart_wait: Duration,
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `succeeded` or `failed`.
    pub state: ExecState,
    /// Why it failed.
    pub error: Option<String>,
    /// Detail (JSON).
    pub result: serde_json::Value,
    /// How a firmware update ended (firmware campaigns only).
    pub outcome: Option<UpdateOutcome>,
}

impl Outcome {
    pub(crate) fn failed(error: impl Into<String>, result: serde_json::Value) -> Self {
        Self {
            state: ExecState::Failed,
            error: Some(error.into()),
            result,
            outcome: None,
        }
    }

    pub(crate) fn succeeded(result: serde_json::Value) -> Self {
        Self {
            state: ExecState::Succeeded,
            error: None,
            result,
            outcome: None,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// Per desired key that was written or is not as desired (the others are counted in
    /// `unchanged`).
    pub keys: Vec<KeyResult>,
    /// Desired keys that already had their value.
    pub unchanged: usize,
    /// `SETPARAM`s sent.
    pub writes: usize,
    /// Whether the modem was restarted.
    pub restarted: bool,
    /// Commands answered from the journal (after a server restart).
    #[serde(skip_serializing_if = "is_zero")]
    pub replayed_commands: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(crate) fn command_error(c: &CommandRecord) -> String {
    let detail = c
        .error
        .clone()
        .or_else(|| c.reply.clone())
        .unwrap_or_default();
    if detail.is_empty() {
        c.state.as_str().to_owned()
    } else {
        format!("{}: {}", c.state.as_str(), detail.trim())
    }
}

/// Runs `op` on the execution's device.
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    config: &ConfigService,
    firmware: &FirmwareCampaignSettings,
    journal: &mut Journal,
    exec: Execution<'_>,
    op: &Operation,
    restart: RestartPolicy,
    timing: Timing,
    by: &str,
) -> Outcome {
    if let Operation::FirmwareUpdate {
        firmware_id,
        force,
        install_timeout_s,
    } = op
    {
        let update = crate::firmware::Update {
            firmware_id: *firmware_id,
            force: *force,
            install_timeout: Duration::from_secs(u64::from(*install_timeout_s)),
        };
        return crate::firmware::run(config, firmware, journal, exec, update, timing).await;
    }
    if let Operation::RotateCertificate {
        mode,
        revoke_old_after,
        confirm_timeout_s,
        install_trust_anchor,
    } = op
    {
        let rotation = crate::rotation::Rotation {
            mode: *mode,
            revoke_old_after: *revoke_old_after,
            confirm_timeout: Duration::from_secs(u64::from(*confirm_timeout_s)),
            trust_bundle_url: install_trust_anchor
                .then(|| {
                    firmware
                        .base_url
                        .as_deref()
                        .map(crate::rotation::trust_bundle_url)
                })
                .flatten(),
        };
        return match crate::rotation::run(config, journal, exec.imei, rotation, timing, by).await {
            Ok(o) => o,
            Err(e) => Outcome::failed(e.to_string(), serde_json::Value::Null),
        };
    }
    match run(config, journal, exec.imei, op, restart, timing, by).await {
        Ok(o) => o,
        Err(e) => Outcome::failed(e.to_string(), serde_json::Value::Null),
    }
}

async fn run(
    config: &ConfigService,
    journal: &mut Journal,
    imei: &Imei,
    op: &Operation,
    restart: RestartPolicy,
    timing: Timing,
    by: &str,
) -> Result<Outcome> {
    match op {
        Operation::ApplyConfig => apply_desired(config, journal, imei, restart, timing).await,
        Operation::SetKeys { keys } => {
            let keys = keys.clone();
            config
                .edit(imei, by, move |c| {
                    for (k, v) in &keys {
                        match v {
                            Some(v) => c.set(k, v).map_err(|e| {
                                vec![callhome_core::ValidationError::new(
                                    k.clone(),
                                    e.to_string(),
                                )]
                            })?,
                            None => {
                                c.remove(k);
                            }
                        }
                    }
                    Ok(())
                })
                .await?;
            apply_desired(config, journal, imei, restart, timing).await
        }
        Operation::SetWhitelists { csd, sms } => {
            let lists = Whitelists {
                csd: csd.clone(),
                sms: sms.clone(),
            };
            config
                .edit(imei, by, move |c| c.set_whitelists(&lists))
                .await?;
            apply_desired(config, journal, imei, restart, timing).await
        }
        Operation::AtCommand { command } => {
            let command = AtCommand::parse(command)?;
            let done = journal
                .run(command, timing.command_timeout, timing.queue_wait)
                .await?;
            let result = serde_json::json!({
                "command_id": done.id,
                "reply": done.reply.as_deref().map(callhome_core::secrets::redact_reply),
            });
            Ok(if done.state == CommandState::Succeeded {
                Outcome::succeeded(result)
            } else {
                Outcome::failed(command_error(&done), result)
            })
        }
        Operation::Reboot => {
            let done = journal
                .run(
                    config.dialect().reboot()?,
                    timing.command_timeout,
                    timing.queue_wait,
                )
                .await?;
            if done.state != CommandState::Succeeded {
                return Ok(Outcome::failed(
                    format!("restart refused: {}", command_error(&done)),
                    serde_json::Value::Null,
                ));
            }
            if let Err(e) = wait_back(config, imei, &done, timing.restart_wait).await {
                return Ok(Outcome::failed(e, serde_json::json!({"restarted": true})));
            }
            let back = journal
                .run(
                    config.dialect().version()?,
                    timing.command_timeout,
                    timing.queue_wait,
                )
                .await?;
            if back.state != CommandState::Succeeded {
                return Ok(Outcome::failed(
                    format!(
                        "the modem did not come back after the restart: {}",
                        command_error(&back)
                    ),
                    serde_json::json!({"restarted": true}),
                ));
            }
            let version = back
                .reply
                .as_deref()
                .and_then(|r| dialect::parse_version_reply(r).ok());
            Ok(Outcome::succeeded(
                serde_json::json!({"restarted": true, "version": version}),
            ))
        }
        // Run by `execute` itself, with the campaign settings they need.
        Operation::FirmwareUpdate { .. } | Operation::RotateCertificate { .. } => {
            Err(FleetError::Conflict(
                "firmware updates and rotations run through their own modules".to_owned(),
            ))
        }
    }
}

/// After the modem acknowledged a restart: waits until it has gone and connected again (a
/// connection accepted after the acknowledgement), so that the next command is not sent to
/// the connection that is about to drop. Works the same when the execution resumes after a
/// server restart (it compares with the acknowledgement's time, not with a session seen).
async fn wait_back(
    config: &ConfigService,
    imei: &Imei,
    ack: &CommandRecord,
    max: Duration,
) -> std::result::Result<(), String> {
    let since = ack.completed_at.unwrap_or(ack.created_at);
    let deadline = tokio::time::Instant::now() + max;
    // Woken by the device's own online/offline events; re-read every 2 s as well (another
    // node may hold its connection).
    let watch = config.gateway().events().watch_device(imei);
    loop {
        match config.store().get_device(imei).await {
            Ok(d) if d.presence.online && d.presence.connected_at.is_some_and(|c| c > since) => {
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("could not follow the restart: {e}")),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the modem did not come back within {} s of the restart",
                max.as_secs()
            ));
        }
        tokio::select! {
            () = watch.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Applies the device's effective desired configuration.
async fn apply_desired(
    config: &ConfigService,
    journal: &mut Journal,
    imei: &Imei,
    restart: RestartPolicy,
    timing: Timing,
) -> Result<Outcome> {
    let effective = config.desired(imei).await?.compose(imei)?;
    let report = effective.config.validate();
    if !report.errors.is_empty() {
        return Err(FleetError::Invalid(report.errors));
    }
    if let Some(u) = effective.unresolved.first() {
        return Ok(Outcome::failed(
            format!(
                "{}: placeholder [{}] cannot be filled for this device",
                u.key, u.placeholder
            ),
            serde_json::Value::Null,
        ));
    }
    let desired = effective.config;
    let before = config
        .read(
            journal,
            imei,
            timing.command_timeout,
            timing.queue_wait,
            Some(&desired),
        )
        .await?;
    let (report, error) = apply(config, journal, imei, &desired, &before, restart, timing).await?;
    let result = serde_json::to_value(&report).unwrap_or_default();
    Ok(match error {
        None => Outcome::succeeded(result),
        Some(e) => Outcome::failed(e, result),
    })
}

/// Writes what differs, restarts if needed, reads back and compares. Returns the report and
/// the reason the apply failed, if it did.
async fn apply(
    config: &ConfigService,
    journal: &mut Journal,
    imei: &Imei,
    desired: &ConfigFile,
    before: &ConfigFile,
    restart: RestartPolicy,
    timing: Timing,
) -> Result<(ApplyReport, Option<String>)> {
    let writes = apply::plan(desired, before);
    if writes.is_empty() {
        let keys = apply::verify(desired, before, before, &[]);
        return Ok((
            ApplyReport {
                unchanged: keys.len(),
                keys: Vec::new(),
                writes: 0,
                restarted: false,
                replayed_commands: journal.replayed(),
            },
            None,
        ));
    }
    let mut outcomes = Vec::with_capacity(writes.len());
    for w in &writes {
        let cmd = config.dialect().set_param(&w.key, &w.value)?;
        let done = journal
            .run(cmd, timing.command_timeout, timing.queue_wait)
            .await?;
        let r = if done.state == CommandState::Succeeded {
            Ok(())
        } else {
            Err(command_error(&done))
        };
        outcomes.push((w.key.clone(), r));
    }
    let written: Vec<_> = writes
        .iter()
        .zip(&outcomes)
        .filter(|(_, (_, r))| r.is_ok())
        .map(|(w, _)| w.clone())
        .collect();
    let do_restart = !written.is_empty()
        && match restart {
            RestartPolicy::Auto => apply::needs_restart(&written),
            RestartPolicy::Always => true,
            RestartPolicy::Never => false,
        };
    let mut failure = None;
    let mut restarted = false;
    if do_restart {
        let done = journal
            .run(
                config.dialect().reboot()?,
                timing.command_timeout,
                timing.queue_wait,
            )
            .await?;
        if done.state == CommandState::Succeeded {
            restarted = true;
            if let Err(e) = wait_back(config, imei, &done, timing.restart_wait).await {
                failure = Some(e);
            }
        } else {
            failure = Some(format!("restart refused: {}", command_error(&done)));
        }
    }
    let after = match config
        .read(
            journal,
            imei,
            timing.command_timeout,
            timing.queue_wait,
            Some(desired),
        )
        .await
    {
        Ok(a) => Some(a),
        Err(FleetError::Device(e)) => {
            failure.get_or_insert(format!("read-back failed: {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    let keys = match &after {
        Some(a) => apply::verify(desired, before, a, &outcomes),
        None => desired
            .keys()
            .map(|k| {
                let status = match outcomes.iter().find(|(key, _)| key == k) {
                    Some((_, Err(_))) => KeyStatus::Failed,
                    Some((_, Ok(()))) => KeyStatus::Mismatch,
                    None => KeyStatus::Unchanged,
                };
                KeyResult::new(k, desired, before, None, status)
            })
            .collect(),
    };
    let bad: Vec<&KeyResult> = keys
        .iter()
        .filter(|k| matches!(k.status, KeyStatus::Failed | KeyStatus::Mismatch))
        .collect();
    if failure.is_none() && !bad.is_empty() {
        let names: Vec<String> = bad
            .iter()
            .take(10)
            .map(|k| {
                format!(
                    "{} {}",
                    k.key,
                    if k.status == KeyStatus::Failed {
                        "rejected"
                    } else {
                        "not applied"
                    }
                )
            })
            .collect();
        failure = Some(format!("{} key(s) failed: {}", bad.len(), names.join(", ")));
    }
    let unchanged = keys
        .iter()
        .filter(|k| k.status == KeyStatus::Unchanged)
        .count();
    let keys = keys
        .into_iter()
        .filter(|k| k.status != KeyStatus::Unchanged)
        .collect();
    Ok((
        ApplyReport {
            keys,
            unchanged,
            writes: writes.len(),
            restarted,
            replayed_commands: journal.replayed(),
        },
        failure,
    ))
}
