//! A device's desired configuration (profile by tag + overrides), the configuration its
//! modem reports, and the drift between the two.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use callhome_core::configtxt::{self, ConfigFile, KeyDiff};
use callhome_core::dialect::{self, Dialect};
use callhome_core::{DriftState, Imei, ValidationError};
use callhome_gateway::Gateway;
use callhome_store::{ProfileRecord, Store};
use time::OffsetDateTime;

use crate::journal::Journal;
use crate::{FleetError, Result};

/// A device's profile and overrides.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The profile that applies (by tag), at its current version.
    pub profile: Option<ProfileRecord>,
    /// Per-device values on top of it (`None` removes the key).
    pub overrides: BTreeMap<String, Option<String>>,
    /// The device's own Config.txt layout (as imported, kept current), if it has one.
    pub document: Option<String>,
}

impl Desired {
    /// The desired configuration as the device's Config.txt: profile + overrides, placeholders
    /// as written, laid out on the device's own document when it has one (see
    /// [`configtxt::lay_out`]), else in the profile's layout.
    pub fn config(&self) -> Result<ConfigFile> {
        let text = self.profile.as_ref().map_or("", |p| p.config.as_str());
        let desired = configtxt::desired(text, &self.overrides)?;
        match &self.document {
            Some(doc) => {
                let doc = ConfigFile::parse(doc)
                    .map_err(|e| FleetError::Corrupt(format!("Config.txt document: {e}")))?;
                Ok(configtxt::lay_out(&doc, &desired)?)
            }
            None => Ok(desired),
        }
    }

    /// The effective configuration: [`Desired::config`] with placeholders resolved for `imei`.
    pub fn compose(&self, imei: &Imei) -> Result<configtxt::Effective> {
        Ok(configtxt::resolve(self.config()?, imei.as_str())?)
    }

    /// The profile alone, placeholders as written.
    pub fn profile_only(&self) -> Result<ConfigFile> {
        let text = self.profile.as_ref().map_or("", |p| p.config.as_str());
        Ok(configtxt::desired(text, &BTreeMap::new())?)
    }
}

/// Records in `overrides` what turns `before` into `after`: changed or added keys with their
/// new value, removed keys as `None`.
pub fn record_changes(
    before: &ConfigFile,
    after: &ConfigFile,
    overrides: &mut BTreeMap<String, Option<String>>,
) {
    for (k, v) in after.entries() {
        if before.get(k) != Some(v.trim()) {
            overrides.insert(k.to_owned(), Some(v.trim().to_owned()));
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            overrides.insert(k.to_owned(), None);
        }
    }
}

/// Whether a difference makes the device drift: a desired key the modem reports with another
/// value or lacks, or a caller-whitelist entry (`CSD_validPhoneN`, `SMS_validPhoneN`) the
/// modem has with a number that is not desired. Other keys only the modem has are not
/// managed and do not count.
pub fn counts_as_drift(d: &KeyDiff) -> bool {
    d.desired.is_some()
        || (configtxt::whitelist::is_whitelist_entry(&d.key)
            && d.reported.as_deref().is_some_and(|v| !v.trim().is_empty()))
}

/// The differences that make a device drift (see [`counts_as_drift`]).
pub fn drifted(diffs: &[KeyDiff]) -> impl Iterator<Item = &KeyDiff> {
    diffs.iter().filter(|d| counts_as_drift(d))
}

/// Desired and reported configuration of devices.
#[derive(Clone)]
pub struct ConfigService {
    store: Arc<dyn Store>,
    gateway: Gateway,
    dialect: Arc<Dialect>,
}

impl std::fmt::Debug for ConfigService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigService").finish_non_exhaustive()
    }
}

impl ConfigService {
    /// A service over `store`, sending commands through `gateway` in `dialect`.
    pub fn new(store: Arc<dyn Store>, gateway: Gateway, dialect: Arc<Dialect>) -> Self {
        Self {
            store,
            gateway,
            dialect,
        }
    }

    /// The command dialect.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }

    /// The gateway commands go through.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The device's profile and overrides.
    pub async fn desired(&self, imei: &Imei) -> Result<Desired> {
        let device = self.store.get_device(imei).await?;
        let profile = self.store.profile_for_tags(&device.tags).await?;
        let rec = self.store.get_device_config(imei).await?;
        let overrides = serde_json::from_str(&rec.overrides)
            .map_err(|e| FleetError::Corrupt(format!("overrides of {imei}: {e}")))?;
        Ok(Desired {
            profile,
            overrides,
            document: rec.document,
        })
    }

    /// Replaces the device's overrides; the effective configuration they give must validate
    /// (every error names its key). Re-evaluates drift against the last report.
    pub async fn set_overrides(
        &self,
        imei: &Imei,
        overrides: BTreeMap<String, Option<String>>,
        by: &str,
    ) -> Result<Desired> {
        let mut d = self.desired(imei).await?;
        d.overrides = overrides;
        self.store_desired(imei, d, by).await
    }

    /// Imports a Config.txt as the device's desired configuration: every key that differs
    /// from the profile becomes an override, and the file itself becomes the device's layout,
    /// so that it comes back byte for byte (see [`Desired::config`]).
    pub async fn import(&self, imei: &Imei, imported: &ConfigFile, by: &str) -> Result<Desired> {
        let mut d = self.desired(imei).await?;
        // Compared as written: a value the file spells out (an IMEI where the profile has
        // `[IMEI]`) is kept as the file has it.
        let base = d.profile_only()?;
        let mut overrides = BTreeMap::new();
        record_changes(&base, imported, &mut overrides);
        d.overrides = overrides;
        d.document = Some(imported.render());
        self.store_desired(imei, d, by).await
    }

    /// Validates and stores `d`'s overrides with the document they lay out to: keys changed
    /// stay in place, new keys are appended in the order they were set.
    async fn store_desired(&self, imei: &Imei, mut d: Desired, by: &str) -> Result<Desired> {
        let config = d.config()?;
        let report = configtxt::resolve(config.clone(), imei.as_str())?
            .config
            .validate();
        if !report.errors.is_empty() {
            return Err(FleetError::Invalid(report.errors));
        }
        d.document = Some(config.render());
        let json =
            serde_json::to_string(&d.overrides).map_err(|e| FleetError::Corrupt(e.to_string()))?;
        self.store
            .set_overrides(imei, &json, d.document.as_deref(), by)
            .await?;
        self.check_drift(imei).await?;
        Ok(d)
    }

    /// Edits the device's effective configuration with `edit` and stores the change as
    /// overrides on top of the existing ones.
    pub async fn edit(
        &self,
        imei: &Imei,
        by: &str,
        edit: impl FnOnce(&mut ConfigFile) -> std::result::Result<(), Vec<ValidationError>>,
    ) -> Result<(Desired, ConfigFile)> {
        let d = self.desired(imei).await?;
        let before = d.compose(imei)?.config;
        let mut after = before.clone();
        edit(&mut after).map_err(FleetError::Invalid)?;
        let mut overrides = d.overrides.clone();
        record_changes(&before, &after, &mut overrides);
        let d = self.set_overrides(imei, overrides, by).await?;
        Ok((d, after))
    }

    /// Compares the desired configuration with the last reported one and records the drift
    /// state; `None` if the modem never reported.
    pub async fn check_drift(&self, imei: &Imei) -> Result<Option<Vec<KeyDiff>>> {
        let rec = self.store.get_device_config(imei).await?;
        let Some(text) = rec.reported else {
            return Ok(None);
        };
        let reported = ConfigFile::parse(&text)
            .map_err(|e| FleetError::Corrupt(format!("reported configuration of {imei}: {e}")))?;
        let desired = self.desired(imei).await?.compose(imei)?.config;
        Ok(Some(
            self.record_drift(imei, &desired, &reported, rec.reported_at)
                .await?,
        ))
    }

    /// Compares `desired` with `reported` and records the drift state. With `reported_at`
    /// (a stored report, read earlier), only if no newer report came in meanwhile: a check
    /// of a stale report must not overwrite the state a fresh read-back recorded.
    async fn record_drift(
        &self,
        imei: &Imei,
        desired: &ConfigFile,
        reported: &ConfigFile,
        reported_at: Option<OffsetDateTime>,
    ) -> Result<Vec<KeyDiff>> {
        let diffs = configtxt::diff(desired, reported);
        let keys: Vec<&str> = drifted(&diffs).map(|k| k.key.as_str()).collect();
        let (state, keys_json) = if keys.is_empty() {
            (DriftState::InSync, None)
        } else {
            (
                DriftState::Drifted,
                Some(serde_json::to_string(&keys).unwrap_or_default()),
            )
        };
        let now = OffsetDateTime::now_utc();
        match reported_at {
            Some(at) => {
                self.store
                    .set_drift_if_reported(imei, state, keys_json.as_deref(), now, at)
                    .await?;
            }
            None => {
                self.store
                    .set_drift(imei, state, keys_json.as_deref(), now)
                    .await?;
            }
        }
        Ok(diffs)
    }

    /// Reads the modem's configuration with `GETCONFIG` through `journal`, stores it as the
    /// reported configuration and re-evaluates drift against `desired` (the device's effective
    /// desired configuration, composed here when the caller does not have it).
    pub async fn read(
        &self,
        journal: &mut Journal,
        imei: &Imei,
        timeout: Duration,
        expires_in: Duration,
        desired: Option<&ConfigFile>,
    ) -> Result<ConfigFile> {
        let command = self.dialect.get_config()?;
        let done = journal.run(command, timeout, expires_in).await?;
        let reply = match (done.state, done.reply.as_deref()) {
            (callhome_store::CommandState::Succeeded, Some(r)) => r.to_owned(),
            (state, _) => {
                return Err(FleetError::Device(format!(
                    "the modem did not report its configuration: command {} is {}{}",
                    done.id,
                    state.as_str(),
                    done.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )));
            }
        };
        let mut text = dialect::parse_getconfig_reply(&reply).map_err(|e| {
            FleetError::Device(format!(
                "the modem's GETCONFIG reply could not be read: {e:?}"
            ))
        })?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let config = ConfigFile::parse(&text).map_err(|e| {
            FleetError::Device(format!("the modem reported an unreadable Config.txt: {e}"))
        })?;
        self.store
            .set_reported(imei, &text, OffsetDateTime::now_utc())
            .await?;
        match desired {
            Some(d) => self.record_drift(imei, d, &config, None).await?,
            None => {
                let d = self.desired(imei).await?.compose(imei)?.config;
                self.record_drift(imei, &d, &config, None).await?
            }
        };
        Ok(config)
    }

    /// Re-evaluates drift for every device carrying `tag` (after its profile changed).
    pub async fn recheck_tag(&self, tag: &str) -> Result<u64> {
        let mut after = None;
        let mut n = 0;
        loop {
            let page = self
                .store
                .list_devices(&callhome_store::DeviceFilter {
                    tag: Some(tag.to_owned()),
                    after,
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            for d in &page.items {
                if self.check_drift(&d.imei).await?.is_some() {
                    n += 1;
                }
            }
            match page.next {
                Some(c) => after = Some(c),
                None => return Ok(n),
            }
        }
    }
}
