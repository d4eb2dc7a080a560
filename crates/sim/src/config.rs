//! The simulated modem's Config.txt: a shared master plus each modem's own changes.
//!
//! A deliberately simple model (`KEY: value` lines, keys matched ignoring case, the
//! spelling first written kept); the platform's full Config.txt model lives elsewhere.
//! To keep a 100,000-modem fleet small, every modem shares one [`MasterConfig`] and
//! stores only the parameters changed with `SETPARAM`; `[IMEI]` is resolved when read.

use std::sync::Arc;

/// The master configuration from the reference scenario (electric meter boxes, MQTT
/// command channel, periodic status), one `KEY: value` per line.
pub use callhome_core::configtxt::SEED_MASTER_CONFIG;

/// The placeholder a modem replaces with its IMEI.
pub const IMEI_PLACEHOLDER: &str = "[IMEI]";

/// An ordered list of `KEY: value` parameters shared by a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterConfig {
    params: Vec<(String, String)>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self::seed()
    }
}

impl MasterConfig {
    /// The reference scenario's master configuration ([`SEED_MASTER_CONFIG`]).
    pub fn seed() -> Self {
        Self::parse(SEED_MASTER_CONFIG)
    }

    /// The seed adapted to this platform: `MQTT_server` is `ssl://host:port` (or
    /// `tcp://` without TLS), `MQTT_id` is `[IMEI]` (the client id is the IMEI), the
    /// third-party broker's login and password are cleared, and `DNS_period` is
    /// `status_period_secs` when given.
    pub fn for_platform(host: &str, port: u16, tls: bool, status_period_secs: Option<u64>) -> Self {
        let mut c = Self::seed();
        let scheme = if tls { "ssl" } else { "tcp" };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        c.set("MQTT_server", &format!("{scheme}://{host}:{port}"));
        c.set("MQTT_id", IMEI_PLACEHOLDER);
        c.set("MQTT_login", "");
        c.set("MQTT_password", "");
        if let Some(p) = status_period_secs {
            c.set("DNS_period", &p.to_string());
        }
        c
    }

    /// Reads `KEY: value` lines; blank lines and lines without a `:` are skipped.
    pub fn parse(text: &str) -> Self {
        let mut c = Self { params: Vec::new() };
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim();
                if !k.is_empty() {
                    c.set(k, v.trim());
                }
            }
        }
        c
    }

    /// The raw value (with `[IMEI]` unresolved) of `key`, matched ignoring case.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` (matched ignoring case, keeping the existing spelling) or appends it.
    pub fn set(&mut self, key: &str, value: &str) {
        set_in(&mut self.params, key, value);
    }

    /// The parameters in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn set_in(params: &mut Vec<(String, String)>, key: &str, value: &str) {
    match params.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
        Some((_, v)) => *v = value.to_owned(),
        None => params.push((key.to_owned(), value.to_owned())),
    }
}

/// One modem's configuration: the shared master plus its own changes.
#[derive(Debug, Clone)]
pub struct ModemConfig {
    master: Arc<MasterConfig>,
    changes: Vec<(String, String)>,
}

impl ModemConfig {
    /// A modem configured exactly as `master`.
    pub fn new(master: Arc<MasterConfig>) -> Self {
        Self {
            master,
            changes: Vec::new(),
        }
    }

    /// The value of `key` (ignoring case) with `[IMEI]` replaced by `imei`.
    pub fn get(&self, key: &str, imei: &str) -> Option<String> {
        self.raw(key).map(|v| v.replace(IMEI_PLACEHOLDER, imei))
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.changes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .or_else(|| self.master.get(key))
    }

    /// Sets `key` for this modem only (new keys are kept, as the firmware does).
    pub fn set(&mut self, key: &str, value: &str) {
        // Keep the master's spelling of a known key.
        let key = self
            .master
            .params()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map_or(key, |(k, _)| k)
            .to_owned();
        set_in(&mut self.changes, &key, value);
    }

    /// The whole Config.txt as `KEY: value` lines (CRLF line ends, none after the last),
    /// `[IMEI]` resolved: the master's order, then keys added by this modem.
    pub fn render_lines(&self, imei: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .master
            .params()
            .map(|(k, _)| line(k, self.raw(k).unwrap_or(""), imei))
            .collect();
        for (k, v) in &self.changes {
            if self.master.get(k).is_none() {
                lines.push(line(k, v, imei));
            }
        }
        lines
    }
}

fn line(k: &str, v: &str, imei: &str) -> String {
    let v = v.replace(IMEI_PLACEHOLDER, imei);
    if v.is_empty() {
        format!("{k}:")
    } else {
        format!("{k}: {v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_parses_with_all_keys() {
        let m = MasterConfig::seed();
        assert_eq!(m.params().count(), 42);
        assert_eq!(m.get("gprs_APN"), Some("movistar.es"));
        assert_eq!(m.get("MQTT_attopic1"), Some("[IMEI]/AT"));
        assert_eq!(m.get("DNS_period"), Some("600"));
    }

    #[test]
    fn platform_master_and_modem_changes() {
        let m = Arc::new(MasterConfig::for_platform(
            "gw.example",
            8883,
            true,
            Some(5),
        ));
        assert_eq!(m.get("MQTT_server"), Some("ssl://gw.example:8883"));
        assert_eq!(m.get("MQTT_login"), Some(""));
        let mut c = ModemConfig::new(m.clone());
        let imei = "490154203237518";
        assert_eq!(c.get("MQTT_atrtopic", imei).unwrap(), "490154203237518/ATR");
        assert_eq!(c.get("DNS_period", imei).unwrap(), "5");
        c.set("gprs_apn", "other.apn");
        c.set("NEW_key", "x");
        assert_eq!(c.get("GPRS_apn", imei).unwrap(), "other.apn");
        let lines = c.render_lines(imei);
        assert!(lines.contains(&"GPRS_apn: other.apn".to_owned()));
        assert!(lines.contains(&"MQTT_login:".to_owned()));
        assert!(lines.contains(&"MTX_IDClient: 490154203237518".to_owned()));
        assert_eq!(lines.last().unwrap(), "NEW_key: x");
        // The master is untouched.
        assert_eq!(m.get("GPRS_apn"), Some("movistar.es"));
        assert_eq!(
            MasterConfig::for_platform("::1", 1, false, None).get("MQTT_server"),
            Some("tcp://[::1]:1")
        );
    }
}
