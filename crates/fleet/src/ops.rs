//! Job operations and targets, as the API accepts them.

use std::collections::BTreeMap;

use callhome_core::jobs::{RestartPolicy, Rollout, TagExpr};
use callhome_core::{AtCommand, DriftState, ValidationError, configtxt};
use serde::{Deserialize, Serialize};

/// What a job does on each device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Apply the device's effective desired configuration: minimal `SETPARAM`s, the restart
    /// they need, read-back and per-key result.
    ApplyConfig,
    /// Set keys in each device's overrides (`null` removes a key), then apply.
    SetKeys {
        /// Key -> value (`null`: remove from the desired configuration).
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        keys: BTreeMap<String, Option<String>>,
    },
    /// Set the caller whitelists in each device's overrides, then apply.
    SetWhitelists {
        /// Numbers allowed to make CSD calls.
        csd: Vec<String>,
        /// Numbers allowed to send SMS commands (`SMS_allPhones: off` is set too).
        sms: Vec<String>,
    },
    /// Send one AT command; success is its `OK`.
    AtCommand {
        /// The command.
        command: String,
    },
    /// Restart the modem and wait until it is back (its firmware version is recorded).
    Reboot,
    /// Install a firmware from the repository: compatibility check (incompatible devices
    /// and devices already at the target are `skipped`), `VERSION` before, the dialect's
    /// update command (OTAP for a MIDlet) with a download URL of its own, the restart
    /// awaited, and success only when `VERSION` after the reconnection reports the target.
    FirmwareUpdate {
        /// The firmware.
        firmware_id: uuid::Uuid,
        /// Install even on devices that already run the target version.
        #[serde(default)]
        force: bool,
        /// How long a modem has, from acknowledging the update command, to download,
        /// install, restart and come back (default 900 s, 60-86400); past it the
        /// execution ends `timed_out`.
        #[serde(default = "default_install_timeout")]
        install_timeout_s: u32,
    },
    /// Rotate the device's client certificate, overlap then revoke: the modem gets a new
    /// certificate over its MQTT channel (`{IMEI}/csr` -> `{IMEI}/cert`), installs it and
    /// reconnects with it; only then are the certificates it replaces revoked. A modem that
    /// does not come back with the new one keeps its old one and fails `not_confirmed`.
    RotateCertificate {
        /// `csr`: the modem makes the key; `server_keygen`: Callhome does.
        mode: callhome_core::certificates::RotationMode,
        /// `confirmed` (default): revoke the replaced certificates once the modem has
        /// connected with the new one; `never`: leave them to expire.
        #[serde(default = "default_revoke_old_after")]
        revoke_old_after: callhome_core::certificates::RevokeOldAfter,
        /// How long the modem has to send its request, and then to connect with the new
        /// certificate (default 600 s, 10-86400).
        #[serde(default = "default_confirm_timeout")]
        confirm_timeout_s: u32,
        /// First have the modem fetch and trust the platform's current trust bundle (the
        /// dialect's `trust_anchor_install`, from `/ca/trust.pem` on the device-facing
        /// listener): before a CA rollover changes the server's certificate chain.
        #[serde(default)]
        install_trust_anchor: bool,
    },
}

fn default_install_timeout() -> u32 {
    900
}

fn default_revoke_old_after() -> callhome_core::certificates::RevokeOldAfter {
    callhome_core::certificates::RevokeOldAfter::Confirmed
}

fn default_confirm_timeout() -> u32 {
    600
}

impl Operation {
    /// Checks the operation's own fields (per-device checks happen when it runs).
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        match self {
            Operation::ApplyConfig | Operation::Reboot => Ok(()),
            Operation::RotateCertificate {
                confirm_timeout_s, ..
            } => {
                if (10..=86_400).contains(confirm_timeout_s) {
                    Ok(())
                } else {
                    Err(vec![ValidationError::new(
                        "operation.confirm_timeout_s",
                        "must be between 10 and 86400",
                    )])
                }
            }
            Operation::FirmwareUpdate {
                install_timeout_s, ..
            } => {
                if (60..=86_400).contains(install_timeout_s) {
                    Ok(())
                } else {
                    Err(vec![ValidationError::new(
                        "operation.install_timeout_s",
                        "must be between 60 and 86400",
                    )])
                }
            }
            Operation::SetKeys { keys } => {
                if keys.is_empty() {
                    return Err(vec![ValidationError::new(
                        "operation.keys",
                        "name at least one key",
                    )]);
                }
                let mut file = configtxt::ConfigFile::new();
                let mut errors = Vec::new();
                for (k, v) in keys {
                    let r = match v {
                        Some(v) => file.set(k, v),
                        None => file.set(k, ""),
                    };
                    if let Err(e) = r {
                        errors.push(ValidationError::new(k.clone(), e.to_string()));
                    }
                }
                // Values are checked key by key here; rules across keys are checked on each
                // device's whole configuration when the job reaches it.
                for e in file.validate().errors {
                    if keys.get(&e.field).is_some_and(Option::is_some) {
                        errors.push(e);
                    }
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors)
                }
            }
            Operation::SetWhitelists { csd, sms } => {
                let errors = configtxt::Whitelists {
                    csd: csd.clone(),
                    sms: sms.clone(),
                }
                .validate();
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors)
                }
            }
            Operation::AtCommand { command } => AtCommand::parse(command)
                .map(|_| ())
                .map_err(|e| vec![e.at("operation.command")]),
        }
    }

    /// Whether the operation changes configuration (and so follows a restart policy).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Operation::ApplyConfig | Operation::SetKeys { .. } | Operation::SetWhitelists { .. }
        )
    }

    /// Whether running the operation needs the device-facing HTTPS listener.
    pub fn needs_device_listener(&self) -> bool {
        matches!(
            self,
            Operation::FirmwareUpdate { .. }
                | Operation::RotateCertificate {
                    install_trust_anchor: true,
                    ..
                }
        )
    }

    /// The firmware a firmware campaign installs.
    pub fn firmware_id(&self) -> Option<uuid::Uuid> {
        match self {
            Operation::FirmwareUpdate { firmware_id, .. } => Some(*firmware_id),
            _ => None,
        }
    }
}

/// The device-list filter as a job target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceFilterSpec {
    /// Devices carrying this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Devices connected (`true`) or not (`false`) when the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Devices in this drift state (`in_sync`, `drifted`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    /// Case-insensitive text in the IMEI or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Devices of this model (case-insensitive), as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Devices reporting this firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
}

/// Which devices a job runs on: exactly one of the three. Resolved once, when the job is
/// created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A tag expression: `region:north and not pilot`, `a or (b and c)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_expr: Option<String>,
    /// An explicit list of IMEIs (every one registered, none twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imeis: Option<Vec<String>>,
    /// The device-list filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DeviceFilterSpec>,
}

/// The target, checked.
#[derive(Debug, Clone)]
pub(crate) enum CheckedTarget {
    Expr(TagExpr),
    Imeis(Vec<callhome_core::Imei>),
    /// The device-list filter, its values parsed.
    Filter(callhome_store::DeviceFilter),
}

impl Target {
    pub(crate) fn check(&self) -> Result<CheckedTarget, Vec<ValidationError>> {
        let set = [
            self.tag_expr.is_some(),
            self.imeis.is_some(),
            self.filter.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            return Err(vec![ValidationError::new(
                "target",
                "give exactly one of tag_expr, imeis or filter",
            )]);
        }
        if let Some(e) = &self.tag_expr {
            return TagExpr::parse(e)
                .map(CheckedTarget::Expr)
                .map_err(|e| vec![e]);
        }
        if let Some(list) = &self.imeis {
            if list.is_empty() {
                return Err(vec![ValidationError::new("target.imeis", "is empty")]);
            }
            if list.len() > callhome_core::jobs::MAX_JOB_DEVICES {
                return Err(vec![ValidationError::new(
                    "target.imeis",
                    format!("more than {} devices", callhome_core::jobs::MAX_JOB_DEVICES),
                )]);
            }
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::with_capacity(list.len());
            let mut errors = Vec::new();
            for (i, s) in list.iter().enumerate() {
                match callhome_core::Imei::parse(s) {
                    Ok(imei) => {
                        if !seen.insert(imei.clone()) {
                            errors.push(ValidationError::new(
                                format!("target.imeis[{i}]"),
                                format!("{imei} is listed twice"),
                            ));
                        }
                        out.push(imei);
                    }
                    Err(e) => errors.push(e.at(format!("target.imeis[{i}]"))),
                }
                if errors.len() >= 20 {
                    break;
                }
            }
            return if errors.is_empty() {
                Ok(CheckedTarget::Imeis(out))
            } else {
                Err(errors)
            };
        }
        let f = self.filter.clone().unwrap_or_default();
        let drift = f
            .drift
            .as_deref()
            .map(DriftState::parse)
            .transpose()
            .map_err(|e| vec![e.at("target.filter.drift")])?;
        if let Some(t) = &f.tag {
            callhome_core::Tag::parse(t).map_err(|e| vec![e.at("target.filter.tag")])?;
        }
        Ok(CheckedTarget::Filter(callhome_store::DeviceFilter {
            tag: f.tag,
            text: f.q,
            online: f.online,
            drift,
            model: f.model,
            firmware: f.firmware,
            ..Default::default()
        }))
    }
}

/// A job to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJobRequest {
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// What to do on each device.
    pub operation: Operation,
    /// On which devices.
    pub target: Target,
    /// How to roll it out (every field has a default).
    #[serde(default)]
    pub rollout: Rollout,
    /// When configuration operations restart the modem (default `auto`: when a changed key
    /// needs it).
    #[serde(default)]
    pub restart: RestartPolicy,
}

impl NewJobRequest {
    /// Checks everything that can be checked before targets are resolved.
    pub(crate) fn check(&self) -> Result<CheckedTarget, Vec<ValidationError>> {
        let mut errors = Vec::new();
        if let Some(n) = &self.name
            && (n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control))
        {
            errors.push(ValidationError::new(
                "name",
                "must be 1-200 characters without control characters",
            ));
        }
        if let Err(e) = self.operation.validate() {
            errors.extend(e);
        }
        if let Err(e) = self.rollout.validate() {
            errors.extend(e);
        }
        let target = match self.target.check() {
            Ok(t) => Some(t),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        match target {
            Some(t) if errors.is_empty() => Ok(t),
            _ => Err(errors),
        }
    }
}
