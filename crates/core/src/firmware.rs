//! Firmware: the words of a campaign and the rules that decide, per device, whether and how
//! an update ends (pure functions; the repository, the downloads and the engine that runs a
//! campaign live in `callhome-firmware`, `callhome-api` and `callhome-fleet`).
//!
//! - [`FirmwareKind`]: a whole image, or a Java ME MIDlet (MTX-Tunnel runs as one on
//!   Cinterion modems) installed by OTAP.
//! - [`Version`]: a version as a modem reports it, compared the way people read versions
//!   (`11.0.10` is after `11.0.9`).
//! - [`compatibility`]: whether a device may take a firmware, or why it is skipped.
//! - [`UpdateOutcome`]: how each device's update ended; [`ExecEventKind`]: the steps of
//!   one device's update, as its event log records them.

use std::cmp::Ordering;

use crate::ValidationError;

/// Longest version string accepted.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest model name accepted.
pub const MAX_MODEL_LEN: usize = 64;
/// Most models one firmware may name.
pub const MAX_MODELS: usize = 64;

crate::wire_enum! {
    /// What a firmware file is.
    pub enum FirmwareKind("kind") {
        /// A whole firmware image, installed by the dialect's `firmware_update` command.
        Image = "image",
        /// A Java ME MIDlet (a JAR, optionally with its JAD), installed by OTAP.
        Midlet = "midlet",
    }
}

crate::wire_enum! {
    /// How one device's firmware update ended (the execution's `outcome`).
    pub enum UpdateOutcome("outcome") {
        /// The modem came back reporting the target version.
        Updated = "updated",
        /// The modem already ran the target version (skipped, not counted as a failure).
        AlreadyCurrent = "already_current",
        /// The device's model or version does not allow this firmware (skipped).
        Incompatible = "incompatible",
        /// The modem restarted but came back on another version (fell back to its old image).
        RolledBack = "rolled_back",
        /// The modem did not come back within the install timeout.
        TimedOut = "timed_out",
        /// The download was refused, or the bytes that arrived were not the ones served.
        DownloadFailed = "download_failed",
        /// The modem refused the update command or reported that the install failed.
        InstallFailed = "install_failed",
        /// The campaign was cancelled or aborted, or the device went away, mid-update.
        Interrupted = "interrupted",
    }
}

impl UpdateOutcome {
    /// Whether the device was skipped (not a failure, not a success).
    pub fn is_skip(self) -> bool {
        matches!(
            self,
            UpdateOutcome::AlreadyCurrent | UpdateOutcome::Incompatible
        )
    }
}

crate::wire_enum! {
    /// A step in one device's firmware update, as its event log records it.
    pub enum ExecEventKind("kind") {
        /// The version reported before the update.
        VersionBefore = "version_before",
        /// The device was skipped (detail: why).
        Skipped = "skipped",
        /// The update command was sent and acknowledged.
        CommandAcknowledged = "command_acknowledged",
        /// The first download request arrived.
        DownloadStarted = "download_started",
        /// A download request resumed a partial download (`Range`).
        DownloadResumed = "download_resumed",
        /// Every byte of the file was served.
        DownloadCompleted = "download_completed",
        /// A download request was refused (detail: status and reason).
        DownloadRefused = "download_refused",
        /// The JAD was served (OTAP).
        DescriptorServed = "descriptor_served",
        /// The modem posted an install status (detail: the JSR-118 code).
        InstallNotified = "install_notified",
        /// The modem connected again after its restart.
        Reconnected = "reconnected",
        /// The version reported after the restart.
        VersionSeen = "version_seen",
    }
}

/// A firmware version as reported or uploaded: 1-64 printable ASCII characters without
/// spaces or commas (it goes into AT commands and JADs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Version {
    /// Checks a version string.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        if s.is_empty() || s.len() > MAX_VERSION_LEN {
            return Err(ValidationError::new(
                "version",
                format!("must be 1-{MAX_VERSION_LEN} characters"),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, ',' | '"' | '\\'))
        {
            return Err(ValidationError::new(
                "version",
                format!(
                    "must be printable ASCII without spaces, commas, quotes or backslashes (found {c:?})"
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The version a modem reports in a `VERSION` reply line or a status message:
    /// `MTX-Tunnel v11.0.3` -> `11.0.3`, `v2.1` -> `2.1`, `11.0.3` -> `11.0.3` (the last
    /// word, without a leading `v` before a digit).
    pub fn from_reported(text: &str) -> Result<Self, ValidationError> {
        let word = text.split_whitespace().last().unwrap_or("");
        let word = match word.strip_prefix(['v', 'V']) {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
            _ => word,
        };
        Self::parse(word)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares as people read versions: numeric parts as numbers, other parts as text,
    /// split at `.`, `-`, `_` and `+`; a release (`2.0`) is after its pre-releases
    /// (`2.0-rc1`), and a version is after its own prefix (`2.0.1` > `2.0`).
    pub fn compare(&self, other: &Version) -> Ordering {
        compare_versions(&self.0, &other.0)
    }
}

impl TryFrom<String> for Version {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> Self {
        v.0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Part<'a> {
    Num(u64),
    Text(&'a str),
}

fn parts(s: &str) -> Vec<Part<'_>> {
    let mut out = Vec::new();
    for piece in s.split(['.', '-', '_', '+']) {
        // Split each piece further into runs of digits and of other characters.
        let mut rest = piece;
        while !rest.is_empty() {
            let digits = rest.starts_with(|c: char| c.is_ascii_digit());
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            out.push(if digits {
                // Longer than u64: compare as text (still deterministic).
                run.parse().map_or(Part::Text(run), Part::Num)
            } else {
                Part::Text(run)
            });
            rest = tail;
        }
    }
    out
}

fn compare_versions(a: &str, b: &str) -> Ordering {
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let ord = match (pa.get(i), pb.get(i)) {
            (Some(Part::Num(x)), Some(Part::Num(y))) => x.cmp(y),
            (Some(Part::Text(x)), Some(Part::Text(y))) => {
                x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase())
            }
            // A number is after text at the same place (2.0.1 > 2.0-rc).
            (Some(Part::Num(_)), Some(Part::Text(_))) => Ordering::Greater,
            (Some(Part::Text(_)), Some(Part::Num(_))) => Ordering::Less,
            // Text after the end is a pre-release (2.0-rc1 < 2.0); a number is a later release.
            (Some(Part::Text(_)), None) => Ordering::Less,
            (None, Some(Part::Text(_))) => Ordering::Greater,
            (Some(Part::Num(_)), None) => Ordering::Greater,
            (None, Some(Part::Num(_))) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.cmp(b)
}

/// Checks a model name: 1-64 printable ASCII characters without commas.
pub fn check_model(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() || s.len() > MAX_MODEL_LEN {
        return Err(ValidationError::new(
            "models",
            format!("a model is 1-{MAX_MODEL_LEN} characters"),
        ));
    }
    if s.chars()
        .any(|c| !(c.is_ascii_graphic() || c == ' ') || c == ',')
    {
        return Err(ValidationError::new(
            "models",
            format!("model {s:?} must be printable ASCII without commas"),
        ));
    }
    Ok(())
}

/// What a campaign needs to know of a firmware to decide on one device.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The firmware's version.
    pub version: &'a Version,
    /// The models it is for.
    pub models: &'a [String],
    /// Devices below this version may not take it.
    pub min_version: Option<&'a Version>,
}

/// Whether a device of `model` now at `current` may take `target`; `Err` is the outcome
/// it is skipped with and the reason. `force` installs even when the device already runs
/// the target version (model and minimum version still apply).
pub fn compatibility(
    target: Target<'_>,
    model: Option<&str>,
    current: &Version,
    force: bool,
) -> Result<(), (UpdateOutcome, String)> {
    let Some(model) = model else {
        return Err((
            UpdateOutcome::Incompatible,
            "the device has not reported its model yet".to_owned(),
        ));
    };
    if !target.models.iter().any(|m| m.eq_ignore_ascii_case(model)) {
        return Err((
            UpdateOutcome::Incompatible,
            format!(
                "model {model} is not one of this firmware's models ({})",
                target.models.join(", ")
            ),
        ));
    }
    if let Some(min) = target.min_version
        && current.compare(min) == Ordering::Less
    {
        return Err((
            UpdateOutcome::Incompatible,
            format!("version {current} is below this firmware's minimum version {min}"),
        ));
    }
    if !force && current.compare(target.version) == Ordering::Equal {
        return Err((
            UpdateOutcome::AlreadyCurrent,
            format!("the device already runs {current}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_compare_as_people_read_them() {
        let ordered = [
            "1.9",
            "1.10",
            "2.0-alpha",
            "2.0-rc1",
            "2.0-rc2",
            "2.0",
            "2.0.1",
            "11.0.3-sim",
            "11.0.3",
            "11.0.10",
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                v(w[0]).compare(&v(w[1])),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
            assert_eq!(v(w[1]).compare(&v(w[0])), Ordering::Greater);
        }
        assert_eq!(v("2.0").compare(&v("2.0")), Ordering::Equal);
        assert_eq!(
            v("V2").compare(&v("v2")),
            Ordering::Less,
            "total order by text at the end"
        );
        let huge = "1".repeat(40);
        assert_eq!(v(&huge).compare(&v(&huge)), Ordering::Equal);
    }

    #[test]
    fn reported_versions_are_read_from_replies() {
        assert_eq!(
            Version::from_reported("MTX-Tunnel v11.0.3-sim")
                .unwrap()
                .as_str(),
            "11.0.3-sim"
        );
        assert_eq!(Version::from_reported("v2.1").unwrap().as_str(), "2.1");
        assert_eq!(Version::from_reported("2.1").unwrap().as_str(), "2.1");
        assert_eq!(
            Version::from_reported("version").unwrap().as_str(),
            "version"
        );
        assert!(Version::from_reported("").is_err());
        assert!(Version::parse("1,2").is_err());
        assert!(Version::parse(&"1".repeat(65)).is_err());
    }

    #[test]
    fn compatibility_skips_with_a_reason() {
        let version = v("2.0");
        let min = v("1.5");
        let models = vec!["TC65i".to_owned(), "EHS6".to_owned()];
        let t = Target {
            version: &version,
            models: &models,
            min_version: Some(&min),
        };
        assert!(compatibility(t, Some("ehs6"), &v("1.9"), false).is_ok());
        let (o, why) = compatibility(t, Some("BGS2"), &v("1.9"), false).unwrap_err();
        assert_eq!(o, UpdateOutcome::Incompatible);
        assert!(why.contains("BGS2"), "{why}");
        let (o, why) = compatibility(t, Some("EHS6"), &v("1.4"), false).unwrap_err();
        assert_eq!(o, UpdateOutcome::Incompatible);
        assert!(why.contains("minimum"), "{why}");
        let (o, _) = compatibility(t, Some("EHS6"), &v("2.0"), false).unwrap_err();
        assert_eq!(o, UpdateOutcome::AlreadyCurrent);
        assert!(compatibility(t, Some("EHS6"), &v("2.0"), true).is_ok());
        assert_eq!(
            compatibility(t, None, &v("1.9"), true).unwrap_err().0,
            UpdateOutcome::Incompatible
        );
    }

    #[test]
    fn wire_names_agree_with_serde() {
        for o in UpdateOutcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for k in ExecEventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for k in FirmwareKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
