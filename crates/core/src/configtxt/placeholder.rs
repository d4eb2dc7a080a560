//! Placeholders such as `[IMEI]`: kept as written in a master Config.txt, substituted per
//! device on request.
//!
//! A placeholder is `[`, a name of 1-32 ASCII letters, digits and `_` starting with a
//! letter, and `]`. Names are matched exactly (`[imei]` is not `[IMEI]`): the documents only
//! show upper case. Placeholders are only looked for in values, never in keys or comments.

use super::file::{self, ConfigError, ConfigFile, MAX_CONFIG_BYTES};
use super::schema;

/// Placeholders whose meaning Callhome knows.
pub const KNOWN_PLACEHOLDERS: &[&str] = &["[IMEI]"];

/// Length of an IMEI: what `[IMEI]` becomes.
pub(crate) const IMEI_LEN: usize = 15;

/// Longest placeholder name, in characters.
const MAX_NAME_LEN: usize = 32;

/// The values placeholders stand for on one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaceholderContext<'a> {
    /// Replaces `[IMEI]`.
    pub imei: &'a str,
    /// Further placeholders: names without brackets (`("ICCID", "8934...")` replaces
    /// `[ICCID]`), for names the documents do not define but a fleet uses.
    pub extra: &'a [(&'a str, &'a str)],
}

impl<'a> PlaceholderContext<'a> {
    /// A context that knows only the IMEI.
    pub fn imei(imei: &'a str) -> Self {
        Self { imei, extra: &[] }
    }

    fn value_of(&self, name: &str) -> Option<&'a str> {
        if name == "IMEI" {
            return Some(self.imei);
        }
        self.extra.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// A placeholder left as written by [`ConfigFile::resolve_placeholders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The key, as written, whose value holds it.
    pub key: String,
    /// The placeholder with its brackets (`[ICCID]`); `***` in the value of a secret key.
    pub placeholder: String,
}

/// The result of [`ConfigFile::resolve_placeholders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The configuration with every known placeholder substituted.
    pub config: ConfigFile,
    /// Placeholders the context has no value for, in file order.
    pub unresolved: Vec<Unresolved>,
}

/// One placeholder found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found<'v> {
    /// Byte offset of `[`.
    pub start: usize,
    /// The placeholder with its brackets.
    pub text: &'v str,
    /// The name, without brackets.
    pub name: &'v str,
}

/// The placeholders in `value`, left to right.
pub(crate) fn find(value: &str) -> impl Iterator<Item = Found<'_>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while let Some(rel) = value[pos..].find('[') {
            let start = pos + rel;
            pos = start + 1;
            let len = value[start + 1..].find(']')?;
            let name = &value[start + 1..start + 1 + len];
            if is_name(name) {
                pos = start + len + 2;
                return Some(Found {
                    start,
                    text: &value[start..pos],
                    name,
                });
            }
        }
        None
    })
}

fn is_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Length of `value` in characters once `[IMEI]` is replaced by `imei_len` characters;
/// other placeholders count as written.
pub(crate) fn expanded_len(value: &str, imei_len: usize) -> usize {
    let imeis = find(value).filter(|p| p.name == "IMEI").count();
    value.chars().count() - imeis * "[IMEI]".len() + imeis * imei_len
}

impl ConfigFile {
    /// A copy with every placeholder the context knows substituted in values (keys and
    /// comments are left alone). Unknown placeholders stay as written and are listed.
    ///
    /// Fails if a substitution would give a value a Config.txt line cannot hold (control
    /// characters, leading or trailing whitespace) or make the file too large.
    pub fn resolve_placeholders(
        &self,
        ctx: &PlaceholderContext<'_>,
    ) -> Result<Resolved, ConfigError> {
        let mut config = self.clone();
        let mut unresolved = Vec::new();
        for i in 0..self.line_count() {
            let Some((key, value)) = self.entry_at(i) else {
                continue;
            };
            let mut out = String::with_capacity(value.len());
            let mut last = 0;
            let mut changed = false;
            for p in find(value) {
                match ctx.value_of(p.name) {
                    Some(v) => {
                        out.push_str(&value[last..p.start]);
                        out.push_str(v);
                        last = p.start + p.text.len();
                        changed = true;
                    }
                    None => unresolved.push(Unresolved {
                        key: key.to_owned(),
                        placeholder: if schema::is_secret(key) {
                            file::REDACTED.to_owned()
                        } else {
                            p.text.to_owned()
                        },
                    }),
                }
            }
            if changed {
                out.push_str(&value[last..]);
                file::check_value(key, &out)?;
                config.replace_value_at(i, &out);
            }
        }
        let len = config.byte_len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                len,
                max: MAX_CONFIG_BYTES,
            });
        }
        Ok(Resolved { config, unresolved })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMEI: &str = "490154203237518";

    #[test]
    fn finds_placeholders() {
        let names: Vec<&str> = find("[IMEI]/a/[x_1]/[]/[1A]/[a b]/[ICCID")
            .map(|p| p.text)
            .collect();
        assert_eq!(names, ["[IMEI]", "[x_1]"]);
        assert_eq!(
            find("[[IMEI]]").map(|p| p.text).collect::<Vec<_>>(),
            ["[IMEI]"]
        );
        assert_eq!(expanded_len("[IMEI]/AT", 15), 18);
        assert_eq!(expanded_len("[ICCID]/AT", 15), 10);
    }

    #[test]
    fn substitutes_known_and_reports_unknown() {
        let c = ConfigFile::parse(
            "# [IMEI] in a comment stays\nMTX_IDClient: [IMEI]\nMQTT_attopic1:  [IMEI]/AT  \nX: [ICCID]-[IMEI]-[imei]\nMQTT_password: p[SECRET]\n",
        )
        .unwrap();
        let r = c
            .resolve_placeholders(&PlaceholderContext::imei(IMEI))
            .unwrap();
        assert_eq!(
            r.config.render(),
            format!(
                "# [IMEI] in a comment stays\nMTX_IDClient: {IMEI}\nMQTT_attopic1:  {IMEI}/AT  \nX: [ICCID]-{IMEI}-[imei]\nMQTT_password: p[SECRET]\n"
            )
        );
        assert_eq!(
            r.unresolved,
            [
                Unresolved {
                    key: "X".into(),
                    placeholder: "[ICCID]".into()
                },
                Unresolved {
                    key: "X".into(),
                    placeholder: "[imei]".into()
                },
                Unresolved {
                    key: "MQTT_password".into(),
                    placeholder: "***".into()
                },
            ]
        );
        // The original is untouched, and the result parses back equal.
        assert_eq!(c.get("MTX_IDClient"), Some("[IMEI]"));
        assert_eq!(ConfigFile::parse(&r.config.render()).unwrap(), r.config);

        let extra = [("ICCID", "8934"), ("imei", "lower")];
        let ctx = PlaceholderContext {
            imei: IMEI,
            extra: &extra,
        };
        let r = c.resolve_placeholders(&ctx).unwrap();
        assert_eq!(
            r.config.get("X"),
            Some(format!("8934-{IMEI}-lower").as_str())
        );
    }

    #[test]
    fn rejects_substitutions_a_line_cannot_hold() {
        let c = ConfigFile::parse("A: [IMEI]\n").unwrap();
        for bad in ["1\n2", " 1", "1\t", "\0"] {
            assert!(
                c.resolve_placeholders(&PlaceholderContext::imei(bad))
                    .is_err(),
                "{bad:?}"
            );
        }
        let huge = "9".repeat(MAX_CONFIG_BYTES);
        assert!(matches!(
            c.resolve_placeholders(&PlaceholderContext::imei(&huge)),
            Err(ConfigError::TooLarge { .. })
        ));
        // An empty substitution is fine: the value becomes empty.
        let r = c
            .resolve_placeholders(&PlaceholderContext::imei(""))
            .unwrap();
        assert_eq!(r.config.render(), "A: \n");
        assert_eq!(ConfigFile::parse(&r.config.render()).unwrap(), r.config);
    }
}
