//! The International Mobile Equipment Identity: a device's name everywhere in Callhome.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A 15-digit IMEI whose last digit is a valid Luhn check digit.
///
/// The certificate CN of a modem, its MQTT client id and the key of its device record.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Imei(String);

impl Imei {
    /// Parses an IMEI, reporting errors against the field name `imei`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let field = "imei";
        if s.len() != 15 || s.chars().count() != 15 {
            return Err(ValidationError::new(
                field,
                format!(
                    "must be exactly 15 digits, got {} characters",
                    s.chars().count()
                ),
            ));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit()) {
            return Err(ValidationError::new(
                field,
                format!("must contain only digits, found {c:?}"),
            ));
        }
        let expected = luhn_check_digit(&s[..14]);
        let actual = s.as_bytes()[14] - b'0';
        if expected != actual {
            return Err(ValidationError::new(
                field,
                format!(
                    "check digit is {actual}, the Luhn check digit for these 14 digits is {expected}"
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// Builds a valid IMEI from its first 14 digits by appending the Luhn check digit.
    /// Used by the simulator to mint fleets; `body` must be 14 ASCII digits.
    pub fn from_body(body: &str) -> Result<Self, ValidationError> {
        if body.len() != 14 || !body.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::new("imei", "body must be 14 digits"));
        }
        Ok(Self(format!("{body}{}", luhn_check_digit(body))))
    }

    /// The IMEI's digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Luhn check digit for a string of ASCII digits.
fn luhn_check_digit(digits: &str) -> u8 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    ((10 - (sum % 10)) % 10) as u8
}

impl fmt::Display for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Imei({})", self.0)
    }
}

impl FromStr for Imei {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Imei {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Imei> for String {
    fn from(i: Imei) -> Self {
        i.0
    }
}

impl AsRef<str> for Imei {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_known_valid_imeis() {
        // Published examples (the first is the one in the IMEI article of Wikipedia).
        for s in ["490154203237518", "356938035643809"] {
            Imei::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn rejects_wrong_length_letters_and_bad_check_digit() {
        let e = Imei::parse("49015420323751").unwrap_err();
        assert!(e.reason.contains("15 digits"), "{e}");
        let e = Imei::parse("4901542032375180").unwrap_err();
        assert!(e.reason.contains("15 digits"), "{e}");
        let e = Imei::parse("49015420323751A").unwrap_err();
        assert!(e.reason.contains("only digits"), "{e}");
        let e = Imei::parse("490154203237519").unwrap_err();
        assert!(e.reason.contains("check digit"), "{e}");
        assert_eq!(e.field, "imei");
        // Multi-byte characters must not slip past the length check.
        assert!(Imei::parse("49015420323751é").is_err());
    }

    proptest! {
        #[test]
        fn from_body_always_parses(body in "[0-9]{14}") {
            let imei = Imei::from_body(&body).unwrap();
            prop_assert_eq!(Imei::parse(imei.as_str()).unwrap(), imei);
        }

        #[test]
        fn exactly_one_check_digit_is_valid(body in "[0-9]{14}") {
            let valid = (0..10).filter(|d| Imei::parse(&format!("{body}{d}")).is_ok()).count();
            prop_assert_eq!(valid, 1);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = Imei::parse(&s);
        }
    }
}
