//! Claim provisioning: the policy of a production batch's claim credential (which IMEIs it
//! may enrol, until when, how many, with or without an operator's approval) and the states
//! of an enrolment.
//!
//! A claim certificate only ever authorises an *enrolment*: a modem presenting it gets its
//! own device certificate (if the policy allows its IMEI), never a device session.

use time::OffsetDateTime;

use crate::{Imei, ValidationError};

/// Most IMEIs in a claim's allow-list.
pub const MAX_CLAIM_IMEIS: usize = 100_000;
/// Most enrolments one claim may ever allow.
pub const MAX_CLAIM_ENROLLMENTS: i64 = 1_000_000;
/// `decided_by` of an enrolment approved by its claim's policy (`auto`), not by an operator.
pub const AUTO_APPROVER: &str = "policy:auto";
/// Longest claim name, in characters (it becomes the claim certificate's CN `claim:<name>`,
/// 64 characters at most).
pub const MAX_CLAIM_NAME: usize = 58;

crate::wire_enum! {
    /// Whether an enrolment allowed by a claim's policy is issued at once or waits for an
    /// operator.
    pub enum Approval("approval") {
        /// Issued at once (the policy vouches for every IMEI it allows).
        Auto = "auto",
        /// Held as `pending` until an operator approves or rejects it.
        Manual = "manual",
    }
}

crate::wire_enum! {
    /// What a claim's credential is.
    pub enum ClaimKind("kind") {
        /// A claim certificate (and key) issued by our CA for the batch.
        Issued = "issued",
        /// A manufacturer's claim CA: any leaf it signs is a claim credential.
        Ca = "ca",
    }
}

crate::wire_enum! {
    /// Where an enrolment is in its life.
    pub enum EnrollmentState("state") {
        /// Waiting for an operator (policy `manual`).
        Pending = "pending",
        /// Approved; the certificate is being issued.
        Approved = "approved",
        /// Refused by an operator: no certificate.
        Rejected = "rejected",
        /// The device certificate was issued.
        Issued = "issued",
    }
}

/// Which IMEIs a claim may enrol: an explicit list, or an inclusive range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImeiPolicy {
    /// Exactly these IMEIs (sorted, no duplicates).
    List(Vec<Imei>),
    /// Every IMEI from `from` to `to` inclusive.
    Range {
        /// The first IMEI allowed.
        from: Imei,
        /// The last IMEI allowed.
        to: Imei,
    },
}

impl ImeiPolicy {
    /// An allow-list: 1 to [`MAX_CLAIM_IMEIS`] valid IMEIs, no duplicates.
    pub fn list(imeis: &[String]) -> Result<Self, ValidationError> {
        if imeis.is_empty() {
            return Err(ValidationError::new("imeis", "must list at least one IMEI"));
        }
        if imeis.len() > MAX_CLAIM_IMEIS {
            return Err(ValidationError::new(
                "imeis",
                format!("lists {} IMEIs; at most {MAX_CLAIM_IMEIS}", imeis.len()),
            ));
        }
        let mut parsed = Vec::with_capacity(imeis.len());
        for (i, s) in imeis.iter().enumerate() {
            parsed.push(Imei::parse(s).map_err(|e| e.at(format!("imeis[{i}]")))?);
        }
        parsed.sort();
        if let Some(w) = parsed.windows(2).find(|w| w[0] == w[1]) {
            return Err(ValidationError::new(
                "imeis",
                format!("lists {} more than once", w[0]),
            ));
        }
        Ok(Self::List(parsed))
    }

    /// A range: both ends valid IMEIs, `from` <= `to`.
    pub fn range(from: &str, to: &str) -> Result<Self, ValidationError> {
        let from = Imei::parse(from).map_err(|e| e.at("imei_range.from"))?;
        let to = Imei::parse(to).map_err(|e| e.at("imei_range.to"))?;
        if from > to {
            return Err(ValidationError::new(
                "imei_range",
                format!("from {from} is after to {to}"),
            ));
        }
        Ok(Self::Range { from, to })
    }

    /// Whether `imei` is allowed.
    pub fn allows(&self, imei: &Imei) -> bool {
        match self {
            // Same length, digits only: text order is numeric order.
            ImeiPolicy::Range { from, to } => from <= imei && imei <= to,
            ImeiPolicy::List(list) => list.binary_search(imei).is_ok(),
        }
    }
}

/// A claim's policy, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPolicy {
    /// Which IMEIs it may enrol.
    pub imeis: ImeiPolicy,
    /// After this, nothing is enrolled with it.
    pub expires_at: OffsetDateTime,
    /// How many enrolments it allows in all.
    pub max_enrollments: i64,
    /// Issued at once, or held for an operator.
    pub approval: Approval,
}

impl ClaimPolicy {
    /// Checks a new policy: exactly one of `imeis` and `imei_range`, `expires_at` after
    /// `now`, `max_enrollments` 1 to [`MAX_CLAIM_ENROLLMENTS`].
    pub fn new(
        imeis: Option<&[String]>,
        imei_range: Option<(&str, &str)>,
        expires_at: OffsetDateTime,
        max_enrollments: i64,
        approval: Approval,
        now: OffsetDateTime,
    ) -> Result<Self, ValidationError> {
        let imeis = match (imeis, imei_range) {
            (Some(list), None) => ImeiPolicy::list(list)?,
            (None, Some((from, to))) => ImeiPolicy::range(from, to)?,
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "imeis",
                    "give either imeis or imei_range, not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "imeis",
                    "give the IMEIs the claim may enrol: imeis (a list) or imei_range",
                ));
            }
        };
        if expires_at <= now {
            return Err(ValidationError::new("expires_at", "must be in the future"));
        }
        if !(1..=MAX_CLAIM_ENROLLMENTS).contains(&max_enrollments) {
            return Err(ValidationError::new(
                "max_enrollments",
                format!("must be between 1 and {MAX_CLAIM_ENROLLMENTS}"),
            ));
        }
        Ok(Self {
            imeis,
            expires_at,
            max_enrollments,
            approval,
        })
    }
}

/// Checks a claim name: 1 to [`MAX_CLAIM_NAME`] characters of letters, digits and `-_.`.
pub fn check_claim_name(name: &str) -> Result<(), ValidationError> {
    let len = name.chars().count();
    if len == 0 || len > MAX_CLAIM_NAME {
        return Err(ValidationError::new(
            "name",
            format!("must be 1 to {MAX_CLAIM_NAME} characters"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ValidationError::new(
            "name",
            format!("may contain only letters, digits and -_. (found {c:?})"),
        ));
    }
    Ok(())
}

/// The CN of a claim certificate issued by us: `claim:<name>` (never an IMEI).
pub fn claim_common_name(name: &str) -> String {
    format!("claim:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imei(n: u64) -> Imei {
        Imei::from_body(&format!("35000000{n:06}")).unwrap()
    }

    #[test]
    fn a_range_allows_its_ends_and_nothing_outside() {
        let p = ImeiPolicy::range(imei(10).as_str(), imei(20).as_str()).unwrap();
        assert!(p.allows(&imei(10)) && p.allows(&imei(15)) && p.allows(&imei(20)));
        assert!(!p.allows(&imei(9)) && !p.allows(&imei(21)));
        let err = ImeiPolicy::range(imei(20).as_str(), imei(10).as_str()).unwrap_err();
        assert_eq!(err.field, "imei_range");
    }

    #[test]
    fn a_list_allows_its_members_and_refuses_duplicates() {
        let list = vec![imei(3).to_string(), imei(1).to_string()];
        let p = ImeiPolicy::list(&list).unwrap();
        assert!(p.allows(&imei(1)) && p.allows(&imei(3)) && !p.allows(&imei(2)));
        let dup = vec![imei(1).to_string(), imei(1).to_string()];
        assert!(
            ImeiPolicy::list(&dup)
                .unwrap_err()
                .reason
                .contains("more than once")
        );
        assert_eq!(
            ImeiPolicy::list(&["123".to_owned()]).unwrap_err().field,
            "imeis[0]"
        );
        assert!(ImeiPolicy::list(&[]).is_err());
    }

    #[test]
    fn policies_need_one_imei_rule_a_future_expiry_and_a_sane_limit() {
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::days(1);
        let list = vec![imei(1).to_string()];
        let ok = ClaimPolicy::new(Some(&list), None, later, 100, Approval::Auto, now);
        assert!(ok.is_ok());
        let both = ClaimPolicy::new(
            Some(&list),
            Some((imei(1).as_str(), imei(2).as_str())),
            later,
            1,
            Approval::Auto,
            now,
        );
        assert!(both.unwrap_err().reason.contains("not both"));
        let none = ClaimPolicy::new(None, None, later, 1, Approval::Auto, now);
        assert!(none.is_err());
        let past = ClaimPolicy::new(Some(&list), None, now, 1, Approval::Auto, now);
        assert_eq!(past.unwrap_err().field, "expires_at");
        for n in [0, MAX_CLAIM_ENROLLMENTS + 1] {
            let bad = ClaimPolicy::new(Some(&list), None, later, n, Approval::Manual, now);
            assert_eq!(bad.unwrap_err().field, "max_enrollments");
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(check_claim_name("batch-2026.11_a").is_ok());
        assert!(check_claim_name("").is_err());
        assert!(check_claim_name("a b").is_err());
        assert!(check_claim_name(&"x".repeat(MAX_CLAIM_NAME + 1)).is_err());
        assert_eq!(claim_common_name("b1"), "claim:b1");
    }

    #[test]
    fn wire_names_agree_with_serde() {
        for s in EnrollmentState::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(s.as_str())
            );
        }
        assert_eq!(Approval::parse("manual").unwrap(), Approval::Manual);
        assert_eq!(ClaimKind::parse("ca").unwrap(), ClaimKind::Ca);
    }
}
