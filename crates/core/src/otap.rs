//! Java ME over-the-air provisioning (JSR-118 OTAP): the install-notify status a modem
//! POSTs after an update, and the application descriptor (JAD) that points it at a JAR.
//!
//! Pure text handling, no I/O: the firmware crate checks a JAR against a [`Jad`], the
//! device listener hands [`InstallStatus::parse`] the body of a notify POST.
//!
//! - [`InstallStatus`]: the first line of a notify body, `<3-digit code>[ <message>]`,
//!   code 900..=999 (900-912 are the standard codes, see [`meaning`]).
//! - [`Jad`]: an ordered list of `Name: value` attributes. Unlike a JAR manifest, a
//!   JSR-118 descriptor has no continuation lines: a line starting with a space is
//!   rejected. Attribute names are matched case-sensitively, as JSR-118 says.

use std::fmt;

/// Largest install-notify body accepted, in bytes.
pub const MAX_NOTIFY_BODY: usize = 4 * 1024;
/// Largest JAD accepted, in bytes.
pub const MAX_JAD_LEN: usize = 64 * 1024;
/// Most attributes a JAD may have.
pub const MAX_JAD_ATTRIBUTES: usize = 256;

/// `MIDlet-Name`: the suite's name, equal in the JAD and the JAR manifest.
pub const MIDLET_NAME: &str = "MIDlet-Name";
/// `MIDlet-Vendor`: the suite's vendor, equal in the JAD and the JAR manifest.
pub const MIDLET_VENDOR: &str = "MIDlet-Vendor";
/// `MIDlet-Version`: the suite's version, equal in the JAD and the JAR manifest.
pub const MIDLET_VERSION: &str = "MIDlet-Version";
/// `MIDlet-Jar-URL`: where the modem downloads the JAR.
pub const MIDLET_JAR_URL: &str = "MIDlet-Jar-URL";
/// `MIDlet-Jar-Size`: the JAR's size in bytes.
pub const MIDLET_JAR_SIZE: &str = "MIDlet-Jar-Size";
/// `MIDlet-Install-Notify`: where the modem POSTs its install status.
pub const MIDLET_INSTALL_NOTIFY: &str = "MIDlet-Install-Notify";

/// The attributes [`Jad::validate`] requires.
pub const REQUIRED_JAD_ATTRIBUTES: [&str; 5] = [
    MIDLET_NAME,
    MIDLET_VENDOR,
    MIDLET_VERSION,
    MIDLET_JAR_URL,
    MIDLET_JAR_SIZE,
];

/// Why an install-notify body or a JAD was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtapError {
    /// The notify body is longer than [`MAX_NOTIFY_BODY`].
    #[error("install status body is {len} bytes, at most {max} are accepted")]
    StatusTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The notify body is not UTF-8 text.
    #[error("install status body is not UTF-8 text (invalid byte at offset {offset})")]
    StatusNotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The notify body has no status line.
    #[error("install status body is empty: expected `<code> <message>`, e.g. `900 Success`")]
    StatusEmpty,
    /// The first line does not start with a 3-digit code.
    #[error(
        "install status line {line:?} does not start with a 3-digit status code followed by a space or the end of the line"
    )]
    StatusNoCode {
        /// The first line (shortened to 64 characters).
        line: String,
    },
    /// The code is outside 900..=999.
    #[error("install status code {code} is outside the JSR-118 range 900-999")]
    StatusCodeOutOfRange {
        /// The code found.
        code: u16,
    },
    /// The status message contains a control character.
    #[error("install status message contains the control character {found:?}")]
    StatusControlChar {
        /// The character.
        found: char,
    },
    /// The JAD is longer than [`MAX_JAD_LEN`].
    #[error("JAD is {len} bytes, at most {max} are accepted")]
    JadTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The JAD has more than [`MAX_JAD_ATTRIBUTES`] attributes.
    #[error("JAD has more than {max} attributes")]
    JadTooManyAttributes {
        /// The limit.
        max: usize,
    },
    /// A line starts with white space: a manifest continuation line, not allowed in a JAD.
    #[error(
        "JAD line {line} starts with white space: continuation lines are not allowed in a JSR-118 descriptor"
    )]
    JadContinuation {
        /// 1-based line number.
        line: usize,
    },
    /// A line has no `:` between name and value.
    #[error("JAD line {line} has no ':' separating an attribute name from its value")]
    JadNoColon {
        /// 1-based line number.
        line: usize,
    },
    /// An attribute name is empty or contains a character other than printable ASCII.
    #[error("JAD attribute name {name:?}{} {reason}", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
    JadBadName {
        /// 1-based line number, when parsing.
        line: Option<usize>,
        /// The name as found (shortened to 64 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An attribute value contains a control character.
    #[error("JAD attribute {name}{} has a value with the control character {found:?}", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
    JadBadValue {
        /// 1-based line number, when parsing.
        line: Option<usize>,
        /// The attribute.
        name: String,
        /// The character.
        found: char,
    },
    /// An attribute appears twice.
    #[error("JAD attribute {name} appears twice (lines {first} and {second})")]
    JadDuplicate {
        /// The attribute.
        name: String,
        /// 1-based line of the first occurrence.
        first: usize,
        /// 1-based line of the second.
        second: usize,
    },
    /// [`Jad::validate`] found problems; each is named.
    #[error("invalid JAD: {}", problems.join("; "))]
    JadInvalid {
        /// One sentence per problem.
        problems: Vec<String>,
    },
}

/// The standard JSR-118 text for install status `code` (900-912), or `"unknown status"`.
pub fn meaning(code: u16) -> &'static str {
    match code {
        900 => "Success",
        901 => "Insufficient Memory",
        902 => "User Cancelled",
        903 => "Loss of Service",
        904 => "JAR Size Mismatch",
        905 => "Attribute Mismatch",
        906 => "Invalid Descriptor",
        907 => "Invalid JAR",
        908 => "Incompatible Configuration or Profile",
        909 => "Application Authentication Failure",
        910 => "Application Authorization Failure",
        911 => "Push Registration Failure",
        912 => "Deletion Notification",
        _ => "unknown status",
    }
}

/// An install status as reported by a modem (JSR-118 install-notify).
///
/// Displayed as the standard meaning, followed by the modem's own message in
/// parentheses when it says something else: `904 JAR Size Mismatch (Size mismatch)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstallStatus {
    code: u16,
    message: String,
}

impl InstallStatus {
    /// The status `900 Success`.
    pub fn success() -> Self {
        Self {
            code: 900,
            message: meaning(900).to_owned(),
        }
    }

    /// A status with `code` (900..=999) and `message` (one line without control
    /// characters; surrounding white space is trimmed).
    pub fn new(code: u16, message: &str) -> Result<Self, OtapError> {
        if !(900..=999).contains(&code) {
            return Err(OtapError::StatusCodeOutOfRange { code });
        }
        let message = message.trim();
        if let Some(found) = message.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(OtapError::StatusControlChar { found });
        }
        Ok(Self {
            code,
            message: message.to_owned(),
        })
    }

    /// Parses a notify body: UTF-8, at most [`MAX_NOTIFY_BODY`] bytes, whose first
    /// non-blank line is `<3-digit code>[ <message>]` (LF or CRLF, optional BOM). Lines
    /// after the first are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, OtapError> {
        if body.len() > MAX_NOTIFY_BODY {
            return Err(OtapError::StatusTooLong {
                len: body.len(),
                max: MAX_NOTIFY_BODY,
            });
        }
        let text = std::str::from_utf8(body).map_err(|e| OtapError::StatusNotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let line = text
            .split('\n')
            .map(|l| l.trim_matches(|c: char| c == '\r' || c == ' ' || c == '\t'))
            .find(|l| !l.is_empty())
            .ok_or(OtapError::StatusEmpty)?;
        let no_code = || OtapError::StatusNoCode {
            line: line.chars().take(64).collect(),
        };
        let digits = line.get(..3).ok_or_else(no_code)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(no_code());
        }
        let rest = &line[3..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return Err(no_code());
        }
        let code: u16 = digits.parse().map_err(|_| no_code())?;
        Self::new(code, rest)
    }

    /// The status code (900..=999).
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The modem's message, trimmed (may be empty).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the install succeeded (code 900).
    pub fn is_success(&self) -> bool {
        self.code == 900
    }

    /// The standard text of the code, `"unknown status"` outside 900-912.
    pub fn meaning(&self) -> &'static str {
        meaning(self.code)
    }

    /// The body a modem POSTs for this status: `<code> <message>` (the standard meaning
    /// when the message is empty), with a final newline.
    pub fn to_body(&self) -> String {
        let msg = if self.message.is_empty() {
            self.meaning()
        } else {
            &self.message
        };
        format!("{} {msg}\n", self.code)
    }
}

impl fmt::Display for InstallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meaning = self.meaning();
        write!(f, "{} {meaning}", self.code)?;
        if !self.message.is_empty() && !self.message.eq_ignore_ascii_case(meaning) {
            write!(f, " ({})", self.message)?;
        }
        Ok(())
    }
}

/// A Java ME application descriptor: ordered `Name: value` attributes.
///
/// Built by [`Jad::parse`] or [`Jad::for_release`]; every attribute in it has a valid
/// name and a one-line value, so [`Jad::render`] always produces a JAD that parses back
/// to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Jad {
    attributes: Vec<(String, String)>,
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

fn check_name(name: &str, line: Option<usize>) -> Result<(), OtapError> {
    let bad = |reason| OtapError::JadBadName {
        line,
        name: shorten(name),
        reason,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.contains(':') {
        return Err(bad("contains ':'"));
    }
    if !name.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(bad(
            "contains a character other than printable ASCII (spaces and control characters are not allowed)",
        ));
    }
    Ok(())
}

fn check_value(name: &str, value: &str, line: Option<usize>) -> Result<(), OtapError> {
    match value.chars().find(|c| c.is_control() && *c != '\t') {
        Some(found) => Err(OtapError::JadBadValue {
            line,
            name: name.to_owned(),
            found,
        }),
        None => Ok(()),
    }
}

fn trim_wsp(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

impl Jad {
    /// Parses a JAD: at most [`MAX_JAD_LEN`] bytes and [`MAX_JAD_ATTRIBUTES`]
    /// attributes, LF or CRLF line ends, an optional UTF-8 BOM, blank lines ignored. Each
    /// line is `Name: value` (white space around the value is dropped). Continuation
    /// lines, lines without `:`, bad names, control characters in values and duplicate
    /// attributes are rejected, naming the line.
    pub fn parse(text: &str) -> Result<Self, OtapError> {
        if text.len() > MAX_JAD_LEN {
            return Err(OtapError::JadTooLong {
                len: text.len(),
                max: MAX_JAD_LEN,
            });
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut attributes: Vec<(String, String)> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                return Err(OtapError::JadContinuation { line: line_no });
            }
            let (name, value) = line
                .split_once(':')
                .ok_or(OtapError::JadNoColon { line: line_no })?;
            check_name(name, Some(line_no))?;
            let value = trim_wsp(value);
            check_value(name, value, Some(line_no))?;
            if let Some(pos) = attributes.iter().position(|(n, _)| n == name) {
                return Err(OtapError::JadDuplicate {
                    name: name.to_owned(),
                    first: lines_of[pos],
                    second: line_no,
                });
            }
            if attributes.len() == MAX_JAD_ATTRIBUTES {
                return Err(OtapError::JadTooManyAttributes {
                    max: MAX_JAD_ATTRIBUTES,
                });
            }
            attributes.push((name.to_owned(), value.to_owned()));
            lines_of.push(line_no);
        }
        Ok(Self { attributes })
    }

    /// A minimal valid JAD for a release: `MIDlet-Name`, `MIDlet-Vendor`,
    /// `MIDlet-Version`, `MIDlet-Jar-URL`, `MIDlet-Jar-Size` and `MIDlet-Install-Notify`.
    /// Used when an upload brings a JAR without a JAD.
    pub fn for_release(
        name: &str,
        vendor: &str,
        version: &str,
        jar_url: &str,
        jar_size: u64,
        notify_url: &str,
    ) -> Result<Self, OtapError> {
        let mut jad = Self::default();
        jad.set(MIDLET_NAME, name)?;
        jad.set(MIDLET_VENDOR, vendor)?;
        jad.set(MIDLET_VERSION, version)?;
        jad.set(MIDLET_JAR_URL, jar_url)?;
        jad.set(MIDLET_JAR_SIZE, &jar_size.to_string())?;
        jad.set(MIDLET_INSTALL_NOTIFY, notify_url)?;
        jad.validate()?;
        Ok(jad)
    }

    /// The value of attribute `name` (case-sensitive), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets attribute `name` to `value` (trimmed of surrounding spaces and tabs): in
    /// place when present, appended otherwise. Rejects a bad name, a control character
    /// in the value, a JAD that would have more than [`MAX_JAD_ATTRIBUTES`] attributes
    /// or render to more than [`MAX_JAD_LEN`] bytes; the JAD is unchanged on error.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), OtapError> {
        check_name(name, None)?;
        let value = trim_wsp(value);
        check_value(name, value, None)?;
        let pos = self.attributes.iter().position(|(n, _)| n == name);
        let old_len = match pos {
            Some(p) => self.attributes[p].1.len(),
            None => {
                if self.attributes.len() == MAX_JAD_ATTRIBUTES {
                    return Err(OtapError::JadTooManyAttributes {
                        max: MAX_JAD_ATTRIBUTES,
                    });
                }
                0
            }
        };
        let added = if pos.is_some() {
            value.len()
        } else {
            name.len() + 3 + value.len()
        };
        let new_len = self.rendered_len() - old_len + added;
        if new_len > MAX_JAD_LEN {
            return Err(OtapError::JadTooLong {
                len: new_len,
                max: MAX_JAD_LEN,
            });
        }
        match pos {
            Some(p) => value.clone_into(&mut self.attributes[p].1),
            None => self.attributes.push((name.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    /// The attributes in order, as `(name, value)`.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The `MIDlet-Jar-Size` as a number, if present and a non-negative integer.
    pub fn jar_size(&self) -> Option<u64> {
        parse_size(self.get(MIDLET_JAR_SIZE)?)
    }

    fn rendered_len(&self) -> usize {
        self.attributes
            .iter()
            .map(|(n, v)| n.len() + 3 + v.len())
            .sum()
    }

    /// The JAD text: one `Name: value` line per attribute, in order, each ended by `\n`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.rendered_len());
        for (n, v) in &self.attributes {
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push('\n');
        }
        out
    }

    /// Checks the attributes a modem needs: `MIDlet-Name`, `MIDlet-Vendor`,
    /// `MIDlet-Version`, `MIDlet-Jar-URL` present and not empty, `MIDlet-Jar-Size` a
    /// non-negative integer. Every problem found is named in the error.
    pub fn validate(&self) -> Result<(), OtapError> {
        let mut problems = Vec::new();
        for name in REQUIRED_JAD_ATTRIBUTES {
            match self.get(name) {
                None => problems.push(format!("{name} is missing")),
                Some("") => problems.push(format!("{name} is empty")),
                Some(v) if name == MIDLET_JAR_SIZE && parse_size(v).is_none() => problems.push(
                    format!("{name} must be a non-negative integer number of bytes, got {v:?}"),
                ),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(OtapError::JadInvalid { problems })
        }
    }
}

/// A decimal size: ASCII digits only (no sign), fitting a `u64`.
fn parse_size(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_parses_code_and_message() {
        let s = InstallStatus::parse(b"900 Success\n").unwrap();
        assert_eq!(s.code(), 900);
        assert_eq!(s.message(), "Success");
        assert!(s.is_success());
        assert_eq!(s.to_string(), "900 Success");

        let s = InstallStatus::parse(b"\xef\xbb\xbf904 Size mismatch\r\nmore text\r\n").unwrap();
        assert_eq!(s.code(), 904);
        assert!(!s.is_success());
        assert_eq!(s.meaning(), "JAR Size Mismatch");
        assert_eq!(s.to_string(), "904 JAR Size Mismatch (Size mismatch)");

        let s = InstallStatus::parse(b"907").unwrap();
        assert_eq!(s.message(), "");
        assert_eq!(s.to_string(), "907 Invalid JAR");

        let s = InstallStatus::parse(b"\n  905\tattribute mismatch  \n").unwrap();
        assert_eq!(s.code(), 905);
        assert_eq!(s.to_string(), "905 Attribute Mismatch");

        let s = InstallStatus::parse(b"950 vendor thing").unwrap();
        assert_eq!(s.meaning(), "unknown status");
        assert_eq!(s.to_string(), "950 unknown status (vendor thing)");
    }

    #[test]
    fn status_meanings_are_standard() {
        assert_eq!(meaning(901), "Insufficient Memory");
        assert_eq!(meaning(908), "Incompatible Configuration or Profile");
        assert_eq!(meaning(912), "Deletion Notification");
        assert_eq!(meaning(913), "unknown status");
        for code in 900..=912 {
            assert_ne!(meaning(code), "unknown status", "{code}");
        }
    }

    #[test]
    fn status_rejections_are_named() {
        let too_long = vec![b'9'; MAX_NOTIFY_BODY + 1];
        assert!(matches!(
            InstallStatus::parse(&too_long),
            Err(OtapError::StatusTooLong { len: 4097, .. })
        ));
        assert_eq!(
            InstallStatus::parse(b"90\xff0 x"),
            Err(OtapError::StatusNotUtf8 { offset: 2 })
        );
        assert_eq!(
            InstallStatus::parse(b" \r\n\n"),
            Err(OtapError::StatusEmpty)
        );
        for bad in [
            &b"9000 Success"[..],
            b"90 x",
            b"Success",
            b"900Success",
            b"9a0",
        ] {
            let e = InstallStatus::parse(bad).unwrap_err();
            assert!(matches!(e, OtapError::StatusNoCode { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("3-digit"), "{e}");
        }
        assert_eq!(
            InstallStatus::parse(b"200 OK"),
            Err(OtapError::StatusCodeOutOfRange { code: 200 })
        );
        assert_eq!(
            InstallStatus::parse(b"900 a\x1bb"),
            Err(OtapError::StatusControlChar { found: '\x1b' })
        );
        assert!(InstallStatus::new(899, "x").is_err());
    }

    #[test]
    fn status_body_round_trips() {
        let s = InstallStatus::new(904, "JAR Size Mismatch").unwrap();
        assert_eq!(s.to_body(), "904 JAR Size Mismatch\n");
        assert_eq!(InstallStatus::parse(s.to_body().as_bytes()).unwrap(), s);
        let s = InstallStatus::new(901, "").unwrap();
        assert_eq!(s.to_body(), "901 Insufficient Memory\n");
        assert_eq!(InstallStatus::success().to_body(), "900 Success\n");
    }

    const SAMPLE: &str = "\u{feff}MIDlet-Name: Tunnel\r\n\
        MIDlet-Vendor: Example\r\n\
        MIDlet-Version: 2.0.0\r\n\
        MIDlet-Jar-URL: https://h:8443/fw/tok\r\n\
        MIDlet-Jar-Size:   1234  \r\n\
        MIDlet-1: Tunnel, , com.example.Main\r\n\
        \r\n";

    #[test]
    fn jad_parses_and_renders() {
        let jad = Jad::parse(SAMPLE).unwrap();
        assert_eq!(jad.get("MIDlet-Name"), Some("Tunnel"));
        assert_eq!(jad.get("midlet-name"), None, "names are case-sensitive");
        assert_eq!(jad.get("MIDlet-Jar-Size"), Some("1234"));
        assert_eq!(jad.jar_size(), Some(1234));
        assert_eq!(jad.get("MIDlet-1"), Some("Tunnel, , com.example.Main"));
        jad.validate().unwrap();
        let names: Vec<&str> = jad.attributes().map(|(n, _)| n).collect();
        assert_eq!(names[0], "MIDlet-Name");
        assert_eq!(names[5], "MIDlet-1");
        let text = jad.render();
        assert!(text.starts_with("MIDlet-Name: Tunnel\nMIDlet-Vendor: Example\n"));
        assert!(!text.contains('\r'));
        assert_eq!(Jad::parse(&text).unwrap(), jad);
    }

    #[test]
    fn jad_set_replaces_in_place_or_appends() {
        let mut jad = Jad::parse(SAMPLE).unwrap();
        jad.set("MIDlet-Jar-URL", " https://other/fw/x ").unwrap();
        jad.set("MIDlet-Install-Notify", "https://other/fw/x/notify")
            .unwrap();
        let names: Vec<&str> = jad.attributes().map(|(n, _)| n).collect();
        assert_eq!(names[3], "MIDlet-Jar-URL");
        assert_eq!(names.last(), Some(&"MIDlet-Install-Notify"));
        assert_eq!(jad.get("MIDlet-Jar-URL"), Some("https://other/fw/x"));
        let before = jad.clone();
        assert!(matches!(
            jad.set("Bad Name", "x"),
            Err(OtapError::JadBadName { line: None, .. })
        ));
        assert!(matches!(
            jad.set("MIDlet-Name", "two\nlines"),
            Err(OtapError::JadBadValue { found: '\n', .. })
        ));
        assert!(matches!(
            jad.set("Huge", &"x".repeat(MAX_JAD_LEN)),
            Err(OtapError::JadTooLong { .. })
        ));
        assert_eq!(jad, before);
    }

    #[test]
    fn jad_rejections_name_the_line() {
        let e = Jad::parse("MIDlet-Name: a\n continued\n").unwrap_err();
        assert_eq!(e, OtapError::JadContinuation { line: 2 });
        assert!(e.to_string().contains("continuation"));
        assert_eq!(
            Jad::parse("A: 1\nno colon here\n"),
            Err(OtapError::JadNoColon { line: 2 })
        );
        let e = Jad::parse("A: 1\n: empty name\n").unwrap_err();
        assert!(
            matches!(e, OtapError::JadBadName { line: Some(2), .. }),
            "{e}"
        );
        let e = Jad::parse("Na me: x\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = Jad::parse("Nämé: x\n").unwrap_err();
        assert!(matches!(e, OtapError::JadBadName { .. }), "{e}");
        let e = Jad::parse("A: x\x07y\n").unwrap_err();
        assert!(
            matches!(e, OtapError::JadBadValue { found: '\x07', .. }),
            "{e}"
        );
        let e = Jad::parse("A: 1\r\nB: 2\r\nA: 3\r\n").unwrap_err();
        assert_eq!(
            e,
            OtapError::JadDuplicate {
                name: "A".into(),
                first: 1,
                second: 3
            }
        );
        let big = "A: x\n".repeat(MAX_JAD_LEN / 5 + 1);
        assert!(matches!(
            Jad::parse(&big),
            Err(OtapError::JadTooLong { .. })
        ));
        let many: String = (0..=MAX_JAD_ATTRIBUTES)
            .map(|i| format!("A{i}: x\n"))
            .collect();
        assert_eq!(
            Jad::parse(&many),
            Err(OtapError::JadTooManyAttributes {
                max: MAX_JAD_ATTRIBUTES
            })
        );
        let ok: String = (0..MAX_JAD_ATTRIBUTES)
            .map(|i| format!("A{i}: x\n"))
            .collect();
        assert_eq!(
            Jad::parse(&ok).unwrap().attributes().count(),
            MAX_JAD_ATTRIBUTES
        );
    }

    #[test]
    fn jad_validate_names_every_problem() {
        let jad = Jad::parse("MIDlet-Name: x\nMIDlet-Version:\nMIDlet-Jar-Size: -5\n").unwrap();
        let e = jad.validate().unwrap_err();
        let OtapError::JadInvalid { problems } = &e else {
            panic!("{e}");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
        let text = e.to_string();
        for needle in [
            "MIDlet-Vendor is missing",
            "MIDlet-Version is empty",
            "MIDlet-Jar-URL is missing",
            "MIDlet-Jar-Size must be a non-negative integer",
        ] {
            assert!(text.contains(needle), "{text}");
        }
        let jad = Jad::parse("MIDlet-Jar-Size: 99999999999999999999999\n").unwrap();
        assert_eq!(jad.jar_size(), None);
        assert!(
            jad.validate()
                .unwrap_err()
                .to_string()
                .contains("MIDlet-Jar-Size must")
        );
    }

    #[test]
    fn jad_for_release_is_valid() {
        let jad = Jad::for_release(
            "Tunnel",
            "Example",
            "2.0.0",
            "https://h:8443/fw/tok",
            42,
            "https://h:8443/fw/tok/notify",
        )
        .unwrap();
        jad.validate().unwrap();
        assert_eq!(jad.jar_size(), Some(42));
        assert_eq!(
            jad.render(),
            "MIDlet-Name: Tunnel\nMIDlet-Vendor: Example\nMIDlet-Version: 2.0.0\n\
             MIDlet-Jar-URL: https://h:8443/fw/tok\nMIDlet-Jar-Size: 42\n\
             MIDlet-Install-Notify: https://h:8443/fw/tok/notify\n"
        );
        assert!(matches!(
            Jad::for_release("", "v", "1", "u", 1, "n"),
            Err(OtapError::JadInvalid { .. })
        ));
        assert!(matches!(
            Jad::for_release("a\nb", "v", "1", "u", 1, "n"),
            Err(OtapError::JadBadValue { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*|[ -~\r\n:\t]{0,300}") {
            let _ = InstallStatus::parse(s.as_bytes());
            if let Ok(jad) = Jad::parse(&s) {
                let _ = jad.validate();
                prop_assert_eq!(Jad::parse(&jad.render()).unwrap(), jad);
            }
        }

        #[test]
        fn status_parse_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(s) = InstallStatus::parse(&b) {
                prop_assert!((900..=999).contains(&s.code()));
                prop_assert_eq!(InstallStatus::parse(s.to_body().as_bytes()).unwrap().code(), s.code());
            }
        }

        #[test]
        fn jad_lines_round_trip(attrs in proptest::collection::vec(("[!-9;-~]{1,12}", "[ -~]{0,20}"), 0..20)) {
            let mut jad = Jad::default();
            for (n, v) in &attrs {
                jad.set(n, v).unwrap();
            }
            prop_assert_eq!(Jad::parse(&jad.render()).unwrap(), jad);
        }
    }
}
