//! The certificate inventory's vocabulary: a certificate's state, the audit checks run over
//! the inventory and their severities, and the expiry thresholds of the expiry watch.

use time::OffsetDateTime;

use crate::ValidationError;

crate::wire_enum! {
    /// Where a device certificate is in its life.
    pub enum CertificateState("state") {
        /// Not revoked and not past its `not_after`.
        Active = "active",
        /// Revoked (whether or not it has expired since).
        Revoked = "revoked",
        /// Not revoked, past its `not_after`.
        Expired = "expired",
    }
}

impl CertificateState {
    /// The state at `now` of a certificate valid until `not_after`, revoked or not.
    pub fn at(revoked: bool, not_after: OffsetDateTime, now: OffsetDateTime) -> Self {
        if revoked {
            Self::Revoked
        } else if not_after <= now {
            Self::Expired
        } else {
            Self::Active
        }
    }
}

crate::wire_enum! {
    /// How a modem gets its new key pair in a certificate rotation.
    pub enum RotationMode("mode") {
        /// The modem makes the key and sends a CSR (over MQTT on `{IMEI}/csr`).
        Csr = "csr",
        /// Callhome makes the key and certificate, for modems that cannot make keys, and
        /// delivers both over the device's mutually authenticated MQTT channel only.
        ServerKeygen = "server_keygen",
    }
}

crate::wire_enum! {
    /// When a rotation revokes the certificate it replaces.
    pub enum RevokeOldAfter("revoke_old_after") {
        /// Once the modem has connected with the new certificate (its serial seen on a
        /// handshake); never before.
        Confirmed = "confirmed",
        /// Never: the old certificate stays valid until it expires.
        Never = "never",
    }
}

crate::wire_enum! {
    /// A check of the certificate audit (`GET /api/v1/certificates/audit`).
    pub enum AuditCheck("check") {
        /// One public key certified for two or more devices.
        SharedKey = "shared_key",
        /// A device with more than one active certificate for longer than a rotation's
        /// overlap.
        MultipleActive = "multiple_active",
        /// A revoked or expired certificate still used by a live connection.
        RevokedConnected = "revoked_connected",
    }
}

crate::wire_enum! {
    /// How urgent an audit finding is.
    pub enum Severity("severity") {
        /// Worth a look.
        Low = "low",
        /// Should be fixed.
        Medium = "medium",
        /// Fix now.
        High = "high",
        /// A security problem in the field now.
        Critical = "critical",
    }
}

impl AuditCheck {
    /// The severity of this check's findings.
    pub fn severity(self) -> Severity {
        match self {
            Self::SharedKey | Self::RevokedConnected => Severity::Critical,
            Self::MultipleActive => Severity::Medium,
        }
    }
}

/// Largest expiry threshold and `expiring_within_days`, days (ten years).
pub const MAX_EXPIRY_DAYS: u32 = 3650;

/// The expiry watch's thresholds in days: non-empty, each 1..=[`MAX_EXPIRY_DAYS`], no
/// duplicates, widest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryThresholds(Vec<u32>);

impl ExpiryThresholds {
    /// Validates `days` (any order) and sorts them widest first. Duplicates are refused
    /// rather than dropped, so a typo does not go unnoticed.
    pub fn parse(days: &[u32]) -> Result<Self, ValidationError> {
        let field = "certificates.expiry_thresholds_days";
        if days.is_empty() {
            return Err(ValidationError::new(
                field,
                "must list at least one threshold",
            ));
        }
        if days.len() > 16 {
            return Err(ValidationError::new(field, "at most 16 thresholds"));
        }
        let mut v = days.to_vec();
        if let Some(bad) = v.iter().find(|d| !(1..=MAX_EXPIRY_DAYS).contains(d)) {
            return Err(ValidationError::new(
                field,
                format!("each must be between 1 and {MAX_EXPIRY_DAYS}, got {bad}"),
            ));
        }
        v.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
            return Err(ValidationError::new(
                field,
                format!("{} is listed twice", w[0]),
            ));
        }
        Ok(Self(v))
    }

    /// The thresholds, widest first.
    pub fn days(&self) -> &[u32] {
        &self.0
    }

    /// The widest threshold.
    pub fn widest(&self) -> u32 {
        self.0[0]
    }

    /// The thresholds a certificate with `days_left` whole days left has crossed, widest
    /// first (a threshold is crossed when `days_left <= threshold`).
    pub fn crossed(&self, days_left: i64) -> Vec<u32> {
        self.0
            .iter()
            .copied()
            .filter(|t| days_left <= i64::from(*t))
            .collect()
    }
}

impl Default for ExpiryThresholds {
    /// 60, 30 and 7 days.
    fn default() -> Self {
        Self(vec![60, 30, 7])
    }
}

/// Whole days from `now` to `not_after`, rounded down (negative once expired).
pub fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    let secs = (not_after - now).whole_seconds();
    secs.div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_checked_and_sorted() {
        let t = ExpiryThresholds::parse(&[7, 60, 30]).unwrap();
        assert_eq!(t.days(), &[60, 30, 7]);
        assert_eq!(t.widest(), 60);
        assert_eq!(t.crossed(45), vec![60]);
        assert_eq!(t.crossed(20), vec![60, 30]);
        assert_eq!(t.crossed(0), vec![60, 30, 7]);
        assert_eq!(t.crossed(61), Vec::<u32>::new());
        for bad in [&[][..], &[0][..], &[3651][..], &[30, 30][..]] {
            let e = ExpiryThresholds::parse(bad).unwrap_err();
            assert_eq!(e.field, "certificates.expiry_thresholds_days", "{bad:?}");
        }
        assert!(
            ExpiryThresholds::parse(&[30, 30])
                .unwrap_err()
                .reason
                .contains("30 is listed twice")
        );
    }

    #[test]
    fn states_and_days_left() {
        let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let day = time::Duration::days(1);
        assert_eq!(
            CertificateState::at(false, now + day, now),
            CertificateState::Active
        );
        assert_eq!(
            CertificateState::at(false, now, now),
            CertificateState::Expired
        );
        assert_eq!(
            CertificateState::at(true, now + day, now),
            CertificateState::Revoked
        );
        assert_eq!(days_left(now + day * 20, now), 20);
        assert_eq!(days_left(now + day * 20 - time::Duration::SECOND, now), 19);
        assert_eq!(days_left(now - time::Duration::SECOND, now), -1);
        assert_eq!(AuditCheck::SharedKey.severity(), Severity::Critical);
        assert_eq!(
            AuditCheck::parse("multiple_active").unwrap(),
            AuditCheck::MultipleActive
        );
    }
}
