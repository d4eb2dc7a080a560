//! One device's certificate rotation, as a step of a job whose operation is
//! `rotate_certificate` (overlap, then revoke; never strand a modem):
//!
//! 1. The device must be connected with a client certificate (the one to replace).
//! 2. The dialect's `certificate_request` command asks the modem for a new certificate on
//!    its MQTT channel: a CSR for a key it makes (`csr`), or a key Callhome makes
//!    (`server_keygen`). The gateway answers the request on `{IMEI}/cert`
//!    ([`callhome_gateway::csr`]) and records the new certificate; this step waits for it
//!    in the inventory (so it works whichever node holds the modem's connection).
//! 3. The dialect's `certificate_install` command tells the modem to install it and
//!    reconnect with it.
//! 4. Confirmation is the new serial seen on a handshake: the device's presence shows a
//!    connection with it. Only then are the certificates it replaces (the one it was
//!    connected with, and any other active one issued before the new one) revoked, `superseded`, when the operation says
//!    `revoke_old_after: confirmed`. A modem that does not come back with the new
//!    certificate within the confirmation timeout keeps its old one, still valid, and the
//!    execution fails `not_confirmed` with the reason; the new certificate is left valid
//!    too (the modem may have installed it), and the certificate audit reports the device
//!    while it holds two.
//!
//! Everything the step waits on is in the store, and its commands are journalled, so an
//! execution resumed after a server restart picks up where it was.

use std::time::Duration;

use callhome_ca::RevocationReason;
use callhome_core::Imei;
use callhome_core::certificates::{RevokeOldAfter, RotationMode};
use callhome_gateway::csr::{ISSUED_BY_CSR, ISSUED_BY_KEYGEN};
use callhome_store::{CertificateRecord, CommandState, StoreError};
use serde_json::json;
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::Result;
use crate::config::ConfigService;
use crate::exec::{Outcome, Timing, command_error};
use crate::journal::Journal;

/// How often the store is looked at while waiting.
const POLL: Duration = Duration::from_millis(500);

/// The operation's parameters.
#[derive(Debug, Clone)]
pub(crate) struct Rotation {
    pub mode: RotationMode,
    pub revoke_old_after: RevokeOldAfter,
    /// How long the modem has to send its request, then to come back with the new
    /// certificate.
    pub confirm_timeout: Duration,
    /// Install the trust bundle at this URL first.
    pub trust_bundle_url: Option<String>,
}

/// The trust bundle's URL on the device-facing listener at `base`.
pub(crate) fn trust_bundle_url(base: &str) -> String {
    format!("{base}/ca/trust.pem")
}

/// Runs the rotation of `imei`'s certificate; `by` names the job (revocations carry it).
pub(crate) async fn run(
    config: &ConfigService,
    journal: &mut Journal,
    imei: &Imei,
    rotation: Rotation,
    timing: Timing,
    by: &str,
) -> Result<Outcome> {
    let store = config.store();
    let device = store.get_device(imei).await?;
    let Some(current) = device
        .presence
        .cert_serial
        .clone()
        .filter(|_| device.presence.online)
    else {
        return Ok(Outcome::failed(
            "the device is not connected with a client certificate: nothing to rotate",
            json!({"mode": rotation.mode}),
        ));
    };

    // 1b. The trust bundle first, when asked (before a CA rollover).
    if let Some(url) = &rotation.trust_bundle_url {
        let bundle = config.gateway().certificates().trust_bundle_pem();
        let sha256 = hex::encode(sha2::Sha256::digest(bundle.as_bytes()));
        let install = config.dialect().trust_anchor_install(url, &sha256)?;
        let done = journal
            .run(install, timing.command_timeout, timing.queue_wait)
            .await?;
        if done.state != CommandState::Succeeded {
            return Ok(Outcome::failed(
                format!("trust anchor install refused: {}", command_error(&done)),
                json!({"mode": rotation.mode, "old_serial": current, "outcome": "trust_anchor_failed"}),
            ));
        }
    }

    // 2. Ask for a new certificate.
    let topics = callhome_gateway::topics::Topics::for_device(&device);
    let request = config
        .dialect()
        .certificate_request(rotation.mode, &topics.csr, &topics.cert)?;
    let done = journal
        .run(request, timing.command_timeout, timing.queue_wait)
        .await?;
    if done.state != CommandState::Succeeded {
        return Ok(Outcome::failed(
            format!("certificate request refused: {}", command_error(&done)),
            json!({"mode": rotation.mode, "old_serial": current}),
        ));
    }
    // Certificates made from here on answer this request (the command's own time, so a
    // resumed execution finds a certificate issued before the restart).
    let since = done.created_at - time::Duration::seconds(1);
    let issued_by = match rotation.mode {
        RotationMode::Csr => ISSUED_BY_CSR,
        RotationMode::ServerKeygen => ISSUED_BY_KEYGEN,
    };
    let Some(new) = wait_issued(config, imei, since, issued_by, rotation.confirm_timeout).await?
    else {
        return Ok(Outcome::failed(
            format!(
                "no_request: the modem asked for no certificate on {} within {} s (a refused request is in the audit log, action certificate.mqtt_enroll); it keeps {current}",
                topics.csr,
                rotation.confirm_timeout.as_secs()
            ),
            json!({"mode": rotation.mode, "old_serial": current, "outcome": "no_request"}),
        ));
    };

    // 3. Install it.
    let install = config
        .dialect()
        .certificate_install(&new.serial, &new.fingerprint_sha256)?;
    let done = journal
        .run(install, timing.command_timeout, timing.queue_wait)
        .await?;
    if done.state != CommandState::Succeeded {
        return Ok(Outcome::failed(
            format!(
                "install refused: {}; the modem keeps {current}",
                command_error(&done)
            ),
            json!({"mode": rotation.mode, "old_serial": current, "new_serial": new.serial, "outcome": "install_failed"}),
        ));
    }

    // 4. Confirmation: a connection with the new certificate.
    if !wait_connected_with(config, imei, &new.serial, rotation.confirm_timeout).await? {
        return Ok(Outcome::failed(
            format!(
                "not_confirmed: the modem did not connect with the new certificate {} within {} s; it keeps {current}, which stays valid",
                new.serial,
                rotation.confirm_timeout.as_secs()
            ),
            json!({"mode": rotation.mode, "old_serial": current, "new_serial": new.serial, "outcome": "not_confirmed"}),
        ));
    }
    let mut revoked = Vec::new();
    if rotation.revoke_old_after == RevokeOldAfter::Confirmed {
        let now = OffsetDateTime::now_utc();
        for old in store.list_certificates(imei).await? {
            let replaced = old.serial == current || old.created_at < new.created_at;
            if old.serial == new.serial
                || !replaced
                || old.revocation.is_some()
                || old.not_after <= now
            {
                continue;
            }
            match config
                .gateway()
                .certificates()
                .revoke(&old.serial, Some(RevocationReason::Superseded), by)
                .await
            {
                Ok(_) => revoked.push(old.serial),
                // Revoked meanwhile by someone else: what we wanted.
                Err(callhome_pki::PkiError::Store(StoreError::Conflict { .. })) => {}
                Err(e) => {
                    return Ok(Outcome::failed(
                        format!(
                            "the modem runs on the new certificate {}, but revoking {} failed: {e}",
                            new.serial, old.serial
                        ),
                        json!({"mode": rotation.mode, "old_serial": current, "new_serial": new.serial, "outcome": "confirmed", "revoked": revoked}),
                    ));
                }
            }
        }
    }
    Ok(Outcome::succeeded(json!({
        "mode": rotation.mode,
        "old_serial": current,
        "new_serial": new.serial,
        "not_after": new.not_after.unix_timestamp(),
        "outcome": "confirmed",
        "revoked": revoked,
    })))
}

/// Waits for a certificate of `imei` made by `issued_by` at or after `since`.
async fn wait_issued(
    config: &ConfigService,
    imei: &Imei,
    since: OffsetDateTime,
    issued_by: &str,
    timeout: Duration,
) -> Result<Option<CertificateRecord>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let newest = config
            .store()
            .list_certificates(imei)
            .await?
            .into_iter()
            .filter(|c| c.created_at >= since && c.issued_by == issued_by && c.revocation.is_none())
            .max_by_key(|c| c.created_at);
        if newest.is_some() {
            return Ok(newest);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the device is connected with the certificate `serial`.
async fn wait_connected_with(
    config: &ConfigService,
    imei: &Imei,
    serial: &str,
    timeout: Duration,
) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let device = config.store().get_device(imei).await?;
        if device.presence.online && device.presence.cert_serial.as_deref() == Some(serial) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}
