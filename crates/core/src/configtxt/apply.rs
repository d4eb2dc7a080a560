//! Applying a desired configuration to a modem: the minimal set of parameter writes, and how
//! each key came out once the modem's configuration is read back.

use serde::{Deserialize, Serialize};

use super::file::{ConfigFile, REDACTED};
use super::schema;

/// One parameter to write (`AT^MTXTUNNEL=SETPARAM,<key>,<value>`).
#[derive(Clone, PartialEq, Eq)]
pub struct ParamWrite {
    /// The key as the desired file writes it.
    pub key: String,
    /// The value to write (may be a secret: see [`ParamWrite::shown_value`]).
    pub value: String,
}

impl std::fmt::Debug for ParamWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamWrite")
            .field("key", &self.key)
            .field("value", &self.shown_value())
            .finish()
    }
}

impl ParamWrite {
    /// The value, or `***` for a non-empty secret.
    pub fn shown_value(&self) -> String {
        shown(&self.key, Some(&self.value)).unwrap_or_default()
    }
}

fn shown(key: &str, v: Option<&str>) -> Option<String> {
    v.map(|v| {
        if !v.is_empty() && schema::is_secret(key) {
            REDACTED.to_owned()
        } else {
            v.to_owned()
        }
    })
}

/// The writes that make `reported` match `desired`: every desired key whose reported value
/// differs or is missing, in desired order; then every caller-whitelist entry the modem has
/// and the desired configuration does not, written empty (a number left there would keep its
/// rights). Other keys only the modem has are left alone (a `SETPARAM` cannot remove a key).
pub fn plan(desired: &ConfigFile, reported: &ConfigFile) -> Vec<ParamWrite> {
    let mut out: Vec<ParamWrite> = desired
        .entries()
        .filter(|(k, v)| reported.get(k) != Some(*v))
        .map(|(k, v)| ParamWrite {
            key: k.to_owned(),
            value: v.to_owned(),
        })
        .collect();
    out.extend(stale_entries(desired, reported).map(|k| ParamWrite {
        key: k.to_owned(),
        value: String::new(),
    }));
    out
}

/// Caller-whitelist entries the modem reports with a number and the desired configuration
/// does not have.
pub fn stale_entries<'a>(
    desired: &'a ConfigFile,
    reported: &'a ConfigFile,
) -> impl Iterator<Item = &'a str> + 'a {
    reported.entries().filter_map(|(k, v)| {
        (!v.trim().is_empty()
            && !desired.contains_key(k)
            && super::whitelist::is_whitelist_entry(k))
        .then_some(k)
    })
}

/// Whether writing `writes` needs a restart to take effect.
pub fn needs_restart(writes: &[ParamWrite]) -> bool {
    writes.iter().any(|w| schema::needs_restart(&w.key))
}

/// How one key came out of an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Written, and read back with the desired value.
    Applied,
    /// Already had the desired value.
    Unchanged,
    /// The modem rejected the write.
    Failed,
    /// Written (or unchanged), but read back with another value.
    Mismatch,
    /// Not written: an earlier step failed.
    NotAttempted,
}

/// The per-key record of an apply (values of secrets as `***`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResult {
    /// The key.
    pub key: String,
    /// The desired value.
    pub desired: Option<String>,
    /// The value read before the apply.
    pub before: Option<String>,
    /// The value read back after it (`None` if it could not be read back).
    pub after: Option<String>,
    /// The outcome.
    pub status: KeyStatus,
    /// The modem's error, for a failed write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl KeyResult {
    /// A result for `key` with `status`, values taken from the three files.
    pub fn new(
        key: &str,
        desired: &ConfigFile,
        before: &ConfigFile,
        after: Option<&ConfigFile>,
        status: KeyStatus,
    ) -> Self {
        Self {
            key: key.to_owned(),
            desired: shown(key, desired.get(key)),
            before: shown(key, before.get(key)),
            after: after.and_then(|a| shown(key, a.get(key))),
            status,
            error: None,
        }
    }
}

/// Compares the read-back configuration with the desired one for the written keys and for
/// the keys that were already right: `written` keys become `applied` or `mismatch`, the
/// others `unchanged` or `mismatch`. `failed` keys keep their status.
pub fn verify(
    desired: &ConfigFile,
    before: &ConfigFile,
    after: &ConfigFile,
    outcomes: &[(String, Result<(), String>)],
) -> Vec<KeyResult> {
    let stale: Vec<KeyResult> = outcomes
        .iter()
        .filter(|(k, _)| !desired.contains_key(k))
        .map(|(k, r)| {
            let cleared = after.get(k).is_none_or(|v| v.trim().is_empty());
            let status = match r {
                Err(_) => KeyStatus::Failed,
                Ok(()) if cleared => KeyStatus::Applied,
                Ok(()) => KeyStatus::Mismatch,
            };
            KeyResult {
                key: k.clone(),
                desired: Some(String::new()),
                before: shown(k, before.get(k)),
                after: shown(k, after.get(k)),
                status,
                error: r.clone().err(),
            }
        })
        .collect();
    let mut results: Vec<KeyResult> = desired
        .entries()
        .map(|(k, want)| {
            let written = outcomes.iter().find(|(key, _)| key.eq_ignore_ascii_case(k));
            let ok_now = after.get(k) == Some(want);
            let status = match written {
                Some((_, Err(_))) => KeyStatus::Failed,
                Some((_, Ok(()))) if ok_now => KeyStatus::Applied,
                None if ok_now => KeyStatus::Unchanged,
                _ => KeyStatus::Mismatch,
            };
            let mut r = KeyResult::new(k, desired, before, Some(after), status);
            if let Some((_, Err(e))) = written {
                r.error = Some(e.clone());
            }
            r
        })
        .collect();
    results.extend(stale);
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> ConfigFile {
        ConfigFile::parse(s).unwrap()
    }

    #[test]
    fn plan_writes_only_what_differs() {
        let desired = cfg("DNS_period: 300\nGPRS_apn: a\nMTX_PIN: 1234\nNEW_key: x\n");
        let reported = cfg("dns_period: 600\ngprs_apn: a\nMTX_PIN: 0000\nOTHER: y\n");
        let p = plan(&desired, &reported);
        let keys: Vec<&str> = p.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["DNS_period", "MTX_PIN", "NEW_key"]);
        assert!(!format!("{p:?}").contains("1234"));
        assert_eq!(p[1].shown_value(), "***");
        assert!(needs_restart(&p));
        let wl = plan(
            &cfg("CSD_validPhone1: 666\n"),
            &cfg("CSD_validPhone1: 555\n"),
        );
        assert!(!needs_restart(&wl));
        assert!(plan(&desired, &desired).is_empty());
    }

    #[test]
    fn whitelist_entries_the_modem_should_not_have_are_cleared() {
        let desired = cfg("CSD_validPhone1: 666333444\nSMS_allPhones: off\n");
        let reported = cfg(
            "CSD_validPhone1: 666333444\nCSD_validPhone2: 666444555\nSMS_validPhone1: +34600000001\nSMS_validPhone2:\nOTHER_key: 1\nSMS_allPhones: off\n",
        );
        let p = plan(&desired, &reported);
        let writes: Vec<(&str, &str)> = p
            .iter()
            .map(|w| (w.key.as_str(), w.value.as_str()))
            .collect();
        assert_eq!(writes, [("CSD_validPhone2", ""), ("SMS_validPhone1", "")]);
        assert!(!needs_restart(&p));
        let after = cfg(
            "CSD_validPhone1: 666333444\nCSD_validPhone2:\nSMS_validPhone1: +34600000001\nSMS_allPhones: off\n",
        );
        let outcomes = vec![
            ("CSD_validPhone2".to_owned(), Ok(())),
            ("SMS_validPhone1".to_owned(), Ok(())),
        ];
        let r = verify(&desired, &reported, &after, &outcomes);
        let st: Vec<(&str, KeyStatus)> = r.iter().map(|k| (k.key.as_str(), k.status)).collect();
        assert_eq!(
            st,
            [
                ("CSD_validPhone1", KeyStatus::Unchanged),
                ("SMS_allPhones", KeyStatus::Unchanged),
                ("CSD_validPhone2", KeyStatus::Applied),
                ("SMS_validPhone1", KeyStatus::Mismatch),
            ]
        );
    }

    #[test]
    fn verify_classifies_each_key() {
        let desired = cfg("A: 1\nB: 2\nC: 3\nD: 4\n");
        let before = cfg("A: 0\nB: 2\nC: 0\nD: 0\n");
        let after = cfg("A: 1\nB: 2\nC: 0\nD: 9\n");
        let outcomes = vec![
            ("A".to_owned(), Ok(())),
            ("C".to_owned(), Err("ERROR".to_owned())),
            ("D".to_owned(), Ok(())),
        ];
        let r = verify(&desired, &before, &after, &outcomes);
        let st: Vec<KeyStatus> = r.iter().map(|k| k.status).collect();
        assert_eq!(
            st,
            [
                KeyStatus::Applied,
                KeyStatus::Unchanged,
                KeyStatus::Failed,
                KeyStatus::Mismatch
            ]
        );
        assert_eq!(r[2].error.as_deref(), Some("ERROR"));
        assert_eq!(r[3].after.as_deref(), Some("9"));
    }
}
