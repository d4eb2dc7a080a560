//! The expiry watch and the certificate audit.
//!
//! [`ExpiryWatch::run`] checks the inventory at start and then every
//! `expiry_check_interval`: each active, not renewed certificate that crossed one of the
//! thresholds gets one `certificate.expiring` event, exactly once per (certificate,
//! threshold) across every node sharing the database: the notice is a row inserted with `ON
//! CONFLICT DO NOTHING`, and only the node whose insert happened publishes. A certificate
//! first seen past several thresholds is reported at the tightest only (the wider ones are
//! recorded without an event). The gauges `callhome_certificates_expiring{within_days}` and
//! `callhome_certificates{state}` are refreshed at every check and at least hourly in between,
//! from count queries.
//!
//! [`ExpiryWatch::audit`] runs the audit checks on demand ([`AuditCheck`]): set-based
//! queries, so they cost the same few statements at 100,000 devices.

use std::sync::Arc;
use std::time::Duration;

use callhome_core::Imei;
use callhome_core::certificates::{AuditCheck, ExpiryThresholds, Severity, days_left};
use callhome_core::events::{CertificateExpiring, EventPayload};
use callhome_store::{CertificateRef, Store};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::PkiError;

/// Longest time between two refreshes of the gauges.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(3600);

/// Certificates whose public-key hash is computed per statement when back-filling.
const BACKFILL_BATCH: u32 = 500;

/// The expiry watch's and the audit's settings (`[certificates]`).
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// `expiry_thresholds_days`, widest first.
    pub thresholds: ExpiryThresholds,
    /// `expiry_check_interval_s`: time between two checks.
    pub interval: Duration,
    /// `rotation_overlap_days`: how long a device may hold two active certificates after a
    /// rotation before `multiple_active` reports it.
    pub rotation_overlap: time::Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            thresholds: ExpiryThresholds::default(),
            interval: Duration::from_secs(24 * 3600),
            rotation_overlap: time::Duration::days(7),
        }
    }
}

/// Publishes an event about a device (the gateway's event bus, which this crate cannot name).
pub type Publish = Arc<dyn Fn(&Imei, EventPayload) + Send + Sync>;

/// One finding of the certificate audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check found it.
    pub check: AuditCheck,
    /// How urgent.
    pub severity: Severity,
    /// The devices concerned.
    pub imeis: Vec<Imei>,
    /// The certificates concerned.
    pub serials: Vec<String>,
    /// What is wrong, in words.
    pub detail: String,
}

/// The expiry watch and audit over the certificate inventory.
pub struct ExpiryWatch {
    store: Arc<dyn Store>,
    settings: WatchSettings,
    publish: Publish,
}

impl std::fmt::Debug for ExpiryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryWatch")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of the SubjectPublicKeyInfo of the (first) certificate in `pem`.
pub fn public_key_sha256(pem: &str) -> Result<String, PkiError> {
    let bad = |e: String| PkiError::Ca(callhome_ca::CaError::InvalidCertificate(e));
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(cert.public_key().raw)))
}

impl ExpiryWatch {
    /// A watch over `store`'s certificates publishing through `publish`.
    pub fn new(store: Arc<dyn Store>, settings: WatchSettings, publish: Publish) -> Self {
        Self {
            store,
            settings,
            publish,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &WatchSettings {
        &self.settings
    }

    /// Records the public-key hash of a newly issued certificate.
    pub async fn record_public_key(
        store: &dyn Store,
        serial: &str,
        pem: &str,
    ) -> Result<(), PkiError> {
        let sha = public_key_sha256(pem)?;
        store.set_certificate_public_key(serial, &sha).await?;
        Ok(())
    }

    /// Computes the public-key hash of every certificate that has none yet (issued before
    /// migration 0011, or by a path that did not record it). Returns how many. A PEM that
    /// does not parse is logged and marked with an empty hash, so it is not read again.
    pub async fn backfill_public_keys(&self) -> Result<u64, PkiError> {
        let mut done = 0;
        loop {
            let batch = self
                .store
                .certificates_without_public_key(BACKFILL_BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(done);
            }
            for (serial, pem) in batch {
                let sha = public_key_sha256(&pem).unwrap_or_else(|e| {
                    tracing::warn!(%serial, error = %e, "stored certificate does not parse; left out of the shared_key check");
                    String::new()
                });
                self.store.set_certificate_public_key(&serial, &sha).await?;
                done += 1;
            }
        }
    }

    /// One expiry check at `now`: records and publishes the notices due. Returns the events
    /// this call published.
    pub async fn check_expiry(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateExpiring>, PkiError> {
        let thresholds = &self.settings.thresholds;
        let until = now + time::Duration::days(i64::from(thresholds.widest()));
        let candidates = self.store.expiry_candidates(now, until).await?;
        let mut published = Vec::new();
        for c in candidates {
            let left = days_left(c.cert.not_after, now);
            // Thresholds crossed and not noticed yet (tighter than the tightest noticed).
            let due: Vec<u32> = thresholds
                .crossed(left)
                .into_iter()
                .filter(|t| c.tightest_noticed.is_none_or(|n| *t < n))
                .collect();
            let Some((&tightest, wider)) = due.split_last() else {
                continue;
            };
            for t in wider {
                self.store
                    .record_expiry_notice(&c.cert.serial, *t, false, now)
                    .await?;
            }
            if self
                .store
                .record_expiry_notice(&c.cert.serial, tightest, true, now)
                .await?
            {
                let data = CertificateExpiring {
                    serial: c.cert.serial.clone(),
                    imei: c.cert.imei.clone(),
                    not_after: c.cert.not_after,
                    days_left: left,
                    threshold_days: tightest,
                };
                tracing::info!(imei = %c.cert.imei, serial = %c.cert.serial, days_left = left, threshold_days = tightest, "certificate expiring");
                (self.publish)(
                    &c.cert.imei,
                    EventPayload::CertificateExpiring(data.clone()),
                );
                published.push(data);
            }
        }
        Ok(published)
    }

    /// Sets the gauges from count queries at `now`.
    pub async fn update_gauges(&self, now: OffsetDateTime) -> Result<(), PkiError> {
        let days = self.settings.thresholds.days();
        let counts = self.store.count_expiring(now, days).await?;
        for (d, n) in days.iter().zip(counts) {
            metrics::gauge!("callhome_certificates_expiring", "within_days" => d.to_string())
                .set(n as f64);
        }
        let c = self.store.count_certificates(now).await?;
        for (state, n) in [
            ("active", c.active),
            ("revoked", c.revoked),
            ("expired", c.expired),
        ] {
            metrics::gauge!("callhome_certificates", "state" => state).set(n as f64);
        }
        Ok(())
    }

    /// Checks and refreshes the gauges; failures are logged (the next round retries).
    async fn round(&self, check: bool) {
        let now = OffsetDateTime::now_utc();
        if check && let Err(e) = self.check_expiry(now).await {
            tracing::error!(error = %e, "certificate expiry check failed");
        }
        if let Err(e) = self.update_gauges(now).await {
            tracing::error!(error = %e, "certificate gauges not refreshed");
        }
    }

    /// Back-fills public-key hashes, checks at once, then every interval (gauges at least
    /// hourly), until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match self.backfill_public_keys().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(certificates = n, "public-key hashes back-filled"),
            Err(e) => tracing::error!(error = %e, "public-key hashes not back-filled"),
        }
        self.round(true).await;
        let every = self.settings.interval;
        let gauges_every = every.min(GAUGE_REFRESH);
        let start = tokio::time::Instant::now();
        let mut checks = tokio::time::interval_at(start + every, every);
        let mut gauges = tokio::time::interval_at(start + gauges_every, gauges_every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = checks.tick() => {
                    self.round(true).await;
                    gauges.reset();
                }
                _ = gauges.tick() => self.round(false).await,
            }
        }
    }

    /// Runs every audit check at `now`.
    pub async fn audit(&self, now: OffsetDateTime) -> Result<Vec<Finding>, PkiError> {
        // Certificates issued by a path that did not hash their key are hashed first.
        self.backfill_public_keys().await?;
        let mut findings = Vec::new();
        let shared = self.store.shared_key_certificates(now).await?;
        for group in groups(shared, |c| c.public_key_sha256.clone().unwrap_or_default()) {
            let (imeis, serials) = split(&group);
            findings.push(Finding {
                check: AuditCheck::SharedKey,
                severity: AuditCheck::SharedKey.severity(),
                detail: format!(
                    "one public key (SHA-256 {}) is certified for {} devices: whoever holds the key can act as each of them",
                    group[0].public_key_sha256.as_deref().unwrap_or_default(),
                    imeis.len()
                ),
                imeis,
                serials,
            });
        }
        let overlap = self.settings.rotation_overlap;
        let multiple = self
            .store
            .multiple_active_certificates(now, now - overlap)
            .await?;
        for group in groups(multiple, |c| c.imei.to_string()) {
            let (imeis, serials) = split(&group);
            let newest = &group[0];
            findings.push(Finding {
                check: AuditCheck::MultipleActive,
                severity: AuditCheck::MultipleActive.severity(),
                detail: format!(
                    "{} active certificates; the newest ({}) was issued {} ago, longer than the rotation overlap of {} days: revoke the older ones",
                    group.len(),
                    newest.serial,
                    human_age(now - newest.created_at),
                    overlap.whole_days()
                ),
                imeis,
                serials,
            });
        }
        for c in self.store.connected_invalid_certificates(now).await? {
            let why = match c.revoked_at {
                Some(at) => format!(
                    "revoked at {}",
                    at.format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                ),
                None => "expired".to_owned(),
            };
            findings.push(Finding {
                check: AuditCheck::RevokedConnected,
                severity: AuditCheck::RevokedConnected.severity(),
                detail: format!(
                    "the live connection of {} uses certificate {}, which is {why}",
                    c.imei, c.serial
                ),
                imeis: vec![c.imei.clone()],
                serials: vec![c.serial.clone()],
            });
        }
        Ok(findings)
    }
}

/// Consecutive rows with the same `key`, in order.
fn groups(
    rows: Vec<CertificateRef>,
    key: impl Fn(&CertificateRef) -> String,
) -> Vec<Vec<CertificateRef>> {
    let mut out: Vec<Vec<CertificateRef>> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(g) if key(&g[0]) == key(&r) => g.push(r),
            _ => out.push(vec![r]),
        }
    }
    out
}

/// The distinct IMEIs (in order) and the serials of a group.
fn split(group: &[CertificateRef]) -> (Vec<Imei>, Vec<String>) {
    let mut imeis: Vec<Imei> = Vec::new();
    for c in group {
        if !imeis.contains(&c.imei) {
            imeis.push(c.imei.clone());
        }
    }
    (imeis, group.iter().map(|c| c.serial.clone()).collect())
}

fn human_age(d: time::Duration) -> String {
    if d.whole_days() >= 1 {
        format!("{} days", d.whole_days())
    } else if d.whole_hours() >= 1 {
        format!("{} hours", d.whole_hours())
    } else {
        format!("{} seconds", d.whole_seconds().max(0))
    }
}
