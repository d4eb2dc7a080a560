//! What differs between the configuration a device should have and the one it reports.

use super::file::{ConfigFile, REDACTED};
use super::schema;

/// One key whose value differs, or that only one side has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDiff {
    /// The key as written in the desired file, or in the reported one if only it has the key.
    pub key: String,
    /// The desired value; `None` if the desired file lacks the key. `***` for a non-empty
    /// secret.
    pub desired: Option<String>,
    /// The reported value; `None` if the reported file lacks the key. `***` for a non-empty
    /// secret.
    pub reported: Option<String>,
}

/// The keys whose values differ between `desired` and `reported`: keys compared
/// case-insensitively, values compared exactly once surrounding whitespace is removed
/// (`on` differs from `ON`). Desired keys come first in desired order, then keys only the
/// report has, in report order.
///
/// Secret values are compared, then shown as `***` (an empty one stays empty, so a missing
/// password shows). Placeholders are compared as written: resolve them in `desired` first
/// (see [`ConfigFile::resolve_placeholders`]) to compare with what a device reports.
pub fn diff(desired: &ConfigFile, reported: &ConfigFile) -> Vec<KeyDiff> {
    let shown = |key: &str, v: Option<&str>| {
        v.map(|v| {
            if !v.is_empty() && schema::is_secret(key) {
                REDACTED.to_owned()
            } else {
                v.to_owned()
            }
        })
    };
    let mut out = Vec::new();
    for (key, want) in desired.entries() {
        let got = reported.get(key);
        if got != Some(want) {
            out.push(KeyDiff {
                key: key.to_owned(),
                desired: shown(key, Some(want)),
                reported: shown(key, got),
            });
        }
    }
    for (key, got) in reported.entries() {
        if !desired.contains_key(key) {
            out.push(KeyDiff {
                key: key.to_owned(),
                desired: None,
                reported: shown(key, Some(got)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> ConfigFile {
        ConfigFile::parse(s).unwrap()
    }

    #[test]
    fn equal_files_have_no_diff_whatever_the_layout() {
        let a = cfg("# master\nMTX_PIN: 1234\nGPRS_apn: movistar.es\n");
        let b = cfg("gprs_APN :   movistar.es  \r\nmtx_pin:1234\r\n");
        assert_eq!(diff(&a, &b), []);
        assert_eq!(diff(&b, &a), []);
    }

    #[test]
    fn reports_changed_missing_and_extra_keys() {
        let desired = cfg("COMM_baudrate: 9600\nMTX_clientSSL: on\nMQTT_qos: 1\n");
        let reported = cfg("X_extra: 1\nmtx_clientssl: ON\nCOMM_baudrate: 9600\n");
        assert_eq!(
            diff(&desired, &reported),
            [
                KeyDiff {
                    key: "MTX_clientSSL".into(),
                    desired: Some("on".into()),
                    reported: Some("ON".into()),
                },
                KeyDiff {
                    key: "MQTT_qos".into(),
                    desired: Some("1".into()),
                    reported: None,
                },
                KeyDiff {
                    key: "X_extra".into(),
                    desired: None,
                    reported: Some("1".into()),
                },
            ]
        );
    }

    #[test]
    fn secrets_are_compared_but_not_shown() {
        let desired = cfg("MQTT_password: new-secret\nMTX_PIN: 1234\nGPRS_password: same\n");
        let reported = cfg("MQTT_password: old-secret\nMTX_PIN:\nGPRS_password: same\n");
        let d = diff(&desired, &reported);
        assert_eq!(
            d,
            [
                KeyDiff {
                    key: "MQTT_password".into(),
                    desired: Some("***".into()),
                    reported: Some("***".into()),
                },
                KeyDiff {
                    key: "MTX_PIN".into(),
                    desired: Some("***".into()),
                    reported: Some(String::new()),
                },
            ]
        );
        let text = format!("{d:?}");
        for s in ["new-secret", "old-secret", "1234"] {
            assert!(!text.contains(s), "{text}");
        }
    }
}

crate::wire_enum! {
    /// Whether a device's reported Config.txt matches its desired configuration.
    pub enum DriftState("drift") {
        /// Every desired key reads back as desired.
        InSync = "in_sync",
        /// At least one desired key differs on the modem.
        Drifted = "drifted",
        /// Not read from the modem since the desired configuration last changed.
        Unknown = "unknown",
    }
}

impl Default for DriftState {
    /// A device nobody has read yet.
    fn default() -> Self {
        DriftState::Unknown
    }
}
