//! The lossless text model of a Config.txt: lines kept as written, entries looked up by key.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::ValidationError;

use super::schema;

/// Largest Config.txt accepted, in bytes (64 KiB).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Most lines a Config.txt may have.
pub const MAX_CONFIG_LINES: usize = 1000;

/// Longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 64;

/// What replaces a secret value in [`ConfigFile::redacted`], in `Debug` output and in diffs.
pub const REDACTED: &str = "***";

/// The UTF-8 byte order mark some Windows editors put at the start of a file.
const BOM: char = '\u{FEFF}';

/// Longest piece of an offending line quoted in an error message, in characters.
const MAX_QUOTED: usize = 60;

/// Why a Config.txt text, or an edit to one, was rejected.
///
/// Line numbers count from 1. Messages never quote a value: a rejected line may hold a
/// password. The only quoted line text is that of a line with no `:`, which has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is larger than [`MAX_CONFIG_BYTES`].
    #[error("Config.txt is {len} bytes; at most {max} bytes are accepted")]
    TooLarge {
        /// Size of the text (or of the file after the edit), in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text has more than [`MAX_CONFIG_LINES`] lines.
    #[error("Config.txt has more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
    /// A line that is neither blank, nor a comment, nor `KEY: value`.
    #[error(
        "line {line}: expected `KEY: value`, a comment (#, ; or //) or a blank line, found {text:?}"
    )]
    MissingColon {
        /// Line number.
        line: usize,
        /// The line as written (shortened if long).
        text: String,
    },
    /// A key that is empty, too long, or has characters other than ASCII letters, digits and `_`.
    #[error("{}key {key:?} is not valid: {reason}", at_line(*line))]
    InvalidKey {
        /// Line number, when the key came from the text rather than from an edit.
        line: Option<usize>,
        /// The key as written (shortened if long).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A control character other than tab, or CR as part of a CRLF line ending.
    #[error("line {line}, column {column}: control character U+{code:04X} is not allowed")]
    ControlCharacter {
        /// Line number.
        line: usize,
        /// Column, counted in characters from 1.
        column: usize,
        /// The character's code point.
        code: u32,
    },
    /// A carriage return that does not end a CRLF line ending.
    #[error("line {line}: carriage return (CR) not followed by a line feed (LF)")]
    BareCarriageReturn {
        /// Line number.
        line: usize,
    },
    /// The same key twice, compared case-insensitively.
    #[error(
        "line {line}: key {key:?} repeats {first_key:?} from line {first_line} (keys are compared case-insensitively)"
    )]
    DuplicateKey {
        /// The repeated key as written on `line`.
        key: String,
        /// The key as written on `first_line`.
        first_key: String,
        /// Line of the first occurrence.
        first_line: usize,
        /// Line of the repetition.
        line: usize,
    },
    /// A value given to [`ConfigFile::set`] that a Config.txt line cannot hold.
    #[error("value for {key:?} is not valid: {reason}")]
    InvalidValue {
        /// The key the value was meant for.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// How a line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineEnding {
    /// `\n`.
    Lf,
    /// `\r\n`.
    CrLf,
}

impl LineEnding {
    /// The line ending's bytes.
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "\n",
            LineEnding::CrLf => "\r\n",
        }
    }
}

/// Byte offsets of an entry's key and value inside its line's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spans {
    key_start: usize,
    key_end: usize,
    value_start: usize,
    value_end: usize,
}

/// One line as written, without its line ending.
#[derive(Clone, PartialEq, Eq)]
struct Line {
    text: String,
    /// `None` only for a last line with no final newline.
    ending: Option<LineEnding>,
    /// Present for `KEY: value` lines; `None` for blank lines and comments.
    entry: Option<Spans>,
}

impl Line {
    fn key(&self) -> Option<&str> {
        self.entry.map(|s| &self.text[s.key_start..s.key_end])
    }

    fn value(&self) -> Option<&str> {
        self.entry.map(|s| &self.text[s.value_start..s.value_end])
    }

    fn byte_len(&self) -> usize {
        self.text.len() + self.ending.map_or(0, |e| e.as_str().len())
    }

    /// Replaces the value, keeping everything around it. The value must have passed
    /// [`check_value`].
    fn replace_value(&mut self, value: &str) {
        let Some(s) = self.entry else { return };
        let mut text = String::with_capacity(self.text.len() + value.len() + 1);
        text.push_str(&self.text[..s.value_start]);
        // `KEY:` with nothing after the colon gets the usual single space before a new value.
        if !value.is_empty() && s.value_start == s.value_end && text.ends_with(':') {
            text.push(' ');
        }
        text.push_str(value);
        text.push_str(&self.text[s.value_end..]);
        self.set_text(text);
    }

    /// Replaces the text of an entry line, finding its key and value again so that the line
    /// equals what parsing its text gives.
    fn set_text(&mut self, text: String) {
        self.entry = classify(&text, 0).ok().flatten();
        debug_assert!(self.entry.is_some(), "{text:?} is not an entry");
        self.text = text;
    }
}

/// A Config.txt, kept exactly as written.
///
/// # Syntax
///
/// The text is a sequence of lines, each ended by LF or CRLF (mixing is allowed and kept); the
/// last line may have no line ending. A UTF-8 byte order mark at the very start is kept. Each
/// line is one of:
///
/// - **blank**: only spaces and tabs;
/// - **comment**: first non-blank characters `#`, `;` or `//`. The vendor's examples have no
///   comments, so this is Callhome's convention for annotating files it stores. Comments are
///   whole lines only: values such as `GPIO_config0: mqtt;2;0` or passwords may contain `#`
///   and `;`, so nothing after a `:` is ever a comment;
/// - **entry**: `KEY: value`. The key is what precedes the first `:`, the value what follows
///   it, both without surrounding spaces and tabs. A value may be empty (`MQTT_login:`) and
///   may contain `:` (`ssl://host:8883`). Keys are 1-64 ASCII letters, digits and `_`,
///   starting with a letter, and are compared case-insensitively (`MTX_pin` is `MTX_PIN`).
///
/// # Rejected
///
/// Text over [`MAX_CONFIG_BYTES`] or [`MAX_CONFIG_LINES`] lines; a non-blank, non-comment line
/// with no `:`; an invalid key; control characters other than tab (CR only inside CRLF); the
/// same key twice, compared case-insensitively. Errors name the line number.
///
/// # Guarantees
///
/// `ConfigFile::parse(x)?.render() == x` byte for byte, and every `ConfigFile`, however
/// edited, renders to text that parses back to an equal `ConfigFile`. There is deliberately
/// no `Display` and no `Serialize`: [`ConfigFile::render`] is the explicit way to get text
/// that includes secrets, and `Debug` shows secret values as `***`. `Deserialize` reads the
/// text with [`ConfigFile::parse`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ConfigFile {
    bom: bool,
    lines: Vec<Line>,
}

impl ConfigFile {
    /// An empty Config.txt (no lines).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses Config.txt text. See the type's documentation for the syntax.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                len: text.len(),
                max: MAX_CONFIG_BYTES,
            });
        }
        let (bom, mut rest) = match text.strip_prefix(BOM) {
            Some(r) => (true, r),
            None => (false, text),
        };
        let mut lines = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        while !rest.is_empty() {
            let number = lines.len() + 1;
            if number > MAX_CONFIG_LINES {
                return Err(ConfigError::TooManyLines {
                    max: MAX_CONFIG_LINES,
                });
            }
            let (raw, ending, next) = match rest.find('\n') {
                Some(i) => match rest[..i].strip_suffix('\r') {
                    Some(r) => (r, Some(LineEnding::CrLf), &rest[i + 1..]),
                    None => (&rest[..i], Some(LineEnding::Lf), &rest[i + 1..]),
                },
                None => (rest, None, ""),
            };
            rest = next;
            check_characters(raw, number)?;
            let entry = classify(raw, number)?;
            let line = Line {
                text: raw.to_owned(),
                ending,
                entry,
            };
            if let Some(key) = line.key() {
                if let Some(&first) = seen.get(&key.to_ascii_lowercase()) {
                    let first_key: &Line = &lines[first];
                    return Err(ConfigError::DuplicateKey {
                        key: key.to_owned(),
                        first_key: first_key.key().unwrap_or_default().to_owned(),
                        first_line: first + 1,
                        line: number,
                    });
                }
                seen.insert(key.to_ascii_lowercase(), lines.len());
            }
            lines.push(line);
        }
        Ok(Self { bom, lines })
    }

    /// The text, byte for byte as parsed plus any edits. Includes secrets: see
    /// [`ConfigFile::redacted`] for text that may be shown or logged.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.byte_len());
        if self.bom {
            out.push(BOM);
        }
        for line in &self.lines {
            out.push_str(&line.text);
            if let Some(e) = line.ending {
                out.push_str(e.as_str());
            }
        }
        out
    }

    /// The value of `key` (matched case-insensitively), without surrounding whitespace.
    /// `Some("")` for a key written with an empty value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).and_then(|i| self.lines[i].value())
    }

    /// Whether `key` (matched case-insensitively) is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The key as written in the file for `key` (matched case-insensitively).
    pub fn key_as_written(&self, key: &str) -> Option<&str> {
        self.find(key).and_then(|i| self.lines[i].key())
    }

    /// Sets `key` to `value`.
    ///
    /// An existing key (matched case-insensitively) keeps its spelling, position and layout;
    /// only the value's characters change. A new key is appended as `KEY: value` with the
    /// file's line ending (that of its first line, LF for a file with none); a file without a
    /// final newline keeps having none.
    ///
    /// Rejects an invalid key; a value with control characters (tab excepted), or with leading
    /// or trailing spaces or tabs (which a Config.txt line cannot keep); and an edit that would
    /// take the file over [`MAX_CONFIG_BYTES`] or [`MAX_CONFIG_LINES`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        check_key(key).map_err(|reason| ConfigError::InvalidKey {
            line: None,
            key: shorten(key),
            reason,
        })?;
        check_value(key, value)?;
        match self.find(key) {
            Some(i) => {
                let old = self.lines[i].value().unwrap_or_default();
                if old == value {
                    return Ok(());
                }
                let len = self.byte_len() - old.len() + value.len() + 1;
                if len > MAX_CONFIG_BYTES {
                    return Err(ConfigError::TooLarge {
                        len,
                        max: MAX_CONFIG_BYTES,
                    });
                }
                self.lines[i].replace_value(value);
            }
            None => self.insert_line(self.lines.len(), key, value)?,
        }
        Ok(())
    }

    /// Removes `key` (matched case-insensitively) and its line, returning its value.
    /// A file without a final newline keeps having none, unless the new last line is empty.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key)?;
        let line = self.lines.remove(i);
        // An empty last line needs its line ending to exist at all: "\nA: 1" becomes "\n".
        if line.ending.is_none()
            && let Some(last) = self.lines.last_mut()
            && !last.text.is_empty()
        {
            last.ending = None;
        }
        line.value().map(str::to_owned)
    }

    /// Every `KEY: value` entry in file order: the key as written and the value without
    /// surrounding whitespace.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.lines
            .iter()
            .filter_map(|l| Some((l.key()?, l.value()?)))
    }

    /// Every key as written, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.lines.iter().filter_map(Line::key)
    }

    /// Number of lines (entries, comments and blank lines).
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// The line ending used for new lines: that of the first line that has one, else LF.
    pub fn line_ending(&self) -> LineEnding {
        self.lines
            .iter()
            .find_map(|l| l.ending)
            .unwrap_or(LineEnding::Lf)
    }

    /// A copy with the value of every secret key (see [`schema::KeySpec::secret`]) replaced by
    /// `***`, layout kept. Empty secret values stay empty: that a password is unset is not a
    /// secret, and operators need to see it.
    pub fn redacted(&self) -> ConfigFile {
        let mut out = self.clone();
        for line in &mut out.lines {
            if line.key().is_some_and(schema::is_secret)
                && line.value().is_some_and(|v| !v.is_empty())
            {
                line.replace_value(REDACTED);
            }
        }
        out
    }

    /// Size of the rendered text in bytes.
    pub(crate) fn byte_len(&self) -> usize {
        usize::from(self.bom) * BOM.len_utf8()
            + self.lines.iter().map(Line::byte_len).sum::<usize>()
    }

    /// Index of the line holding `key`, matched case-insensitively.
    pub(crate) fn find(&self, key: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.key().is_some_and(|k| k.eq_ignore_ascii_case(key)))
    }

    /// Index of the last line whose key satisfies `pred`.
    pub(crate) fn rfind_key(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.lines.iter().rposition(|l| l.key().is_some_and(&pred))
    }

    /// Replaces the value on line `i`, which must be an entry. Used for placeholder
    /// substitution, where the caller has checked the value.
    pub(crate) fn replace_value_at(&mut self, i: usize, value: &str) {
        self.lines[i].replace_value(value);
    }

    /// Key and value of line `i`, if it is an entry.
    pub(crate) fn entry_at(&self, i: usize) -> Option<(&str, &str)> {
        let l = self.lines.get(i)?;
        Some((l.key()?, l.value()?))
    }

    /// Inserts `KEY: value` before line `at` (which may be one past the end), giving it the
    /// file's line ending. The key must be valid and absent, the value checked.
    pub(crate) fn insert_line(
        &mut self,
        at: usize,
        key: &str,
        value: &str,
    ) -> Result<(), ConfigError> {
        if self.lines.len() >= MAX_CONFIG_LINES {
            return Err(ConfigError::TooManyLines {
                max: MAX_CONFIG_LINES,
            });
        }
        let ending = self.line_ending();
        let text = if value.is_empty() {
            format!("{key}:")
        } else {
            format!("{key}: {value}")
        };
        let len = self.byte_len() + text.len() + 2 * ending.as_str().len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                len,
                max: MAX_CONFIG_BYTES,
            });
        }
        let mut line = Line {
            text: String::new(),
            ending: Some(ending),
            entry: None,
        };
        line.set_text(text);
        if at == self.lines.len()
            && let Some(last) = self.lines.last_mut()
            && last.ending.is_none()
        {
            // Appending after a last line without final newline: it gets one, the new
            // line goes without, so the file still ends without a newline.
            last.ending = Some(ending);
            line.ending = None;
        }
        self.lines.insert(at, line);
        Ok(())
    }
}

/// Checks that a key is 1-64 ASCII letters, digits and `_`, starting with a letter.
/// Returns the reason on failure.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    let Some(first) = key.chars().next() else {
        return Err("must not be empty".into());
    };
    let n = key.chars().count();
    if n > MAX_KEY_LEN {
        return Err(format!("must be at most {MAX_KEY_LEN} characters, got {n}"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "character {c:?} is not allowed; use ASCII letters, digits and _"
        ));
    }
    if !first.is_ascii_alphabetic() {
        return Err("must start with a letter".into());
    }
    Ok(())
}

/// Checks that `value` can be written as the value of a Config.txt line and read back equal.
pub(crate) fn check_value(key: &str, value: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::InvalidValue {
        key: shorten(key),
        reason,
    };
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        let what = match c {
            '\n' => "a line feed (LF)".to_owned(),
            '\r' => "a carriage return (CR)".to_owned(),
            c => format!("control character U+{:04X}", u32::from(c)),
        };
        return Err(err(format!("contains {what}; a value is one line of text")));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(err(
            "has leading or trailing spaces or tabs, which Config.txt does not keep".into(),
        ));
    }
    Ok(())
}

/// Rejects control characters other than tab (CR and LF never reach here but inside CRLF).
fn check_characters(raw: &str, line: usize) -> Result<(), ConfigError> {
    for (column, c) in raw.chars().enumerate() {
        if c == '\r' {
            return Err(ConfigError::BareCarriageReturn { line });
        }
        if c.is_control() && c != '\t' {
            return Err(ConfigError::ControlCharacter {
                line,
                column: column + 1,
                code: u32::from(c),
            });
        }
    }
    Ok(())
}

/// Whether a line is blank or a comment (`#`, `;`, `//` after optional spaces and tabs).
fn is_blank_or_comment(raw: &str) -> bool {
    let t = raw.trim_start_matches([' ', '\t']);
    t.is_empty() || t.starts_with('#') || t.starts_with(';') || t.starts_with("//")
}

/// Finds the key and value of an entry line; `None` for blank lines and comments.
fn classify(raw: &str, line: usize) -> Result<Option<Spans>, ConfigError> {
    if is_blank_or_comment(raw) {
        return Ok(None);
    }
    let Some(colon) = raw.find(':') else {
        return Err(ConfigError::MissingColon {
            line,
            text: shorten(raw),
        });
    };
    let ws = [' ', '\t'];
    let before = &raw[..colon];
    let key = before.trim_matches(ws);
    let key_start = before.len() - before.trim_start_matches(ws).len();
    let key_end = key_start + key.len();
    check_key(key).map_err(|reason| ConfigError::InvalidKey {
        line: Some(line),
        key: shorten(key),
        reason,
    })?;
    let after = &raw[colon + 1..];
    let value_start = colon + 1 + (after.len() - after.trim_start_matches(ws).len());
    let value_end = (colon + 1 + after.trim_end_matches(ws).len()).max(value_start);
    Ok(Some(Spans {
        key_start,
        key_end,
        value_start,
        value_end,
    }))
}

/// `s` cut to [`MAX_QUOTED`] characters, with `…` when cut.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl fmt::Debug for ConfigFile {
    /// Entries with secret values shown as `***`, and the number of lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = self.redacted();
        let entries: Vec<(&str, &str)> = redacted.entries().collect();
        f.debug_struct("ConfigFile")
            .field("lines", &self.lines.len())
            .field("entries", &entries)
            .finish()
    }
}

impl TryFrom<String> for ConfigFile {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ConfigError> for ValidationError {
    /// The error under the field `config` (the Config.txt text as a whole), or under the
    /// key it concerns when there is one.
    fn from(e: ConfigError) -> Self {
        let field = match &e {
            ConfigError::InvalidValue { key, .. } => key.clone(),
            ConfigError::InvalidKey {
                line: None, key, ..
            } => key.clone(),
            _ => "config".to_owned(),
        };
        ValidationError::new(field, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> ConfigFile {
        let c = ConfigFile::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(c.render(), text);
        c
    }

    #[test]
    fn round_trips_layout_exactly() {
        let cases = [
            "",
            "\n",
            "\r\n",
            "A: 1",
            "A: 1\n",
            "A: 1\r\nB: 2\r\n",
            "A: 1\r\nB: 2",
            "A: 1\nB: 2\r\n\n",
            "  A   :   spaced   \t\n",
            "A:\nB:   \nC:\t\n",
            "# comment\n; comment\n// comment\n   # indented\n\t\n\n",
            "MQTT_server: ssl://broker.example:8883\n",
            "GPIO_config0: mqtt;2;0 # not a comment\n",
            "# Configuración: año\nA: ñ\n",
            "\u{FEFF}A: 1\n",
            "A:b:c\n",
        ];
        for text in cases {
            roundtrip(text);
        }
    }

    #[test]
    fn reads_keys_and_values() {
        let c = roundtrip("  A   :   spaced value  \t\nb:\n# x: y\nMTX_pin: 0000\n");
        assert_eq!(c.get("A"), Some("spaced value"));
        assert_eq!(c.get("a"), Some("spaced value"));
        assert_eq!(c.get("B"), Some(""));
        assert_eq!(c.get("x"), None);
        assert_eq!(c.get("MTX_PIN"), Some("0000"));
        assert_eq!(c.key_as_written("mtx_PIN"), Some("MTX_pin"));
        assert_eq!(c.keys().collect::<Vec<_>>(), ["A", "b", "MTX_pin"]);
        assert_eq!(
            c.entries().collect::<Vec<_>>(),
            [("A", "spaced value"), ("b", ""), ("MTX_pin", "0000")]
        );
        assert_eq!(c.line_count(), 4);
    }

    #[test]
    fn rejects_line_without_colon_naming_line_and_text() {
        let e = ConfigFile::parse("A: 1\n\nthis is not a setting\n").unwrap_err();
        assert_eq!(
            e,
            ConfigError::MissingColon {
                line: 3,
                text: "this is not a setting".into()
            }
        );
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(e.to_string().contains("this is not a setting"), "{e}");
    }

    #[test]
    fn rejects_invalid_keys() {
        for (text, want) in [
            (": value\n", "empty"),
            ("A B: 1\n", "' '"),
            ("A-B: 1\n", "'-'"),
            ("1ABC: 1\n", "start with a letter"),
            ("_ABC: 1\n", "start with a letter"),
            ("KÉY: 1\n", "'É'"),
        ] {
            let e = ConfigFile::parse(text).unwrap_err();
            let ConfigError::InvalidKey { line, reason, .. } = &e else {
                panic!("{text:?}: {e:?}");
            };
            assert_eq!(*line, Some(1));
            assert!(reason.contains(want), "{text:?}: {e}");
        }
        let long = format!("{}: 1", "A".repeat(MAX_KEY_LEN + 1));
        assert!(matches!(
            ConfigFile::parse(&long),
            Err(ConfigError::InvalidKey { .. })
        ));
        ConfigFile::parse(&format!("{}: 1", "A".repeat(MAX_KEY_LEN))).unwrap();
    }

    #[test]
    fn rejects_control_characters() {
        let e = ConfigFile::parse("A: 1\nB: x\0y\n").unwrap_err();
        assert_eq!(
            e,
            ConfigError::ControlCharacter {
                line: 2,
                column: 5,
                code: 0
            }
        );
        for text in ["# \u{1b}[1m\n", "A: \u{7f}\n", "A: \u{85}\n", "\u{7}"] {
            assert!(
                matches!(
                    ConfigFile::parse(text),
                    Err(ConfigError::ControlCharacter { .. })
                ),
                "{text:?}"
            );
        }
        assert_eq!(
            ConfigFile::parse("A: 1\rB: 2\n").unwrap_err(),
            ConfigError::BareCarriageReturn { line: 1 }
        );
        assert_eq!(
            ConfigFile::parse("A: 1\r").unwrap_err(),
            ConfigError::BareCarriageReturn { line: 1 }
        );
        assert_eq!(
            ConfigFile::parse("A: 1\r\r\n").unwrap_err(),
            ConfigError::BareCarriageReturn { line: 1 }
        );
        roundtrip("A:\t1\tb\t\n");
    }

    #[test]
    fn rejects_duplicate_keys_case_insensitively() {
        let e = ConfigFile::parse("MTX_PIN: 1234\n# c\nmtx_pin: 0000\n").unwrap_err();
        assert_eq!(
            e,
            ConfigError::DuplicateKey {
                key: "mtx_pin".into(),
                first_key: "MTX_PIN".into(),
                first_line: 1,
                line: 3
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("line 3") && msg.contains("line 1"), "{msg}");
        assert!(!msg.contains("1234") && !msg.contains("0000"), "{msg}");
    }

    #[test]
    fn enforces_size_and_line_limits() {
        let big = format!("A: {}\n", "x".repeat(MAX_CONFIG_BYTES));
        assert!(matches!(
            ConfigFile::parse(&big),
            Err(ConfigError::TooLarge { .. })
        ));
        let exact = format!("A: {}", "x".repeat(MAX_CONFIG_BYTES - 3));
        roundtrip(&exact);

        let many = "\n".repeat(MAX_CONFIG_LINES);
        roundtrip(&many);
        let too_many = "\n".repeat(MAX_CONFIG_LINES + 1);
        assert_eq!(
            ConfigFile::parse(&too_many).unwrap_err(),
            ConfigError::TooManyLines {
                max: MAX_CONFIG_LINES
            }
        );
        // A final newline does not start an extra line.
        let mut c = roundtrip(&"# c\n".repeat(MAX_CONFIG_LINES));
        assert!(matches!(
            c.set("A", "1"),
            Err(ConfigError::TooManyLines { .. })
        ));
        let mut c = roundtrip(&exact);
        assert!(matches!(
            c.set("A", &"y".repeat(MAX_CONFIG_BYTES)),
            Err(ConfigError::TooLarge { .. })
        ));
        assert!(matches!(c.set("B", "1"), Err(ConfigError::TooLarge { .. })));
        assert_eq!(c.render(), exact);
    }

    #[test]
    fn set_replaces_in_place_keeping_spelling_and_layout() {
        let mut c = roundtrip("# head\r\n  gprs_APN  :  old.apn  \t\r\nB: 2\r\n");
        c.set("GPRS_apn", "new.apn").unwrap();
        assert_eq!(
            c.render(),
            "# head\r\n  gprs_APN  :  new.apn  \t\r\nB: 2\r\n"
        );
        assert_eq!(c.get("gprs_apn"), Some("new.apn"));
        // Setting the same value changes nothing.
        c.set("B", "2").unwrap();
        assert_eq!(
            c.render(),
            "# head\r\n  gprs_APN  :  new.apn  \t\r\nB: 2\r\n"
        );
        c.set("B", "").unwrap();
        assert_eq!(
            c.render(),
            "# head\r\n  gprs_APN  :  new.apn  \t\r\nB: \r\n"
        );
        assert_eq!(ConfigFile::parse(&c.render()).unwrap(), c);
    }

    #[test]
    fn set_fills_an_empty_value_with_the_usual_space() {
        let mut c = roundtrip("MQTT_login:\nMQTT_password:   \n");
        c.set("MQTT_login", "user").unwrap();
        c.set("MQTT_password", "pw").unwrap();
        assert_eq!(c.render(), "MQTT_login: user\nMQTT_password:   pw\n");
        assert_eq!(ConfigFile::parse(&c.render()).unwrap(), c);
    }

    #[test]
    fn set_appends_new_keys_with_the_file_line_ending() {
        let mut c = roundtrip("A: 1\r\nB: 2\r\n");
        c.set("C", "3").unwrap();
        c.set("D", "").unwrap();
        assert_eq!(c.render(), "A: 1\r\nB: 2\r\nC: 3\r\nD:\r\n");

        let mut c = roundtrip("A: 1\nB: 2");
        c.set("C", "3").unwrap();
        assert_eq!(c.render(), "A: 1\nB: 2\nC: 3");
        assert_eq!(ConfigFile::parse(&c.render()).unwrap(), c);

        let mut c = ConfigFile::new();
        c.set("A", "1").unwrap();
        assert_eq!(c.render(), "A: 1\n");

        let mut c = roundtrip("A: 1");
        c.set("B", "2").unwrap();
        assert_eq!(c.render(), "A: 1\nB: 2");
    }

    #[test]
    fn set_rejects_what_a_line_cannot_hold() {
        let mut c = roundtrip("A: 1\n");
        for v in ["x\ny", "x\ry", "x\0", " x", "x\t"] {
            let e = c.set("A", v).unwrap_err();
            assert!(matches!(e, ConfigError::InvalidValue { .. }), "{v:?}: {e}");
        }
        for k in ["", "A B", "A:B", "9A", "A\n"] {
            assert!(
                matches!(
                    c.set(k, "1"),
                    Err(ConfigError::InvalidKey { line: None, .. })
                ),
                "{k:?}"
            );
        }
        assert_eq!(c.render(), "A: 1\n");
        c.set("A", "x\ty").unwrap();
        assert_eq!(c.get("A"), Some("x\ty"));
    }

    #[test]
    fn remove_drops_the_line_and_keeps_the_final_newline_style() {
        let mut c = roundtrip("A: 1\n# c\nB: 2\nC: 3");
        assert_eq!(c.remove("b"), Some("2".into()));
        assert_eq!(c.render(), "A: 1\n# c\nC: 3");
        assert_eq!(c.remove("C"), Some("3".into()));
        assert_eq!(c.render(), "A: 1\n# c");
        assert_eq!(c.remove("C"), None);
        assert_eq!(c.remove("A"), Some("1".into()));
        assert_eq!(c.render(), "# c");
        assert_eq!(ConfigFile::parse(&c.render()).unwrap(), c);
        let mut c = roundtrip("A: 1\n\nB: 2");
        c.remove("B");
        assert_eq!(c.render(), "A: 1\n\n");
        assert_eq!(ConfigFile::parse(&c.render()).unwrap(), c);
    }

    #[test]
    fn redacted_and_debug_hide_secrets() {
        let text = "GPRS_password:  s3cret \nmqtt_PASSWORD: hunter2\nMTX_pin: 1234\nMQTT_login: user\nGPRS_password2: visible\n";
        let c = roundtrip(text);
        let r = c.redacted();
        assert_eq!(
            r.render(),
            "GPRS_password:  *** \nmqtt_PASSWORD: ***\nMTX_pin: ***\nMQTT_login: user\nGPRS_password2: visible\n"
        );
        let dbg = format!("{c:?} {c:#?}");
        for secret in ["s3cret", "hunter2", "1234"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("user"), "{dbg}");
        // An empty secret stays empty.
        let c = roundtrip("MQTT_password:\n");
        assert_eq!(c.redacted().render(), "MQTT_password:\n");
    }

    #[test]
    fn deserializes_from_the_text() {
        let c = roundtrip("A: 1\r\n");
        let back: ConfigFile = serde_json::from_str("\"A: 1\\r\\n\"").unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<ConfigFile>("\"no colon\"").is_err());
    }

    #[test]
    fn long_offending_text_is_shortened() {
        let line = "x".repeat(500);
        let ConfigError::MissingColon { text, .. } = ConfigFile::parse(&line).unwrap_err() else {
            panic!()
        };
        assert_eq!(text.chars().count(), MAX_QUOTED + 1);
    }
}
