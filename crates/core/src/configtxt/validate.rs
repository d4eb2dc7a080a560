//! Checking a whole Config.txt: every value against the schema, the phone lists for
//! duplicates, and the rules that tie keys together.

use std::collections::HashMap;
use std::fmt;

use crate::ValidationError;

use super::file::ConfigFile;
use super::schema::{self, Check, Kind};
use super::whitelist::{CSD_PREFIX, MAX_PHONES, SMS_PREFIX};

/// Longest piece of a value quoted in a message, in characters.
const MAX_QUOTED: usize = 40;

/// Something allowed but worth an operator's attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The Config.txt key, as written in the file (or as documented, when it is missing).
    pub key: String,
    /// What deserves attention.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything validation found. It never stops at the first problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Values the modem would reject or misread, and broken rules. `field` is the Config.txt
    /// key as written in the file.
    pub errors: Vec<ValidationError>,
    /// Allowed, but worth a look: unknown keys, unencrypted channels, open whitelists.
    pub warnings: Vec<Warning>,
}

impl Report {
    /// Whether there are no errors (warnings may remain).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, key: &str, reason: impl Into<String>) {
        self.errors.push(ValidationError::new(key, reason));
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.warnings.push(Warning {
            key: key.to_owned(),
            message: message.into(),
        });
    }
}

impl ConfigFile {
    /// Validates every entry against the schema and the cross-key rules.
    ///
    /// - Known keys (matched case-insensitively) must have a value of their kind; messages
    ///   quote the offending value except for secrets.
    /// - Unknown keys are kept, with a warning (and a suggestion when the key is one or two
    ///   letters away from a known one, as `DNS_exdended` is from `DNS_extended`).
    /// - `SMS_validPhoneN` and `CSD_validPhoneN` exist for N = 1 to 10 only; a number may not
    ///   appear twice in the same list.
    /// - `CSD_enabled: on` needs `GPRS_mode: 2g` (error), and should come with at least one
    ///   `CSD_validPhoneN` (warning).
    /// - Warnings for `SMS_allPhones: on` with `SMS_ATEnabled: on`, for
    ///   `MTX_clientSSL: off`, and for a `tcp://` `MQTT_server` while MQTT is enabled.
    pub fn validate(&self) -> Report {
        let mut report = Report::default();
        let mut phones: HashMap<(&'static str, &str), &str> = HashMap::new();
        for (key, value) in self.entries() {
            let Some(m) = schema::lookup(key) else {
                unknown_key(&mut report, key);
                continue;
            };
            let quote = |msg: String| {
                if m.spec.secret || value.is_empty() {
                    msg
                } else {
                    format!("{msg} (got {})", quoted(value))
                }
            };
            match schema::check(m.spec, value) {
                Check::Ok => {}
                Check::Warn(w) => report.warn(key, quote(w)),
                Check::Err(e) => {
                    report.error(key, quote(e));
                    continue;
                }
            }
            if m.spec.kind == Kind::Phone && !value.is_empty() {
                if let Some(first) = phones.get(&(m.spec.name, value)) {
                    report.error(
                        key,
                        format!("{value} is already in {first}: the same number twice in a list"),
                    );
                } else {
                    phones.insert((m.spec.name, value), key);
                }
            }
        }
        cross_rules(self, &mut report);
        report
    }
}

fn unknown_key(report: &mut Report, key: &str) {
    if let Some((spec, n)) = schema::family_out_of_range(key) {
        let (first, last) = spec.index.unwrap_or_default();
        let msg = format!(
            "{} exists only for N = {first} to {last}{}",
            spec.display_name(),
            n.map(|n| format!(", not {n}")).unwrap_or_default()
        );
        if spec.kind == Kind::Phone {
            // An operator who lists an 11th number believes it authorised; it is not.
            report.error(key, format!("{msg}: the modem ignores this number"));
        } else {
            report.warn(key, format!("unknown key, kept as written: {msg}"));
        }
        return;
    }
    let suggestion = schema::KEYS
        .iter()
        .filter(|s| s.index.is_none())
        .map(|s| {
            (
                distance(&key.to_ascii_lowercase(), &s.name.to_ascii_lowercase()),
                s,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| format!("; did you mean {}?", s.name))
        .unwrap_or_default();
    report.warn(
        key,
        format!("unknown key, kept as written and not checked{suggestion}"),
    );
}

/// The value of a known key, with the key as written (or as documented when absent).
fn lookup<'a>(config: &'a ConfigFile, key: &'a str) -> (&'a str, Option<&'a str>) {
    (config.key_as_written(key).unwrap_or(key), config.get(key))
}

fn cross_rules(config: &ConfigFile, report: &mut Report) {
    let (csd_key, csd) = lookup(config, "CSD_enabled");
    if csd == Some("on") {
        let (mode_key, mode) = lookup(config, "GPRS_mode");
        // A GPRS_mode the schema rejects already has its error.
        let valid = |m: &str| {
            schema::lookup("GPRS_mode").is_some_and(|k| schema::check(k.spec, m) == Check::Ok)
        };
        if mode != Some("2g") && mode.is_none_or(valid) {
            let got = match mode {
                Some(m) => format!("it is {}", quoted(m)),
                None => "it is not set".to_owned(),
            };
            report.error(
                mode_key,
                format!("must be 2g: CSD calls need the 2G network and {csd_key} is on; {got}"),
            );
        }
        let any_csd_number = (1..=MAX_PHONES).any(|n| {
            config
                .get(&format!("{CSD_PREFIX}{n}"))
                .is_some_and(|v| !v.is_empty())
        });
        if !any_csd_number {
            report.warn(
                csd_key,
                format!("CSD calls are enabled and no {CSD_PREFIX}N is set: any number may call"),
            );
        }
    }

    let (all_key, all) = lookup(config, "SMS_allPhones");
    let (at_key, at) = lookup(config, "SMS_ATEnabled");
    if all == Some("on") && at == Some("on") {
        report.warn(
            all_key,
            format!(
                "SMS commands are accepted from any number because {at_key} is on; set it off and list the numbers in {SMS_PREFIX}N"
            ),
        );
    }

    let (ssl_key, ssl) = lookup(config, "MTX_clientSSL");
    if ssl == Some("off") {
        report.warn(
            ssl_key,
            "the meter-reading channel (TCP client socket) is not encrypted; set it on",
        );
    }

    let (server_key, server) = lookup(config, "MQTT_server");
    let (_, mqtt) = lookup(config, "MQTT_enabled");
    if mqtt != Some("off") && server.is_some_and(|s| s.starts_with("tcp://")) {
        report.warn(
            server_key,
            "the command channel to the Device Manager is not encrypted; use ssl://",
        );
    }
}

fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{:?}…", &value[..i]),
        None => format!("{value:?}"),
    }
}

/// Levenshtein distance between two short ASCII strings.
fn distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("dns_exdended", "dns_extended"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn quoting_shortens_long_values() {
        assert_eq!(quoted("ab"), "\"ab\"");
        assert!(quoted(&"x".repeat(100)).ends_with('…'));
    }
}
