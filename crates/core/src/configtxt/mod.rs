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
//! - [`diff`](mod@diff): [`diff()`] of a desired and a reported configuration.
//!
//! Secrets (`GPRS_password`, `MQTT_password`, `MTX_PIN`) are never shown by `Debug`,
//! [`ConfigFile::redacted`], diffs or validation messages; [`ConfigFile::render`] is the one
//! explicit way to get them.

pub mod diff;
pub mod file;
pub mod placeholder;
pub mod schema;
pub mod validate;
pub mod whitelist;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use diff::{KeyDiff, diff};
pub use file::{
    ConfigError, ConfigFile, LineEnding, MAX_CONFIG_BYTES, MAX_CONFIG_LINES, MAX_KEY_LEN, REDACTED,
};
pub use placeholder::{KNOWN_PLACEHOLDERS, PlaceholderContext, Resolved, Unresolved};
pub use schema::{KEYS, KeySpec, Kind};
pub use validate::{Report, Warning};
pub use whitelist::{MAX_PHONES, PhoneNumber, Whitelists};
