//! AT command text as accepted from operators and API clients.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Longest AT command accepted, in bytes. MTX firmware buffers are small; a
/// `SETPARAM` with a long value (an MQTT server URL, a password) still fits.
pub const MAX_AT_COMMAND_LEN: usize = 512;

/// A single AT command line: printable ASCII, starting with `AT` (any case),
/// no CR, LF or other control characters, at most [`MAX_AT_COMMAND_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AtCommand(String);

impl AtCommand {
    /// Validates command text, reporting errors against the field `command`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let field = "command";
        if s.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if s.len() > MAX_AT_COMMAND_LEN {
            return Err(ValidationError::new(
                field,
                format!(
                    "must be at most {MAX_AT_COMMAND_LEN} bytes, got {}",
                    s.len()
                ),
            ));
        }
        if let Some((i, c)) = s.char_indices().find(|(_, c)| !(' '..='~').contains(c)) {
            let what = match c {
                '\r' => "a carriage return (CR)".to_owned(),
                '\n' => "a line feed (LF)".to_owned(),
                c if c.is_control() => format!("control character U+{:04X}", u32::from(c)),
                c => format!("non-ASCII character {c:?}"),
            };
            return Err(ValidationError::new(
                field,
                format!("contains {what} at byte {i}; only printable ASCII is allowed"),
            ));
        }
        if !s.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("AT")) {
            return Err(ValidationError::new(field, "must start with \"AT\""));
        }
        Ok(Self(s.to_owned()))
    }

    /// The command text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AtCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AtCommand {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AtCommand> for String {
    fn from(c: AtCommand) -> Self {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_commands() {
        for c in ["AT", "AT+CSQ", "ati", "AT^MTXTUNNEL=GETPARAM,GPRS_apn"] {
            assert!(AtCommand::parse(c).is_ok(), "{c}");
        }
    }

    #[test]
    fn rejects_with_reason() {
        let cases = [
            ("", "empty"),
            ("CSQ", "start with"),
            ("AT+CSQ\r\nAT+CFUN=1", "carriage return"),
            ("AT\n", "line feed"),
            ("AT\u{7}", "control character"),
            ("ATé", "non-ASCII"),
        ];
        for (input, want) in cases {
            let e = AtCommand::parse(input).unwrap_err();
            assert_eq!(e.field, "command");
            assert!(e.reason.contains(want), "{input:?}: {e}");
        }
        let long = format!("AT{}", "X".repeat(MAX_AT_COMMAND_LEN));
        assert!(
            AtCommand::parse(&long)
                .unwrap_err()
                .reason
                .contains("at most")
        );
    }
}
