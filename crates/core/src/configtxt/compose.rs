//! The effective desired configuration of a device: its profile, then its overrides, with
//! placeholders resolved for the device.

use std::collections::BTreeMap;

use super::{ConfigFile, PlaceholderContext, Unresolved};
use crate::ValidationError;

/// The composed configuration and the placeholders nothing could fill.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Profile + overrides, placeholders resolved.
    pub config: ConfigFile,
    /// Placeholders left as written.
    pub unresolved: Vec<Unresolved>,
}

/// Applies `overrides` (a value sets the key, `None` removes it) to the profile text
/// (`""` when the device has no profile) and resolves placeholders for `imei`.
/// A bad key or value is reported under that key's name.
pub fn effective(
    profile: &str,
    overrides: &BTreeMap<String, Option<String>>,
    imei: &str,
) -> Result<Effective, ValidationError> {
    resolve(desired(profile, overrides)?, imei)
}

/// The desired configuration: `overrides` (a value sets the key, `None` removes it) applied
/// to the profile text (`""` when the device has no profile), placeholders as written.
pub fn desired(
    profile: &str,
    overrides: &BTreeMap<String, Option<String>>,
) -> Result<ConfigFile, ValidationError> {
    let mut config =
        ConfigFile::parse(profile).map_err(|e| ValidationError::new("profile", e.to_string()))?;
    for (key, value) in overrides {
        match value {
            Some(v) => config
                .set(key, v)
                .map_err(|e| ValidationError::new(key.clone(), e.to_string()))?,
            None => {
                config.remove(key);
            }
        }
    }
    Ok(config)
}

/// Lays the desired configuration out on a device's own document (a Config.txt as it was
/// imported): every line of `document` stays byte for byte except that a key's value becomes
/// the desired one (in place, with the document's spelling of the key), a key no longer
/// desired loses its line, and desired keys the document lacks are appended in `desired`'s
/// order. With `document` = the desired file itself, this is the identity.
pub fn lay_out(document: &ConfigFile, desired: &ConfigFile) -> Result<ConfigFile, ValidationError> {
    let mut out = document.clone();
    let gone: Vec<String> = out
        .keys()
        .filter(|k| !desired.contains_key(k))
        .map(str::to_owned)
        .collect();
    for key in gone {
        out.remove(&key);
    }
    for (key, value) in desired.entries() {
        out.set(key, value)
            .map_err(|e| ValidationError::new(key.to_owned(), e.to_string()))?;
    }
    Ok(out)
}

/// `config` with its placeholders resolved for `imei`: the effective configuration.
pub fn resolve(config: ConfigFile, imei: &str) -> Result<Effective, ValidationError> {
    let resolved = config
        .resolve_placeholders(&PlaceholderContext::imei(imei))
        .map_err(ValidationError::from)?;
    Ok(Effective {
        config: resolved.config,
        unresolved: resolved.unresolved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lay_out_keeps_the_document_and_changes_values_in_place() {
        let doc = ConfigFile::parse(
            "# meter 12\r\nDNS_period: 600\r\n\r\ngprs_APN: movistar.es\r\nMTX_PIN: 1234\r\n",
        )
        .unwrap();
        assert_eq!(
            lay_out(&doc, &doc).unwrap().render(),
            doc.render(),
            "identity"
        );
        let want =
            ConfigFile::parse("GPRS_apn: m2m.es\nDNS_period: 600\nMQTT_keepalive: 60\n").unwrap();
        assert_eq!(
            lay_out(&doc, &want).unwrap().render(),
            "# meter 12\r\nDNS_period: 600\r\n\r\ngprs_APN: m2m.es\r\nMQTT_keepalive: 60\r\n",
            "value in place with the document's spelling, MTX_PIN's line gone, new key appended"
        );
    }

    #[test]
    fn profile_then_overrides_then_placeholders() {
        let profile = "DNS_period: 600\nMTX_IDClient: [IMEI]\nGPRS_apn: movistar.es\n";
        let mut o = BTreeMap::new();
        o.insert("dns_period".to_owned(), Some("300".to_owned()));
        o.insert("GPRS_apn".to_owned(), None);
        o.insert("MTX_PIN".to_owned(), Some("1234".to_owned()));
        let e = effective(profile, &o, "490154203237518").unwrap();
        assert_eq!(
            e.config.render(),
            "DNS_period: 300\nMTX_IDClient: 490154203237518\nMTX_PIN: 1234\n",
            "case-insensitive override keeps the profile's spelling and place"
        );
        assert!(e.unresolved.is_empty());
        let mut bad = BTreeMap::new();
        bad.insert("BAD KEY".to_owned(), Some("x".to_owned()));
        assert_eq!(
            effective(profile, &bad, "490154203237518")
                .unwrap_err()
                .field,
            "BAD KEY"
        );
    }
}
