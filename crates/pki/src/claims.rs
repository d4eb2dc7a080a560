//! Claim provisioning: claim certificates for production batches, and enrolment by claim
//! (shared by EST `simpleenroll` and the MQTT `{IMEI}/csr` topic of a claim connection).
//!
//! A claim certificate is issued by our CA with CN `claim:<name>`; it is found again by its
//! serial. It authorises only enrolments that its policy allows, checked in this order,
//! each refusal naming the problem: the claim is revoked; it has expired; the IMEI is not
//! allowed; the IMEI is already enrolled under this claim; the enrolment limit is reached.
//! With approval `auto` the device (registered if unknown) gets its certificate at once;
//! with `manual` the enrolment is held as `pending` until an operator decides. Revoking a
//! claim revokes its certificate: it is listed in the CRL at once, on every node.

use callhome_core::Imei;
use callhome_core::claims::{
    AUTO_APPROVER, Approval, ClaimKind, ClaimPolicy, EnrollmentState, claim_common_name,
};
use callhome_store::{CertificateRecord, ClaimRecord, EnrollmentRecord, NewDevice, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{CertificateService, PkiError};

/// Seconds a modem whose enrolment is held for approval is told to wait before asking
/// again (EST `Retry-After`, MQTT `PENDING` line).
pub const RETRY_AFTER_S: u64 = 60;

/// Why an enrolment by claim (or a claim operation) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The claim was revoked.
    #[error("the claim {0} is revoked")]
    Revoked(String),
    /// The claim's expiry has passed.
    #[error("the claim {name} expired at {at}")]
    Expired {
        /// The claim.
        name: String,
        /// When it expired.
        at: OffsetDateTime,
    },
    /// The policy does not allow this IMEI.
    #[error("IMEI {imei} is not allowed by the claim {name}")]
    ImeiNotAllowed {
        /// The claim.
        name: String,
        /// The IMEI asked for.
        imei: Imei,
    },
    /// The IMEI already has a certificate (or another live enrolment) from this claim.
    #[error("{imei} is already enrolled under the claim {name}: a claim enrols each IMEI once")]
    AlreadyEnrolled {
        /// The claim.
        name: String,
        /// The IMEI.
        imei: Imei,
    },
    /// The IMEI has an enrolment awaiting approval under this claim, for another key.
    #[error(
        "{imei} already has an enrolment awaiting approval under the claim {name}, for another key"
    )]
    AlreadyPending {
        /// The claim.
        name: String,
        /// The IMEI.
        imei: Imei,
    },
    /// No enrolment slot is left.
    #[error("the claim {name}'s limit of {max} enrolments is reached")]
    LimitReached {
        /// The claim.
        name: String,
        /// Its limit.
        max: i64,
    },
    /// An operator rejected this IMEI's enrolment.
    #[error("the enrolment of {imei} under the claim {name} was rejected by an operator{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Rejected {
        /// The claim.
        name: String,
        /// The IMEI.
        imei: Imei,
        /// The operator's reason.
        reason: Option<String>,
    },
    /// The device is registered and disabled.
    #[error("device {0} is disabled")]
    DeviceDisabled(Imei),
    /// The CSR is unusable (names the problem).
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// Invalid claim input (a field and why).
    #[error(transparent)]
    Invalid(#[from] callhome_core::ValidationError),
    /// The CA or the store failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl From<StoreError> for ClaimError {
    fn from(e: StoreError) -> Self {
        ClaimError::Pki(PkiError::Store(e))
    }
}

impl From<callhome_ca::CaError> for ClaimError {
    fn from(e: callhome_ca::CaError) -> Self {
        ClaimError::Pki(PkiError::Ca(e))
    }
}

impl ClaimError {
    /// A short stable code for audit rows and metrics (`claim_revoked`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            ClaimError::Revoked(_) => "claim_revoked",
            ClaimError::Expired { .. } => "claim_expired",
            ClaimError::ImeiNotAllowed { .. } => "imei_not_allowed",
            ClaimError::AlreadyEnrolled { .. } => "already_enrolled",
            ClaimError::AlreadyPending { .. } => "already_pending",
            ClaimError::LimitReached { .. } => "limit_reached",
            ClaimError::Rejected { .. } => "rejected",
            ClaimError::DeviceDisabled(_) => "device_disabled",
            ClaimError::InvalidCsr(_) => "invalid_csr",
            ClaimError::Invalid(_) => "invalid",
            ClaimError::Pki(_) => "internal",
        }
    }
}

/// A CSR sent with a claim credential: checked as the CA checks it, its only CN an IMEI.
#[derive(Debug, Clone)]
pub struct ClaimCsr {
    /// The device it asks a certificate for.
    pub imei: Imei,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// SHA-256 of its public key (SubjectPublicKeyInfo DER), lowercase hex.
    pub public_key_sha256: String,
}

impl ClaimCsr {
    /// Checks `csr_pem` (signature, key, size) and that its subject is CN = an IMEI.
    pub fn parse(csr_pem: &str) -> Result<Self, ClaimError> {
        let checked = callhome_ca::check_csr(csr_pem).map_err(|e| match e {
            callhome_ca::CaError::InvalidCsr(why) => ClaimError::InvalidCsr(why),
            other => ClaimError::InvalidCsr(other.to_string()),
        })?;
        let imei = match checked.common_names.as_slice() {
            [cn] => Imei::parse(cn).map_err(|e| {
                ClaimError::InvalidCsr(format!(
                    "the CSR subject CN must be the device's IMEI ({})",
                    e.reason
                ))
            })?,
            [] => {
                return Err(ClaimError::InvalidCsr(
                    "the CSR subject has no CN: it must be CN=<the device's IMEI>".into(),
                ));
            }
            _ => {
                return Err(ClaimError::InvalidCsr(
                    "the CSR subject has several CNs: it must be CN=<the device's IMEI>".into(),
                ));
            }
        };
        Ok(Self {
            imei,
            csr_pem: csr_pem.to_owned(),
            public_key_sha256: checked.public_key_sha256,
        })
    }
}

/// What an enrolment by claim came to.
#[derive(Debug, Clone)]
pub enum EnrollOutcome {
    /// The device certificate was issued (now, or earlier for this key and approved since).
    Issued {
        /// The enrolment.
        enrollment: EnrollmentRecord,
        /// The certificate.
        certificate: Box<CertificateRecord>,
        /// Whether it was issued by this request (not found from an earlier one).
        fresh: bool,
    },
    /// Held for an operator: ask again after [`RETRY_AFTER_S`].
    Pending {
        /// The enrolment.
        enrollment: EnrollmentRecord,
        /// Whether this request made it (not an earlier one).
        fresh: bool,
    },
}

impl EnrollOutcome {
    /// The event to publish for a fresh outcome (`enrollment.issued` or
    /// `enrollment.pending`); `None` for a retry that changed nothing.
    pub fn event(&self, claim: &str) -> Option<callhome_core::events::EventPayload> {
        use callhome_core::events::EventPayload;
        match self {
            EnrollOutcome::Issued {
                enrollment,
                fresh: true,
                ..
            } => Some(EventPayload::EnrollmentIssued(enrollment_changed(
                enrollment, claim,
            ))),
            EnrollOutcome::Pending {
                enrollment,
                fresh: true,
            } => Some(EventPayload::EnrollmentPending(enrollment_changed(
                enrollment, claim,
            ))),
            _ => None,
        }
    }
}

/// The payload of an `enrollment.*` event.
pub fn enrollment_changed(
    e: &EnrollmentRecord,
    claim: &str,
) -> callhome_core::events::EnrollmentChanged {
    callhome_core::events::EnrollmentChanged {
        id: e.id,
        claim: claim.to_owned(),
        certificate_serial: e.certificate_serial.clone(),
        decided_by: e.decided_by.clone(),
        reason: e.reason.clone(),
    }
}

/// A new claim certificate: the claim as stored, and the private key (PKCS#8 PEM), shown
/// once and never stored.
#[derive(Debug)]
pub struct IssuedClaim {
    /// The claim.
    pub claim: ClaimRecord,
    /// The claim certificate's private key.
    pub private_key_pem: Zeroizing<String>,
}

impl CertificateService {
    /// Registers a claim for a batch with a claim certificate issued now (valid until the
    /// policy's expiry).
    pub async fn create_claim(
        &self,
        name: &str,
        policy: ClaimPolicy,
        by: &str,
    ) -> Result<IssuedClaim, ClaimError> {
        callhome_core::claims::check_claim_name(name)?;
        let (issued, key) = self
            .authority()
            .issue_claim_certificate(name, policy.expires_at)?;
        let record = ClaimRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            kind: ClaimKind::Issued,
            certificate_pem: issued.certificate_pem,
            fingerprint_sha256: issued.fingerprint_sha256,
            serial: Some(issued.serial),
            policy,
            enrollments_used: 0,
            created_at: OffsetDateTime::now_utc(),
            created_by: by.to_owned(),
            revoked_at: None,
            revoked_by: None,
        };
        let claim = self.store().create_claim(&record).await?;
        tracing::info!(claim = %claim.name, serial = claim.serial.as_deref(), %by, "claim created");
        Ok(IssuedClaim {
            claim,
            private_key_pem: key,
        })
    }

    /// Revokes a claim: no enrolment is accepted with it any more, and its certificate is
    /// in the CRL put in force before this returns (and announced to the other nodes, whose
    /// claim connections end).
    pub async fn revoke_claim(&self, id: Uuid, by: &str) -> Result<ClaimRecord, ClaimError> {
        let claim = self
            .store()
            .revoke_claim(id, OffsetDateTime::now_utc(), by)
            .await?;
        tracing::warn!(claim = %claim.name, %by, "claim revoked");
        self.refresh_crl().await?;
        if let Err(e) = self
            .store()
            .announce(&callhome_core::ClusterChange::Crl)
            .await
        {
            tracing::warn!(error = %e, "could not announce the claim revocation to the other nodes");
        }
        Ok(claim)
    }

    /// The claim whose claim certificate has the serial `serial`, if any: how a TLS client
    /// certificate is recognised as a claim credential.
    pub async fn claim_for_serial(&self, serial: &str) -> Result<Option<ClaimRecord>, ClaimError> {
        Ok(self.store().claim_by_serial(serial).await?)
    }

    /// Enrols the device of `csr` with `claim` (see the module documentation for the
    /// checks and their order).
    pub async fn enroll_with_claim(
        &self,
        claim: &ClaimRecord,
        csr: &ClaimCsr,
        remote_addr: Option<String>,
    ) -> Result<EnrollOutcome, ClaimError> {
        let now = OffsetDateTime::now_utc();
        check_claim_usable(claim, now)?;
        let imei = &csr.imei;
        if !claim.policy.imeis.allows(imei) {
            return Err(ClaimError::ImeiNotAllowed {
                name: claim.name.clone(),
                imei: imei.clone(),
            });
        }
        let store = self.store();
        if let Some(previous) = store.latest_enrollment(claim.id, imei).await? {
            let same_key = previous.public_key_sha256 == csr.public_key_sha256;
            match previous.state {
                EnrollmentState::Issued if same_key => {
                    // A retry (after an approval): the certificate already issued.
                    let serial = previous.certificate_serial.clone().unwrap_or_default();
                    let certificate = store.get_certificate(&serial).await?;
                    return Ok(EnrollOutcome::Issued {
                        enrollment: previous,
                        certificate: Box::new(certificate),
                        fresh: false,
                    });
                }
                EnrollmentState::Pending | EnrollmentState::Approved if same_key => {
                    return Ok(EnrollOutcome::Pending {
                        enrollment: previous,
                        fresh: false,
                    });
                }
                EnrollmentState::Pending | EnrollmentState::Approved => {
                    return Err(ClaimError::AlreadyPending {
                        name: claim.name.clone(),
                        imei: imei.clone(),
                    });
                }
                EnrollmentState::Rejected => {
                    return Err(ClaimError::Rejected {
                        name: claim.name.clone(),
                        imei: imei.clone(),
                        reason: previous.reason,
                    });
                }
                EnrollmentState::Issued => {
                    return Err(ClaimError::AlreadyEnrolled {
                        name: claim.name.clone(),
                        imei: imei.clone(),
                    });
                }
            }
        }
        match store.get_device(imei).await {
            Ok(d) if d.disabled => return Err(ClaimError::DeviceDisabled(imei.clone())),
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let auto = claim.policy.approval == Approval::Auto;
        let record = EnrollmentRecord {
            id: Uuid::now_v7(),
            claim_id: claim.id,
            imei: imei.clone(),
            state: if auto {
                EnrollmentState::Approved
            } else {
                EnrollmentState::Pending
            },
            csr_pem: csr.csr_pem.clone(),
            public_key_sha256: csr.public_key_sha256.clone(),
            requested_at: now,
            remote_addr,
            decided_at: auto.then_some(now),
            decided_by: auto.then(|| AUTO_APPROVER.to_owned()),
            reason: None,
            certificate_serial: None,
        };
        let enrollment = match store.create_enrollment(&record, now).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                // No slot: say why (the claim may have been revoked meanwhile).
                let current = store.get_claim(claim.id).await?;
                check_claim_usable(&current, now)?;
                return Err(ClaimError::LimitReached {
                    name: claim.name.clone(),
                    max: current.policy.max_enrollments,
                });
            }
            Err(StoreError::Conflict { .. }) => {
                return Err(ClaimError::AlreadyEnrolled {
                    name: claim.name.clone(),
                    imei: imei.clone(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if !auto {
            tracing::info!(claim = %claim.name, %imei, enrollment = %enrollment.id, "enrolment held for approval");
            return Ok(EnrollOutcome::Pending {
                enrollment,
                fresh: true,
            });
        }
        let (enrollment, certificate) = self.issue_enrollment(claim, enrollment).await?;
        Ok(EnrollOutcome::Issued {
            enrollment,
            certificate: Box::new(certificate),
            fresh: true,
        })
    }

    /// Approves a pending enrolment and issues its certificate now (registering the device
    /// if it is not in the registry). `Conflict` when it is already decided.
    pub async fn approve_enrollment(
        &self,
        id: Uuid,
        by: &str,
    ) -> Result<(EnrollmentRecord, CertificateRecord), ClaimError> {
        let store = self.store();
        let pending = store.get_enrollment(id).await?;
        let claim = store.get_claim(pending.claim_id).await?;
        if pending.state == EnrollmentState::Pending {
            check_claim_usable(&claim, OffsetDateTime::now_utc())?;
        }
        let approved = store
            .decide_enrollment(
                id,
                EnrollmentState::Approved,
                by,
                OffsetDateTime::now_utc(),
                None,
            )
            .await?;
        self.issue_enrollment(&claim, approved).await
    }

    /// Rejects a pending enrolment (its slot is given back). `Conflict` when it is already
    /// decided.
    pub async fn reject_enrollment(
        &self,
        id: Uuid,
        by: &str,
        reason: Option<&str>,
    ) -> Result<EnrollmentRecord, ClaimError> {
        Ok(self
            .store()
            .decide_enrollment(
                id,
                EnrollmentState::Rejected,
                by,
                OffsetDateTime::now_utc(),
                reason,
            )
            .await?)
    }

    /// Issues the certificate of an approved enrolment, registering the device if needed;
    /// on failure the approval is undone.
    async fn issue_enrollment(
        &self,
        claim: &ClaimRecord,
        enrollment: EnrollmentRecord,
    ) -> Result<(EnrollmentRecord, CertificateRecord), ClaimError> {
        let result = async {
            let imei = &enrollment.imei;
            let device = NewDevice {
                imei: imei.clone(),
                name: None,
                model: None,
                tags: Vec::new(),
            };
            match self.store().create_device(&device).await {
                Ok(_) => tracing::info!(%imei, claim = %claim.name, "device registered by claim enrolment"),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(ClaimError::from(e)),
            }
            let issued_by = claim_common_name(&claim.name);
            let certificate = self
                .sign_device_csr(imei, &enrollment.csr_pem, None, &issued_by)
                .await?;
            let done = self
                .store()
                .finish_enrollment(enrollment.id, &certificate.serial)
                .await?;
            Ok((done, certificate))
        }
        .await;
        if result.is_err()
            && let Err(e) = self.store().undo_approval(enrollment.id).await
        {
            tracing::warn!(error = %e, enrollment = %enrollment.id, "could not undo an approval whose certificate was not issued");
        }
        result
    }
}

/// Refuses a revoked or expired claim.
fn check_claim_usable(claim: &ClaimRecord, now: OffsetDateTime) -> Result<(), ClaimError> {
    if claim.revoked_at.is_some() {
        return Err(ClaimError::Revoked(claim.name.clone()));
    }
    if claim.policy.expires_at <= now {
        return Err(ClaimError::Expired {
            name: claim.name.clone(),
            at: claim.policy.expires_at,
        });
    }
    Ok(())
}
