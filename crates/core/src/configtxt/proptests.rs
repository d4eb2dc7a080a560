//! Property tests: nothing panics, whatever parses renders back identically, edits touch
//! only their line, and generated configurations (a fuzz without `cargo fuzz`) round-trip.

use proptest::prelude::*;

use super::tests::{IOT_EXAMPLE, SEED_MASTER};
use super::*;

/// Runs everything that reads a parsed file, checking the invariants that hold for any file.
fn exercise(text: &str, c: &ConfigFile) -> Result<(), TestCaseError> {
    prop_assert_eq!(c.render(), text);
    prop_assert_eq!(&ConfigFile::parse(&c.render()).unwrap(), c);
    // Every rejection names its key and says why.
    let report = c.validate();
    for e in &report.errors {
        prop_assert!(!e.reason.trim().is_empty(), "no reason: {e:?}");
        prop_assert!(
            c.contains_key(&e.field) || super::schema::lookup(&e.field).is_some(),
            "the field {:?} is not a key: {e:?}",
            e.field
        );
    }
    for w in &report.warnings {
        prop_assert!(!w.message.trim().is_empty() && !w.key.is_empty(), "{w:?}");
    }
    let red = c.redacted();
    prop_assert_eq!(&ConfigFile::parse(&red.render()).unwrap(), &red);
    prop_assert_eq!(red.line_count(), c.line_count());
    let _ = format!("{c:?}");
    let _ = c.whitelists();
    prop_assert_eq!(diff(c, c), vec![]);
    if let Ok(r) = c.resolve_placeholders(&PlaceholderContext::imei("490154203237518")) {
        prop_assert_eq!(&ConfigFile::parse(&r.config.render()).unwrap(), &r.config);
    }
    Ok(())
}

/// A parse rejection says where: the line (or the key, for an edit), or the size limit.
fn rejection_names_the_place(e: &super::ConfigError) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    let sized = matches!(
        e,
        super::ConfigError::TooLarge { .. } | super::ConfigError::TooManyLines { .. }
    );
    prop_assert!(
        sized || msg.contains("line ") || msg.contains("key "),
        "{msg}"
    );
    Ok(())
}

/// A key of the schema, as the schema writes it (family members numbered 1).
fn known_key() -> impl Strategy<Value = String> {
    let keys: Vec<String> = super::schema::KEYS.iter().map(|k| k.key(1)).collect();
    proptest::sample::select(keys)
}

/// Keys: known ones in random case, family members in and out of range, unknown ones.
fn key() -> impl Strategy<Value = String> {
    let known = prop::sample::select(
        schema::KEYS
            .iter()
            .map(|s| s.key(s.index.map_or(0, |r| r.0)))
            .collect::<Vec<_>>(),
    );
    let cased = (known, any::<u64>()).prop_map(|(k, bits)| {
        k.chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    });
    prop_oneof![
        3 => cased,
        1 => (prop::sample::select(vec!["SMS_validPhone", "CSD_validPhone", "MTX_TPServer"]), 0u32..14)
            .prop_map(|(p, n)| format!("{p}{n}")),
        2 => "[A-Za-z][A-Za-z0-9_]{0,20}",
    ]
}

/// Values as a line holds them: no surrounding whitespace, anything printable inside,
/// including `:`, `#`, `;`, placeholders and non-ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "on",
            "off",
            "ON",
            "9600",
            "2g",
            "auto",
            "0000",
            "-1",
            "+34666123456",
            "666333444",
            "[IMEI]",
            "[IMEI]/AT",
            "ssl://broker.example:8883",
            "tcp://h:1883",
            "mqtt;2;0",
            "8.8.8.8",
            "99999999999999999999999",
        ])
        .prop_map(str::to_owned),
        "[!-~]([ -~\t]{0,30}[!-~])?",
        "\\PC([\\PC\t]{0,20}\\PC)?".prop_filter("no edge whitespace", |v| {
            v.trim_matches([' ', '\t']) == v
        }),
    ]
}

/// Whitespace as found around keys, colons and values.
fn ws() -> impl Strategy<Value = String> {
    "[ \t]{0,3}"
}

#[derive(Debug, Clone)]
enum GenLine {
    Entry {
        indent: String,
        key: String,
        before: String,
        after: String,
        value: String,
        trailing: String,
    },
    Comment(String),
    Blank(String),
}

fn gen_line() -> impl Strategy<Value = GenLine> {
    prop_oneof![
        6 => (ws(), key(), ws(), ws(), value(), ws()).prop_map(
            |(indent, key, before, after, value, trailing)| GenLine::Entry {
                indent,
                key,
                before,
                after,
                value,
                trailing,
            }
        ),
        1 => "[ \t]{0,2}(#|;|//)[\\PC\t]{0,30}".prop_map(GenLine::Comment),
        1 => ws().prop_map(GenLine::Blank),
    ]
}

/// A valid Config.txt built line by line: keys made unique, random endings, maybe no final
/// newline, maybe a BOM. Returns the text and its keys with their values.
fn config_text() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    (
        prop::collection::vec((gen_line(), any::<bool>()), 0..40),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, final_newline, bom)| {
            let mut text = String::new();
            if bom {
                text.push('\u{FEFF}');
            }
            let mut entries: Vec<(String, String)> = Vec::new();
            let n = lines.len();
            for (i, (line, crlf)) in lines.into_iter().enumerate() {
                match line {
                    GenLine::Entry {
                        indent,
                        key,
                        before,
                        after,
                        value,
                        trailing,
                    } => {
                        if entries.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                            continue;
                        }
                        text.push_str(&format!("{indent}{key}{before}:{after}{value}{trailing}"));
                        entries.push((key, value));
                    }
                    GenLine::Comment(c) => text.push_str(&c),
                    GenLine::Blank(b) => text.push_str(&b),
                }
                if i + 1 < n || final_newline {
                    text.push_str(if crlf { "\r\n" } else { "\n" });
                }
            }
            (text, entries)
        })
}

/// Text likely to hit the parser's corners: the grammar's characters in any order.
fn grammar_soup() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:#;/ \t\r\n\\[\\]+.\u{FEFF}\u{0}é]{0,200}"
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        match ConfigFile::parse(&s) {
            Ok(c) => exercise(&s, &c)?,
            Err(e) => rejection_names_the_place(&e)?,
        }
    }

    #[test]
    fn grammar_soup_never_panics_and_round_trips(s in grammar_soup()) {
        match ConfigFile::parse(&s) {
            Ok(c) => exercise(&s, &c)?,
            Err(e) => rejection_names_the_place(&e)?,
        }
    }

    #[test]
    fn known_keys_with_random_values_are_rejected_by_name(key in known_key(), value in value()) {
        let text = format!("{key}: {value}\n");
        match ConfigFile::parse(&text) {
            Ok(c) => exercise(&text, &c)?,
            Err(e) => rejection_names_the_place(&e)?,
        }
    }

    #[test]
    fn generated_configs_parse_and_round_trip((text, entries) in config_text()) {
        let c = ConfigFile::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text:?}")))?;
        exercise(&text, &c)?;
        let got: Vec<(String, String)> = c
            .entries()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        prop_assert_eq!(&got, &entries);
        for (k, v) in &entries {
            prop_assert_eq!(c.get(&k.to_ascii_uppercase()), Some(v.as_str()));
        }
    }

    #[test]
    fn set_then_get_keeps_other_lines(
        (text, entries) in config_text(),
        pick in any::<prop::sample::Index>(),
        new_key in key(),
        existing in any::<bool>(),
        v in value(),
    ) {
        let mut c = ConfigFile::parse(&text).unwrap();
        let before = c.render();
        let key = if existing && !entries.is_empty() {
            pick.get(&entries).0.to_ascii_lowercase()
        } else {
            new_key
        };
        let at = c.find(&key);
        c.set(&key, &v).unwrap();
        prop_assert_eq!(c.get(&key), Some(v.as_str()));
        let after = c.render();
        prop_assert_eq!(&ConfigFile::parse(&after).unwrap(), &c);
        let bom = |s: &str| s.trim_start_matches('\u{FEFF}').to_owned();
        let (before, after) = (bom(&before), bom(&after));
        let old: Vec<&str> = before.split_inclusive('\n').collect();
        let new: Vec<&str> = after.split_inclusive('\n').collect();
        match at {
            Some(i) => {
                prop_assert_eq!(old.len(), new.len());
                for j in (0..old.len()).filter(|j| *j != i) {
                    prop_assert_eq!(old[j], new[j]);
                }
                // The key keeps its spelling.
                prop_assert!(new[i].contains(c.key_as_written(&key).unwrap()));
            }
            None => {
                prop_assert_eq!(new.len(), old.len() + 1);
                let last = old.len().saturating_sub(1);
                for j in 0..last {
                    prop_assert_eq!(old[j], new[j]);
                }
                if let Some(l) = old.last() {
                    // The old last line is unchanged, or gained the file's line ending.
                    prop_assert!(new[last] == *l || new[last].trim_end_matches(['\r', '\n']) == *l);
                }
                let head = format!("{key}:");
                prop_assert!(new.last().unwrap().starts_with(&head));
            }
        }
        // Other keys read the same.
        for (k, val) in &entries {
            if !k.eq_ignore_ascii_case(&key) {
                prop_assert_eq!(c.get(k), Some(val.as_str()));
            }
        }
    }

    #[test]
    fn remove_keeps_other_lines((text, entries) in config_text(), pick in any::<prop::sample::Index>()) {
        prop_assume!(!entries.is_empty());
        let (key, value) = pick.get(&entries).clone();
        let mut c = ConfigFile::parse(&text).unwrap();
        prop_assert_eq!(c.remove(&key), Some(value));
        prop_assert_eq!(c.get(&key), None);
        prop_assert_eq!(&ConfigFile::parse(&c.render()).unwrap(), &c);
        for (k, v) in &entries {
            if *k != key {
                prop_assert_eq!(c.get(k), Some(v.as_str()));
            }
        }
    }

    #[test]
    fn reference_files_with_random_edits_stay_valid_text(
        crlf in any::<bool>(),
        edits in prop::collection::vec((key(), value()), 0..10),
    ) {
        for base in [SEED_MASTER, IOT_EXAMPLE] {
            let text = if crlf { base.replace('\n', "\r\n") } else { base.to_owned() };
            let mut c = ConfigFile::parse(&text).unwrap();
            for (k, v) in &edits {
                c.set(k, v).unwrap();
            }
            exercise(&c.render(), &c)?;
        }
    }

    #[test]
    fn whitelists_round_trip(
        sms in prop::collection::btree_set("\\+[1-9][0-9]{7,14}|[0-9]{3,15}", 0..=10),
        csd in prop::collection::btree_set("\\+[1-9][0-9]{7,14}|[0-9]{3,15}", 0..=10),
    ) {
        let lists = Whitelists {
            sms: sms.into_iter().collect(),
            csd: csd.into_iter().collect(),
        };
        let mut c = ConfigFile::parse(SEED_MASTER).unwrap();
        c.set_whitelists(&lists).unwrap();
        prop_assert_eq!(c.whitelists(), lists.clone());
        prop_assert_eq!(&ConfigFile::parse(&c.render()).unwrap(), &c);
        let r = c.validate();
        prop_assert!(r.errors.iter().all(|e| !e.field.contains("validPhone")), "{:?}", r);
        if !lists.sms.is_empty() {
            prop_assert_eq!(c.get("SMS_allPhones"), Some("off"));
        }
    }

    #[test]
    fn numbers_never_overflow(s in "[0-9+-]{0,40}") {
        let mut c = ConfigFile::parse(SEED_MASTER).unwrap();
        for key in ["GPRS_timeout", "MQTT_keepalive", "DNS_period", "MTX_temporalClientTimeout"] {
            c.set(key, &s).unwrap();
        }
        let _ = c.validate();
    }
}
