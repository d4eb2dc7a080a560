//! Secret Config.txt values encrypted at rest.
//!
//! Wherever the store keeps a text that may hold a secret Config.txt value (`MQTT_password`,
//! `GPRS_password`, `MTX_PIN`, ...: the keys `callhome_core::configtxt::schema` marks secret)
//! it writes only that value encrypted, as `enc:v1:<base64url(nonce || ciphertext)>`, and the
//! text keeps its shape: a profile stays a Config.txt, overrides stay a JSON object, a command
//! stays `AT^MTXTUNNEL=SETPARAM,MQTT_password,enc:v1:...`. Reading decrypts, so callers see
//! plaintext exactly as written (they mask it for non-admins).
//!
//! The cipher is XChaCha20-Poly1305 (RustCrypto) with a 32-byte master key and a random
//! 24-byte nonce per value; the associated data is the key's name (lower case), so a value
//! cannot be moved to another key and decrypted there. Texts written before a key was
//! configured read as plaintext and are encrypted when rewritten. A value that looks like
//! `enc:v1:` but does not decrypt is left as it is (it is not ours: the master key is checked
//! against the database when the store opens, see [`KEY_CHECK_PLAINTEXT`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use callhome_core::secrets;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

use crate::StoreError;

/// What starts an encrypted value.
pub const PREFIX: &str = "enc:v1:";

/// Length of a master key, in bytes.
pub const MASTER_KEY_LEN: usize = 32;

const NONCE_LEN: usize = 24;

/// The plaintext of the key-check row: decrypting it proves the key is the one the database's
/// values were encrypted with.
pub(crate) const KEY_CHECK_PLAINTEXT: &str = "callhome master key check";
/// The "key name" the key-check value is bound to.
pub(crate) const KEY_CHECK_NAME: &str = "__callhome_key_check";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The 32-byte key secret values are encrypted with. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; MASTER_KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; MASTER_KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Reads a key written as base64 (standard or URL-safe alphabet, padding optional):
    /// exactly 32 bytes. The error never quotes the text.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .or_else(|_| B64.decode(text))
            .map_err(|_| StoreError::MasterKey("the master key is not base64".to_owned()))?;
        let bytes: [u8; MASTER_KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            StoreError::MasterKey(format!(
                "the master key must be {MASTER_KEY_LEN} bytes, got {}",
                b.len()
            ))
        })?;
        Ok(Self(bytes))
    }

    /// The key as standard base64 (for writing it to its file).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

/// Encrypts and decrypts the secret values inside stored texts. Without a key it passes texts
/// through (values are written as plaintext, and read as stored).
#[derive(Clone, Default)]
pub(crate) struct Vault {
    cipher: Option<Arc<XChaCha20Poly1305>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("encrypting", &self.cipher.is_some())
            .finish()
    }
}

fn aad(key: &str) -> Vec<u8> {
    format!("callhome-secret:{}", key.to_ascii_lowercase()).into_bytes()
}

impl Vault {
    pub(crate) fn new(key: Option<&MasterKey>) -> Self {
        Self {
            cipher: key.map(|k| Arc::new(XChaCha20Poly1305::new(&k.0.into()))),
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.cipher.is_some()
    }

    /// `value` of `key` encrypted (`enc:v1:...`); `None` without a key.
    pub(crate) fn encrypt(&self, key: &str, value: &str) -> Option<String> {
        let cipher = self.cipher.as_ref()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = aad(key);
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .ok()?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Some(format!("{PREFIX}{}", B64.encode(bytes)))
    }

    /// The plaintext of an `enc:v1:` value of `key`; `None` if `value` is not one this key
    /// decrypts (plaintext written before encryption was on, or not ours).
    pub(crate) fn decrypt(&self, key: &str, value: &str) -> Option<String> {
        let plain = self.try_decrypt(key, value);
        if plain.is_none() && self.is_enabled() && value.starts_with(PREFIX) {
            tracing::warn!(
                key,
                "a stored value of a secret key looks encrypted but does not decrypt with the master key; left as stored"
            );
        }
        plain
    }

    /// [`Vault::decrypt`] without the warning.
    pub(crate) fn try_decrypt(&self, key: &str, value: &str) -> Option<String> {
        let cipher = self.cipher.as_ref()?;
        let b64 = value.strip_prefix(PREFIX)?;
        let bytes = B64.decode(b64).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let aad = aad(key);
        let plain = cipher.decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        );
        plain.ok().and_then(|p| String::from_utf8(p).ok())
    }

    fn seal_fn(&self) -> impl FnMut(&str, &str) -> Option<String> + '_ {
        |k, v| self.encrypt(k, v)
    }

    fn open_fn(&self) -> impl FnMut(&str, &str) -> Option<String> + '_ {
        |k, v| {
            if v.starts_with(PREFIX) {
                self.decrypt(k, v)
            } else {
                None
            }
        }
    }

    /// A command to store.
    pub(crate) fn seal_command<'a>(&self, command: &'a str) -> Cow<'a, str> {
        if !self.is_enabled() {
            return Cow::Borrowed(command);
        }
        secrets::map_command(command, &mut self.seal_fn())
    }

    /// A stored command, as written.
    pub(crate) fn open_command(&self, command: String) -> String {
        if !self.is_enabled() || !command.contains(PREFIX) {
            return command;
        }
        secrets::map_command(&command, &mut self.open_fn()).into_owned()
    }

    /// A reply (or an error text) to `command`, to store.
    pub(crate) fn seal_reply<'a>(&self, command: &str, reply: &'a str) -> Cow<'a, str> {
        if !self.is_enabled() {
            return Cow::Borrowed(reply);
        }
        secrets::map_reply(command, reply, &mut self.seal_fn())
    }

    /// A stored reply to `command`, as received.
    pub(crate) fn open_reply(&self, command: &str, reply: Option<String>) -> Option<String> {
        match reply {
            Some(r) if self.is_enabled() && r.contains(PREFIX) => {
                Some(secrets::map_reply(command, &r, &mut self.open_fn()).into_owned())
            }
            other => other,
        }
    }

    /// Config.txt text (or any `KEY: value` text) to store.
    pub(crate) fn seal_lines<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.is_enabled() {
            return Cow::Borrowed(text);
        }
        secrets::map_lines(text, &mut self.seal_fn())
    }

    /// Stored Config.txt text, as written.
    pub(crate) fn open_lines(&self, text: String) -> String {
        if !self.is_enabled() || !text.contains(PREFIX) {
            return text;
        }
        secrets::map_lines(&text, &mut self.open_fn()).into_owned()
    }

    /// JSON text (overrides, a job's operation) to store.
    pub(crate) fn seal_json<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.is_enabled() {
            return Cow::Borrowed(text);
        }
        secrets::map_json(text, &mut self.seal_fn())
    }

    /// Stored JSON text, with its secret values decrypted.
    pub(crate) fn open_json(&self, text: String) -> String {
        if !self.is_enabled() || !text.contains(PREFIX) {
            return text;
        }
        secrets::map_json(&text, &mut self.open_fn()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_are_bound_to_their_key() {
        let key = MasterKey::generate();
        assert_eq!(format!("{key:?}"), "MasterKey(***)");
        let again = MasterKey::from_base64(&key.to_base64()).unwrap();
        let v = Vault::new(Some(&again));
        let cmd = "AT^MTXTUNNEL=SETPARAM,MQTT_password,hunter2-secret";
        let sealed = v.seal_command(cmd).into_owned();
        assert!(
            sealed.starts_with("AT^MTXTUNNEL=SETPARAM,MQTT_password,enc:v1:")
                && !sealed.contains("hunter2"),
            "{sealed}"
        );
        assert_ne!(v.seal_command(cmd), sealed, "a fresh nonce each time");
        assert_eq!(Vault::new(Some(&key)).open_command(sealed.clone()), cmd);

        // Moved to another key, the value does not decrypt and is left as stored.
        let moved = sealed.replace("MQTT_password", "GPRS_password");
        assert_eq!(v.open_command(moved.clone()), moved);
        // Another master key: left as stored.
        let other = Vault::new(Some(&MasterKey::generate()));
        assert_eq!(other.open_command(sealed.clone()), sealed);
        // Plaintext written before: read as is.
        assert_eq!(v.open_command(cmd.to_owned()), cmd);
        // No key: nothing changes either way.
        let none = Vault::new(None);
        assert_eq!(none.seal_command(cmd), cmd);

        let config = "GPRS_apn: movistar.es\nGPRS_password: MOVISTAR-x\nMTX_PIN: 4821\n";
        let sealed = v.seal_lines(config).into_owned();
        assert!(!sealed.contains("MOVISTAR-x") && !sealed.contains("4821"));
        assert!(sealed.starts_with("GPRS_apn: movistar.es\nGPRS_password: enc:v1:"));
        assert_eq!(v.open_lines(sealed), config);

        let json = r#"{"DNS_period":"300","MQTT_password":"p4ss"}"#;
        let sealed = v.seal_json(json).into_owned();
        assert!(!sealed.contains("p4ss"));
        assert_eq!(v.open_json(sealed), json);

        let get = "AT^MTXTUNNEL=GETPARAM,MTX_PIN";
        let sealed = v.seal_reply(get, "4821\r\n\r\nOK").into_owned();
        assert!(!sealed.contains("4821") && sealed.ends_with("\r\n\r\nOK"));
        assert_eq!(
            v.open_reply(get, Some(sealed)).as_deref(),
            Some("4821\r\n\r\nOK")
        );
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        let err = MasterKey::from_base64("not base64 !!!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("base64") && !err.contains("!!!"), "{err}");
        let err = MasterKey::from_base64("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("32 bytes, got 5"), "{err}");
    }
}
