//! The authorised phone numbers: `SMS_validPhoneN` (SMS commands) and `CSD_validPhoneN`
//! (GSM data calls), N = 1 to 10.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

use super::file::ConfigFile;
use super::schema;

/// Most numbers in one list: the firmware has `SMS_validPhone1` to `SMS_validPhone10`.
pub const MAX_PHONES: usize = 10;

/// Prefix of the SMS list's keys.
pub const SMS_PREFIX: &str = "SMS_validPhone";

/// Prefix of the CSD list's keys.
pub const CSD_PREFIX: &str = "CSD_validPhone";

/// Whether `key` is an entry of a caller whitelist (`SMS_validPhoneN`, `CSD_validPhoneN`).
/// Such an entry missing from the desired configuration must be empty on the modem: a
/// number left there would keep its rights.
pub fn is_whitelist_entry(key: &str) -> bool {
    super::schema::family_index(SMS_PREFIX, key).is_some()
        || super::schema::family_index(CSD_PREFIX, key).is_some()
}

/// A phone number as a modem compares it with a caller's: `+` followed by 8-15 digits
/// (E.164), or 3-15 national digits. No spaces or separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Validates a phone number, reporting errors against the field `phone`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let field = "phone";
        let (digits, min, what) = match s.strip_prefix('+') {
            Some(d) => (d, 8, "after + (E.164)"),
            None => (s, 3, "for a national number"),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::new(
                field,
                "must be + and 8-15 digits, or 3-15 digits, with no spaces or separators",
            ));
        }
        if !(min..=15).contains(&digits.len()) {
            return Err(ValidationError::new(
                field,
                format!("must have {min} to 15 digits {what}, not {}", digits.len()),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The number as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> Self {
        p.0
    }
}

/// The two lists of authorised numbers, in N order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whitelists {
    /// Numbers allowed to make CSD (GSM data) calls: `CSD_validPhoneN`.
    pub csd: Vec<String>,
    /// Numbers allowed to send SMS commands: `SMS_validPhoneN`.
    pub sms: Vec<String>,
}

impl Whitelists {
    /// Checks both lists: at most [`MAX_PHONES`] each, every number valid, no number twice in
    /// a list. Errors name the key the number would be written to (`SMS_validPhone3`); a
    /// duplicate's error names both keys.
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut errors = check_list(SMS_PREFIX, &self.sms);
        errors.extend(check_list(CSD_PREFIX, &self.csd));
        errors
    }
}

fn check_list(prefix: &str, numbers: &[String]) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if numbers.len() > MAX_PHONES {
        errors.push(ValidationError::new(
            format!("{prefix}N"),
            format!(
                "at most {MAX_PHONES} numbers ({prefix}1 to {prefix}{MAX_PHONES}), got {}",
                numbers.len()
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in numbers.iter().enumerate() {
        let key = format!("{prefix}{}", i + 1);
        if let Err(e) = PhoneNumber::parse(n) {
            errors.push(e.at(key));
            continue;
        }
        if let Some(first) = seen.get(n.as_str()) {
            errors.push(ValidationError::new(
                key,
                format!("{n} is already {prefix}{}", first + 1),
            ));
        } else {
            seen.insert(n, i);
        }
    }
    errors
}

impl ConfigFile {
    /// The authorised numbers: non-empty `CSD_validPhoneN` and `SMS_validPhoneN` values for
    /// N = 1 to 10, in N order, as written (not validated: see [`ConfigFile::validate`]).
    pub fn whitelists(&self) -> Whitelists {
        let list = |prefix: &str| -> Vec<String> {
            (1..=MAX_PHONES)
                .filter_map(|n| self.get(&format!("{prefix}{n}")))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Whitelists {
            csd: list(CSD_PREFIX),
            sms: list(SMS_PREFIX),
        }
    }

    /// Writes both lists as N = 1, 2, ... and removes the keys of the family beyond the list
    /// (including out-of-range ones such as `SMS_validPhone11`). Existing keys keep their
    /// spelling and place; new ones go after the family's last line, or at the end. A
    /// non-empty SMS list also sets `SMS_allPhones: off`, so that only the listed numbers may
    /// send commands.
    ///
    /// Validates first (see [`Whitelists::validate`]); on any error nothing is changed.
    pub fn set_whitelists(&mut self, lists: &Whitelists) -> Result<(), Vec<ValidationError>> {
        let errors = lists.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut next = self.clone();
        next.write_list(SMS_PREFIX, &lists.sms)
            .and_then(|()| next.write_list(CSD_PREFIX, &lists.csd))
            .and_then(|()| {
                if lists.sms.is_empty() {
                    Ok(())
                } else {
                    next.set("SMS_allPhones", "off")
                }
            })
            .map_err(|e| vec![ValidationError::from(e)])?;
        *self = next;
        Ok(())
    }

    fn write_list(
        &mut self,
        prefix: &str,
        numbers: &[String],
    ) -> Result<(), super::file::ConfigError> {
        let in_family = |k: &str| {
            schema::family_index(prefix, k).is_some()
                || schema::family_out_of_range(k).is_some_and(|(s, _)| s.name == prefix)
        };
        // Surplus first, so that new lines go after the family's remaining ones.
        while let Some(i) = self.rfind_key(|k| {
            in_family(k)
                && schema::family_index(prefix, k).is_none_or(|n| n as usize > numbers.len())
        }) {
            let key = self
                .entry_at(i)
                .map(|(k, _)| k.to_owned())
                .unwrap_or_default();
            self.remove(&key);
        }
        for (i, number) in numbers.iter().enumerate() {
            let key = format!("{prefix}{}", i + 1);
            if self.contains_key(&key) {
                self.set(&key, number)?;
            } else {
                let at = self
                    .rfind_key(in_family)
                    .map_or(self.line_count(), |i| i + 1);
                self.insert_line(at, &key, number)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers() {
        for ok in [
            "+34666123456",
            "666333444",
            "112",
            "+12345678",
            "+123456789012345",
        ] {
            PhoneNumber::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, want) in [
            ("", "no spaces"),
            ("+", "no spaces"),
            ("12", "3 to 15"),
            ("+1234567", "8 to 15"),
            ("+1234567890123456", "8 to 15"),
            ("1234567890123456", "3 to 15"),
            ("+34 666 123 456", "no spaces"),
            ("666-333-444", "no spaces"),
            ("++34666123456", "no spaces"),
            ("0034６66", "no spaces"),
        ] {
            let e = PhoneNumber::parse(bad).unwrap_err();
            assert_eq!(e.field, "phone");
            assert!(e.reason.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn reads_lists_in_n_order_skipping_empty_slots() {
        let c = ConfigFile::parse(
            "SMS_validPhone2: +34666123457\nsms_validphone1: +34666123456\nSMS_validPhone3:\nCSD_validPhone10: 666444555\nCSD_validPhone11: 111\nCSD_validPhone1: 666333444\n",
        )
        .unwrap();
        assert_eq!(
            c.whitelists(),
            Whitelists {
                csd: vec!["666333444".into(), "666444555".into()],
                sms: vec!["+34666123456".into(), "+34666123457".into()],
            }
        );
    }

    #[test]
    fn writes_lists_back_in_place() {
        let mut c = ConfigFile::parse(
            "SMS_allPhones: on\r\nsms_validphone1: +34666000000\r\nSMS_validPhone2: +34666000001\r\nSMS_validPhone3: +34666000002\r\nSMS_validPhone12: 999\r\nMQTT_enabled: on\r\nCSD_enabled: on\r\n",
        )
        .unwrap();
        let lists = Whitelists {
            csd: vec!["666333444".into(), "666444555".into()],
            sms: vec!["+34666123456".into()],
        };
        c.set_whitelists(&lists).unwrap();
        assert_eq!(
            c.render(),
            "SMS_allPhones: off\r\nsms_validphone1: +34666123456\r\nMQTT_enabled: on\r\nCSD_enabled: on\r\nCSD_validPhone1: 666333444\r\nCSD_validPhone2: 666444555\r\n"
        );
        assert_eq!(c.whitelists(), lists);
        assert_eq!(ConfigFile::parse(&c.render()).unwrap(), c);

        // Growing a list puts new keys after the family's last line.
        let lists = Whitelists {
            csd: vec![],
            sms: vec!["+34666123456".into(), "+34666123457".into()],
        };
        c.set_whitelists(&lists).unwrap();
        assert_eq!(
            c.render(),
            "SMS_allPhones: off\r\nsms_validphone1: +34666123456\r\nSMS_validPhone2: +34666123457\r\nMQTT_enabled: on\r\nCSD_enabled: on\r\n"
        );
    }

    #[test]
    fn empty_sms_list_leaves_sms_all_phones_alone() {
        let mut c = ConfigFile::parse("SMS_allPhones: on\n").unwrap();
        c.set_whitelists(&Whitelists::default()).unwrap();
        assert_eq!(c.render(), "SMS_allPhones: on\n");
        let mut c = ConfigFile::new();
        c.set_whitelists(&Whitelists {
            csd: vec![],
            sms: vec!["112".into()],
        })
        .unwrap();
        assert_eq!(c.render(), "SMS_validPhone1: 112\nSMS_allPhones: off\n");
    }

    #[test]
    fn rejects_bad_lists_without_changing_anything() {
        let text = "SMS_validPhone1: +34666000000\n";
        let mut c = ConfigFile::parse(text).unwrap();
        let lists = Whitelists {
            csd: (0..11).map(|i| format!("66633344{i}")).collect(),
            sms: vec!["+34666123456".into(), "12 34".into(), "+34666123456".into()],
        };
        let errors = c.set_whitelists(&lists).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["SMS_validPhone2", "SMS_validPhone3", "CSD_validPhoneN"]
        );
        assert!(
            errors[1].reason.contains("SMS_validPhone1"),
            "{}",
            errors[1]
        );
        assert!(errors[2].reason.contains("at most 10"), "{}", errors[2]);
        assert_eq!(c.render(), text);
    }
}
