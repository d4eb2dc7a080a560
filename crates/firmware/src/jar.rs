//! MIDlet JAR checks: a JAR is a zip whose `META-INF/MANIFEST.MF` names the suite
//! (`MIDlet-Name`, `MIDlet-Vendor`, `MIDlet-Version`), and a JAD that points at it must
//! agree with it (JSR-118: 905 Attribute Mismatch) and with its size (904 JAR Size
//! Mismatch).
//!
//! [`check_jar`] reads a file with blocking I/O: call it from
//! `tokio::task::spawn_blocking`, never directly on an async task.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use callhome_core::otap::{
    Jad, MIDLET_JAR_SIZE, MIDLET_NAME, MIDLET_VENDOR, MIDLET_VERSION, OtapError,
};

use crate::{FirmwareError, Result};

/// Where the manifest is in a JAR.
pub const MANIFEST_PATH: &str = "META-INF/MANIFEST.MF";
/// Largest manifest read, in bytes (after decompression).
pub const MAX_MANIFEST_LEN: u64 = 1024 * 1024;
/// The attributes a MIDlet JAR's manifest must have and a JAD must repeat exactly.
pub const SUITE_ATTRIBUTES: [&str; 3] = [MIDLET_NAME, MIDLET_VENDOR, MIDLET_VERSION];

/// The main attributes of a JAR manifest, in order. Always has `MIDlet-Name`,
/// `MIDlet-Vendor` and `MIDlet-Version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JarManifest {
    attributes: Vec<(String, String)>,
}

impl JarManifest {
    /// Parses a manifest's text and keeps its main section (everything before the first
    /// blank line). Lines end with CRLF, LF or CR; a line starting with a space
    /// continues the previous one; `Name: value`, surrounding white space of the value
    /// dropped. The three suite attributes are required.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| FirmwareError::BadJar(format!("{MANIFEST_PATH}: {why}"));
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut attributes: Vec<(String, String)> = Vec::new();
        // The raw (name: value) line being assembled from continuation lines.
        let mut current: Option<(usize, String)> = None;
        let finish = |current: Option<(usize, String)>,
                      attributes: &mut Vec<(String, String)>|
         -> Result<()> {
            let Some((line_no, line)) = current else {
                return Ok(());
            };
            let (name, value) = line.split_once(':').ok_or_else(|| {
                bad(format!(
                    "line {line_no} has no ':' after the attribute name"
                ))
            })?;
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(bad(format!(
                    "line {line_no}: {:?} is not an attribute name (letters, digits, '-' and '_')",
                    name.chars().take(64).collect::<String>()
                )));
            }
            if attributes.iter().any(|(n, _)| n == name) {
                return Err(bad(format!("attribute {name} appears twice")));
            }
            attributes.push((name.to_owned(), value.trim().to_owned()));
            Ok(())
        };
        let lines = text.split("\r\n").flat_map(|l| l.split(['\n', '\r']));
        for (i, line) in lines.enumerate() {
            let line_no = i + 1;
            if line.is_empty() {
                break;
            }
            if let Some(rest) = line.strip_prefix(' ') {
                match current.as_mut() {
                    Some((_, cur)) => cur.push_str(rest),
                    None => {
                        return Err(bad(format!(
                            "line {line_no} continues an attribute but none precedes it"
                        )));
                    }
                }
                continue;
            }
            finish(current.take(), &mut attributes)?;
            current = Some((line_no, line.to_owned()));
        }
        finish(current.take(), &mut attributes)?;
        let manifest = Self { attributes };
        let missing: Vec<&str> = SUITE_ATTRIBUTES
            .into_iter()
            .filter(|a| manifest.get(a).is_none_or(str::is_empty))
            .collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "a MIDlet JAR's manifest needs {}, missing or empty: {}",
                SUITE_ATTRIBUTES.join(", "),
                missing.join(", ")
            )));
        }
        Ok(manifest)
    }

    /// The value of main attribute `name` (case-sensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The main attributes in order, as `(name, value)`.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// `MIDlet-Name`.
    pub fn name(&self) -> &str {
        self.get(MIDLET_NAME).unwrap_or_default()
    }

    /// `MIDlet-Vendor`.
    pub fn vendor(&self) -> &str {
        self.get(MIDLET_VENDOR).unwrap_or_default()
    }

    /// `MIDlet-Version`.
    pub fn version(&self) -> &str {
        self.get(MIDLET_VERSION).unwrap_or_default()
    }
}

/// Checks that the file at `path` is a MIDlet JAR: a zip archive with a
/// `META-INF/MANIFEST.MF` (at most [`MAX_MANIFEST_LEN`] bytes of UTF-8) whose main
/// section has `MIDlet-Name`, `MIDlet-Vendor` and `MIDlet-Version`. Returns the main
/// attributes.
///
/// Blocking: run it in `tokio::task::spawn_blocking`.
pub fn check_jar(path: &Path) -> Result<JarManifest> {
    let file = File::open(path)
        .map_err(|e| FirmwareError::io(format!("opening {}", path.display()), e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| FirmwareError::BadJar(format!("not a zip archive: {e}")))?;
    // The exact name first; some tools write another case.
    let name = if archive.index_for_name(MANIFEST_PATH).is_some() {
        MANIFEST_PATH.to_owned()
    } else {
        archive
            .file_names()
            .filter_map(std::result::Result::ok)
            .find(|n| n.eq_ignore_ascii_case(MANIFEST_PATH))
            .map(std::borrow::Cow::into_owned)
            .ok_or_else(|| FirmwareError::BadJar(format!("the archive has no {MANIFEST_PATH}")))?
    };
    let entry = archive
        .by_name(&name)
        .map_err(|e| FirmwareError::BadJar(format!("cannot open {name}: {e}")))?;
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FirmwareError::BadJar(format!("cannot read {name}: {e}")))?;
    if bytes.len() as u64 > MAX_MANIFEST_LEN {
        return Err(FirmwareError::BadJar(format!(
            "{name} is larger than {MAX_MANIFEST_LEN} bytes"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        FirmwareError::BadJar(format!(
            "{name} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    JarManifest::parse(&text)
}

/// Checks that `jad` describes the JAR with `manifest` and `jar_size` bytes:
/// `MIDlet-Name`, `MIDlet-Vendor` and `MIDlet-Version` identical in both (else
/// [`FirmwareError::JadMismatch`], JSR-118 905), and `MIDlet-Jar-Size` equal to
/// `jar_size` (else [`FirmwareError::JadMismatch`] on `MIDlet-Jar-Size`, 904). A JAD
/// without these attributes, or whose size is not a number, is a
/// [`FirmwareError::Jad`] naming each problem.
pub fn check_jad_matches(jad: &Jad, manifest: &JarManifest, jar_size: u64) -> Result<()> {
    let mut problems = Vec::new();
    for attribute in SUITE_ATTRIBUTES.into_iter().chain([MIDLET_JAR_SIZE]) {
        if jad.get(attribute).is_none() {
            problems.push(format!("{attribute} is missing"));
        }
    }
    if let Some(v) = jad.get(MIDLET_JAR_SIZE)
        && jad.jar_size().is_none()
    {
        problems.push(format!(
            "{MIDLET_JAR_SIZE} must be a non-negative integer number of bytes, got {v:?}"
        ));
    }
    if !problems.is_empty() {
        return Err(OtapError::JadInvalid { problems }.into());
    }
    for attribute in SUITE_ATTRIBUTES {
        let in_jad = jad.get(attribute).unwrap_or_default();
        let in_jar = manifest.get(attribute).unwrap_or_default();
        if in_jad != in_jar {
            return Err(FirmwareError::JadMismatch {
                attribute: attribute.to_owned(),
                jad: in_jad.to_owned(),
                jar: in_jar.to_owned(),
            });
        }
    }
    if jad.jar_size() != Some(jar_size) {
        return Err(FirmwareError::JadMismatch {
            attribute: MIDLET_JAR_SIZE.to_owned(),
            jad: jad.get(MIDLET_JAR_SIZE).unwrap_or_default().to_owned(),
            jar: jar_size.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::PathBuf;

    use zip::write::SimpleFileOptions;

    use super::*;

    const MANIFEST: &str = "Manifest-Version: 1.0\r\n\
        MIDlet-Name: Tunnel\r\n\
        MIDlet-Vendor: Example Systems\r\n\
        MIDlet-Version: 2.0.0\r\n\
        MIDlet-1: Tunnel, , com.example.tunnel.Main\r\n\
        MIDlet-Description: a long description that is wrapped onto a con\r\n tinuation line\r\n\
        MicroEdition-Profile: IMP-NG\r\n\
        \r\n\
        Name: com/example/tunnel/Main.class\r\n\
        SHA-256-Digest: abc\r\n";

    fn jar(dir: &Path, name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
        for (n, data) in entries {
            w.start_file(*n, SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn reads_the_main_section_with_continuations() {
        let dir = tempfile::tempdir().unwrap();
        let path = jar(
            dir.path(),
            "t.jar",
            &[
                ("META-INF/MANIFEST.MF", MANIFEST.as_bytes()),
                ("com/example/tunnel/Main.class", &[0xca, 0xfe, 0xba, 0xbe]),
            ],
        );
        let m = check_jar(&path).unwrap();
        assert_eq!(m.name(), "Tunnel");
        assert_eq!(m.vendor(), "Example Systems");
        assert_eq!(m.version(), "2.0.0");
        assert_eq!(
            m.get("MIDlet-Description"),
            Some("a long description that is wrapped onto a continuation line")
        );
        assert_eq!(
            m.get("Name"),
            None,
            "per-entry sections are not main attributes"
        );
        assert_eq!(m.attributes().count(), 7);
    }

    #[test]
    fn bare_lf_and_cr_line_ends() {
        let m =
            JarManifest::parse("MIDlet-Name: A\nMIDlet-Vendor: B\rMIDlet-Version: 1\n").unwrap();
        assert_eq!((m.name(), m.vendor(), m.version()), ("A", "B", "1"));
    }

    #[test]
    fn bad_jars_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_zip = dir.path().join("x.jar");
        std::fs::write(&not_zip, b"just some bytes, not a zip").unwrap();
        let e = check_jar(&not_zip).unwrap_err();
        assert!(e.to_string().contains("not a zip archive"), "{e}");
        assert_eq!(e.otap_status(), Some(907));

        let no_manifest = jar(dir.path(), "n.jar", &[("a.class", b"x")]);
        let e = check_jar(&no_manifest).unwrap_err();
        assert!(e.to_string().contains("no META-INF/MANIFEST.MF"), "{e}");

        let lower = jar(
            dir.path(),
            "l.jar",
            &[("meta-inf/manifest.mf", MANIFEST.as_bytes())],
        );
        assert_eq!(check_jar(&lower).unwrap().name(), "Tunnel");

        let incomplete = jar(
            dir.path(),
            "i.jar",
            &[(
                "META-INF/MANIFEST.MF",
                b"Manifest-Version: 1.0\nMIDlet-Name: A\n",
            )],
        );
        let e = check_jar(&incomplete).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing or empty: MIDlet-Vendor, MIDlet-Version"),
            "{e}"
        );

        let binary = jar(
            dir.path(),
            "b.jar",
            &[("META-INF/MANIFEST.MF", b"MIDlet-Name: \xff\n")],
        );
        let e = check_jar(&binary).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");

        let big = vec![b'a'; usize::try_from(MAX_MANIFEST_LEN).unwrap() + 10];
        let huge = jar(dir.path(), "h.jar", &[("META-INF/MANIFEST.MF", &big)]);
        let e = check_jar(&huge).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");

        let e = check_jar(&dir.path().join("absent.jar")).unwrap_err();
        assert!(matches!(e, FirmwareError::Io { .. }), "{e}");
    }

    #[test]
    fn manifest_syntax_errors_are_named() {
        for (text, needle) in [
            (" starts with a continuation\n", "none precedes it"),
            ("MIDlet-Name A\n", "no ':'"),
            ("MIDlet Name: A\n", "not an attribute name"),
            ("MIDlet-Name: A\nMIDlet-Name: B\n", "appears twice"),
        ] {
            let e = JarManifest::parse(text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
    }

    fn manifest() -> JarManifest {
        JarManifest::parse(MANIFEST).unwrap()
    }

    fn jad(size: u64) -> Jad {
        Jad::for_release(
            "Tunnel",
            "Example Systems",
            "2.0.0",
            "https://h/fw/t",
            size,
            "https://h/fw/t/notify",
        )
        .unwrap()
    }

    #[test]
    fn jad_must_match_the_jar() {
        check_jad_matches(&jad(1234), &manifest(), 1234).unwrap();

        let e = check_jad_matches(&jad(1234), &manifest(), 1235).unwrap_err();
        assert_eq!(e.otap_status(), Some(904));
        assert_eq!(
            e.to_string(),
            "MIDlet-Jar-Size differs: the JAD says \"1234\", the JAR has \"1235\""
        );

        let mut other = jad(1234);
        other.set("MIDlet-Version", "2.0.1").unwrap();
        let e = check_jad_matches(&other, &manifest(), 1234).unwrap_err();
        assert_eq!(e.otap_status(), Some(905));
        assert!(e.to_string().contains("MIDlet-Version"), "{e}");
        assert!(e.to_string().contains("2.0.1") && e.to_string().contains("2.0.0"));

        let mut vendor = jad(1234);
        vendor.set("MIDlet-Vendor", "example systems").unwrap();
        assert!(check_jad_matches(&vendor, &manifest(), 1234).is_err());

        let bare = Jad::parse("MIDlet-Name: Tunnel\nMIDlet-Jar-Size: x\n").unwrap();
        let e = check_jad_matches(&bare, &manifest(), 1234).unwrap_err();
        assert_eq!(e.otap_status(), Some(906));
        let text = e.to_string();
        assert!(text.contains("MIDlet-Vendor is missing"), "{text}");
        assert!(text.contains("MIDlet-Version is missing"), "{text}");
        assert!(text.contains("non-negative integer"), "{text}");
    }
}
