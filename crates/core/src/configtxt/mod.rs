//! Config.txt, the MTX-Tunnel configuration file: a lossless text model, the schema of the
//! keys Callhome knows, validation, placeholders, phone whitelists and diffs.
//!
//! A Config.txt is lines of `KEY: value`. Callhome edits the files operators and modems
//! wrote, so [`ConfigFile`] keeps every byte: `ConfigFile::parse(x)?.render() == x` for any
//! text that parses, and edits ([`ConfigFile::set`], [`ConfigFile::remove`]) change only the
//! lines they touch. Keys are matched case-insensitively and kept as written (the vendor's
//! own documents write both `MTX_PIN` and `MTX_pin`).
//!
//! Modules:
//! - [`file`](mod@file): syntax, parsing, rendering and editing ([`ConfigFile`], [`ConfigError`]).
//! - [`schema`]: the known keys ([`KeySpec`]), their kinds and which are secret.
//! - [`validate`]: [`ConfigFile::validate`] and its [`Report`] of errors and [`Warning`]s.
//! - [`placeholder`]: `[IMEI]` and [`ConfigFile::resolve_placeholders`].
//! - [`whitelist`]: [`PhoneNumber`], [`Whitelists`] and the `SMS_`/`CSD_validPhoneN` lists.
//! - [`apply`]: the minimal parameter writes of an apply ([`apply::plan`]) and the per-key
//!   outcome once the configuration is read back ([`apply::verify`]).
//! - [`diff`](mod@diff): [`diff()`] of a desired and a reported configuration.
//!
//! Secrets (`GPRS_password`, `MQTT_password`, `MTX_PIN`) are never shown by `Debug`,
//! [`ConfigFile::redacted`], diffs or validation messages; [`ConfigFile::render`] is the one
//! explicit way to get them.

pub mod apply;
pub mod compose;
mod diff;
pub mod file;
pub mod placeholder;
pub mod schema;
pub mod validate;
pub mod whitelist;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use compose::{Effective, desired, effective, lay_out, resolve};
pub use diff::{DriftState, KeyDiff, diff};
pub use file::{
    ConfigError, ConfigFile, LineEnding, MAX_CONFIG_BYTES, MAX_CONFIG_LINES, MAX_KEY_LEN, REDACTED,
};
pub use placeholder::{KNOWN_PLACEHOLDERS, PlaceholderContext, Resolved, Unresolved};
pub use schema::{KEYS, KeySpec, Kind};
pub use validate::{Report, Warning};
pub use whitelist::{MAX_PHONES, PhoneNumber, Whitelists};

/// The seed scenario's master Config.txt (CSD-to-IP migration of meter boxes: MQTT command
/// channel, periodic status over MQTT, CSD and SMS whitelists), one `KEY: value` per line,
/// values exactly as in the reference document. Used by tests and by the simulator.
pub const SEED_MASTER_CONFIG: &str = "\
COMM_baudrate: 9600
COMM_bitsperchar: 8
COMM_autorts: off
COMM_autocts: off
COMM_stopbits: 1
COMM_parity: none
GPRS_apn: movistar.es
GPRS_login: MOVISTAR
GPRS_password: MOVISTAR
GPRS_timeout: 0
GPRS_mode: 2g
MTX_PIN: 0000
MTX_mode: none
MTX_model: 199801422
MTX_ping: 35
MTX_pingIP: 8.8.8.8
MTX_ATLimited: off
MTX_IDClient: [IMEI]
MTX_temporalClientTimeout: 120
MTX_clientSSL: on
SMS_allPhones: off
SMS_sendIP: off
SMS_ATEnabled: on
SMS_ATResponse: on
SMS_validPhone1: +34666123456
SMS_validPhone2: +34666123457
MQTT_enabled: on
MQTT_server: ssl://broker.cervello.io:8883
MQTT_id: yku41420t957oh8t
MQTT_login: jfj1usly8ijhh9hizfr453
MQTT_password: gthhdte67y3ttes33fgg
MQTT_attopic1: [IMEI]/AT
MQTT_atrtopic: [IMEI]/ATR
MQTT_keepalive: 300
DNS_enabled: on
DNS_mode: mqtt
DNS_mqttTopic: [IMEI]/dns
DNS_extended: off
DNS_period: 600
CSD_enabled: on
CSD_validPhone1: 666333444
CSD_validPhone2: 666444555
";
